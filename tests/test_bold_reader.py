"""The streaming BOLD reader against nibabel: int16 with scaling, float32, gzipped and plain."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_cnm.engine import bold_reader
from bids_cnm.engine.bold_reader import read_masked_runs, valid_mask, valid_voxels
from bids_cnm.errors import InputDataError, ReadError

SHAPE = (7, 9, 6)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# more volumes than one block, and not a multiple of it
N_VOLUMES = bold_reader.BLOCK_VOLUMES * 2 + 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bold")
    rng = np.random.default_rng(0)
    data = rng.normal(300, 40, SHAPE + (N_VOLUMES,))
    data[1, 2, 3] = 7.0  # constant voxel
    data[2, 3, 4, 5] = np.nan  # one bad value
    data[3, 4, 2] = np.linspace(9, 1, N_VOLUMES)  # decreasing: varies
    paths = {}
    scaled = nb.Nifti1Image(np.nan_to_num(data).astype(np.int16), AFFINE)
    scaled.header.set_slope_inter(0.37, -5.5)
    for ext in (".nii.gz", ".nii"):
        paths["int16" + ext] = folder / f"int16{ext}"
        scaled.to_filename(paths["int16" + ext])
        paths["float32" + ext] = folder / f"float32{ext}"
        nb.Nifti1Image(data.astype(np.float32), AFFINE).to_filename(paths["float32" + ext])
    big = nb.Nifti1Image(data.astype(">f4"), AFFINE)  # big-endian on disk
    paths["bigendian.nii.gz"] = folder / "bigendian.nii.gz"
    big.to_filename(paths["bigendian.nii.gz"])
    return paths, data


@pytest.mark.parametrize("name", ["int16.nii.gz", "int16.nii", "float32.nii.gz", "float32.nii",
                                  "bigendian.nii.gz"])
@pytest.mark.parametrize("masked", [True, False])
def test_reader_equals_nibabel(files, name, masked):
    paths, _ = files
    mask = np.random.default_rng(1).random(SHAPE) > 0.4 if masked else None
    (run,) = read_masked_runs([paths[name]], mask)
    full = np.asarray(nb.load(paths[name]).dataobj, dtype=np.float32)
    want = full[mask] if masked else full.reshape(-1, N_VOLUMES)
    assert run.dtype == np.float32 and run.shape == want.shape
    # nibabel scales in float64 then rounds to float32: so does the reader
    np.testing.assert_array_equal(run, want)


def test_scaling_applied(files):
    paths, data = files
    (run,) = read_masked_runs([paths["int16.nii.gz"]])
    raw = np.nan_to_num(data).astype(np.int16).reshape(-1, N_VOLUMES)
    np.testing.assert_allclose(run, raw * 0.37 - 5.5, rtol=1e-6)


def test_several_runs_and_valid_voxels(files):
    paths, data = files
    runs = read_masked_runs([paths["float32.nii.gz"], paths["float32.nii"]])
    assert len(runs) == 2 and all(r.shape == (int(np.prod(SHAPE)), N_VOLUMES) for r in runs)
    expected = np.isfinite(data).all(-1) & (np.nanmax(data, -1) > np.nanmin(data, -1))
    np.testing.assert_array_equal(valid_voxels(runs), expected.ravel())
    np.testing.assert_array_equal(valid_mask([paths["float32.nii.gz"]]), expected)
    assert expected.sum() == expected.size - 2  # the constant and the NaN voxel


def test_errors(files, tmp_path):
    paths, _ = files
    with pytest.raises(InputDataError, match="grid"):
        read_masked_runs([paths["float32.nii"]], np.ones((3, 3, 3), bool))
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(paths["float32.nii"].read_bytes()[:5000])
    with pytest.raises(ReadError, match="cut.nii"):
        read_masked_runs([truncated])
    flat = tmp_path / "flat.nii.gz"
    nb.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE).to_filename(flat)
    with pytest.raises(InputDataError, match="4-D"):
        read_masked_runs([flat])
