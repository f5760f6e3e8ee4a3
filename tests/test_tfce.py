"""Tests for bids_cnm.stats.tfce.

The union-find sweep is checked against an independent, deliberately naive
reference that labels connected components with scipy.ndimage.label at
every threshold, and against nilearn's TFCE.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import ndimage

from bids_cnm.stats.tfce import neighbour_table, tfce, tfce_masked, tfce_thresholds

_STRUCT_RANK = {6: 1, 18: 2, 26: 3}


# --------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------
def reference_grid(stat, mask, dh, two_sided):
    """Threshold grid as documented: linspace(0, max, 101)[1:] or k*dh."""
    vals = np.where(mask & np.isfinite(stat), stat, 0.0)
    amax = np.abs(vals).max() if two_sided else vals.max()
    if amax <= 0:
        return np.empty(0), 0.0
    if dh is None:
        return np.linspace(0.0, amax, 101)[1:], amax / 100
    return dh * np.arange(1, int(np.floor(amax / dh)) + 1), dh


def reference_tfce(stat, mask=None, h=2.0, e=0.5, dh=None, connectivity=6,
                   two_sided=True, multiply_by_dh=True):
    """Straightforward TFCE: connected-component labelling at every step."""
    if mask is None:
        mask = np.ones(stat.shape, bool)
    structure = ndimage.generate_binary_structure(3, _STRUCT_RANK[connectivity])
    thresholds, step = reference_grid(stat, mask, dh, two_sided)
    vals = np.where(mask & np.isfinite(stat), stat, 0.0)
    out = np.zeros(stat.shape)
    for sign in ((1.0, -1.0) if two_sided else (1.0,)):
        signed = sign * vals
        for thr in thresholds:
            labels, _ = ndimage.label(signed >= thr, structure)
            sizes = np.bincount(labels.ravel()).astype(float)
            contrib = sizes[labels] ** e * thr ** h * (step if multiply_by_dh else 1.0)
            out += sign * np.where(labels > 0, contrib, 0.0)
    return out


def smooth_field(rng, shape, sigma=1.5, scale=2.5):
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return scale * x / x.std()


@pytest.fixture(scope="module")
def field_and_mask():
    rng = np.random.default_rng(42)
    shape = (16, 17, 18)
    stat = smooth_field(rng, shape)
    # Irregular mask with holes, so clusters can only connect through it.
    mask = ndimage.binary_erosion(np.ones(shape, bool), iterations=1)
    mask &= rng.random(shape) > 0.15
    return stat, mask


# --------------------------------------------------------------------------
# Agreement with the reference
# --------------------------------------------------------------------------
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("dh", [None, 0.1, 0.37])
def test_matches_reference(field_and_mask, connectivity, two_sided, dh):
    stat, mask = field_and_mask
    got = tfce(stat, mask, dh=dh, connectivity=connectivity, two_sided=two_sided)
    ref = reference_tfce(stat, mask, dh=dh, connectivity=connectivity, two_sided=two_sided)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
    assert np.all(got[~mask] == 0)
    if not two_sided:
        assert np.all(got[stat <= 0] == 0)


@pytest.mark.parametrize("h,e", [(2.0, 0.5), (1.0, 1.0), (0.5, 2.0 / 3.0), (3.0, 0.0)])
@pytest.mark.parametrize("multiply_by_dh", [True, False])
def test_matches_reference_other_exponents(field_and_mask, h, e, multiply_by_dh):
    stat, mask = field_and_mask
    got = tfce(stat, mask, h=h, e=e, multiply_by_dh=multiply_by_dh)
    ref = reference_tfce(stat, mask, h=h, e=e, multiply_by_dh=multiply_by_dh)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_matches_reference_many_small_clusters():
    # White noise: many tiny clusters and many merges per step.
    rng = np.random.default_rng(7)
    stat = rng.standard_normal((12, 13, 14))
    for conn in (6, 26):
        got = tfce(stat, connectivity=conn)
        ref = reference_tfce(stat, connectivity=conn)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_thresholds_documented_grid(field_and_mask):
    stat, mask = field_and_mask
    amax = np.abs(stat).max()
    np.testing.assert_array_equal(tfce_thresholds(stat), np.linspace(0, amax, 101)[1:])
    np.testing.assert_array_equal(
        tfce_thresholds(stat, dh=0.1), 0.1 * np.arange(1, int(np.floor(amax / 0.1)) + 1)
    )
    np.testing.assert_array_equal(
        tfce_thresholds(stat, two_sided=False), np.linspace(0, stat.max(), 101)[1:]
    )
    assert tfce_thresholds(-np.abs(stat), two_sided=False).size == 0


# --------------------------------------------------------------------------
# Analytic cases and invariants
# --------------------------------------------------------------------------
def test_single_voxel_and_plateau_analytic():
    stat = np.zeros((5, 5, 5))
    stat[2, 2, 2] = 1.0
    # Isolated voxel, thresholds 0.25, 0.5, 0.75, 1.0 (all exact in binary).
    expected = sum((0.25 * k) ** 2 * 0.25 for k in range(1, 5))
    assert tfce(stat, dh=0.25)[2, 2, 2] == pytest.approx(expected, rel=1e-14)
    # Plateau of 8 voxels at 1.0: every step sees a cluster of 8.
    stat[1:3, 1:3, 1:3] = 1.0
    out = tfce(stat, dh=0.25)
    assert np.allclose(out[1:3, 1:3, 1:3], 8**0.5 * expected, rtol=1e-14)
    assert np.count_nonzero(out) == 8


def test_two_sided_antisymmetric_and_signs(field_and_mask):
    stat, mask = field_and_mask
    pos = tfce(stat, mask)
    neg = tfce(-stat, mask)
    np.testing.assert_allclose(neg, -pos, rtol=1e-12, atol=0)
    assert np.all(np.sign(pos[mask & (pos != 0)]) == np.sign(stat[mask & (pos != 0)]))


def test_opposite_signs_never_merge():
    stat = np.zeros((3, 3, 6))
    stat[1, 1, :3] = 2.0
    stat[1, 1, 3:] = -2.0
    out = tfce(stat, dh=1.0)
    # Each half is its own 3-voxel cluster: 3**0.5 * (1 + 4).
    np.testing.assert_allclose(out[1, 1, :3], 5 * np.sqrt(3))
    np.testing.assert_allclose(out[1, 1, 3:], -5 * np.sqrt(3))


def test_mask_none_equivalent_and_mask_blocks_bridges():
    rng = np.random.default_rng(3)
    stat = smooth_field(rng, (10, 10, 10))
    np.testing.assert_allclose(tfce(stat), tfce(stat, np.ones(stat.shape, bool)), rtol=1e-12)
    # Two blobs joined by a bridge; masking the bridge splits them.
    stat = np.zeros((3, 3, 7))
    stat[1, 1, :] = 1.0
    mask = np.ones(stat.shape, bool)
    mask[1, 1, 3] = False
    out = tfce(stat, mask, dh=0.5)
    np.testing.assert_allclose(out[1, 1, :3], 3**0.5 * (0.25 + 1.0) * 0.5)
    assert out[1, 1, 3] == 0
    np.testing.assert_allclose(tfce(stat, dh=0.5)[1, 1, :], 7**0.5 * 1.25 * 0.5)


def test_degenerate_inputs():
    z = np.zeros((4, 4, 4))
    assert np.all(tfce(z) == 0)
    assert np.all(tfce(-np.ones((4, 4, 4)), two_sided=False) == 0)
    stat = np.ones((4, 4, 4))
    stat[0, 0, 0] = np.nan
    stat[3, 3, 3] = np.inf
    stat[0, 3, 0] = -np.inf
    out = tfce(stat, dh=0.5)
    assert np.all(np.isfinite(out))
    assert out[0, 0, 0] == 0 and out[3, 3, 3] == 0 and out[0, 3, 0] == 0
    clean = np.where(np.isfinite(stat), stat, 0.0)
    np.testing.assert_allclose(out, reference_tfce(clean, dh=0.5), rtol=1e-12)
    np.testing.assert_allclose(tfce(stat), reference_tfce(clean), rtol=1e-12)
    assert np.all(tfce(z, np.zeros(z.shape, bool)) == 0)


def test_many_steps_cost_independent():
    # A tiny step would mean thousands of labellings for the naive method.
    stat = np.zeros((4, 4, 4))
    stat[1:3, 1:3, 1:3] = 3.0
    out = tfce(stat, dh=1e-4)
    thr = 1e-4 * np.arange(1, int(np.floor(3.0 / 1e-4)) + 1)
    np.testing.assert_allclose(out[1, 1, 1], 8**0.5 * np.sum(thr**2) * 1e-4, rtol=1e-12)
    # Riemann sum -> integral 8**0.5 * 3**3 / 3.
    assert out[1, 1, 1] == pytest.approx(8**0.5 * 9.0, rel=1e-3)


@pytest.mark.parametrize("bad", [
    dict(h=-1.0), dict(e=np.nan), dict(dh=0.0), dict(dh=-0.1), dict(connectivity=4),
])
def test_invalid_parameters(bad):
    with pytest.raises(ValueError):
        tfce(np.ones((3, 3, 3)), **bad)


def test_invalid_shapes():
    with pytest.raises(ValueError):
        tfce(np.ones((3, 3)))
    with pytest.raises(ValueError):
        tfce(np.ones((3, 3, 3)), np.ones((3, 3, 2), bool))
    with pytest.raises(ValueError):
        tfce_masked(np.ones((2, 5)), np.zeros((4, 6), np.int32))


# --------------------------------------------------------------------------
# Masked / batched entry point
# --------------------------------------------------------------------------
def test_neighbour_table_bruteforce():
    rng = np.random.default_rng(0)
    mask = rng.random((5, 6, 7)) > 0.3
    coords = np.argwhere(mask)  # C order == mask-index order
    index = {tuple(c): i for i, c in enumerate(coords)}
    for conn in (6, 18, 26):
        table = neighbour_table(mask, conn)
        assert table.shape == (len(coords), conn)
        for i, c in enumerate(coords):
            expected = set()
            for d in np.ndindex(3, 3, 3):
                off = np.array(d) - 1
                sq = int((off**2).sum())
                if 0 < sq <= _STRUCT_RANK[conn]:
                    j = index.get(tuple(c + off))
                    if j is not None:
                        expected.add(j)
            got = set(table[i][table[i] >= 0].tolist())
            assert got == expected


def test_batch_equals_single_and_thread_count_independent(field_and_mask):
    stat, mask = field_and_mask
    rng = np.random.default_rng(5)
    maps = np.stack([smooth_field(rng, stat.shape)[mask] for _ in range(9)])
    nbr = neighbour_table(mask, 6)
    batch = tfce_masked(maps, nbr)
    for i in range(len(maps)):
        full = np.zeros(stat.shape)
        full[mask] = maps[i]
        np.testing.assert_array_equal(batch[i], tfce(full, mask)[mask])
    n_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(tfce_masked(maps, nbr), batch)
    finally:
        numba.set_num_threads(n_threads)


# --------------------------------------------------------------------------
# nilearn
# --------------------------------------------------------------------------
def _nilearn_tfce():
    utils = pytest.importorskip("nilearn.mass_univariate._utils")
    if not hasattr(utils, "calculate_tfce"):
        pytest.skip("nilearn private calculate_tfce not available")
    return utils.calculate_tfce


@pytest.mark.parametrize("two_sided", [True, False])
def test_nilearn_auto_grid(field_and_mask, two_sided):
    """nilearn 'auto' = same 100-step grid, without the dh factor."""
    calculate_tfce = _nilearn_tfce()
    stat, mask = field_and_mask
    vals = np.where(mask, stat, 0.0)  # nilearn sees the unmasked grid with zeros
    struct = ndimage.generate_binary_structure(3, 1)
    nl = calculate_tfce(vals[..., None], struct, E=0.5, H=2, dh="auto",
                        two_sided_test=two_sided)[..., 0]
    ours_nl = tfce(vals, mask, two_sided=two_sided, multiply_by_dh=False)
    np.testing.assert_allclose(ours_nl, nl, rtol=1e-10, atol=1e-10 * np.abs(nl).max())
    dh = (np.abs(vals).max() if two_sided else vals.max()) / 100
    np.testing.assert_allclose(tfce(vals, mask, two_sided=two_sided), dh * nl,
                               rtol=1e-10, atol=1e-10 * dh * np.abs(nl).max())


def test_nilearn_explicit_dh():
    """With an explicit step nilearn uses linspace(0, max, round(max/dh)+1)[1:];
    this equals our k*dh grid when max is a multiple of dh (exact in binary)."""
    calculate_tfce = _nilearn_tfce()
    rng = np.random.default_rng(11)
    stat = smooth_field(rng, (10, 11, 12))
    stat *= 4.0 / np.abs(stat).max()  # max|stat| == 4.0 exactly, dh = 0.25
    struct = ndimage.generate_binary_structure(3, 1)
    nl = calculate_tfce(stat[..., None], struct, dh=0.25, two_sided_test=True)[..., 0]
    np.testing.assert_allclose(tfce(stat, dh=0.25, multiply_by_dh=False), nl, rtol=1e-10)
    np.testing.assert_allclose(tfce(stat, dh=0.25), 0.25 * nl, rtol=1e-10)


def test_cached_njit_falls_back_without_cache_location():
    """Functions without a source file cannot be cached (like a read-only
    install without NUMBA_CACHE_DIR): the decorator must still compile."""
    from numba import njit

    from bids_cnm.stats.tfce import cached_njit

    namespace: dict = {}
    exec("def plus_one(x):\n    return x + 1\n", namespace)
    with pytest.raises(RuntimeError):
        njit(cache=True)(namespace["plus_one"])
    assert cached_njit()(namespace["plus_one"])(1) == 2
