"""A Lead-DBS functional connectome folder.

Layout (Lead-DBS ``connectomes/fMRI/<name>/``), as Lead-DBS's own mapper reads it
(``connectomics/mapper/cs_fmri_conseed_seed_tc.m``, ``cs_fmri_conseed_matrix.m`` and
``cs_fmri_conseed.m`` of netstim/leaddbs; see docs/inputs.md):

* ``dataset_info.json``: ``type`` (``fMRI_timecourses``; ``fMRI_matrix`` holds
  precomputed correlations, not time courses, and is refused), ``formatversion``
  (absent means 1), ``subsets`` (named subject lists; every subject is imported);
* the volume description ``vol``: a variable of ``dataset_volsurf.mat`` (current
  Lead-DBS), or ``dataset.vol`` of ``dataset_info.mat`` (older releases), or a key of
  ``dataset_info.json`` itself, with

  - ``outidx``: the voxels, MATLAB linear indices (1-based, column-major) into the grid;
  - ``space``: the grid as an SPM volume (``dim``, and ``mat`` mapping 1-based voxel
    coordinates to millimetres); Lead-DBS writes its maps into this volume at ``outidx``;
  - ``subIDs``: one entry per subject, ``{id, run1.mat, run2.mat, ...}``, the run
    files relative to ``vol/``.

Each run file in ``vol/`` holds ``gmtc``, the time courses of the ``outidx`` voxels:
voxels x time (as MATLAB sees it) in format version 1, time x voxels in later
versions; MATLAB v5/v7 or v7.3 (HDF5, whose arrays h5py sees transposed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bids_cnm.errors import InputDataError, MissingInputError, ReadError
from bids_cnm.io.importers.writer import (
    ConvertedSubject,
    ImportOptions,
    ImportPlan,
    SourceSubject,
    VoxelOrder,
    bids_label,
    unique_labels,
)

#: SPM's ``mat`` maps 1-based voxel indices; nibabel's affine 0-based ones
_ONE_BASED = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=float)


def _field(obj, name: str):
    """A field of a loaded MATLAB struct, JSON object or dict (``None`` when absent)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _loadmat(path: Path, names: list[str] | None = None) -> dict:
    from scipy.io import loadmat

    if _is_hdf5(path):  # MATLAB v7.3
        return _load_v73(path, names)
    try:
        return loadmat(path, variable_names=names, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise ReadError(f"{path}: not a readable MATLAB file ({exc}).") from exc


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError as exc:
        raise ReadError(f"{path}: cannot read ({exc}).") from exc


def _load_v73(path: Path, names: list[str] | None) -> dict:
    import h5py

    with h5py.File(path, "r") as hf:
        # h5py sees MATLAB's column-major arrays with their axes reversed: reverse them
        # back, so an array has the shape MATLAB (and scipy's loadmat) gives it
        return {k: hf[k][()].T for k in hf.keys()
                if (names is None or k in names) and isinstance(hf[k], h5py.Dataset)}


def _vol(root: Path, info: dict):
    if _field(info, "vol") is not None:
        return _field(info, "vol"), root / "dataset_info.json"
    for name, key in (("dataset_volsurf.mat", "vol"), ("dataset_info.mat", "dataset")):
        path = root / name
        if path.is_file():
            content = _loadmat(path)
            value = content.get(key)
            if key == "dataset":
                value = _field(value, "vol")
            if value is not None:
                return value, path
    raise InputDataError(
        f"{root}: no volume description (vol with outidx, space, subIDs) in "
        "dataset_info.json, dataset_volsurf.mat or dataset_info.mat; is this a Lead-DBS "
        "fMRI connectome folder?"
    )


def _require(vol, key: str, where: Path):
    value = _field(vol, key)
    if value is None:
        raise InputDataError(f"{where}: the volume description has no '{key}'.")
    return value


def _subject_entries(sub_ids, where: Path) -> list[list[str]]:
    entries = []
    for entry in np.atleast_1d(np.asarray(sub_ids, dtype=object)):
        items = [str(x) for x in np.atleast_1d(np.asarray(entry, dtype=object)).ravel()]
        if len(items) < 2:
            raise InputDataError(f"{where}: subIDs entry {items} lists no run file.")
        entries.append(items)
    return entries


def _format_version(info: dict, where: Path) -> float:
    """``formatversion`` of ``dataset_info.json``; Lead-DBS reads an absent one as 1."""
    value = _field(info, "formatversion")
    if value is None:
        return 1.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputDataError(f"{where}: formatversion {value!r} is not a number.") from None


def _check_type(info: dict, where: Path) -> None:
    """Only time-course connectomes can be imported (Lead-DBS's ``type`` field)."""
    kind = _field(info, "type")
    if kind is not None and kind != "fMRI_timecourses":
        raise InputDataError(
            f"{where}: type is {kind!r}; bids_cnm needs the time courses of each run "
            "(type 'fMRI_timecourses'), not a matrix of precomputed correlations.")


def orient_gmtc(gmtc: np.ndarray, n_voxels: int, version: float, path: Path) -> np.ndarray:
    """A run's ``gmtc`` (shaped as MATLAB sees it) as ``(V, T)``, by the format version.

    Lead-DBS indexes ``gmtc(voxels, :)`` in format version 1 and ``gmtc(:, voxels)``
    in later ones (``cs_fmri_conseed_matrix.m``); the shape is not guessed, so a
    file of the other orientation is an error rather than silently transposed data.

    Parameters
    ----------
    gmtc : ndarray, 2-D
    n_voxels : int
        Length of ``outidx``.
    version : float
        ``formatversion`` of ``dataset_info.json`` (1 when absent).
    path : Path
        The run file, for the message.

    Returns
    -------
    ndarray, shape (n_voxels, T)
    """
    voxel_axis = 0 if version <= 1 else 1
    layout = "voxels x time" if voxel_axis == 0 else "time x voxels"
    if gmtc.ndim != 2 or gmtc.shape[voxel_axis] != n_voxels:
        raise InputDataError(
            f"{path}: 'gmtc' has shape {tuple(gmtc.shape)}; formatversion {version:g} of "
            f"dataset_info.json means {layout} with {n_voxels} voxels (the length of "
            "outidx): fix formatversion or the run file.")
    return gmtc if voxel_axis == 0 else gmtc.T


class _Loader:
    def __init__(self, path: Path, n_voxels: int, version: float) -> None:
        self.path, self.n_voxels, self.version = path, n_voxels, version

    def __call__(self) -> np.ndarray:
        content = _loadmat(self.path, ["gmtc"])
        if "gmtc" not in content:
            raise InputDataError(f"{self.path}: no 'gmtc' variable (found: "
                                 f"{', '.join(k for k in content if not k.startswith('__'))}).")
        gmtc = orient_gmtc(np.asarray(content["gmtc"]), self.n_voxels, self.version, self.path)
        return np.asarray(gmtc, dtype=np.float32)


def _check_gmtc(path: Path) -> None:
    """A run file must hold ``gmtc`` (checked by name, without loading the data)."""
    from scipy.io import whosmat

    if _is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as hf:
            names = list(hf.keys())
    else:
        try:
            names = [w[0] for w in whosmat(path)]
        except (OSError, ValueError, NotImplementedError) as exc:
            raise ReadError(f"{path}: not a readable MATLAB file ({exc}).") from exc
    if "gmtc" not in names:
        raise InputDataError(f"{path}: no 'gmtc' variable (found: {', '.join(names) or 'none'});"
                             " a Lead-DBS run file holds the time courses as gmtc.")


def scan(source: Path, options: ImportOptions) -> ImportPlan:
    """Read the volume description, list the run files and check that each has ``gmtc``."""
    info_path = source / "dataset_info.json"
    if not info_path.is_file():
        raise MissingInputError(f"{info_path} does not exist: SOURCE must be a Lead-DBS fMRI "
                                "connectome folder (connectomes/fMRI/<name>).")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{info_path}: not valid JSON ({exc}).") from exc
    _check_type(info, info_path)
    version = _format_version(info, info_path)
    vol, where = _vol(source, info)
    space = _require(vol, "space", where)
    shape = tuple(int(n) for n in np.ravel(_require(space, "dim", where))[:3])
    affine = np.asarray(_require(space, "mat", where), dtype=float).reshape(4, 4) @ _ONE_BASED
    outidx = np.ravel(np.asarray(_require(vol, "outidx", where), dtype=np.int64))
    if outidx.size == 0 or outidx.min() < 1 or outidx.max() > int(np.prod(shape)):
        raise InputDataError(f"{where}: outidx must be 1-based indices into the {shape} grid.")
    ijk = np.unravel_index(outidx - 1, shape, order="F")  # MATLAB is column-major
    order = VoxelOrder(np.ravel_multi_index(ijk, shape), shape, where)
    subjects = []
    for items in _subject_entries(_require(vol, "subIDs", where), where):
        name, files = items[0], items[1:]
        runs = []
        for number, file in enumerate(files, start=1):
            path = source / "vol" / (file if file.endswith(".mat") else file + ".mat")
            if not path.is_file():
                raise MissingInputError(f"{path}: run {number} of subject {name} listed in "
                                        f"{where} does not exist.")
            _check_gmtc(path)
            loader = _Loader(path, len(order), version)
            runs.append((number if len(files) > 1 else None, loader, path.resolve().as_uri()))
        subjects.append(SourceSubject(name, bids_label(name, where),
                                      ConvertedSubject(runs, order)))
    unique_labels(subjects, source)
    tr = _field(info, "tr") or _field(info, "TR") or _field(info, "RepetitionTime")
    name = _field(info, "name") or source.name
    return ImportPlan(shape, affine, tuple(subjects), [{"URL": source.resolve().as_uri()}],
                      f"Lead-DBS connectome {name}, imported",
                      None if tr is None else float(tr))
