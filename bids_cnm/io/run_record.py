"""The run record of an output folder: which connectome and settings its files come from.

``OUTPUT_DIR/logs/bids_cnm_run.json`` holds::

    {"dataset": {"path": ..., "Name": ..., "DatasetDOI": ...},
     "levels": {"participant": {"settings": {...}, "started": ..., "start_time": ...,
                                "files": [...] | null, "foreign": [...]},
                "group": {...}}}

``files`` lists the level's files (paths relative to OUTPUT_DIR, sorted) once a
run of that level has finished, ``null`` while one runs (or after it was killed);
``foreign`` lists files in the level's scope that no run of these settings wrote
(e.g. the user's README): never listed as the run's, never removed.  A level's
entry may also hold ``warnings`` (what its run logged as warnings, each
``{"message", "source", "time"}``, :func:`add_warning`) and facts about its inputs
such as ``volumes`` (BOLD volumes per subject, :func:`add_facts`); a new group run
starts a new entry, so they describe the latest run, while a participant job of the
same settings keeps the warnings and volumes of the earlier jobs that share the folder
(one job per subject on a cluster) and adds its own.
A run whose connectome or level settings differ from the record is refused
(:class:`~bids_cnm.errors.UsageError`, exit 64: the command line contradicts the
folder) unless ``overwrite`` is given, which removes the earlier run's files of
that level (all levels when the connectome differs), and only those.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bids_cnm.errors import InputDataError, UsageError
from bids_cnm.io.lock import LOCK_NAME

__all__ = [
    "MAX_WARNINGS",
    "RECORD",
    "add_facts",
    "add_warning",
    "begin_run",
    "finish_run",
    "level_files",
    "read_record",
]

#: the record, relative to OUTPUT_DIR
RECORD = Path("logs") / "bids_cnm_run.json"

_LEVELS = ("participant", "group")

#: warnings kept per level entry (a warning repeated in a loop must not grow the
#: record without bound); the others are counted in ``warnings_dropped``
MAX_WARNINGS = 100


def level_files(output_dir: Path, level: str) -> list[str]:
    """Files of one analysis level in ``output_dir`` (relative, sorted).

    Participant files sit under ``sub-<label>/``; group files are all others, except ``logs/``,
    ``dataset_description.json`` (shared by both levels) and the lock file.
    """
    root = Path(output_dir)
    out = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(root)
        top = rel.parts[0]
        if level == "participant":
            keep = top.startswith("sub-")
        else:
            keep = (not top.startswith("sub-") and top != "logs"
                    and rel.name not in ("dataset_description.json", LOCK_NAME))
        if keep:
            out.append(rel.as_posix())
    return sorted(out)


def _write(output_dir: Path, record: dict) -> Path:
    # imported here: reading the record (the re-run check, bids_cnm.io.rerun) must not
    # load the derivatives writer's numpy, pandas and nibabel
    from bids_cnm.io.derivatives import write_json

    return write_json(output_dir / RECORD, record)


def _read(output_dir: Path) -> dict | None:
    path = output_dir / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InputDataError(
            f"{path}: the run record cannot be read ({type(exc).__name__}); choose another "
            "OUTPUT_DIR, or delete the record and the outputs it described."
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("levels"), dict):
        raise InputDataError(f"{path}: not a bids_cnm run record; choose another OUTPUT_DIR.")
    return record


#: settings named first when they differ
_FIRST = {"version": 0, "code": 1}


def _first_difference(before: dict, now: dict) -> str:
    # another bids_cnm first: it explains the other differences (the connectivity
    # hash, for one, is made with the code)
    for key in sorted(set(before) | set(now), key=lambda k: (_FIRST.get(k, len(_FIRST)), k)):
        if before.get(key) != now.get(key):
            there = _short(before[key]) if key in before else "not recorded"
            return f"{key}: {there} there, {_short(now.get(key))} now"
    return "settings differ"


def _short(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _earlier_files(output_dir: Path, level: str, entry: dict) -> list[str]:
    """The files an earlier run of ``level`` wrote: its list, or (when it was
    interrupted before listing them) the level's files written since it started."""
    if entry.get("files") is not None:
        return [f for f in entry["files"] if (output_dir / f).is_file()]
    since = float(entry.get("start_time", 0)) - 1
    foreign = set(entry.get("foreign", []))
    return [f for f in level_files(output_dir, level)
            if f not in foreign and (output_dir / f).stat().st_mtime >= since]


def _remove(output_dir: Path, files: list[str]) -> None:
    for rel in files:
        path = output_dir / rel
        path.unlink(missing_ok=True)
        # drop folders the removal emptied (sub-XX/func, sub-XX)
        for parent in path.parents:
            if parent == output_dir or any(parent.iterdir()):
                break
            parent.rmdir()


def _legacy_outputs(output_dir: Path) -> bool:
    """Outputs of a bids_cnm run that kept no record (an older version)."""
    description = output_dir / "dataset_description.json"
    if not description.exists():
        return False
    try:
        generated = json.loads(description.read_text("utf-8")).get("GeneratedBy", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(g, dict) and g.get("Name") == "bids_cnm" for g in generated)


@contextlib.contextmanager
def _updating(output_dir: Path) -> Iterator[None]:
    """Serialize updates of the record (participant jobs may share a folder)."""
    folder = Path(output_dir) / RECORD.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".bids_cnm_run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def begin_run(
    output_dir: Path, level: str, dataset: dict, settings: dict, overwrite: bool = False
) -> list[str]:
    """Check the folder's record against this run and record the run as started.

    Parameters
    ----------
    output_dir : Path
    level : {'participant', 'group'}
    dataset : dict
        Identity of the connectome (:func:`bids_cnm.io.identity.dataset_identity`).
    settings : dict
        The settings that determine this level's outputs (JSON values).
    overwrite : bool
        Remove the files of an earlier run with other settings instead of refusing.

    Returns
    -------
    list of str
        The files removed (relative to ``output_dir``).

    Raises
    ------
    UsageError
        The folder holds outputs of another connectome or other settings (exit 64).
    """
    with _updating(output_dir):
        return _begin(Path(output_dir), level, dataset, settings, overwrite)


def _begin(output_dir: Path, level: str, dataset: dict, settings: dict,
           overwrite: bool) -> list[str]:
    record = _read(output_dir)
    settings = json.loads(json.dumps(settings, default=str))
    removed: list[str] = []
    if record is None:
        if _legacy_outputs(output_dir):
            if not overwrite:
                raise UsageError(
                    f"OUTPUT_DIR {output_dir} holds bids_cnm outputs without a run record "
                    "(an older version), so their settings are unknown; choose another "
                    "OUTPUT_DIR, or add --overwrite to remove them first."
                )
            removed = [f for lv in _LEVELS for f in level_files(output_dir, lv)]
            _remove(output_dir, removed)
        record = {"dataset": dataset, "levels": {}}
    elif record.get("dataset") != dataset:
        if not overwrite:
            raise UsageError(
                f"OUTPUT_DIR {output_dir} holds outputs made from the connectome "
                f"{record.get('dataset', {}).get('path')}, not {dataset['path']}; choose "
                "another OUTPUT_DIR, or add --overwrite to remove them first."
            )
        for lv, entry in record["levels"].items():
            removed += _earlier_files(output_dir, lv, entry)
        _remove(output_dir, removed)
        record = {"dataset": dataset, "levels": {}}
    entry = record["levels"].get(level)
    same = entry is not None and entry.get("settings") == settings
    if entry is not None and not same:
        if not overwrite:
            raise UsageError(
                f"OUTPUT_DIR {output_dir} holds {level}-level outputs of other settings "
                f"({_first_difference(entry.get('settings', {}), settings)}); choose another "
                "OUTPUT_DIR, or add --overwrite to remove that run's files first."
            )
        files = _earlier_files(output_dir, level, entry)
        _remove(output_dir, files)
        removed += files
        entry = None
    # files of the level's scope that no run of these settings wrote (the user's own):
    # never listed as this run's, never removed
    ours = set(_earlier_files(output_dir, level, entry)) if same else set()
    foreign = set(entry.get("foreign", [])) if same else set()
    foreign |= set(level_files(output_dir, level)) - ours
    new_entry = {
        "settings": settings,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "start_time": time.time(),
        "files": None,
        "foreign": sorted(foreign),
    }
    if same and level == "participant":
        # participant jobs of other subjects share the folder (an array on a cluster):
        # their outputs stay, and so do their warnings and subjects' volumes (a group run
        # rewrites its outputs and starts its entry afresh)
        for key in ("warnings", "warnings_dropped", "volumes"):
            if key in entry:
                new_entry[key] = entry[key]
    record["levels"][level] = new_entry
    _write(output_dir, record)
    return removed


def finish_run(output_dir: Path, level: str) -> Path:
    """Record the files of the level's finished run (the manifest the report may read).

    The level's files in the folder are all of these settings (other settings were
    refused or removed by :func:`begin_run`), including those of earlier participant
    jobs of other subjects.

    Parameters
    ----------
    output_dir : Path
    level : {'participant', 'group'}

    Returns
    -------
    Path
        The record.
    """
    output_dir = Path(output_dir)
    with _updating(output_dir):
        record = _read(output_dir)
        assert record is not None, "begin_run first"
        entry = record["levels"][level]
        foreign = set(entry.get("foreign", []))
        entry["files"] = [f for f in level_files(output_dir, level) if f not in foreign]
        return _write(output_dir, record)


def _update_entry(output_dir: Path, level: str, change) -> None:
    """Apply ``change(entry)`` to the level's entry of the record (serialized)."""
    output_dir = Path(output_dir)
    with _updating(output_dir):
        record = _read(output_dir)
        if record is None or level not in record["levels"]:
            return  # no run recorded here (begin_run not called): nothing to add to
        change(record["levels"][level])
        _write(output_dir, record)


def add_warning(output_dir: Path, level: str, warning: dict) -> None:
    """Append one warning of the running level's run to the record.

    Parameters
    ----------
    output_dir : Path
    level : {'participant', 'group'}
    warning : dict
        ``{"message": str, "source": str, "time": str}`` (JSON values).

    Notes
    -----
    Safe to call from the workflow's worker processes: updates are serialized by a
    file lock.  The same message from the same source is kept once.
    """

    def change(entry: dict) -> None:
        kept = entry.setdefault("warnings", [])
        if any(w.get("message") == warning.get("message")
               and w.get("source") == warning.get("source") for w in kept):
            return
        if len(kept) >= MAX_WARNINGS:
            entry["warnings_dropped"] = int(entry.get("warnings_dropped", 0)) + 1
            return
        kept.append(warning)

    _update_entry(output_dir, level, change)


def add_facts(output_dir: Path, level: str, **facts: object) -> None:
    """Record facts about the running level's inputs (e.g. ``volumes``) in its entry.

    ``volumes`` (per subject) is merged into the recorded one, which holds those of
    the earlier participant jobs sharing the folder; any other fact replaces its value.
    """
    facts = json.loads(json.dumps(facts, default=str))

    def change(entry: dict) -> None:
        for key, value in facts.items():
            if key == "volumes" and isinstance(entry.get(key), dict):
                entry[key] = {**entry[key], **value}
            else:
                entry[key] = value

    _update_entry(output_dir, level, change)


def read_record(output_dir: Path) -> dict | None:
    """The output folder's run record (``None`` when there is none or it is unreadable)."""
    try:
        return _read(Path(output_dir))
    except InputDataError:
        return None
