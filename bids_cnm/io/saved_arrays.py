"""Arrays a run saves in its work folder for later runs to read instead of computing.

The brain masks' intersection (:func:`bids_cnm.io.connectome.support_mask`) and each
subject's share of the degree map (:meth:`bids_cnm.engine.degree.DegreeSums.add`).
Such a file is a cache, under a name that is a digest of what it depends on:

* it is written atomically (a job reading it meanwhile finds a whole file or none);
* it is never required: a folder that cannot be written (read-only, full) keeps
  nothing and the run goes on;
* it is not trusted blindly: an unreadable file, or one of another shape or type, is
  computed again (and an unreadable one removed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bids_cnm.errors import OutputError

LOGGER = logging.getLogger("bids_cnm")

__all__ = ["load_saved", "save_array"]


def load_saved(path: Path, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray | None:
    """The array saved at ``path``, or ``None`` (never saved, unreadable, or not as expected).

    Parameters
    ----------
    path : Path
    shape : tuple of int
        The shape the array must have.
    dtype : dtype
        The type it must have.
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
    """Save ``array`` to ``path`` atomically; a folder that cannot be written keeps nothing."""
    from bids_cnm.io.derivatives import _atomic_write

    def write(fd: int, name: str) -> None:  # by name: np.save of a path adds ".npy"
        with open(name, "wb") as f:
            np.save(f, array, allow_pickle=False)

    try:
        _atomic_write(path, write)
    except (OSError, OutputError) as exc:
        LOGGER.debug("%s not saved (%s)", path, exc)
