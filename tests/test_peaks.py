"""Tests of bids_cnm.stats.peaks.

Cluster-forming ties at exactly half the maximum: overlap maps hold values k/n stored as
float32; a voxel at exactly half the maximum must be inside a cluster
(``|value| >= fraction * max``).  Expected clusters come from a direct scipy.ndimage
labelling (faces connectivity, nilearn's) of the thresholded array.

The table itself must be nilearn's: the reference is ``get_clusters_table`` called on the
same map at the same threshold, its rows converted to our columns.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_cnm.stats.peaks import PEAK_COLUMNS, find_peaks

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _overlap_map(dtype) -> np.ndarray:
    """A float map of k/21 values: a peak of 18/21, a shell at 9/21 (half), then 8/21."""
    data = np.zeros((20, 20, 20))
    ii, jj, kk = np.indices(data.shape)
    r = np.sqrt((ii - 6) ** 2 + (jj - 10) ** 2 + (kk - 10) ** 2)
    data[r <= 4] = 8 / 21
    data[r <= 3] = 9 / 21  # exactly half the maximum
    data[r <= 1] = 18 / 21
    r2 = np.sqrt((ii - 15) ** 2 + (jj - 10) ** 2 + (kk - 10) ** 2)
    data[r2 <= 2] = -9 / 21  # a negative cluster at exactly -half the maximum
    return data.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_voxels_at_exactly_half_the_maximum_are_kept(dtype):
    data = _overlap_map(dtype)
    half = data.dtype.type(0.5) * np.abs(data).max()
    expected = {}
    for sign in (1, -1):
        labels, n = ndimage.label(sign * data >= half)  # faces connectivity
        expected[sign] = sorted(int((labels == k).sum()) for k in range(1, n + 1))
    assert expected[1] == [int((np.abs(data - 9 / 21) < 1e-6).sum()
                               + (np.abs(data - 18 / 21) < 1e-6).sum())]
    table = find_peaks(nib.Nifti1Image(data, AFFINE), fraction=0.5)
    voxel_mm3 = 8.0
    for sign in (1, -1):
        rows = table[table["sign"] == sign]
        sizes = sorted(int(round(v / voxel_mm3))
                       for v in rows.groupby("cluster")["cluster_size_mm3"].first())
        assert sizes == expected[sign]
    top = table.iloc[0]
    assert top["value"] == pytest.approx(18 / 21, rel=1e-6)
    assert table.loc[table["sign"] == -1, "value"].iloc[0] == pytest.approx(-9 / 21, rel=1e-6)


def test_integer_count_maps_and_empty_maps():
    counts = np.zeros((10, 10, 10), np.int16)
    counts[2:5, 2:5, 2:5] = 2
    counts[3, 3, 3] = 4
    table = find_peaks(nib.Nifti1Image(counts, AFFINE))
    assert table["cluster_size_mm3"].iloc[0] == pytest.approx(27 * 8.0)
    assert find_peaks(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), AFFINE)).empty


# ---------------------------------------------------------------------------------------
# the table is nilearn's get_clusters_table


def nilearn_table(img, fraction=0.5, min_distance=8.0, min_cluster_voxels=1) -> pd.DataFrame:
    """The reference: nilearn's table of the map, in find_peaks's columns and order.

    Voxels at or above ``fraction * max|value|`` (in the map's dtype) form clusters;
    nilearn keeps values strictly above its threshold, so it gets the next smaller
    number of that dtype.
    """
    import warnings

    from nilearn.reporting import get_clusters_table

    data = np.asarray(img.dataobj)
    if data.dtype.kind != "f":
        data = data.astype(np.float64)
    cut = data.dtype.type(fraction) * np.abs(data).max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = get_clusters_table(
            nib.Nifti1Image(data, img.affine),
            stat_threshold=float(np.nextafter(cut, data.dtype.type(0))),
            cluster_threshold=min_cluster_voxels, two_sided=True, min_distance=min_distance,
        )
    size = table["Cluster Size (mm3)"].replace("", np.nan).ffill()
    out = pd.DataFrame({
        "cluster": table["Cluster ID"].astype(str),
        "sign": np.sign(table["Peak Stat"].astype(float)).astype(int),
        "x": table["X"].astype(float), "y": table["Y"].astype(float),
        "z": table["Z"].astype(float), "value": table["Peak Stat"].astype(float),
        "cluster_size_mm3": size.astype("int64"),
    })
    order = np.argsort(-np.abs(out["value"].to_numpy()), kind="stable")
    return out.iloc[order].reset_index(drop=True)


def assert_same_table(img, **kwargs):
    expected = nilearn_table(img, **kwargs)
    table = find_peaks(img, **kwargs)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    return table


def smooth_map(shape, seed, sigma=1.5, dtype=np.float32) -> np.ndarray:
    """A random smooth map of both signs (noise convolved with a Gaussian), t-like."""
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (data / data.std() * 3).astype(dtype)


def overlap_map(shape, seed, n=7, dtype=np.float32) -> np.ndarray:
    """A signed overlap k/n of n random binary networks: large tied plateaus."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(shape)
    for _ in range(n):
        t = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        t /= t.std()
        counts += (t > 1.0).astype(float) - (t < -1.2)
    return (counts / n).astype(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_smooth_maps_give_nilearns_table(seed, fraction):
    # 2 mm isotropic grid, clusters touching the grid's faces included
    img = nib.Nifti1Image(smooth_map((30, 34, 28), seed), AFFINE)
    table = assert_same_table(img, fraction=fraction)
    assert set(table["sign"]) == {1, -1}


@pytest.mark.parametrize("seed", range(4))
def test_overlap_maps_with_plateaus_give_nilearns_table(seed):
    data = overlap_map((32, 36, 30), seed)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    table = assert_same_table(img, fraction=0.2)
    # many clusters share one peak value: their order is nilearn's too
    assert table["value"].duplicated().any()
    assert_same_table(img, fraction=1e-6, min_distance=6.0)


def test_min_cluster_voxels_and_anisotropic_oblique_grid():
    affine = np.array([[2.5, 0.3, 0.0, -41.3], [-0.2, 3.1, 0.4, 17.7],
                       [0.1, 0.0, 2.9, -7.1], [0, 0, 0, 1]])
    img = nib.Nifti1Image(smooth_map((26, 22, 24), 11, sigma=1.0), affine)
    full = assert_same_table(img, fraction=0.4)
    pruned = assert_same_table(img, fraction=0.4, min_cluster_voxels=5)
    assert len(pruned) < len(full)


def test_single_voxel_ring_integer_and_empty_maps():
    data = np.zeros((16, 16, 12), np.float32)
    data[3, 3, 3] = 5.0  # a one-voxel cluster
    ii, jj = np.indices((16, 16))
    ring = (np.hypot(ii - 9, jj - 9) <= 4) & (np.hypot(ii - 9, jj - 9) >= 2.5)
    data[..., 7][ring] = -4.0  # a binary ring: its centre of mass is outside it
    data[0, 15, 11] = 3.0  # in the grid's corner
    # a one-valued cluster with inner voxels, not symmetric: its peak is the centre of
    # the whole cluster (the inner-plateau rule does not apply), not of its surface
    data[8:13, 1:6, 1:5] = 4.5
    data[8:10, 6:9, 1:5] = 4.5
    table = assert_same_table(nib.Nifti1Image(data, AFFINE))
    assert (table["cluster_size_mm3"].iloc[0], table["value"].iloc[0]) == (8, 5.0)
    counts = np.round(overlap_map((20, 20, 20), 3) * 7).astype(np.int16)
    assert_same_table(nib.Nifti1Image(counts, AFFINE), fraction=0.3)
    one_volume = nib.Nifti1Image(data[..., None], AFFINE)
    pd.testing.assert_frame_equal(find_peaks(one_volume), nilearn_table(one_volume),
                                  check_exact=True)
    with pytest.raises(ValueError, match="3-D"):
        find_peaks(nib.Nifti1Image(np.stack([data, data], axis=-1), AFFINE))
    empty = find_peaks(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), AFFINE))
    assert empty.empty and list(empty.columns) == PEAK_COLUMNS
