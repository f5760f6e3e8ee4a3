"""The connectivity engine against an independent per-seed computation with scipy."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from scipy import stats

from bids_cnm.engine import connectivity
from bids_cnm.engine.seeds import make_seeds
from bids_cnm.engine.timeseries import open_prepared, prepare_subject, valid_mask
from bids_cnm.io.connectome import index_connectome, support_mask
from bids_cnm.io.coordinates import read_coordinates


def _pearson(voxels: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Pearson r of every row of ``voxels`` with ``seed`` (textbook formula, float64)."""
    vc = voxels - voxels.mean(axis=1, keepdims=True)
    sc = seed - seed.mean()
    return vc @ sc / (np.linalg.norm(vc, axis=1) * np.linalg.norm(sc))


def reference_zmaps(subject, seed_masks: list[np.ndarray], target: np.ndarray,
                    signal: str = "mean", runs: str = "average") -> np.ndarray:
    """Straightforward per-seed computation from the raw NIfTI runs, from the definitions.

    Seed signal: ``mean`` = mean raw BOLD of the seed's voxels; ``standardized`` = mean of
    the voxels' z-scored series.  Runs: ``average`` = Fisher z of each run's Pearson r,
    averaged; ``concatenate`` = one Pearson r over the concatenated z-scored runs (the
    seed's course z-scored in each run too).  Returns Fisher z (V_target, K).
    """
    raw = [np.asarray(nb.load(path).dataobj, dtype=np.float64) for path in subject.bold]
    scored = [stats.zscore(data, axis=3) for data in raw]

    def seed_course(q, mask):
        return stats.zscore((raw[q] if signal == "mean" else scored[q])[mask].mean(axis=0))

    def fisher(r):
        return np.arctanh(np.clip(r, -connectivity.R_MAX, connectivity.R_MAX))

    out = np.empty((int(target.sum()), len(seed_masks)))
    for k, mask in enumerate(seed_masks):
        if runs == "average":
            out[:, k] = np.mean([fisher(_pearson(raw[q][target], seed_course(q, mask)))
                                 for q in range(len(raw))], axis=0)
        else:
            voxels = np.concatenate([x[target] for x in scored], axis=1)
            seed = np.concatenate([seed_course(q, mask) for q in range(len(raw))])
            out[:, k] = fisher(_pearson(voxels, seed))
    return out


@pytest.mark.parametrize(
    "dtype,signal,runs",
    [("float32", "mean", "average"), ("float32", "standardized", "average"),
     ("float32", "mean", "concatenate"), ("float32", "standardized", "concatenate"),
     ("int16", "mean", "average")],
)
def test_tmaps_match_independent_reference(
    tiny_connectome, tiny_coordinates, tmp_path, dtype, signal, runs
):
    connectome = index_connectome(tiny_connectome)
    assert len(connectome.subjects[0].bold) == 2  # one subject has two runs
    seeds = make_seeds(
        read_coordinates(tiny_coordinates), connectome.shape, connectome.affine,
        support_mask(connectome), diameter=9.0,
    )
    prepared = [
        open_prepared(prepare_subject(s.bold, s.masks, tmp_path / s.label, dtype=dtype))
        for s in connectome.subjects
    ]
    target = np.logical_and.reduce([valid_mask(p) for p in prepared])
    voxels = np.flatnonzero(target.ravel())
    running = connectivity.RunningStats.zeros(len(voxels), len(seeds))
    for subject in prepared:
        connectivity.accumulate_subject(
            running, subject, seeds, connectivity.rows_of(subject.voxels, voxels),
            signal=signal, runs=runs,
        )
    ours = running.finalize()

    masks = [seeds.mask(k) for k in range(len(seeds))]
    ref_z = np.stack([reference_zmaps(s, masks, target, signal, runs)
                      for s in connectome.subjects])
    ref_t = stats.ttest_1samp(ref_z, 0.0, axis=0).statistic
    finite = np.isfinite(ref_t)
    assert finite.mean() > 0.99
    if dtype == "float32":  # exact storage: agreement to float32 rounding
        np.testing.assert_allclose(ours["t"][finite], ref_t[finite], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(ours["z"], ref_z.mean(axis=0), atol=2e-6)
        np.testing.assert_allclose(ours["r"], np.tanh(ref_z).mean(axis=0), atol=1e-6)
    else:  # int16 storage: the documented quantization bound (docs/methods.md)
        np.testing.assert_allclose(ours["r"], np.tanh(ref_z).mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(ours["t"][finite], ref_t[finite], rtol=1e-3, atol=1e-3)


def test_streaming_equals_batched_merge(tiny_connectome, tiny_coordinates, tmp_path):
    """Merging per-batch sums gives the same t as one pass over all subjects."""
    connectome = index_connectome(tiny_connectome)
    seeds = make_seeds(read_coordinates(tiny_coordinates), connectome.shape, connectome.affine)
    prepared = [
        open_prepared(prepare_subject(s.bold, s.masks, tmp_path / s.label))
        for s in connectome.subjects
    ]
    voxels = prepared[0].voxels
    one = connectivity.RunningStats.zeros(len(voxels), len(seeds))
    parts = [connectivity.RunningStats.zeros(len(voxels), len(seeds)) for _ in range(2)]
    for i, subject in enumerate(prepared):
        rows = connectivity.rows_of(subject.voxels, voxels)
        connectivity.accumulate_subject(one, subject, seeds, rows)
        connectivity.accumulate_subject(parts[i % 2], subject, seeds, rows)
    merged = parts[0].merge(parts[1]).finalize()
    np.testing.assert_allclose(merged["t"], one.finalize()["t"], rtol=1e-10)


def test_uncentred_data_is_centred(tmp_path):
    """Voxels with a large mean: the correlation is still the centred Pearson r."""
    rng = np.random.default_rng(1)
    shape = (4, 4, 4)
    t = 50
    data = rng.standard_normal(shape + (t,)).astype(np.float32) + 1000.0
    data[1, 1, 1] = data[0, 0, 0] * 2 + 5  # perfectly correlated with the seed voxel
    data[2, 2, 2] = -data[0, 0, 0] + 3000  # perfectly anticorrelated
    path = tmp_path / "bold.nii.gz"
    nb.Nifti1Image(data, np.eye(4)).to_filename(path)
    subject = open_prepared(prepare_subject([str(path)], [], tmp_path / "prep", "float32"))
    import pandas as pd

    seeds = make_seeds(
        pd.DataFrame({"study": ["s"], "x": [0.0], "y": [0.0], "z": [0.0], "set": ["primary"],
                      "source_row": [2]}),
        shape, np.eye(4), diameter=0.5,
    )
    z = connectivity.subject_zmaps(subject, seeds)[:, 0].reshape(-1)
    grid = np.zeros(np.prod(shape))
    grid[subject.voxels] = z
    grid = grid.reshape(shape)
    limit = np.arctanh(connectivity.R_MAX)
    assert grid[1, 1, 1] == pytest.approx(limit, rel=1e-3)
    assert grid[2, 2, 2] == pytest.approx(-limit, rel=1e-3)
    expected = np.corrcoef(data[0, 0, 0], data[3, 3, 3])[0, 1]
    assert grid[3, 3, 3] == pytest.approx(np.arctanh(expected), abs=1e-5)


def test_fisher_z_matches_arctanh():
    r = np.linspace(-connectivity.R_MAX, connectivity.R_MAX, 10001, dtype=np.float32)
    np.testing.assert_allclose(connectivity.fisher_z(r), np.arctanh(r.astype(np.float64)),
                               atol=2e-5, rtol=1e-5)


def test_rows_of_rejects_missing_voxels():
    with pytest.raises(ValueError, match="subset"):
        connectivity.rows_of(np.array([1, 2, 3]), np.array([2, 4]))
    assert connectivity.rows_of(np.array([1, 2]), np.array([1, 2])) is None
    np.testing.assert_array_equal(
        connectivity.rows_of(np.array([1, 2, 5, 9]), np.array([2, 9])), [1, 3]
    )


def test_node_values_equal_mean_of_zmaps(tiny_connectome, tiny_coordinates, tmp_path):
    from bids_cnm.engine.nodes import node_zvalues
    from bids_cnm.engine.seeds import sphere_voxels

    connectome = index_connectome(tiny_connectome)
    seeds = make_seeds(read_coordinates(tiny_coordinates), connectome.shape, connectome.affine)
    s = connectome.subjects[1]
    subject = open_prepared(prepare_subject(s.bold, s.masks, tmp_path / s.label))
    nodes = [sphere_voxels(c, 10.0, connectome.shape, connectome.affine)
             for c in ([-20, -24, 12], [20, -24, 12], [0, 0, 0])]
    # a node partly outside the data: its out-of-mask voxels are left out of the mean
    nodes.append(np.concatenate([nodes[2], [0]]))
    values = node_zvalues(subject, seeds, nodes)
    zmaps = connectivity.subject_zmaps(subject, seeds)
    for n, vox in enumerate(nodes):
        rows = np.flatnonzero(np.isin(subject.voxels, vox))
        np.testing.assert_allclose(values[:, n], zmaps[rows].mean(axis=0), atol=1e-5)
    assert values[0, 0] > 0.3 and values[0, 1] < -0.3  # network A node +, network B node -


def test_seed_weights_average_the_seed_voxels_with_data():
    import pandas as pd

    from bids_cnm.engine.seeds import Seeds
    from bids_cnm.errors import InputDataError

    table = pd.DataFrame({"id": ["a", "b"], "study": ["A", "B"], "set": ["primary"] * 2})
    seeds = Seeds(table, [np.array([3, 5, 9]), np.array([5, 40])], (4, 4, 4), np.eye(4), 6.0)
    positions = np.array([1, 3, 5, 7, 40])  # voxel 9 has no data in this subject
    dense = seeds.weights(positions, len(positions)).toarray()
    np.testing.assert_allclose(dense, [[0, 0.5, 0.5, 0, 0], [0, 0, 0.5, 0, 0.5]])
    with pytest.raises(InputDataError, match="seed 'b'.*no voxel with valid data"):
        seeds.weights(np.array([1, 3]), 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finalize_is_the_numpy_formula(dtype):
    """The one-pass finalize gives numpy's float64 formula to the bit (then rounded to
    ``dtype``), through rounding-negative sums of squares, zero spread and NaN."""
    rng = np.random.default_rng(5)
    shape, n = (300, 7), 12
    sum_r = rng.normal(0, 3, shape)
    mean_z = rng.normal(0, 0.3, shape)
    m2_z = rng.gamma(2.0, 0.5, shape)
    m2_z[0, :3] = [-1e-18, 0.0, 0.0]  # rounding below zero; no spread at all
    mean_z[0, 2] = 0.0  # no spread and a zero mean
    m2_z[1, 0], mean_z[1, 1] = np.nan, np.nan
    m2_z[2, 0], mean_z[2, 0] = 0.0, np.nan  # a zero SD beside a NaN mean
    stats = connectivity.RunningStats(n, sum_r, mean_z, m2_z)
    got = stats.finalize(dtype)

    sd = np.sqrt(np.maximum(m2_z, 0.0) / (n - 1))
    undefined = sd <= 1e-12 * np.abs(mean_z)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean_z / (sd / np.sqrt(n))
    t[undefined] = np.nan
    np.testing.assert_array_equal(got["undefined"], undefined)
    for name, want in (("r", sum_r / n), ("z", mean_z), ("t", t)):
        assert got[name].dtype == dtype
        np.testing.assert_array_equal(got[name], want.astype(dtype))
    assert got["undefined"][0, :3].tolist() == [True, True, True]


def test_saved_moments_round_trip_and_older_files_load(tmp_path):
    """Moments saved as a mapped .npy (and the subject count beside it) come back equal;
    merging into the loaded copy leaves the file as written; sums saved by np.savez in a
    work folder of an earlier version still load."""
    rng = np.random.default_rng(9)
    parts = [connectivity.RunningStats(n, rng.normal(size=(40, 3)), rng.normal(size=(40, 3)),
                                       rng.gamma(2.0, size=(40, 3))) for n in (4, 7)]
    path = parts[0].save(tmp_path / "stats.npy")
    written = path.read_bytes()
    loaded = connectivity.RunningStats.load(path)
    assert loaded.n == 4
    for name in ("sum_r", "mean_z", "m2_z"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(parts[0], name))
    merged = loaded.merge(connectivity.RunningStats.load(parts[1].save(tmp_path / "b.npy")))
    assert merged.n == 11 and path.read_bytes() == written
    # Chan's merge of the two, written out here from its definition
    n_a, n_b = 4, 7
    delta = parts[1].mean_z - parts[0].mean_z
    np.testing.assert_allclose(merged.mean_z, parts[0].mean_z + delta * n_b / 11)
    np.testing.assert_allclose(merged.m2_z, parts[0].m2_z + parts[1].m2_z
                               + delta ** 2 * n_a * n_b / 11)
    older = tmp_path / "old.npz"
    np.savez(older, n=4, sum_r=parts[0].sum_r, mean_z=parts[0].mean_z, m2_z=parts[0].m2_z)
    np.testing.assert_array_equal(connectivity.RunningStats.load(older).m2_z, parts[0].m2_z)
    # saved again where a reader has the file mapped (a node run again): the reader keeps
    # the pages it mapped, the new file holds the new sums, no temporary is left
    mapped = connectivity.RunningStats.load(path)
    parts[1].save(path)
    np.testing.assert_array_equal(mapped.m2_z, parts[0].m2_z)
    np.testing.assert_array_equal(connectivity.RunningStats.load(path).m2_z, parts[1].m2_z)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_saved_group_results_round_trip_mapped_and_older_files_load(tiny_connectome,
                                                                   tiny_coordinates, tmp_path):
    """The group results come back equal, their maps mapped from the .npy beside the .npz
    (copy-on-write: a consumer changing them leaves the file as written); results written
    whole into the .npz by an earlier version still load."""
    from bids_cnm.engine.group_results import GroupResults
    from bids_cnm.engine.seeds import save_seeds

    connectome = index_connectome(tiny_connectome)
    seeds = make_seeds(read_coordinates(tiny_coordinates), connectome.shape, connectome.affine)
    seeds_file = save_seeds(seeds, str(tmp_path / "seeds.npz"))
    rng = np.random.default_rng(4)
    voxels = np.sort(rng.choice(int(np.prod(connectome.shape)), 50, replace=False))
    r, z, t = (rng.normal(size=(50, len(seeds))).astype(np.float32) for _ in range(3))
    t[3, 1] = np.nan
    results = GroupResults(seeds, voxels, r, z, t, n_subjects=8,
                           node_values=rng.normal(size=(8, len(seeds), 2)),
                           node_table=[{"name": "a"}, {"name": "b"}], subjects=list("abcdefgh"))
    path = results.save(tmp_path / "results.npz", seeds_file)
    maps = tmp_path / "results_maps.npy"
    written = maps.read_bytes()
    loaded = GroupResults.load(path)
    assert isinstance(loaded.t, np.memmap)
    for name in ("r", "z", "t", "voxels", "node_values"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(results, name))
    assert (loaded.n_subjects, loaded.node_table, loaded.subjects) == (
        8, results.node_table, results.subjects)
    assert loaded.seeds.ids == seeds.ids
    loaded.t[:] = 0.0
    assert maps.read_bytes() == written
    older = tmp_path / "older.npz"
    np.savez(older, seeds_file=seeds_file, voxels=voxels, r=r, z=z, t=t, n_subjects=8,
             node_table="[]", subjects=np.asarray([], dtype=str))
    np.testing.assert_array_equal(GroupResults.load(older).t, t)


def test_batches_merged_and_finalized_block_by_block(monkeypatch):
    """merge_and_finalize gives, to the bit, each batch merged in turn into the first
    (Chan's update) and then the t-test, in blocks of rows (the last one partial), with
    each batch's own rows of the maps and an empty batch; and what scipy gives from the
    subjects' z themselves."""
    import warnings

    monkeypatch.setattr(connectivity, "MERGE_ROWS", 7)
    rng = np.random.default_rng(11)
    n_voxels, k = 23, 4
    z = rng.normal(0.2, 0.5, (10, n_voxels, k))
    z[:, 5, 1] = 0.4  # the same z in every subject: t undefined
    groups = [range(4), range(4, 4), range(4, 9), range(9, 10)]
    batches, rows = [], []
    for b, members in enumerate(groups):
        # batch b's sums cover the maps' voxels and b extra ones, in its own order
        order = rng.permutation(n_voxels + b)
        part = connectivity.RunningStats.zeros(n_voxels + b, k)
        for s in members:
            values = np.zeros((n_voxels + b, k))
            values[np.argsort(order)[:n_voxels]] = z[s]
            part.add_block(slice(None), np.tanh(values), values)
            part.n += 1
        batches.append(part)
        rows.append(np.argsort(order)[:n_voxels])
    n, got = connectivity.merge_and_finalize(batches, rows, np.float64)

    merged = batches[0].select(rows[0])  # a copy (rows are an index array)
    for batch, picked in zip(batches[1:], rows[1:]):
        merged.merge(batch.select(picked))
    want = merged.finalize(np.float64)
    assert n == merged.n == 10
    for name in ("r", "z", "t", "undefined"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # batches over the maps' voxels themselves (rows None: the usual case)
    whole = [connectivity.RunningStats(b.n, *(a[picked] for a in (b.sum_r, b.mean_z, b.m2_z)))
             for b, picked in zip(batches, rows)]
    n_whole, same = connectivity.merge_and_finalize(whole, None, np.float64)
    assert n_whole == 10
    for name in ("r", "z", "t", "undefined"):
        np.testing.assert_array_equal(same[name], want[name], err_msg=name)
    with pytest.raises(ValueError, match="do not match"):
        connectivity.merge_and_finalize([whole[0], whole[2].select(np.arange(5))])
    with warnings.catch_warnings():  # scipy warns of the constant voxel's cancellation
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_1samp(z, 0.0).statistic
    defined = ~got["undefined"]
    assert got["undefined"][5, 1] and defined.sum() == n_voxels * k - 1
    np.testing.assert_allclose(got["t"][defined], t[defined], rtol=1e-5)
    np.testing.assert_allclose(got["z"], z.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["r"], np.tanh(z).mean(axis=0), rtol=1e-6, atol=1e-7)
