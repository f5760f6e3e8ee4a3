"""Validation (paper Fig. 3-4): overlaps with regions of interest against their nulls or
between groups, spatial correlations, ROI-to-ROI connectivity, peaks in a region."""

from __future__ import annotations

import re
from functools import partial

import numpy as np

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import (
    Figure,
    Group,
    KeyValues,
    Section,
    Table,
    note,
    subhead,
)
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.index import DerivFile, threshold_value
from bids_cnm.reports.sections.common import named_files
from bids_cnm.reports.tables import first_row, fmt, fmt_p, formatted, read_tsv

__all__ = ["validation_section", "peak_region_blocks"]


def _pick(files: list[DerivFile], suffix: str) -> DerivFile | None:
    return next((f for f in files if f.suffix == suffix), None)


def _roi_overlap(ctx: ReportContext, name: str, files: list[DerivFile]) -> list:
    summary, values, null = (_pick(files, s) for s in ("summary", "values", "null"))
    ctx.show(*files)
    row = first_row(summary) if summary is not None else {}
    blocks: list = []
    network = row.get("network", "the network")
    statistic = row.get("statistic", "overlap")
    what = (f"{statistic} of the {row.get('n_rois', '')} regions' overlap with {network} "
            f"(% of each region's voxels in the network)")
    blocks.append(note(f"{name}: {what}."))
    if null is not None and "observed" in row:
        draws = read_tsv(null).iloc[:, 0].to_numpy(float)
        p = row.get("p_null")
        blocks.append(Figure(
            partial(figures.null_histogram, draws, float(row["observed"]),
                    None if p is None else float(p), f"{statistic} (% overlap)",
                    row.get("alternative")),
            f"{name}: the observed value (red) against its null distribution "
            f"({row.get('null_kind', 'null')}: {len(draws)} draws).",
            f"{name}: null histogram", [null.name]))
        ctx.key_numbers.append(KeyNumber(
            f"Validation: {name}", f"observed {fmt(row['observed'])} vs null mean "
            f"{fmt(row.get('null_mean'))}", f"null ({row.get('null_kind', '')})",
            fmt_p(p), "validation"))
    if values is not None and "group_a" in row:
        table = read_tsv(values)
        column = row.get("compare_column")
        value_col = "overlap_pct" if "overlap_pct" in table.columns else table.columns[-1]
        if column in table.columns:
            groups = {str(g): table.loc[table[column].astype(str) == str(g), value_col]
                      .to_numpy(float) for g in (row["group_a"], row["group_b"])}
            stats = (f"t = {fmt(row.get('t'))}, df = {fmt(row.get('df'))}, "
                     f"{fmt_p(row.get('p_welch'))}, difference {fmt(row.get('mean_diff'))} "
                     f"[{fmt(row.get('ci_low'))}, {fmt(row.get('ci_high'))}], "
                     f"g = {fmt(row.get('hedges_g'))}")
            blocks.append(Figure(
                partial(figures.group_strip, groups, f"{value_col}", stats),
                f"{name}: {row['group_a']} vs {row['group_b']} regions ({column}); dots: "
                f"regions, black: mean and 95% CI. Welch t-test: {stats}.",
                f"{name}: group comparison", [values.name]))
            ctx.key_numbers.append(KeyNumber(
                f"Validation: {name}", f"{row['group_a']} {fmt(row.get('mean_a'))} vs "
                f"{row['group_b']} {fmt(row.get('mean_b'))}",
                f"t({fmt(row.get('df'))}) = {fmt(row.get('t'))}, g = {fmt(row.get('hedges_g'))}",
                fmt_p(row.get("p_welch")), "validation"))
    if values is not None:
        table = read_tsv(values)
        if {"x", "y", "z", "overlap_pct"} <= set(table.columns) and "group_a" not in row:
            labels = table.get("roi", table.index).astype(str)
            blocks.append(Figure(
                partial(figures.values_glass_brain, table[["x", "y", "z"]].to_numpy(float),
                        table["overlap_pct"].to_numpy(float), "% overlap"),
                f"{name}: the regions' centres coloured by their overlap with the network "
                f"({', '.join(labels[:6])}{'...' if len(labels) > 6 else ''}).",
                f"{name}: regions on a glass brain", [values.name]))
        blocks.append(Table(formatted(table), source=values.name, compact=True,
                            caption="Per region:"))
    if summary is not None:
        blocks.append(Table(formatted(read_tsv(summary)), source=summary.name, compact=True))
    return blocks


#: at most this many voxel scatters per spatial-correlation analysis
MAX_SCATTERS = 6


def _network_map(ctx: ReportContext, name: str) -> DerivFile | None:
    """The output map of a plan's network reference: ``overlap[:set]`` (its kind, at the
    main threshold; without a set the plan's one primary set) or a DBS map (``dbs``,
    ``convergent``)."""
    kind, _, set_name = str(name).partition(":")
    maps = [f for f in ctx.index.get(suffix="boldmap", desc=kind, extension=NIFTI,
                                     variant=None)]
    if set_name:
        maps = [f for f in maps if f.get("set") == set_name]
    elif kind.endswith("overlap"):
        maps = [f for f in maps if ctx.set_is_primary(f.get("set", ""))]
    if ctx.threshold is not None and len(maps) > 1:
        maps = [f for f in maps if threshold_value(f.get("thresh") or "") is not None
                and abs(threshold_value(f.get("thresh")) - ctx.threshold) < 1e-6]
    return maps[0] if len(maps) == 1 else None


def _reference_map(ctx: ReportContext, reference: str) -> str | None:
    """The reference map: a seed's map written by the run (``seed <id> (<stat>)``) or
    the user's image (its BIDS URI, or the path an older run wrote, when it is still
    there)."""
    seed = re.fullmatch(r"seed (\S+) \((\w+)\)", str(reference))
    if seed:
        found = ctx.index.get(suffix="boldmap", seed=seed.group(1), stat=seed.group(2),
                              extension=NIFTI)
        return str(found[0].path) if found else None
    path = ctx.resolve(reference)
    return str(path) if path is not None else None


def _spatial_scatters(ctx: ReportContext, name: str, table) -> list:
    """Voxel scatters of each network against the reference, as the run paired them."""
    pairs, missing = [], []
    for _, row in table.head(MAX_SCATTERS).iterrows():
        network = _network_map(ctx, row["network"])
        reference = _reference_map(ctx, row.get("reference", ""))
        if network is None or reference is None or row.get("method", "pearson") != "pearson":
            missing.append(str(row["network"]))
            continue
        pairs.append(figures.MapPair(f"{row['network']} vs {name}", str(network.path),
                                     reference, f"{row['network']} ({network.get('desc')})",
                                     f"reference {name}"))
    blocks: list = []
    if pairs:
        blocks.append(Figure(
            partial(figures.voxel_scatter, pairs, ctx.mask_path, 3),
            f"{name}: each network against the reference, voxel by voxel over the analysis "
            "mask (the reference resampled linearly onto the connectome grid when it is on "
            "another; hexagonal bins, darker: more voxels; red: least-squares line); r in "
            "each title is computed from the plotted voxels.",
            f"{name}: voxel scatters", []))
    if missing:
        blocks.append(note(f"No scatter for {', '.join(missing)}: the map is not among the "
                           "outputs, the reference image is no longer at its path, or the "
                           "correlation is not Pearson's."))
    return blocks


def _spatial(ctx: ReportContext, name: str, files: list[DerivFile]) -> list:
    summary = _pick(files, "summary")
    ctx.show(*files)
    if summary is None:
        return []
    table = read_tsv(summary)
    blocks: list = []
    if {"network", "r"} <= set(table.columns) and len(table):
        blocks.append(Figure(
            partial(figures.bars, list(table["network"].astype(str)),
                    table["r"].to_numpy(float), "Pearson r", (-1.0, 1.0)),
            f"{name}: spatial correlation of each network with the reference "
            f"({table['reference'].iloc[0] if 'reference' in table else 'reference'}).",
            f"{name}: spatial correlations", [summary.name]))
        blocks += _spatial_scatters(ctx, name, table)
        best = table.iloc[int(np.nanargmax(table["r"].to_numpy(float)))]
        ctx.key_numbers.append(KeyNumber(f"Spatial correlation: {name}",
                                         f"r = {fmt(best['r'])} ({best['network']})",
                                         section="validation"))
    blocks.append(Table(formatted(table), source=summary.name, compact=True))
    return blocks


def _roi_to_roi(ctx: ReportContext, files: list[DerivFile]) -> list:
    main = [f for f in files if f.get("desc") == "roitoroi"]
    summary, ranking, posthoc, values = (_pick(main, s) for s in
                                         ("summary", "ranking", "posthoc", "values"))
    ctx.show(*files)
    blocks: list = []
    if ranking is not None:
        table = read_tsv(ranking)
        blocks.append(Figure(
            partial(figures.bars, list(table["network"].astype(str)),
                    table["mean"].to_numpy(float), "mean connectivity (Fisher z)"),
            "Networks ranked by their mean connectivity with the studies' seeds (per "
            "connectome subject: the mean Fisher z between the seeds and the network's nodes).",
            "ROI-to-ROI ranking", [ranking.name]))
        blocks.append(Table(formatted(table), source=ranking.name, compact=True))
    if summary is not None:
        row = first_row(summary)
        # the statistic's name and its units (nodes, or subjects for repeated measures)
        name = str(row.get("statistic_name", "F"))
        value = row.get("statistic", row.get("F"))
        unit = str(row.get("unit", "nodes"))
        test_words = {"nodes": "one-way ANOVA of the node means across networks",
                      "repeated_measures": "repeated-measures ANOVA over subjects",
                      "friedman": "Friedman test over subjects"}
        blocks.append(subhead(f"Across networks: {test_words.get(str(row.get('test')), name)}"
                              f" (units: {unit})"))
        blocks.append(KeyValues([(k, fmt(v)) for k, v in row.items()]))
        if value is not None:
            df = (f"({fmt(row.get('df_between'))}, {fmt(row.get('df_within'))})"
                  if "df_between" in row else "")
            effect = (f", {row.get('effect_size_name')} = {fmt(row.get('effect_size'))}"
                      if "effect_size" in row else
                      f", eta^2 = {fmt(row.get('eta_squared'))}" if "eta_squared" in row else "")
            ctx.key_numbers.append(KeyNumber(
                "ROI-to-ROI connectivity", f"top network: {row.get('top_network', '?')}",
                f"{name}{df} = {fmt(value)}{effect} ({unit})", fmt_p(row.get("p")),
                "validation"))
    if posthoc is not None:
        blocks.append(Table(formatted(read_tsv(posthoc)), source=posthoc.name, compact=True,
                            caption="Post-hoc pairwise Welch t-tests (p_holm: Holm-corrected)."))
    if values is not None:
        blocks.append(note(f"Per-subject values: {values.name}."))
    nodes = next((f for f in files if f.get("desc") == "roitoroinodes"), None)
    if nodes is not None:
        ctx.show(nodes)
        blocks.append(Table(formatted(read_tsv(nodes)), source=nodes.name, compact=True,
                            caption="The ANOVA's units: each node's mean connectivity with "
                                    "the seeds (Fisher z, mean over subjects)."))
    return blocks


def _network_of(ctx: ReportContext, f: DerivFile, map_name: str) -> DerivFile | None:
    desc = str(map_name).split(":")[0] or "overlap"
    wanted = {k: v for k, v in f.entities.items() if k != "desc"}
    wanted["desc"] = desc
    for g in ctx.index.get(suffix="boldmap", extension=NIFTI):
        if g.entities == wanted:
            return g
    return None


def peak_region_blocks(ctx: ReportContext, name: str, files: list[DerivFile]) -> list:
    """A peak in a region on zoomed slices, with the reference points and distances."""
    peaks, distances = _pick(files, "peaks"), _pick(files, "distances")
    ctx.show(*files)
    if peaks is None:
        return []
    table = read_tsv(peaks)
    blocks: list = []
    refs = read_tsv(distances) if distances is not None else None
    if len(table) and {"x", "y", "z"} <= set(table.columns):
        top = table.iloc[0]
        network = _network_of(ctx, peaks, top.get("map", "overlap"))
        if network is not None:
            references = ([(str(r["label"]), (r["x"], r["y"], r["z"]))
                           for _, r in refs.iterrows()] if refs is not None else [])
            data = figures.finite_data(network.path)
            vmax = float(np.abs(data).max()) or 1.0
            # the other plateaus tied with the first (one row each in the table)
            others = table.iloc[1:] if "plateau" in table.columns else table.iloc[:0]
            ties = others[["x", "y", "z"]].to_numpy(float).tolist()
            tie_text = (" The maximum is tied on " + str(len(others) + 1) + " plateaus: the "
                        "others (yellow, numbered as in the table) at " + "; ".join(
                            f"({fmt(r['x'])}, {fmt(r['y'])}, {fmt(r['z'])}) mm"
                            for _, r in others.iterrows()) + "." if len(others) else "")
            blocks.append(Figure(
                partial(figures.zoomed_slices, str(network.path),
                        (top["x"], top["y"], top["z"]), references, vmax, vmax * 1e-3,
                        ties=ties),
                f"{name}: the peak at ({fmt(top['x'])}, {fmt(top['y'])}, {fmt(top['z'])}) mm "
                f"(cross) in {network.get('desc')}, zoomed; green: the reference points. "
                f"A point is filled in the views whose slice passes within "
                f"{figures.SLICE_SLAB:g} mm of it, hollow in the others. "
                f"Nearest: {top.get('nearest_reference', '?')} at "
                f"{fmt(top.get('nearest_distance_mm'))} mm."
                + tie_text,
                f"{name}: zoomed peak", [peaks.name, network.name]))
            ctx.key_numbers.append(KeyNumber(
                f"Peak in a region: {name}",
                f"({fmt(top['x'])}, {fmt(top['y'])}, {fmt(top['z'])}) mm, nearest "
                f"{top.get('nearest_reference', '?')} ({fmt(top.get('nearest_distance_mm'))} mm)",
                section="validation" if network.get("desc") != "convergent" else "dbs"))
    blocks.append(Table(formatted(table), source=peaks.name, compact=True))
    if refs is not None:
        blocks.append(Table(formatted(refs), source=distances.name, compact=True,
                            caption="Distance of the peak to every reference point:"))
    return blocks


def validation_section(ctx: ReportContext) -> Section | None:
    """The plan's validation analyses, one group each."""
    groups: list = []
    names: list[str] = []
    controls = [f for f in ctx.index.get(suffix="summary", desc="controls", extension=".tsv")]
    for f in controls:
        ctx.show(f)
        names.append(f.name)
        table = read_tsv(f)
        groups.append(Group("validation-controls", "Control sets", [
            note("Each control set's overlap network against the studies': spatial r and "
                 "largest |overlap|."),
            Table(formatted(table), source=f.name, compact=True)]))
    for name, files in sorted(named_files(ctx, "roioverlap").items()):
        names += [f.name for f in files]
        groups.append(Group(f"validation-roioverlap-{name.lower()}",
                            f"Overlap with regions: {_words(name)}",
                            _roi_overlap(ctx, name, files)))
    for name, files in sorted(named_files(ctx, "spatialcorr").items()):
        names += [f.name for f in files]
        groups.append(Group(f"validation-spatialcorr-{name.lower()}",
                            f"Spatial correlation: {_words(name)}", _spatial(ctx, name, files)))
    roitoroi = [f for f in ctx.index.files if f.get("desc") in ("roitoroi", "roitoroinodes")
                and f.extension == ".tsv"]
    if roitoroi:
        names += [f.name for f in roitoroi]
        groups.append(Group("validation-roitoroi", "ROI-to-ROI connectivity",
                            _roi_to_roi(ctx, roitoroi)))
    for name, files in sorted(named_files(ctx, "peak").items()):
        if name.lower().startswith("convergent"):
            continue  # shown with the convergent network
        names += [f.name for f in files]
        groups.append(Group(f"validation-peak-{name.lower()}", f"Peak in a region: "
                            f"{_words(name)}", peak_region_blocks(ctx, name, files)))
    if not groups:
        return None
    return Section("validation", "Validation: the network against independent data",
                   [note("Independent validation of the network: overlap with regions of "
                         "interest against nulls or between groups, spatial correlations "
                         "with reference maps, connectivity with known networks, peaks "
                         "near reference nuclei."), *groups],
                   nav="Validation", analyses=names)


def _words(name: str) -> str:
    """``ConvergentThalamus`` -> ``Convergent Thalamus``; acronyms and names such as
    ``EEGfMRI`` are kept whole (a capital starts a word only when a lower-case letter
    follows it)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", " ", name)
