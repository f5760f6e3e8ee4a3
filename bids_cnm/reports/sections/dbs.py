"""DBS (paper Fig. 5-6): the DBS network, the R-map, the leave-one-out prediction and the
convergent network with its peak among the reference nuclei."""

from __future__ import annotations

from functools import partial

import numpy as np

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Figure, Group, Section, Table, note, warning
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.sections.common import map_figures, named_files, peaks_table
from bids_cnm.reports.sections.validation import peak_region_blocks
from bids_cnm.reports.tables import first_row, fmt, fmt_p, formatted, read_tsv

__all__ = ["dbs_section"]


def _first(ctx: ReportContext, **entities):
    found = ctx.index.get(**entities)
    return found[0] if found else None


def _dbs_blocks(ctx: ReportContext) -> list:
    blocks: list = []
    network = _first(ctx, suffix="boldmap", desc="dbs", extension=NIFTI)
    if network is not None:
        ctx.show(network)
        figs = map_figures(network, what="DBS network", vmax=None, threshold=0.0,
                           cbar_label=str(network.sidecar.get("Statistic", "value")),
                           caption="The DBS network: the connectivity of the patients' "
                                   "stimulation volumes, averaged.")
        blocks += figs[:1] or [warning(f"The DBS network is empty ({network.name}).")]
    rmap = _first(ctx, suffix="boldmap", desc="dbsrmap", stat="r", extension=NIFTI)
    if rmap is not None:
        p_map = _first(ctx, suffix="boldmap", desc="dbsrmap", stat="p", extension=NIFTI)
        ctx.show(rmap, p_map, _first(ctx, suffix="boldmap", desc="dbsrmap", stat="pfwe",
                                     extension=NIFTI))
        data = figures.finite_data(rmap.path)
        threshold = float(np.percentile(np.abs(data[data != 0]), 90)) if data.any() else 0.0
        blocks += map_figures(
            rmap, what="R-map", vmax=1.0, threshold=threshold, cbar_label="r",
            caption="R-map: per voxel, the correlation across patients between the "
                    "connectivity of their stimulation volume and their outcome; shown where "
                    f"|r| is in the top 10% (|r| > {threshold:.2f}).")[:1]
    summary = _first(ctx, suffix="summary", desc="dbs", extension=".tsv")
    loo = _first(ctx, suffix="values", desc="dbsloo", extension=".tsv")
    row = first_row(summary) if summary is not None else {}
    if loo is not None:
        ctx.show(loo)
        table = read_tsv(loo)
        text = (f"leave-one-out r = {fmt(row.get('loo_r'))}, "
                f"{fmt_p(row.get('loo_p_permutation', row.get('loo_p_parametric')))}"
                if row else "")
        blocks.append(Figure(
            partial(figures.scatter_fit, table["similarity"].to_numpy(float),
                    table["outcome"].to_numpy(float), "similarity to the R-map (left out)",
                    "outcome", text, list(table.get("patient", table.index).astype(str))),
            "Leave-one-out prediction: each patient's similarity to the R-map computed "
            f"without them, against their outcome. {text}.",
            "leave-one-out scatter", [loo.name]))
    if summary is not None:
        ctx.show(summary)
        blocks.append(Table(formatted(read_tsv(summary)), source=summary.name, compact=True))
        if row:
            ctx.key_numbers.append(KeyNumber(
                "DBS network", f"r with the network = {fmt(row.get('r_dbs_network'))}",
                f"leave-one-out r = {fmt(row.get('loo_r'))}",
                fmt_p(row.get("loo_p_permutation", row.get("loo_p_parametric"))), "dbs"))
    return blocks


def _convergent_blocks(ctx: ReportContext) -> list:
    blocks: list = []
    for f in ctx.index.get(suffix="boldmap", desc="convergent", extension=NIFTI):
        ctx.show(f)
        peaks = next((g for g in ctx.index.get(suffix="peaks", desc="convergent", extension=".tsv")
                      if g.get("set") == f.get("set")), None)
        summary = next((g for g in ctx.index.get(suffix="summary", desc="convergent",
                                                 extension=".tsv")
                        if g.get("set") == f.get("set")), None)
        peak_frame = read_tsv(peaks) if peaks is not None else None
        blocks += map_figures(f, what="Convergent network", vmax=None, threshold=0.0,
                              cbar_label="value", peaks=peak_frame,
                              caption="The convergent network: where the coordinate network "
                                      "and the DBS network agree.")
        if summary is not None:
            ctx.show(summary)
            row = first_row(summary)
            blocks.append(Table(formatted(read_tsv(summary)), source=summary.name,
                                compact=True))
            if peak_frame is not None and len(peak_frame):
                top = peak_frame.iloc[0]
                ctx.key_numbers.append(KeyNumber(
                    "Convergent network", f"peak at ({fmt(top['x'])}, {fmt(top['y'])}, "
                    f"{fmt(top['z'])}) mm; r with the network "
                    f"{fmt(row.get('r_convergent_network'))}", section="dbs"))
        if peaks is not None:
            ctx.show(peaks)
            blocks += peaks_table(peaks, "peaks-convergent", "Peaks of the convergent network.",
                                  user_atlas=ctx.user_atlas)
    for name, files in sorted(named_files(ctx, "peak").items()):
        if name.lower().startswith("convergent"):
            blocks.append(note(f"Peak in a region: {name}"))
            blocks += peak_region_blocks(ctx, name, files)
    return blocks


def dbs_section(ctx: ReportContext) -> Section | None:
    """DBS network and R-map, leave-one-out prediction, convergent network."""
    groups = []
    dbs = _dbs_blocks(ctx)
    if dbs:
        groups.append(Group("dbs-network", "DBS network and R-map", dbs))
    convergent = _convergent_blocks(ctx)
    if convergent:
        groups.append(Group("dbs-convergent", "Convergent network", convergent))
    if not groups:
        return None
    names = sorted(p.name for p in ctx.shown if "dbs" in p.name or "onvergent" in p.name)
    return Section("dbs", "DBS and the convergent network", groups, nav="DBS",
                   analyses=names)
