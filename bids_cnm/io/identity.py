"""Cheap fingerprints of input files and datasets: what reuse keys are made of.

A participant z-map (and a prepared time series in the work folder) may be reused
only when it was made from the same files.  Hashing whole BOLD files would cost
as much as reading them, so a file's fingerprint is its size, its modification
time and a hash of a few blocks spread over it (the first holds the NIfTI
header): any rewrite changes the mtime, and a copy with the same mtime but other
content almost surely changes one of the blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bids_cnm.io.stamps import digest

__all__ = ["dataset_identity", "digest", "file_fingerprint", "subject_key"]

#: bytes read per block, and blocks per file (first, last and evenly between)
BLOCK_SIZE = 16384
N_BLOCKS = 4


def file_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a file: size, mtime and a hash of a few of its blocks.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    str
        16 hex digits; equal for the same unchanged file, different after any rewrite.
    """
    path = Path(path)
    stat = path.stat()
    h = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        last = max(stat.st_size - BLOCK_SIZE, 0)
        for offset in sorted({int(x) for x in np.linspace(0, last, N_BLOCKS)}):
            f.seek(offset)
            h.update(f.read(BLOCK_SIZE))
    return h.hexdigest()[:16]


def dataset_identity(root: str | os.PathLike) -> dict:
    """Path, ``Name`` and ``DatasetDOI`` of a BIDS dataset (what names it)."""
    root = Path(root).resolve()
    try:
        description = json.loads((root / "dataset_description.json").read_text("utf-8"))
    except (OSError, ValueError):
        description = {}
    if not isinstance(description, dict):
        description = {}
    return {"path": str(root), "Name": description.get("Name"),
            "DatasetDOI": description.get("DatasetDOI")}


def subject_key(
    root: str | os.PathLike,
    files: Iterable[str | os.PathLike],
    grid: tuple[tuple[int, ...], np.ndarray],
    participant_filter: Iterable[tuple[str, str]] = (),
) -> str:
    """Key of one subject's data: dataset identity, its files' fingerprints, the grid
    and the cohort filter.

    Parameters
    ----------
    root : path-like
        The connectome dataset.
    files : iterable of path-like
        The subject's BOLD runs and masks.
    grid : (shape, affine)
    participant_filter : iterable of (column, value)

    Returns
    -------
    str
        12 hex digits.
    """
    shape, affine = grid
    return digest({
        "dataset": dataset_identity(root),
        "files": [[Path(f).name, file_fingerprint(f)] for f in files],
        "grid": [list(map(int, shape)), np.round(np.asarray(affine, float), 4).tolist()],
        "filter": sorted([list(pair) for pair in participant_filter]),
    })
