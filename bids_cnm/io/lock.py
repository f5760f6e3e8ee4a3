"""An exclusive lock on a folder for a run's lifetime.

Two runs writing one output (or work) folder would interleave their files.
:class:`FolderLock` takes an ``fcntl.flock`` on a lock file in the folder; the
file holds the holder's PID, host and start time so the second run can say who
holds it.  The kernel releases a flock when its process dies, so the lock of a
killed run is taken over without any clean-up.  (flock is advisory and, on some
network file systems, local to one machine: runs on two hosts sharing a folder
over NFS may not see each other's lock.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from bids_cnm.errors import OutputError

__all__ = ["LOCK_NAME", "FolderLock"]

LOCK_NAME = ".bids_cnm.lock"


class FolderLock:
    """Exclusive lock on ``folder`` (a context manager).

    Parameters
    ----------
    folder : Path
        The folder (must exist).
    role : str
        What the folder is for, in messages (e.g. ``OUTPUT_DIR``).
    shared : bool
        A shared lock: runs that may share the folder (participant jobs of one
        cohort, one per subject) hold it together; an exclusive lock (a group run)
        excludes them all.

    Raises
    ------
    OutputError
        When another live process holds the lock (exit code 73), naming it.
    """

    def __init__(self, folder: Path, role: str, shared: bool = False) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.role = role
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise :class:`OutputError` at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file {self.path} ({exc.strerror}); make "
                f"{self.role} {self.path.parent} writable."
            ) from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise OutputError(
                f"{self.role} {self.path.parent} is in use by another bids_cnm run "
                f"({holder}); wait for it to finish, stop it, or choose another folder."
            ) from None
        # ours now (a dead holder's flock went with its process): say who holds it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays: unlinking it would race with a waiting run)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')}")
