"""Grey matter on the connectome's grid: where relocated coordinates and degree samples go.

By default the grey matter is that of the connectome's template space from TemplateFlow
(:func:`bids_cnm.io.templates.grey_matter_mask`), or, where TemplateFlow's files are not
available, nilearn's bundled MNI152 grey-matter probability template, resampled to the
connectome's grid by linear interpolation at each voxel centre; a voxel is grey matter
where that value is at least :data:`GM_THRESHOLD`.  A user's mask (any NIfTI in the same
space, binary or a probability map) is treated by the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm.errors import InputDataError, MissingInputError, ReadError

#: a voxel is grey matter where the (interpolated) mask value is at least this
GM_THRESHOLD = 0.5



def _load_mask(path: str | os.PathLike) -> nb.Nifti1Image:
    """The user's mask as a 3-D image."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: grey-matter mask not found; check the path")
    try:
        img = nb.load(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ReadError(f"{path}: cannot read the mask as NIfTI ({exc}); give a .nii/.nii.gz "
                        "file") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise InputDataError(f"{path}: the mask has shape {data.shape}; give a 3-D image")
    return nb.Nifti1Image(data, img.affine)


def grey_matter(
    shape: tuple[int, ...],
    affine: np.ndarray,
    path: str | os.PathLike | None = None,
    threshold: float = GM_THRESHOLD,
    space: str | None = None,
) -> tuple[np.ndarray, str]:
    """Grey-matter voxels of a grid, and where they came from.

    Parameters
    ----------
    shape : tuple of int
        The grid's 3-D shape.
    affine : ndarray, shape (4, 4)
        The grid's voxel-to-MNI affine.
    path : path-like, optional
        A mask in MNI space (binary or probabilities); default: the grey matter of
        ``space`` (TemplateFlow, else nilearn's MNI152 template).
    threshold : float
        Minimum interpolated value of a grey-matter voxel (a user's mask).
    space : str, optional
        The connectome's template space (e.g. ``MNI152NLin6Asym``).

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
    source : str
        For the log and the sidecars.
    """
    if path is None:
        from bids_cnm.io.templates import grey_matter_mask as template_grey_matter

        return template_grey_matter(space, shape, affine)
    from bids_cnm.io.templates import on_grid

    # linear interpolation at the voxel centres: the grid's own voxels, whatever the
    # mask's resolution (values outside the mask's field of view are 0)
    prob = on_grid(_load_mask(path), shape, np.asarray(affine, dtype=float), "linear")
    return prob >= threshold, f"{path} >= {threshold}"


def grey_matter_mask(
    shape: tuple[int, ...],
    affine: np.ndarray,
    path: str | os.PathLike | None = None,
    threshold: float = GM_THRESHOLD,
    space: str | None = None,
) -> np.ndarray:
    """The mask of :func:`grey_matter` alone."""
    return grey_matter(shape, affine, path, threshold, space)[0]
