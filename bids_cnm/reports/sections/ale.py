"""ALE meta-analysis: the surviving clusters, their table, and their agreement with the
overlap network."""

from __future__ import annotations

from functools import partial

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Figure, Section, Table, note, warning
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.index import DerivFile, threshold_value
from bids_cnm.reports.sections.common import map_figures, peaks_table
from bids_cnm.reports.tables import first_row, fmt, formatted, read_tsv

__all__ = ["ale_section"]


def _overlap_of(ctx: ReportContext, ale: DerivFile) -> DerivFile | None:
    """The overlap network the ALE was correlated with: its set's, at the main threshold."""
    candidates = [f for f in ctx.index.get(suffix="boldmap", desc="overlap", extension=NIFTI,
                                           set=ale.get("set"), variant=None)]
    if ctx.threshold is not None:
        candidates = [f for f in candidates
                      if threshold_value(f.get("thresh") or "") is not None
                      and abs(threshold_value(f.get("thresh")) - ctx.threshold) < 1e-6]
    return candidates[0] if len(candidates) == 1 else None


def _scatter(ctx: ReportContext, ale: list[DerivFile], r: object) -> list:
    """The voxels behind r_ale_overlap: the unthresholded ALE z (resampled onto the
    connectome grid) against the overlap network, over the analysis mask."""
    z = next((f for f in ale if f.get("desc") == "ale" and f.get("stat") == "z"
              and f.extension in NIFTI), None)
    overlap = _overlap_of(ctx, z) if z is not None else None
    if overlap is None:
        return []
    pair = figures.MapPair(f"ALE z vs overlap network, set {overlap.get('set')}",
                           str(overlap.path), str(z.path), "overlap network", "ALE z")
    return [Figure(partial(figures.voxel_scatter, [pair], ctx.mask_path),
                   f"The ALE z map (resampled linearly onto the connectome grid) against the "
                   f"overlap network, voxel by voxel over the analysis mask; the r in the title "
                   f"is computed from the plotted voxels (the run's r_ale_overlap = {fmt(r)}).",
                   "voxel scatter of the ALE against the overlap network",
                   [z.name, overlap.name])]


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
        blocks += peaks_table(peaks, "ale-clusters", "Surviving clusters: their peaks.",
                              user_atlas=ctx.user_atlas)
    blocks += _scatter(ctx, ale, row.get("r_ale_overlap"))
    if summary is not None:
        blocks.append(Table(formatted(read_tsv(summary)), source=summary.name, compact=True))
    return Section("ale", "ALE meta-analysis of the coordinates", blocks, nav="ALE",
                   analyses=sorted(f.name for f in ale))
