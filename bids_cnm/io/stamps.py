"""What tells a file's or a folder's version without reading it: a digest of ``stat`` rows.

Used wherever an earlier result may be reused only while its inputs are unchanged: the
re-run check (:mod:`bids_cnm.io.rerun`) and pybids' saved index
(:mod:`bids_cnm.io.layout_cache`).  Only the standard library is imported: both run
before the heavy libraries load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["digest", "stamp", "stat_row", "walk_rows"]


def digest(content: object, length: int = 12) -> str:
    """``length`` hex digits of the SHA-256 of ``content``'s JSON (keys sorted; other
    objects, such as paths, as their text)."""
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def stat_row(path: str, name: str) -> list:
    """What tells a file's version: size, modification and change times, inode.

    A rewrite changes the modification time; an atomic replacement the inode; a
    modification time set back by hand still changes the change time.  ``stat``
    follows symbolic links (a connectome imported as links to its source), and the
    link's own target is kept too.
    """
    try:
        st = os.stat(path)
    except OSError:
        return [name, None]
    target = os.readlink(path) if os.path.islink(path) else None
    return [name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, target]


def walk_rows(root: Path) -> list:
    """Stat rows of every file under ``root`` (symbolic links followed, each folder once)."""
    rows = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            rows.append(stat_row(os.path.join(folder, name),
                                  os.path.relpath(os.path.join(folder, name), root)))
    return rows


def stamp(path: Path) -> str:
    """Digest of a file's or a folder's stat rows."""
    path = Path(path)
    rows = walk_rows(path) if path.is_dir() else [stat_row(str(path), path.name)]
    return digest([str(path), rows])
