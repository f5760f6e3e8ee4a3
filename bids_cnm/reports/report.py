"""The HTML report of a bids_cnm run, rendered only from the derivatives on disk.

:func:`build_report` writes ``<output_dir>/bids_cnm_report.html``: one
self-contained file (figures embedded as base64 PNG, CSS and a few lines of
script inline, no external URL; a Content-Security-Policy forbids loading
anything else) in the style of the fMRIPrep/MRIQC reports: a navigation bar,
sections and a caption under every figure.

Sections: Summary, Inputs (seeds and their coordinates), Overlap network (per
set and threshold), Seed networks, the optional sections of
:data:`bids_cnm.reports.optional.REGISTRY` whose files exist, Provenance.
A section whose figure fails shows the error in place (and the Summary lists
it); the report itself is still written.
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import time
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from string import Template

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.errors import MissingInputError
from bids_cnm.io.derivatives import write_text
from bids_cnm.reports import figures
from bids_cnm.reports import html as H
from bids_cnm.reports.context import NIFTI, ReportContext, Section, parse_coordinates
from bids_cnm.reports.index import DerivativesIndex, DerivFile, threshold_value
from bids_cnm.reports.optional import optional_sections

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = ["build_report", "REPORT_NAME", "MAX_SEED_PANELS", "environment_versions"]

REPORT_NAME = "bids_cnm_report.html"
#: the Seed networks section draws at most this many seeds
MAX_SEED_PANELS = 24
#: axial slices through the largest peaks of an overlap map
N_PEAK_SLICES = 6
_VERSION_PACKAGES = (
    ("numpy", "numpy"), ("scipy", "scipy"), ("nibabel", "nibabel"), ("nilearn", "nilearn"),
    ("nipype", "nipype"), ("pybids", "pybids"), ("pandas", "pandas"),
    ("matplotlib", "matplotlib"),
)


def environment_versions() -> dict[str, str]:
    """Versions of Python, bids_cnm and its main dependencies in this environment."""
    out = {"bids_cnm": __version__, "python": platform.python_version()}
    for label, dist in _VERSION_PACKAGES:
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = "not installed"
    return out


# ---------------------------------------------------------------------------- context
def _find_settings(index: DerivativesIndex) -> dict:
    """The ``bids_cnm`` settings recorded in the sidecars (overlap maps first)."""
    for f in index.get(desc="overlap", extension=".json") + index.get(extension=".json"):
        try:
            content = json.loads(f.path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and isinstance(content.get("bids_cnm"), dict):
            return dict(content["bids_cnm"])
    return {}


def _make_context(root: Path, settings: dict | None) -> ReportContext:
    index = DerivativesIndex(root)
    ctx = ReportContext(index=index, settings=dict(settings or _find_settings(index)))
    seeds_path = index.first("seeds.tsv")
    if seeds_path is not None:
        seeds = pd.read_csv(seeds_path, sep="\t", dtype=str, keep_default_na=False)
        ctx.seeds = seeds
        if {"id", "coordinates"} <= set(seeds.columns):
            for _, row in seeds.iterrows():
                ctx.coords[row["id"]] = parse_coordinates(row["coordinates"])
                ctx.seed_sets[row["id"]] = row.get("set", "primary") or "primary"
                ctx.seed_variants[row["id"]] = row.get("variant", "main") or "main"
    sets = list(dict.fromkeys(ctx.seed_sets.values())) or index.values("set")
    for k, name in enumerate(sets):
        ctx.set_colors[name] = figures.SET_COLORS[k % len(figures.SET_COLORS)]
    threshold = ctx.settings.get("t_threshold")
    if isinstance(threshold, (int, float)):
        ctx.threshold = float(threshold)
    else:
        values = [threshold_value(t) for t in index.values("thresh")]
        values = [v for v in values if v is not None]
        ctx.threshold = min(values) if values else None
    masks = index.get(suffix="mask", desc="analysis", extension=NIFTI)
    if masks:
        ctx.mask = nb.load(masks[0].path)
    return ctx


def _sorted_by_set(ctx: ReportContext, files: list[DerivFile]) -> list[DerivFile]:
    order = {name: k for k, name in enumerate(ctx.set_colors)}

    def key(f: DerivFile) -> tuple:
        thresh = threshold_value(f.get("thresh", "")) if f.get("thresh") else None
        return (order.get(f.get("set"), len(order)), f.get("set") or "",
                thresh if thresh is not None else np.inf, f.name)

    return sorted(files, key=key)


def _sibling(index: DerivativesIndex, f: DerivFile, suffix: str, extension, **changes):
    """The file with ``f``'s entities (changed by ``changes``; ``None`` drops one)."""
    wanted = dict(f.entities)
    for key, value in changes.items():
        if value is None:
            wanted.pop(key, None)
        else:
            wanted[key] = value
    for candidate in index.get(suffix=suffix, extension=extension):
        if candidate.entities == wanted:
            return candidate
    return None


# ---------------------------------------------------------------------------- sections
def _n_subjects(index: DerivativesIndex) -> int | None:
    candidates = index.get(desc="overlap", extension=".json") + index.get(
        stat="t", extension=".json") + index.get(extension=".json")
    for f in candidates:
        try:
            side = json.loads(f.path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(side.get("NumberOfSubjects"), int):
            return side["NumberOfSubjects"]
        sources = side.get("Sources")
        if sources:
            labels = {s.split("sub-")[-1].split("/")[0] for s in sources if "sub-" in str(s)}
            if labels:
                return len(labels)
    return None


def summary_section(ctx: ReportContext) -> Section:
    index = ctx.index
    items: list[tuple[str, str]] = []
    n_subjects = _n_subjects(index)
    items.append(("Connectome subjects",
                  str(n_subjects) if n_subjects is not None else "not recorded"))
    if index.participants:
        items.append(("Participant-level outputs", f"{len(index.participants)} subject(s)"))
    if ctx.seeds is not None and ctx.coords:
        main = ctx.main_seeds()
        n_coords = sum(len(ctx.coords[s]) for s in main)
        studies = ctx.seeds.loc[ctx.seeds["id"].isin(main), "study"].nunique() \
            if "study" in ctx.seeds else len(main)
        diameter = ctx.settings.get("sphere_diameter")
        if diameter is None and "diameter_mm" in ctx.seeds and len(ctx.seeds):
            diameter = ctx.seeds["diameter_mm"].iloc[0]
        text = (f"{len(main)} seeds ({studies} studies, {n_coords} coordinates"
                + (f", {float(diameter):g} mm spheres)" if diameter else ")"))
        others = [v for s, v in ctx.seed_variants.items() if v != "main"]
        if others:
            kinds = ", ".join(H.esc(v) for v in dict.fromkeys(others))
            text += f"; {len(others)} more seeds of sensitivity variants ({kinds})"
        items.append(("Seeds", text))
    elif ctx.seeds is not None:
        items.append(("Seeds", f"{len(ctx.seeds)} seeds"))
    else:
        seeds = index.values("seed")
        items.append(("Seeds", str(len(seeds)) if seeds else "none found"))
    if ctx.seed_sets:
        counts = pd.Series([ctx.seed_sets[s] for s in ctx.main_seeds()]).value_counts(sort=False)
        sets = ", ".join(f"{H.esc(s)} ({n})" for s, n in counts.items())
    else:
        sets = ", ".join(H.esc(s) for s in index.values("set")) or "none"
    items.append(("Sets", sets))
    thresholds = [threshold_value(t) for t in index.values("thresh")]
    thresholds = [t for t in thresholds if t is not None]
    items.append(("Thresholds", ", ".join(
        f"|t| &gt; {t:g}" + (" (main)" if ctx.threshold is not None and len(thresholds) > 1
                             and abs(t - ctx.threshold) < 1e-6 else "")
        for t in sorted(set(thresholds))) or "none found"))
    space = next((f.sidecar.get("SpatialReference") for f in index.get(desc="overlap",
                  extension=NIFTI) if f.sidecar.get("SpatialReference")), None)
    spaces = index.values("space")
    res = index.values("res")
    space_text = H.esc(space or (", ".join(spaces) if spaces else "unknown"))
    if res:
        space_text += f" (res-{H.esc(', '.join(res))})"
    if ctx.mask is not None:
        zooms = ctx.mask.header.get_zooms()[:3]
        n_vox = int(np.count_nonzero(np.asarray(ctx.mask.dataobj)))
        space_text += (f"; grid {'x'.join(map(str, ctx.mask.shape[:3]))} of "
                       f"{'x'.join(f'{z:g}' for z in zooms)} mm, analysis mask {n_vox} voxels")
    items.append(("Space", space_text))
    if ctx.notes:
        items.append(("Optional analyses", ", ".join(H.esc(a) for a in ctx.notes)))
    items.append(("Output files", f"{len(index.files)} group-level files in "
                  f"<code>{H.esc(index.root)}</code>"))
    body = '<ul class="cnm-summary" id="summary-list">' + "".join(
        f'<li><span class="key">{k}:</span> {v}</li>' for k, v in items) + "</ul>"
    if ctx.seeds is not None and "voxels" in ctx.seeds:
        empty = ctx.seeds.loc[ctx.seeds["voxels"].isin(["0", "0.0"]), "id"].tolist()
        if empty:
            body += H.warning_box(f"Seed(s) with no voxel in the analysis mask: "
                                  f"{H.esc(', '.join(empty))}.")
    if ctx.errors:
        body += ('<div class="cnm-error-list"><p><b>Errors while building this report</b>'
                 '</p><ul>' + "".join(f"<li>{H.esc(e)}</li>" for e in ctx.errors)
                 + "</ul></div>")
    return Section("summary", "Summary", body)


def inputs_section(ctx: ReportContext) -> Section | None:
    if ctx.seeds is None:
        return None
    seeds = ctx.seeds
    row_classes = None
    if "voxels" in seeds:
        row_classes = ["warn" if v in ("0", "0.0") else "" for v in seeds["voxels"]]
    source = ctx.settings.get("coordinates")
    intro = (f"Coordinates read from <code>{H.esc(source)}</code>. " if source else "")
    intro += ("One seed per study: spheres at its coordinates, united; <code>voxels</code> "
              "counts the seed's voxels inside the analysis mask.")
    body = H.note(intro)
    body += H.table(seeds, table_id="seeds-table", source="seeds.tsv", row_classes=row_classes)
    main = ctx.main_seeds()
    if any(len(ctx.coords[s]) for s in main):
        points: dict[str, list] = {}
        for seed_id in main:
            xyz = ctx.coords[seed_id]
            if len(xyz):
                points.setdefault(ctx.seed_sets.get(seed_id, "primary"), []).extend(xyz.tolist())
        points_arr = {k: np.asarray(v, float).reshape(-1, 3) for k, v in points.items()}
        png = figures.coordinates_glass_brain(points_arr, ctx.set_colors)
        n = sum(len(v) for v in points_arr.values())
        variants = (" of the main seeds (variants repeat them)"
                    if len(main) < len(ctx.coords) else "")
        caption = (f"All {n} coordinates (MNI mm){variants} on a glass brain, coloured by set "
                   f"(number of coordinates in brackets). Parsed from the "
                   f"<code>coordinates</code> column of <span class=\"cnm-source\">seeds.tsv"
                   f"</span>.")
        body += H.figure(png, caption, "glass brain of the input coordinates")
    return Section("inputs", "Inputs", body)


def _peak_cuts(peaks: pd.DataFrame | None, data: np.ndarray, affine: np.ndarray):
    """Crossing point (largest peak) and axial cuts (z of the largest peaks) of a map."""
    if peaks is not None and len(peaks) and {"x", "y", "z", "value"} <= set(peaks.columns):
        top = peaks
        if "map" in peaks.columns and (peaks["map"] == "overlap").any():
            top = peaks[peaks["map"] == "overlap"]
        order = np.lexsort((
            -top.get("cluster_size_mm3", pd.Series(0, index=top.index)).to_numpy(float),
            -np.abs(top["value"].to_numpy(float)),
        ))
        top = top.iloc[order]
        first = top.iloc[0]
        cut = (float(first["x"]), float(first["y"]), float(first["z"]))
        zs = list(dict.fromkeys(float(z) for z in top["z"]))[:N_PEAK_SLICES]
        return cut, sorted(zs)
    peak = np.unravel_index(np.argmax(np.abs(data)), data.shape)
    cut = tuple(float(c) for c in nb.affines.apply_affine(affine, peak))
    return cut, [cut[2]]


def _overlap_block(ctx: ReportContext, f: DerivFile, full: bool = True) -> str:
    """Slices, glass brains, positive/negative maps and peaks of one overlap map
    (``full=False``: the signed glass brain and the peaks only)."""
    index = ctx.index
    set_name, thresh = f.get("set", "?"), f.get("thresh", "?")
    t_value = threshold_value(thresh) if thresh != "?" else None
    side = f.sidecar
    n_studies = side.get("NumberOfStudies")
    n_subjects = side.get("NumberOfSubjects")
    studies = side.get("Studies") or []
    img = nb.load(f.path)
    data = figures.finite_data(img)
    clean = nb.Nifti1Image(data, img.affine)
    display_thr = 0.5 / n_studies if isinstance(n_studies, int) and n_studies > 0 else 1e-3
    peaks_file = _sibling(index, f, "peaks", ".tsv", desc=None)
    peaks_raw = peaks_num = None
    if peaks_file is not None:
        peaks_raw = pd.read_csv(peaks_file.path, sep="\t", dtype=str, keep_default_na=False)
        peaks_num = pd.read_csv(peaks_file.path, sep="\t", na_values=["n/a"])
    thr_text = f"|t| &gt; {t_value:g}" if t_value is not None else f"thresh-{H.esc(thresh)}"
    context = (f"{n_studies} studies" if n_studies else "the studies") + (
        f" of set <b>{H.esc(set_name)}</b>, seed networks thresholded at {thr_text}")
    if n_subjects:
        context += f" in {n_subjects} connectome subjects"
    desc = H.esc(side.get("Description", "Signed overlap of thresholded seed networks."))
    src = f'<span class="cnm-source">{H.esc(f.name)}</span>'
    parts = [H.note(f"Overlap of {context}."
                    + (f" Studies: {H.esc(', '.join(map(str, studies)))}." if studies else ""))]
    if not np.any(np.abs(data) >= display_thr):
        parts.append(H.warning_box(f"The overlap map is empty at this threshold. {src}"))
    elif not full:
        parts.append(H.figure(
            figures.glass_brain(clean, 1.0, display_thr, True, "RdBu_r"),
            f"{desc} Glass brain (maximum-intensity projections), shown where |overlap| &ge; "
            f"{f'1/{n_studies}' if isinstance(n_studies, int) else f'{display_thr:g}'}; "
            f"red positive, blue negative. {src}",
            f"overlap glass brain, set {set_name}, thresh-{thresh}"))
    else:
        cut, zs = _peak_cuts(peaks_num, data, img.affine)
        unit = (f" Shown where |overlap| &ge; 1/{n_studies}." if isinstance(n_studies, int)
                else "")
        parts.append(H.figure(
            figures.stat_map_ortho(clean, cut, 1.0, display_thr, True, "RdBu_r"),
            f"{desc}{unit} Red: networks positively connected to the seeds, blue: negatively; "
            f"colour bar symmetric in [-1, 1]. Slices cross at the largest peak "
            f"({cut[0]:g}, {cut[1]:g}, {cut[2]:g} mm), on the MNI152 template. {src}",
            f"overlap map slices, set {set_name}"))
        parts.append(H.figure(
            figures.stat_map_mosaic(clean, zs, 1.0, display_thr, True, "RdBu_r"),
            f"Axial slices at the z of the largest peaks "
            f"({', '.join(f'{z:g}' for z in zs)} mm). {src}",
            f"overlap map axial slices, set {set_name}"))
        parts.append(H.figure(
            figures.glass_brain(clean, 1.0, display_thr, True, "RdBu_r"),
            f"Glass brain of the signed overlap (maximum-intensity projections: the voxel of "
            f"largest |overlap| along each line of sight). {src}",
            f"overlap glass brain, set {set_name}"))
    pair = []
    for desc_label, cmap, word in (("posoverlap", "Reds", "positive"),
                                   ("negoverlap", "Blues", "negative")) if full else ():
        g = _sibling(index, f, f.suffix, f.extension, desc=desc_label)
        if g is None:
            continue
        g_img = nb.load(g.path)
        g_data = figures.finite_data(g_img)
        gsrc = f'<span class="cnm-source">{H.esc(g.name)}</span>'
        if not np.any(g_data >= display_thr):
            pair.append(H.note(f"No {word} overlap at this threshold. {gsrc}"))
            continue
        pair.append(H.figure(
            figures.glass_brain(nb.Nifti1Image(g_data, g_img.affine), 1.0, display_thr,
                                False, cmap, width=7.0),
            f"{H.esc(g.sidecar.get('Description', word.capitalize() + ' overlap.'))} {gsrc}",
            f"{word} overlap glass brain, set {set_name}", css_class="half"))
    if pair:
        parts.append('<div class="cnm-row">' + "".join(pair) + "</div>")
    if peaks_raw is not None:
        table_id = f"peaks-{H.slug(set_name)}-{H.slug(thresh)}"
        explain = H.note("Local maxima of the clusters where |value| &ge; half the map's "
                         "maximum, per map (overlap, posoverlap, negoverlap); x, y, z in MNI mm.")
        peaks_table = H.table(peaks_raw, table_id=table_id, source=peaks_file.name)
        if full:
            parts.append(
                f'<p class="cnm-subhead">Peaks <span class="cnm-source">'
                f"{H.esc(peaks_file.name)}</span></p>" + explain + peaks_table)
        else:
            parts.append(H.details(f"Peaks ({peaks_file.name})", explain + peaks_table))
    return "".join(parts)


def overlap_section(ctx: ReportContext) -> Section | None:
    """The main network of every set and threshold (sensitivity variants, with a
    ``variant`` entity, go to the Sensitivity section).  The main threshold gets
    slices, glass brains and the positive/negative maps; other thresholds a
    glass brain."""
    maps = _sorted_by_set(ctx, ctx.index.get(suffix="boldmap", desc="overlap",
                                             extension=NIFTI, variant=None))
    if not maps:
        return None
    main_thresholds = {f.get("thresh") for f in maps}
    if ctx.threshold is not None:
        wanted = {t for t in main_thresholds
                  if threshold_value(t or "") is not None
                  and abs(threshold_value(t) - ctx.threshold) < 1e-6}
        main_thresholds = wanted or main_thresholds
    blocks, links = [], []
    for f in maps:
        set_name, thresh = f.get("set", "?"), f.get("thresh", "?")
        t_value = threshold_value(thresh) if thresh != "?" else None
        title = f"Set {set_name}, |t| > {t_value:g}" if t_value is not None else \
            f"Set {set_name}, thresh-{thresh}"
        bid = f"overlap-{H.slug(set_name)}-{H.slug(thresh)}"
        try:
            content = _overlap_block(ctx, f, full=f.get("thresh") in main_thresholds)
        except Exception as exc:
            LOGGER.warning("report: cannot render %s: %s", f.name, exc)
            ctx.errors.append(f"{f.name}: {exc}")
            content = H.error_box(f"Cannot render {f.name}: {type(exc).__name__}: {exc}")
        color = ctx.set_colors.get(set_name, "#333")
        blocks.append(f'<div class="cnm-block" id="{bid}"><h3><span class="swatch" '
                      f'style="background:{color}"></span>{H.esc(title)}</h3>{content}</div>')
        links.append(f'<a href="#{bid}">{H.esc(title)}</a>')
    toc = '<p class="cnm-toc">' + " · ".join(links) + "</p>" if len(links) > 1 else ""
    intro = H.note("The coordinate network: each seed's t-map thresholded at |t| &gt; T and "
                   "binarized with its sign, then averaged over the studies of a set."
                   + (" Other thresholds than the main one are shown as glass brains."
                      if len(main_thresholds) < len({f.get("thresh") for f in maps}) else ""))
    return Section("overlap", "Overlap network", intro + toc + "".join(blocks))


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
    tmaps = ctx.index.get(suffix="boldmap", stat="t", extension=NIFTI)
    if not tmaps:
        return None
    by_seed: dict[str, DerivFile] = {}
    for f in tmaps:
        by_seed.setdefault(f.get("seed", f.name), f)
    if ctx.coords:
        order = [s for s in ctx.main_seeds() if s in by_seed]
        n_variant_maps = sum(1 for s in by_seed if ctx.seed_variants.get(s, "main") != "main")
    else:
        order, n_variant_maps = list(by_seed), 0
    if not order:
        return None
    shown = _pick_seeds(ctx, order, MAX_SEED_PANELS)
    threshold = ctx.threshold if ctx.threshold is not None else 0.0
    panels = [
        figures.Panel(
            label=f"{s}" + (f"  ({ctx.seed_sets[s]})" if s in ctx.seed_sets else ""),
            img=nb.load(by_seed[s].path),
            coords=ctx.coords.get(s, np.empty((0, 3))),
            color=ctx.set_colors.get(ctx.seed_sets.get(s, ""), "black"),
        )
        for s in shown
    ]
    png = figures.glass_grid(panels, ctx.mask, threshold, ncols=3)
    n_sub = by_seed[shown[0]].sidecar.get("NumberOfSubjects")
    caption = (
        f"One-sample t-maps of the seeds' connectivity (Fisher z across "
        f"{n_sub or 'the'} connectome subjects), as glass brains: per seed, the sagittal, "
        f"coronal and axial maximum-intensity projections of t where |t| &gt; {threshold:g} "
        f"(the network threshold), on a common colour scale; grey: the analysis mask; green "
        f"dots: the seed's coordinates; coronal and axial views with the left hemisphere on "
        f"the left. Titles are coloured by set. Files: "
        f"<span class=\"cnm-source\">*_seed-&lt;id&gt;_stat-t_boldmap.nii.gz</span>."
    )
    body = ""
    if len(order) > len(shown):
        body += H.note(f"{len(shown)} of {len(order)} seeds shown (the first of every set, "
                       f"then the others in set order); all maps are in the output folder.")
    if n_variant_maps:
        body += H.note(f"The t-maps of the {n_variant_maps} seeds of sensitivity variants "
                       f"are not drawn.")
    body += H.figure(png, caption, "glass brains of the seed t-maps", css_class="wide")
    return Section("seeds", "Seed networks", body)


def provenance_section(
    ctx: ReportContext,
    command: list[str] | None,
    settings_given: bool,
    versions: dict | None,
    elapsed: float,
) -> Section:
    parts = ['<p class="cnm-subhead">Command</p>']
    if command:
        parts.append(f'<pre class="cnm-pre" id="command">{H.esc(shlex.join(map(str, command)))}'
                     f"</pre>")
    else:
        parts.append(H.note("Not recorded (the report was built without the command)."))
    env = environment_versions()
    if versions:
        env.update({str(k): str(v) for k, v in versions.items()})
        vnote = ("Versions given by the run (" + ", ".join(H.esc(k) for k in versions)
                 + "); the others are those of the environment that built this report.")
    else:
        vnote = "Versions of the environment that built this report."
    parts.append('<p class="cnm-subhead">Versions</p>' + H.note(vnote)
                 + H.kv_table(env, table_id="versions"))
    parts.append('<p class="cnm-subhead">Settings</p>')
    if ctx.settings:
        origin = "given to the report" if settings_given else \
            "recorded in the sidecars (<code>bids_cnm</code> key)"
        parts.append(H.note(f"Settings {origin}.") + H.kv_table(ctx.settings,
                                                                 table_id="settings"))
    else:
        parts.append(H.note("No settings recorded."))
    description = ctx.index.first("dataset_description.json")
    parts.append('<p class="cnm-subhead">dataset_description.json</p>')
    if description is not None:
        try:
            parts.append(H.pre_json(json.loads(description.read_text())))
        except ValueError as exc:
            parts.append(H.error_box(f"dataset_description.json is not valid JSON: {exc}"))
    else:
        parts.append(H.note("Missing."))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts.append(H.note(f"Report generated {now} in {elapsed:.1f} s by bids_cnm "
                        f"{H.esc(__version__)} from <code>{H.esc(ctx.index.root)}</code>."))
    return Section("provenance", "Provenance", "".join(parts))


# ---------------------------------------------------------------------------- assembly
def _resource(name: str) -> str:
    return resources.files("bids_cnm.reports").joinpath(name).read_text(encoding="utf-8")


def _render(sections: list[Section], title: str, subtitle: str) -> str:
    nav = "".join(f'<li><a href="#{s.id}">{H.esc(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.id}" class="cnm-section"><h2>{H.esc(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    return Template(_resource("report.html")).substitute(
        title=H.esc(title), subtitle=subtitle, css=_resource("report.css"), nav=nav,
        content=body,
    )


def build_report(
    output_dir: Path,
    command: list[str] | None = None,
    settings: dict | None = None,
    versions: dict | None = None,
) -> Path:
    """Write ``output_dir/bids_cnm_report.html`` from the derivatives in ``output_dir``.

    Parameters
    ----------
    output_dir : Path
        A bids_cnm output folder (group level; participant-only folders give a
        short report).
    command : list of str, optional
        The command line of the run, shown under Provenance.
    settings : dict, optional
        The run's settings; default those recorded in the sidecars.
    versions : dict, optional
        Versions of the run's software (added to/overriding those of this environment).

    Returns
    -------
    Path
        The report.

    Raises
    ------
    MissingInputError
        When ``output_dir`` is not a folder.
    """
    started = time.perf_counter()
    root = Path(output_dir)
    if not root.is_dir():
        raise MissingInputError(f"cannot build the report: {root} is not a folder.")
    ctx = _make_context(root, settings)
    body: list[Section] = []
    with figures.fast_gc():
        for build in (inputs_section, overlap_section, seeds_section):
            try:
                section = build(ctx)
            except Exception as exc:
                name = build.__name__.replace("_section", "")
                LOGGER.warning("report: the %s section failed: %s", name, exc)
                ctx.errors.append(f"{name} section: {type(exc).__name__}: {exc}")
                section = Section(name, name.capitalize(),
                                  H.error_box(f"{type(exc).__name__}: {exc}"))
            if section is not None:
                body.append(section)
        optional = optional_sections(ctx)
        ctx.notes.extend(s.title for s in optional)
        body.extend(optional)
    summary = summary_section(ctx)
    provenance = provenance_section(ctx, command, settings is not None, versions,
                                    time.perf_counter() - started)
    description = ctx.index.first("dataset_description.json")
    name = "bids_cnm"
    if description is not None:
        try:
            name = json.loads(description.read_text()).get("Name", name)
        except ValueError:
            pass
    subtitle = H.esc(str(root))
    html_text = _render([summary, *body, provenance], f"{name}: report", subtitle)
    out = root / REPORT_NAME
    write_text(out, html_text)
    LOGGER.info("report: %s (%.1f s)", out, time.perf_counter() - started)
    return out
