"""Sensitivity: how much the network changes with the analysis choices."""

from __future__ import annotations

from functools import partial

import numpy as np

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Figure, Group, Section, Table, note, slug
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.sections.common import cuts, sibling, thresh_text
from bids_cnm.reports.tables import fmt, formatted, read_matrix, read_tsv

__all__ = ["sensitivity_section"]

#: at most this many variant maps in the small multiple
MAX_VARIANT_ROWS = 16
#: at most this many voxel scatters of a variant against the main network
MAX_SCATTERS = 8


def _scatters(ctx: ReportContext, items: list[tuple[str, float, str]], source: str) -> list:
    """Voxel scatters of every variant's overlap against the main network's (the pairs
    behind ``r_with_main``), the least alike first."""
    main = next((path for name, _, path in items if name == "main"), None)
    others = [(name, r, path) for name, r, path in items if name != "main"]
    if main is None or not others:
        return []
    others.sort(key=lambda item: item[1] if np.isfinite(item[1]) else -np.inf)
    pairs = [figures.MapPair(name, main, path, "main network (overlap)",
                             f"{name} (overlap)") for name, _, path in others[:MAX_SCATTERS]]
    shown = "" if len(others) <= MAX_SCATTERS else \
        f" The {MAX_SCATTERS} least alike of {len(others)} variants are drawn."
    return [Figure(
        partial(figures.voxel_scatter, pairs, ctx.mask_path),
        "Each variant's signed overlap against the main network's, voxel by voxel over the "
        "analysis mask (hexagonal bins, darker: more voxels; red: least-squares line); r in "
        "each title is computed from the plotted voxels and equals r_with_main." + shown,
        "voxel scatters of the variants against the main network", [source])]


def _heatmap(ctx: ReportContext, f) -> list:
    frame = read_tsv(f)
    matrix, rows, cols = read_matrix(frame)
    ctx.show(f)
    return [Figure(partial(figures.heatmap, matrix, rows, cols, None,
                           str(f.sidecar.get("Statistic", "r"))),
                   "Spatial correlation (Pearson r over the analysis mask) between the signed "
                   "overlap maps of every pair of variants; red positive, blue negative.",
                   f"correlation matrix {f.name}", [f.name])]


def _variants(ctx: ReportContext, f) -> list:
    frame = read_tsv(f)
    ctx.show(f)
    blocks: list = []
    items = []
    scatter_items: list[tuple[str, float, str]] = []  # (variant, r with main, path)
    if "file" in frame.columns:
        for _, row in frame.iterrows():
            # the file column is relative to the derivatives folder (older runs: the TSV's)
            path = ctx.index.root / str(row["file"])
            if not path.is_file():
                path = f.path.parent / str(row["file"])
            if not path.is_file():
                continue
            label = str(row.get("variant", path.name))
            r = float(row["r_with_main"]) if "r_with_main" in frame.columns else np.nan
            scatter_items.append((label, r, str(path)))
            if np.isfinite(r):
                label += f"  (r = {r:.2f})"
            items.append((label, str(path)))
            ctx.show(path)
    if items:
        data = figures.finite_data(items[0][1])
        _, z_cuts = cuts(data, figures.load(items[0][1]).affine, 1e-6)
        blocks.append(Figure(
            partial(figures.slices_grid, items[:MAX_VARIANT_ROWS], z_cuts, 1.0, 1e-6,
                    ctx.mask_path, "RdBu_r", "overlap"),
            "The signed overlap map of every variant (rows; r: spatial correlation with the "
            "main network), on the same axial slices; colour scale [-1, 1].",
            "overlap maps of the variants", [f.name]))
        if len(items) > MAX_VARIANT_ROWS:
            blocks.append(note(f"{MAX_VARIANT_ROWS} of {len(items)} variants drawn."))
        blocks += _scatters(ctx, scatter_items, f.name)
    shown = frame.drop(columns=["file"]) if "file" in frame.columns else frame
    blocks.append(Table(formatted(shown), source=f.name, compact=True))
    if "r_with_main" in frame.columns and len(frame) > 1:
        others = frame[frame.get("variant", "") != "main"]["r_with_main"].to_numpy(float)
        if others.size:
            ctx.key_numbers.append(KeyNumber(
                f"Sensitivity, set {f.get('set', '?')}",
                f"{others.size} variants, r with the main network {fmt(np.nanmin(others))} to "
                f"{fmt(np.nanmax(others))}", section="sensitivity"))
    return blocks


def sensitivity_section(ctx: ReportContext) -> Section | None:
    """Correlation matrix of the variants and their maps as small multiples."""
    groups = []
    names = []
    for set_name in ctx.index.values("set"):
        body: list = []
        variants = ctx.index.get(suffix="variants", desc="sensitivity", set=set_name,
                                  extension=".tsv")
        for f in variants:
            body += _variants(ctx, f)
            names.append(f.name)
        for f in ctx.index.get(suffix="correlations", set=set_name, extension=".tsv"):
            try:
                body = _heatmap(ctx, f) + body if f.get("desc") == "sensitivity" else \
                    body + [Table(formatted(read_tsv(f)), source=f.name, compact=True,
                                  caption="Spatial correlation with the main network.")]
            except ValueError:
                body.append(Table(formatted(read_tsv(f)), source=f.name, compact=True))
            ctx.show(f)
            names.append(f.name)
        # variant maps without a variants table (e.g. another connectome)
        loose = [g for g in ctx.index.get(suffix="boldmap", desc="overlap", extension=NIFTI,
                                          set=set_name, variant=True)
                 if g.path not in ctx.shown]
        if loose:
            items = [(f"{g.get('variant')}, {thresh_text(g.get('thresh'))}", str(g.path))
                     for g in loose[:MAX_VARIANT_ROWS]]
            data = figures.finite_data(loose[0].path)
            _, z_cuts = cuts(data, figures.load(loose[0].path).affine, 1e-6)
            body.append(Figure(partial(figures.slices_grid, items, z_cuts, 1.0, 1e-6,
                                       ctx.mask_path, "RdBu_r", "overlap"),
                               "Overlap maps of further variants (rows).",
                               "overlap maps of further variants", [g.name for g in loose[:3]]))
            names += [g.name for g in loose]
        for g in ctx.index.get(suffix="boldmap", extension=NIFTI, set=set_name, variant=True):
            ctx.show(g, sibling(ctx.index, g, "peaks", ".tsv", desc=None))
        if body:
            groups.append(Group(f"sensitivity-{slug(set_name)}", f"Set {set_name}", body,
                                ctx.set_colors.get(set_name)))
    if not groups:
        return None
    intro = note("How much the network changes with the analysis choices: thresholds, "
                 "sphere sizes, one seed per coordinate, subgroups of studies, other "
                 "connectomes.")
    return Section("sensitivity", "Sensitivity: the network under other analysis choices",
                   [intro, *groups], nav="Sensitivity", analyses=names)
