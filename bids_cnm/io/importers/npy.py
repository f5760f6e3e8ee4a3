"""Per-subject NumPy arrays (connectome_quick style) and the mask they were taken in.

SOURCE is a folder of ``<subject>.npy`` files, each ``time x voxels`` (float16 or
float32) over the voxels of ``--mask`` in NIfTI C order (as nilearn's
``NiftiMasker`` and ``img.get_fdata()[mask]`` give them).  Files ending in
``_norms.npy`` are skipped.  A subject is one run: its runs were concatenated
before they were saved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_cnm.errors import InputDataError, NoMatchError, UsageError
from bids_cnm.io.importers.writer import (
    ConvertedSubject,
    ImportOptions,
    ImportPlan,
    SourceSubject,
    VoxelOrder,
    as_voxels_by_time,
    bids_label,
    load_mask,
    unique_labels,
)


class _Loader:
    def __init__(self, path: Path, n_voxels: int) -> None:
        self.path, self.n_voxels = path, n_voxels

    def __call__(self) -> np.ndarray:
        array = np.load(self.path, mmap_mode="r")
        return np.asarray(as_voxels_by_time(array, self.n_voxels, self.path, "array"),
                          dtype=np.float32)


def scan(source: Path, options: ImportOptions) -> ImportPlan:
    """List the arrays and check each one's voxel count against the mask (headers only)."""
    if options.mask is None:
        raise UsageError("the npy format needs --mask MASK.nii.gz: the brain mask whose voxels "
                         "the arrays' columns are.")
    mask, affine = load_mask(options.mask)
    order = VoxelOrder(np.flatnonzero(mask.ravel()), mask.shape, options.mask)
    files = [p for p in sorted(source.glob("*.npy")) if not p.name.endswith("_norms.npy")]
    if not files:
        raise NoMatchError(f"{source} holds no <subject>.npy file.")
    subjects = []
    for path in files:
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{path}: not a readable .npy array ({exc}).") from exc
        as_voxels_by_time(array, len(order), path, "array")
        if array.dtype.kind != "f":
            raise InputDataError(f"{path}: dtype {array.dtype}; expected float16 or float32.")
        name = path.name[: -len(".npy")]
        runs = [(None, _Loader(path, len(order)), path.resolve().as_uri())]
        subjects.append(SourceSubject(name, bids_label(name, path),
                                      ConvertedSubject(runs, order)))
    unique_labels(subjects, source)
    return ImportPlan(mask.shape, affine, tuple(subjects),
                      [{"URL": source.resolve().as_uri()}], "NumPy connectome, imported")
