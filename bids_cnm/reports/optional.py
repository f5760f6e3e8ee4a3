"""Optional sections: rendered when their files exist, skipped silently otherwise.

:data:`REGISTRY` lists ``Renderer(pattern, section, render)``: every group-level
file whose name matches ``pattern`` (``fnmatch``; ``*_desc-x*`` also matches a
name that starts with ``desc-x``) is rendered by ``render(file, context)`` into
the section titled ``section``.  A file is rendered by the first entry it
matches.  Within a section, files are grouped by their "where" entities (set,
control, space...) and ordered by registry position.  To show a new kind of
output, add one line, e.g.::

    Renderer("*_desc-ale*.nii*", "Meta-analysis (ALE)", render_stat_map),

With ``together=True`` the renderer gets all matching files of one group
(``render(files, context)``) and ``title`` names the block.  A renderer returns
HTML (figures with captions, tables); it may raise, and the report then shows
the error in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm.reports import figures
from bids_cnm.reports import html as H
from bids_cnm.reports.context import ReportContext, Section
from bids_cnm.reports.index import DerivFile, threshold_value

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = [
    "Renderer", "REGISTRY", "SECTION_INTROS", "MAX_BLOCKS_PER_SECTION", "optional_sections",
    "render_stat_map", "render_correlations", "render_distribution", "render_table",
    "render_sensitivity_variants", "render_overlap_variants", "sidecar_statistics",
]

#: at most this many blocks (files) are drawn per optional section (the others are listed)
MAX_BLOCKS_PER_SECTION = 30
#: entities that say *what* a file is; the others say *where* it belongs (its group)
_WHAT = {"stat", "desc", "variant", "thresh", "seed"}
#: sidecar keys that are not statistics
_NOT_STATISTICS = {"Description", "Sources", "SpatialReference", "bids_cnm", "Studies",
                   "RawSources", "Units"}


class Renderer(NamedTuple):
    """One kind of optional output."""

    pattern: str
    section: str
    render: Callable[[Any, ReportContext], str]
    together: bool = False
    title: str = ""


def sidecar_statistics(f: DerivFile) -> dict:
    """Scalar (or short list) entries of a file's sidecar, minus the bookkeeping keys."""
    out = {}
    for key, value in f.sidecar.items():
        if key in _NOT_STATISTICS:
            continue
        if isinstance(value, (int, float, str, bool)) or (
            isinstance(value, list) and len(value) <= 12
        ):
            out[key] = value
    return out


def _description(f: DerivFile) -> str:
    text = f.sidecar.get("Description")
    return H.esc(text) + " " if text else ""


def _source(f: DerivFile) -> str:
    return f'<span class="cnm-source">{H.esc(f.name)}</span>'


# ----------------------------------------------------------------------------- renderers
def render_stat_map(
    f: DerivFile,
    ctx: ReportContext,
    threshold: float | None = None,
    symmetric: bool | None = None,
    what: str = "value",
    views: tuple[str, ...] = ("slices", "glass"),
) -> str:
    """A map as orthogonal slices at its peak and/or as a glass brain.

    Parameters
    ----------
    threshold : float, optional
        Display threshold on |value|; default: every nonzero voxel.  (Not the
        sidecar's ``Threshold``: there it is often the network's |t| threshold.)
    symmetric : bool, optional
        Diverging colours around 0; default when the map has negative values.
    what : str
        Name of the value in captions.
    views : tuple
        ``"slices"`` (orthogonal slices on the MNI template) and/or ``"glass"``.
    """
    img = nb.load(f.path)
    data = figures.finite_data(img)
    if not np.any(data):
        return H.note(f"{_description(f)}The map is zero everywhere. {_source(f)}")
    if threshold is None:
        threshold = 1e-6
    if symmetric is None:
        symmetric = bool(data.min() < 0)
    shown = data[np.abs(data) > threshold]
    if shown.size == 0:
        return H.note(f"{_description(f)}No voxel exceeds the display threshold {threshold:g} "
                      f"(range [{data.min():.3g}, {data.max():.3g}]). {_source(f)}")
    vmax = figures.robust_abs_max([shown], 99.5, floor=threshold * 1.05)
    cmap = "RdBu_r" if symmetric else "YlOrRd"
    peak = np.unravel_index(np.argmax(np.abs(data)), data.shape)
    cut = nb.affines.apply_affine(img.affine, peak)
    clean = nb.Nifti1Image(data, img.affine)
    shown_where = (f"|{what}| &gt; {threshold:g}" if threshold > 1e-5 else f"{what} &ne; 0")
    about = (f"Shown where {shown_where} (range [{data.min():.3g}, {data.max():.3g}], "
             f"{shown.size} voxels).")
    parts = []
    if "slices" in views:
        parts.append(H.figure(
            figures.stat_map_ortho(clean, tuple(cut), vmax, threshold, symmetric, cmap),
            f"{_description(f)}{about} Slices cross at the largest |{what}| "
            f"({cut[0]:.0f}, {cut[1]:.0f}, {cut[2]:.0f} mm). {_source(f)}",
            f"slices of {f.name}"))
    if "glass" in views:
        intro = ("Glass brain of the same map (maximum-intensity projections)."
                 if "slices" in views else f"{_description(f)}{about} Glass brain "
                 f"(maximum-intensity projections).")
        parts.append(H.figure(
            figures.glass_brain(clean, vmax, threshold, symmetric, cmap),
            f"{intro} {_source(f)}", f"glass brain of {f.name}"))
    stats = sidecar_statistics(f)
    if stats:
        parts.append(H.details("Sidecar statistics", H.kv_table(stats)))
    return "".join(parts)


def _read_tsv(f: DerivFile) -> pd.DataFrame:
    return pd.read_csv(f.path, sep="\t", na_values=["n/a"], keep_default_na=True)


def _numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c in _numeric(out):
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:.4g}")
    return out.fillna("n/a")


def read_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """A correlation matrix from a TSV in one of three layouts.

    * square, first column the row labels (``pandas.DataFrame.to_csv`` with an index);
    * square, all numeric (labels = column names);
    * long: two label columns and a numeric one (``a, b, r``), made symmetric.
    """
    numeric = _numeric(frame)
    labels = [c for c in frame.columns if c not in numeric]
    if (labels and labels[0] == frame.columns[0] and len(labels) == 1
            and len(numeric) == len(frame) >= 1):
        matrix = frame[numeric].to_numpy(dtype=float)
        return matrix, [str(v) for v in frame[labels[0]]], [str(c) for c in numeric]
    if not labels and len(numeric) == len(frame):
        return frame.to_numpy(dtype=float), [str(c) for c in numeric], [str(c) for c in numeric]
    if len(labels) >= 2 and numeric:
        a, b, value = labels[0], labels[1], numeric[0]
        names = list(dict.fromkeys([*map(str, frame[a]), *map(str, frame[b])]))
        pos = {n: i for i, n in enumerate(names)}
        matrix = np.full((len(names), len(names)), np.nan)
        np.fill_diagonal(matrix, 1.0)
        for x, y, v in zip(frame[a], frame[b], frame[value]):
            matrix[pos[str(x)], pos[str(y)]] = matrix[pos[str(y)], pos[str(x)]] = v
        return matrix, names, names
    raise ValueError(
        "not a correlation matrix: expected a square table (optionally with a first column "
        "of labels) or a long table with two label columns and a value column"
    )


def render_correlations(f: DerivFile, ctx: ReportContext) -> str:
    """Correlations between network variants: a heat map when the TSV is a
    matrix, else bars of its correlation column (e.g. ``r_with_main``) and the table."""
    frame = _read_tsv(f)
    label = str(f.sidecar.get("Statistic", "r"))
    try:
        matrix, rows, cols = read_matrix(frame)
    except ValueError:
        matrix = None
    if matrix is not None:
        caption = (f"{_description(f)}Spatial correlations between network variants "
                   f"({len(rows)} x {len(cols)}); red positive, blue negative. {_source(f)}")
        body = H.figure(figures.heatmap(matrix, rows, cols, label=label), caption,
                        f"correlation matrix {f.name}")
        body += H.details("Table", H.table(_formatted(frame), source=f.name, max_rows=200))
    else:
        numeric = _numeric(frame)
        labels = [c for c in frame.columns if c not in numeric]
        r_col = next((c for c in numeric if c == "r" or c.startswith("r_")), None)
        body = ""
        if labels and r_col:
            body += H.figure(
                figures.bars(list(frame[labels[0]].astype(str)), frame[r_col].to_numpy(float),
                             r_col, limits=(min(0.0, float(frame[r_col].min()) - 0.1), 1.1)),
                f"{_description(f)}<code>{H.esc(r_col)}</code> by "
                f"<code>{H.esc(labels[0])}</code>. {_source(f)}",
                f"correlations {f.name}")
        body += H.table(_formatted(frame), source=f.name, max_rows=200)
    stats = sidecar_statistics(f)
    if stats:
        body += H.details("Sidecar statistics", H.kv_table(stats))
    return body


def _same_grid(images: list) -> bool:
    first = images[0]
    return all(img.shape[:3] == first.shape[:3] and np.allclose(img.affine, first.affine)
               for img in images[1:])


def _overlap_grid(ctx: ReportContext, items: list[tuple[str, DerivFile]]) -> str:
    """Signed overlap maps as one small multiple of glass brains, colour scale [-1, 1]."""
    panels = [figures.Panel(label, nb.load(f.path)) for label, f in items]
    if not _same_grid([p.img for p in panels]):
        raise ValueError("the overlap maps are not on one grid")
    png = figures.glass_grid(panels, ctx.mask, 1e-6, vmax=1.0, ncols=3, value_label="overlap")
    names = ", ".join(H.esc(f.name) for _, f in items[:3]) + (" ..." if len(items) > 3 else "")
    ctx.drawn.update(f.path for _, f in items)
    return H.figure(
        png,
        "Signed overlap maps of the network variants as glass brains (sagittal, coronal and "
        "axial maximum-intensity projections; left hemisphere on the left), colour scale "
        f"[-1, 1]: red positive, blue negative. <span class=\"cnm-source\">{names}</span>",
        "glass brains of the overlap variants", css_class="wide")


def render_sensitivity_variants(f: DerivFile, ctx: ReportContext) -> str:
    """The variants table and, from its ``file`` column, the variants' overlap maps."""
    frame = _read_tsv(f)
    body = H.note(f"{_description(f)}{_source(f)}") if f.sidecar.get("Description") else ""
    items = []
    if "file" in frame.columns:
        for _, row in frame.iterrows():
            # the file column is relative to the derivatives folder (older runs: to the TSV's)
            path = ctx.index.root / str(row["file"])
            if not path.is_file():
                path = f.path.parent / str(row["file"])
            if not path.is_file():
                continue
            label = str(row.get("variant", path.name))
            extra = []
            if "n_studies" in frame.columns and pd.notna(row["n_studies"]):
                extra.append(f"{int(row['n_studies'])} studies")
            if "r_with_main" in frame.columns and pd.notna(row["r_with_main"]):
                extra.append(f"r = {float(row['r_with_main']):.2f}")
            items.append((label + (f" ({', '.join(extra)})" if extra else ""),
                          DerivFile(path, {}, "boldmap", ".nii.gz")))
    if items:
        body += _overlap_grid(ctx, items[: 3 * 8])
    shown = frame.drop(columns=["file"]) if "file" in frame.columns else frame
    body += H.table(_formatted(shown), source=f.name, max_rows=200)
    return body


def render_overlap_variants(files: list[DerivFile], ctx: ReportContext) -> str:
    """Variant overlap maps not shown by a variants table yet, as one small multiple."""
    files = [f for f in files if f.path not in ctx.drawn]
    if not files:
        return ""
    items = []
    for f in files:
        label = f.get("variant", "main")
        thresh = threshold_value(f.get("thresh", "")) if f.get("thresh") else None
        if thresh is not None:
            label += f", |t| > {thresh:g}"
        n = f.sidecar.get("NumberOfStudies")
        items.append((label + (f" ({n} studies)" if n else ""), f))
    return _overlap_grid(ctx, items[: 3 * 8])


_VALUE_HINTS = ("value", "overlap", "percent_overlap", "overlap_pct", "pct_overlap", "score",
                "similarity", "connectivity", "r", "z", "t", "statistic")


def _groups(frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], str, str | None]:
    """Values by group: long layout (a label column with repeats and a value
    column) or wide layout (one numeric column per group)."""
    numeric = _numeric(frame)
    labels = [c for c in frame.columns if c not in numeric]
    if not numeric:
        raise ValueError("no numeric column to plot")
    value = next((c for c in _VALUE_HINTS if c in numeric), numeric[-1] if labels else None)
    if labels and value is not None:
        group = next((c for c in labels if frame[c].nunique() < len(frame)), labels[0])
        groups = {
            str(k): g[value].to_numpy(dtype=float)
            for k, g in frame.groupby(group, sort=False)
        }
        return groups, value, group
    return {str(c): frame[c].to_numpy(dtype=float) for c in numeric}, "value", None


def _descriptives(groups: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for name, values in groups.items():
        v = values[np.isfinite(values)]
        rows.append({
            "group": name, "n": int(v.size),
            "mean": f"{v.mean():.4g}" if v.size else "n/a",
            "sd": f"{v.std(ddof=1):.4g}" if v.size > 1 else "n/a",
            "median": f"{np.median(v):.4g}" if v.size else "n/a",
            "min": f"{v.min():.4g}" if v.size else "n/a",
            "max": f"{v.max():.4g}" if v.size else "n/a",
        })
    return pd.DataFrame(rows)


def render_distribution(f: DerivFile, ctx: ReportContext) -> str:
    """Values by group as box + strip plots, with descriptive and sidecar statistics."""
    frame = _read_tsv(f)
    groups, value, group = _groups(frame)
    png = figures.distributions(groups, ylabel=value)
    grouping = f"by <code>{H.esc(group)}</code>" if group else "one box per column"
    caption = (
        f"{_description(f)}<code>{H.esc(value)}</code> {grouping}: boxes span the quartiles "
        f"(red line: median, whiskers: 1.5 IQR), dots are the individual values. {_source(f)}"
    )
    body = H.figure(png, caption, f"distribution plot of {f.name}")
    body += H.table(_descriptives(groups), css_class="cnm-table compact")
    stats = sidecar_statistics(f)
    if stats:
        body += '<p class="cnm-subhead">Statistics</p>' + H.kv_table(stats)
    body += H.details(f"Table ({len(frame)} rows)",
                      H.table(_formatted(frame), source=f.name, max_rows=200))
    return body


def render_table(f: DerivFile, ctx: ReportContext) -> str:
    """Any TSV as a table (first 200 rows)."""
    frame = _read_tsv(f)
    if frame.empty:
        return H.note(f"{_description(f)}The table has no rows. {_source(f)}")
    more = f" (first 200 of {len(frame)} rows)" if len(frame) > 200 else ""
    return H.note(f"{_description(f)}{_source(f)}{more}") + H.table(
        _formatted(frame), source=f.name, max_rows=200
    )


_logp = partial(render_stat_map, threshold=-np.log10(0.05), symmetric=False, what="-log10 p")

#: the optional outputs; the first entry a file matches renders it
REGISTRY: list[Renderer] = [
    # sensitivity: spatial correlations between variants, the variants, their maps
    Renderer("*_desc-correlations*.tsv", "Sensitivity", render_correlations),
    Renderer("*_correlations.tsv", "Sensitivity", render_correlations),
    Renderer("*_desc-sensitivity_variants.tsv", "Sensitivity", render_sensitivity_variants),
    Renderer("*_variant-*_desc-overlap_boldmap.nii*", "Sensitivity", render_overlap_variants,
             together=True, title="overlap of the variants"),
    # specificity: study vs control networks (permutation tests)
    Renderer("*_stat-logpFWE_*.nii*", "Specificity", _logp),
    Renderer("*_desc-significant_mask.nii*", "Specificity",
             partial(render_stat_map, threshold=0.5, symmetric=True, what="sign",
                     views=("slices",))),
    Renderer("*_desc-significant_clusters.tsv", "Specificity", render_table),
    Renderer("*_control-*_stat-t_*.nii*", "Specificity",
             partial(render_stat_map, what="t", views=("glass",))),
    Renderer("*_stat-tfce_*.nii*", "Specificity", partial(render_stat_map, views=("glass",))),
    Renderer("*_desc-tfce*.nii*", "Specificity", render_stat_map),
    Renderer("*_stat-logp*.nii*", "Specificity", partial(_logp, views=("glass",))),
    Renderer("*_desc-logp*.nii*", "Specificity", _logp),
    # validation
    Renderer("*_desc-roioverlap*.tsv", "Validation", render_distribution),
    Renderer("*_desc-validation*.tsv", "Validation", render_distribution),
    # DBS and convergent networks
    Renderer("*_desc-dbs*.nii*", "DBS and convergent networks", render_stat_map),
    Renderer("*_desc-convergent*.nii*", "DBS and convergent networks", render_stat_map),
    Renderer("*_desc-dbs*.tsv", "DBS and convergent networks", render_table),
]

#: optional introductions of the optional sections (HTML)
SECTION_INTROS: dict[str, str] = {
    "Sensitivity": "How much the network changes with the analysis choices: spatial "
    "correlations between variants of the network (thresholds, sphere sizes, one seed per "
    "coordinate, subgroups of studies, other connectomes).",
    "Specificity": "Whether the study networks differ from control networks (other "
    "coordinates, relocated coordinates): voxel-wise permutation tests; p &lt; 0.05 is "
    "-log10 p &gt; 1.3.",
    "Validation": "Independent validation of the network: overlap with regions of interest "
    "and comparisons with null or control distributions.",
    "DBS and convergent networks": "Networks from deep brain stimulation sites and their "
    "convergence with the coordinate network.",
}


def _group(f: DerivFile) -> tuple:
    return tuple((k, v) for k, v in f.entities.items() if k not in _WHAT)


def _run(render: Callable, arg: Any, ctx: ReportContext, name: str) -> str:
    try:
        return render(arg, ctx)
    except Exception as exc:  # a bad file must not cost the whole report
        LOGGER.warning("report: cannot render %s: %s", name, exc)
        ctx.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        return H.error_box(f"Cannot render {name}: {type(exc).__name__}: {exc}")


def optional_sections(ctx: ReportContext, registry: list[Renderer] | None = None) -> list[Section]:
    """Render every optional section that has files (sections in registry order)."""
    registry = REGISTRY if registry is None else registry
    # section -> list of (sort key, title, block id, callable, argument, name)
    units: dict[str, list[tuple]] = {}
    together: dict[tuple, list[DerivFile]] = {}
    for f in ctx.index.files:
        if f.extension == ".json":
            continue
        for k, entry in enumerate(registry):
            if f.matches(entry.pattern):
                if entry.together:
                    together.setdefault((k, _group(f)), []).append(f)
                else:
                    units.setdefault(entry.section, []).append(
                        ((_group(f), k, f.name), _pretty_title(f), f.path.stem,
                         entry.render, f, f.name))
                break
    for (k, group), files in together.items():
        entry = registry[k]
        where = " · ".join(f"{a}-{b}" for a, b in group if a not in ("task", "space", "res"))
        title = " · ".join(t for t in (where, entry.title) if t) or entry.section
        units.setdefault(entry.section, []).append(
            ((group, k, ""), title, H.slug(f"{where}-{entry.title or k}"), entry.render, files,
             f"{len(files)} file(s) like {files[0].name}"))
    sections = []
    for title in dict.fromkeys(entry.section for entry in registry):
        rank = {name: i for i, name in enumerate(ctx.set_colors)}

        def order(unit: tuple) -> tuple:
            group, k, name = unit[0]
            sets = [rank.get(v, len(rank)) for key, v in group if key == "set"]
            return (sets, group, k, name)

        items = sorted(units.get(title, []), key=order)
        if not items:
            continue
        sid = "opt-" + H.slug(title)
        blocks = [H.note(SECTION_INTROS[title])] if title in SECTION_INTROS else []
        for _, heading, stem, render, arg, name in items[:MAX_BLOCKS_PER_SECTION]:
            content = _run(render, arg, ctx, name)
            if content:
                blocks.append(f'<div class="cnm-block" id="{H.esc(sid + "-" + H.slug(stem))}">'
                              f"<h3>{H.esc(heading)}</h3>{content}</div>")
        if len(items) > MAX_BLOCKS_PER_SECTION:
            rest = "".join(f"<li>{H.esc(u[5])}</li>" for u in items[MAX_BLOCKS_PER_SECTION:])
            blocks.append(H.note(f"{len(items) - MAX_BLOCKS_PER_SECTION} more not drawn:")
                          + f"<ul class='cnm-files'>{rest}</ul>")
        sections.append(Section(sid, title, "".join(blocks)))
    return sections


def _pretty_title(f: DerivFile) -> str:
    """``set-primary thresh-5p1 desc-tfce`` style title from the distinctive entities."""
    skip = {"task", "space", "res"}
    parts = [f"{k}-{v}" for k, v in f.entities.items() if k not in skip]
    return " · ".join(parts + [f.suffix]) if parts else f.name
