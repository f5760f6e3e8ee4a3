"""Tests of bids_cnm.io.nifti_bytes: a map's file bytes are nibabel's, header made once."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_cnm.io.nifti_bytes import encode_map, nifti_image, nifti_prefix

#: an oblique grid with a shift, as a resampled template may have
OBLIQUE = np.array([[2.9, 0.3, 0.0, -90.0],
                    [-0.2, 3.0, 0.1, -126.0],
                    [0.0, -0.1, 3.1, -72.0],
                    [0.0, 0.0, 0.0, 1.0]])


def _values(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        data = rng.standard_normal(shape).astype(dtype) * 7
        data.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]  # what t-maps may hold
        return data
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int8", "int16", "int32"])
@pytest.mark.parametrize("affine", [np.diag([3.0, 3.0, 3.0, 1.0]), OBLIQUE])
@pytest.mark.parametrize("order", ["C", "F"])
def test_bytes_are_nibabels(dtype, affine, order):
    rng = np.random.default_rng(7)
    data = np.asarray(_values(dtype, (6, 5, 4), rng), order=order)
    expected = nifti_image(data, affine).to_bytes()
    assert encode_map(data, affine) == expected
    # the header is remembered per grid: other values on the same grid reuse it
    other = np.asarray(_values(dtype, (6, 5, 4), rng), order=order)
    assert encode_map(other, affine) == nifti_image(other, affine).to_bytes()


def test_file_reads_back_like_nibabels_own(tmp_path):
    """What nibabel loads from the bytes: the same data, affine and header fields."""
    data = _values("float32", (7, 6, 5), np.random.default_rng(3))
    mine, theirs = tmp_path / "mine.nii", tmp_path / "theirs.nii"
    mine.write_bytes(encode_map(data, OBLIQUE))
    nifti_image(data, OBLIQUE).to_filename(theirs)
    a, b = nb.load(mine), nb.load(theirs)
    np.testing.assert_array_equal(np.asarray(a.dataobj), data)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.header.get_xyzt_units() == ("mm", "unknown")
    for field in ("dim", "pixdim", "datatype", "bitpix", "qform_code", "sform_code",
                  "quatern_b", "quatern_c", "quatern_d", "srow_x", "srow_y", "srow_z",
                  "vox_offset", "xyzt_units", "magic"):
        np.testing.assert_array_equal(a.header[field], b.header[field], err_msg=field)


def test_prefix_follows_grid_dtype_and_affine():
    base = nifti_prefix((4, 4, 4), np.dtype("float32"), np.eye(4))
    assert len(base) == 352  # header (348) and the empty extension flag
    assert nifti_prefix((4, 4, 5), np.dtype("float32"), np.eye(4)) != base
    assert nifti_prefix((4, 4, 4), np.dtype("int16"), np.eye(4)) != base
    assert nifti_prefix((4, 4, 4), np.dtype("float32"), np.diag([2, 2, 2, 1.0])) != base


def test_other_dtypes_go_through_nibabel():
    big_endian = np.arange(60, dtype=">f4").reshape(5, 4, 3)
    assert encode_map(big_endian, OBLIQUE) == nifti_image(big_endian, OBLIQUE).to_bytes()
    with pytest.raises(ValueError, match="int64"):  # nibabel's own refusal, unchanged
        encode_map(np.zeros((2, 2, 2), dtype=np.int64), np.eye(4))
