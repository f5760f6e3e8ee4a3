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

import numpy as np

from bids_cnm.errors import MissingInputError

#: a voxel is grey matter where the (interpolated) mask value is at least this
GM_THRESHOLD = 0.5

#: the work folder's subfolder of saved masks (``cache_dir`` of :func:`grey_matter`)
GREY_MATTER_FOLDER = "grey_matter"


def grey_matter(
    shape: tuple[int, ...],
    affine: np.ndarray,
    path: str | os.PathLike | None = None,
    threshold: float = GM_THRESHOLD,
    space: str | None = None,
    cache_dir: str | os.PathLike | None = None,
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
    cache_dir : path-like, optional
        Folder where the mask is saved, keyed by its source file (path, size,
        modification and change times, inode), nilearn's version (its resampling, its
        bundled template), the threshold and the grid: a later run on the same grid
        reads one file instead of importing nilearn and resampling the template (~1 s).

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
    source : str
        For the log and the sidecars.
    """
    from bids_cnm.io.saved_arrays import cached_array
    from bids_cnm.io.templates import (
        GreyMatterSource,
        grey_matter_on_grid,
        grey_matter_source,
    )

    affine = np.asarray(affine, dtype=float)
    shape = tuple(int(n) for n in shape[:3])
    if path is None:
        source = grey_matter_source(space, affine)
    else:
        if not Path(path).exists():  # before its key, which stats it
            raise MissingInputError(f"{path}: grey-matter mask not found; check the path")
        # linear interpolation at the voxel centres: the grid's own voxels, whatever the
        # mask's resolution (values outside the mask's field of view are 0)
        source = GreyMatterSource("mask", Path(path), f"{path} >= {threshold}", threshold)
    saved = None
    if cache_dir is not None:
        from bids_cnm.io.stamps import digest

        key = digest([source.identity(), list(shape), affine.tolist()], 20)
        saved = Path(cache_dir) / f"{key}.npy"
    mask = cached_array(saved, shape, bool, lambda: grey_matter_on_grid(source, shape, affine))
    return mask, source.description


def grey_matter_mask(
    shape: tuple[int, ...],
    affine: np.ndarray,
    path: str | os.PathLike | None = None,
    threshold: float = GM_THRESHOLD,
    space: str | None = None,
) -> np.ndarray:
    """The mask of :func:`grey_matter` alone."""
    return grey_matter(shape, affine, path, threshold, space)[0]
