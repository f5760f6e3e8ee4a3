"""Tests for the synthetic connectome generator (bids_cnm.demo.data)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_cnm import __version__
from bids_cnm.demo.data import (
    NETWORK_BLOBS,
    SPACE,
    DemoDataset,
    load_grid_mask,
    main,
    make_demo_dataset,
)

N_SUBJECTS = 4
N_VOLUMES = 60
RES = 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoDataset:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_subjects=N_SUBJECTS,
                             n_volumes=N_VOLUMES, resolution=RES, random_state=0)


def _expected_bold_names() -> list[str]:
    stem = f"space-{SPACE}_res-{RES}"
    return [
        f"sub-01/func/sub-01_task-rest_run-1_{stem}_desc-preproc_bold.nii.gz",
        f"sub-01/func/sub-01_task-rest_run-2_{stem}_desc-preproc_bold.nii.gz",
        f"sub-02/func/sub-02_task-rest_{stem}_desc-preproc_bold.nii.gz",
        f"sub-03/func/sub-03_task-rest_{stem}_desc-preproc_bold.nii.gz",
        # The last subject uses XCP-D naming.
        f"sub-04/func/sub-04_task-rest_{stem}_desc-denoised_bold.nii.gz",
    ]


def _mask_name(bold: str) -> str:
    return bold.replace("_desc-preproc_bold", "_desc-brain_mask").replace(
        "_desc-denoised_bold", "_desc-brain_mask")


def _zscore_runs(paths: list[Path], mask: np.ndarray) -> np.ndarray:
    """Concatenate runs after centring/scaling each voxel within each run."""
    runs = []
    for path in paths:
        x = np.asarray(nib.load(path).dataobj)[mask].astype(np.float64)
        x -= x.mean(axis=1, keepdims=True)
        x /= x.std(axis=1, keepdims=True)
        runs.append(x)
    return np.concatenate(runs, axis=1)


def test_files_and_metadata(demo: DemoDataset) -> None:
    root = demo.bids_dir
    assert root == demo.coordinates.parent / "connectome"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0"
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "bids_cnm demo generator", "Version": __version__}

    found = sorted(str(p.relative_to(root)) for p in root.glob("sub-*/func/*_bold.nii.gz"))
    assert found == sorted(_expected_bold_names())
    for bold in _expected_bold_names():
        assert (root / _mask_name(bold)).is_file()
        meta = json.loads((root / bold.replace(".nii.gz", ".json")).read_text())
        assert meta["RepetitionTime"] == 2.0
        assert meta["TaskName"] == "rest"

    parts = pd.read_csv(root / "participants.tsv", sep="\t")
    assert list(parts.columns[:4]) == ["participant_id", "age", "sex", "group"]
    assert list(parts["participant_id"]) == [f"sub-0{i}" for i in range(1, N_SUBJECTS + 1)]
    assert set(parts["group"]) == {"HC", "IGE"}
    assert (parts["group"] == "HC").sum() > (parts["group"] == "IGE").sum()

    assert demo.network_names == tuple(demo.truth)
    assert {"dmn", "dan", "sensorimotor", "visual"} <= set(demo.network_names)
    for path in demo.truth.values():
        assert path.is_file() and path.parent.name == "truth"
    assert (demo.truth["dmn"].parent / "README.md").is_file()


def test_pybids_parses_entities(demo: DemoDataset) -> None:
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(demo.bids_dir, validate=False, is_derivative=True)
    files = layout.get(suffix="bold", extension=".nii.gz", return_type="filename")
    assert sorted(Path(f).name for f in files) == sorted(
        Path(p).name for p in _expected_bold_names())
    assert "res" in layout.get_entities()
    both = layout.get(suffix="bold", extension=".nii.gz", res=str(RES), space=SPACE,
                      desc=["preproc", "denoised"], task="rest", return_type="filename")
    assert len(both) == len(files)
    assert len(layout.get(suffix="bold", extension=".nii.gz", desc="denoised")) == 1
    assert layout.get_subjects() == ["01", "02", "03", "04"]
    assert layout.get_runs(subject="01") == [1, 2]
    assert layout.get(subject="01", suffix="bold", extension=".nii.gz")[0].get_metadata()[
        "RepetitionTime"] == 2.0
    masks = layout.get(suffix="mask", desc="brain", extension=".nii.gz", res=str(RES))
    assert len(masks) == len(files)


def test_images_on_nilearn_grid(demo: DemoDataset) -> None:
    ref = load_grid_mask(RES)
    ref_mask = np.asarray(ref.dataobj) > 0
    means, sds = [], []
    for bold in _expected_bold_names():
        img = nib.load(demo.bids_dir / bold)
        assert img.shape == ref.shape + (N_VOLUMES,)
        assert np.allclose(img.affine, ref.affine)
        assert img.get_data_dtype() == np.float32
        assert img.header.get_zooms() == (RES, RES, RES, 2.0)
        mimg = nib.load(demo.bids_dir / _mask_name(bold))
        assert mimg.get_data_dtype() == np.uint8
        assert np.allclose(mimg.affine, ref.affine)
        assert np.array_equal(np.asarray(mimg.dataobj) > 0, ref_mask)

        data = np.asarray(img.dataobj)
        assert not data[~ref_mask].any()
        inside = data[ref_mask]
        sd = inside.std(axis=1)
        assert (sd > 0).all()  # every brain voxel varies over time
        means.append(inside.mean(axis=1))
        sds.append(sd)
    # Raw BOLD-like intensities: not demeaned, not unit variance, heterogeneous variances.
    means, sds = np.concatenate(means), np.concatenate(sds)
    assert means.min() > 50 and means.max() > 500
    assert np.percentile(sds, 90) > 2 * np.percentile(sds, 10)


def test_first_subject_has_two_runs(demo: DemoDataset) -> None:
    runs = sorted((demo.bids_dir / "sub-01" / "func").glob("*_bold.nii.gz"))
    assert [r.name.split("_")[2] for r in runs] == ["run-1", "run-2"]
    a, b = (np.asarray(nib.load(r).dataobj) for r in runs)
    assert not np.array_equal(a, b)  # independent latent draws per run
    for sub in ("sub-02", "sub-03", "sub-04"):
        assert len(list((demo.bids_dir / sub / "func").glob("*_bold.nii.gz"))) == 1


def _voxel_index(mask_img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask_img.dataobj) > 0
    index = np.full(mask.shape, -1)
    index[mask] = np.arange(mask.sum())
    return mask, index


def _nearest(index: np.ndarray, affine: np.ndarray, xyz) -> int:
    ijk = np.round(nib.affines.apply_affine(np.linalg.inv(affine), xyz)).astype(int)
    return int(index[tuple(ijk)])


def test_planted_dmn_is_recovered(demo: DemoDataset) -> None:
    """Seed correlation in ONE subject reproduces the planted signed DMN topography."""
    ref = load_grid_mask(RES)
    mask, index = _voxel_index(ref)
    runs = sorted((demo.bids_dir / "sub-01" / "func").glob("*_bold.nii.gz"))
    x = _zscore_runs(runs, mask)  # both runs of sub-01 (120 volumes)

    def centres(factor, sign):
        return [_nearest(index, ref.affine, c) for _, c, w in NETWORK_BLOBS[factor]
                if np.sign(w) == sign]

    dmn, tpn = centres("dmn", 1), centres("dmn", -1)
    others = centres("sensorimotor", 1) + centres("visual", 1)
    assert min(dmn + tpn + others) >= 0  # all blob centres are in the mask

    seed = x[dmn].mean(axis=0)
    seed = (seed - seed.mean()) / seed.std()
    r = x @ seed / x.shape[1]

    truth = {k: np.asarray(nib.load(p).dataobj)[mask] for k, p in demo.truth.items()}
    assert np.allclose(truth["dan"], -truth["dmn"])
    # Voxels belonging to any planted network: the correlation map must follow the signed DMN
    # loadings there, including ~0 on the independent sensorimotor/visual blobs.
    support = np.max([np.abs(v) for v in truth.values()], axis=0) >= 0.1
    assert np.corrcoef(r[support], truth["dmn"][support])[0, 1] > 0.5
    # Over the whole mask, sampling noise of r (sd ~ 1/sqrt(T)) in ~29k background voxels
    # swamps a sparse network for a single subject, so compare after 8 mm smoothing.
    vol = np.zeros(mask.shape)
    vol[mask] = r
    smooth = ndimage.gaussian_filter(vol, sigma=8.0 / 2.3548 / RES)[mask]
    assert np.corrcoef(smooth, truth["dmn"])[0, 1] > 0.5
    # Anticorrelated task-positive blobs: negative, not merely weaker.
    assert (r[tpn] < 0).all() and r[tpn].mean() < -0.15
    assert abs(r[others].mean()) < 0.1
    # Sanity of the check itself: the DMN truth map does not match the visual network.
    assert np.corrcoef(r[support], truth["visual"][support])[0, 1] < 0.2


def test_coordinates_inside_mask_at_all_resolutions(demo: DemoDataset) -> None:
    coords = pd.read_csv(demo.coordinates, sep="\t")
    assert list(coords.columns) == ["study", "x", "y", "z", "set", "subtype", "modality"]
    assert set(coords["set"]) == {"primary", "control"}
    per_study = coords.groupby("study").size()
    primary = coords.loc[coords["set"] == "primary", "study"].unique()
    assert len(primary) >= 6 and per_study[primary].between(2, 6).all()
    assert coords["subtype"].nunique() >= 3 and coords["modality"].nunique() >= 3
    xyz = coords[["x", "y", "z"]].to_numpy(dtype=float)
    for res in (2, 3, 4):
        img = load_grid_mask(res)
        ijk = np.round(nib.affines.apply_affine(np.linalg.inv(img.affine), xyz)).astype(int)
        assert (ijk >= 0).all() and (ijk < np.array(img.shape)).all()
        assert np.asarray(img.dataobj)[tuple(ijk.T)].all(), f"coordinate outside mask at {res} mm"

    # Primary coordinates sit mostly on DMN/thalamus blobs, controls on the other networks.
    ref = load_grid_mask(RES)
    mask, index = _voxel_index(ref)
    truth = {k: np.asarray(nib.load(p).dataobj)[mask] for k, p in demo.truth.items()}
    loc = [_nearest(index, ref.affine, c) for c in xyz]
    on_dmn = truth["dmn"][loc] > 0.3
    is_primary = (coords["set"] == "primary").to_numpy()
    assert on_dmn[is_primary].mean() > 0.8
    assert not on_dmn[~is_primary].any()
    on_other = (truth["sensorimotor"][loc] > 0.3) | (truth["visual"][loc] > 0.3)
    assert on_other[~is_primary].all()


def test_deterministic(tmp_path: Path) -> None:
    kwargs = dict(n_subjects=2, n_volumes=20, n_runs_first_subject=1)
    a = make_demo_dataset(tmp_path / "a", random_state=3, **kwargs)
    b = make_demo_dataset(tmp_path / "b", random_state=3, **kwargs)
    c = make_demo_dataset(tmp_path / "c", random_state=4, **kwargs)
    files = sorted(p.relative_to(a.bids_dir) for p in a.bids_dir.rglob("*.nii.gz"))
    assert files == sorted(p.relative_to(b.bids_dir) for p in b.bids_dir.rglob("*.nii.gz"))
    for rel in files:
        da = np.asarray(nib.load(a.bids_dir / rel).dataobj)
        assert da.tobytes() == np.asarray(nib.load(b.bids_dir / rel).dataobj).tobytes()
        if rel.name.endswith("_bold.nii.gz"):
            assert not np.array_equal(da, np.asarray(nib.load(c.bids_dir / rel).dataobj))
    assert (a.bids_dir / "participants.tsv").read_bytes() == (
        b.bids_dir / "participants.tsv").read_bytes()
    # One run per subject here, so no run entity and the last subject is XCP-D-named.
    assert [p.name for p in files if "_bold" in p.name][-1].endswith("desc-denoised_bold.nii.gz")
    assert not any("_run-" in p.name for p in files)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "cli"), "--n-subjects", "2", "--n-volumes", "10",
                 "--resolution", "4", "--random-state", "1"]) == 0
    out = capsys.readouterr().out
    assert "connectome" in out and "coordinates.tsv" in out and "network-dmn_loading" in out
    assert len(list((tmp_path / "cli" / "connectome").glob("sub-*/func/*_bold.nii.gz"))) == 3


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, n_subjects=0)
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, snr=0.0)
