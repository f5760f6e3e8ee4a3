"""The process environment a run needs, made safe for any user before anything heavy loads.

A container runs as whatever uid ``docker run -u`` or Apptainer gives it, with a read-only
install, a HOME that may not exist and no network.  Three libraries want to write at import
or run time: numba (its compiled-kernel cache), matplotlib (its font cache and config) and
nipype (``~/.nipype``); nipype also looks up its latest version online unless told not to.
:func:`prepare_environment` points each of them at a writable folder of this user's own when
the configured one (or HOME, their default) is not writable, and switches nipype's network lookup off, so the app
works for every uid and never reaches the network on its own.

It runs when :mod:`bids_cnm.cli` is imported, i.e. before numba, matplotlib or nipype are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["prepare_environment", "user_cache_root", "writable_dir"]

#: environment variables of writable folders, and the sub-folder used when they are not
CACHE_VARIABLES = {
    "NUMBA_CACHE_DIR": "numba",
    "MPLCONFIGDIR": "matplotlib",
}


def writable_dir(path: str | os.PathLike | None, create: bool = False) -> bool:
    """True when ``path`` is a folder this user may write into.

    With ``create``, a missing folder is made first (for cache folders; never for HOME).
    """
    if not path:
        return False
    path = Path(path)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def user_cache_root(environ: MutableMapping[str, str] | None = None) -> Path:
    """``$TMPDIR/bids_cnm-<uid>``: a per-user folder (users sharing /tmp never collide)."""
    environ = os.environ if environ is None else environ
    base = environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(base) / f"bids_cnm-{os.getuid()}"


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Give numba, matplotlib and nipype writable folders; keep nipype offline.

    Parameters
    ----------
    environ : mapping, optional
        The environment to update (``os.environ`` by default).

    Returns
    -------
    dict
        The variables that were set, with their new values (empty when nothing changed).
    """
    environ = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    # nipype's version check ("etelemetry") is a network request at import: never by default
    if "NIPYPE_NO_ET" not in environ:
        changed["NIPYPE_NO_ET"] = "1"
    root = user_cache_root(environ)
    if not writable_dir(environ.get("HOME")):
        changed["HOME"] = str(root / "home")
    for variable, sub in CACHE_VARIABLES.items():
        # unset, each library falls back to a folder under HOME (made writable above)
        if variable in environ and not writable_dir(environ[variable], create=True):
            changed[variable] = str(root / sub)
    for variable, value in changed.items():
        if variable != "NIPYPE_NO_ET":
            Path(value).mkdir(parents=True, exist_ok=True, mode=0o700)
        environ[variable] = value
    return changed
