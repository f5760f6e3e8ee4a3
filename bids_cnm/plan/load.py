"""Loading a plan: parse JSON or YAML, validate with the schema, check the tables.

A plan is a JSON or YAML file (told apart by content) given with ``--analysis``.  It is
validated completely when it is loaded, before any connectivity is computed: an unknown
key, a value of the wrong type, a bad value, a missing file or a table without the
needed columns is an :class:`~bids_cnm.errors.InputDataError` (or
:class:`~bids_cnm.errors.MissingInputError` for files) whose message names the key path
(e.g. ``validation.roi_overlap[2].spheres.table``) and says how to fix it.  Relative
paths are resolved against the plan file's folder; paths inside tables (VAT images,
lesion masks) against the table's folder.

Validation is :class:`~bids_cnm.plan.schema.Plan`'s; this module turns the first of
pydantic's errors into that one-line message and then reads the tables the plan names.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from bids_cnm.errors import (
    CNMError,
    InputDataError,
    MissingInputError,
    ReadError,
    where,
)
from bids_cnm.plan.schema import MODELS, Atlas, Compare, Plan, default_plan, type_name
from bids_cnm.plan.tables import (
    atlas_labels,
    check_column,
    coordinate_table,
    mask_roi_files,
    read_dbs_table,
)

__all__ = ["load_plan", "plan_from_dict"]


def load_plan(path: str | Path | None) -> Plan:
    """Read and validate an analysis plan (JSON or YAML).

    Parameters
    ----------
    path : path or None
        The plan file; ``None`` gives :func:`default_plan`.  JSON is recognized by its
        content (a leading ``{``), anything else is read as YAML.

    Returns
    -------
    Plan

    Raises
    ------
    MissingInputError
        The plan or a file it names does not exist (the message names the key).
    ReadError
        The plan cannot be read.
    InputDataError
        A syntax error, an unknown key, a wrong type or value, or a table without the
        needed columns (the message names the key path and the fix).
    """
    if path is None:
        return default_plan()
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"analysis plan {path}: file not found; check the path given to --analysis"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReadError(f"analysis plan {path}: cannot be read ({exc})") from exc
    data = _parse(text, path)
    return plan_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def _parse(text: str, path: Path) -> dict:
    import yaml

    stripped = text.lstrip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"analysis plan {where(path, exc.lineno)}: invalid JSON ({exc.msg}, column "
                f"{exc.colno}); fix the syntax (or write the plan in YAML)"
            ) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputDataError(
                f"analysis plan {where(path, line)}: invalid YAML ({problem}); fix the "
                "syntax (indent nested keys with spaces, not tabs)"
            ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputDataError(
            f"analysis plan {path}: the top level is {type_name(data)}, not a mapping; "
            "start with keys such as primary_sets:, validation:, dbs:, ale:"
        )
    return data


def plan_from_dict(data: Mapping, base_dir: str | Path | None = None,
                   source: str | None = None) -> Plan:
    """Validate a plan given as a mapping (e.g. the output of :meth:`Plan.to_dict`).

    Parameters
    ----------
    data : mapping
        The plan's content.
    base_dir : path, optional
        Folder that relative paths are resolved against (default: the working folder).
    source : str, optional
        Name of the plan in messages.

    Returns
    -------
    Plan
    """
    label = f"analysis plan {source}" if source else "analysis plan"
    base = Path(base_dir or Path.cwd()).resolve()
    try:
        # "$schema" names the JSON Schema for editors; it is no part of the plan
        content = {k: v for k, v in data.items() if k != "$schema"}
        plan = Plan.model_validate(content, context={"base": base})
    except ValidationError as exc:
        raise _user_error(exc.errors()[0], label) from None
    plan._source = source
    _check_tables(plan)
    _check_images(plan)
    return plan


# --------------------------------------------------------------------------- messages

#: pydantic's error types -> (problem, fix), formatted with the error's context and
#: ``got`` (the value as YAML names it), ``keys`` (a mapping's allowed keys),
#: ``name``/``parent`` (a missing key and where), ``shown``/``hint``/``choices`` (a choice)
_MESSAGES = {
    "missing": ("required key is missing", "add '{name}' to {parent}"),
    "model_type": ("expected a mapping, got {got}", "give a mapping with keys among: {keys}"),
    "tuple_type": ("expected a list, got {got}",
                   "write a list ([a, b] or one '- item' per line in YAML)"),
    "too_short": ("the list is empty", "give at least {min_length} item or remove the key"),
    "int_type": ("expected an integer, got {got}", "write a whole number without quotes"),
    "float_type": ("expected a number, got {got}", "write a number without quotes"),
    "finite_number": ("{input} is not finite", "write a finite number"),
    "bool_type": ("expected true or false, got {got}", "write true or false without quotes"),
    "string_type": ("expected a text value, got {got}",
                    "write a non-empty text (quote it in YAML if needed)"),
    "string_too_short": ("expected a text value, got {got}",
                         "write a non-empty text (quote it in YAML if needed)"),
    "string_pattern_mismatch": ("'{input}' is not a valid name", "use letters and digits only "
                                "(it becomes part of BIDS file names)"),
    "literal_error": ("{shown} is not allowed{hint}", "use one of: {choices}"),
    "greater_than_equal": ("{input} is too small", "give an integer >= {ge}"),
    "greater_than": ("{input:g} is out of range", "give a number > {gt:g}"),
    "less_than": ("{input:g} is out of range", "give a number < {lt:g}"),
}


def _key_path(loc: tuple) -> str:
    """``('validation', 'roi_overlap', 2, 'name')`` -> ``validation.roi_overlap[2].name``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def _user_error(error: dict, label: str) -> CNMError:
    """One pydantic error as the one-line message of the loader (key path, problem, fix)."""
    ctx = error.get("ctx") or {}
    key = ".".join(k for k in (_key_path(error["loc"]), ctx.get("key")) if k)
    if error["type"] in ("plan", "missing_file"):
        problem, fix = ctx["problem"], ctx["fix"]
    elif error["type"] in _MESSAGES:
        value = error["input"]
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = difflib.get_close_matches(str(value), choices, n=1)
        model = MODELS.get(ctx.get("class_name", ""))
        fields = {
            "got": type_name(value), "input": value,
            "keys": ", ".join(model.model_fields) if model else "",
            "name": error["loc"][-1] if error["loc"] else "",
            "parent": _key_path(error["loc"][:-1]) or "the plan",
            "shown": f"'{value}'" if isinstance(value, str) else type_name(value),
            "hint": f" (did you mean '{hint[0]}'?)" if hint else "",
            "choices": ", ".join(choices),
        }
        problem, fix = (text.format(**ctx, **fields) for text in _MESSAGES[error["type"]])
    else:  # a check pydantic makes that no plan has met yet: its own words
        problem, fix = error["msg"][:1].lower() + error["msg"][1:], "see docs/plan.md"
    cls = MissingInputError if error["type"] == "missing_file" else InputDataError
    return cls(f"{label}, {key or 'top level'}: {problem}; {fix}")


# --------------------------------------------------------------------------- tables


def _check_compare(table: pd.DataFrame, compare: Compare, path: Path, key: str,
                   label: str) -> None:
    check_column(table, compare.column, path, f"{key}.compare.column", label)
    values = {str(v).strip() for v in table[compare.column] if pd.notna(v)}
    for side in ("a", "b"):
        wanted = getattr(compare, side)
        if wanted not in values:
            raise InputDataError(
                f"{label}, {key}.compare.{side}: no ROI has '{wanted}' in column "
                f"'{compare.column}' of {path} (values: {', '.join(sorted(values))}); use one "
                "of them")


def _check_atlas(spec: Atlas, key: str, label: str) -> pd.DataFrame | None:
    labels = atlas_labels(spec, key, label)
    if spec.select is None:
        return labels
    if labels is None:
        bad = [s for s in spec.select if not isinstance(s, int)]
        if bad:
            raise InputDataError(
                f"{label}, {key}.select: region names {bad} need a label table; add "
                "'labels' or select integer indices")
        return labels
    names, indices = set(labels["name"]), set(labels["index"].tolist())
    unknown = [s for s in spec.select
               if not (str(s) in names or (isinstance(s, int) and s in indices))]
    if unknown:
        raise InputDataError(
            f"{label}, {key}.select: region(s) {unknown} are not in {spec.labels}; use "
            "names or indices of the label table")
    return labels


def _image_paths(value, key: str):
    """(key path, path) of every NIfTI file the plan's models name."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _image_paths(getattr(value, name), f"{key}.{name}" if key else name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _image_paths(item, f"{key}[{i}]")
    elif isinstance(value, Path) and value.name.endswith((".nii", ".nii.gz")):
        yield key, value


def _check_images(plan: Plan) -> None:
    """Every NIfTI the plan names must be a readable 3-D image, before any computation
    (reading the header and the data's size is enough to catch most broken files)."""
    import nibabel as nb

    for key, path in _image_paths(plan, ""):
        try:
            img = nb.load(path)
            shape = img.shape
        except Exception as exc:  # nibabel raises several types
            raise InputDataError(
                f"{plan.label}, {key}: {path} is not a readable NIfTI image "
                f"({type(exc).__name__}); check the file or give another.") from exc
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
            raise InputDataError(
                f"{plan.label}, {key}: {path} has shape {tuple(shape)}; give a 3-D image.")


def _check_tables(plan: Plan) -> None:
    """Read every table the plan names: columns, values, files listed in them."""
    label = plan.label
    val = plan.validation
    for i, item in enumerate(val.roi_overlap):
        key = f"validation.roi_overlap[{i}]"
        if item.spheres is not None:
            table_path = item.spheres.table
            table = coordinate_table(table_path, f"{key}.spheres.table", label)
            if item.spheres.label_column:
                check_column(table, item.spheres.label_column, table_path,
                             f"{key}.spheres.label_column", label)
        elif item.masks is not None:
            _, table = mask_roi_files(item.masks, f"{key}.masks", label)
            table_path = item.masks.table
        else:
            table = _check_atlas(item.atlas, f"{key}.atlas", label)
            table_path = item.atlas.labels
        if item.compare is not None:
            if table_path is None:
                raise InputDataError(
                    f"{label}, {key}.compare: the ROIs have no table to take the groups "
                    "from; add masks.table (or atlas.labels) with the group column")
            _check_compare(table, item.compare, table_path, key, label)
        if item.null_model is not None and item.null_model.atlas is not None:
            _check_atlas(item.null_model.atlas, f"{key}.null_model.atlas", label)

    for i, item in enumerate(val.spatial_correlation):
        key = f"validation.spatial_correlation[{i}].seeds"
        if item.seeds is not None:
            table = coordinate_table(item.seeds.table, f"{key}.table", label)
            if item.seeds.label_column:
                check_column(table, item.seeds.label_column, item.seeds.table,
                             f"{key}.label_column", label)

    if val.roi_to_roi is not None:
        key = "validation.roi_to_roi.nodes"
        nodes = coordinate_table(val.roi_to_roi.nodes, key, label,
                                 columns=("x", "y", "z", "network"))
        if nodes["network"].isna().any():
            row = int(np.flatnonzero(nodes["network"].isna().to_numpy())[0]) + 2
            raise InputDataError(
                f"{label}, {key} ({where(val.roi_to_roi.nodes, row, 'network')}): "
                "empty network label; label every node")
        if nodes["network"].nunique() < 2:
            raise InputDataError(
                f"{label}, {key}: the nodes belong to fewer than 2 networks; the one-way "
                "ANOVA compares >= 2 networks; label nodes by network")

    for i, item in enumerate(val.peaks):
        key = f"validation.peaks[{i}]"
        if item.region.spheres is not None:
            coordinate_table(item.region.spheres.table, f"{key}.region.spheres.table", label)
        elif item.region.atlas is not None:
            _check_atlas(item.region.atlas, f"{key}.region.atlas", label)
        if item.references is not None:
            coordinate_table(item.references, f"{key}.references", label,
                             columns=("label", "x", "y", "z"))

    if plan.dbs is not None:
        read_dbs_table(plan.dbs, label)
