"""Tests of bids_cnm.analyses.dbs against explicit loops, scipy and closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_cnm.analyses import dbs, roi
from bids_cnm.errors import InputDataError

SHAPE = (21, 25, 19)
FLIPPED = np.array([[-3.0, 0, 0, 30], [0, 3.0, 0, -36], [0, 0, 3.0, -27], [0, 0, 0, 1]])


# ---------------------------------------------------------------- VAT radius


def test_kuncel_radius_by_hand():
    # r = sqrt((V - 0.1) / 0.22)
    assert dbs.vat_radius_mm(3.0, "V") == pytest.approx(np.sqrt(2.9 / 0.22))
    assert dbs.vat_radius_mm(2.3, "V") == pytest.approx(np.sqrt(10.0))
    # mA -> V through Ohm's law: 3 mA x 1000 ohm = 3 V; x 500 ohm = 1.5 V.
    assert dbs.vat_radius_mm(3.0, "mA") == pytest.approx(np.sqrt(2.9 / 0.22))
    assert dbs.vat_radius_mm(3.0, "mA", impedance_ohm=500) == pytest.approx(np.sqrt(1.4 / 0.22))
    # At or below the 0.1 V threshold: no activation.
    assert dbs.vat_radius_mm(0.05, "V") == 0.0
    assert dbs.vat_radius_mm(0.0, "mA") == 0.0
    # Vectorized, no pulse-width term.
    np.testing.assert_allclose(
        dbs.vat_radius_mm(np.array([1.0, 2.0]), "V", pulse_width_us=120),
        np.sqrt((np.array([1.0, 2.0]) - 0.1) / 0.22),
    )


def test_maedler_radius_solves_its_equation():
    k1, k3, k4 = -1.0473, 0.2786, 0.0009856
    for volts, imp in [(1.0, 1000), (3.5, 800), (2.0, 1500)]:
        r = dbs.vat_radius_mm(volts, "V", impedance_ohm=imp, model="maedler2012")
        assert r > 0
        assert k3 * r**2 + (k1 + k4 * imp) * r == pytest.approx(volts)
    assert dbs.vat_radius_mm(0.0, "V", model="maedler2012") == 0.0
    # 3 mA at 1000 ohm is 3 V.
    assert dbs.vat_radius_mm(3.0, "mA", model="maedler2012") == pytest.approx(
        dbs.vat_radius_mm(3.0, "V", model="maedler2012")
    )


def test_dembek_radius_by_hand():
    # r[m] = (pw/60)^0.3 sqrt(0.72 I / 200 V/m); 3 mA, 60 us: sqrt(0.72*0.003/200) m.
    want = np.sqrt(0.72 * 0.003 / 200) * 1000
    assert dbs.vat_radius_mm(3.0, "mA", model="dembek2017") == pytest.approx(want)
    assert want == pytest.approx(3.286, abs=1e-3)
    assert dbs.vat_radius_mm(3.0, "mA", pulse_width_us=120, model="dembek2017") == pytest.approx(
        want * 2**0.3
    )
    # 3 V at 1000 ohm is 3 mA.
    assert dbs.vat_radius_mm(3.0, "V", model="dembek2017") == pytest.approx(want)


def test_vat_radius_rejects_bad_input():
    with pytest.raises(ValueError, match="unit"):
        dbs.vat_radius_mm(1.0, "mV")
    with pytest.raises(ValueError, match=">= 0"):
        dbs.vat_radius_mm(-1.0, "V")
    with pytest.raises(ValueError, match="model"):
        dbs.vat_radius_mm(1.0, "V", model="horn2017")
    with pytest.raises(ValueError, match="impedance"):
        dbs.vat_radius_mm(1.0, "mA", impedance_ohm=0)


# ----------------------------------------------------------------- VAT masks


def _contacts():
    return pd.DataFrame({
        "patient": ["p1", "p1", "p2", "p2"],
        "side": ["left", "right", "left", "right"],
        "x": [-9.0, 12.0, -10.0, 10.0],
        "y": [-21.0, -18.0, -20.0, -20.0],
        "z": [0.0, 3.0, 0.0, 0.0],
        "amplitude": [2.5, 3.0, 1.0, 0.0],
        "unit": ["mA", "mA", "V", "V"],
    })


def test_vat_from_contacts_unites_sides():
    table = _contacts()
    masks = dbs.vat_from_contacts(table, SHAPE, FLIPPED)
    assert list(masks) == ["p1", "p2"]
    r = [dbs.vat_radius_mm(a, u) for a, u in zip(table.amplitude, table.unit)]
    want1 = roi.sphere_mask([-9, -21, 0], 2 * r[0], SHAPE, FLIPPED) | roi.sphere_mask(
        [12, -18, 3], 2 * r[1], SHAPE, FLIPPED
    )
    np.testing.assert_array_equal(masks["p1"], want1)
    # p2's right contact is off (0 V): only the left VAT.
    want2 = roi.sphere_mask([-10, -20, 0], 2 * r[2], SHAPE, FLIPPED)
    np.testing.assert_array_equal(masks["p2"], want2)
    vt = dbs.vat_table(table)
    np.testing.assert_allclose(vt["radius_mm"], r)


def test_vat_from_contacts_errors_name_row_and_fix():
    table = _contacts()
    with pytest.raises(InputDataError, match="missing column"):
        dbs.vat_from_contacts(table.drop(columns="side"), SHAPE, FLIPPED, source="dbs.tsv")
    with pytest.raises(InputDataError, match="unit"):
        dbs.vat_from_contacts(table.drop(columns="unit"), SHAPE, FLIPPED)
    bad = table.astype({"y": object})
    bad.loc[1, "y"] = "n/a"
    with pytest.raises(InputDataError, match=r"dbs.tsv, row 3, column 'y'"):
        dbs.vat_from_contacts(bad, SHAPE, FLIPPED, source="dbs.tsv")
    off = table.copy()
    off.loc[2, "amplitude"] = 0.0
    with pytest.raises(InputDataError, match="patient 'p2'"):
        dbs.vat_from_contacts(off, SHAPE, FLIPPED)
    neg = table.copy()
    neg.loc[0, "amplitude"] = -2.0
    with pytest.raises(InputDataError, match="row 2"):
        dbs.vat_from_contacts(neg, SHAPE, FLIPPED)


# ------------------------------------------------------------------ networks


def _patients(n=12, v=500, seed=0):
    rng = np.random.default_rng(seed)
    nets = rng.normal(size=(n, v))
    outcomes = rng.uniform(0, 100, n)
    return nets, outcomes


def test_outcome_weighted_network_against_loop():
    nets, o = _patients()
    loop = sum(o[i] * nets[i] for i in range(len(o)))
    np.testing.assert_allclose(dbs.outcome_weighted_network(nets, o), loop / len(o))
    np.testing.assert_allclose(dbs.outcome_weighted_network(nets, o, "sum"), loop / o.sum())
    signed = o - 50
    np.testing.assert_allclose(
        dbs.outcome_weighted_network(nets, signed, "abs_sum"),
        sum(signed[i] * nets[i] for i in range(len(o))) / np.abs(signed).sum(),
    )
    cube = nets.reshape(12, 5, 10, 10)
    assert dbs.outcome_weighted_network(cube, o).shape == (5, 10, 10)
    with pytest.raises(ValueError, match="sum to 0"):
        dbs.outcome_weighted_network(nets[:2], [1.0, -1.0], "sum")


def test_rmap_against_pearsonr():
    nets, o = _patients(v=60)
    nets[:, 7] = 3.0  # a constant voxel: undefined r
    r = dbs.rmap(nets, o)
    for v in range(nets.shape[1]):
        if v == 7:
            assert np.isnan(r[v])
        else:
            assert r[v] == pytest.approx(stats.pearsonr(nets[:, v], o)[0])


def test_rmap_permutation_against_loop():
    nets, o = _patients(n=10, v=40, seed=2)
    nets[:, 0] = o + np.random.default_rng(3).normal(0, 5, 10)  # planted effect
    n_perm = 200
    r, p_unc, p_fwe = dbs.rmap_permutation(nets, o, n_perm=n_perm, rng=42)
    # Rebuild the same permutations and count by brute force.
    rng = np.random.default_rng(42)
    perms = np.argsort(rng.random((n_perm, 10)), axis=1)
    null = np.array([np.corrcoef(np.c_[o[p], nets].T)[0, 1:] for p in perms])
    want_unc = ((np.abs(null) >= np.abs(r) - 1e-12).sum(0) + 1) / (n_perm + 1)
    max_null = np.abs(null).max(1)
    want_fwe = np.array([((max_null >= abs(x) - 1e-12).sum() + 1) / (n_perm + 1) for x in r])
    np.testing.assert_allclose(p_unc, want_unc)
    np.testing.assert_allclose(p_fwe, want_fwe)
    assert np.all(p_fwe >= p_unc)
    assert p_fwe[0] < 0.05


def _loo_loop(nets, o):
    n = len(o)
    sims = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        w = sum(o[j] * nets[j] for j in others) / (n - 1)
        sims.append(np.corrcoef(w, nets[i])[0, 1])
    return np.array(sims)


def test_leave_one_out_similarity_equals_explicit_loop():
    nets, o = _patients(n=9, v=300, seed=4)
    mask = np.ones(300, bool)
    mask[::3] = False
    np.testing.assert_allclose(dbs.leave_one_out_similarity(nets, o), _loo_loop(nets, o))
    np.testing.assert_allclose(
        dbs.leave_one_out_similarity(nets, o, mask), _loo_loop(nets[:, mask], o)
    )
    # Non-finite voxels are dropped, like a mask.
    with_nan = nets.copy()
    with_nan[2, ::3] = np.nan
    np.testing.assert_allclose(
        dbs.leave_one_out_similarity(with_nan, o), _loo_loop(nets[:, mask], o)
    )
    # Signed outcomes (worsening) too.
    np.testing.assert_allclose(dbs.leave_one_out_similarity(nets, o - 60), _loo_loop(nets, o - 60))


def test_leave_one_out_prediction_against_loop_and_permutations():
    rng = np.random.default_rng(7)
    n, v = 14, 400
    common = rng.normal(size=v)
    strength = rng.uniform(0, 1, n)
    nets = strength[:, None] * common + rng.normal(size=(n, v))
    o = 100 * strength + rng.normal(0, 5, n)  # closer to the common network, better outcome
    labels = [f"p{i}" for i in range(n)]
    res = dbs.leave_one_out_prediction(nets, o, n_perm=300, rng=1, patients=labels)
    sims = _loo_loop(nets, o)
    np.testing.assert_allclose(res["table"]["similarity"], sims)
    assert list(res["table"].columns) == ["patient", "outcome", "similarity"]
    ref = stats.pearsonr(sims, o)
    assert res["r"] == pytest.approx(ref[0])
    assert res["p_parametric"] == pytest.approx(ref[1])
    # The null rebuilds the LOO networks for every outcome shuffle.
    perms = np.argsort(np.random.default_rng(1).random((300, n)), axis=1)
    for k in range(5):
        op = o[perms[k]]
        assert res["null"][k] == pytest.approx(stats.pearsonr(_loo_loop(nets, op), op)[0])
    assert res["p_permutation"] == pytest.approx(
        ((res["null"] >= res["r"] - 1e-12).sum() + 1) / 301
    )
    assert res["r"] > 0.5 and res["p_permutation"] < 0.05


def test_zscore_and_convergent_network():
    rng = np.random.default_rng(9)
    a = rng.normal(2, 3, SHAPE)
    b = 0.3 * a + rng.normal(size=SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    za = dbs.zscore_map(a, mask)
    assert np.isnan(za[~mask]).all()
    assert za[mask].mean() == pytest.approx(0, abs=1e-12)
    assert za[mask].std() == pytest.approx(1)
    res = dbs.convergent_network(a, b, mask)
    zb = (b[mask] - b[mask].mean()) / b[mask].std()
    np.testing.assert_allclose(res["network"][mask], (za[mask] + zb) / 2)
    r_ab = stats.pearsonr(a[mask], b[mask])[0]
    assert res["r_overlap_dbs"] == pytest.approx(r_ab)
    assert res["r_overlap"] == pytest.approx(stats.pearsonr(res["network"][mask], a[mask])[0])
    # For Pearson, the mean of two z-maps correlates sqrt((1 + r)/2) with each.
    assert res["r_overlap"] == pytest.approx(np.sqrt((1 + r_ab) / 2))
    assert res["r_dbs"] == pytest.approx(np.sqrt((1 + r_ab) / 2))
    with pytest.raises(ValueError, match="constant"):
        dbs.zscore_map(np.ones(SHAPE), mask)
