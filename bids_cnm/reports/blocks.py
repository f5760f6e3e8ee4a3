"""What a report section is made of: figures, tables, notes, key-value lists.

Section builders return these plain objects; the Jinja2 templates turn them into
HTML (autoescaped, so every text here is plain text, never HTML).  A figure
holds the *job* that draws it (a picklable ``functools.partial`` of a
:mod:`bids_cnm.reports.figures` function), so all figures of a report can be
drawn together, in parallel processes, after the sections are built
(:mod:`bids_cnm.reports.render`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

__all__ = [
    "Figure", "Table", "Text", "KeyValues", "Pre", "Details", "Row", "Group", "Section",
    "Block", "slug", "note", "warning", "error", "subhead", "kv_items", "iter_figures",
]


def slug(text: str) -> str:
    """An id/anchor from free text."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


@dataclass(eq=False)
class Figure:
    """One figure: the job that draws it (returns PNG bytes) and its caption."""

    job: Callable[[], bytes]
    caption: str
    alt: str
    sources: list[str] = field(default_factory=list)  # file names the figure shows
    css: str = ""  # "wide", "half"
    png: bytes | None = None
    error: str | None = None
    kind: str = "figure"

    @property
    def data_uri(self) -> str:
        """``data:image/png;base64,...`` of the drawn figure."""
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode("ascii")


@dataclass(eq=False)
class Table:
    """A table shown as text exactly as given (cells converted with ``str``)."""

    frame: pd.DataFrame
    source: str | None = None  # the file it shows (``data-source``)
    id: str | None = None
    caption: str = ""
    max_rows: int | None = 200
    row_classes: list[str] | None = None
    compact: bool = False
    kind: str = "table"

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    @property
    def rows(self) -> list[tuple[str, list[str]]]:
        """(css class, cells) of the rows shown."""
        frame = self.frame if self.max_rows is None else self.frame.head(self.max_rows)
        classes = self.row_classes or [""] * len(frame)
        return [(cls, [str(v) for v in values])
                for cls, values in zip(classes, frame.itertuples(index=False, name=None))]

    @property
    def hidden(self) -> int:
        """Rows left out by ``max_rows``."""
        return 0 if self.max_rows is None else max(0, len(self.frame) - self.max_rows)


@dataclass(eq=False)
class Text:
    """A paragraph: ``style`` is note, warning, error or subhead."""

    text: str
    style: str = "note"
    items: list[str] = field(default_factory=list)  # an optional bullet list under it
    kind: str = "text"


@dataclass(eq=False)
class KeyValues:
    """A two-column table of names and values."""

    items: list[tuple[str, str]]
    id: str | None = None
    kind: str = "kv"


@dataclass(eq=False)
class Pre:
    """Preformatted text (a command, JSON)."""

    text: str
    id: str | None = None
    kind: str = "pre"


@dataclass(eq=False)
class Details:
    """A collapsible box."""

    summary: str
    blocks: list
    kind: str = "details"


@dataclass(eq=False)
class Row:
    """Figures side by side."""

    figures: list[Figure]
    kind: str = "row"


@dataclass(eq=False)
class Group:
    """A titled part of a section (an ``<h3>`` with an anchor)."""

    id: str
    title: str
    blocks: list
    color: str | None = None  # a swatch before the title (the set's colour)
    kind: str = "group"


Block = Figure | Table | Text | KeyValues | Pre | Details | Row | Group


@dataclass(eq=False)
class Section:
    """One section of the report: an ``<h2>``, an entry of the navigation menu."""

    id: str
    title: str
    blocks: list = field(default_factory=list)
    nav: str = ""  # its short name in the navigation menu (default: the title)
    analyses: list[str] = field(default_factory=list)  # output files it shows

    @property
    def groups_toc(self) -> list[Group]:
        """The section's groups, listed at its top when there are several."""
        groups = [b for b in self.blocks if isinstance(b, Group)]
        return groups if len(groups) > 1 else []


def note(text: str, items: Iterable[str] = ()) -> Text:
    return Text(text, "note", list(items))


def warning(text: str, items: Iterable[str] = ()) -> Text:
    return Text(text, "warning", list(items))


def error(text: str) -> Text:
    return Text(text, "error")


def subhead(text: str) -> Text:
    return Text(text, "subhead")


def kv_items(mapping: Mapping[str, object]) -> list[tuple[str, str]]:
    """Mapping -> (key, text) pairs; ``None`` shows as "not set", lists/dicts as JSON."""
    import json

    out = []
    for key, value in mapping.items():
        if value is None:
            value = "not set"
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(value, default=str)
        out.append((str(key), str(value)))
    return out


def iter_figures(blocks: Iterable) -> Iterable[Figure]:
    """Every figure in ``blocks``, depth first."""
    for b in blocks:
        if isinstance(b, Figure):
            yield b
        elif isinstance(b, Row):
            yield from b.figures
        elif isinstance(b, (Details, Group)):
            yield from iter_figures(b.blocks)
