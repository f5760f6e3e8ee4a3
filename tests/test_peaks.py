"""Tests of bids_cnm.stats.peaks: cluster-forming ties at exactly half the maximum.

Overlap maps hold values k/n stored as float32; a voxel at exactly half the maximum must be
inside a cluster (``|value| >= fraction * max``).  Expected clusters come from a direct
scipy.ndimage labelling of the thresholded array.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_cnm.stats.peaks import find_peaks

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
        labels, n = ndimage.label(sign * data >= half, structure=np.ones((3, 3, 3)))
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
