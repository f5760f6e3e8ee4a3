"""Scientific fidelity of the engine (issue 8, items 1, 5, 6; issue 14, item 7).

Every number is checked against a computation written here from the definition
(numpy, scipy, nilearn), never against the engine's own helpers.
"""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_cnm.analyses.dbs import (
    convergent_network,
    leave_one_out_prediction,
    outcome_weighted_network,
    rmap_permutation,
)
from bids_cnm.analyses.validation import spatial_correlation
from bids_cnm.engine import connectivity
from bids_cnm.engine.nodes import node_zvalues
from bids_cnm.engine.seeds import Seeds, make_seeds
from bids_cnm.engine.timeseries import (
    FORMAT_VERSION,
    in_memory_subject,
    open_prepared,
    prepare_subject,
)

#: the documented clipping of r before Fisher's transform, 1 - 1e-6 as a float32
R_MAX = float(np.float32(1.0 - 1e-6))


def fisher(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -R_MAX, R_MAX))


def pearson(voxels: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Pearson r of every row of ``voxels`` (V, T) with ``seed`` (T,), in float64."""
    vc = voxels - voxels.mean(axis=1, keepdims=True)
    sc = seed - seed.mean()
    return vc @ sc / (np.linalg.norm(vc, axis=1) * np.linalg.norm(sc))


def mask_seeds(voxel_lists: list[list[int]], shape=(4, 4, 4)) -> Seeds:
    table = pd.DataFrame({"id": [f"s{k}" for k in range(len(voxel_lists))],
                          "study": [f"S{k}" for k in range(len(voxel_lists))],
                          "set": "primary", "variant": "main"})
    return Seeds(table, [np.asarray(v, dtype=np.int64) for v in voxel_lists], shape,
                 np.eye(4), 0.0)


def raw_subject(rng: np.random.Generator, n_voxels: int, n_volumes: int) -> np.ndarray:
    """Raw BOLD-like rows with a shared signal and very unequal voxel SDs and means."""
    shared = rng.standard_normal(n_volumes)
    rows = 0.7 * shared + rng.standard_normal((n_voxels, n_volumes))
    return rows * rng.uniform(0.2, 5.0, (n_voxels, 1)) + rng.uniform(100, 1000, (n_voxels, 1))


# ------------------------------------------------------------------ item 1: undefined t


def test_one_voxel_seed_1000_subjects_in_batches(tmp_path):
    """1000 subjects in batches of 100: t equals scipy's, and is NaN (not ~1e8) where
    z is the same in every subject (the one-voxel seed's own voxel)."""
    rng = np.random.default_rng(8)
    n_voxels, n_volumes = 12, 16
    seeds = mask_seeds([[0], [1, 2, 3]])
    batches = [connectivity.RunningStats.zeros(n_voxels, len(seeds)) for _ in range(10)]
    ref_z = np.empty((1000, n_voxels, len(seeds)))
    for s in range(1000):
        raw = raw_subject(rng, n_voxels, n_volumes)
        subject = in_memory_subject([raw], np.arange(n_voxels), (4, 4, 4))
        connectivity.accumulate_subject(batches[s // 100], subject, seeds)
        for k, vox in enumerate(seeds.voxels):
            ref_z[s, :, k] = fisher(pearson(raw, raw[vox].mean(axis=0)))
    total = batches[0]
    for other in batches[1:]:
        total.merge(other)
    # batches saved and read back, as the group level does
    total = connectivity.RunningStats.load(total.save(tmp_path / "stats.npy"))
    ours = total.finalize()

    assert total.n == 1000
    assert np.isnan(ours["t"][0, 0]) and ours["undefined"][0, 0]
    assert np.isnan(ours["t"]).sum() == 1  # only the seed's own voxel
    finite = np.isfinite(ours["t"])
    assert np.abs(ours["t"][finite]).max() < 1e4
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_t = stats.ttest_1samp(ref_z, 0.0, axis=0).statistic
    np.testing.assert_allclose(ours["t"][finite], ref_t[finite], rtol=1e-4)
    np.testing.assert_allclose(ours["z"], ref_z.mean(axis=0), atol=1e-6)
    assert ours["z"][0, 0] == pytest.approx(np.arctanh(R_MAX))


def test_welford_merge_equals_moments_of_all_subjects():
    """Chan's merge of unequal batches equals the mean and variance of all values."""
    rng = np.random.default_rng(1)
    z = rng.normal(3.0, 0.01, (57, 5, 2))  # large mean, small spread: cancellation-prone
    parts = [connectivity.RunningStats.zeros(5, 2) for _ in range(3)]
    for s, values in enumerate(z):
        part = parts[0 if s < 5 else 1 if s < 40 else 2]
        part.add_block(slice(None), np.tanh(values), values)
        part.n += 1
    merged = parts[0].merge(parts[1]).merge(parts[2])
    np.testing.assert_allclose(merged.mean_z, z.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.m2_z / (merged.n - 1), z.var(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(merged.finalize()["t"], stats.ttest_1samp(z, 0).statistic,
                               rtol=1e-9)


def test_single_voxel_vat_leaves_dbs_results_unchanged():
    """A DBS analysis with a one-voxel VAT: its undefined voxel is left out everywhere,
    so every result equals the analysis of the maps without that voxel."""
    rng = np.random.default_rng(5)
    n_voxels, n_patients = 40, 8
    vats = [[3]] + [list(rng.choice(n_voxels, 4, replace=False)) for _ in range(n_patients - 1)]
    seeds = mask_seeds(vats, shape=(5, 4, 2))
    running = connectivity.RunningStats.zeros(n_voxels, n_patients)
    for _ in range(25):
        subject = in_memory_subject([raw_subject(rng, n_voxels, 30)], np.arange(n_voxels),
                                    (5, 4, 2))
        connectivity.accumulate_subject(running, subject, seeds)
    t = running.finalize()["t"].astype(np.float32)  # as GroupResults stores it
    assert np.flatnonzero(np.isnan(t).any(axis=1)).tolist() == [3]
    nets = t.T.astype(float)  # (patients, voxels), as the plan's DBS analysis reads them
    outcomes = rng.uniform(10, 90, n_patients)
    network = rng.standard_normal(n_voxels)
    keep = np.arange(n_voxels) != 3

    def analyse(nets, network):
        dbs = outcome_weighted_network(nets, outcomes)
        r_map, p, p_fwe = rmap_permutation(nets, outcomes, 200, rng=0)
        loo = leave_one_out_prediction(nets, outcomes, n_perm=200, rng=0)
        conv = convergent_network(network, dbs)
        return dbs, r_map, p, p_fwe, loo, conv, spatial_correlation(dbs, network)

    with_nan = analyse(nets, network)
    without = analyse(nets[:, keep], network[keep])
    for a, b in zip(with_nan[:4], without[:4]):
        assert np.isnan(a[3])
        np.testing.assert_allclose(a[keep], b, rtol=1e-12)
    assert with_nan[4]["r"] == pytest.approx(without[4]["r"], rel=1e-12)
    assert with_nan[4]["p_permutation"] == without[4]["p_permutation"]
    for key in ("r_overlap", "r_dbs", "r_overlap_dbs"):
        assert with_nan[5][key] == pytest.approx(without[5][key], rel=1e-12)
    assert with_nan[6] == pytest.approx(without[6], rel=1e-12)


# ------------------------------------------------------- item 5: seed signal = mean BOLD


def _write_connectome(tmp_path, n_subjects=6, shape=(7, 7, 7), n_volumes=40):
    """Single-run NIfTI subjects (2 mm grid) with very unequal voxel SDs."""
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    n_vox = int(np.prod(shape))
    paths = []
    for s in range(n_subjects):
        data = raw_subject(rng, n_vox, n_volumes).reshape(shape + (n_volumes,))
        path = tmp_path / f"sub{s}.nii.gz"
        nb.Nifti1Image(data.astype(np.float32), affine).to_filename(path)
        paths.append(path)
    return paths, affine, shape


def test_seed_signal_options_match_nilearn_and_numpy(tmp_path):
    from nilearn.maskers import NiftiSpheresMasker

    paths, affine, shape = _write_connectome(tmp_path)
    centres = [(6.0, 6.0, 6.0), (4.0, 8.0, 6.0)]  # voxel centres; 6 mm spheres
    table = pd.DataFrame({"study": ["A", "B"], "x": [c[0] for c in centres],
                          "y": [c[1] for c in centres], "z": [c[2] for c in centres],
                          "set": "primary", "source_row": [2, 3]})
    seeds = make_seeds(table, shape, affine, diameter=6.0)
    prepared = [open_prepared(prepare_subject([str(p)], [], tmp_path / f"prep{i}"))
                for i, p in enumerate(paths)]
    t = {}
    for signal in ("mean", "standardized"):
        running = connectivity.RunningStats.zeros(int(np.prod(shape)), len(seeds))
        for subject in prepared:
            connectivity.accumulate_subject(running, subject, seeds, signal=signal)
        t[signal] = running.finalize()["t"]

    masker = NiftiSpheresMasker(centres, radius=3.0, allow_overlap=True)
    ref = {"mean": [], "standardized": []}
    for path in paths:
        raw = np.asarray(nb.load(path).dataobj, dtype=np.float64)
        voxels = raw.reshape(-1, raw.shape[-1])
        courses = masker.fit_transform(str(path))  # (T, K): nilearn's mean raw signal
        scored = stats.zscore(raw, axis=3)
        ref["mean"].append(np.stack([fisher(pearson(voxels, courses[:, k]))
                                     for k in range(len(seeds))], axis=1))
        ref["standardized"].append(np.stack(
            [fisher(pearson(voxels, scored[seeds.mask(k)].mean(axis=0)))
             for k in range(len(seeds))], axis=1))
    for signal in ref:
        with np.errstate(invalid="ignore", divide="ignore"):
            ref_t = stats.ttest_1samp(np.stack(ref[signal]), 0.0, axis=0).statistic
        # float32 r: at r ~ 0.99 inside a seed, dz = dr / (1 - r^2) is ~50x the rounding of
        # r, and t (~76 there over 6 subjects) magnifies it by mean/sd: ~2e-4 relative
        np.testing.assert_allclose(t[signal], ref_t, rtol=5e-4, atol=1e-4)
    # the two definitions differ on these data (the test can tell them apart)
    assert np.abs(t["mean"] - t["standardized"]).max() > 0.5


# ------------------------------------------------------------ item 6: several runs


def test_two_run_subject_average_and_concatenate():
    rng = np.random.default_rng(6)
    n_voxels = 30
    runs = [raw_subject(rng, n_voxels, 25), raw_subject(rng, n_voxels, 35) * 3.0]
    subject = in_memory_subject(runs, np.arange(n_voxels), (5, 3, 2))
    seeds = mask_seeds([[0, 4, 7], [12]], shape=(5, 3, 2))
    nodes = [np.array([1, 2, 5]), np.array([20, 21]), np.array([3, 29])]

    def reference(signal, combination):
        out = np.empty((n_voxels, len(seeds)))
        for k, vox in enumerate(seeds.voxels):
            courses = [(run if signal == "mean" else stats.zscore(run, axis=1))[vox].mean(0)
                       for run in runs]
            if combination == "average":
                out[:, k] = np.mean([fisher(pearson(run, c)) for run, c in zip(runs, courses)],
                                    axis=0)
            else:
                voxels = np.concatenate([stats.zscore(run, axis=1) for run in runs], axis=1)
                course = np.concatenate([stats.zscore(c) for c in courses])
                out[:, k] = fisher(pearson(voxels, course))
        return out

    for signal in ("mean", "standardized"):
        for combination in ("average", "concatenate"):
            ref = reference(signal, combination)
            z = connectivity.subject_zmaps(subject, seeds, signal=signal, runs=combination)
            np.testing.assert_allclose(z[:, 1:], ref[:, 1:], atol=2e-5)
            np.testing.assert_allclose(z[12, 1], np.arctanh(R_MAX), rtol=1e-6)
            values = node_zvalues(subject, seeds, nodes, signal, combination)
            np.testing.assert_allclose(
                values, np.stack([ref[n].mean(axis=0) for n in nodes], axis=1), atol=2e-5)
    # the default is the mean signal, runs averaged; the subject's r is tanh of its z
    running = connectivity.RunningStats.zeros(n_voxels, len(seeds))
    connectivity.accumulate_subject(running, subject, seeds)
    ref = reference("mean", "average")
    np.testing.assert_allclose(running.mean_z[:, 0], ref[:, 0], atol=2e-5)
    np.testing.assert_allclose(running.sum_r[:, 0], np.tanh(ref[:, 0]), atol=2e-5)


# ------------------------------------------------------- issue 14 item 7: cache version


def test_cache_of_another_format_is_rebuilt(tmp_path, caplog):
    paths, _, _ = _write_connectome(tmp_path, n_subjects=1, shape=(3, 3, 3), n_volumes=12)
    out = prepare_subject([str(paths[0])], [], tmp_path / "prep")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    # an older cache: no version key and no per-run files
    del meta["format_version"]
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "sd.npy").unlink()
    with caplog.at_level(logging.INFO, logger="bids_cnm"):
        subject = open_prepared(out)
    lines = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(lines) == 1 and "format 1" in lines[0]
    assert subject.meta["format_version"] == FORMAT_VERSION
    raw = np.asarray(nb.load(paths[0]).dataobj, dtype=np.float64).reshape(27, -1)
    np.testing.assert_allclose(subject.sd[:, 0], raw.std(axis=1), rtol=1e-5)
    # prepare_subject on the same folder now leaves it alone
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bids_cnm"):
        prepare_subject([str(paths[0])], [], out)
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]


def test_a_seed_without_data_in_a_subject_names_the_subject(tmp_path):
    """A seed whose voxels all lie outside one subject's data: the error names that
    subject's BOLD file and the fix (issue 9, item 12)."""
    from bids_cnm.engine.connectivity import seed_timeseries
    from bids_cnm.engine.seeds import Seeds
    from bids_cnm.errors import InputDataError

    paths, _, _ = _write_connectome(tmp_path, n_subjects=1, shape=(3, 3, 3), n_volumes=12)
    mask = np.ones((3, 3, 3), np.uint8)
    mask[0, 0, 0] = 0  # the subject has no data at the seed's only voxel
    mask_path = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(mask, np.eye(4)).to_filename(mask_path)
    subject = open_prepared(prepare_subject([str(paths[0])], [str(mask_path)], tmp_path / "p"))
    table = pd.DataFrame({"id": ["lost"], "set": ["primary"], "study": ["lost"],
                          "variant": ["main"]})
    seeds = Seeds(table, [np.array([0], dtype=np.int64)], (3, 3, 3), np.eye(4), 6.0)
    with pytest.raises(InputDataError, match="no voxel with valid data") as info:
        seed_timeseries(subject, seeds)
    assert str(paths[0]) in str(info.value) and "--participant-label" in str(info.value)


def test_int16_copy_is_the_documented_quantization():
    """The int16 prepared copy, quantized row by row in one pass, holds docs/methods.md's
    quantization written with numpy: one scale per row, ``max|row| / 32767`` in float32,
    ``rint(x / scale)`` (round half to even); the norms are those of the dequantized rows
    centred in float64 (the stored arrays are compared exactly, the norms to float32
    rounding: the kernel sums in another order)."""
    from bids_cnm.engine.timeseries import _stored_arrays

    rng = np.random.default_rng(7)
    rows = rng.standard_normal((500, 70)).astype(np.float32)
    rows[3] = 0.0  # a zero row gets scale 1
    n_volumes = [30, 40]
    fused = _stored_arrays(rows, n_volumes, "int16", {})
    scale = np.abs(rows).max(axis=1) / np.float32(32767)
    scale[scale == 0] = 1
    q = np.rint(rows / scale[:, None]).astype(np.int16)
    np.testing.assert_array_equal(fused["data"], q)
    np.testing.assert_array_equal(fused["scale"], scale)
    assert fused["data"].dtype == np.int16 and fused["scale"][3] == 1.0
    deq = q.astype(np.float64) * scale[:, None].astype(np.float64)

    def centred_norm(x):
        return np.sqrt(((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))

    np.testing.assert_allclose(fused["norm"], centred_norm(deq), rtol=3e-7)
    np.testing.assert_allclose(fused["run_norm"], np.stack(
        [centred_norm(deq[:, :30]), centred_norm(deq[:, 30:])], axis=1), rtol=3e-7)


@pytest.mark.parametrize("threads", [1, None])
@pytest.mark.parametrize("dropped", ["both halves", "first half only", "second half only",
                                     "none"])
def test_prepared_copy_is_each_run_zscored_with_invalid_voxels_dropped(tmp_path, dropped,
                                                                       threads):
    """The float32 copy holds, for every voxel finite and varying in every run, each
    run z-scored (population SD) and the runs concatenated, in grid order; the others
    are dropped.  Preparation standardizes the two halves of the voxels (on two threads
    unless limited to one) and closes the gap between them, so voxels are dropped in
    either half, or none."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(11)
    shape, lengths = (6, 5, 4), (17, 23)
    n_vox = int(np.prod(shape))
    runs = [raw_subject(rng, n_vox, n) for n in lengths]
    bad = {"both halves": [3, 40, 70, 101], "first half only": [3, 40, 50, 59],
           "second half only": [65, 100], "none": []}[dropped]
    for k, v in enumerate(bad):  # a NaN, an infinity, a constant run, a constant run
        if k % 4 == 0:
            runs[0][v, 5] = np.nan
        elif k % 4 == 1:
            runs[1][v, 2] = np.inf
        else:
            runs[k % 2][v] = 42.0
    paths = []
    for i, run in enumerate(runs):
        paths.append(str(tmp_path / f"run{i}.nii.gz"))
        nb.Nifti1Image(run.reshape(shape + (-1,)).astype(np.float32),
                       np.eye(4)).to_filename(paths[-1])
    with threadpool_limits(threads):
        subject = open_prepared(prepare_subject(paths, [], tmp_path / "prep"))

    as_stored = [run.astype(np.float32).astype(np.float64) for run in runs]
    valid = np.ones(n_vox, bool)
    valid[bad] = False
    np.testing.assert_array_equal(subject.voxels, np.flatnonzero(valid))
    want = np.concatenate([stats.zscore(run[valid], axis=1) for run in as_stored], axis=1)
    # float32 arithmetic (docs/methods.md): the mean is rounded to float32 before it is
    # subtracted, an error of half its spacing, divided by the SD, in every value
    slack = np.concatenate([np.broadcast_to(
        (np.spacing(np.abs(run[valid].mean(axis=1)).astype(np.float32)) / 2
         / run[valid].std(axis=1))[:, None], (valid.sum(), n))
        for run, n in zip(as_stored, lengths)], axis=1)
    assert (np.abs(subject.data - want) <= slack + 1e-6 * (1 + np.abs(want))).all()
    np.testing.assert_allclose(subject.sd, np.stack([run[valid].std(axis=1)
                                                     for run in as_stored], axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(subject.norm, np.sqrt(lengths[0] + lengths[1]), rtol=1e-6)
    np.testing.assert_allclose(subject.run_norm, np.sqrt(np.broadcast_to(lengths, (
        valid.sum(), 2))), rtol=1e-6)
