"""Connectomes as users hold them (GSP1000, Lead-DBS, lacuna HDF5, .npy) imported as BIDS.

Each test writes a small connectome in the format itself (nibabel, scipy.io.savemat,
h5py, numpy), imports it, and checks that what bids_cnm reads equals the same data
written directly as BIDS derivatives: the indexed grid and subjects, every run's
values, the masks; the ``slow`` test runs the group level on both and compares the
t-maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import nibabel as nb
import numpy as np
import pytest
import scipy.io
from conftest import TINY_AFFINE, TINY_COORDS, TINY_SHAPE, tiny_mask, write_coordinates

from bids_cnm.cli.connectome import main as connectome_main
from bids_cnm.errors import EX_DATAERR, EX_NOINPUT, EX_USAGE
from bids_cnm.io.connectome import index_connectome, support_mask

SPACE = "MNI152NLin6Asym"
GSP_TAIL = "_rest_skip4_stc_mc_bp_0.0001_0.08_resid_FS1mm_MNI1mm_MNI2mm_sm7_finalmask.nii.gz"
N_VOLUMES = 24


def make_runs(n_subjects=3, n_runs=2, seed=1) -> dict[str, list[np.ndarray]]:
    """BOLD-like float32 runs (shared latent + noise), zero outside the tiny brain."""
    rng = np.random.default_rng(seed)
    mask = tiny_mask()
    loading = rng.standard_normal(TINY_SHAPE)
    offset = rng.uniform(200, 800, TINY_SHAPE)
    runs = {}
    for s in range(n_subjects):
        runs[f"{s + 1:04d}"] = [
            ((offset[..., None] + 10 * loading[..., None] * rng.standard_normal(N_VOLUMES)
              + 5 * rng.standard_normal(TINY_SHAPE + (N_VOLUMES,))) * mask[..., None]
             ).astype(np.float32)
            for _ in range(n_runs)
        ]
    return runs


def write_bids(root: Path, runs: dict[str, list[np.ndarray]]) -> Path:
    """The same data written directly as BIDS derivatives (the reference)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "ref", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    for label, data in runs.items():
        func = root / f"sub-{label}" / "func"
        func.mkdir(parents=True)
        for r, run in enumerate(data, start=1):
            ent = f"sub-{label}_task-rest" + (f"_run-{r}" if len(data) > 1 else "")
            nb.Nifti1Image(run, TINY_AFFINE).to_filename(
                func / f"{ent}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz")
        varies = np.logical_and.reduce([r.max(-1) > r.min(-1) for r in data])
        nb.Nifti1Image(varies.astype(np.uint8), TINY_AFFINE).to_filename(
            func / f"sub-{label}_task-rest_space-{SPACE}_res-2_desc-brain_mask.nii.gz")
    return root


def write_gsp(root: Path, runs) -> Path:
    for label, data in runs.items():
        func = root / f"sub-{label}" / "func"
        func.mkdir(parents=True)
        for r, run in enumerate(data, start=1):
            nb.Nifti1Image(run, TINY_AFFINE).to_filename(
                func / f"sub-{label}_bld{r:03d}{GSP_TAIL}")
    return root


def write_leaddbs(root: Path, runs, formatversion: float | None = None,
                  time_major: bool = False, kind: str = "fMRI_timecourses") -> Path:
    """dataset_info.json + dataset_volsurf.mat (vol) + vol/*.mat with gmtc.

    gmtc is voxels x time as MATLAB sees it (Lead-DBS's format version 1), or time x
    voxels with ``time_major`` (later format versions); ``formatversion`` is written
    into dataset_info.json when given.
    """
    (root / "vol").mkdir(parents=True)
    mask = tiny_mask()
    outidx = np.flatnonzero(mask.ravel(order="F")) + 1  # MATLAB find(): 1-based, column-major
    ijk = np.unravel_index(outidx - 1, TINY_SHAPE, order="F")
    mat = TINY_AFFINE.copy()
    mat[:3, 3] -= TINY_AFFINE[:3, :3].sum(axis=1)  # SPM's mat takes 1-based voxel indices
    sub_ids = np.empty(len(runs), dtype=object)
    for i, (label, data) in enumerate(runs.items()):
        files = [f"sub-{label}_run{r + 1}.mat" for r in range(len(data))]
        sub_ids[i] = np.array([f"sub-{label}"] + files, dtype=object)
        for r, (name, run) in enumerate(zip(files, data)):
            gmtc = run[ijk]  # (V, T) in outidx order
            if time_major:
                gmtc = np.ascontiguousarray(gmtc.T)
            if i == 0 and r == 1:  # MATLAB -v7.3: HDF5, arrays seen transposed
                with h5py.File(root / "vol" / name, "w", userblock_size=512) as hf:
                    hf["gmtc"] = gmtc.T
                with open(root / "vol" / name, "r+b") as f:  # MATLAB's 128-byte header
                    f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
            else:
                scipy.io.savemat(root / "vol" / name, {"gmtc": gmtc})
    scipy.io.savemat(root / "dataset_volsurf.mat", {"vol": {
        "outidx": outidx.astype(float), "space": {"dim": np.array(TINY_SHAPE, float),
                                                  "mat": mat}, "subIDs": sub_ids}})
    info = {"name": "tiny", "type": kind, "subsets": [], "tr": 2.0}
    if formatversion is not None:
        info["formatversion"] = formatversion
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def write_lacuna(path: Path, runs) -> Path:
    """One HDF5 file: timeseries (S, T, V) over voxels listed in a shuffled order."""
    mask = tiny_mask()
    ijk = np.array(np.nonzero(mask)).T
    ijk = ijk[np.random.default_rng(3).permutation(len(ijk))]
    series = np.stack([data[0][tuple(ijk.T)].T for data in runs.values()])
    with h5py.File(path, "w") as hf:
        hf["timeseries"] = series.astype(np.float32)
        hf["mask_indices"] = ijk
        hf["mask_affine"] = TINY_AFFINE
        hf.attrs["mask_shape"] = TINY_SHAPE
        hf["subject_ids"] = np.array(list(runs), dtype="S")
    return path


def write_npy(root: Path, runs) -> Path:
    root.mkdir(parents=True)
    mask = tiny_mask()
    for label, data in runs.items():
        np.save(root / f"{label}.npy", data[0][mask].T.astype(np.float16))  # time x voxels
        np.save(root / f"{label}_norms.npy", np.ones(int(mask.sum())))  # skipped
    nb.Nifti1Image(mask.astype(np.uint8), TINY_AFFINE).to_filename(root / "mask.nii.gz")
    return root


def run_import(*args) -> int:
    return connectome_main(["import"] + [str(a) for a in args])


def assert_same_as_reference(dest: Path, ref: Path) -> None:
    """What bids_cnm reads from DEST equals the reference: grid, subjects, runs, masks."""
    got, want = index_connectome(dest), index_connectome(ref)
    assert got.labels == want.labels and got.shape == want.shape
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-6)
    assert (got.space, got.res, got.task) == (want.space, want.res, want.task)
    for a, b in zip(got.subjects, want.subjects):
        assert len(a.bold) == len(b.bold) and len(a.masks) == len(b.masks) == 1
        for pa, pb in zip(a.bold, b.bold):
            np.testing.assert_array_equal(nb.load(pa).get_fdata(dtype=np.float32),
                                          nb.load(pb).get_fdata(dtype=np.float32))
        np.testing.assert_array_equal(nb.load(a.masks[0]).get_fdata() > 0,
                                      nb.load(b.masks[0]).get_fdata() > 0)
    np.testing.assert_array_equal(support_mask(got), support_mask(want))


@pytest.fixture(scope="module")
def two_run_data():
    return make_runs(n_runs=2)


@pytest.fixture(scope="module")
def one_run_data():
    """Single-run data already rounded to float16 (the npy format's storage)."""
    runs = make_runs(n_runs=1, seed=2)
    return {k: [v[0].astype(np.float16).astype(np.float32)] for k, v in runs.items()}


def test_gsp1000_links_runs_and_derives_mask(tmp_path, two_run_data):
    src = write_gsp(tmp_path / "gsp", two_run_data)
    table = tmp_path / "demo.csv"
    table.write_text("participant_id,age\nsub-0002,31\nsub-0001,22\nsub-9999,40\n")
    dest = tmp_path / "bids"
    assert run_import("gsp1000", src, dest, "--participants", table) == 0
    assert_same_as_reference(dest, write_bids(tmp_path / "ref", two_run_data))
    bold = sorted((dest / "sub-0001" / "func").glob("*_bold.nii.gz"))
    assert [p.name for p in bold] == [
        f"sub-0001_task-rest_run-{r}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz" for r in (1, 2)]
    assert all(p.is_symlink() for p in bold)
    assert bold[0].resolve() == (src / "sub-0001" / "func" / f"sub-0001_bld001{GSP_TAIL}")
    sidecar = json.loads(bold[0].with_name(bold[0].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["RepetitionTime"] == 3.0 and sidecar["SkullStripped"] is True
    assert "Resolution" in sidecar
    description = json.loads((dest / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["SourceDatasets"][0]["DOI"] == "doi:10.7910/DVN/ILXIKS"
    participants = (dest / "participants.tsv").read_text().splitlines()
    assert participants == ["participant_id\tage", "sub-0001\t22", "sub-0002\t31"]
    assert not any(p.name.startswith(".") for p in dest.iterdir())  # no staging left
    # never written into the source
    assert sorted(p.name for p in src.iterdir()) == [f"sub-{k}" for k in two_run_data]


def test_gsp1000_link_modes_and_rerun_skips(tmp_path, two_run_data, capsys):
    src = write_gsp(tmp_path / "gsp", two_run_data)
    for mode in ("hardlink", "copy"):
        dest = tmp_path / mode
        assert run_import("gsp1000", src, dest, "--link", mode) == 0
        bold = next((dest / "sub-0001" / "func").glob("*run-1*_bold.nii.gz"))
        assert not bold.is_symlink()
        same_inode = bold.stat().st_ino == next(
            (src / "sub-0001" / "func").glob("*bld001*")).stat().st_ino
        assert same_inode == (mode == "hardlink")
    capsys.readouterr()
    # a re-run skips finished subjects; a removed one is imported again
    dest = tmp_path / "copy"
    os.rename(dest / "sub-0002", tmp_path / "gone")
    assert run_import("gsp1000", src, dest, "--link", "copy") == 0
    assert "1 subject(s) imported, 2 already there" in capsys.readouterr().out
    assert (dest / "sub-0002").is_dir()


def test_leaddbs_converts_mat_runs(tmp_path, two_run_data):
    src = write_leaddbs(tmp_path / "GSP 1000 (Yeo 2011)", two_run_data)
    dest = tmp_path / "bids"
    assert run_import("leaddbs", src, dest) == 0
    assert_same_as_reference(dest, write_bids(tmp_path / "ref", two_run_data))
    sidecar = next((dest / "sub-0001" / "func").glob("*run-1*_bold.json"))
    assert json.loads(sidecar.read_text())["RepetitionTime"] == 2.0  # from dataset_info.json


@pytest.mark.parametrize("formatversion", [1, 2])
def test_leaddbs_gmtc_orientation_follows_formatversion(tmp_path, two_run_data, formatversion):
    """Lead-DBS reads gmtc(voxels, :) in format version 1 and gmtc(:, voxels) after it
    (cs_fmri_conseed_matrix.m): both import to the same data (v5 and v7.3 run files)."""
    src = write_leaddbs(tmp_path / "lead", two_run_data, formatversion=formatversion,
                        time_major=formatversion > 1)
    dest = tmp_path / "bids"
    assert run_import("leaddbs", src, dest) == 0
    assert_same_as_reference(dest, write_bids(tmp_path / "ref", two_run_data))


def test_leaddbs_orientation_is_not_guessed(tmp_path, two_run_data, capsys):
    """A time x voxels gmtc in a format-1 connectome is refused, naming the file."""
    data = dict(list(two_run_data.items())[:2])
    src = write_leaddbs(tmp_path / "lead", data, time_major=True)
    code, err = error_of(capsys, "leaddbs", src, tmp_path / "o")
    assert code == EX_DATAERR and "sub-0001_run1.mat" in err and "formatversion 1" in err
    assert not list((tmp_path / "o").rglob("*_bold.nii.gz"))


def test_leaddbs_matrix_connectome_refused(tmp_path, two_run_data, capsys):
    """type fMRI_matrix (precomputed correlations) has no time courses to import."""
    src = write_leaddbs(tmp_path / "lead", dict(list(two_run_data.items())[:1]),
                        kind="fMRI_matrix")
    code, err = error_of(capsys, "leaddbs", src, tmp_path / "o")
    assert code == EX_DATAERR and "dataset_info.json" in err and "fMRI_matrix" in err


def test_lacuna_hdf5_converts(tmp_path, one_run_data):
    src = write_lacuna(tmp_path / "conn.h5", one_run_data)
    dest = tmp_path / "bids"
    assert run_import("lacuna-hdf5", src, dest, "--repetition-time", "0.8") == 0
    ref = write_bids(tmp_path / "ref", one_run_data)
    assert_same_as_reference(dest, ref)


def test_npy_float16_converts(tmp_path, one_run_data):
    src = write_npy(tmp_path / "npy", one_run_data)
    dest = tmp_path / "bids"
    assert run_import("npy", src, dest, "--mask", src / "mask.nii.gz",
                      "--repetition-time", "2") == 0
    assert sorted(p.name for p in dest.glob("sub-*")) == [f"sub-{k}" for k in one_run_data]
    assert_same_as_reference(dest, write_bids(tmp_path / "ref", one_run_data))


def error_of(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = run_import(*args)
    return code, capsys.readouterr().err


def test_import_errors_name_the_file(tmp_path, two_run_data, capsys):
    data = dict(list(two_run_data.items())[:2])
    # grid mismatch across subjects names both files
    src = write_gsp(tmp_path / "gsp", data)
    odd = next((src / "sub-0002" / "func").glob("*bld002*"))
    nb.Nifti1Image(np.zeros((4, 4, 4, 5), np.float32), TINY_AFFINE).to_filename(odd)
    code, err = error_of(capsys, "gsp1000", src, tmp_path / "o1")
    assert code == EX_DATAERR and "grid mismatch" in err and odd.name in err
    assert "sub-0001_bld001" in err
    # a missing run
    odd.unlink()
    code, err = error_of(capsys, "gsp1000", src, tmp_path / "o2")
    assert code == EX_NOINPUT and "sub-0002" in err and "bld002" in err
    # DEST inside SOURCE
    code, err = error_of(capsys, "gsp1000", src, src / "bids")
    assert code == EX_USAGE and "inside SOURCE" in err
    # a .mat without gmtc
    lead = write_leaddbs(tmp_path / "lead", data)
    bad = lead / "vol" / "sub-0002_run1.mat"
    scipy.io.savemat(bad, {"tc": np.zeros((3, 3))})
    code, err = error_of(capsys, "leaddbs", lead, tmp_path / "o3")
    assert code == EX_DATAERR and str(bad) in err and "gmtc" in err
    # HDF5 without mask_indices
    h5 = tmp_path / "bad.h5"
    with h5py.File(h5, "w") as hf:
        hf["timeseries"] = np.zeros((1, 5, 3), np.float32)
        hf["mask_affine"] = np.eye(4)
    code, err = error_of(capsys, "lacuna-hdf5", h5, tmp_path / "o4", "--repetition-time", "2")
    assert code == EX_DATAERR and "bad.h5" in err and "mask_indices" in err
    # npy without --mask, and a source without TR
    (tmp_path / "arrays").mkdir()
    code, err = error_of(capsys, "npy", tmp_path / "arrays", tmp_path / "o5",
                         "--repetition-time", "2")
    assert code == EX_USAGE and "--mask" in err
    h5 = write_lacuna(tmp_path / "ok.h5", {k: v[:1] for k, v in data.items()})
    code, err = error_of(capsys, "lacuna-hdf5", h5, tmp_path / "o6")
    assert code == EX_USAGE and "--repetition-time" in err


def group_tmaps(bids: Path, out: Path, coords: Path) -> dict[str, np.ndarray]:
    from bids_cnm.cli.run import main as run_main

    assert run_main([str(bids), str(out), "group", "--coordinates", str(coords), "-w",
                     str(out.parent / (out.name + "_work")), "--nipype-plugin", "Linear"]) == 0
    return {p.name: nb.load(p).get_fdata() for p in out.glob("seeds/*stat-t_boldmap.nii.gz")}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gsp1000", "leaddbs", "lacuna-hdf5", "npy"])
def test_group_tmaps_equal_bids(fmt, tmp_path, two_run_data, one_run_data):
    """The group t-maps of an imported connectome equal those of the same data as BIDS."""
    coords = write_coordinates(tmp_path / "coords.tsv", TINY_COORDS)
    data = two_run_data if fmt in ("gsp1000", "leaddbs") else one_run_data
    src = {"gsp1000": lambda: write_gsp(tmp_path / "src", data),
           "leaddbs": lambda: write_leaddbs(tmp_path / "src", data),
           "lacuna-hdf5": lambda: write_lacuna(tmp_path / "src.h5", data),
           "npy": lambda: write_npy(tmp_path / "src", data)}[fmt]()
    extra = {"npy": ["--mask", tmp_path / "src" / "mask.nii.gz"]}.get(fmt, [])
    assert run_import(fmt, src, tmp_path / "bids", "--repetition-time", "2", *extra) == 0
    got = group_tmaps(tmp_path / "bids", tmp_path / "out", coords)
    want = group_tmaps(write_bids(tmp_path / "ref", data), tmp_path / "ref_out", coords)
    assert sorted(got) == sorted(want) and got
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
