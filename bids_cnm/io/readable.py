"""Up-front screen of every BOLD file, without decoding the data twice.

A truncated or corrupt ``.nii.gz`` has a perfectly readable header; it fails only
when its data are decoded.  Streaming every file once before the work starts
proved them readable, but preparation then decoded everything again: on a cold run
that was a second full decode of the connectome (issue 10).  Now the proof is
split:

* **up front, cheaply** (:func:`check_all_readable`): each file's header is read,
  and the length gzip records in its last four bytes (ISIZE, the uncompressed size
  modulo 2**32) is compared with the header's; a file cut short (an interrupted
  copy or download, the usual damage) ends in bytes of the compressed data, so its
  ISIZE does not match and it is streamed to the end at once, which gives the
  one-line error (exit 65) before any work.  An uncompressed ``.nii`` is proven by
  its size.
* **while preparing**: the reader (:mod:`bids_cnm.engine.bold_reader`) decodes
  each run to the end of its stream, where gzip checks the CRC-32, and reports a
  damaged run with the same message and exit code.  A prepared subject is
  therefore proven readable, and a rerun finds it prepared.

A file whose ISIZE does not match for another reason (several gzip members, as
``bgzip`` writes, or bytes after the data) is streamed up front as before.  Files
that passed are remembered in the work folder by their fingerprint, so a rerun
reads only the few blocks of each file a fingerprint takes (a damaged file the
screen let through fails again in its preparation, which never completes for it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.filebasedimages import ImageFileError

from bids_cnm.engine.bold_reader import (
    DECODE_ERRORS,
    UnreadableData,
    is_gzip,
    open_decompressed,
)
from bids_cnm.errors import InputDataError
from bids_cnm.io.derivatives import write_json
from bids_cnm.io.identity import file_fingerprint

__all__ = ["check_all_readable", "check_readable", "screen_readable"]

LOGGER = logging.getLogger("bids_cnm")

_CHUNK = 1 << 22
#: what reading a header or a stream can raise for a damaged or foreign file
_READ_ERRORS = DECODE_ERRORS + (ValueError, ImageFileError)


def _expected_bytes(path: Path) -> int:
    """Bytes of the uncompressed file the header describes (header, extensions, data)."""
    img = nb.load(path)
    header = img.header
    # the proxy's offset is where the data start in the file (a loaded header's
    # vox_offset is reset to 0 by nibabel, which recomputes it when saving)
    offset = getattr(img.dataobj, "offset", None)
    if offset is None:
        offset = header.get_data_offset()
    return int(offset) + int(np.prod(img.shape)) * int(header.get_data_dtype().itemsize)


def check_readable(path: str | Path) -> None:
    """Read a NIfTI file's header and stream its data to the end.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``.

    Raises
    ------
    InputDataError
        Naming the file and the fix (exit 65).
    """
    path = Path(path)
    try:
        expected = _expected_bytes(path)
        size = 0
        with open_decompressed(path) as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
    except _READ_ERRORS as exc:
        raise InputDataError(UnreadableData(path, type(exc).__name__).message) from None
    if size < expected:
        raise InputDataError(
            UnreadableData(path, f"it holds {size} of {expected} bytes").message)


def screen_readable(path: str | Path) -> bool:
    """Check a file's header and recorded length without decoding its data.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``.

    Returns
    -------
    bool
        True when the file was streamed to its end here (a gzip file whose recorded
        length did not match: worth remembering); False when the screen was enough
        (an uncompressed file of full size) or its decoding (preparation) proves it.

    Raises
    ------
    InputDataError
        Naming the file and the fix (exit 65), as :func:`check_readable`.
    """
    path = Path(path)
    try:
        expected = _expected_bytes(path)
        if not is_gzip(path):
            size = path.stat().st_size
            if size < expected:
                raise InputDataError(
                    UnreadableData(path, f"it holds {size} of {expected} bytes").message)
            return False
        with open(path, "rb") as f:
            if f.seek(0, 2) >= 18:  # the smallest gzip member: 10-byte header, 8-byte trailer
                f.seek(-4, 2)
                isize = int.from_bytes(f.read(4), "little")
                if isize == expected % 2**32:
                    return False
    except _READ_ERRORS as exc:
        raise InputDataError(UnreadableData(path, type(exc).__name__).message) from None
    check_readable(path)  # cut short, or a layout the screen cannot judge: stream it
    return True


def check_all_readable(paths: Iterable[str | Path], cache: Path) -> None:
    """:func:`screen_readable` for each file not proven before (``cache`` remembers them).

    Parameters
    ----------
    paths : iterable of path-like
        The BOLD files of the run.
    cache : Path
        JSON list of the fingerprints of the files that passed (in the work folder).

    Raises
    ------
    InputDataError
        For the first damaged file (exit 65).
    """
    try:
        proven = set(json.loads(Path(cache).read_text()))
    except (OSError, ValueError, TypeError):
        proven = set()
    todo = [(p, file_fingerprint(p)) for p in paths]
    todo = [(p, key) for p, key in todo if key not in proven]
    streamed = 0
    for path, key in todo:
        streamed += screen_readable(path)
        proven.add(key)
    if streamed:
        LOGGER.info("%d BOLD file(s) streamed to the end up front (their recorded length "
                    "did not match their header's)", streamed)
    if todo:
        write_json(cache, sorted(proven))
