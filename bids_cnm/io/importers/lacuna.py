"""A lacuna functional connectome: HDF5 files of in-mask time series.

Each file (one, or a folder of chunk files ``*.h5``) holds ``timeseries``
(subjects x time x voxels, float32), ``mask_indices`` (the voxels' ``i, j, k``, as
``(V, 3)`` or ``(3, V)``), ``mask_affine`` (4 x 4) and ``mask_shape`` (an attribute
or a dataset).  A subject is one run (lacuna stores the concatenated series).
Subjects are named by a ``subject_ids`` dataset or attribute when present, else
numbered across the files in sorted order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_cnm.errors import InputDataError, NoMatchError, ReadError
from bids_cnm.io.importers.writer import (
    ConvertedSubject,
    ImportOptions,
    ImportPlan,
    SourceSubject,
    VoxelOrder,
    bids_label,
    check_same_grid,
    unique_labels,
)

REQUIRED = ("timeseries", "mask_indices", "mask_affine")


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ReadError(f"{path}: not a readable HDF5 file ({exc}).") from exc


def _geometry(path: Path, hf) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Shape, affine and flat C-order voxel indices of a file (keys checked)."""
    for key in REQUIRED:
        if key not in hf:
            raise InputDataError(
                f"{path}: no '{key}' dataset (found: {', '.join(sorted(hf.keys()))}); a "
                "lacuna connectome needs timeseries, mask_indices, mask_affine, mask_shape."
            )
    if "mask_shape" in hf.attrs:
        shape = tuple(int(n) for n in hf.attrs["mask_shape"])
    elif "mask_shape" in hf:
        shape = tuple(int(n) for n in hf["mask_shape"][()])
    else:
        raise InputDataError(f"{path}: no 'mask_shape' attribute or dataset; add the grid's "
                             "3-D shape as attribute mask_shape.")
    ind = np.asarray(hf["mask_indices"][()], dtype=np.int64)
    n_vox = hf["timeseries"].shape[-1]
    if ind.ndim != 2 or 3 not in ind.shape:
        raise InputDataError(f"{path}: 'mask_indices' has shape {ind.shape}, expected (V, 3).")
    ijk = ind.T if ind.shape[1] == 3 and ind.shape[0] == n_vox else ind
    if ijk.shape != (3, n_vox):
        raise InputDataError(
            f"{path}: 'mask_indices' lists {ind.shape} indices but 'timeseries' has "
            f"{n_vox} voxels."
        )
    if hf["timeseries"].ndim != 3:
        raise InputDataError(f"{path}: 'timeseries' must be subjects x time x voxels, found "
                             f"shape {hf['timeseries'].shape}.")
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(shape)[:, None]):
        raise InputDataError(f"{path}: 'mask_indices' outside mask_shape {shape}.")
    flat = np.ravel_multi_index(tuple(ijk), shape)
    return shape, np.asarray(hf["mask_affine"][()], dtype=float), flat


def _names(hf, n: int, start: int) -> list[str]:
    ids = hf["subject_ids"][()] if "subject_ids" in hf else hf.attrs.get("subject_ids")
    if ids is None or len(ids) != n:
        return [f"{start + i + 1:04d}" for i in range(n)]
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ids]


class _Loader:
    def __init__(self, path: Path, index: int) -> None:
        self.path, self.index = path, index

    def __call__(self) -> np.ndarray:
        with _open(self.path) as hf:
            return np.asarray(hf["timeseries"][self.index], dtype=np.float32).T  # (V, T)


def scan(source: Path, options: ImportOptions) -> ImportPlan:
    """Read the files' geometry and subject lists (no time series yet)."""
    files = sorted(source.glob("*.h5")) + sorted(source.glob("*.hdf5")) if source.is_dir() \
        else [source]
    if not files:
        raise NoMatchError(f"{source} holds no *.h5 file of a lacuna connectome.")
    subjects = []
    reference = None
    for path in files:
        with _open(path) as hf:
            shape, affine, flat = _geometry(path, hf)
            n_subjects = hf["timeseries"].shape[0]
            names = _names(hf, n_subjects, len(subjects))
        if reference is None:
            reference = (path, shape, affine, flat)
        check_same_grid(shape, affine, reference[1], reference[2], path, reference[0])
        if not np.array_equal(flat, reference[3]):
            raise InputDataError(f"{path}: its mask_indices differ from those of {reference[0]};"
                                 " import the files separately.")
        order = VoxelOrder(flat, shape, path)
        for i, name in enumerate(names):
            runs = [(None, _Loader(path, i), f"{path.resolve().as_uri()}#timeseries[{i}]")]
            subjects.append(SourceSubject(name, bids_label(name, path),
                                          ConvertedSubject(runs, order)))
    unique_labels(subjects, source)
    return ImportPlan(reference[1], reference[2], tuple(subjects),
                      [{"URL": source.resolve().as_uri()}], "lacuna connectome, imported")
