"""Outputs no other section shows (e.g. of analyses newer than this report): each map on
slices, each table as it is, so nothing the run wrote is hidden."""

from __future__ import annotations

from bids_cnm.reports.blocks import Group, Section, Table, note, slug
from bids_cnm.reports.context import NIFTI, ReportContext
from bids_cnm.reports.sections.common import map_figures
from bids_cnm.reports.tables import formatted, read_tsv

__all__ = ["other_section", "MAX_OTHER_MAPS"]

#: at most this many further maps are drawn (the others are listed)
MAX_OTHER_MAPS = 6


def _words(f) -> str:
    parts = [f"{k} {v}" for k, v in f.entities.items() if k not in ("task", "space", "res")]
    return ", ".join(parts) + f" ({f.suffix})"


def other_section(ctx: ReportContext) -> Section | None:
    """Every group-level map and table that no section has shown."""
    rest = [f for f in ctx.index.files
            if f.path not in ctx.shown and f.extension in (*NIFTI, ".tsv")
            and not f.get("seed") and f.name != "seeds.tsv"
            and not (f.suffix == "mask" and f.get("desc") == "analysis")]
    if not rest:
        return None
    groups, listed = [], []
    n_maps = 0
    for f in rest:
        try:
            if f.extension == ".tsv":
                blocks = [Table(formatted(read_tsv(f)), source=f.name, compact=True,
                                caption=str(f.sidecar.get("Description", "")))]
            elif n_maps < MAX_OTHER_MAPS:
                n_maps += 1
                blocks = map_figures(f, what=_words(f), vmax=None, threshold=0.0,
                                     cbar_label=str(f.get("stat") or "value"),
                                     caption=str(f.sidecar.get("Description", "")))[:1]
                blocks = blocks or [note(f"The map is empty ({f.name}).")]
            else:
                listed.append(f.name)
                continue
        except Exception as exc:  # an unknown file must not cost the report
            ctx.errors.append(f"{f.name}: {type(exc).__name__}: {exc}")
            continue
        ctx.show(f)
        groups.append(Group(f"other-{slug(f.path.stem)}", _words(f), blocks))
    if listed:
        groups.append(note("Not drawn:", listed))
    return Section("other", "Further outputs of the run", [
        note("Maps and tables of the run that the sections above do not show."), *groups],
        nav="Other", analyses=[f.name for f in rest])
