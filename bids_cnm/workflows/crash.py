"""Turn the nipype crash files of a failed run back into one-line bids_cnm errors."""

from __future__ import annotations

import re
from pathlib import Path

from bids_cnm import errors
from bids_cnm.errors import CNMError, ReadError

__all__ = ["error_from_crash"]

_ERROR_LINE = re.compile(r"bids_cnm\.errors\.(\w+): (.*)")
_EXCEPTION_LINE = re.compile(r"^\w+(\.\w+)*(Error|Exception)")


def error_from_crash(crash_dir: Path, since: float) -> CNMError:
    """The error of this run's nipype crash files (written at or after ``since``).

    A :class:`~bids_cnm.errors.CNMError` raised inside a node keeps its class
    (and so its exit code); anything else becomes a :class:`ReadError` quoting
    the exception's last line and the crash file.

    Parameters
    ----------
    crash_dir : Path
        nipype's ``crashdump_dir`` (text crash files).
    since : float
        Start of the run (seconds since the epoch): older crash files are another run's.

    Returns
    -------
    CNMError
    """
    crashes = [c for c in sorted(Path(crash_dir).glob("crash-*.txt"))
               if c.stat().st_mtime >= since]
    for crash in crashes:
        for line in crash.read_text(errors="replace").splitlines():
            match = _ERROR_LINE.search(line.strip())
            if match and isinstance(getattr(errors, match.group(1), None), type):
                return getattr(errors, match.group(1))(match.group(2))
    if crashes:
        lines = [ln.strip() for ln in crashes[0].read_text(errors="replace").splitlines()]
        last = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), "")
        return ReadError(
            f"a step failed: {last or 'see the crash file'} (details: {crashes[0]}). "
            "Fix the cause and run the same command again: finished steps are reused."
        )
    return ReadError(
        f"the workflow failed without a crash file in {crash_dir}; run again with -vv."
    )
