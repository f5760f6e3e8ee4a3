"""Small HTML builders for the report: escaped text, tables, figures, boxes."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Mapping

import pandas as pd

__all__ = [
    "esc", "slug", "figure", "table", "kv_table", "details", "note", "error_box",
    "pre_json", "png_data_uri",
]


def esc(value: object) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


def slug(text: str) -> str:
    """An id/anchor from free text."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, caption: str, alt: str, css_class: str = "") -> str:
    """A figure with its caption underneath (``caption`` is HTML)."""
    cls = f"cnm-figure {css_class}".strip()
    return (
        f'<figure class="{cls}"><img src="{png_data_uri(png)}" alt="{esc(alt)}">'
        f'<figcaption class="elem-caption">{caption}</figcaption></figure>'
    )


def table(
    frame: pd.DataFrame,
    table_id: str | None = None,
    source: str | None = None,
    max_rows: int | None = None,
    row_classes: Iterable[str] | None = None,
    css_class: str = "cnm-table",
) -> str:
    """An HTML table of a DataFrame (cells as ``str``; escape everything).

    Parameters
    ----------
    source : str, optional
        File name the table shows, stored in ``data-source``.
    max_rows : int, optional
        Show at most this many rows and say how many were left out.
    """
    frame = frame if max_rows is None else frame.head(max_rows)
    classes = list(row_classes) if row_classes is not None else [""] * len(frame)
    attrs = f' class="{css_class}"'
    if table_id:
        attrs += f' id="{esc(table_id)}"'
    if source:
        attrs += f' data-source="{esc(source)}"'
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for cls, values in zip(classes, frame.itertuples(index=False, name=None)):
        cells = "".join(f"<td>{esc(v)}</td>" for v in values)
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return (
        f'<div class="table-wrap"><table{attrs}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def kv_table(items: Mapping[str, object], table_id: str | None = None) -> str:
    """A two-column key/value table (values that are lists/dicts shown as JSON)."""
    rows = []
    for key, value in items.items():
        if value is None:
            value = "not set"
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(value, default=str)
        rows.append(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f'<table class="cnm-table kv"{ident}><tbody>{"".join(rows)}</tbody></table>'


def details(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible box (``summary`` is text, ``body`` HTML)."""
    flag = " open" if open_ else ""
    return f'<details class="cnm-details"{flag}><summary>{esc(summary)}</summary>{body}</details>'


def note(text: str) -> str:
    """An informative note (``text`` is HTML)."""
    return f'<p class="cnm-note">{text}</p>'


def warning_box(text: str) -> str:
    """A warning (``text`` is HTML)."""
    return f'<div class="cnm-warning">{text}</div>'


def error_box(text: str) -> str:
    """An error of the report itself (``text`` is escaped)."""
    return f'<div class="cnm-error">{esc(text)}</div>'


def pre_json(content: object) -> str:
    """Pretty-printed JSON in a ``<pre>``."""
    return f'<pre class="cnm-pre">{esc(json.dumps(content, indent=2, default=str))}</pre>'
