"""pybids' index saved in the work folder (bids_cnm.io.layout_cache): reused while the
dataset is unchanged, rebuilt the moment a file is added, removed or rewritten."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from bids import BIDSLayout
from bids.layout import BIDSLayoutIndexer
from conftest import write_tiny_connectome

from bids_cnm.io.connectome import LAYOUT_OPTIONS, index_connectome
from bids_cnm.io.layout_cache import KEEP, cached_layout, tree_fingerprint

OPTIONS = LAYOUT_OPTIONS


def _pybids_layout(root: Path) -> BIDSLayout:
    """pybids' own layout with the options the app indexes with (its indexer's as pybids
    takes them)."""
    assert OPTIONS == {"validate": False, "config": ["bids", "derivatives"],
                       "index_metadata": False}
    return BIDSLayout(str(root), validate=False, config=["bids", "derivatives"],
                      indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))


def _files(layout) -> list[str]:
    return sorted(f.path for f in layout.get())


def _saved(cache: Path) -> list[Path]:
    """The saved pybids indexes (not the saved query results, in ``queries/``)."""
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".") and p.name != "queries")


def test_saved_index_is_reused_and_equals_pybids(tmp_path):
    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=3)
    cache = tmp_path / "work" / "pybids"
    first = cached_layout(root, cache, **OPTIONS)
    [saved] = _saved(cache)
    database = saved / "layout_index.sqlite"
    written = database.stat().st_mtime_ns
    second = cached_layout(root, cache, **OPTIONS)
    assert database.stat().st_mtime_ns == written  # loaded, not indexed again
    assert _files(first) == _files(second) == _files(_pybids_layout(root))
    assert not list(root.rglob("*.sqlite"))  # nothing written into the dataset


def test_a_changed_dataset_is_indexed_again(tmp_path):
    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=3)
    cache = tmp_path / "work" / "pybids"
    before = index_connectome(root, database_path=cache)
    assert before.labels == ["01", "02", "03"]
    # a subject added after the index was saved must be found
    shutil.copytree(root / "sub-03", root / "sub-04")
    for path in (root / "sub-04").rglob("sub-03*"):
        path.rename(path.with_name(path.name.replace("sub-03", "sub-04")))
    after = index_connectome(root, database_path=cache)
    assert after.labels == ["01", "02", "03", "04"]
    # ... and one removed must be gone
    shutil.rmtree(root / "sub-02")
    assert index_connectome(root, database_path=cache).labels == ["01", "03", "04"]
    assert len(_saved(cache)) == 3


def test_fingerprint_sees_touched_rewritten_and_linked_files(tmp_path):
    root = tmp_path / "d"
    (root / "sub-01").mkdir(parents=True)
    run = root / "sub-01" / "run.nii.gz"
    run.write_bytes(b"abc")
    start = tree_fingerprint(root)
    assert tree_fingerprint(root) == start
    os.utime(run, ns=(1, 1))
    touched = tree_fingerprint(root)
    assert touched != start
    run.write_bytes(b"abcd")
    os.utime(run, ns=(1, 1))
    assert tree_fingerprint(root) != touched  # same time, another size
    target = tmp_path / "elsewhere.nii.gz"
    target.write_bytes(b"x")
    (root / "sub-01" / "link.nii.gz").symlink_to(target)
    linked = tree_fingerprint(root)
    target.write_bytes(b"xyz")  # the link's target rewritten: a change
    assert tree_fingerprint(root) != linked


def test_only_the_newest_indexes_are_kept(tmp_path):
    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=2)
    cache = tmp_path / "pybids"
    for i in range(KEEP + 2):
        (root / f"extra_{i}.txt").write_text("changes the fingerprint")
        cached_layout(root, cache, **OPTIONS)
    assert len(_saved(cache)) == KEEP
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_read_only_work_folder_indexes_without_saving(tmp_path):
    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    layout = cached_layout(root, blocker / "pybids", **OPTIONS)
    assert _files(layout) == _files(_pybids_layout(root))


def test_saved_query_answers_without_pybids(tmp_path):
    """The same query on the unchanged dataset is answered from the saved result, in a
    process that never imports pybids; a changed dataset is indexed again."""
    import subprocess
    import sys

    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=3)
    cache = tmp_path / "work" / "pybids"
    first = index_connectome(root, database_path=cache, participant_label=("01", "03"))
    fresh = index_connectome(root, participant_label=("01", "03"))  # pybids, no cache
    code = ("import sys; from pathlib import Path; "
            "from bids_cnm.io.connectome import index_connectome; "
            f"c = index_connectome({str(root)!r}, database_path=Path({str(cache)!r}), "
            "participant_label=('01', '03')); "
            "print(c.labels, c.shape, c.affine.tolist(), 'bids' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-1] == "False"  # answered without importing pybids
    assert first.labels == fresh.labels == ["01", "03"]
    again = index_connectome(root, database_path=cache, participant_label=("01", "03"))
    assert again.subjects == fresh.subjects and again.support_masks == fresh.support_masks
    assert (again.affine == fresh.affine).all() and again.affine.dtype == fresh.affine.dtype
    assert again.shape == fresh.shape and again.root == fresh.root
    assert (again.task, again.space, again.res) == (fresh.task, fresh.space, fresh.res)
    # another query is not answered by the saved one
    assert index_connectome(root, database_path=cache).labels == ["01", "02", "03"]
    # nor is the same query once the dataset changed
    shutil.rmtree(root / "sub-03")
    assert index_connectome(root, database_path=cache, participant_label=("01",)).labels == [
        "01"]
    import pytest

    from bids_cnm.errors import NoMatchError

    with pytest.raises(NoMatchError):
        index_connectome(root, database_path=cache, participant_label=("01", "03"))


def test_bold_volumes_are_kept_with_the_saved_index(tmp_path, monkeypatch):
    """The volumes of every run are read from the headers once, when the connectome is
    indexed, and come back with the saved index: a later run opens no BOLD header."""
    import nibabel as nb

    from bids_cnm.workflows.inputs import bold_volumes

    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=3)
    cache = tmp_path / "work" / "pybids"
    first = index_connectome(root, database_path=cache)
    headers = {s.label: sum(nb.load(p).shape[3] for p in s.bold) for s in first.subjects}
    assert bold_volumes(first) == headers

    def no_header(*args, **kwargs):
        raise AssertionError("a header was read")

    monkeypatch.setattr(nb, "load", no_header)
    again = index_connectome(root, database_path=cache)
    assert again.subjects == first.subjects and bold_volumes(again) == headers


def test_a_connectome_indexed_without_volumes_reads_them_from_the_headers(tmp_path):
    import dataclasses

    import nibabel as nb

    from bids_cnm.workflows.inputs import bold_volumes

    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=2)
    connectome = index_connectome(root)
    older = dataclasses.replace(connectome, subjects=tuple(
        dataclasses.replace(s, volumes=()) for s in connectome.subjects))
    assert bold_volumes(older) == {s.label: sum(nb.load(p).shape[3] for p in s.bold)
                                   for s in connectome.subjects}


def test_the_masks_intersection_is_saved_and_follows_the_masks(tmp_path):
    """The support mask is the intersection of the brain masks, computed from them on
    the first run and read back after; a mask rewritten since is read again."""
    import nibabel as nb
    import numpy as np

    from bids_cnm.io import connectome as connectome_module
    from bids_cnm.io.connectome import support_mask

    root = write_tiny_connectome(tmp_path / "connectome", n_subjects=3)
    connectome = index_connectome(root)
    want = np.logical_and.reduce([np.asarray(nb.load(p).dataobj) > 0
                                  for p in connectome.support_masks])
    saved = tmp_path / "work" / "support_masks"
    np.testing.assert_array_equal(support_mask(connectome, saved), want)
    [file] = saved.iterdir()
    np.testing.assert_array_equal(np.load(file), want)

    def no_masks(connectome):
        raise AssertionError("the masks were read")

    with pytest.MonkeyPatch.context() as patch:  # read back, no mask opened
        patch.setattr(connectome_module, "_intersect_masks", no_masks)
        np.testing.assert_array_equal(support_mask(connectome, saved), want)
    # a truncated file (a crash before the data reached the disk) is computed again
    file.write_bytes(b"")
    np.testing.assert_array_equal(support_mask(connectome, saved), want)
    np.testing.assert_array_equal(np.load(file), want)
    # a mask rewritten with one voxel fewer
    first = connectome.support_masks[0]
    img = nb.load(first)
    data = np.asarray(img.dataobj).copy()
    inside = tuple(np.argwhere(want)[0])
    data[inside] = 0
    nb.Nifti1Image(data, img.affine, img.header).to_filename(first)
    want[inside] = False
    np.testing.assert_array_equal(support_mask(connectome, saved), want)
    assert len(list(saved.iterdir())) == 2
