"""Specificity (paper Fig. 2/Supp.): where the studies' networks differ from the control
sets' networks, as significant voxels on slices through the clusters (never projections)."""

from __future__ import annotations

import numpy as np

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Group, Section, note, slug, warning
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.sections.common import map_figures, peaks_table
from bids_cnm.reports.tables import read_tsv

__all__ = ["specificity_section", "P_LOG10"]

#: -log10(0.05): the significance threshold of the p-maps
P_LOG10 = float(-np.log10(0.05))
_CORRECTIONS = (("logpFWE", "FWE-corrected"), ("logpFDR", "FDR-adjusted"))


def _comparison(ctx: ReportContext, set_name: str, control: str) -> tuple[list, list[str]]:
    index = ctx.index
    mine = [f for f in index.files if f.get("set") == set_name and f.get("control") == control]
    ctx.show(*mine)  # the t, TFCE and uncorrected maps are summarised by the corrected ones
    names = [f.name for f in mine if f.extension != ".json"]
    blocks: list = []
    clusters_file = next((f for f in mine if f.suffix == "clusters" and f.extension == ".tsv"),
                         None)
    clusters = read_tsv(clusters_file) if clusters_file is not None else None
    mask = next((f for f in mine if f.suffix == "mask" and f.extension in NIFTI), None)
    if mask is not None:
        data = figures.finite_data(mask.path)
        n_pos, n_neg = int((data > 0).sum()), int((data < 0).sum())
        figs = map_figures(
            mask, what=f"Significant voxels, {set_name} vs {control}", vmax=1.0,
            threshold=0.5, cbar_label="sign", peaks=clusters,
            caption="Voxels where the studies' networks are significantly stronger (red) or "
                    "weaker (blue) than the control networks (p < 0.05, corrected).")
        blocks.append(note(f"{n_pos} voxels significantly higher in {set_name}, {n_neg} "
                           f"lower than in {control} (p < 0.05 corrected)."))
        blocks += figs or [warning(f"No significant voxel ({mask.name}).")]
        ctx.key_numbers.append(KeyNumber(
            f"Specificity, {set_name} vs {control}",
            f"{n_pos} voxels higher, {n_neg} lower (p < 0.05 corrected)",
            section="specificity"))
    for stat, words in _CORRECTIONS:
        f = next((g for g in mine if g.get("stat") == stat and g.extension in NIFTI), None)
        if f is None:
            continue
        figs = map_figures(
            f, what=f"{words} -log10 p, {set_name} vs {control}", vmax=None,
            threshold=P_LOG10, symmetric=False, cmap="hot", cbar_label="-log10 p",
            peaks=clusters,
            caption=f"{words} p-values of the permutation test as -log10 p, thresholded at "
                    "p < 0.05 (-log10 p > 1.3).")
        blocks += figs[:1] or [note(f"No voxel with {words} p < 0.05 ({f.name}).")]
    if clusters_file is not None:
        blocks += peaks_table(clusters_file, f"clusters-{slug(set_name)}-{slug(control)}",
                              "Clusters of significant voxels: their peaks (value: the test "
                              "statistic; cluster_size_mm3: the cluster's volume).",
                              user_atlas=ctx.user_atlas)
    return blocks, names


def specificity_section(ctx: ReportContext) -> Section | None:
    """One group per comparison of a set with a control set."""
    pairs = list(dict.fromkeys((f.get("set"), f.get("control"))
                               for f in ctx.index.files if f.get("control")))
    if not pairs:
        return None
    groups, names = [], []
    for set_name, control in pairs:
        blocks, shown = _comparison(ctx, set_name, control)
        names += shown
        groups.append(Group(f"specificity-{slug(set_name)}-{slug(control)}",
                            f"{set_name} vs {control}", blocks, ctx.set_colors.get(control)))
    intro = note("Whether the study networks differ from the control networks (other "
                 "coordinates; relocated copies of the studies): voxel-wise permutation tests "
                 "of the seed networks, corrected over the brain.")
    return Section("specificity", "Specificity: the studies' network against control sets",
                   [intro, *groups], nav="Specificity", analyses=names)
