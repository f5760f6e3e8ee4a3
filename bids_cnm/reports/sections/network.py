"""The coordinate network (paper Fig. 2): the signed overlap of every set at the main
threshold, its peaks, the other thresholds compactly, the control sets, the seeds."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Figure, Group, Section, Table, note, slug, warning
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.index import DerivFile, threshold_value
from bids_cnm.reports.sections.common import (
    cuts,
    map_figures,
    peaks_table,
    sibling,
    sorted_by_set,
    thresh_text,
)
from bids_cnm.reports.tables import fmt, read_tsv

__all__ = ["network_section", "seeds_section", "RANDOM_SET", "MAX_SEED_PANELS"]

#: the set of randomly relocated copies of the studies (a null, not a network)
RANDOM_SET = "random"
#: the seed networks section draws at most this many seeds
MAX_SEED_PANELS = 24


def _overlap_maps(ctx: ReportContext) -> list[DerivFile]:
    return sorted_by_set(ctx, ctx.index.get(suffix="boldmap", desc="overlap", extension=NIFTI,
                                            variant=None))


def _is_main(ctx: ReportContext, f: DerivFile, all_thresholds: set[str]) -> bool:
    value = threshold_value(f.get("thresh") or "")
    if ctx.threshold is None or value is None:
        return len(all_thresholds) == 1
    return abs(value - ctx.threshold) < 1e-6


def _fractions(ctx: ReportContext, f: DerivFile) -> tuple[list, dict]:
    """Sentences on the positive and negative fractions, and the numbers."""
    numbers = {}
    texts = []
    for desc, word in (("posoverlap", "positive"), ("negoverlap", "negative")):
        g = sibling(ctx.index, f, f.suffix, f.extension, desc=desc)
        if g is None:
            continue
        data = figures.finite_data(g.path)
        ctx.show(g)
        top = float(data.max()) if data.size else 0.0
        numbers[word] = top
        n_studies = f.sidecar.get("NumberOfStudies")
        share = (f" ({round(top * n_studies)} of {n_studies} studies)"
                 if isinstance(n_studies, int) else "")
        texts.append(f"{word} networks: up to {top:.0%}{share} of the studies overlap, "
                     f"{int(np.count_nonzero(data >= top - 1e-6)) if top > 0 else 0} voxels "
                     f"at that maximum ({g.name})")
    return texts, numbers


def tied_plateaus(f: DerivFile, mask: DerivFile | None = None) -> pd.DataFrame:
    """The plateaus of the map's extreme value (one row each: plateau, x, y, z, value,
    n_voxels), as the plan's peak analyses find them (:func:`peak_plateaus`).

    The extreme of one sign: the positive maximum unless the negative minimum is larger
    in magnitude (a network's peak is where most studies agree in one direction; a
    positive and a negative region at the same |value| are two networks' peaks, not a
    tie)."""
    from bids_cnm.analyses.validation import peak_plateaus

    img = figures.clean(f.path)
    region = np.ones(img.shape[:3], dtype=bool)
    if mask is not None:
        m = figures.load(mask.path)
        if m.shape[:3] == img.shape[:3]:
            region = np.asarray(m.dataobj) > 0
    data = np.asarray(img.dataobj)[region]
    sign = "positive" if data.size == 0 or data.max() >= -data.min() else "negative"
    return peak_plateaus(img, region, sign=sign)


def _plateaus_figure(ctx: ReportContext, f: DerivFile, what: str, threshold: float,
                     n_studies: object) -> list:
    """A glass brain marking every tied plateau of the maximum, when there are several."""
    plateaus = tied_plateaus(f, ctx.mask)
    if len(plateaus) < 2 or float(plateaus["value"].abs().max()) == 0:
        return []
    top = float(plateaus["value"].iloc[0])
    share = (f" ({round(abs(top) * n_studies)} of {n_studies} studies)"
             if isinstance(n_studies, int) else "")
    where = "; ".join(f"{int(r.plateau)}: ({r.x:g}, {r.y:g}, {r.z:g}) mm, {int(r.n_voxels)} "
                      f"voxel{'s' if r.n_voxels != 1 else ''}"
                      for r in plateaus.itertuples())
    ctx.show(f)
    return [Figure(
        partial(figures.plateaus_glass_brain, str(f.path),
                plateaus[["x", "y", "z"]].to_numpy(float).tolist(), 1.0, threshold,
                "overlap"),
        f"{what}: the {'maximum' if top > 0 else 'minimum'} overlap {top:g}{share} is "
        f"tied on {len(plateaus)} "
        f"separate plateaus (voxels sharing it, connected by faces, edges or corners), each "
        f"marked and numbered on the glass brain at its voxel nearest its centre — {where}. "
        f"No single peak stands for the network.",
        f"{what}: tied plateaus of the maximum", [f.name])]


def _main_block(ctx: ReportContext, f: DerivFile) -> list:
    set_name = f.get("set", "?")
    side = f.sidecar
    n_studies = side.get("NumberOfStudies")
    display_thr = 0.5 / n_studies if isinstance(n_studies, int) and n_studies > 0 else 1e-3
    peaks_file = sibling(ctx.index, f, "peaks", ".tsv", desc=None)
    peaks = read_tsv(peaks_file) if peaks_file is not None else None
    if peaks is not None and "map" in peaks.columns and (peaks["map"] == "overlap").any():
        peaks = peaks[peaks["map"] == "overlap"]
    ctx.show(f, peaks_file)
    studies = side.get("Studies") or []
    blocks: list = [note(
        f"{n_studies or 'The'} studies of set {set_name}: each study's seed network "
        f"thresholded at {thresh_text(f.get('thresh'))} and binarized with its sign, then "
        f"averaged: (positive - negative) / studies."
        + (f" Studies: {', '.join(map(str, studies))}." if studies else ""))]
    figs = map_figures(
        f, what=f"Overlap network, set {set_name}", vmax=1.0, threshold=display_thr,
        cbar_label="overlap", peaks=peaks,
        caption="Red: regions positively connected to the studies' seeds, blue: negatively; "
                "colour scale [-1, 1].")
    if not figs:
        blocks.append(warning(f"The overlap map is empty at this threshold ({f.name})."))
    blocks += figs
    if figs and ctx.set_is_primary(set_name):  # the studies' network (not the controls')
        blocks += _plateaus_figure(ctx, f, f"Overlap network, set {set_name}", display_thr,
                                   n_studies)
    texts, numbers = _fractions(ctx, f)
    if texts:
        blocks.append(note("Positive and negative fractions: " + "; ".join(texts) + "."))
    if peaks_file is not None:
        blocks += peaks_table(peaks_file, f"peaks-{slug(set_name)}-{slug(f.get('thresh', ''))}",
                              "Peaks: local maxima of the clusters where |value| is at least "
                              "half the map's maximum (overlap, posoverlap, negoverlap); x, y, "
                              "z in MNI mm.", user_atlas=ctx.user_atlas)
        if peaks is not None and len(peaks) and ctx.set_is_primary(set_name):
            values = peaks["value"].to_numpy(float)
            top = peaks.iloc[np.argmax(np.abs(values))]
            # ties of the same sign (as the plateau figure counts them)
            tied = int(np.count_nonzero(np.abs(values - float(top["value"])) < 1e-9))
            ctx.key_numbers.append(KeyNumber(
                f"Overlap network, set {set_name}",
                f"max overlap {fmt(top['value'])} at ({fmt(top['x'])}, {fmt(top['y'])}, "
                f"{fmt(top['z'])}) mm" + (f" and {tied - 1} other tied peak(s)" if tied > 1
                                          else "")
                + (f"; up to {numbers['positive']:.0%} positive, "
                   f"{numbers.get('negative', 0):.0%} negative" if numbers else ""),
                section="network"))
    return blocks


def _thresholds_block(ctx: ReportContext, files: list[DerivFile], z_cuts: list[float]) -> list:
    """Every threshold of one set as one row of axial slices."""
    items = [(thresh_text(f.get("thresh")), str(f.path)) for f in files]
    ctx.show(*files)
    for f in files:
        ctx.show(sibling(ctx.index, f, f.suffix, f.extension, desc="posoverlap"),
                 sibling(ctx.index, f, f.suffix, f.extension, desc="negoverlap"),
                 sibling(ctx.index, f, "peaks", ".tsv", desc=None))
    return [Figure(
        partial(figures.slices_grid, items, z_cuts, 1.0, 1e-6, ctx.mask_path, "RdBu_r",
                "overlap"),
        "The network at every threshold of the run (rows), on the axial slices of the main "
        "network; grey: the analysis mask outline.",
        f"overlap at every threshold, set {files[0].get('set')}", [f.name for f in files])]


def _random_block(ctx: ReportContext, files: list[DerivFile]) -> list:
    """The randomly relocated studies: a null, summarised (not page after page of maps)."""
    seeds = [s for s, k in ctx.seed_sets.items() if k == RANDOM_SET]
    blocks: list = [note(
        f"{len(seeds) or 'The'} randomly relocated copies of the studies (seeds "
        f"{', '.join(seeds[:3])}{'...' if len(seeds) > 3 else ''}): their overlap is what "
        "chance gives; the specificity tests compare the studies with them.")]
    rows = []
    for f in files:
        data = figures.finite_data(f.path)
        ctx.show(f, sibling(ctx.index, f, "peaks", ".tsv", desc=None),
                 sibling(ctx.index, f, f.suffix, f.extension, desc="posoverlap"),
                 sibling(ctx.index, f, f.suffix, f.extension, desc="negoverlap"))
        rows.append({"threshold": thresh_text(f.get("thresh")),
                     "studies": f.sidecar.get("NumberOfStudies", "n/a"),
                     "max |overlap|": fmt(np.abs(data).max() if data.size else 0),
                     "voxels with |overlap| >= 0.5": int(np.count_nonzero(np.abs(data) >= 0.5))})
    blocks.append(Table(pd.DataFrame(rows), caption="The random set's overlap at each "
                        "threshold (the maps are in the output folder).", compact=True))
    return blocks


def network_section(ctx: ReportContext) -> Section | None:
    """The overlap network of every set: the main threshold in full, others compactly."""
    maps = _overlap_maps(ctx)
    if not maps:
        return None
    thresholds = {f.get("thresh") for f in maps}
    blocks: list = []
    for set_name in dict.fromkeys(f.get("set", "?") for f in maps):
        files = [f for f in maps if f.get("set", "?") == set_name]
        color = ctx.set_colors.get(set_name)
        if set_name == RANDOM_SET:
            blocks.append(Group("network-random", "Random relocations (a null)",
                                _random_block(ctx, files), color))
            continue
        main = [f for f in files if _is_main(ctx, f, thresholds)] or files[:1]
        for f in main:
            body = _main_block(ctx, f)
            others = [g for g in files if g not in main]
            if others:
                data = figures.finite_data(f.path)
                _, z_cuts = cuts(data, figures.load(f.path).affine, 1e-6)
                body += _thresholds_block(ctx, [f, *others], z_cuts)
            blocks.append(Group(f"network-{slug(set_name)}-{slug(f.get('thresh', ''))}",
                                f"Set {set_name} at {thresh_text(f.get('thresh'))}", body,
                                color))
    intro = note("The coordinate network: each study's seed network (one-sample t of the "
                 "connectivity across the connectome subjects) thresholded and binarized with "
                 "its sign, then averaged over the studies of a set. The main threshold is "
                 "shown in full, the others below it as rows of slices.")
    return Section("network", "The network: signed overlap at the main threshold",
                   [intro, *blocks], nav="Network",
                   analyses=sorted({f.name for f in maps}))


def _pick_seeds(ctx: ReportContext, seed_ids: list[str], cap: int, per_set: int = 4) -> list[str]:
    """At most ``cap`` seeds: the first ``per_set`` of every set, then the rest in
    set order (so the first set, the studies, fills the remaining places)."""
    if len(seed_ids) <= cap:
        return seed_ids
    by_set: dict[str, list[str]] = {}
    for s in seed_ids:
        by_set.setdefault(ctx.seed_sets.get(s, ""), []).append(s)
    chosen: list[str] = []
    for members in by_set.values():
        chosen += members[: min(per_set, cap - len(chosen))]
    for members in by_set.values():
        for s in members[per_set:]:
            if len(chosen) < cap:
                chosen.append(s)
    keep = set(chosen)
    return [s for s in seed_ids if s in keep]


def seeds_section(ctx: ReportContext) -> Section | None:
    """The studies' seed networks as glass brains (t-maps thresholded at the main T)."""
    tmaps = ctx.index.get(suffix="boldmap", stat="t", extension=NIFTI, control=None)
    by_seed: dict[str, DerivFile] = {}
    for f in tmaps:
        if f.get("seed"):
            by_seed.setdefault(f.get("seed"), f)
    order = [s for s in ctx.main_seeds() if s in by_seed] if ctx.coords else list(by_seed)
    order = [s for s in order if ctx.seed_sets.get(s) != RANDOM_SET]
    if not order:
        return None
    shown = _pick_seeds(ctx, order, MAX_SEED_PANELS)
    threshold = ctx.threshold if ctx.threshold is not None else 0.0
    panels = [
        figures.Panel(
            label=f"{s}" + (f"  ({ctx.seed_sets[s]})" if s in ctx.seed_sets else ""),
            img=str(by_seed[s].path),
            coords=ctx.coords.get(s, np.empty((0, 3))),
            color=ctx.set_colors.get(ctx.seed_sets.get(s, ""), "black"),
        )
        for s in shown
    ]
    ctx.show(*by_seed.values())
    n_sub = by_seed[shown[0]].sidecar.get("NumberOfSubjects")
    blocks: list = []
    if len(order) > len(shown):
        blocks.append(note(f"{len(shown)} of {len(order)} seeds shown (the first of every "
                           "set, then the others in set order); all maps are in the output "
                           "folder."))
    blocks.append(Figure(
        partial(figures.glass_grid, panels, ctx.mask_path, threshold, None, 3),
        f"One-sample t-maps of the seeds' connectivity (Fisher z across {n_sub or 'the'} "
        f"connectome subjects): per seed, the sagittal, coronal and axial maximum-intensity "
        f"projections of t where |t| > {threshold:g} (the network threshold), on a common "
        "colour scale; grey: the analysis mask; green dots: the seed's coordinates; left "
        "hemisphere on the left. Titles are coloured by set.",
        "glass brains of the seed t-maps", ["*_seed-<id>_stat-t_boldmap.nii.gz"], css="wide"))
    # not only the studies' seeds: the control, DBS and reference seeds are drawn too
    return Section("seeds", "Seed networks: one-sample t of the seeds", blocks, nav="Seeds")
