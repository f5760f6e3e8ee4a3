"""Arrays saved for later steps and runs to read instead of computing them again.

:func:`cached_array` keeps what a run computes in its work folder for later runs: the
brain masks' intersection (:func:`bids_cnm.io.connectome.support_mask`), the grey
matter on the connectome's grid (:func:`bids_cnm.analyses.grey_matter.grey_matter`)
and each subject's share of the degree map (:meth:`bids_cnm.engine.degree.DegreeSums.add`).
Such a file is a cache, under a name that is a digest of what it depends on:

* it is written atomically (a job reading it meanwhile finds a whole file or none);
* it is never required: a folder that cannot be written (read-only, full) keeps
  nothing and the run goes on;
* it is not trusted blindly: an unreadable file, or one of another shape or type, is
  computed again (and an unreadable one removed).

:func:`write_stacked` writes arrays of one shape as one ``.npy`` that the next step maps
(the running moments, the group maps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bids_cnm.errors import OutputError

LOGGER = logging.getLogger("bids_cnm")

__all__ = ["cached_array", "load_saved", "save_array", "write_stacked"]


def load_saved(path: Path, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray | None:
    """The array saved at ``path`` if it has ``shape`` and ``dtype``.

    Parameters
    ----------
    path : Path
    shape : tuple of int
    dtype : dtype

    Returns
    -------
    ndarray or None
        ``None`` when it was never saved, is unreadable (then removed), or is of another
        shape or type.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: compute again
        LOGGER.debug("%s unreadable (%s); computing it again", path, exc)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        return None
    return array


def save_array(path: Path, array: np.ndarray) -> None:
    """Save ``array`` to ``path`` atomically; a folder that cannot be written keeps nothing.

    Parameters
    ----------
    path : Path
    array : ndarray
    """
    from bids_cnm.io.derivatives import _atomic_write

    def write(fd: int, name: str) -> None:  # a file object: np.save of a path adds ".npy"
        with open(fd, "wb", closefd=False) as f:
            np.save(f, array, allow_pickle=False)

    try:
        _atomic_write(path, write)
    except (OSError, OutputError) as exc:
        LOGGER.debug("%s not saved (%s)", path, exc)


def cached_array(path: Path | None, shape: tuple[int, ...], dtype: type | np.dtype,
                 compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at ``path``, else ``compute()``, saved there for the next time.

    Parameters
    ----------
    path : Path or None
        Where it is saved (``None``: computed, nothing saved).
    shape : tuple of int
    dtype : dtype
        What a saved array must have to be used.
    compute : callable
        Makes the array.

    Returns
    -------
    ndarray
    """
    if path is not None:
        saved = load_saved(path, shape, dtype)
        if saved is not None:
            return saved
    array = compute()
    if path is not None:
        save_array(path, array)
    return array


def write_stacked(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """Write arrays of one shape and type as one ``.npy`` of shape ``(len(arrays), ...)``.

    Each array's bytes are written in turn (no stacked copy); ``np.load(path,
    mmap_mode=...)`` then maps them.  The file is written under a temporary name and
    renamed: a process that has mapped an earlier file at ``path`` keeps reading its
    pages, and an interrupted write leaves no partial file.

    Parameters
    ----------
    path : Path
    arrays : sequence of C-contiguous ndarray

    Raises
    ------
    OutputError
        When the folder's disk is full or read-only.
    """
    from bids_cnm.io.derivatives import _atomic_write

    header = {"descr": np.lib.format.dtype_to_descr(arrays[0].dtype),
              "fortran_order": False, "shape": (len(arrays), *arrays[0].shape)}

    def write(fd: int, name: str) -> None:
        with open(fd, "wb", closefd=False) as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.writelines(memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays)

    _atomic_write(Path(path), write)
