"""Tests of bids_cnm.io.derivatives: sources named as BIDS URIs (remembered per path),
files written atomically and left alone when unchanged, maps as nibabel writes them."""

from __future__ import annotations

import errno
import gzip
import json
import os
import typing
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_cnm.errors import OutputError
from bids_cnm.io.derivatives import (
    _TEMPORARY,
    DerivativesWriter,
    store_bytes,
    write_json,
)
from bids_cnm.io.nifti_bytes import encode_map


def test_uri_of_relative_paths_follows_the_working_folder(tmp_path, monkeypatch):
    connectome, coordinates = tmp_path / "connectome", tmp_path / "coords"
    for folder in (connectome / "sub-01", coordinates / "a", coordinates / "b"):
        folder.mkdir(parents=True)
    writer = DerivativesWriter(tmp_path / "out", connectome, {}, "MNI152NLin2009cAsym",
                               links={"coordinates": coordinates})
    table = coordinates / "a" / "table.tsv"
    # the same answer every time a sidecar asks (the second one comes from memory)
    assert [writer.uri(table) for _ in range(2)] == ["bids:coordinates:a/table.tsv"] * 2
    assert writer.uri(connectome / "sub-01" / "x.nii.gz") == "bids:connectome:sub-01/x.nii.gz"
    assert writer.uri(tmp_path / "elsewhere.tsv") == "elsewhere.tsv"
    assert writer.uri("bids:plan:rois.tsv") == "bids:plan:rois.tsv"
    # a relative path names another file once the working folder changes
    monkeypatch.chdir(coordinates / "a")
    assert writer.uri("t.tsv") == "bids:coordinates:a/t.tsv"
    monkeypatch.chdir(coordinates / "b")
    assert writer.uri("t.tsv") == "bids:coordinates:b/t.tsv"


# --------------------------------------------------------------------------------------
# Writing files: atomic, left alone when unchanged, maps byte for byte nibabel's


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_store_bytes_creates_the_folder_with_open_permissions(tmp_path):
    target = tmp_path / "new" / "folder" / "a.json"
    store_bytes(target, b"{}\n")
    assert target.read_bytes() == b"{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes a file
    assert _files(tmp_path) == ["a.json"]  # no temporary left


def test_unchanged_files_are_left_alone(tmp_path):
    raw = encode_map(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    nii, text = tmp_path / "m.nii.gz", tmp_path / "m.json"
    store_bytes(nii, raw, deflate=True)
    store_bytes(text, b"{}\n")
    # a rewrite renames a new file into place: another inode (mtimes may not tell, as
    # the clock of the file system can be coarser than two writes)
    inodes = {p: p.stat().st_ino for p in (nii, text)}
    store_bytes(nii, raw, deflate=True)
    store_bytes(text, b"{}\n")
    assert {p: p.stat().st_ino for p in (nii, text)} == inodes
    # the same data deflated to other bytes of the same size (ISA-L is not always
    # byte-reproducible; here the gzip header's OS byte): still the same map, left alone
    other = bytearray(nii.read_bytes())
    other[9] ^= 0xFF
    nii.write_bytes(bytes(other))
    store_bytes(nii, raw, deflate=True)
    assert nii.read_bytes() == other and nii.stat().st_ino == inodes[nii]
    assert gzip.decompress(bytes(other)) == raw
    # other data, or a damaged file: rewritten
    store_bytes(nii, raw[:-4] + b"\x00\x00\x80\x7f", deflate=True)
    assert gzip.decompress(nii.read_bytes())[-4:] == b"\x00\x00\x80\x7f"
    nii.write_bytes(b"\x1f\x8b damaged")
    store_bytes(nii, raw, deflate=True)
    assert gzip.decompress(nii.read_bytes()) == raw


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    target = tmp_path / "a.json"
    target.write_bytes(b"old")

    def fail(fd, data):
        raise error

    monkeypatch.setattr(os, "write", fail)
    expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected, match="disk is full" if expected is OutputError else None):
        store_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["a.json"]


def test_partial_writes_are_completed(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:5]))
    store_bytes(tmp_path / "a.txt", b"0123456789abcdef")
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_bytes() == b"0123456789abcdef"


def test_temporaries_are_those_the_sweep_removes(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    write_json(tmp_path / "x_boldmap.json", {"a": 1})
    assert len(seen) == 1 and _TEMPORARY.match(seen[0]), seen


def test_write_map_gives_nibabels_file(tmp_path):
    """The map a writer writes loads as nibabel's own file of the same image."""
    writer = DerivativesWriter(tmp_path / "out", tmp_path, {}, "MNI152NLin2009cAsym")
    affine = np.array([[-3.0, 0, 0, 90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])
    values = np.random.default_rng(5).standard_normal((5, 6, 7)).astype(np.float32)
    values[0, 0, 0] = np.nan
    path = writer.write_map({"space": "MNI", "res": "3", "stat": "t"}, values, affine,
                            "a map", [])
    reference = nb.Nifti1Image(values, affine)
    reference.header.set_xyzt_units("mm")
    assert gzip.decompress(path.read_bytes()) == reference.to_bytes()
    img = nb.load(path)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), values)
    np.testing.assert_array_equal(img.affine, affine)
    assert img.get_data_dtype() == np.float32 and img.header.get_xyzt_units()[0] == "mm"
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Resolution"] == "res-3: the grid of the connectome's BOLD runs " \
        "(3 x 3 x 3 mm voxels)"


def test_fortran_volume_holds_the_same_map():
    from bids_cnm.engine.group_results import GroupResults
    from bids_cnm.engine.seeds import Seeds

    shape = (4, 5, 6)
    seeds = SimpleNamespace(shape=shape, affine=np.eye(4))
    voxels = np.array([0, 7, 33, 64, 119])
    results = GroupResults(seeds=typing.cast(Seeds, seeds), voxels=voxels, r=None, z=None,
                           t=None, n_subjects=2)
    values = np.arange(1, 6, dtype=np.float32)
    volume = results.volume(values, order="F")
    assert volume.flags.f_contiguous and volume.shape == shape
    np.testing.assert_array_equal(volume, results.volume(values))
    with pytest.raises(ValueError, match=r"\(V,\)"):
        results.volume(np.ones((5, 2)), order="F")


def test_seed_columns_cover_every_seed_in_order():
    """The seed maps' values come in blocks of columns: every seed once, its own values."""
    from bids_cnm.engine.group_results import GroupResults
    from bids_cnm.engine.seeds import Seeds
    from bids_cnm.io.outputs import SEED_BLOCK, _seed_columns

    rng = np.random.default_rng(2)
    k = 2 * SEED_BLOCK + 5  # two full blocks and a partial one
    r, z, t = (rng.standard_normal((30, k)).astype(np.float32) for _ in range(3))
    results = GroupResults(seeds=typing.cast(Seeds, SimpleNamespace(shape=(2, 3, 5))),
                           voxels=np.arange(30), r=r, z=z, t=t, n_subjects=3)
    seen = []
    for index, columns in _seed_columns(results):
        seen.append(index)
        for stat, values in (("r", r), ("z", z), ("t", t)):
            assert columns[stat].flags.c_contiguous
            np.testing.assert_array_equal(columns[stat], values[:, index])
    assert seen == list(range(k))


def test_seed_maps_written_by_threads_equal_those_written_in_turn(tmp_path):
    """Three maps per seed, in seed order, the same files whether written by one thread
    or two (a partial last block of seeds included); each holds its own seed's values."""
    import pandas as pd

    from bids_cnm.engine.group_results import GroupResults
    from bids_cnm.engine.seeds import Seeds
    from bids_cnm.io.outputs import SEED_BLOCK, write_seed_maps

    shape, k = (4, 5, 6), SEED_BLOCK + 3
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    table = pd.DataFrame({"id": [f"S{j:02d}" for j in range(k)], "study": "s",
                          "set": "primary", "variant": "main"})
    seeds = Seeds(table, [np.array([j]) for j in range(k)], shape, affine, 6.0)
    rng = np.random.default_rng(8)
    voxels = np.sort(rng.choice(int(np.prod(shape)), 40, replace=False))
    r, z, t = (rng.standard_normal((40, k)).astype(np.float32) for _ in range(3))
    results = GroupResults(seeds, voxels, r, z, t, n_subjects=5)
    written = {}
    for n_threads in (1, 2):
        out = tmp_path / f"out{n_threads}"
        writer = DerivativesWriter(out, tmp_path, {}, "MNI152NLin2009cAsym")
        paths = write_seed_maps(writer, results, {"space": "MNI"}, [], n_threads=n_threads)
        written[n_threads] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.*")}
        assert [p.name.split("_")[1:3] for p in paths] == [
            [f"seed-S{j:02d}", f"stat-{stat}"] for j in range(k) for stat in ("r", "z", "t")]
        for j in (0, k - 1):
            for stat, values in (("r", r), ("z", z), ("t", t)):
                img = nb.load(paths[3 * j + ("r", "z", "t").index(stat)])
                np.testing.assert_array_equal(
                    np.asarray(img.dataobj).ravel()[voxels], values[:, j])
    assert written[1] == written[2] and len(written[1]) == 6 * k
