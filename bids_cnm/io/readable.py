"""Up-front proof that every BOLD file can be read to its end.

A truncated or corrupt ``.nii.gz`` has a perfectly readable header; it fails only
when its data are decoded, which used to happen inside a workflow node, after
minutes of work and a nipype traceback.  Here each file is streamed once (gzip
checks its length and CRC at the end of the stream), and files already proven
are remembered in the work folder by their fingerprint, so a rerun reads nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterable
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.filebasedimages import ImageFileError

from bids_cnm.errors import InputDataError
from bids_cnm.io.derivatives import write_json
from bids_cnm.io.identity import file_fingerprint

__all__ = ["check_readable", "check_all_readable"]

LOGGER = logging.getLogger("bids_cnm")

_CHUNK = 1 << 22


def check_readable(path: str | Path) -> None:
    """Read a NIfTI file's header and stream its data to the end.

    Raises
    ------
    InputDataError
        Naming the file and the fix (exit 65).
    """
    path = Path(path)
    fix = "the file is truncated or corrupt; copy it again or rerun its preprocessing"
    try:
        img = nb.load(path)
        header = img.header
        expected = int(header.get_data_offset()) + int(np.prod(img.shape)) * int(
            header.get_data_dtype().itemsize)
        if path.name.endswith(".gz"):
            size = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
        else:
            size = path.stat().st_size
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError) as exc:
        raise InputDataError(
            f"{path}: cannot read the image data ({type(exc).__name__}); {fix}."
        ) from None
    if size < expected:
        raise InputDataError(
            f"{path}: cannot read the image data (it holds {size} of {expected} bytes); {fix}."
        )


def check_all_readable(paths: Iterable[str | Path], cache: Path) -> None:
    """:func:`check_readable` for each file not proven before (``cache`` remembers them)."""
    try:
        proven = set(json.loads(Path(cache).read_text()))
    except (OSError, ValueError, TypeError):
        proven = set()
    todo = [(p, file_fingerprint(p)) for p in paths]
    todo = [(p, key) for p, key in todo if key not in proven]
    if todo:
        LOGGER.info("checking that %d BOLD file(s) read to the end", len(todo))
    for path, key in todo:
        check_readable(path)
        proven.add(key)
    if todo:
        write_json(cache, sorted(proven))
