"""Report figures checked on maps made for the purpose: tied peak plateaus, voxel scatters."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm.reports import figures
from bids_cnm.reports.blocks import iter_figures
from bids_cnm.reports.report import make_context

#: a 4 mm MNI grid (as the demo's)
AFFINE = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
SHAPE = (46, 55, 46)
GRID = "task-rest_space-MNI152NLin2009cAsym_res-4"


def _ijk(xyz) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(np.linalg.inv(AFFINE) @ [*xyz, 1])[:3])


def _write_map(folder: Path, name: str, data: np.ndarray, sidecar: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nb.Nifti1Image(data.astype(np.float32), AFFINE).to_filename(path)
    (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return path


def _marker_blobs(png: bytes, color: str) -> int:
    """Connected groups (>= 12 pixels) of the marker colour in a PNG."""
    from PIL import Image
    from scipy import ndimage

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    target = np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)])
    close = np.abs(rgb - target).sum(axis=2) < 60
    labels, n = ndimage.label(close)
    sizes = ndimage.sum(close, labels, range(1, n + 1))
    return int((np.asarray(sizes) >= 12).sum())


def test_every_tied_plateau_of_the_network_is_marked(tmp_path):
    """An overlap map whose maximum (18 of 21 studies) is reached in the left and the right
    thalamus (two plateaus of different size) gets a figure marking both, with their
    coordinates in the caption; a lower bump elsewhere is not marked, nor a negative region
    of the same magnitude (another network's extreme, not a tie)."""
    from bids_cnm.reports.sections.network import network_section

    n = 21
    data = np.zeros(SHAPE)
    # voxel centres of the grid
    left, right, lower = (-10.0, -18.0, 8.0), (14.0, -18.0, 8.0), (-42.0, -62.0, 32.0)
    negative = (30.0, 30.0, 20.0)
    for centre, half, value in ((left, 1, 18), (right, 0, 18), (lower, 1, 12),
                                (negative, 1, -18)):
        i, j, k = _ijk(centre)
        data[i - half:i + half + 1, j - half:j + half + 1, k - half:k + half + 1] = value / n
    # a shoulder around the left plateau, below the maximum
    i, j, k = _ijk(left)
    shell = np.zeros(SHAPE, bool)
    shell[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = True
    data[shell & (data == 0)] = 10 / n
    out = tmp_path / "derivatives"
    _write_map(out / "network", f"{GRID}_set-primary_thresh-5p1_desc-overlap_boldmap", data,
               {"NumberOfStudies": n})
    ctx = make_context(out)
    section = network_section(ctx)
    found = [f for f in iter_figures(section.blocks) if "tied plateaus" in f.alt]
    assert len(found) == 1, [f.alt for f in iter_figures(section.blocks)]
    figure = found[0]
    marked = np.asarray(figure.job.args[1])
    # largest plateau first (27 voxels on the left), then the single voxel on the right
    np.testing.assert_array_equal(marked, [left, right])
    assert f"maximum overlap {18 / n:g} (18 of 21 studies) is tied on 2 separate plateaus" \
        in figure.caption, figure.caption
    assert "18 of 21 studies" in figure.caption
    assert "(-10, -18, 8) mm, 27 voxels" in figure.caption
    assert "(14, -18, 8) mm, 1 voxel" in figure.caption
    png = figure.job()
    # both markers in the coronal and in the axial view (the sagittal view overlays them)
    assert _marker_blobs(png, figures.PLATEAU_COLOR) >= 4


def test_a_single_plateau_gets_no_plateau_figure(tmp_path):
    from bids_cnm.reports.sections.network import network_section

    data = np.zeros(SHAPE)
    i, j, k = _ijk((-10.0, -18.0, 8.0))
    data[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 0.5
    data[i, j, k] = 0.75
    out = tmp_path / "derivatives"
    _write_map(out / "network", f"{GRID}_set-primary_thresh-5p1_desc-overlap_boldmap", data,
               {"NumberOfStudies": 4})
    section = network_section(make_context(out))
    alts = [f.alt for f in iter_figures(section.blocks)]
    assert alts and not any("tied plateaus" in a for a in alts)


def test_peaks_are_named_from_the_plans_atlas(tmp_path):
    """A labelled atlas of the analysis plan (logs/plan.json) names every peak inside one
    of its regions, in a column of its own; a peak outside them gets '-'."""
    import pandas as pd

    from bids_cnm.reports.sections.common import peaks_table

    atlas = np.zeros(SHAPE, np.int16)
    inside = (-10.0, -18.0, 8.0)
    i, j, k = _ijk(inside)
    atlas[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 7
    nb.Nifti1Image(atlas, AFFINE).to_filename(tmp_path / "atlas.nii.gz")
    pd.DataFrame({"index": [7], "name": ["left thalamus (mine)"]}).to_csv(
        tmp_path / "atlas.tsv", sep="\t", index=False)
    out = tmp_path / "derivatives"
    (out / "logs").mkdir(parents=True)
    plan = {"validation": {"roi_overlap": [{"name": "Mine", "atlas": {
        "image": str(tmp_path / "atlas.nii.gz"), "labels": str(tmp_path / "atlas.tsv")}}]}}
    (out / "logs" / "plan.json").write_text(json.dumps(plan))
    name = f"{GRID}_set-primary_thresh-5p1_peaks.tsv"
    pd.DataFrame({"cluster": [1, 2], "sign": [1, 1], "x": [inside[0], 42.0],
                  "y": [inside[1], -62.0], "z": [inside[2], 32.0], "value": [0.5, 0.5]}
                 ).to_csv(out / name, sep="\t", index=False)
    ctx = make_context(out)
    f = next(x for x in ctx.index.files if x.name == name)
    table = next(b for b in peaks_table(f, user_atlas=ctx.user_atlas) if hasattr(b, "frame"))
    assert list(table.frame["plan_atlas"]) == ["left thalamus (mine)", "-"]
    assert "atlas.nii.gz" in table.caption


def test_a_peak_in_a_region_marks_every_tied_plateau(tmp_path):
    """The plan's peak-in-a-region table lists one row per tied plateau: the zoomed
    figure marks the others beside the first and the caption gives their coordinates."""
    import pandas as pd

    from bids_cnm.reports.sections.validation import peak_region_blocks

    data = np.zeros(SHAPE)
    plateaus = [(-10.0, -18.0, 8.0), (14.0, -18.0, 8.0)]
    for centre in plateaus:
        i, j, k = _ijk(centre)
        data[i, j, k] = 1.0
    out = tmp_path / "derivatives"
    ents = f"{GRID}_set-primary_thresh-5p1"
    _write_map(out / "network", f"{ents}_desc-overlap_boldmap", data, {"NumberOfStudies": 4})
    (out / "validation").mkdir()
    pd.DataFrame({"analysis": "Thalamus", "map": "overlap", "plateau": [1, 2],
                  "x": [p[0] for p in plateaus], "y": [p[1] for p in plateaus],
                  "z": [p[2] for p in plateaus], "value": 1.0, "n_voxels": 1,
                  "n_plateaus": 2}).to_csv(
        out / "validation" / f"{ents}_desc-peakThalamus_peaks.tsv", sep="\t", index=False)
    ctx = make_context(out)
    files = [f for f in ctx.index.files if f.get("desc") == "peakThalamus"]
    figs = [b for b in peak_region_blocks(ctx, "Thalamus", files) if hasattr(b, "job")]
    assert len(figs) == 1
    assert figs[0].job.keywords["ties"] == [list(plateaus[1])]
    assert "tied on 2 plateaus" in figs[0].caption
    assert "(14, -18, 8) mm" in figs[0].caption
    png = figs[0].job()
    # the tied plateau's marker in the coronal and the axial view
    assert _marker_blobs(png, figures.PLATEAU_COLOR) >= 2


def test_zoomed_views_are_equal_squares_inside_the_figure(tmp_path):
    """The peak's zoomed slices: three views of the same +-28 mm window, drawn as equal
    squares that the figure holds whole (the sagittal view used to be sized for the whole
    brain's extent, taller than the figure, and lost its top and bottom)."""
    data = np.zeros(SHAPE, np.float32)
    data[_ijk((12.0, -18.0, 8.0))] = 1.0
    path = tmp_path / "map.nii.gz"
    nb.Nifti1Image(data, AFFINE).to_filename(path)
    fig = figures.zoomed_figure(str(path), [12.0, -18.0, 8.0], [("VPL", [15.0, -20.0, 6.0])],
                                vmax=1.0, threshold=0.1, cbar_label="overlap")
    fig.canvas.draw()  # nilearn places its views when the figure is drawn
    views = [ax for ax in fig.axes  # the views show the window: 56 mm wide and high
             if np.allclose([np.diff(ax.get_xlim()), np.diff(ax.get_ylim())], 56)]
    assert len(views) == 3
    page = fig.bbox
    boxes = [ax.get_window_extent() for ax in views]
    for box in boxes:
        assert page.x0 - 0.5 <= box.x0 and box.x1 <= page.x1 + 0.5
        assert page.y0 - 0.5 <= box.y0 and box.y1 <= page.y1 + 0.5
        assert abs(box.width - box.height) < 1.0  # pixels
    assert max(b.width for b in boxes) - min(b.width for b in boxes) < 1.0
    assert all(a.x1 <= b.x0 + 0.5 for a, b in itertools.pairwise(boxes))  # side by side


def test_zoomed_views_fill_only_the_points_near_their_slice(tmp_path):
    """A tied plateau on the sagittal slice through the peak but 24 mm in front of the
    coronal one and 12 mm above the axial one: filled in the sagittal view, hollow in the other
    two (nilearn drew every point filled in every view); a reference point within 6 mm of
    all three slices is filled in all three."""
    from matplotlib.collections import PathCollection

    data = np.zeros(SHAPE, np.float32)
    data[_ijk((12.0, -18.0, 8.0))] = 1.0
    path = tmp_path / "map.nii.gz"
    nb.Nifti1Image(data, AFFINE).to_filename(path)
    tie, ref = (12.0, 6.0, 20.0), (15.0, -20.0, 6.0)
    fig = figures.zoomed_figure(str(path), [12.0, -18.0, 8.0], [("VPL", list(ref))],
                                vmax=1.0, threshold=0.1, ties=[list(tie)])
    fig.canvas.draw()
    views = sorted((ax for ax in fig.axes
                    if np.allclose([np.diff(ax.get_xlim()), np.diff(ax.get_ylim())], 56)),
                   key=lambda ax: ax.get_position().x0)  # sagittal, coronal, axial

    def drawn(ax) -> dict[tuple[float, float], bool]:
        """Every scattered point of the view: filled or hollow."""
        return {tuple(np.round(xy, 3)): len(c.get_facecolor()) > 0
                for c in ax.collections if isinstance(c, PathCollection)
                for xy in c.get_offsets()}

    for ax, (h, v), filled in zip(views, [(1, 2), (0, 2), (0, 1)], [True, False, False]):
        points = drawn(ax)
        assert points[(tie[h], tie[v])] is filled
        assert points[(ref[h], ref[v])] is True
        # the tie's number (2) and the reference's label only where they are filled
        labels = {t.get_text() for t in ax.texts}
        assert ("2" in labels) is filled and "VPL" in labels
        # and the view still shows its +-28 mm window around the peak
        assert np.allclose([np.diff(ax.get_xlim()), np.diff(ax.get_ylim())], 56)


def test_signed_projection_keeps_the_largest_magnitude_with_its_sign():
    data = np.zeros((2, 3, 1))
    data[0, :, 0] = [1.0, -4.0, 2.0]  # the negative wins
    data[1, :, 0] = [3.0, -3.0, 0.5]  # a tie: the positive one
    assert figures._signed_mip(data, 1)[:, 0].tolist() == [-4.0, 3.0]


def _colour_pixels(png: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of red, blue and green pixels of a PNG (rows from the top)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > g + 60) & (r > b + 60)
    blue = (b > r + 60) & (b > g + 20)
    green = (g > r + 50) & (g > b + 50)
    return red, blue, green


def test_glass_grid_draws_every_view_of_every_map(tmp_path):
    """Two maps side by side: the first's positive and negative blobs are drawn (red and
    blue) in its cell, the second (below the threshold) draws no colour; each panel's
    coordinate inside the mask's box gets a green dot in each of its three views, one
    outside the box none."""
    from scipy import ndimage

    mask = np.zeros(SHAPE)
    mask[8:38, 8:47, 8:38] = 1
    first = np.zeros(SHAPE)
    i, j, k = _ijk((-30.0, -20.0, 10.0))
    first[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 8.0
    i, j, k = _ijk((30.0, 20.0, 30.0))
    first[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = -8.0
    second = np.full(SHAPE, 3.0) * mask
    folder = tmp_path / "maps"
    paths = [_write_map(folder, name, data, {})
             for name, data in (("mask", mask), ("first", first), ("second", second))]
    panels = [figures.Panel("first", paths[1], np.array([[0.0, -40.0, 20.0]])),
              figures.Panel("second", paths[2], np.array([[10.0, 10.0, 10.0],
                                                          [300.0, 300.0, 300.0]]))]
    png = figures.glass_grid(panels, paths[0], threshold=5.0, ncols=2)
    red, blue, green = _colour_pixels(png)
    maps = slice(0, red.shape[0] - 80)  # above the colour bar
    half = red.shape[1] // 2
    assert red[maps, :half].sum() > 20 and blue[maps, :half].sum() > 20
    assert red[maps, half:].sum() == 0 and blue[maps, half:].sum() == 0
    for cell in (slice(0, half), slice(half, None)):
        _, n_dots = ndimage.label(green[maps, cell])
        assert n_dots == 3, n_dots


def _png_size_and_ink(png: bytes) -> tuple[tuple[int, int], int]:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    dark = (np.asarray(image.convert("L")) < 128).sum()
    return image.size, int(dark)


def test_tight_png_is_cropped_to_the_content_and_keeps_what_overflows():
    """``tight`` crops a 4 x 3 inch figure to its text (plus 0.1 inch); text reaching
    beyond the figure's left edge is kept whole (the figure grows), not cut off."""
    fig = figures.new_figure(4.0, 3.0)
    fig.text(0.5, 0.5, "middle", ha="center", va="center", fontsize=20)
    (width, height), ink = _png_size_and_ink(figures.to_png(fig, dpi=90, tight=True))
    assert 40 < width < 200 and 20 < height < 80 and ink > 50
    whole = figures.new_figure(4.0, 3.0)
    whole.text(0.5, 0.5, "middle", ha="center", va="center", fontsize=20)
    (full_w, full_h), full_ink = _png_size_and_ink(figures.to_png(whole, dpi=90))
    assert (full_w, full_h) == (360, 270) and abs(full_ink - ink) <= 0.05 * full_ink
    over = figures.new_figure(4.0, 3.0)
    over.text(-0.3, 0.5, "a long label reaching out", ha="left", va="center", fontsize=12)
    over.text(0.9, 0.5, "x", fontsize=12)
    (width, _), _ = _png_size_and_ink(figures.to_png(over, dpi=90, tight=True))
    # from the label's start, 0.3 inch left of the figure, to the x: wider than the figure
    assert width > 360 + 0.2 * 90, width
