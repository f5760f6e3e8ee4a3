"""Randomly relocated studies: the control networks of the specificity analysis.

Every study of the primary sets is copied ``K`` times with its coordinates moved to
random places of the grey matter (as in Ji et al. 2025), each copy a control study
of set ``random`` computed in the same pass as the real ones.

Two modes:

``independent`` (default)
    every coordinate moves on its own to a voxel drawn uniformly from the grey
    matter, then to a uniform random point of that voxel (sub-voxel jitter), so
    relocated centres are off-grid like reported coordinates (a sphere centred on a
    voxel centre always gets the maximal voxel count; real ones vary);
``rigid``
    the study's coordinates move together by one random rigid transform (a rotation
    uniform on SO(3) about their centroid, then a translation) so that every
    coordinate lands in grey matter: the study's configuration (all pairwise
    distances) is preserved.  For a drawn rotation and jitter the translations that
    keep every coordinate in grey matter are found exactly on the grid and one is
    drawn uniformly; a rotation that admits none is redrawn.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from bids_cnm.analyses.grey_matter import grey_matter_mask
from bids_cnm.config import RANDOM_SET
from bids_cnm.errors import InputDataError

#: relocation modes
MODES = ("independent", "rigid")

#: rotations tried per rigid relocation before giving up
MAX_ROTATIONS = 200


def relocation_region(
    support: np.ndarray, affine: np.ndarray, mask: np.ndarray | str | os.PathLike | None = None
) -> np.ndarray:
    """Voxels where relocated coordinates may land: grey matter within the support.

    Parameters
    ----------
    support : ndarray of bool, 3-D
        The analysis support (voxels with data).
    affine : ndarray, shape (4, 4)
    mask : ndarray of bool, path-like or None
        Grey matter: a boolean array on the grid, a mask file, or ``None`` for
        nilearn's MNI152 grey-matter template.

    Returns
    -------
    ndarray of bool, 3-D

    Raises
    ------
    InputDataError
        No grey-matter voxel lies within the support.
    """
    support = np.asarray(support, dtype=bool)
    if isinstance(mask, np.ndarray):
        grey = np.asarray(mask, dtype=bool)
    else:
        grey = grey_matter_mask(support.shape, affine, mask)
    region = grey & support
    if not region.any():
        source = mask if mask is not None and not isinstance(mask, np.ndarray) else \
            "the MNI152 grey-matter template"
        raise InputDataError(
            f"{source}: no grey-matter voxel within the connectome's brain masks, so studies "
            "cannot be relocated; check that the connectome is in MNI space or give a mask "
            "on its grid with --relocation-mask"
        )
    return region


def _voxel_of(ijk: np.ndarray) -> np.ndarray:
    """Voxel containing continuous voxel coordinates (nearest centre)."""
    return np.floor(ijk + 0.5).astype(np.int64)


def _jitter(rng: np.random.Generator, n: int, jitter: bool) -> np.ndarray:
    """Uniform offsets within a voxel, in voxel units (zeros without jitter)."""
    return rng.uniform(-0.5, 0.5, size=(n, 3)) if jitter else np.zeros((n, 3))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform on SO(3): a normalized Gaussian quaternion."""
    w, x, y, z = rng.standard_normal(4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _valid_origins(region: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Voxels ``g`` with ``region[g + s]`` true for every shift ``s`` (outside: false)."""
    valid = region.copy()
    shape = np.asarray(region.shape)
    for s in shifts:
        shifted = np.zeros_like(region)
        lo, hi = np.maximum(0, -s), np.minimum(shape, shape - s)
        if np.any(hi <= lo):
            return np.zeros_like(region)
        dst = tuple(slice(a, b) for a, b in zip(lo, hi))
        src = tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, s))
        shifted[dst] = region[src]
        valid &= shifted
    return valid


def _rigid(
    mm: np.ndarray, region: np.ndarray, affine: np.ndarray, rng: np.random.Generator,
    jitter: bool, study: str,
) -> np.ndarray:
    """One study's coordinates (mm) moved by a random rigid transform into ``region``."""
    linear = affine[:3, :3]
    offsets_mm = mm - mm.mean(axis=0)
    to_voxels = np.linalg.inv(linear)
    for _ in range(MAX_ROTATIONS):
        offsets = (offsets_mm @ _random_rotation(rng).T) @ to_voxels.T
        shift = _jitter(rng, 1, jitter)[0]
        shifts = _voxel_of(offsets + shift)  # voxel of coordinate k relative to origin g
        origins = np.argwhere(_valid_origins(region, shifts))
        if len(origins):
            origin = origins[rng.integers(len(origins))]
            return (origin + shift + offsets) @ linear.T + affine[:3, 3]
    span = float(np.max(np.linalg.norm(offsets_mm, axis=1)) * 2)
    raise InputDataError(
        f"study '{study}': its {len(mm)} coordinates (spread over {span:.0f} mm) could not be "
        f"moved rigidly into grey matter in {MAX_ROTATIONS} random rotations; use "
        "--relocation-mode independent or a larger --relocation-mask"
    )


def relocate_coordinates(
    table: pd.DataFrame,
    support: np.ndarray,
    affine: np.ndarray,
    n_relocations: int = 4,
    random_state: int = 0,
    sets: list[str] | None = None,
    mask: np.ndarray | str | os.PathLike | None = None,
    mode: str = "independent",
    jitter: bool = True,
) -> pd.DataFrame:
    """Randomly relocated copies of studies, in grey matter.

    Parameters
    ----------
    table : DataFrame
        Coordinate table (``study``, ``x``, ``y``, ``z``, ``set``...).
    support : ndarray of bool
        The analysis support; relocated coordinates land in grey matter within it.
    affine : ndarray
        Voxel-to-mm affine.
    n_relocations : int
        Copies per study (``K``).
    random_state : int
        Seed: the same seed, table, support and mask give the same coordinates.
    sets : list of str, optional
        Sets whose studies are relocated (default ``['primary']``).
    mask : ndarray of bool, path-like or None
        Grey matter (see :func:`relocation_region`); default nilearn's MNI152
        grey-matter template.
    mode : {'independent', 'rigid'}
        Move each coordinate on its own, or each study's coordinates together by
        one rigid transform (see the module docstring).
    jitter : bool
        Place each coordinate uniformly within its voxel (off-grid) rather than at
        the voxel's centre.

    Returns
    -------
    DataFrame
        Same columns; ``set`` is ``random``, ``study`` is ``<study>rand<i>``,
        ``relocated_from`` names the original study and ``relocation`` is ``i``.

    Notes
    -----
    Draw order, from one ``numpy.random.default_rng(random_state)``: copy after
    copy; in ``independent`` mode, the voxel of every coordinate (table order),
    then their jitters; in ``rigid`` mode, study after study (order of first
    appearance), each a sequence of (rotation, jitter, origin) tries.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    sets = sets or ["primary"]
    source = table[table["set"].isin(sets)].reset_index(drop=True)
    if n_relocations < 1 or source.empty:
        return source.iloc[:0].assign(relocated_from=[], relocation=[])
    region = relocation_region(support, affine, mask)
    affine = np.asarray(affine, dtype=float)
    candidates = np.argwhere(region)
    rng = np.random.default_rng(random_state)
    mm = source[["x", "y", "z"]].to_numpy(dtype=float)
    groups = source.groupby(["set", "study"], sort=False).indices
    copies = []
    for i in range(1, n_relocations + 1):
        if mode == "independent":
            ijk = candidates[rng.integers(0, len(candidates), size=len(source))]
            xyz = (ijk + _jitter(rng, len(source), jitter)) @ affine[:3, :3].T + affine[:3, 3]
        else:
            xyz = np.empty_like(mm)
            for (_, study), rows in groups.items():
                xyz[rows] = _rigid(mm[rows], region, affine, rng, jitter, str(study))
        copy = source.copy()
        copy[["x", "y", "z"]] = xyz
        copy["relocated_from"] = source["study"].astype(str)
        copy["relocation"] = i
        copy["study"] = source["study"].astype(str) + f"rand{i}"
        copy["set"] = RANDOM_SET
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)
