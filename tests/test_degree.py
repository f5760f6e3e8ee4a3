"""Degree check: the degree kernel, the regression and a planted hub, against plain numpy."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_AFFINE, TINY_SHAPE, tiny_mask

from bids_cnm.analyses.degree import degree_check, degree_sample, regress_out
from bids_cnm.engine.degree import DegreeSums
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import Seeds
from bids_cnm.engine.timeseries import open_prepared, prepare_subject

SHAPE = (6, 7, 5)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def write_bold(path, rng, n_volumes=50) -> np.ndarray:
    """A small 4-D run: shared signal on part of the grid, unequal voxel variances."""
    shared = rng.standard_normal(n_volumes)
    loading = rng.uniform(-1.5, 1.5, SHAPE)
    data = loading[..., None] * shared + rng.standard_normal(SHAPE + (n_volumes,))
    data = data * rng.uniform(1, 30, SHAPE)[..., None] + 500.0
    nb.Nifti1Image(data.astype(np.float32), AFFINE).to_filename(path)
    return data.reshape(-1, n_volumes)


def numpy_degree(series: np.ndarray, targets: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Mean |arctanh r| of each target voxel to the sample voxels, itself left out."""
    r = np.corrcoef(series.astype(np.float64))[np.ix_(targets, sample)]
    z = np.abs(np.arctanh(np.clip(r, -1 + 1e-6, 1 - 1e-6)))
    own = targets[:, None] == sample[None, :]
    z[own] = np.nan
    return np.nanmean(z, axis=1)


def test_degree_kernel_equals_numpy_corrcoef(tmp_path):
    rng = np.random.default_rng(0)
    subjects, raw = [], []
    for s in range(2):
        path = tmp_path / f"bold{s}.nii.gz"
        raw.append(write_bold(path, rng))
        subjects.append(open_prepared(prepare_subject([str(path)], [], tmp_path / f"p{s}")))
    all_voxels = np.arange(np.prod(SHAPE))
    assert np.array_equal(subjects[0].voxels, all_voxels)
    # targets: a subset of the subject's voxels (the rows path); sample within the targets
    targets = np.sort(rng.choice(all_voxels, 150, replace=False))
    sample = np.sort(rng.choice(targets, 25, replace=False))
    sums = DegreeSums.zeros(targets, sample)
    for subject in subjects:
        sums.add(subject)
    expected = np.mean([numpy_degree(x, targets, sample) for x in raw], axis=0)
    np.testing.assert_allclose(sums.mean(), expected, rtol=2e-5, atol=1e-6)
    # batches merge into the same mean
    first, second = DegreeSums.zeros(targets, sample), DegreeSums.zeros(targets, sample)
    first.add(subjects[0])
    second.add(subjects[1])
    np.testing.assert_allclose(first.merge(second).mean(), sums.mean(), rtol=1e-12)
    assert first.n == 2


def test_two_run_subject_degree_follows_the_run_convention(tmp_path):
    """Two runs: by default |mean of the run-wise z| (as the seeds' z), else one
    correlation over the concatenated standardized runs (independent numpy)."""
    rng = np.random.default_rng(3)
    paths, raw = [], []
    for run in range(2):
        path = tmp_path / f"run{run}.nii.gz"
        raw.append(write_bold(path, rng, n_volumes=40 + 10 * run))
        paths.append(str(path))
    subject = open_prepared(prepare_subject(paths, [], tmp_path / "p"))
    targets = np.arange(np.prod(SHAPE))
    sample = np.sort(rng.choice(targets, 20, replace=False))
    own = targets[:, None] == sample[None, :]

    def zmat(series):
        r = np.corrcoef(series.astype(np.float64))[np.ix_(targets, sample)]
        return np.arctanh(np.clip(r, -1 + 1e-6, 1 - 1e-6))

    z_avg = np.abs((zmat(raw[0]) + zmat(raw[1])) / 2)
    z_avg[own] = np.nan
    standardized = [(x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True) for x in raw]
    z_cat = np.abs(zmat(np.concatenate(standardized, axis=1)))
    z_cat[own] = np.nan
    for runs, expected in (("average", z_avg), ("concatenate", z_cat)):
        sums = DegreeSums.zeros(targets, sample)
        sums.add(subject, runs=runs)
        np.testing.assert_allclose(sums.mean(), np.nanmean(expected, axis=1), rtol=2e-5,
                                   atol=1e-6, err_msg=runs)
    assert not np.allclose(np.nanmean(z_avg, axis=1), np.nanmean(z_cat, axis=1), rtol=1e-3)


def test_regression_residual_equals_lstsq():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=500)
    y = 0.7 * x + rng.standard_normal(500) + 3.0
    design = np.c_[np.ones_like(x), x]
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(regress_out(y, x), y - design @ beta, atol=1e-10)


def hub_results(rng) -> tuple[GroupResults, np.ndarray]:
    """t-maps on the tiny grid: primary studies follow a planted hub map, controls do not."""
    voxels = np.flatnonzero(tiny_mask().ravel())
    ijk = np.indices(TINY_SHAPE).reshape(3, -1).T[voxels]
    hub = np.exp(-((ijk - [10, 12, 10]) ** 2).sum(1) / 20.0)  # one planted hub
    degree = 0.1 + hub + 0.02 * rng.standard_normal(len(voxels))
    rows, maps = [], []
    for set_name, n, gain in (("primary", 6, 12.0), ("control", 5, 0.0), ("random", 8, 0.0)):
        for i in range(n):
            study = f"{set_name}{i}" if set_name != "random" else f"primary{i % 4}rand{i // 4 + 1}"
            rows.append({"id": f"{set_name}{i}", "set": set_name, "study": study,
                         "variant": "main", "relocation": i // 4 + 1 if set_name == "random"
                         else np.nan})
            maps.append(gain * hub + 2.0 * rng.standard_normal(len(voxels)))
    t = np.stack(maps, axis=1).astype(np.float32)
    seeds = Seeds(pd.DataFrame(rows), [np.array([0])] * len(rows), TINY_SHAPE, TINY_AFFINE, 6.0)
    return GroupResults(seeds, voxels, t, t, t, n_subjects=30), degree


def test_planted_hub_is_detected_and_p_counts_relocated_networks():
    results, degree = hub_results(np.random.default_rng(2))
    check = degree_check(results, degree, 5.1, ["primary", "control"])
    table = check.table.set_index(["set", "network"])
    assert list(table.index) == [("primary", "main"), ("control", "main"),
                                 ("random", "relocation-1"), ("random", "relocation-2")]
    # independent: overlap maps and Pearson r written here from the definitions
    def overlap(columns):
        t = results.t[:, columns]
        return (np.sign(t) * (np.abs(t) > 5.1)).mean(axis=1)

    primary = overlap(results.columns("primary"))
    r = np.corrcoef(primary, degree)[0, 1]
    assert r > 0.8
    assert table.loc[("primary", "main"), "r_degree"] == pytest.approx(r, abs=1e-9)
    relocated = [overlap(np.flatnonzero(results.seeds.table["relocation"] == i)) for i in (1, 2)]
    null = np.array([abs(np.corrcoef(m, degree)[0, 1]) for m in relocated])
    for name, expected in zip(["relocation-1", "relocation-2"], null):
        assert abs(table.loc[("random", name), "r_degree"]) == pytest.approx(expected, abs=1e-9)
    assert table.loc[("primary", "main"), "p_degree"] == (null >= abs(r)).mean() == 0.0
    control_r = abs(np.corrcoef(overlap(results.columns("control")), degree)[0, 1])
    assert table.loc[("control", "main"), "p_degree"] == pytest.approx((null >= control_r).mean())
    assert table.loc[("primary", "main"), "n_null"] == 2
    # after regressing degree out, little of the hub network is left
    residual = check.residuals["primary"]
    design = np.c_[np.ones_like(degree), degree]
    beta, *_ = np.linalg.lstsq(design, primary, rcond=None)
    np.testing.assert_allclose(residual, primary - design @ beta, atol=1e-9)
    assert table.loc[("primary", "main"), "r_residual"] == pytest.approx(
        np.corrcoef(residual, primary)[0, 1], abs=1e-9)
    assert table.loc[("primary", "main"), "r_residual"] < 0.6


def test_degree_sample_is_grey_matter_seeded_and_sized():
    voxels = np.flatnonzero(tiny_mask().ravel())
    one = degree_sample(voxels, TINY_SHAPE, TINY_AFFINE, 40, random_state=5)
    assert np.array_equal(one, degree_sample(voxels, TINY_SHAPE, TINY_AFFINE, 40, 5))
    assert not np.array_equal(one, degree_sample(voxels, TINY_SHAPE, TINY_AFFINE, 40, 6))
    assert len(one) == 40 and len(np.unique(one)) == 40 and np.isin(one, voxels).all()
    from nilearn.datasets import load_mni152_gm_template
    from scipy import ndimage

    template = load_mni152_gm_template(resolution=1)
    ijk = np.c_[np.unravel_index(one, TINY_SHAPE)]
    mm = ijk @ TINY_AFFINE[:3, :3].T + TINY_AFFINE[:3, 3]
    inv = np.linalg.inv(template.affine)
    p = ndimage.map_coordinates(np.asarray(template.dataobj, float),
                                (mm @ inv[:3, :3].T + inv[:3, 3]).T, order=1)
    assert (p >= 0.5).all()


def test_saved_share_is_read_back_instead_of_computed(tmp_path, monkeypatch):
    """With ``keep``, each subject's share is saved in its prepared folder; a later run
    with the same voxels and sample reads it (the kernel is not called); the sums are the
    bits the kernel gives adding every subject straight into one total; another sample
    or run convention, or a truncated file, computes it again."""
    import bids_cnm.engine.degree as engine_degree

    rng = np.random.default_rng(5)
    subjects = []
    for s in range(2):
        path = tmp_path / f"bold{s}.nii.gz"
        write_bold(path, rng)
        subjects.append(open_prepared(prepare_subject([str(path)], [], tmp_path / f"p{s}")))
    targets = np.sort(rng.choice(np.prod(SHAPE), 150, replace=False))
    sample = np.sort(rng.choice(targets, 25, replace=False))

    # the kernel adding each subject straight into one total (no share in between)
    positions = np.searchsorted(targets, sample)
    self_col = np.full(len(targets), -1, dtype=np.int64)
    self_col[positions] = np.arange(len(sample))
    direct = np.zeros(len(targets))
    for subject in subjects:
        rows = np.searchsorted(subject.voxels, targets)
        engine_degree.add_degree(direct, subject, rows, rows[positions], self_col)
    plain, kept = DegreeSums.zeros(targets, sample), DegreeSums.zeros(targets, sample)
    for subject in subjects:
        plain.add(subject)
        kept.add(subject, keep=True)
    np.testing.assert_array_equal(plain.total, direct)  # bit for bit
    np.testing.assert_array_equal(kept.total, direct)
    names = {p.name for s in subjects for p in s.path.glob("degree-*.npy")}
    assert names == {engine_degree.share_name(targets, sample, "average")}

    calls = []
    real = engine_degree.add_degree
    monkeypatch.setattr(engine_degree, "add_degree",
                        lambda *a, **k: (calls.append(1), real(*a, **k)))
    again = DegreeSums.zeros(targets, sample)
    for subject in subjects:
        again.add(subject, keep=True)
    assert calls == []
    np.testing.assert_array_equal(again.total, plain.total)

    # another sample or run convention: another file, computed
    other = np.sort(rng.choice(targets, 20, replace=False))
    DegreeSums.zeros(targets, other).add(subjects[0], keep=True)
    DegreeSums.zeros(targets, sample).add(subjects[0], runs="concatenate", keep=True)
    assert len(calls) == 2 and len(list(subjects[0].path.glob("degree-*.npy"))) == 3

    # a truncated file is computed again and replaced
    saved = subjects[1].path / engine_degree.share_name(targets, sample, "average")
    saved.write_bytes(saved.read_bytes()[:100])
    fixed = DegreeSums.zeros(targets, sample)
    fixed.add(subjects[1], keep=True)
    assert len(calls) == 3
    np.testing.assert_array_equal(np.load(saved), fixed.total)


def test_a_share_that_cannot_be_saved_is_computed_and_the_run_goes_on(tmp_path):
    """Saving fails for real (a folder stands where the file goes, as root too): the
    sums are computed and nothing is written."""
    import bids_cnm.engine.degree as engine_degree

    path = tmp_path / "bold.nii.gz"
    write_bold(path, np.random.default_rng(6))
    subject = open_prepared(prepare_subject([str(path)], [], tmp_path / "p"))
    targets = np.arange(np.prod(SHAPE))
    sample = targets[::9]
    blocked = subject.path / engine_degree.share_name(targets, sample, "average")
    blocked.mkdir()
    sums, reference = DegreeSums.zeros(targets, sample), DegreeSums.zeros(targets, sample)
    sums.add(subject, keep=True)
    reference.add(subject)
    np.testing.assert_array_equal(sums.total, reference.total)
    assert blocked.is_dir() and not list(blocked.iterdir())
    assert sorted(p.name for p in subject.path.iterdir() if p.name.startswith(".")) == []


def test_grey_matter_on_the_grid_is_saved_and_follows_its_source(tmp_path, monkeypatch):
    """With a cache folder the resampled grey matter is saved once per source and grid;
    a later call reads it (nothing is resampled), the same mask and description; a
    rewritten mask file or another grid is resampled again."""
    import os

    from bids_cnm.analyses.grey_matter import grey_matter
    from bids_cnm.io import templates

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    shape = (46, 55, 46)
    user = tmp_path / "gm.nii.gz"
    values = np.zeros(shape, np.float32)
    values[10:30, 10:40, 10:30] = 0.8
    nb.Nifti1Image(values, affine).to_filename(user)
    cache = tmp_path / "grey_matter"
    first = {path: grey_matter(shape, affine, path, cache_dir=cache) for path in (user, None)}
    assert len(list(cache.glob("*.npy"))) == 2
    np.testing.assert_array_equal(first[user][0], values >= 0.5)
    assert first[None][0].any() and "nilearn" in first[None][1]

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled again")

    monkeypatch.setattr(templates, "on_grid", no_resampling)
    for path, (mask, source) in first.items():
        again = grey_matter(shape, affine, path, cache_dir=cache)
        np.testing.assert_array_equal(again[0], mask)
        assert again[1] == source
    monkeypatch.undo()

    values[10:30, 10:40, 10:20] = 0.0  # the user rewrites the mask
    nb.Nifti1Image(values, affine).to_filename(user)
    os.utime(user, ns=(1, 1))  # even with an old modification time (the change time moves)
    np.testing.assert_array_equal(grey_matter(shape, affine, user, cache_dir=cache)[0],
                                  values >= 0.5)
    shifted = affine.copy()
    shifted[0, 3] += 4.0
    grey_matter(shape, shifted, None, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 4
