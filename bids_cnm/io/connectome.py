"""Discover the connectome: BOLD runs and brain masks of a BIDS derivatives dataset.

The connectome is any BIDS derivatives dataset of preprocessed resting-state
BOLD in a template space (fMRIPrep ``desc-preproc_bold``, XCP-D
``desc-denoised_bold``).  Indexing uses pybids; nothing is written into the
dataset (pybids' database, when one is kept, lives in the work directory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm.errors import (
    InputDataError,
    MissingInputError,
    NoMatchError,
    UsageError,
    where,
)

LOGGER = logging.getLogger("bids_cnm")

_AFFINE_TOL = 1e-4

#: how the connectome is indexed with pybids: BIDS and derivatives entities, no
#: validation, and the sidecars' metadata not indexed -- every query selects by entities
#: (reading every JSON sidecar was two thirds of indexing: 4.2 against 1.5 s for 1000
#: subjects), and a --bids-filter-file naming a metadata key is refused with pybids' own
#: "not a recognized entity"
LAYOUT_OPTIONS = {"validate": False, "config": ["bids", "derivatives"], "index_metadata": False}


@dataclass(frozen=True)
class SubjectData:
    """The BOLD runs of one connectome subject.

    Parameters
    ----------
    label : str
        Subject label without ``sub-``.
    bold : tuple of str
        BOLD runs (sessions and runs in sorted order); each is standardized on
        its own, then the runs are concatenated in time.
    masks : tuple of str
        Brain masks that go with the runs (may be empty).
    volumes : tuple of int
        Volumes of each BOLD run, read from its header when the connectome was indexed
        (empty when not known).
    """

    label: str
    bold: tuple[str, ...]
    masks: tuple[str, ...]
    volumes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Connectome:
    """The selected subjects of a connectome and their common grid."""

    root: Path
    subjects: tuple[SubjectData, ...]
    task: str | None
    space: str
    res: str | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    #: brain masks of every subject the filters select, before --participant-label,
    #: so that participant jobs of one cohort all build the same seeds
    support_masks: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """Subject labels, sorted."""
        return [s.label for s in self.subjects]

    @property
    def reference(self) -> str:
        """A BOLD file that defines the grid (the first subject's first run)."""
        return self.subjects[0].bold[0]


def strip_sub(label: str) -> str:
    """Return a participant label without the ``sub-`` prefix."""
    label = label.strip()
    return label.removeprefix("sub-")


def read_participant_filter(
    root: Path, filters: tuple[tuple[str, str], ...]
) -> set[str] | None:
    """Select subjects from ``participants.tsv`` by ``column == value`` filters.

    Parameters
    ----------
    root : Path
        Dataset root holding ``participants.tsv``.
    filters : tuple of (column, value)
        All must hold (logical AND); several values of one column are OR-ed.

    Returns
    -------
    set of str or None
        Labels (without ``sub-``) that pass, or ``None`` when there are no filters.
    """
    if not filters:
        return None
    tsv = root / "participants.tsv"
    if not tsv.exists():
        raise MissingInputError(
            f"--participant-filter needs {tsv}, which does not exist: add a "
            "participants.tsv with a participant_id column or drop the filter."
        )
    table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        raise InputDataError(
            f"{where(tsv, 1)}: no 'participant_id' column (found: "
            f"{', '.join(table.columns)}); add it as the first column."
        )
    keep = pd.Series(True, index=table.index)
    by_column: dict[str, list[str]] = {}
    for column, value in filters:
        by_column.setdefault(column, []).append(value)
    for column, values in by_column.items():
        if column not in table.columns:
            raise InputDataError(
                f"{where(tsv, 1)}: --participant-filter names column '{column}', "
                f"which is not there (columns: {', '.join(table.columns)})."
            )
        keep &= table[column].str.strip().isin(values)
    return {strip_sub(p) for p in table.loc[keep, "participant_id"]}


def _layout(root: Path, database_path: Path | None, index_key: str | None):
    from bids_cnm.io.layout_cache import cached_layout, open_layout

    if not root.is_dir():
        raise MissingInputError(f"BIDS_DIR {root} is not a folder: give the connectome's path.")
    if not (root / "dataset_description.json").exists():
        raise InputDataError(
            f"{root} has no dataset_description.json: BIDS_DIR must be a BIDS "
            "(derivatives) dataset, e.g. fMRIPrep or XCP-D outputs."
        )
    if database_path is not None:
        return cached_layout(root, database_path, key=index_key, **LAYOUT_OPTIONS)
    return open_layout(root, **LAYOUT_OPTIONS)


def _single(layout, entity: str, requested: str | None, query: dict, flag: str) -> str | None:
    """Resolve an entity value: the requested one, or the only one present."""
    values = sorted(layout.get(return_type="id", target=entity, **query))
    if requested is not None:
        if values and requested not in values:
            raise NoMatchError(
                f"{flag} {requested} matches no BOLD run in {layout.root}; "
                f"available: {', '.join(map(str, values))}."
            )
        return requested
    if len(values) > 1:
        raise UsageError(
            f"the connectome has BOLD runs with several {entity} values "
            f"({', '.join(map(str, values))}); choose one with {flag}."
        )
    return values[0] if values else None


def index_connectome(
    root: str | Path,
    *,
    participant_label: tuple[str, ...] = (),
    participant_filter: tuple[tuple[str, str], ...] = (),
    task: str | None = None,
    space: str | None = None,
    res: str | None = None,
    bold_desc: tuple[str, ...] = ("preproc", "denoised"),
    database_path: Path | None = None,
    filters: dict | None = None,
) -> Connectome:
    """Index the connectome's BOLD runs and masks with pybids and check the grid.

    Parameters
    ----------
    root : path
        BIDS derivatives dataset.
    participant_label : tuple of str
        Subjects to keep (with or without ``sub-``); empty keeps all.
    participant_filter : tuple of (column, value)
        ``participants.tsv`` filters (e.g. ``(("group", "IGE"),)``).
    task, space, res : str or None
        Entity values; ``None`` accepts the only value present.
    bold_desc : tuple of str
        Accepted ``desc`` values of BOLD files.
    database_path : Path, optional
        Folder where pybids' index is saved and reused while the dataset's files are
        unchanged (see :mod:`bids_cnm.io.layout_cache`; never inside ``root``).
    filters : dict, optional
        More pybids entity filters of the BOLD runs and masks (``--bids-filter-file``'s
        ``bold`` query, e.g. ``{"session": "1"}``).

    Returns
    -------
    Connectome

    Notes
    -----
    With ``database_path``, the result is also saved there, keyed by the dataset's
    files and this query (:func:`bids_cnm.io.layout_cache.query_key`): the same query
    on an unchanged dataset is answered without importing pybids.
    """
    root = Path(root).resolve()
    query = {"participant_label": participant_label, "participant_filter": participant_filter,
             "task": task, "space": space, "res": res, "bold_desc": bold_desc,
             "filters": filters}
    index_key = None
    if database_path is not None:
        from bids_cnm.io.layout_cache import (
            layout_key,
            load_query,
            query_key,
            save_query,
        )

        # one stat walk of the dataset keys both the saved query and the saved index
        index_key = layout_key(root, LAYOUT_OPTIONS)
        key = query_key(index_key, {**query, "record": _RECORD_FORMAT})
        saved = load_query(database_path, key)
        if saved is not None:
            connectome = _from_record(saved)
            _log_connectome(connectome)
            return connectome
    connectome = _index(root, database_path, index_key, **query)
    if database_path is not None:
        save_query(database_path, key, _to_record(connectome))
    return connectome


#: version of :func:`_to_record`'s layout, part of a saved query's key (2: each subject's
#: runs' volumes), so a query saved by an older version is answered again
_RECORD_FORMAT = 2


def _to_record(connectome: Connectome) -> dict:
    """The connectome as JSON-able values (paths as text, the affine as nested lists)."""
    return {"root": str(connectome.root),
            "subjects": [[s.label, list(s.bold), list(s.masks), list(s.volumes)]
                         for s in connectome.subjects],
            "task": connectome.task, "space": connectome.space, "res": connectome.res,
            "shape": list(connectome.shape), "affine": connectome.affine.tolist(),
            "support_masks": list(connectome.support_masks)}


def _from_record(record: dict) -> Connectome:
    """Inverse of :func:`_to_record` (floats round-trip exactly through JSON)."""
    return Connectome(
        Path(record["root"]),
        tuple(SubjectData(label, tuple(bold), tuple(masks), tuple(volumes))
              for label, bold, masks, volumes in record["subjects"]),
        record["task"], record["space"], record["res"], tuple(record["shape"]),
        np.asarray(record["affine"], dtype=float), tuple(record["support_masks"]),
    )


def _log_connectome(connectome: Connectome) -> None:
    subjects = connectome.subjects
    LOGGER.info(
        "connectome %s: %d subject(s) (%s), %d run(s), space-%s%s, grid %s",
        connectome.root,
        len(subjects),
        ", ".join(s.label for s in subjects[:8]) + (" …" if len(subjects) > 8 else ""),
        sum(len(s.bold) for s in subjects),
        connectome.space,
        f" res-{connectome.res}" if connectome.res else "",
        "x".join(map(str, connectome.shape)),
    )


def _index(
    root: Path, database_path: Path | None, index_key: str | None, *, participant_label,
    participant_filter, task, space, res, bold_desc, filters,
) -> Connectome:
    """:func:`index_connectome`'s indexing with pybids (arguments as there; ``index_key``:
    the saved index's :func:`~bids_cnm.io.layout_cache.layout_key`)."""
    layout = _layout(root, database_path, index_key)
    base = {"suffix": "bold", "extension": [".nii", ".nii.gz"], "desc": list(bold_desc)}
    if not layout.get(**base):
        raise NoMatchError(
            f"no BOLD file with desc in {{{', '.join(bold_desc)}}} in {root}: BIDS_DIR "
            "must hold preprocessed BOLD (e.g. *_desc-preproc_bold.nii.gz); see --bold-desc."
        )
    if filters:
        base.update(filters)
        try:
            found = layout.get(**base)
        except ValueError as exc:  # pybids: an entity it does not know
            raise UsageError(f"--bids-filter-file: {exc}") from exc
        if not found:
            raise NoMatchError(f"--bids-filter-file {filters} matches no BOLD run in {root}.")
    space = _single(layout, "space", space, base, "--space")
    if space is None:
        raise NoMatchError(
            f"the BOLD files in {root} have no space- entity: bids_cnm needs BOLD "
            "in a template space (e.g. space-MNI152NLin2009cAsym)."
        )
    base["space"] = space
    task = _single(layout, "task", task, base, "--task")
    if task is not None:
        base["task"] = task
    res = _single(layout, "res", res, base, "--res")
    if res is not None:
        base["res"] = res

    available = sorted(layout.get(return_type="id", target="subject", **base))
    selected = set(available)
    cohort = read_participant_filter(root, participant_filter)
    if cohort is not None:
        selected &= cohort
        if not selected:
            raise NoMatchError(
                "--participant-filter "
                + " ".join(f"{c}={v}" for c, v in participant_filter)
                + f" selects no subject with BOLD in {root}."
            )
    mask_query = dict(base, suffix="mask", desc="brain")
    support_masks = tuple(
        sorted(layout.get(subject=sorted(selected), return_type="filename", **mask_query))
    )
    if participant_label:
        wanted = {strip_sub(p) for p in participant_label}
        missing = sorted(wanted - selected)
        if missing:
            raise NoMatchError(
                f"--participant-label {' '.join(missing)}: no matching BOLD run in "
                f"{root} (subjects with BOLD: {', '.join(available[:20])}"
                f"{' …' if len(available) > 20 else ''})."
            )
        selected &= wanted
        if not selected:
            raise NoMatchError(
                f"--participant-label {' '.join(sorted(wanted))}: none of these subjects "
                "passes --participant-filter."
            )

    # two queries for the whole cohort, grouped here: one query per subject made the
    # indexing grow with the cohort (~30 ms per subject, half a minute at 1000)
    wanted_subjects = sorted(selected)
    bold_of = _files_by_subject(layout, wanted_subjects, base)
    masks_of = _files_by_subject(layout, wanted_subjects, mask_query)
    subjects = [SubjectData(label, tuple(bold_of.get(label, ())), tuple(masks_of.get(label, ())))
                for label in wanted_subjects]
    if not subjects:
        raise NoMatchError(f"no subject selected in {root}.")

    shape, affine, volumes = check_grid(subjects)
    # kept with the index: a later run on the unchanged dataset opens no header for them
    subjects = [replace(s, volumes=tuple(volumes[p] for p in s.bold))
                for s in subjects]
    connectome = Connectome(root, tuple(subjects), task, space, res, shape, affine,
                            support_masks)
    _log_connectome(connectome)
    return connectome


def _files_by_subject(layout, subjects: list[str], query: dict) -> dict[str, list[str]]:
    """Paths matching ``query`` for ``subjects``, sorted, by subject label (one query)."""
    found: dict[str, list[str]] = {}
    if not subjects:
        return found
    for f in layout.get(subject=subjects, return_type="object", **query):
        found.setdefault(str(f.entities["subject"]), []).append(f.path)
    return {label: sorted(paths) for label, paths in found.items()}


def support_mask(connectome: Connectome, cache_dir: Path | None = None) -> np.ndarray | None:
    """Intersection of the cohort's brain masks (``None`` when there are none).

    Seeds are cut to it; a coordinate outside it is reported.

    Parameters
    ----------
    connectome : Connectome
    cache_dir : Path, optional
        Folder where the intersection is saved, keyed by the masks' paths, sizes,
        modification and change times and inodes: a later run on the same masks reads
        one file instead of decoding every mask (a thousand at GSP1000's size).
    """
    if not connectome.support_masks:
        return None
    from bids_cnm.io.saved_arrays import cached_array

    saved = None
    if cache_dir is not None:
        from bids_cnm.io.stamps import digest, stat_row

        key = digest([_SUPPORT_FORMAT, [stat_row(p, p) for p in connectome.support_masks],
                      list(connectome.shape), connectome.affine.tolist()], 20)
        saved = Path(cache_dir) / f"{key}.npy"
    return cached_array(saved, connectome.shape, bool, lambda: _intersect_masks(connectome))


#: version of the rule :func:`_intersect_masks` follows, part of a saved mask's key
_SUPPORT_FORMAT = 1


def _intersect_masks(connectome: Connectome) -> np.ndarray:
    """The intersection of :func:`support_mask`, read from every mask."""
    support = np.ones(connectome.shape, dtype=bool)
    for path in connectome.support_masks:
        img = nb.load(path)
        if tuple(img.shape[:3]) != connectome.shape or not np.allclose(
            img.affine, connectome.affine, atol=_AFFINE_TOL
        ):
            raise InputDataError(
                f"grid mismatch: {path} is not on the grid of {connectome.reference}; "
                "resample all subjects to one template grid."
            )
        support &= np.asarray(img.dataobj) > 0
    return support


def data_support(connectome: Connectome) -> np.ndarray:
    """Voxels whose first BOLD volume is non-zero in the first subject (no brain masks).

    Reads one volume: where seeds may be relocated, and where a ``--no-cache`` run
    draws the degree sample, before the data are read.
    """
    img = nb.load(connectome.reference)
    return np.asarray(img.dataobj[..., 0]) != 0


def check_grid(
    subjects: list[SubjectData],
) -> tuple[tuple[int, int, int], np.ndarray, dict[str, int]]:
    """Check that all runs and masks share one voxel grid.

    Reads headers only.  A mismatch is an :class:`InputDataError` naming both files.

    Returns
    -------
    shape : tuple of int
        The 3-D shape.
    affine : ndarray
        The 4x4 affine.
    volumes : dict
        Number of volumes of every BOLD run, by path.
    """
    reference = None
    volumes = {}
    for subject in subjects:
        for path in subject.bold + subject.masks:
            try:
                img = nb.load(path)
            except Exception as exc:  # nibabel raises several types
                raise InputDataError(f"{path}: not a readable NIfTI ({exc}).") from exc
            shape = tuple(int(n) for n in img.shape[:3])
            is_bold = path in subject.bold
            if is_bold and (len(img.shape) != 4 or img.shape[3] < 3):
                raise InputDataError(
                    f"{path}: a BOLD run must be 4-D with at least 3 volumes, "
                    f"found shape {img.shape}."
                )
            if is_bold:
                volumes[path] = int(img.shape[3])
            if reference is None:
                reference = (path, shape, img.affine)
                continue
            ref_path, ref_shape, ref_affine = reference
            if shape != ref_shape or not np.allclose(img.affine, ref_affine, atol=_AFFINE_TOL):
                raise InputDataError(
                    f"grid mismatch: {path} has shape {shape} and affine "
                    f"{np.round(img.affine, 3).tolist()}, but {ref_path} has shape "
                    f"{ref_shape} and affine {np.round(ref_affine, 3).tolist()}; resample "
                    "all subjects to one template grid (same space and res)."
                )
    assert reference is not None
    return reference[1], np.asarray(reference[2], dtype=float), volumes
