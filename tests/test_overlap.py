"""Tests of bids_cnm.stats.overlap: the overlap maps count binarize()'s signs exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bids_cnm.stats.overlap import binarize, overlap_maps


def _by_definition(t: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The overlap maps from binarize's signs, as the module's description defines them."""
    signs = binarize(t, threshold)
    n = signs.shape[1]
    n_pos, n_neg = (signs > 0).sum(axis=1), (signs < 0).sum(axis=1)
    return {"overlap": ((n_pos - n_neg) / n).astype(np.float32),
            "posoverlap": (n_pos / n).astype(np.float32),
            "negoverlap": (n_neg / n).astype(np.float32)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threshold", [5.1, 4.7, 3.0, 0.0])
def test_counts_match_binarize_at_the_threshold_edges(dtype, threshold):
    rng = np.random.default_rng(11)
    t = (rng.standard_normal((400, 9)) * 5).astype(dtype)
    # values at the threshold and one representable step either side, both signs (in
    # float32, 5.1 and 4.7 are not representable: their neighbours straddle them)
    edge = np.asarray(threshold, dtype=dtype)
    near = [np.nextafter(edge, -np.inf), edge, np.nextafter(edge, np.inf)]
    t[:3, 0], t[3:6, 0] = near, [-v for v in near]
    t[6, :] = np.nan  # t undefined: not surviving
    t[7, 2] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN compares without an invalid-value warning
        maps = overlap_maps(t, threshold)
    expected = _by_definition(t, threshold)
    for name in ("overlap", "posoverlap", "negoverlap"):
        assert maps[name].dtype == np.float32
        np.testing.assert_array_equal(maps[name], expected[name], err_msg=name)
    assert maps["overlap"][6] == 0 and maps["posoverlap"][7] >= 1 / 9


def test_float32_values_just_above_a_rounded_up_threshold():
    """float32(0.1) > 0.1: a float32 comparison would drop it, binarize keeps it."""
    t = np.full((1, 2), np.float32(0.1), dtype=np.float32)
    assert float(t[0, 0]) > 0.1
    assert overlap_maps(t, 0.1)["posoverlap"][0] == 1.0


def test_refuses_a_negative_threshold_and_no_studies():
    with pytest.raises(ValueError, match="non-negative"):
        overlap_maps(np.zeros((3, 2)), -1.0)
    with pytest.raises(ValueError, match="at least one study"):
        overlap_maps(np.zeros((3, 0)), 5.1)
