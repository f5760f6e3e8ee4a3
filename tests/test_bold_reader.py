"""The streaming BOLD reader against nibabel: int16 with scaling, float32, gzipped and plain."""

from __future__ import annotations

from pathlib import Path

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


def test_valid_mask_within_a_mask(files):
    """Following only a mask's voxels gives the whole grid's answer inside it."""
    paths, _ = files
    mask = np.random.default_rng(2).random(SHAPE) > 0.5
    mask[1, 2, 3] = mask[2, 3, 4] = True  # the constant and the NaN voxel are inside
    runs = [paths["int16.nii.gz"], paths["float32.nii"]]
    whole = valid_mask(runs)
    np.testing.assert_array_equal(valid_mask(runs, mask), whole & mask)
    with pytest.raises(InputDataError, match="grid"):
        valid_mask(runs, np.ones((3, 3, 3), bool))


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


def test_one_scratch_for_several_subjects(files, tmp_path):
    """A larger then a smaller subject through one Scratch: each as if read alone.

    The second subject fits in the first one's buffers, so stale values from the
    first would show if the reader left any part of its array unwritten.
    """
    from bids_cnm.engine.timeseries import open_prepared, prepare_subject

    paths, _ = files
    scratch = bold_reader.Scratch()
    small = np.random.default_rng(3).random(SHAPE) > 0.6
    subjects = [([paths["float32.nii.gz"], paths["int16.nii"]], None),
                ([paths["bigendian.nii.gz"]], small)]
    for bold, mask in subjects:
        data, n_volumes = bold_reader.read_concatenated_runs(bold, mask, scratch)
        want = np.concatenate(read_masked_runs(bold, mask), axis=1)
        np.testing.assert_array_equal(data, want)
        assert n_volumes == [N_VOLUMES] * len(bold)
    # preparation through a used scratch writes what it writes without one
    mask_path = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(small.astype(np.uint8), AFFINE).to_filename(mask_path)
    bold = [str(paths["float32.nii"]), str(paths["int16.nii.gz"])]
    with_scratch = open_prepared(prepare_subject(bold, [str(mask_path)], tmp_path / "a",
                                                 scratch=scratch))
    alone = open_prepared(prepare_subject(bold, [str(mask_path)], tmp_path / "b"))
    for name in ("data", "norm", "run_norm", "sd", "voxels"):
        np.testing.assert_array_equal(getattr(with_scratch, name), getattr(alone, name))


def test_decode_thread_ends_with_the_reader(files):
    """A caller that stops after one block, or fails, leaves no decode thread behind."""
    import threading

    paths, _ = files

    def decoding() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("decode ")]

    blocks = iter(bold_reader._Blocks(paths["float32.nii.gz"]))
    block, n_used, t0 = next(blocks)
    assert (n_used, t0) == (bold_reader.BLOCK_VOLUMES, 0) and decoding()
    blocks.close()  # what a for loop left by an exception does
    assert decoding() == []
    # blocks come in order, each valid until the next one is asked for
    full = np.asarray(nb.load(paths["float32.nii.gz"]).dataobj, dtype=np.float32)
    for block, n_used, t0 in bold_reader._Blocks(paths["float32.nii.gz"]):
        want = full[..., t0:t0 + n_used].reshape(-1, n_used, order="F").T
        np.testing.assert_array_equal(block[:n_used], want)
    assert decoding() == []


# --------------------------------------------------------------------------------------
# Damaged files: the reader proves a run readable to its end (issue 10: one decode)


def _damaged(paths, tmp_path, damage: str):
    """A copy of the gzipped float32 run, cut short or with a wrong CRC-32 in its trailer."""
    data = bytearray(paths["float32.nii.gz"].read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-6] ^= 0xFF  # the CRC-32 (bytes -8..-5): the voxel data themselves decode
    out = tmp_path / f"{damage}.nii.gz"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
@pytest.mark.parametrize("damage", ["truncate", "crc"])
def test_damaged_gzip_found_while_decoding(files, tmp_path, monkeypatch, damage, inflater):
    """Every voxel of a wrong-CRC file decodes: only reading past the data finds it."""
    from bids_cnm.io.readable import check_readable

    paths, _ = files
    if inflater == "zlib":
        monkeypatch.setattr(bold_reader, "_igzip", None)
    bad = _damaged(paths, tmp_path, damage)
    with pytest.raises(bold_reader.UnreadableData) as found:
        read_masked_runs([bad])
    with pytest.raises(bold_reader.UnreadableData):
        valid_mask([bad])
    # the same words as the up-front check (which streams the file with the stdlib)
    with pytest.raises(InputDataError) as upfront:
        check_readable(bad)
    assert found.value.message == upfront.value.message
    assert found.value.message.startswith(f"{bad}: cannot read the image data (")


def test_prepare_reports_the_damaged_run_of_a_subject(files, tmp_path):
    """A subject's second run is the damaged one: the error names it, with exit code 65."""
    from bids_cnm.engine.timeseries import prepare_subject

    paths, _ = files
    bad = _damaged(paths, tmp_path, "crc")
    with pytest.raises(InputDataError) as exc:
        prepare_subject([str(paths["float32.nii.gz"]), str(bad)], [], tmp_path / "prep")
    assert exc.value.message.startswith(f"{bad}: cannot read the image data (BadGzipFile)")
    assert exc.value.exit_code == 65 and not (tmp_path / "prep").exists()


def test_several_gzip_members_read_like_one(files, tmp_path):
    """bgzip-style files (several members) decode to nibabel's values."""
    import gzip

    paths, _ = files
    raw = gzip.decompress(paths["float32.nii.gz"].read_bytes())
    cut = len(raw) // 3
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    (run,) = read_masked_runs([multi])
    want = np.asarray(nb.load(multi).dataobj, dtype=np.float32).reshape(-1, N_VOLUMES)
    np.testing.assert_array_equal(run, want)


def test_screen_streams_only_what_its_length_cannot_vouch_for(files, tmp_path, monkeypatch):
    """The up-front screen reads headers and gzip trailers; a file is streamed only when
    its recorded length differs from its header's (cut short, or several members)."""
    import gzip

    from bids_cnm.io import readable

    paths, _ = files
    streamed = []
    real_open = readable.open_decompressed

    def spy(path):
        streamed.append(Path(path).name)
        return real_open(path)

    monkeypatch.setattr(readable, "open_decompressed", spy)
    intact = [paths["float32.nii.gz"], paths["int16.nii.gz"], paths["float32.nii"]]
    assert [readable.screen_readable(p) for p in intact] == [False, False, False]
    assert streamed == []
    raw = gzip.decompress(paths["float32.nii.gz"].read_bytes())
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert readable.screen_readable(multi) is True and streamed == ["multi.nii.gz"]
    with pytest.raises(InputDataError, match="truncate.nii.gz: cannot read the image data"):
        readable.screen_readable(_damaged(paths, tmp_path, "truncate"))
    plain = tmp_path / "cut.nii"
    plain.write_bytes(paths["float32.nii"].read_bytes()[:-100])
    with pytest.raises(InputDataError, match=r"cut.nii: cannot read the image data \(it holds"):
        readable.screen_readable(plain)
    # files that passed are remembered by their fingerprint: a rerun neither screens
    # nor streams them again
    cache = tmp_path / "readable.json"
    streamed.clear()
    screened = []
    real_screen = readable.screen_readable
    monkeypatch.setattr(readable, "screen_readable",
                        lambda p: screened.append(Path(p).name) or real_screen(p))
    readable.check_all_readable([*intact, multi], cache)
    assert streamed == ["multi.nii.gz"] and len(screened) == 4
    readable.check_all_readable([*intact, multi], cache)
    assert streamed == ["multi.nii.gz"] and len(screened) == 4


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_preparation_memory_is_bounded_by_its_estimate(tmp_path, dtype):
    """The memory a preparation step is scheduled with (:func:`preparation_bytes`) covers
    the arrays it holds: traced at their peak while a subject is prepared.  With int16 the
    estimate once counted the smaller cache, while the step held the float32 decode, the
    quantized copy and its dequantization (5.6x too little on a GSP1000 subject)."""
    import tracemalloc

    from bids_cnm.engine.timeseries import preparation_bytes, prepare_subject

    shape, n_volumes = (30, 36, 30), 100
    rng = np.random.default_rng(4)
    mask = np.zeros(shape, bool)
    mask[4:26, 5:31, 4:26] = True
    bold = tmp_path / "bold.nii.gz"
    data = rng.normal(500, 20, shape + (n_volumes,)).astype(np.float32) * mask[..., None]
    nb.Nifti1Image(data, AFFINE).to_filename(bold)
    mask_path = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(mask.astype(np.uint8), AFFINE).to_filename(mask_path)
    prepare_subject([str(bold)], [str(mask_path)], tmp_path / "warm", dtype=dtype)  # kernels
    tracemalloc.start()
    try:
        prepare_subject([str(bold)], [str(mask_path)], tmp_path / "p", dtype=dtype)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raw = int(mask.sum()) * n_volumes * 4
    assert peak > raw  # the decoded runs were traced
    assert preparation_bytes([str(bold)], [str(mask_path)], dtype) >= peak
