"""Figures of the report, each returned as PNG bytes.

Every figure is drawn on its own :class:`matplotlib.figure.Figure` with an Agg
canvas (never through ``pyplot``), so the report neither depends on nor
changes the process's matplotlib backend and leaves no open figure behind.
nilearn accepts such a figure through its ``figure=`` argument (its displays
are not ``close()``d: that asks pyplot for a figure it never registered).

nilearn calls ``gc.collect()`` several times per plot; on a heap holding the
previous figures that dominates the plotting time.  The report builds and draws its
figures in a :func:`~bids_cnm.analyses.frozen_heap.frozen_heap` block, and each
figure freezes the heap again before its nilearn call (what the previous figures
allocated joins the frozen objects).
"""

from __future__ import annotations

import gc
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np

# matplotlib is imported by the functions that draw (see import_matplotlib): the
# report's process builds the figures' jobs, and with the run's drawing server
# (bids_cnm.reports.draw_server) other processes draw them, so it need not pay the
# ~0.3 s of importing it
if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "NILEARN_FIGURES",
    "PLATEAU_COLOR",
    "PNG_COLORS",
    "SET_COLORS",
    "MapPair",
    "Panel",
    "bars",
    "clean",
    "coordinates_glass_brain",
    "finite_data",
    "glass_grid",
    "group_strip",
    "heatmap",
    "load",
    "new_figure",
    "null_histogram",
    "paired_values",
    "plateaus_glass_brain",
    "robust_abs_max",
    "scatter_fit",
    "slices_grid",
    "stat_map_mosaic",
    "stat_map_ortho",
    "to_png",
    "values_glass_brain",
    "voxel_scatter",
    "zoomed_slices",
]

DPI = 90
#: colours kept in a figure's PNG
PNG_COLORS = 192
#: the figure functions that draw (or may resample) with nilearn: drawn in processes
#: forked once nilearn is imported (:mod:`bids_cnm.reports.drawing`)
NILEARN_FIGURES = frozenset({
    "coordinates_glass_brain", "stat_map_ortho", "stat_map_mosaic", "zoomed_slices",
    "plateaus_glass_brain", "values_glass_brain", "voxel_scatter",
})
#: colours of coordinate sets (cycled)
SET_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
)
#: |values| above this are placeholders (e.g. the clipped t of a seed with itself)
_HUGE = 1e30


def _freeze() -> None:
    gc.freeze()


def import_matplotlib() -> None:
    """Import what the figures draw with (before forking processes that will draw)."""
    import matplotlib.backends.backend_agg
    import matplotlib.cm
    import matplotlib.collections
    import matplotlib.figure
    import matplotlib.lines  # noqa: F401


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (not registered with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = DPI, tight: bool = False) -> bytes:
    """Render a figure to a palette PNG (``tight``: crop to the drawn content).

    The pixels are quantized to at most :data:`PNG_COLORS` colours (a palette PNG is
    2-5 times smaller than RGBA, visually the same for plots) straight from the Agg
    canvas: ``savefig`` would encode an RGBA PNG only for it to be decoded again.
    ``tight`` crops the canvas to the drawn content's box (plus 0.1 inch) after one
    draw; ``savefig``'s ``bbox_inches="tight"`` draws twice, which only content
    reaching beyond the figure's edges needs.
    """
    from PIL import Image

    fig.set_dpi(dpi)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    if tight:
        width, height = fig.get_size_inches()
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
        if box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height:
            rows = slice(int(np.floor((height - box.y1) * dpi)),
                         int(np.ceil((height - box.y0) * dpi)))
            cols = slice(int(np.floor(box.x0 * dpi)), int(np.ceil(box.x1 * dpi)))
            pixels = pixels[rows, cols]
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
                        bbox_inches="tight", pad_inches=0.1,
                        pil_kwargs={"compress_level": 1})  # decoded at once: fast zlib
            pixels = np.asarray(Image.open(buffer).convert("RGB"))
    image = Image.fromarray(np.ascontiguousarray(pixels))
    # maximum coverage keeps a small patch of a rare colour (a marker, a blob), which
    # median cut merged into its neighbours (a plateau's yellow dots vanished, blobs of
    # the slices changed colour); octree kept them too but banded the colour bars
    paletted = image.quantize(colors=PNG_COLORS, method=Image.Quantize.MAXCOVERAGE)
    out = io.BytesIO()
    paletted.save(out, format="PNG", optimize=True)
    return out.getvalue()


ImageLike = nb.spatialimages.SpatialImage | str | os.PathLike


def load(img: ImageLike) -> nb.spatialimages.SpatialImage:
    """An image from an image or a path (figure jobs carry paths: they pickle cheaply)."""
    return img if isinstance(img, nb.spatialimages.SpatialImage) else nb.load(img)


def clean(img: ImageLike) -> nb.Nifti1Image:
    """The image (3-D, float32) with non-finite values and placeholders set to 0."""
    img = load(img)
    return nb.Nifti1Image(finite_data(img), img.affine)


def finite_data(img: ImageLike) -> np.ndarray:
    """3-D float data with non-finite values and placeholders (|v| > 1e30) set to 0."""
    img = load(img)
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
    from matplotlib.lines import Line2D
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


@lru_cache(maxsize=1)
def background() -> nb.Nifti1Image:
    """nilearn's MNI152 template at 2 mm, loaded once (before the drawing processes fork,
    so they share it): the slices' background.

    The 1 mm template averaged over blocks of 2 x 2 x 2 voxels: nilearn's
    ``load_mni152_template(resolution=2)`` resamples it with splines, ten times
    slower (0.6 s) for a background drawn at ~2 pixels per millimetre.
    """
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    data = np.asarray(template.dataobj, dtype=np.float32)
    even = [n - n % 2 for n in data.shape[:3]]
    data = data[:even[0], :even[1], :even[2]]
    blocks = data.reshape(even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2)
    # a 2-voxel block's centre is half a voxel past its first voxel's
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (template.affine @ [0.5, 0.5, 0.5, 1.0])[:3]
    return nb.Nifti1Image(blocks.mean(axis=(1, 3, 5), dtype=np.float32), affine)


def _stat_kwargs(vmax: float, symmetric: bool) -> dict:
    # three significant digits on the colour bar: nilearn's two ("%.2g") print a DBS
    # network's weighted values (hundreds) as 3.5e+02
    common = {"bg_img": background(), "cbar_tick_format": "%.3g"}
    if symmetric:
        return {"vmax": vmax, "symmetric_cbar": True, **common}
    return {"vmin": 0.0, "vmax": vmax, "symmetric_cbar": False, **common}


def _colorbar_label(fig: Figure, label: str | None) -> None:
    """Name the colour bar nilearn drew (the last axes), beside it and out of the ticks' way."""
    if label and fig.axes:
        bar = fig.axes[-1]
        bar.tick_params(labelsize=7)
        # nilearn's bar spans nearly the figure's height: shorten it from the top so the
        # label has a line of its own above the top tick (the label overlapped it before)
        box = bar.get_position()
        bar.set_position([box.x0, box.y0, box.width, box.height * 0.9])
        bar.set_title(label, fontsize=8, pad=7, loc="right")


def stat_map_ortho(
    img: ImageLike,
    cut_coords: Sequence[float] | None,
    vmax: float,
    threshold: float,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
    title: str | None = None,
    cbar_label: str | None = None,
    markers: np.ndarray | None = None,
) -> bytes:
    """Orthogonal slices of a map on the MNI template, crossing at ``cut_coords``."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(9.0, 3.2)
    display = plotting.plot_stat_map(
        clean(img), display_mode="ortho", cut_coords=cut_coords, threshold=threshold,
        cmap=cmap, figure=fig, title=title, black_bg=False, dim=-0.3, draw_cross=True,
        annotate=True, **_stat_kwargs(vmax, symmetric),
    )
    if markers is not None and len(markers):
        _markers_by_slice(display, np.asarray(markers, float).reshape(-1, 3),
                          display.cut_coords, "#2ca02c", 18, 0.5)
    _colorbar_label(fig, cbar_label)
    return to_png(fig)


#: how far (mm) from a view's slice a point is drawn as lying on it: a filled marker
#: (and its label); a point farther away is projected onto the view as a hollow one
SLICE_SLAB = 6.0

#: (cut, its normal axis, horizontal axis, vertical axis) of nilearn's ortho views
_ORTHO_VIEWS = (("x", 0, 1, 2), ("y", 1, 0, 2), ("z", 2, 0, 1))


def _markers_by_slice(display, xyz: np.ndarray, cuts: Sequence[float], color: str,
                      size: float, linewidth: float) -> None:
    """Points on an ortho display: filled in the views whose slice lies within
    :data:`SLICE_SLAB` mm of them, hollow (projected from farther) in the others.

    nilearn's ``add_markers`` draws every point filled in every view, so a point 20 mm
    off a sagittal slice looked as if it lay on it.
    """
    for cut, normal, h, v in _ORTHO_VIEWS:
        ax = display.axes[cut].ax
        limits = ax.get_xlim(), ax.get_ylim()
        near = np.abs(xyz[:, normal] - float(cuts[normal])) <= SLICE_SLAB
        if near.any():
            ax.scatter(xyz[near, h], xyz[near, v], s=size, facecolors=color,
                       edgecolors="black", linewidths=linewidth, zorder=5)
        if (~near).any():
            ax.scatter(xyz[~near, h], xyz[~near, v], s=size, facecolors="none",
                       edgecolors=color, linewidths=2 * linewidth + 0.5, zorder=5)
        ax.set_xlim(limits[0])  # scatter would widen the view to its points
        ax.set_ylim(limits[1])


def _on_slice(xyz: np.ndarray, center: Sequence[float], radius: float, normal: int,
              h: int, v: int) -> bool:
    """Whether a point lies within :data:`SLICE_SLAB` mm of a view's slice through
    ``center`` and inside its window of +-``radius`` mm (axes ``h``, ``v``)."""
    return bool(abs(xyz[normal] - center[normal]) <= SLICE_SLAB
                and abs(xyz[h] - center[h]) < radius and abs(xyz[v] - center[v]) < radius)


def stat_map_mosaic(
    img: ImageLike,
    z_cuts: Sequence[float],
    vmax: float,
    threshold: float,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
    cbar_label: str | None = None,
) -> bytes:
    """Axial slices of a map at the given z (mm)."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(max(1.7 * len(z_cuts) + 1.2, 6.0), 2.3)
    plotting.plot_stat_map(
        clean(img), display_mode="z", cut_coords=list(z_cuts), threshold=threshold,
        cmap=cmap, figure=fig, black_bg=False, dim=-0.3, **_stat_kwargs(vmax, symmetric),
    )
    _colorbar_label(fig, cbar_label)
    return to_png(fig)


def zoomed_slices(img: ImageLike, center: Sequence[float], *args, **kwargs) -> bytes:
    """:func:`zoomed_figure` rendered to PNG (the same parameters)."""
    return to_png(zoomed_figure(img, center, *args, **kwargs))


def zoomed_figure(
    img: ImageLike,
    center: Sequence[float],
    references: Sequence[tuple[str, Sequence[float]]],
    vmax: float,
    threshold: float,
    radius: float = 28.0,
    symmetric: bool = True,
    cmap: str = "RdBu_r",
    cbar_label: str | None = None,
    ties: Sequence[Sequence[float]] = (),
) -> Figure:
    """Orthogonal slices through ``center`` zoomed to +-``radius`` mm, with the peak
    (a cross), labelled reference points (green dots) and the other plateaus tied with
    the peak (``ties``: yellow dots numbered 2, 3, ...); a point is filled (and labelled)
    in the views whose slice passes within :data:`SLICE_SLAB` mm of it, hollow in the
    others."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(9.0, 3.3)
    center = [float(c) for c in center]
    display = plotting.plot_stat_map(
        clean(img), display_mode="ortho", cut_coords=center, threshold=threshold,
        cmap=cmap, figure=fig, black_bg=False, dim=-0.3, draw_cross=True, annotate=False,
        **_stat_kwargs(vmax, symmetric),
    )
    refs = np.asarray([xyz for _, xyz in references], float).reshape(-1, 3)
    if len(refs):
        _markers_by_slice(display, refs, center, "#2ca02c", 30, 0.6)
    tied = np.asarray(ties, float).reshape(-1, 3)
    if len(tied):
        _markers_by_slice(display, tied, center, PLATEAU_COLOR, 40, 0.8)
    # nilearn sizes its three views by the whole brain's extent in each (the sagittal one
    # widest) and places them again at every draw; zoomed to the same square window,
    # they become three equal squares side by side, left of the colour bar (before, the
    # sagittal view was taller than the figure and lost its top and bottom)
    width, height = fig.get_size_inches()
    side = min(0.92 * height, 0.86 * width / 3)  # inches
    bottom = (1 - side / height) / 2
    for i, (cut, normal, h, v) in enumerate(_ORTHO_VIEWS):
        ax = display.axes[cut].ax
        ax.set_axes_locator(None)
        ax.set_position([0.005 + i * (side + 0.04) / width, bottom, side / width, side / height])
        ax.set_xlim(center[h] - radius, center[h] + radius)
        ax.set_ylim(center[v] - radius, center[v] + radius)
        view = (center, radius, normal, h, v)
        for (label, _), xyz in zip(references, refs):
            if _on_slice(xyz, *view):
                ax.annotate(label, (xyz[h], xyz[v]), xytext=(4, 4), textcoords="offset points",
                            fontsize=7, color="#145214")
        for n, xyz in enumerate(tied, start=2):
            if _on_slice(xyz, *view):
                ax.annotate(str(n), (xyz[h], xyz[v]), xytext=(4, -9),
                            textcoords="offset points", fontsize=7, fontweight="bold",
                            color="black")
        # inside the view: zoomed, the sagittal view is taller than the figure and a title
        # above it was cut off
        ax.text(0.03, 0.97, {"x": f"x = {center[0]:g}", "y": f"y = {center[1]:g}",
                             "z": f"z = {center[2]:g}"}[cut], transform=ax.transAxes,
                ha="left", va="top", fontsize=8, color="black",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
    _colorbar_label(fig, cbar_label)
    return fig


#: colour of the markers of tied peak plateaus (apart from the maps' red/blue)
PLATEAU_COLOR = "#ffd400"


def plateaus_glass_brain(
    img: ImageLike,
    plateaus: Sequence[Sequence[float]],
    vmax: float,
    threshold: float,
    cbar_label: str | None = None,
) -> bytes:
    """The map on a glass brain with every tied plateau of its extreme value marked and
    numbered (1, 2, ... as in the caption), so that no tied maximum is hidden."""
    from nilearn import plotting

    _freeze()
    fig = new_figure(9.5, 3.5)
    display = plotting.plot_glass_brain(
        clean(img), display_mode="ortho", threshold=threshold, vmax=vmax, vmin=-vmax,
        cmap="RdBu_r", plot_abs=False, colorbar=True, figure=fig, annotate=True,
        black_bg=False)
    xyz = np.asarray(plateaus, float).reshape(-1, 3)
    display.add_markers(xyz, marker_color=PLATEAU_COLOR, marker_size=45, edgecolors="black",
                        linewidths=0.8)
    # nilearn's glass-brain views: sagittal (y, z), coronal (x, z), axial (x, y), in mm
    for cut, (h, v) in (("x", (1, 2)), ("y", (0, 2)), ("z", (0, 1))):
        ax = display.axes[cut].ax
        for n, point in enumerate(xyz, start=1):
            ax.annotate(str(n), (point[h], point[v]), xytext=(4, 3),
                        textcoords="offset points", fontsize=7.5, fontweight="bold",
                        color="black", zorder=10)
    _colorbar_label(fig, cbar_label)
    return to_png(fig)


def values_glass_brain(xyz: np.ndarray, values: Sequence[float], label: str,
                       cmap: str = "viridis") -> bytes:
    """Points (e.g. electrode spheres) on a glass brain, coloured by a value."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import plotting

    _freeze()
    values = np.asarray(values, float)
    fig = new_figure(9.5, 3.3)
    display = plotting.plot_glass_brain(None, display_mode="lyrz", figure=fig, annotate=True)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1.0)
    colors = [colormaps[cmap](norm(v)) if np.isfinite(v) else (0.6, 0.6, 0.6, 1)
              for v in values]
    display.add_markers(np.asarray(xyz, float), marker_color=colors, marker_size=40,
                        edgecolors="black", linewidths=0.5)
    cax = fig.add_axes([0.35, 0.06, 0.3, 0.035])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return to_png(fig)


@dataclass
class Panel:
    """One map of :func:`glass_grid`."""

    label: str
    img: ImageLike
    coords: np.ndarray | None = None  # (n, 3) MNI mm, drawn as dots
    color: str = "black"  # of the label


def _signed_mip(data: np.ndarray, axis: int) -> np.ndarray:
    """Projection keeping, along ``axis``, the value of largest magnitude (with its sign;
    the positive one of a tie)."""
    high = data.max(axis=axis)
    low = data.min(axis=axis)
    return np.where(-low > high, low, high)


def _window(plane: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``plane[rows[0]:rows[1], cols[0]:cols[1]]``, zero where the window leaves the plane."""
    out = np.zeros((rows[1] - rows[0], cols[1] - cols[0]), dtype=plane.dtype)
    r0, r1 = max(rows[0], 0), min(rows[1], plane.shape[0])
    c0, c1 = max(cols[0], 0), min(cols[1], plane.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - rows[0]:r1 - rows[0], c0 - cols[0]:c1 - cols[0]] = plane[r0:r1, c0:c1]
    return out


def _outline(inside: np.ndarray, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The 0.5 contour of a boolean plane (rows along ``x``, columns along ``y``, voxel
    centres in mm), as (n, 2) mm polylines: the line ``Axes.contour`` draws."""
    from contourpy import contour_generator

    # matplotlib's own contour algorithm (rcParams["contour.algorithm"])
    generator = contour_generator(x=x, y=y, z=inside.T.astype(float), name="mpl2014",
                                  line_type="SeparateCode")
    lines, _ = generator.lines(0.5)
    return [line for line in lines if len(line) > 1]


@lru_cache(maxsize=1)
def _mask_grey() -> tuple[float, float, float, float]:
    """The mask's projection under a glass grid's maps (``Greys`` at 1/6: a light grey)."""
    from matplotlib import colormaps

    return colormaps["Greys"](1 / 6)


def glass_grid(
    panels: Sequence[Panel],
    mask: ImageLike | None,
    threshold: float,
    vmax: float | None = None,
    ncols: int = 3,
    cmap: str = "RdBu_r",
    value_label: str = "t",
) -> bytes:
    """A small multiple of glass brains on one colour scale: per map, the signed
    maximum-intensity projections (sagittal, coronal, axial) where |value| >
    ``threshold``, over the outline of ``mask``, with the panel's coordinates.

    Drawn with numpy rather than nilearn (a nilearn glass brain costs ~0.3 s), and
    on a single axes in inches: every view is one RGBA image (the map's colours over
    the mask's grey) placed at its spot, the mask outlines are one line collection
    and the coordinates one scatter.  A grid of axes (three per map, each with its
    ticks and spines built though hidden) cost five times more to build than to
    draw.  All maps must share one grid.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    canonical = [nb.as_closest_canonical(load(p.img)) for p in panels]
    shown_maps = []
    for img in canonical:
        data = finite_data(img)
        shown_maps.append(np.where(np.abs(data) > threshold, data, 0.0))
    if vmax is None:
        vmax = robust_abs_max(shown_maps, 95.0, floor=threshold * 1.5 if threshold else 0.0)
    affine = canonical[0].affine
    shape = canonical[0].shape[:3]
    steps = [float(affine[axis, axis]) for axis in range(3)]
    starts = [float(affine[axis, 3]) for axis in range(3)]
    mask_data = None
    if mask is not None:
        mask_c = nb.as_closest_canonical(load(mask))
        if mask_c.shape[:3] == tuple(shape) and np.allclose(mask_c.affine, affine):
            mask_data = np.asarray(mask_c.dataobj) > 0
    # the views show the mask's bounding box plus a voxel (voxel index windows
    # [lo, hi)), not the whole grid
    windows = [(0, int(n)) for n in shape]
    if mask_data is not None and mask_data.any():
        windows = [(int(idx.min()) - 1, int(idx.max()) + 2) for idx in np.nonzero(mask_data)]
    bounds = [(starts[a] + steps[a] * (lo - 0.5), starts[a] + steps[a] * (hi - 0.5))
              for a, (lo, hi) in enumerate(windows)]
    centres = [starts[a] + steps[a] * np.arange(lo, hi) for a, (lo, hi) in enumerate(windows)]
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
    # one axes over the whole figure whose data coordinates are inches
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    norm = Normalize(-vmax, vmax)
    colormap = colormaps[cmap]
    # per view, drawn once: the mask's grey projection (the background of every map's
    # view) and its outline
    backdrops, outlines = [], []
    for axis, h, v in views:
        plane = np.ones((windows[h][1] - windows[h][0], windows[v][1] - windows[v][0], 4))
        inside = None
        if mask_data is not None:
            inside = _window(mask_data.any(axis=axis), windows[h], windows[v])
            plane[inside] = _mask_grey()
        backdrops.append(plane)
        outlines.append(_outline(inside, centres[h], centres[v]) if inside is not None
                        and inside.any() else [])
    segments, points = [], []
    for n, (panel, shown) in enumerate(zip(panels, shown_maps)):
        row, col = divmod(n, ncols)
        top = fig_h - row * row_h  # inches from the bottom
        x0 = col * cell_w + pad
        fig.text(x0 / fig_w, (top - 0.04) / fig_h, panel.label, ha="left", va="top",
                 fontsize=9.5, fontweight="bold", color=panel.color)
        xyz = (np.asarray(panel.coords, float).reshape(-1, 3) if panel.coords is not None
               else np.empty((0, 3)))
        for k, (axis, h, v) in enumerate(views):
            w_in, h_in = widths[k] * scale, heights[k] * scale
            bottom = top - title_h - image_h + (image_h - h_in) / 2
            projection = _window(_signed_mip(shown, axis), windows[h], windows[v])
            rgba = backdrops[k].copy()
            drawn = projection != 0
            rgba[drawn] = colormap(norm(projection[drawn]))
            # rows of the transposed plane run along the vertical axis (origin lower)
            ax.imshow(rgba.transpose(1, 0, 2), origin="lower", interpolation="nearest",
                      extent=(x0, x0 + w_in, bottom, bottom + h_in), aspect="auto")
            to_inches = np.array([x0 - bounds[h][0] * scale, bottom - bounds[v][0] * scale])
            segments += [line * scale + to_inches for line in outlines[k]]
            inside = ((xyz[:, h] > bounds[h][0]) & (xyz[:, h] < bounds[h][1])
                      & (xyz[:, v] > bounds[v][0]) & (xyz[:, v] < bounds[v][1]))
            points.append(xyz[inside][:, [h, v]] * scale + to_inches)
            x0 += w_in + gap
    if segments:
        ax.add_collection(LineCollection(segments, colors="#888888", linewidths=0.5,
                                         zorder=2))
    points = np.concatenate(points) if points else np.empty((0, 2))
    if len(points):
        ax.scatter(points[:, 0], points[:, 1], s=9, c="#2ca02c", edgecolors="black",
                   linewidths=0.4, zorder=3)
    ax.set_xlim(0.0, fig_w)
    ax.set_ylim(0.0, fig_h)
    if panels:
        cax = fig.add_axes([0.3, 0.45 / fig_h, 0.4, 0.13 / fig_h])
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=cax,
                           orientation="horizontal")
        shown = (f"shown where |{value_label}| > {threshold:g}" if threshold > 1e-5
                 else f"shown where {value_label} ≠ 0")
        bar.set_label(f"{value_label} ({shown})", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return to_png(fig)


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None = None,
    label: str = "r",
) -> bytes:
    """A correlation matrix: diverging colours, values written up to 20 x 20."""
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
    # up to 20 x 20 the cells (>= 0.37 in at the figure's size) hold "-0.95" at 6 pt: a
    # sensitivity analysis has 13 or more variants, and its r values are the result
    if max(n_rows, n_cols) <= 20:
        cell_font = 7 if max(n_rows, n_cols) <= 12 else 6
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                            fontsize=cell_font,
                            color="white" if abs(matrix[i, j]) > 0.6 * bound else "black")
    if title:
        ax.set_title(title, fontsize=10)
    cax = fig.add_axes([0.88, 0.24, 0.025, 0.68])
    fig.colorbar(image, cax=cax).set_label(label)
    return to_png(fig, tight=True)


def null_histogram(
    null: np.ndarray,
    observed: float,
    p: float | None,
    xlabel: str,
    alternative: str | None = None,
) -> bytes:
    """The null distribution as a histogram, the observed value as a red line with its p."""
    null = np.asarray(null, float)
    null = null[np.isfinite(null)]
    fig = new_figure(5.6, 2.9)
    ax = fig.add_axes([0.12, 0.18, 0.84, 0.7])
    ax.hist(null, bins=min(40, max(10, null.size // 20)), color="#9aa5b1",
            edgecolor="white", linewidth=0.4)
    ax.axvline(observed, color="#d62728", linewidth=2)
    text = f"observed {observed:.3g}"
    if p is not None and np.isfinite(p):
        text += f"\np = {p:.3g}" + (f" ({alternative})" if alternative else "")
    right = observed >= np.median(null) if null.size else True
    ax.text(0.98 if right else 0.02, 0.95, text, transform=ax.transAxes, fontsize=8,
            ha="right" if right else "left", va="top", color="#d62728")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(f"null draws (n = {null.size})", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def group_strip(
    groups: Mapping[str, np.ndarray],
    ylabel: str,
    annotation: str = "",
) -> bytes:
    """Two (or more) groups as jittered points with their mean and 95% CI of the mean."""
    names = list(groups)
    fig = new_figure(max(3.2, 1.3 * len(names) + 1.8), 3.3)
    ax = fig.add_axes([0.2, 0.14, 0.75, 0.68])
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        v = np.asarray(groups[name], float)
        v = v[np.isfinite(v)]
        color = SET_COLORS[k % len(SET_COLORS)]
        ax.scatter(k + rng.uniform(-0.12, 0.12, v.size), v, s=22, color=color, alpha=0.75,
                   edgecolors="black", linewidths=0.3, zorder=3)
        if v.size:
            mean = v.mean()
            half = 1.96 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
            ax.errorbar(k + 0.3, mean, yerr=half, fmt="o", color="black", capsize=4,
                        markersize=5, zorder=4)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n(n = {len(groups[n])})" for n in names], fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.3)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    if annotation:
        fig.text(0.5, 0.97, annotation, ha="center", va="top", fontsize=8)
    return to_png(fig)


def scatter_fit(
    x: np.ndarray,
    y: np.ndarray,
    xlabel: str,
    ylabel: str,
    annotation: str = "",
    labels: Sequence[str] | None = None,
) -> bytes:
    """A scatter with its least-squares line (e.g. predicted similarity vs outcome)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    fig = new_figure(4.6, 3.6)
    ax = fig.add_axes([0.16, 0.15, 0.78, 0.7])
    ax.scatter(x[ok], y[ok], s=30, color="#1f77b4", edgecolors="black", linewidths=0.4,
               zorder=3)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        grid = np.linspace(x[ok].min(), x[ok].max(), 2)
        ax.plot(grid, slope * grid + intercept, color="#d62728", linewidth=1.2)
    if labels is not None:
        for xi, yi, lab, good in zip(x, y, labels, ok):
            if good:
                ax.annotate(str(lab), (xi, yi), xytext=(3, 3), textcoords="offset points",
                            fontsize=7)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    if annotation:
        ax.set_title(annotation, fontsize=9)
    return to_png(fig)


def _row_mosaic(volume: np.ndarray, ks: Sequence[int], box: tuple[slice, slice]) -> np.ndarray:
    """Axial slices ``ks`` of a canonical volume, cropped to ``box``, side by side
    (separated by a blank column) as one 2-D image (rows: y, columns: x)."""
    parts = []
    for k in ks:
        parts.append(volume[box[0], box[1], k].T)
        parts.append(np.full((parts[-1].shape[0], 1), np.nan))
    return np.hstack(parts[:-1])


def slices_grid(
    items: Sequence[tuple[str, ImageLike]],
    z_cuts: Sequence[float],
    vmax: float,
    threshold: float,
    mask: ImageLike | None = None,
    cmap: str = "RdBu_r",
    value_label: str = "value",
    symmetric: bool = True,
) -> bytes:
    """Small multiples: one row per map, its axial slices at ``z_cuts`` (mm), over the
    ``mask`` in light grey; one colour scale.

    Each row is one ``imshow`` of the slices side by side on the maps' own grid (all
    maps share one grid), so dozens of maps stay fast.
    """
    from matplotlib.colors import Normalize

    imgs = [nb.as_closest_canonical(load(path)) for _, path in items]
    affine = imgs[0].affine
    shape = imgs[0].shape[:3]
    mask_data = np.ones(shape, bool)
    if mask is not None:
        m = nb.as_closest_canonical(load(mask))
        if m.shape[:3] == tuple(shape) and np.allclose(m.affine, affine):
            mask_data = np.asarray(m.dataobj) > 0
    inv = np.linalg.inv(affine)
    ks = [int(np.clip(round((inv @ [0, 0, z, 1])[2]), 0, shape[2] - 1)) for z in z_cuts]
    nonzero = np.nonzero(mask_data)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nonzero[:2]) \
        if mask_data.any() else (slice(None), slice(None))
    background_row = _row_mosaic(mask_data.astype(float), ks, box)
    height, width = background_row.shape
    # room under the slices for their z labels and the colour bar with its tick labels
    label_w, bar_h = 2.0, 0.85
    row_w = min(1.0 * len(ks), 7.5)
    row_h = row_w * height / width
    fig_w, fig_h = label_w + row_w + 0.1, row_h * len(imgs) + bar_h
    fig = new_figure(fig_w, fig_h)
    norm = Normalize(-vmax if symmetric else 0.0, vmax)
    image = None
    for row, ((label, _), img) in enumerate(zip(items, imgs)):
        data = finite_data(img)
        shown = np.where(np.abs(data) > threshold, data, np.nan)
        bottom = fig_h - (row + 1) * row_h
        ax = fig.add_axes([label_w / fig_w, bottom / fig_h, row_w / fig_w, row_h / fig_h])
        ax.set_axis_off()
        ax.imshow(np.where(background_row > 0, 0.12, np.nan), origin="lower", cmap="Greys",
                  vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        image = ax.imshow(_row_mosaic(shown, ks, box), origin="lower", cmap=cmap, norm=norm,
                          interpolation="nearest", aspect="auto")
        fig.text(0.06 / fig_w, (bottom + row_h / 2) / fig_h, label, ha="left", va="center",
                 fontsize=8)
    slice_w = row_w / len(ks)
    for col, z in enumerate(z_cuts):
        fig.text((label_w + (col + 0.5) * slice_w) / fig_w, (bar_h - 0.05) / fig_h,
                 f"z = {z:g}", ha="center", va="top", fontsize=7)
    if image is not None:
        cax = fig.add_axes([label_w / fig_w, 0.34 / fig_h, min(3.0, row_w) / fig_w,
                            0.1 / fig_h])
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        bar.ax.tick_params(labelsize=7)
        fig.text((label_w - 0.1) / fig_w, 0.39 / fig_h, value_label, ha="right",
                 va="center", fontsize=8)
    return to_png(fig)


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


@dataclass
class MapPair:
    """Two maps whose voxel-wise correlation the run computed, for :func:`voxel_scatter`."""

    label: str  # the panel's title, before the r
    x: ImageLike  # on the analysis grid
    y: ImageLike  # resampled (linear) onto ``x``'s grid when on another one
    xlabel: str
    ylabel: str


def paired_values(pair: MapPair, mask: ImageLike | np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The two maps' values at the voxels the run correlates them over: the analysis
    mask's voxels where both are finite (``y`` resampled linearly onto ``x``'s grid, as
    the run resamples a map on another grid, e.g. NiMARE's ALE)."""
    x_img = load(pair.x)
    y_img = load(pair.y)
    x = np.asarray(x_img.dataobj, dtype=float)
    x = x[..., 0] if x.ndim == 4 else x
    if y_img.shape[:3] != x.shape or not np.allclose(y_img.affine, x_img.affine, atol=1e-3):
        from nilearn.image import resample_to_img

        y_data = np.asarray(y_img.dataobj, dtype=np.float32)
        y_img = resample_to_img(
            nb.Nifti1Image(y_data[..., 0] if y_data.ndim == 4 else y_data, y_img.affine),
            nb.Nifti1Image(np.zeros(x.shape, np.int8), x_img.affine),
            interpolation="linear", force_resample=True, copy_header=True, fill_value=np.nan)
    y = np.asarray(y_img.dataobj, dtype=float)
    y = y[..., 0] if y.ndim == 4 else y
    # the engine's stand-ins for an infinite t (a seed with itself) are not values
    keep = np.isfinite(x) & np.isfinite(y) & (np.abs(x) < _HUGE) & (np.abs(y) < _HUGE)
    if mask is not None:
        mask = mask if isinstance(mask, np.ndarray) else np.asarray(load(mask).dataobj) > 0
        keep &= mask
    return x[keep], y[keep]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float((x @ y) / den) if den > 0 else float("nan")


#: a scatter panel draws hexagonal bins when it has more points than this (dense
#: voxel clouds: a scatter of tens of thousands of dots is a blot and a big PNG)
HEXBIN_ABOVE = 2000


def voxel_scatter(pairs: Sequence[MapPair], mask: ImageLike | None, ncols: int = 4) -> bytes:
    """Voxel-by-voxel scatter of each pair of maps (hexagonal bins, log counts, when
    dense), with the Pearson r of the plotted voxels and their number in the title."""
    n = len(pairs)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = new_figure(3.1 * ncols + 0.3, 2.9 * nrows)
    # fixed margins: tight_layout measures every text and costs more than the plots
    width, height = 3.1 * ncols + 0.3, 2.9 * nrows
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                        top=1 - 0.5 / height, wspace=0.45, hspace=0.6)
    mask_data = np.asarray(load(mask).dataobj) > 0 if mask is not None else None
    for k, pair in enumerate(pairs):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        x, y = paired_values(pair, mask_data)
        r = _pearson(x, y) if x.size >= 3 else float("nan")
        if x.size > HEXBIN_ABOVE:
            ax.hexbin(x, y, gridsize=36, bins="log", cmap="Blues", mincnt=1, linewidths=0.1)
        else:
            ax.scatter(x, y, s=5, color="#1f77b4", alpha=0.5, linewidths=0)
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, slope * grid + intercept, color="#d62728", linewidth=1.0)
        ax.set_title(f"{pair.label}\nr = {r:.3f} ({x.size} voxels)", fontsize=8.5)
        ax.set_xlabel(pair.xlabel, fontsize=8)
        ax.set_ylabel(pair.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)
