"""pybids' index of a dataset, kept in the work folder while the dataset's files are unchanged.

Indexing a connectome with :class:`bids.BIDSLayout` parses every file name and takes
1.5-2 s for 30 subjects (minutes for thousands), on every run: a warm run and an
identical re-run pay it although nothing changed.  pybids can save its index to a
SQLite database (``database_path``) and load it back in milliseconds, but it does not
notice files added, removed or rewritten since, so a saved index alone could hide a
new subject.  Here the index is saved under a key made of

* a fingerprint of the dataset's files: every file's relative path, size,
  modification and change times and inode (:func:`bids_cnm.io.stamps.stamp`, the
  re-run check's: a stat per file, a few milliseconds for thousands of files; links
  are followed, so a re-linked or rewritten run counts as a change);
* the dataset's absolute path, the pybids version and the layout's options;

so any change to the dataset leads to a new key, and a fresh index.

Each index is written into a temporary folder and renamed into place when complete:
a run killed while indexing, or several jobs indexing the same dataset at once (a
Slurm array sharing a work folder), never leave a partial index under a key.  The
newest :data:`KEEP` indexes are kept.

The result of a whole query (the subjects, runs, masks and grid that
:func:`bids_cnm.io.connectome.index_connectome` finds) is saved too, under the index's
key and the query's arguments (:func:`save_query`, in ``queries/``): the same query on
the unchanged dataset is then answered from a small JSON file without importing pybids
(about a second of start-up) or reading the NIfTI headers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from bids_cnm.io.code_identity import code_identity
from bids_cnm.io.stamps import digest, stamp

__all__ = ["KEEP", "cached_layout", "layout_key", "load_query", "open_layout", "query_key",
           "save_query", "tree_fingerprint"]

LOGGER = logging.getLogger("bids_cnm")

#: indexes kept in the cache folder (the newest; older ones are removed)
KEEP = 4

#: age (s) after which a partial index is a killed run's leftover
STALE_SECONDS = 24 * 3600

#: the file pybids writes into ``database_path``
_DATABASE = "layout_index.sqlite"


def tree_fingerprint(root: str | Path) -> str:
    """Digest of the ``stat`` rows of every file under root (see :mod:`bids_cnm.io.stamps`).

    Parameters
    ----------
    root : path
        A folder (walked recursively, links followed; hidden files included, so the
        fingerprint errs towards re-indexing).

    Returns
    -------
    str
        A file added, removed, resized, rewritten or touched changes it.
    """
    return stamp(Path(root))


def layout_key(root: str | Path, options: dict) -> str:
    """Name of the saved index of ``root`` indexed with ``options`` (see module docs)."""
    # the installed distribution's version, read without importing pybids (~1 s)
    identity = {"root": str(Path(root).resolve()), "files": tree_fingerprint(root),
                "pybids": metadata.version("pybids"), "options": options}
    return digest(identity, 20)


def open_layout(root: str | Path, **options):
    """``bids.BIDSLayout(root, **options)``, with ``index_metadata`` given to its indexer.

    pybids takes its indexer's options only in an indexer object, which a saved index's
    key could not digest: here they stay plain values, part of :func:`layout_key`.

    Parameters
    ----------
    root : path
    **options
        ``BIDSLayout`` keyword arguments, and ``index_metadata`` (bool) for its
        :class:`bids.layout.BIDSLayoutIndexer`.

    Returns
    -------
    bids.BIDSLayout
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    options = dict(options)
    if "index_metadata" in options:
        options["indexer"] = BIDSLayoutIndexer(validate=options.get("validate", True),
                                               index_metadata=options.pop("index_metadata"))
    return BIDSLayout(str(root), **options)


def cached_layout(root: str | Path, cache_dir: str | Path, key: str | None = None,
                  **options):
    """A :class:`bids.BIDSLayout` of ``root``, loaded from ``cache_dir`` when still valid.

    Parameters
    ----------
    root : path
        The dataset (never written into).
    cache_dir : path
        Folder of the saved indexes (e.g. ``<work_dir>/pybids``); created if needed.
    key : str, optional
        ``layout_key(root, options)`` when the caller has it (it stats every file).
    **options
        :func:`open_layout` keyword arguments (``validate``, ``config``,
        ``index_metadata``...); part of the key.

    Returns
    -------
    bids.BIDSLayout
        Equal to ``open_layout(root, **options)`` for the dataset as it is now.
    """
    cache_dir = Path(cache_dir)
    key = key or layout_key(root, options)
    folder = cache_dir / key
    if (folder / _DATABASE).is_file():
        LOGGER.debug("pybids index of %s loaded from %s", root, folder)
        with contextlib.suppress(OSError):  # recently used: kept by _prune
            os.utime(folder)
        return open_layout(root, database_path=str(folder), **options)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a read-only work folder: index without saving
        LOGGER.debug("pybids index not saved (%s)", exc)
        return open_layout(root, **options)
    building = cache_dir / f".{key}.{os.getpid()}.part"
    shutil.rmtree(building, ignore_errors=True)
    layout = open_layout(root, database_path=str(building), **options)
    try:
        building.rename(folder)
    except OSError:  # another job saved the same index first: keep theirs
        shutil.rmtree(building, ignore_errors=True)
        return open_layout(root, database_path=str(folder), **options)
    finally:
        _prune(cache_dir)
    LOGGER.debug("pybids index of %s saved in %s", root, folder)
    # the layout built above reads its database at the temporary path, now renamed
    del layout
    return open_layout(root, database_path=str(folder), **options)


def _prune(cache_dir: Path) -> None:
    """Remove all but the :data:`KEEP` most recently used indexes, and stale partial ones."""
    now = time.time()
    saved = []
    for path in cache_dir.iterdir():
        try:
            age = now - path.stat().st_mtime
        except OSError:  # removed meanwhile by another job
            continue
        if path.name.endswith(".part"):
            if age > STALE_SECONDS:  # left by a killed run (a live one finishes in minutes)
                shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir() and path.name != "queries":  # queries: see save_query
            saved.append((age, path))
    for _, old in sorted(saved)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def query_key(index_key: str, query: dict) -> str:
    """Name of a saved query result: the dataset's :func:`layout_key`, the query's
    arguments and the code that selects the files (:mod:`bids_cnm.io.code_identity`:
    another bids_cnm may select other runs or masks from the same index)."""
    return digest([index_key, query, code_identity()], 20)


def _queries(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "queries"


def load_query(cache_dir: str | Path, key: str) -> dict | None:
    """A result saved by :func:`save_query` under ``key``, or ``None``."""
    path = _queries(cache_dir) / f"{key}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # never saved, or unreadable: index again
        return None
    with contextlib.suppress(OSError):  # recently used: kept by the pruning
        os.utime(path)
    LOGGER.debug("connectome's index read from %s", path)
    return record


def save_query(cache_dir: str | Path, key: str, record: dict) -> None:
    """Save a query's result (JSON, written atomically); the newest 16 are kept."""
    folder = _queries(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{key}.{os.getpid()}.part"
        partial.write_text(json.dumps(record))
        os.replace(partial, folder / f"{key}.json")
    except OSError as exc:  # e.g. a read-only work folder: nothing saved
        LOGGER.debug("connectome's index not saved (%s)", exc)
        return
    ages = []
    for path in folder.glob("*.json"):
        try:
            ages.append((-path.stat().st_mtime, path))
        except OSError:  # removed meanwhile by another job
            continue
    for _, stale in sorted(ages)[4 * KEEP:]:
        stale.unlink(missing_ok=True)
