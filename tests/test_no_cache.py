"""--no-cache: every BOLD file is decoded once, and the group outputs are the cached run's.

The runs are real (the command line in-process, nipype's Linear plugin, real files);
the decode counter wraps the reader's block iterator, the one place every decode of
a run's data goes through, without changing what it yields.
"""

from __future__ import annotations

import collections
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import SPACE, TINY_SHAPE, write_tiny_connectome

from bids_cnm.cli.run import main
from bids_cnm.engine import bold_reader
from bids_cnm.engine.timeseries import open_prepared, prepare_subject, stream_subject

ENTS = f"task-rest_space-{SPACE}"
SEEDS = ("StudyA", "StudyB", "StudyC", "CtrlX")


def _run(connectome: Path, coordinates: Path, root: Path, *extra: str) -> Path:
    out = root / "out"
    # two batches whatever the machine's cores: the damaged subjects sit where the
    # tests say (second of the first batch, first of the second)
    code = main([str(connectome), str(out), "group", "--coordinates", str(coordinates),
                 "-w", str(root / "work"), "--nipype-plugin", "Linear", "--nprocs", "2",
                 *extra])
    assert code == 0
    return out


@pytest.fixture()
def decodes(monkeypatch) -> collections.Counter:
    """Volumes decoded per BOLD file (counted as the reader yields them)."""
    counts: collections.Counter = collections.Counter()
    original = bold_reader._Blocks.__iter__

    def counting(self):
        for block, n_used, t0 in original(self):
            counts[str(self.path)] += n_used
            yield block, n_used, t0

    monkeypatch.setattr(bold_reader._Blocks, "__iter__", counting)
    return counts


def _volumes(connectome: Path) -> dict[str, int]:
    return {str(p): nb.load(p).shape[3] for p in connectome.rglob("*_bold.nii.gz")}


def _maps(out: Path) -> dict[str, np.ndarray]:
    """Every group map written, by its path (the report and sidecars aside)."""
    return {str(p.relative_to(out)): np.asarray(nb.load(p).dataobj, dtype=np.float64)
            for p in out.rglob("*.nii.gz") if "sub-" not in p.name}


def _assert_same_maps(ref: Path, out: Path, skip: str = "") -> None:
    expected, found = _maps(ref), _maps(out)
    assert set(found) == set(expected)
    for name, value in expected.items():
        if skip and skip in name:
            continue
        # the same arithmetic on other blocks of voxels: equal up to float32 rounding at
        # most (bit for bit with the development VM's OpenBLAS)
        np.testing.assert_allclose(found[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(np.isnan(found[name]), np.isnan(value), err_msg=name)


def test_no_cache_decodes_each_file_once(tiny_connectome, tiny_coordinates, tmp_path,
                                         decodes):
    """A --no-cache group run (degree check on) decodes every run exactly once and writes
    the cached run's maps: seeds' r, z and t, networks, analysis mask, degree map."""
    out = _run(tiny_connectome, tiny_coordinates, tmp_path / "stream", "--no-cache")
    assert dict(decodes) == _volumes(tiny_connectome)  # every volume of every run, once
    assert not list((tmp_path / "stream" / "work").rglob("data.npy"))  # no copy kept
    decodes.clear()
    ref = _run(tiny_connectome, tiny_coordinates, tmp_path / "cached")
    assert dict(decodes) == _volumes(tiny_connectome)  # the cached cold run: once too
    assert f"degree/{ENTS}_stat-degree_boldmap.nii.gz" in _maps(out)
    _assert_same_maps(ref, out)


def _damaged_connectome(root: Path) -> Path:
    """Six subjects whose valid voxels differ inside the brain mask.

    sub-02 (second of the first batch) is constant at the centre of StudyA's first
    sphere: that seed's mean leaves the voxel out in sub-02 only, and the voxel leaves
    the analysis mask after the batch has started; sub-04 (first of the second batch)
    has a NaN at another brain voxel.
    """
    connectome = write_tiny_connectome(root, n_subjects=6, seed=3)
    for label, voxel, value in (("02", (5, 8, 11), "constant"), ("04", (10, 12, 10), "nan")):
        (path,) = (connectome / f"sub-{label}" / "func").glob("*_bold.nii.gz")
        img = nb.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        data[voxel] = 500.0 if value == "constant" else data[voxel]
        if value == "nan":
            data[voxel + (7,)] = np.nan
        nb.Nifti1Image(data, img.affine, img.header).to_filename(path)
    return connectome


def test_no_cache_with_subjects_valid_at_different_voxels(tiny_coordinates, tmp_path,
                                                          decodes):
    connectome = _damaged_connectome(tmp_path / "connectome")
    out = _run(connectome, tiny_coordinates, tmp_path / "stream", "--no-cache")
    assert dict(decodes) == _volumes(connectome)
    ref = _run(connectome, tiny_coordinates, tmp_path / "cached")
    mask = nb.load(out / f"space-{SPACE}_desc-analysis_mask.nii.gz").get_fdata()
    assert mask.shape == TINY_SHAPE
    assert mask[5, 8, 11] == 0 and mask[10, 12, 10] == 0 and mask.sum() > 1000
    # the degree sample is drawn before the data are read (docs/methods.md): from the
    # brain masks' intersection, which here holds two voxels the analysis mask lacks
    _assert_same_maps(ref, out, skip="degree")
    # the StudyA seed keeps its voxel without data in sub-02 (the subject's own mean)
    t = nb.load(out / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz").get_fdata()
    assert np.isfinite(t[mask > 0]).mean() > 0.99


def test_participant_no_cache_decodes_once(tiny_connectome, tiny_coordinates, tmp_path,
                                           decodes):
    """The participant level with --no-cache decodes each run once, in the maps' node, and
    writes the z-maps and valid-voxel mask of the cached run."""
    outs = {}
    for name, extra in (("stream", ["--no-cache"]), ("cached", [])):
        decodes.clear()
        outs[name] = root = tmp_path / name / "out"
        assert main([str(tiny_connectome), str(root), "participant", "--participant-label",
                     "01", "--coordinates", str(tiny_coordinates), "-w",
                     str(tmp_path / name / "work"), "--nipype-plugin", "Linear", *extra]) == 0
        runs = {p: n for p, n in _volumes(tiny_connectome).items() if "sub-01_" in p}
        assert len(runs) == 2 and dict(decodes) == runs
    written = sorted(outs["cached"].rglob("sub-01_*.nii.gz"))
    assert len(written) == len(SEEDS) + 1
    for path in written:
        np.testing.assert_allclose(
            nb.load(outs["stream"] / path.relative_to(outs["cached"])).get_fdata(),
            nb.load(path).get_fdata(), rtol=1e-6, atol=1e-6, err_msg=path.name)


def test_no_cache_without_brain_masks_and_a_second_cohort(tiny_coordinates, tmp_path):
    """Without brain masks (the targets are each batch's first subject's valid voxels, the
    degree sample is drawn from the first run's non-zero voxels) and with a second pass
    over a cohort (--compare-participant-filter), the outputs are still the cached run's,
    the degree map included."""
    connectome = write_tiny_connectome(tmp_path / "connectome", n_subjects=6, seed=5,
                                       with_masks=False)
    extra = ["--compare-participant-filter", "group=IGE"]
    out = _run(connectome, tiny_coordinates, tmp_path / "stream", "--no-cache", *extra)
    ref = _run(connectome, tiny_coordinates, tmp_path / "cached", *extra)
    assert any("connectomeIGE" in name for name in _maps(out))
    assert list((tmp_path / "stream" / "work").glob("sample_pool_*.nii.gz"))
    _assert_same_maps(ref, out)


def test_no_cache_with_the_demo_plan(tmp_path, decodes):
    """The analysis plan's extra seeds and ROI-to-ROI node values (computed per subject in
    the same pass) are those of the cached run, each run decoded once."""
    import pandas as pd

    from bids_cnm.demo.data import make_demo_dataset
    from bids_cnm.demo.plan import make_demo_plan

    demo = make_demo_dataset(tmp_path / "demo", n_subjects=4, n_volumes=40)
    plan = make_demo_plan(tmp_path / "demo")
    extra = ["--analysis", str(plan)]
    out = _run(demo.bids_dir, demo.coordinates, tmp_path / "stream", "--no-cache", *extra)
    assert dict(decodes) == _volumes(demo.bids_dir)
    ref = _run(demo.bids_dir, demo.coordinates, tmp_path / "cached", *extra)
    _assert_same_maps(ref, out)
    (values,) = ref.glob("validation/*_desc-roitoroi_values.tsv")
    expected = pd.read_csv(values, sep="\t")
    found = pd.read_csv(out / values.relative_to(ref), sep="\t")
    pd.testing.assert_frame_equal(found, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_stream_subject_holds_the_prepared_copy(tiny_connectome, tmp_path, dtype):
    """A subject decoded in memory holds exactly the arrays a prepared copy stores."""
    func = tiny_connectome / "sub-01" / "func"  # two runs
    bold = sorted(str(p) for p in func.glob("*_bold.nii.gz"))
    masks = sorted(str(p) for p in func.glob("*_desc-brain_mask.nii.gz"))
    stored = open_prepared(prepare_subject(bold, masks, tmp_path / "prepared", dtype=dtype))
    streamed = stream_subject(bold, masks, dtype)
    for name in ("data", "scale", "norm", "run_norm", "sd", "voxels"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(stored, name), name)
    assert streamed.runs == stored.runs and streamed.meta["shape"] == stored.meta["shape"]
