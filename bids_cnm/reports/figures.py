"""Figures of the report, each returned as PNG bytes.

Every figure is drawn on its own :class:`matplotlib.figure.Figure` with an Agg
canvas (never through ``pyplot``), so the report neither depends on nor
changes the process's matplotlib backend and leaves no open figure behind.
nilearn accepts such a figure through its ``figure=`` argument (its displays
are not ``close()``d: that asks pyplot for a figure it never registered).

nilearn calls ``gc.collect()`` several times per plot; on a heap holding the
previous figures that dominates the plotting time.  :func:`fast_gc` freezes the
heap before each nilearn call (``gc.freeze``) and unfreezes it at the end.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import nibabel as nb
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "DPI", "fast_gc", "new_figure", "to_png", "robust_abs_max", "coordinates_glass_brain",
    "stat_map_ortho", "stat_map_mosaic", "glass_brain", "Panel", "glass_grid",
    "heatmap", "distributions", "bars", "SET_COLORS",
]

DPI = 90
#: colours of coordinate sets (cycled)
SET_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
)
#: |values| above this are placeholders (e.g. the clipped t of a seed with itself)
_HUGE = 1e30


@contextmanager
def fast_gc() -> Iterator[None]:
    """Let :func:`_freeze` freeze the heap during the block; unfreeze it afterwards.

    If the heap was frozen already (by the application), it is left as found.
    """
    owner = gc.get_freeze_count() == 0
    try:
        yield
    finally:
        if owner:
            gc.unfreeze()


def _freeze() -> None:
    gc.freeze()


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=(width, height), facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = DPI, tight: bool = False) -> bytes:
    """Render a figure to PNG bytes (``tight``: crop to the drawn content)."""
    buffer = io.BytesIO()
    extra = {"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor(), **extra)
    return buffer.getvalue()


def finite_data(img: nb.spatialimages.SpatialImage) -> np.ndarray:
    """3-D float data with non-finite values and placeholders (|v| > 1e30) set to 0."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    data[np.abs(data) > _HUGE] = 0.0
    return data


def robust_abs_max(arrays: Sequence[np.ndarray], q: float = 99.5, floor: float = 0.0) -> float:
    """A colour-scale maximum: the ``q``-th percentile of the nonzero |values|."""
    values = [np.abs(a[(a != 0) & np.isfinite(a)]) for a in arrays]
    values = [v for v in values if v.size]
    if not values:
        return max(floor, 1.0)
    top = float(np.percentile(np.concatenate(values), q))
    return max(top, floor) or 1.0


def coordinates_glass_brain(points: Mapping[str, np.ndarray], colors: Mapping[str, str]) -> bytes:
    """All coordinates on a 4-view glass brain, one colour per set."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(11.0, 3.4)
    display = plotting.plot_glass_brain(None, display_mode="lyrz", figure=fig, annotate=True)
    handles = []
    for name, xyz in points.items():
        if len(xyz):
            display.add_markers(
                np.asarray(xyz, dtype=float), marker_color=colors[name], marker_size=22,
                alpha=0.9, edgecolors="black", linewidths=0.4,
            )
        handles.append(Line2D([], [], marker="o", linestyle="", color=colors[name],
                              markeredgecolor="black", label=f"{name} ({len(xyz)})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
               fontsize=9)
    png = to_png(fig)
    return png


def stat_map_ortho(
    img: nb.spatialimages.SpatialImage,
    cut_coords: Sequence[float] | None,
    vmax: float,
    threshold: float,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
    title: str | None = None,
) -> bytes:
    """Orthogonal slices of a map on the MNI template, crossing at ``cut_coords``."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(9.0, 3.2)
    kwargs = {"vmax": vmax, "symmetric_cbar": True} if symmetric else {"vmin": 0.0, "vmax": vmax,
                                                                       "symmetric_cbar": False}
    plotting.plot_stat_map(
        img, display_mode="ortho", cut_coords=cut_coords, threshold=threshold, cmap=cmap,
        figure=fig, title=title, black_bg=False, dim=-0.3, draw_cross=True, **kwargs,
    )
    png = to_png(fig)
    return png


def stat_map_mosaic(
    img: nb.spatialimages.SpatialImage,
    z_cuts: Sequence[float],
    vmax: float,
    threshold: float,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
) -> bytes:
    """Axial slices of a map at the given z (mm)."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(max(2.0 * len(z_cuts) + 1.0, 6.0), 2.6)
    kwargs = {"vmax": vmax, "symmetric_cbar": True} if symmetric else {"vmin": 0.0, "vmax": vmax,
                                                                       "symmetric_cbar": False}
    plotting.plot_stat_map(
        img, display_mode="z", cut_coords=list(z_cuts), threshold=threshold, cmap=cmap,
        figure=fig, black_bg=False, dim=-0.3, **kwargs,
    )
    png = to_png(fig)
    return png


def glass_brain(
    img: nb.spatialimages.SpatialImage,
    vmax: float,
    threshold: float,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
    title: str | None = None,
    width: float = 9.0,
    markers: np.ndarray | None = None,
) -> bytes:
    """A signed glass brain (maximum-intensity projections in three views)."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(width, width / 2.9)
    kwargs = {"vmin": -vmax, "vmax": vmax, "symmetric_cbar": True} if symmetric else {
        "vmin": 0.0, "vmax": vmax, "symmetric_cbar": False}
    display = plotting.plot_glass_brain(
        img, display_mode="ortho", plot_abs=False, threshold=threshold, cmap=cmap,
        colorbar=True, figure=fig, title=title, **kwargs,
    )
    if markers is not None and len(markers):
        display.add_markers(np.asarray(markers, float), marker_color="#2ca02c", marker_size=14,
                            edgecolors="black", linewidths=0.4)
    png = to_png(fig)
    return png


@dataclass
class Panel:
    """One map of :func:`glass_grid`."""

    label: str
    img: nb.spatialimages.SpatialImage
    coords: np.ndarray | None = None  # (n, 3) MNI mm, drawn as dots
    color: str = "black"  # of the label


def _signed_mip(data: np.ndarray, axis: int) -> np.ndarray:
    """Projection keeping, along ``axis``, the value of largest magnitude (with its sign)."""
    index = np.expand_dims(np.abs(data).argmax(axis=axis), axis)
    return np.take_along_axis(data, index, axis=axis).squeeze(axis)


def _grid_extent(affine: np.ndarray, shape: Sequence[int]) -> list[tuple[float, float]]:
    """World (mm) range of each axis of a canonical (RAS) grid, voxel edges included."""
    out = []
    for axis in range(3):
        step = affine[axis, axis]
        start = affine[axis, 3]
        out.append((start - step / 2, start + step * (shape[axis] - 0.5)))
    return out


def glass_grid(
    panels: Sequence[Panel],
    mask: nb.spatialimages.SpatialImage | None,
    threshold: float,
    vmax: float | None = None,
    ncols: int = 3,
    cmap: str = "RdBu_r",
    value_label: str = "t",
) -> bytes:
    """A small multiple of glass brains on one colour scale: per map, the signed
    maximum-intensity projections (sagittal, coronal, axial) where |value| >
    ``threshold``, over the outline of ``mask``, with the panel's coordinates.

    Drawn with numpy and ``imshow`` rather than nilearn (a nilearn glass brain
    costs ~0.3 s; this ~0.02 s per map), so dozens of maps stay fast.  All maps
    must share one grid.
    """
    canonical = [nb.as_closest_canonical(p.img) for p in panels]
    shown_maps = []
    for img in canonical:
        data = finite_data(img)
        shown_maps.append(np.where(np.abs(data) > threshold, data, 0.0))
    if vmax is None:
        vmax = robust_abs_max(shown_maps, 95.0, floor=threshold * 1.5 if threshold else 0.0)
    affine = canonical[0].affine
    shape = canonical[0].shape[:3]
    extent = _grid_extent(affine, shape)
    mask_data = None
    if mask is not None:
        mask_c = nb.as_closest_canonical(mask)
        if mask_c.shape[:3] == tuple(shape) and np.allclose(mask_c.affine, affine):
            mask_data = np.asarray(mask_c.dataobj) > 0
    # the views show the mask's bounding box (plus a voxel), not the whole grid
    bounds = list(extent)
    if mask_data is not None and mask_data.any():
        for axis, idx in enumerate(np.nonzero(mask_data)):
            step, start = affine[axis, axis], affine[axis, 3]
            bounds[axis] = (start + step * (idx.min() - 1.5), start + step * (idx.max() + 1.5))
    # (projection axis, horizontal axis, vertical axis) for sagittal, coronal, axial
    views = ((0, 1, 2), (1, 0, 2), (2, 0, 1))
    widths = [bounds[h][1] - bounds[h][0] for _, h, _ in views]
    heights = [bounds[v][1] - bounds[v][0] for _, _, v in views]
    nrows = int(np.ceil(len(panels) / ncols))
    # layout in inches: fixed figure width, each map's three views scaled to its cell
    fig_w, pad, gap, title_h, row_gap, bar_h = 13.5, 0.1, 0.06, 0.28, 0.12, 0.8
    cell_w = fig_w / ncols
    scale = (cell_w - 2 * pad - 2 * gap) / sum(widths)  # inches per mm
    image_h = max(heights) * scale
    row_h = title_h + image_h + row_gap
    fig_h = nrows * row_h + bar_h
    fig = new_figure(fig_w, fig_h)
    norm = Normalize(-vmax, vmax)
    mask_projection = {}
    if mask_data is not None:
        for axis, _, _ in views:
            mask_projection[axis] = mask_data.any(axis=axis)
    image = None
    for n, (panel, shown) in enumerate(zip(panels, shown_maps)):
        row, col = divmod(n, ncols)
        top = fig_h - row * row_h  # inches from the bottom
        x0 = col * cell_w + pad
        fig.text(x0 / fig_w, (top - 0.04) / fig_h, panel.label, ha="left", va="top",
                 fontsize=9.5, fontweight="bold", color=panel.color)
        for v, (axis, h, vert) in enumerate(views):
            w_in, h_in = widths[v] * scale, heights[v] * scale
            bottom = top - title_h - image_h + (image_h - h_in) / 2
            ax = fig.add_axes([x0 / fig_w, bottom / fig_h, w_in / fig_w, h_in / fig_h])
            x0 += w_in + gap
            ax.set_axis_off()
            ext = [*extent[h], *extent[vert]]
            # projecting out `axis` leaves (h, vert) in that order: transpose for imshow
            if axis in mask_projection:
                outline = mask_projection[axis]
                ax.imshow(outline.T, origin="lower", extent=ext, cmap="Greys", vmin=0, vmax=6,
                          interpolation="nearest")
                ax.contour(outline.T.astype(float), levels=[0.5], colors="#888888",
                           linewidths=0.5, extent=ext, origin="lower")
            projection = _signed_mip(shown, axis)
            masked = np.ma.masked_equal(projection.T, 0.0)
            image = ax.imshow(masked, origin="lower", extent=ext, cmap=cmap, norm=norm,
                              interpolation="nearest")
            if panel.coords is not None and len(panel.coords):
                xyz = np.asarray(panel.coords, float)
                ax.scatter(xyz[:, h], xyz[:, vert], s=9, c="#2ca02c", edgecolors="black",
                           linewidths=0.4, zorder=3)
            ax.set_xlim(*bounds[h])
            ax.set_ylim(*bounds[vert])
    if image is not None:
        cax = fig.add_axes([0.3, 0.45 / fig_h, 0.4, 0.13 / fig_h])
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        shown = (f"shown where |{value_label}| > {threshold:g}" if threshold > 1e-5
                 else f"shown where {value_label} ≠ 0")
        bar.set_label(f"{value_label} ({shown})", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    png = to_png(fig)
    return png


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None = None,
    label: str = "r",
) -> bytes:
    """A correlation matrix: diverging colours, values written when it is small."""
    matrix = np.asarray(matrix, dtype=float)
    finite = matrix[np.isfinite(matrix)]
    bound = 1.0 if finite.size == 0 or np.abs(finite).max() <= 1 else float(np.abs(finite).max())
    n_rows, n_cols = matrix.shape
    size = min(max(0.5 * max(n_rows, n_cols) + 1.6, 3.5), 11.0)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_axes([0.24, 0.24, 0.62, 0.68])
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    fontsize = 8 if max(n_rows, n_cols) <= 20 else 6
    ax.set_xticklabels([str(c) for c in col_labels], rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticklabels([str(r) for r in row_labels], fontsize=fontsize)
    if max(n_rows, n_cols) <= 12:
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(matrix[i, j]) > 0.6 * bound else "black")
    if title:
        ax.set_title(title, fontsize=10)
    cax = fig.add_axes([0.88, 0.24, 0.025, 0.68])
    fig.colorbar(image, cax=cax).set_label(label)
    return to_png(fig, tight=True)


def distributions(
    groups: Mapping[str, np.ndarray],
    ylabel: str,
    title: str | None = None,
    reference: float | None = None,
) -> bytes:
    """Box plots with the individual values jittered on top (one box per group)."""
    names = list(groups)
    values = [np.asarray(groups[n], dtype=float) for n in names]
    values = [v[np.isfinite(v)] for v in values]
    fig = new_figure(min(max(1.1 * len(names) + 2.0, 4.5), 12.0), 3.6)
    ax = fig.add_axes([0.12, 0.24, 0.84, 0.66])
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(values, positions=positions, widths=0.55, showfliers=False,
               medianprops={"color": "#d62728"}, boxprops={"color": "#444444"},
               whiskerprops={"color": "#444444"}, capprops={"color": "#444444"})
    rng = np.random.default_rng(0)
    for k, v in enumerate(values):
        if v.size:
            jitter = rng.uniform(-0.16, 0.16, v.size)
            ax.scatter(positions[k] + jitter, v, s=10, alpha=0.6,
                       color=SET_COLORS[k % len(SET_COLORS)], edgecolors="none", zorder=3)
    if reference is not None:
        ax.axhline(reference, color="#888888", linewidth=0.8, linestyle="--")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0,
                       ha="right" if len(names) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return to_png(fig, tight=True)


def bars(labels: Sequence[str], values: Sequence[float], xlabel: str,
         limits: tuple[float, float] | None = None) -> bytes:
    """Horizontal bars, one per label, with the value written at the end."""
    values = np.asarray(values, dtype=float)
    fig = new_figure(6.5, 0.38 * len(labels) + 1.0)
    ax = fig.add_axes([0.3, 0.15, 0.62, 0.8])
    positions = np.arange(len(labels))[::-1]
    colors = ["#1f77b4" if v >= 0 else "#d62728" for v in np.nan_to_num(values)]
    ax.barh(positions, np.nan_to_num(values), color=colors, height=0.6)
    for y, v in zip(positions, values):
        if np.isfinite(v):
            ax.text(v, y, f" {v:.3g}", va="center", ha="left" if v >= 0 else "right",
                    fontsize=8)
    ax.set_yticks(positions)
    ax.set_yticklabels([str(lab) for lab in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    if limits is not None:
        ax.set_xlim(*limits)
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig, tight=True)
