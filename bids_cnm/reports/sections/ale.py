"""ALE meta-analysis: the surviving clusters, their table, and their agreement with the
overlap network."""

from __future__ import annotations

from bids_cnm.reports.blocks import Section, Table, note, warning
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.sections.common import map_figures, peaks_table
from bids_cnm.reports.tables import first_row, fmt, formatted, read_tsv

__all__ = ["ale_section"]


def ale_section(ctx: ReportContext) -> Section | None:
    """Cluster-FWE ALE z map on slices through the clusters, with their table."""
    ale = [f for f in ctx.index.files if (f.get("desc") or "").startswith("ale")]
    if not ale:
        return None
    ctx.show(*ale)
    blocks: list = []
    summary = next((f for f in ale if f.suffix == "summary" and f.extension == ".tsv"), None)
    peaks = next((f for f in ale if f.suffix == "peaks" and f.extension == ".tsv"), None)
    z_map = next((f for f in ale if f.get("desc") == "aleclusterfwe" and f.get("stat") == "z"
                  and f.extension in NIFTI), None)
    row = first_row(summary) if summary is not None else {}
    if row:
        blocks.append(note(
            f"ALE of {fmt(row.get('n_studies'))} studies ({fmt(row.get('n_foci'))} foci, "
            f"{fmt(row.get('n_iters'))} iterations): {fmt(row.get('n_clusters'))} clusters "
            f"survive (voxel p < {fmt(row.get('voxel_thresh'))}, cluster-level FWE p < "
            f"{fmt(row.get('cluster_threshold'))}); spatial correlation with the overlap "
            f"network r = {fmt(row.get('r_ale_overlap'))}. The ALE maps are on NiMARE's "
            f"grid ({ale[0].get('space')}, res-{ale[0].get('res')}), not the connectome's."))
        ctx.key_numbers.append(KeyNumber(
            "ALE", f"{fmt(row.get('n_clusters'))} clusters, max z {fmt(row.get('max_z'))} at "
            f"({fmt(row.get('peak_x'))}, {fmt(row.get('peak_y'))}, {fmt(row.get('peak_z'))}) mm",
            f"r with the overlap network = {fmt(row.get('r_ale_overlap'))}", section="ale"))
    if z_map is not None:
        figs = map_figures(z_map, what="ALE clusters", vmax=None, threshold=0.0,
                           symmetric=False, cmap="hot", cbar_label="z",
                           peaks=read_tsv(peaks) if peaks is not None else None,
                           caption="z of the ALE in the clusters that survive cluster-level "
                                   "FWE correction.")
        blocks += figs or [warning("No ALE cluster survives.")]
    if peaks is not None:
        blocks += peaks_table(peaks, "ale-clusters", "Surviving clusters: their peaks.")
    if summary is not None:
        blocks.append(Table(formatted(read_tsv(summary)), source=summary.name, compact=True))
    return Section("ale", "ALE meta-analysis of the coordinates", blocks, nav="ALE",
                   analyses=sorted(f.name for f in ale))
