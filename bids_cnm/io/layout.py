"""Where each output goes: the group-level folders and the ``.bidsignore``.

BIDS defines no layout for group analyses, so the group outputs sit in one
folder per analysis (``network/``, ``seeds/``, ``sensitivity/``...), every file
keeping its entities in its name.  The folders, the ``logs/`` and the suffixes
BIDS does not define (``boldmap``, ``peaks``...) are listed in ``.bidsignore``
so the official validator checks the rest (participant masks, the analysis
mask, ``dataset_description.json``) and passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: group-level folders and what they hold (docs/outputs.md shows the same list)
GROUP_FOLDERS: dict[str, str] = {
    "seeds": "seed masks and every seed's mean r, mean z and t-map",
    "network": "overlap networks of every coordinate set at every threshold, their peaks",
    "sensitivity": "networks of the sensitivity variants (sphere sizes, subgroups, second "
    "connectome) and the tables comparing them",
    "specificity": "permutation tests of the study networks against each control set",
    "degree": "the connectome's degree map and the degree check",
    "validation": "the analysis plan's validation analyses",
    "dbs": "the analysis plan's DBS analysis",
    "ale": "the analysis plan's activation likelihood estimation (NiMARE)",
}

#: where the run's record goes (configuration, methods boilerplate, plan)
LOGS_FOLDER = "logs"

#: app-specific names the BIDS schema does not define: suffixes, root files, folders
BIDSIGNORE = (
    "*.html",  # the report
    # rooted and without a trailing slash: bids-validator 2.x ignores a folder so
    # (with "network/" it still reports the folder itself as NOT_INCLUDED)
    f"/{LOGS_FOLDER}",
    *(f"/{folder}" for folder in GROUP_FOLDERS),
    "/seeds.tsv",  # the seeds table (and its sidecar), kept at the root for the report
    "/seeds.json",
    "*_boldmap.*",  # participant z-maps: BIDS has no suffix for a seed's connectivity map
)

_VALIDATION_DESCS = ("controls", "roioverlap", "spatialcorr", "roitoroi", "peak")


def group_folder(entities: Mapping[str, object], suffix: str) -> str | None:
    """The analysis folder of a group-level file, from its entities.

    Parameters
    ----------
    entities : mapping
        The file's entities (``None`` values are ignored).
    suffix : str
        The file's suffix.

    Returns
    -------
    str or None
        A key of :data:`GROUP_FOLDERS`, or ``None`` for the root (the analysis
        mask and the files of no single analysis).
    """
    ents = {k: str(v) for k, v in entities.items() if v not in (None, "")}
    desc, stat, set_name = ents.get("desc", ""), ents.get("stat", ""), ents.get("set", "")
    if "control" in ents:
        return "specificity"
    if "seed" in ents:
        return "seeds"
    if stat == "degree" or desc.startswith("degree"):
        return "degree"
    if desc.startswith("ale"):
        return "ale"
    if set_name == "dbs" or desc.startswith(("dbs", "convergent")):
        return "dbs"
    if "variant" in ents or desc in ("sensitivity", "connectomes"):
        return "sensitivity"
    if desc.startswith(_VALIDATION_DESCS):
        return "validation"
    if suffix == "mask" and desc == "analysis":
        return None
    if "set" in ents:
        return "network"
    return "validation"


def write_bidsignore(root: Path) -> Path:
    """Write ``.bidsignore`` at ``root``, keeping lines another tool put there.

    Parameters
    ----------
    root : Path
        The derivatives folder.

    Returns
    -------
    Path
        The ``.bidsignore`` file.
    """
    from bids_cnm.io.derivatives import write_text

    path = Path(root) / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    lines += [p for p in BIDSIGNORE if p not in lines]
    return write_text(path, "\n".join(lines) + "\n")
