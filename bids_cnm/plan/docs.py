"""The plan's key tables in ``docs/plan.md`` and its JSON Schema, from the schema's models.

``docs/plan.md`` keeps its prose; every table of keys sits between
``<!-- plan-schema: <Model> -->`` and ``<!-- /plan-schema -->`` and is rewritten from the
model's fields (type, default, description).  ``python -m bids_cnm.cli.docs`` writes the
tables and ``bids_cnm/data/plan.schema.json`` with the other generated files; the tests
fail when either is out of date.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from bids_cnm.plan.schema import MODELS, Doc, Section

REPO = Path(__file__).resolve().parents[2]
PLAN_MD = REPO / "docs" / "plan.md"
SCHEMA_JSON = Path(__file__).resolve().parents[1] / "data" / "plan.schema.json"

_BLOCK = re.compile(r"(<!-- plan-schema: (\w+) -->\n\n).*?(\n<!-- /plan-schema -->)", re.DOTALL)


def _docs(field: FieldInfo) -> Doc:
    """The field's :class:`Doc` hints, outer ones first (``Optional[Mm]`` keeps ``mm``)."""
    found = [m for m in field.metadata if isinstance(m, Doc)]
    todo = [field.annotation]
    while todo:
        hint = todo.pop(0)
        found += [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Doc)]
        todo += typing.get_args(hint)
    return Doc(next((d.type for d in found if d.type), None),
               next((d.default for d in found if d.default), None))


def _type_text(prop: dict) -> str:
    """A JSON Schema property in words."""
    prop = next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "$ref" in prop:
        return "mapping"
    kind = prop.get("type")
    if kind == "integer":
        return f"integer ≥ {prop['minimum']}"
    if kind == "number":
        return f"({prop['exclusiveMinimum']:g}, {prop['exclusiveMaximum']:g})"
    return {"boolean": "boolean", "array": "list", "string": "text"}.get(kind, "value")


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _default_text(cls: type[Section], name: str, field: FieldInfo, doc: Doc) -> str:
    if field.is_required():
        return "required"
    if doc.default:
        return doc.default
    if name in cls.one_of:
        return "—"  # one of several keys: no default, see the note under the table
    if field.default is None:
        return "none"
    return f"`{_value_text(field.default)}`"


def model_table(cls: type[Section]) -> str:
    """The Markdown table of a model's keys: key, type, default, meaning."""
    props = cls.model_json_schema()["properties"]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        doc = _docs(field)
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {doc.type or _type_text(props[name])} | "
                     f"{_default_text(cls, name, field, doc)} | {meaning} |")
    return "\n".join(lines) + "\n"


def plan_markdown(text: str) -> str:
    """``docs/plan.md`` with every marked table rewritten from its model."""
    return _BLOCK.sub(lambda m: m.group(1) + model_table(MODELS[m.group(2)]) + m.group(3),
                      text)
