"""Tests for bids_cnm.stats.permutation."""

from __future__ import annotations

import gc
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage, stats

from bids_cnm.stats.permutation import (
    TIE_RTOL,
    PermutationResult,
    fdr_bh,
    liebermeister_test,
    pooled_t,
    two_sample_permutation_test,
)
from bids_cnm.stats.tfce import tfce

SHAPE = (12, 12, 12)


def make_mask(shape=SHAPE):
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return mask


def smooth_maps(rng, n, mask, sigma=1.5):
    """n smooth Gaussian random fields (unit variance), masked."""
    noise = rng.standard_normal((n,) + mask.shape)
    f = ndimage.gaussian_filter(noise, (0, sigma, sigma, sigma))[:, mask]
    return f / f.std()


def blob(mask, centre, radius):
    grid = np.indices(mask.shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius**2


# --------------------------------------------------------------------------
# t statistic
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_a,n_b", [(8, 8), (3, 20), (1, 5), (21, 129)])
def test_pooled_t_matches_scipy(n_a, n_b):
    rng = np.random.default_rng(n_a * 100 + n_b)
    a = rng.normal(5.0, 1.0, (n_a, 300)) + 1e3  # offset tests the centring
    b = rng.normal(5.2, 1.5, (n_b, 300)) + 1e3
    expected = stats.ttest_ind(a, b, equal_var=True).statistic
    np.testing.assert_allclose(pooled_t(a, b), expected, rtol=1e-9, atol=1e-12)


def test_t_of_permutation_test_matches_scipy():
    rng = np.random.default_rng(0)
    mask = make_mask()
    a, b = smooth_maps(rng, 7, mask), smooth_maps(rng, 9, mask)
    res = two_sample_permutation_test(a, b, mask, n_permutations=10)
    np.testing.assert_allclose(res.t, stats.ttest_ind(a, b).statistic, rtol=1e-10, atol=1e-12)
    full = np.zeros(mask.shape)
    full[mask] = res.t
    np.testing.assert_allclose(res.tfce, tfce(full, mask)[mask], rtol=1e-12, atol=0)


def test_constant_voxels_get_zero_t():
    a = np.ones((4, 3))
    b = np.ones((5, 3))
    a[:, 1] = [1, 2, 3, 4]
    t = pooled_t(a, b)
    assert t[0] == 0 and t[2] == 0 and np.isfinite(t).all()


# --------------------------------------------------------------------------
# Same permutations: straightforward loop
# --------------------------------------------------------------------------
def loop_reference(a, b, mask, n_perm, seed, use_tfce, two_sided, tfce_kwargs=None):
    """Documented draw protocol: permutation i puts maps
    rng.permutation(n)[:n_a] in group a, rng = default_rng(seed)."""
    data = np.vstack([a, b])
    n, n_a = len(data), len(a)
    kw = tfce_kwargs or {}

    def statistic(idx_a):
        in_a = np.zeros(n, bool)
        in_a[idx_a] = True
        t = stats.ttest_ind(data[in_a], data[~in_a]).statistic
        if not use_tfce:
            return t, t
        full = np.zeros(mask.shape)
        full[mask] = t
        return t, tfce(full, mask, two_sided=two_sided, **kw)[mask]

    cmp = np.abs if two_sided else (lambda x: x)
    t_obs, s_obs = statistic(np.arange(n_a))
    s_thr = cmp(s_obs) - TIE_RTOL * np.abs(s_obs)
    t_thr = cmp(t_obs) - TIE_RTOL * np.abs(t_obs)
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(t_obs))
    null_max, null_max_t = [], []
    for _ in range(n_perm):
        t, s = statistic(rng.permutation(n)[:n_a])
        null_max.append(cmp(s).max())
        null_max_t.append(cmp(t).max())
        counts += cmp(s) >= s_thr
    null_max, null_max_t = np.array(null_max), np.array(null_max_t)
    p_unc = (counts + 1) / (n_perm + 1)
    p_fwe = np.array([(np.sum(null_max >= x) + 1) / (n_perm + 1) for x in s_thr])
    p_t_fwe = np.array([(np.sum(null_max_t >= x) + 1) / (n_perm + 1) for x in t_thr])
    return dict(null_max=null_max, null_max_t=null_max_t, p_uncorrected=p_unc,
                p_fwe=p_fwe, p_t_fwe=p_t_fwe, t=t_obs, stat=s_obs)


@pytest.mark.parametrize("use_tfce", [True, False])
@pytest.mark.parametrize("two_sided", [True, False])
def test_matches_loop_over_permutations(use_tfce, two_sided):
    rng = np.random.default_rng(1)
    mask = make_mask((9, 10, 11))
    a, b = smooth_maps(rng, 6, mask), smooth_maps(rng, 8, mask)
    a[:, blob(mask, (4, 5, 5), 2.5)[mask]] += 2.0
    kw = dict(dh=0.2) if use_tfce and not two_sided else None
    res = two_sample_permutation_test(a, b, mask, n_permutations=150, tfce=use_tfce,
                                      two_sided=two_sided, random_state=123, chunk=32,
                                      tfce_kwargs=kw)
    ref = loop_reference(a, b, mask, 150, 123, use_tfce, two_sided, kw)
    np.testing.assert_allclose(res.null_max, ref["null_max"], rtol=1e-9)
    np.testing.assert_allclose(res.null_max_t, ref["null_max_t"], rtol=1e-9)
    np.testing.assert_array_equal(res.p_fwe, ref["p_fwe"])
    np.testing.assert_array_equal(res.p_t_fwe, ref["p_t_fwe"])
    np.testing.assert_array_equal(res.p_uncorrected, ref["p_uncorrected"])
    np.testing.assert_allclose(res.p_fdr, stats.false_discovery_control(ref["p_uncorrected"]))
    assert (res.tfce is not None) == use_tfce
    assert res.n_permutations == 150 and res.two_sided == two_sided
    assert np.unique(res.p_fwe).size > 10  # the blob makes the comparison non-trivial


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------
def test_deterministic_and_chunk_independent():
    rng = np.random.default_rng(2)
    mask = make_mask((8, 9, 10))
    a, b = smooth_maps(rng, 5, mask), smooth_maps(rng, 7, mask)
    runs = [two_sample_permutation_test(a, b, mask, n_permutations=97, random_state=7, chunk=c)
            for c in (97, 10, 1, 500)]
    for other in runs[1:]:
        for field in ("t", "tfce", "p_uncorrected", "p_fwe", "p_fdr", "p_t_fwe",
                      "null_max", "null_max_t"):
            np.testing.assert_array_equal(getattr(other, field), getattr(runs[0], field))
    diff = two_sample_permutation_test(a, b, mask, n_permutations=97, random_state=8)
    assert not np.array_equal(diff.null_max, runs[0].null_max)


def test_progress_callback():
    rng = np.random.default_rng(3)
    mask = make_mask((6, 6, 6))
    a, b = smooth_maps(rng, 4, mask), smooth_maps(rng, 4, mask)
    calls = []
    two_sample_permutation_test(a, b, mask, n_permutations=25, chunk=10,
                                progress=lambda d, t: calls.append((d, t)))
    assert calls == [(10, 25), (20, 25), (25, 25)]


def test_validation_and_warnings():
    mask = make_mask((5, 5, 5))
    v = int(mask.sum())
    a, b = np.zeros((3, v)), np.ones((3, v))
    with pytest.raises(ValueError):
        two_sample_permutation_test(a, b[:, :-1], mask)
    with pytest.raises(ValueError):
        two_sample_permutation_test(a, b, np.ones((5, 5, 5), bool))
    with pytest.raises(ValueError):
        two_sample_permutation_test(a, b, mask, n_permutations=0)
    with pytest.raises(TypeError):
        two_sample_permutation_test(a, b, mask, tfce_kwargs={"H": 2})
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        two_sample_permutation_test(bad, b, mask)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, v)), rng.standard_normal((3, v))
    with pytest.warns(RuntimeWarning, match="distinct relabellings"):
        two_sample_permutation_test(a, b, mask, n_permutations=50)


# --------------------------------------------------------------------------
# Calibration and power
# --------------------------------------------------------------------------
def test_fwe_calibration_under_null():
    """Null data (exchangeable groups): P(any voxel p_fwe < 0.05) <= 5%.

    With p = (1 + count) / 201, p < 0.05 means count <= 9, so the exact
    rejection rate of the permutation test is 10/201 = 0.0498.
    """
    rng = np.random.default_rng(2024)
    mask = np.ones(SHAPE, bool)
    n_sim, n_perm = 200, 200
    hits_tfce = hits_t = 0
    for i in range(n_sim):
        maps = smooth_maps(rng, 16, mask)
        res = two_sample_permutation_test(maps[:8], maps[8:], mask, n_permutations=n_perm,
                                          random_state=i, chunk=200)
        hits_tfce += bool(np.any(res.p_fwe < 0.05))
        hits_t += bool(np.any(res.p_t_fwe < 0.05))
    for hits in (hits_tfce, hits_t):
        # Two-sided exact binomial test of the nominal rate at the 0.1% level
        # (200 draws: acceptance region ~ [2, 21] false positives).
        assert stats.binomtest(hits, n_sim, 10 / 201).pvalue > 1e-3, (hits_tfce, hits_t)


def test_planted_difference_is_found():
    rng = np.random.default_rng(9)
    mask = np.ones(SHAPE, bool)
    maps = smooth_maps(rng, 16, mask)
    effect = blob(mask, (6, 6, 6), 2.5)
    maps[:8, effect[mask]] += 2.5
    res = two_sample_permutation_test(maps[:8], maps[8:], mask, n_permutations=500)
    core = blob(mask, (6, 6, 6), 1.5)[mask]
    assert np.all(res.p_fwe[core] < 0.05)
    assert res.p_t_fwe.min() < 0.05  # max-t is less sensitive than TFCE
    assert np.all(res.t[core] > 0) and np.all(res.tfce[core] > 0)
    # TFCE support may leak a little beyond the blob; farther away only a
    # rare genuine FWE false positive is acceptable.
    far = ndimage.distance_transform_edt(~effect)[mask] > 3
    assert np.mean(res.p_fwe[far] < 0.05) <= 0.01
    assert np.all(res.p_fdr[core] < 0.05)
    # One-sided in the wrong direction: negative t gets TFCE 0 and p = 1.
    rev = two_sample_permutation_test(maps[8:], maps[:8], mask, n_permutations=200,
                                      two_sided=False)
    assert np.all(rev.tfce[core] == 0) and np.all(rev.p_fwe[core] == 1)
    assert np.all(rev.p_uncorrected[core] == 1) and np.all(rev.tfce >= 0)


# --------------------------------------------------------------------------
# nilearn permuted_ols
# --------------------------------------------------------------------------
def _nilearn_setup(shape, n_a, n_b, seed):
    nib = pytest.importorskip("nibabel")
    pytest.importorskip("nilearn.mass_univariate")
    from nilearn.maskers import NiftiMasker

    rng = np.random.default_rng(seed)
    mask = make_mask(shape)
    a, b = smooth_maps(rng, n_a, mask), smooth_maps(rng, n_b, mask)
    a[:, blob(mask, tuple(s // 2 for s in shape), 2.0)[mask]] += 0.9
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))).fit()
    labels = np.r_[np.ones(n_a), np.zeros(n_b)][:, None]
    return mask, a, b, masker, labels


def _within_mc_error(p_ours, p_theirs, n_ours, n_theirs):
    """|dp| < 4 * binomial SE of the difference + 1/n (the grid step)."""
    p = np.clip((p_ours + p_theirs) / 2, 0, 1)
    tol = 4 * np.sqrt(p * (1 - p) * (1 / n_ours + 1 / n_theirs)) + 1 / min(n_ours, n_theirs)
    return np.abs(p_ours - p_theirs) < tol


@pytest.mark.parametrize("two_sided", [True, False])
def test_against_nilearn_t_only(two_sided):
    from nilearn.mass_univariate import permuted_ols

    mask, a, b, masker, labels = _nilearn_setup((10, 10, 10), 8, 11, 5)
    n_perm = 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = permuted_ols(labels, np.vstack([a, b]), confounding_vars=None,
                           model_intercept=True, n_perm=n_perm, two_sided_test=two_sided,
                           random_state=0)
    res = two_sample_permutation_test(a, b, mask, n_permutations=n_perm, tfce=False,
                                      two_sided=two_sided, random_state=1)
    np.testing.assert_allclose(res.t, out["t"][0], rtol=1e-10, atol=1e-12)
    p_nl = 10 ** -out["logp_max_t"][0]
    assert np.all(_within_mc_error(res.p_fwe, p_nl, n_perm, n_perm))
    np.testing.assert_array_equal(res.p_fwe, res.p_t_fwe)
    # Same null of the max statistic (two-sample KS).
    assert stats.ks_2samp(res.null_max, out["h0_max_t"][0]).pvalue > 1e-3


def _check_against_nilearn_tfce(n_perm_nilearn):
    from nilearn.mass_univariate import permuted_ols

    mask, a, b, masker, labels = _nilearn_setup((8, 8, 8), 8, 10, 6)
    # nilearn's masker calls gc.collect() once per permutation, whose cost
    # grows with every object alive in the test session; freezing them
    # makes those collections cheap without touching the computation.
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = permuted_ols(labels, np.vstack([a, b]), confounding_vars=None,
                               model_intercept=True, n_perm=n_perm_nilearn,
                               two_sided_test=True, tfce=True, masker=masker, random_state=0)
    finally:
        gc.unfreeze()
    n_ours = 4000
    # nilearn's TFCE omits the dh factor: same statistic with multiply_by_dh=False.
    res = two_sample_permutation_test(a, b, mask, n_permutations=n_ours, random_state=1,
                                      tfce_kwargs={"multiply_by_dh": False})
    np.testing.assert_allclose(res.t, out["t"][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.tfce, out["tfce"][0], rtol=1e-10,
                               atol=1e-10 * np.abs(res.tfce).max())
    assert res.p_fwe.min() < 0.05 < res.p_fwe.max()
    assert np.all(_within_mc_error(res.p_fwe, 10 ** -out["logp_max_tfce"][0],
                                   n_ours, n_perm_nilearn))
    assert np.all(_within_mc_error(res.p_t_fwe, 10 ** -out["logp_max_t"][0],
                                   n_ours, n_perm_nilearn))
    assert stats.ks_2samp(res.null_max, out["h0_max_tfce"][0]).pvalue > 1e-3
    # Default convention (times dh = max|t|/100 per map) is a different
    # statistic in the null, but the observed maps differ by a constant.
    default = two_sample_permutation_test(a, b, mask, n_permutations=10)
    np.testing.assert_allclose(default.tfce, res.tfce * np.abs(res.t).max() / 100, rtol=1e-10)


def test_against_nilearn_tfce():
    _check_against_nilearn_tfce(1000)


# --------------------------------------------------------------------------
# FDR
# --------------------------------------------------------------------------
def test_fdr_bh_matches_scipy():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-3, size=50)])
    np.testing.assert_allclose(fdr_bh(p), stats.false_discovery_control(p), rtol=1e-12)
    ties = np.round(rng.uniform(size=(20, 30)), 2)  # ties and a 2-D shape
    np.testing.assert_allclose(fdr_bh(ties), stats.false_discovery_control(ties, axis=None)
                               .reshape(ties.shape), rtol=1e-12)
    assert fdr_bh(np.array([])).size == 0
    np.testing.assert_allclose(fdr_bh(np.array([0.01])), [0.01])


def test_fdr_bh_nan_and_validation():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = fdr_bh(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], stats.false_discovery_control(p[[0, 2, 3]]))
    with pytest.raises(ValueError):
        fdr_bh(np.array([0.5, 1.2]))


# --------------------------------------------------------------------------
# Liebermeister
# --------------------------------------------------------------------------
def test_liebermeister_matches_adjusted_fisher():
    rng = np.random.default_rng(4)
    n_a, n_b, v = 12, 30, 400
    a = rng.random((n_a, v)) < rng.uniform(0, 1, v)
    b = rng.random((n_b, v)) < rng.uniform(0, 1, v)
    a[:, 0], b[:, 0] = True, False  # extreme: all a present, no b
    a[:, 1], b[:, 1] = False, True  # extreme in the other direction
    a[:, 2], b[:, 2] = False, False
    p, z = liebermeister_test(a, b.astype(np.uint8))
    for i in list(range(6)) + list(rng.choice(v, 20, replace=False)):
        ka, kb = int(a[:, i].sum()), int(b[:, i].sum())
        table = [[ka + 1, n_a - ka], [kb, n_b - kb + 1]]
        expected = stats.fisher_exact(table, alternative="greater").pvalue
        assert p[i] == pytest.approx(expected, rel=1e-9, abs=1e-300)
    np.testing.assert_allclose(z, stats.norm.isf(p), rtol=1e-6, atol=1e-6)
    assert z[0] > 4 and z[1] < -4
    assert np.all((p > 0) & (p < 1))


def test_liebermeister_less_conservative_than_fisher():
    a = np.zeros((10, 1), bool)
    b = np.zeros((10, 1), bool)
    a[:6], b[:1] = True, True
    p, _ = liebermeister_test(a, b)
    fisher = stats.fisher_exact([[6, 4], [1, 9]], alternative="greater").pvalue
    assert p[0] < fisher


def test_liebermeister_validation():
    with pytest.raises(ValueError):
        liebermeister_test(np.zeros((3, 4)), np.zeros((3, 5)))


def test_result_is_frozen():
    res = PermutationResult(t=np.zeros(1), tfce=None, p_uncorrected=np.ones(1),
                            p_fwe=np.ones(1), p_fdr=np.ones(1), p_t_fwe=np.ones(1),
                            null_max=np.zeros(3), n_permutations=3, two_sided=True)
    with pytest.raises(AttributeError):
        res.t = np.ones(1)
    assert math.isclose(res.p_fwe[0], 1.0)
