"""The identity of the code that runs: which bids_cnm computed a cached step or an output.

nipype reuses a step when its inputs hash the same, and the run record and the re-run
check compare options and input files: none of them sees the code.  A step cached, or
a folder of outputs written, by another bids_cnm -- another release, or the same
version number with other code, as in a development install or one from a git branch
-- would otherwise pass for this code's result.  :func:`code_identity` is the version
and a digest of the package's files that an installation holds (:data:`PACKAGE_FILES`:
the sources, and the package data of ``setup.cfg``: report templates, schemas, tables),
read in a few milliseconds.  Anything else in the package's folder is left out: the
byte-code and numba caches in ``__pycache__`` (they follow from the sources), and what
only a checkout may hold (an editor's swap files, ``.DS_Store``), so a checkout and a
wheel of the same commit have the same identity.

It enters:

- every step's nipype hash (the ``code`` input of :mod:`bids_cnm.interfaces.cnm`), so
  a step cached by other code runs again;
- the settings the run record compares (:func:`bids_cnm.workflows.inputs.level_settings`),
  so outputs of other code in OUTPUT_DIR are refused, or removed with ``--overwrite``,
  as outputs of other settings are;
- the key of reusable participant z-maps (:func:`bids_cnm.workflows.inputs.connectivity_hash`);
- the key of a saved pybids query (:func:`bids_cnm.io.layout_cache.query_key`): another
  bids_cnm may select other runs or masks from the same index;
- the re-run check's seal (:mod:`bids_cnm.io.rerun`), so a finished run is not
  verified as up to date by other code.

The prepared time series in the work folder are not keyed by it: decoding a
connectome again after every change of the report would cost hours at 1000
subjects.  They carry their own layout version
(:data:`bids_cnm.engine.timeseries.FORMAT_VERSION`), raised whenever what preparation
computes changes; so do the degree check's saved subject shares
(:func:`bids_cnm.engine.degree.share_name`), and the grey matter resampled to the grid
is keyed by nilearn's version.

Only the standard library is imported: the re-run check calls it before numpy loads.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from bids_cnm import __version__

__all__ = ["PACKAGE_ROOT", "code_identity"]

#: the installed package whose files are digested
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

#: the files of the package an installation holds: its modules and its package data
#: (``[options.package_data]`` of ``setup.cfg``; a test keeps the two lists equal)
PACKAGE_FILES = ("**/*.py", "data/*.json", "data/*.tsv", "reports/templates/*.j2",
                 "reports/templates/*.css", "reports/data/*.tsv")


def code_identity() -> str:
    """The version and a digest of the installed package's files.

    Returns
    -------
    str
        ``"<version>+<12 hex digits>"``, e.g. ``"0.1.0+928fc945affd"``: equal for the
        same files, different after any change of any of them.
    """
    return _identity(PACKAGE_ROOT)


@lru_cache(maxsize=8)
def _identity(root: Path) -> str:
    files = sorted({p.relative_to(root).as_posix() for pattern in PACKAGE_FILES
                    for p in root.glob(pattern)
                    if p.is_file() and not any(part.startswith((".", "__pycache__"))
                                               for part in p.relative_to(root).parts)})
    sha = hashlib.sha256()
    for name in files:
        try:
            content = (root / name).read_bytes()
        except OSError as error:  # removed or unreadable since listed: still an identity
            content = f"unreadable: {error.strerror}".encode()
        # the name and the length delimit each file: moving bytes from one file to the
        # next, or renaming a file, changes the digest
        sha.update(f"{name}\0{len(content)}\0".encode())
        sha.update(content)
    return f"{__version__}+{sha.hexdigest()[:12]}"
