"""Write an imported connectome as BIDS derivatives, one subject folder at a time.

Every subject is built in a hidden staging folder beside its final place and
renamed into ``sub-<label>`` when complete, so a killed import leaves no
half-written subject and a re-run skips the finished ones.  Nothing is ever
written into the source.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.errors import InputDataError, MissingInputError, OutputError, UsageError
from bids_cnm.io.derivatives import bids_name, write_json, write_nifti, write_tsv

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - exercised only without isal installed
    _igzip = None

LOGGER = logging.getLogger("bids_cnm")

LINK_MODES = ("symlink", "hardlink", "copy")
_AFFINE_TOL = 1e-4


@dataclass(frozen=True)
class ImportOptions:
    """Choices shared by all formats (the command line's options).

    Parameters
    ----------
    link : {'symlink', 'hardlink', 'copy'}
        How NIfTI sources enter the dataset.
    repetition_time : float or None
        Seconds; written to every BOLD sidecar.
    mask : Path or None
        Brain mask NIfTI (``npy``: required, the voxels of the arrays; ``gsp1000``:
        used instead of a mask derived from the data).
    participants : Path or None
        Demographics table (TSV or CSV) with a ``participant_id`` column.
    space, res, task : str
        Entities of the written files.
    runs : tuple of int
        ``gsp1000``: the ``bld`` runs every subject must have.
    """

    link: str = "symlink"
    repetition_time: float | None = None
    mask: Path | None = None
    participants: Path | None = None
    space: str = "MNI152NLin6Asym"
    res: str | None = "2"
    task: str = "rest"
    runs: tuple[int, ...] = (1, 2)


def bids_label(name: str, origin: object) -> str:
    """A BIDS label from a source's subject name (letters and digits kept)."""
    name = name[4:] if name.startswith("sub-") else name
    label = re.sub(r"[^A-Za-z0-9]", "", name)
    if not label:
        raise InputDataError(f"{origin}: subject name {name!r} has no letter or digit.")
    return label


def check_same_grid(shape, affine, ref_shape, ref_affine, path, ref_path) -> None:
    """A grid mismatch is an :class:`InputDataError` naming both files."""
    if tuple(shape) != tuple(ref_shape) or not np.allclose(affine, ref_affine, atol=_AFFINE_TOL):
        raise InputDataError(
            f"grid mismatch: {path} has shape {tuple(shape)} and affine "
            f"{np.round(affine, 3).tolist()}, but {ref_path} has shape {tuple(ref_shape)} and "
            f"affine {np.round(ref_affine, 3).tolist()}; resample all subjects to one grid."
        )


def check_destination(source: Path, dest: Path) -> None:
    """Refuse a destination inside the source (nothing is written into it) or vice versa."""
    src, dst = source.resolve(), dest.resolve()
    if dst == src or src in dst.parents:
        raise UsageError(
            f"DEST {dest} is inside SOURCE {source}: nothing is written into the source; "
            "choose a folder outside it."
        )
    if dst in src.parents:
        raise UsageError(f"SOURCE {source} is inside DEST {dest}; choose another DEST.")


def _open_gzip_writer(path: Path):
    # level 1: BOLD data compresses little more at higher levels, at several times the cost
    if _igzip is not None:
        return _igzip.open(path, "wb", compresslevel=1)
    return gzip.open(path, "wb", compresslevel=1)


def write_masked_bold(
    path: Path,
    data: np.ndarray,
    rows: np.ndarray,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    repetition_time: float | None,
) -> None:
    """Write a ``(V, T)`` in-mask time series as a gzipped float32 4-D NIfTI, volume by volume.

    Parameters
    ----------
    path : Path
        ``.nii.gz`` file to create.
    data : ndarray, shape (V, T)
        Values of the listed voxels (any float type; stored as float32).
    rows : ndarray of int, shape (V,)
        Flat C-order indices of the voxels into ``shape``; other voxels are 0.
    shape, affine
        The 3-D grid.
    repetition_time : float or None
        Seconds, stored as the 4th zoom.
    """
    n_volumes = data.shape[1]
    header = nb.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(tuple(shape) + (n_volumes,))
    header.set_sform(affine, code="mni")
    header.set_qform(affine, code="mni")
    zooms = tuple(float(z) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    header.set_zooms(zooms + (float(repetition_time or 1.0),))
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = 352
    volume = np.zeros(int(np.prod(shape)), dtype=np.float32)
    with _open_gzip_writer(path) as f:
        f.write(header.binaryblock)
        f.write(b"\0" * 4)  # no extensions
        for t in range(n_volumes):
            volume[rows] = data[:, t]
            # NIfTI stores x fastest (Fortran order)
            f.write(volume.reshape(shape).tobytes(order="F"))


class SubjectStage:
    """A subject folder under construction (``DEST/.sub-<label>.partial``)."""

    def __init__(self, writer: ConnectomeWriter, label: str) -> None:
        self.writer = writer
        self.label = label
        self.final = writer.root / f"sub-{label}"
        self.folder = writer.root / f".sub-{label}.partial"
        shutil.rmtree(self.folder, ignore_errors=True)  # a killed earlier attempt
        (self.folder / "func").mkdir(parents=True)

    def path(self, suffix: str, extension: str, run: int | None = None, desc: str = "") -> Path:
        """Path in the staging folder of the file with these entities."""
        w = self.writer
        entities = {"sub": self.label, "task": w.options.task, "run": run,
                    "space": w.options.space, "res": w.options.res, "desc": desc}
        return self.folder / "func" / bids_name(entities, suffix, extension)

    def _bold_sidecar(self, path: Path, sources: Sequence[str]) -> None:
        w = self.writer
        sidecar = {"TaskName": w.options.task, "SkullStripped": True,
                   "Resolution": w.resolution, "Sources": list(sources)}
        if w.options.repetition_time is not None:
            sidecar = {"RepetitionTime": w.options.repetition_time, **sidecar}
        write_json(path.with_name(path.name.replace(".nii.gz", ".json").replace(".nii", ".json")),
                   sidecar)

    def link_bold(self, source: Path, run: int | None) -> Path:
        """Link (or copy) a NIfTI run into the subject, with its sidecar."""
        ext = ".nii.gz" if source.name.endswith(".gz") else ".nii"
        target = self.path("bold", ext, run, "preproc")
        mode = self.writer.options.link
        try:
            if mode == "symlink":
                os.symlink(source.resolve(), target)
            elif mode == "hardlink":
                os.link(source, target)
            else:
                shutil.copy2(source, target)
        except OSError as exc:
            hint = " (use --link copy across file systems)" if mode == "hardlink" else ""
            raise OutputError(f"cannot {mode} {source} to {target}: {exc}{hint}.") from exc
        self._bold_sidecar(target, [source.resolve().as_uri()])
        return target

    def write_bold(self, data: np.ndarray, rows: np.ndarray, run: int | None,
                   origin: str) -> Path:
        """Convert an in-mask ``(V, T)`` time series into a NIfTI run, with its sidecar."""
        target = self.path("bold", ".nii.gz", run, "preproc")
        try:
            write_masked_bold(target, data, rows, self.writer.shape, self.writer.affine,
                              self.writer.options.repetition_time)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc}.") from exc
        self._bold_sidecar(target, [origin])
        return target

    def write_mask(self, mask: np.ndarray, sources: Sequence[str]) -> Path:
        """Write the subject's ``desc-brain_mask`` and its sidecar."""
        target = self.path("mask", ".nii.gz", None, "brain")
        img = nb.Nifti1Image(mask.astype(np.uint8), self.writer.affine)
        img.header.set_xyzt_units("mm")
        write_nifti(target, img)
        write_json(target.with_name(target.name.replace(".nii.gz", ".json")),
                   {"Type": "Brain", "Resolution": self.writer.resolution,
                    "Sources": list(sources)})
        return target

    def commit(self) -> None:
        """Rename the finished subject into place."""
        os.replace(self.folder, self.final)


class ConnectomeWriter:
    """The BIDS derivatives dataset an import writes.

    Parameters
    ----------
    root : Path
        DEST (created when missing).
    options : ImportOptions
    shape, affine
        The common 3-D grid of all subjects.
    source_datasets : list of dict
        ``SourceDatasets`` entries (``URL``, ``DOI``…).
    name : str
        Dataset name.
    """

    def __init__(self, root: Path, options: ImportOptions, shape, affine,
                 source_datasets: list[dict], name: str) -> None:
        self.root = Path(root)
        self.options = options
        self.shape = tuple(int(n) for n in shape)
        self.affine = np.asarray(affine, dtype=float)
        self.source_datasets = source_datasets
        self.name = name
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self.resolution = (
            f"{'x'.join(f'{z:g}' for z in zooms)} mm voxels on a "
            f"{'x'.join(map(str, self.shape))} grid in {options.space}"
        )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create DEST {self.root}: {exc}.") from exc

    def write_description(self, command: str) -> Path:
        """Write ``dataset_description.json`` (DatasetType derivative, SourceDatasets)."""
        return write_json(self.root / "dataset_description.json", {
            "Name": self.name,
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "bids_cnm-connectome", "Version": __version__,
                             "Description": command}],
            "SourceDatasets": self.source_datasets,
        })

    def done(self, label: str) -> bool:
        """Whether the subject was imported by an earlier run."""
        return (self.root / f"sub-{label}").is_dir()

    def stage(self, label: str) -> SubjectStage:
        """Start writing a subject."""
        return SubjectStage(self, label)

    def write_participants(self, labels: Mapping[str, str]) -> Path | None:
        """Write ``participants.tsv`` from the demographics table of the options.

        Parameters
        ----------
        labels : mapping
            Source subject name -> BIDS label of every imported subject.
        """
        table_path = self.options.participants
        if table_path is None:
            return None
        if not table_path.is_file():
            raise MissingInputError(f"--participants {table_path} does not exist.")
        sep = "," if table_path.suffix.lower() == ".csv" else "\t"
        table = pd.read_csv(table_path, sep=sep, dtype=str, keep_default_na=False)
        if "participant_id" not in table.columns:
            raise InputDataError(
                f"{table_path}, row 1: no 'participant_id' column (found: "
                f"{', '.join(table.columns)}); name the subject column participant_id."
            )
        by_label = {bids_label(k, table_path): v for k, v in labels.items()}
        ids = table["participant_id"].map(lambda p: bids_label(str(p), table_path))
        keep = ids.isin(set(by_label.values()) | set(by_label))
        table = table.loc[keep].copy()
        table["participant_id"] = "sub-" + ids[keep].map(lambda x: by_label.get(x, x))
        missing = sorted(set(labels.values()) - {p[4:] for p in table["participant_id"]})
        if missing:
            LOGGER.warning("%s has no row for %d imported subject(s): %s", table_path,
                           len(missing), ", ".join(missing[:10]))
        return write_tsv(self.root / "participants.tsv", table.sort_values("participant_id"))


@dataclass(frozen=True)
class SourceSubject:
    """One subject of a source connectome and how to write it.

    Parameters
    ----------
    name : str
        The subject's name in the source (for ``participants.tsv``).
    label : str
        Its BIDS label.
    write : callable
        ``write(stage)`` writes the runs and the mask into a :class:`SubjectStage`.
    """

    name: str
    label: str
    write: object


@dataclass(frozen=True)
class ImportPlan:
    """What a format reader found: the grid and the subjects, checked before writing."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    subjects: tuple[SourceSubject, ...]
    source_datasets: list[dict]
    name: str
    #: seconds, when the source records it (else --repetition-time must give it)
    repetition_time: float | None = None


def unique_labels(subjects: Sequence[SourceSubject], origin: object) -> None:
    """Two source subjects with one BIDS label are an :class:`InputDataError`."""
    seen: dict[str, str] = {}
    for s in subjects:
        if s.label in seen:
            raise InputDataError(
                f"{origin}: subjects {seen[s.label]!r} and {s.name!r} both become "
                f"sub-{s.label}; rename one of them."
            )
        seen[s.label] = s.name


def load_mask(path: Path, shape=None, affine=None) -> tuple[np.ndarray, np.ndarray]:
    """Read a brain mask NIfTI as a boolean array (checked against a grid when given)."""
    if not Path(path).is_file():
        raise MissingInputError(f"--mask {path} does not exist.")
    try:
        img = nb.load(path)
        mask = np.asanyarray(img.dataobj) > 0
    except Exception as exc:  # nibabel raises several types
        raise InputDataError(f"{path}: not a readable NIfTI mask ({exc}).") from exc
    if mask.ndim != 3:
        raise InputDataError(f"{path}: a mask must be 3-D, found shape {mask.shape}.")
    if shape is not None:
        check_same_grid(mask.shape, img.affine, shape, affine, path, "the data")
    return mask, np.asarray(img.affine, dtype=float)


class VoxelOrder:
    """Map a source's voxel list onto the grid: C-order rows and the permutation to them.

    Parameters
    ----------
    flat : ndarray of int
        Flat C-order index of each source voxel, in the source's order.
    shape : tuple of int
        The 3-D grid.
    origin : object
        Named in errors.
    """

    def __init__(self, flat: np.ndarray, shape, origin: object) -> None:
        flat = np.asarray(flat, dtype=np.int64)
        n_vox = int(np.prod(shape))
        if flat.size and (flat.min() < 0 or flat.max() >= n_vox):
            raise InputDataError(f"{origin}: voxel indices outside the {tuple(shape)} grid.")
        self.perm = np.argsort(flat, kind="stable")
        self.rows = flat[self.perm]
        if np.any(np.diff(self.rows) == 0):
            raise InputDataError(f"{origin}: a voxel is listed twice in the mask indices.")
        self.mask = np.zeros(n_vox, dtype=bool)
        self.mask[self.rows] = True
        self.mask = self.mask.reshape(shape)

    def __len__(self) -> int:
        return len(self.rows)


class ConvertedSubject:
    """Write a subject whose runs are in-mask arrays: convert each to NIfTI, then the mask.

    Parameters
    ----------
    runs : list of (run number or None, loader, origin)
        ``loader()`` returns the run as ``(V, T)`` in the source's voxel order.
    order : VoxelOrder
    """

    def __init__(self, runs: list, order: VoxelOrder) -> None:
        self.runs = runs
        self.order = order

    def __call__(self, stage: SubjectStage) -> None:
        for number, loader, origin in self.runs:
            data = loader()
            stage.write_bold(data[self.order.perm], self.order.rows, number, origin)
        stage.write_mask(self.order.mask, [origin for _, _, origin in self.runs])


def as_voxels_by_time(array, n_voxels: int, path: object, name: str) -> np.ndarray:
    """Orient a 2-D time-course array as ``(V, T)`` by its voxel count."""
    if array.ndim != 2 or n_voxels not in array.shape:
        raise InputDataError(
            f"{path}: '{name}' has shape {tuple(array.shape)}, expected time x {n_voxels} "
            f"voxels (or {n_voxels} x time) to match the mask."
        )
    return array if array.shape[0] == n_voxels else array.T
