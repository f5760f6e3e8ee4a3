"""Regions of interest on the voxel grid of a network.

Every function here returns boolean 3-D arrays on a given grid (``shape`` and
``affine`` of the network image).  Coordinates are world (MNI) millimetres and
are converted with the full affine, so flipped axes (``affine[0, 0] < 0``, as in
the 3 mm IGE network) and oblique grids are handled without special cases.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from os import PathLike

import nibabel as nib
import numpy as np
import pandas as pd

from bids_cnm.engine.seeds import sphere_voxels
from bids_cnm.errors import InputDataError, MissingInputError, ReadError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "world_to_voxel",
    "voxel_to_world",
    "same_grid",
    "sphere_mask",
    "spheres_mask",
    "sphere_offsets",
    "atlas_label_masks",
    "load_mask_images",
    "random_sphere_masks",
    "cortex_shell",
]


def world_to_voxel(coords_mm: np.ndarray | Sequence[float], affine: np.ndarray) -> np.ndarray:
    """Convert world (mm) coordinates to continuous voxel indices.

    Parameters
    ----------
    coords_mm : array-like, shape (3,) or (n, 3)
        World coordinates in millimetres.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.

    Returns
    -------
    ndarray, shape (3,) or (n, 3)
        Continuous voxel coordinates (round them to get the nearest voxel on an
        orthogonal grid).
    """
    xyz = np.asarray(coords_mm, dtype=float)
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(ijk: np.ndarray | Sequence[float], affine: np.ndarray) -> np.ndarray:
    """Convert voxel indices to world (mm) coordinates.

    Parameters
    ----------
    ijk : array-like, shape (3,) or (n, 3)
        Voxel indices (integer or continuous).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.

    Returns
    -------
    ndarray, shape (3,) or (n, 3)
        World coordinates in millimetres.
    """
    ijk = np.asarray(ijk, dtype=float)
    affine = np.asarray(affine, dtype=float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def same_grid(
    shape_a: Sequence[int],
    affine_a: np.ndarray,
    shape_b: Sequence[int],
    affine_b: np.ndarray,
    atol: float = 1e-3,
) -> bool:
    """Whether two images share a voxel grid (same 3-D shape and affine).

    Parameters
    ----------
    shape_a, shape_b : sequence of int
        Image shapes (only the first three axes are compared).
    affine_a, affine_b : ndarray, shape (4, 4)
        Affines.
    atol : float
        Absolute tolerance on the affine entries, in mm.

    Returns
    -------
    bool
    """
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        affine_a, affine_b, atol=atol
    )


def _box_half_extent(radius_mm: float, affine: np.ndarray) -> np.ndarray:
    # The voxel-space extent of a ball of radius r along axis i is
    # r * ||row i of inv(A[:3, :3])||, exact for any (also oblique) affine.
    inv = np.linalg.inv(np.asarray(affine, dtype=float)[:3, :3])
    return radius_mm * np.linalg.norm(inv, axis=1)


def sphere_mask(
    center_mm: Sequence[float] | np.ndarray,
    diameter_mm: float,
    shape: Sequence[int],
    affine: np.ndarray,
) -> np.ndarray:
    """Boolean mask of the voxels whose centre lies within a sphere.

    A voxel belongs to the sphere when the distance from its centre to
    ``center_mm`` is at most ``diameter_mm / 2`` (a relative tolerance of 1e-9
    absorbs rounding for voxels exactly on the surface).

    If no voxel centre falls inside the sphere (a diameter smaller than the
    voxel spacing), the single voxel whose centre is nearest to ``center_mm`` is
    returned instead, so that a small sphere never silently becomes empty.

    Parameters
    ----------
    center_mm : array-like, shape (3,)
        Centre in world (MNI) millimetres.
    diameter_mm : float
        Sphere diameter in millimetres (> 0).
    shape : sequence of int
        Grid shape (first three axes used).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.

    Returns
    -------
    ndarray of bool, shape ``shape[:3]``
        The sphere.

    Raises
    ------
    ValueError
        If the diameter is not positive or the centre is not finite.
    InputDataError
        If the centre lies outside the grid's field of view (more than one voxel
        beyond its edge) and no voxel is within the radius.
    """
    center = np.asarray(center_mm, dtype=float).reshape(3)
    if not np.all(np.isfinite(center)):
        raise ValueError(f"sphere centre must be finite, got {center.tolist()}")
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise ValueError(f"sphere diameter must be > 0 mm, got {diameter_mm}")
    shape = tuple(int(s) for s in shape[:3])
    voxels = sphere_voxels(center, diameter_mm, shape, affine)
    if len(voxels) == 0:
        c_vox = world_to_voxel(center, affine)
        raise InputDataError(
            f"coordinate ({center[0]:g}, {center[1]:g}, {center[2]:g}) mm lies outside the "
            f"image field of view (voxel {np.round(c_vox, 1).tolist()} on a grid of shape "
            f"{list(shape)}); check that the coordinate is in MNI mm and not in Talairach "
            "space or voxel indices"
        )
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[voxels] = True
    return mask.reshape(shape)


def spheres_mask(
    centers: np.ndarray | Sequence[Sequence[float]] | pd.DataFrame,
    diameter: float | Sequence[float],
    shape: Sequence[int],
    affine: np.ndarray,
) -> np.ndarray:
    """Union of spheres (see :func:`sphere_mask`).

    Parameters
    ----------
    centers : array-like, shape (n, 3), or DataFrame with columns x, y, z
        Centres in world millimetres.
    diameter : float or sequence of float
        One diameter for all spheres or one per sphere (mm).
    shape : sequence of int
        Grid shape.
    affine : ndarray, shape (4, 4)
        Grid affine.

    Returns
    -------
    ndarray of bool
        Voxels inside at least one sphere.
    """
    if isinstance(centers, pd.DataFrame):
        centers = centers[["x", "y", "z"]].to_numpy(dtype=float)
    centers = np.atleast_2d(np.asarray(centers, dtype=float))
    diameters = np.broadcast_to(np.asarray(diameter, dtype=float), (len(centers),))
    out = np.zeros(tuple(int(s) for s in shape[:3]), dtype=bool)
    for center, diam in zip(centers, diameters):
        out |= sphere_mask(center, float(diam), shape, affine)
    return out


def sphere_offsets(diameter_mm: float, affine: np.ndarray) -> np.ndarray:
    """Integer voxel offsets of a sphere centred on a voxel centre.

    For a centre located exactly at a voxel centre, the sphere's voxels are that
    voxel plus a fixed set of offsets (distances between voxel centres depend
    only on the index difference).  Precomputing the offsets makes random
    sphere nulls cheap.  Matches :func:`sphere_mask` for voxel-centred spheres.

    Parameters
    ----------
    diameter_mm : float
        Sphere diameter (mm).
    affine : ndarray, shape (4, 4)
        Grid affine.

    Returns
    -------
    ndarray of int, shape (m, 3)
        Offsets (always contains ``(0, 0, 0)``).
    """
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise ValueError(f"sphere diameter must be > 0 mm, got {diameter_mm}")
    radius = diameter_mm / 2.0
    half = np.ceil(_box_half_extent(radius, affine)).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    off = np.stack([g.ravel() for g in grids], axis=1)
    dist = np.linalg.norm(off @ np.asarray(affine, dtype=float)[:3, :3].T, axis=1)
    keep = dist <= radius * (1 + 1e-9)
    keep[np.all(off == 0, axis=1)] = True  # the nearest-voxel fallback
    return off[keep]


def _resample_nearest(img: nib.spatialimages.SpatialImage, target_img) -> np.ndarray:
    """Data of ``img`` on ``target_img``'s grid (nearest neighbour if grids differ)."""
    if same_grid(img.shape, img.affine, target_img.shape, target_img.affine):
        return np.asanyarray(img.dataobj)
    from nilearn.image import resample_to_img

    res = resample_to_img(
        img,
        target_img,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asanyarray(res.dataobj)


def _squeeze3d(data: np.ndarray, source: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(
            f"{source}: expected a 3-D image, got shape {list(data.shape)}; "
            "give one volume per file"
        )
    return data


def atlas_label_masks(
    atlas_img: nib.spatialimages.SpatialImage | str | PathLike,
    labels: pd.DataFrame | None = None,
    select: Iterable[str | int] | None = None,
    target_img: nib.spatialimages.SpatialImage | None = None,
) -> dict[str, np.ndarray]:
    """One boolean mask per label of an integer (deterministic) atlas.

    Parameters
    ----------
    atlas_img : nibabel image or path
        3-D integer label image (0 = background).
    labels : DataFrame, optional
        Label table with columns ``index`` and ``name`` (BIDS ``dseg.tsv``
        style).  Without it every non-zero value is a region named by its
        integer value.
    select : iterable of str or int, optional
        Keep only these regions (names, or integer indices).
    target_img : nibabel image, optional
        The network image.  When its grid differs from the atlas grid, the atlas
        is resampled onto it with nearest-neighbour interpolation (labels must
        not be blended).  Without it the atlas grid is used.

    Returns
    -------
    dict of str to ndarray of bool
        Region name to mask, in the order of the label table (or of increasing
        index).  Labels of the table that have no voxel on the grid (e.g. small
        regions lost by resampling) are left out with a logged warning.

    Raises
    ------
    MissingInputError
        If the atlas path does not exist.
    InputDataError
        If the label table lacks columns, or a selected region does not exist or
        has no voxel on the grid.
    """
    source = "atlas image"
    if isinstance(atlas_img, (str, PathLike)):
        source = str(atlas_img)
        atlas_img = _load(atlas_img)
    data = _squeeze3d(np.asanyarray(atlas_img.dataobj), source)
    if target_img is not None:
        ref = target_img
        if len(ref.shape) > 3:  # a 4-D target: use its first volume's grid
            ref = nib.Nifti1Image(np.zeros(ref.shape[:3], np.int8), ref.affine)
        if data.dtype == np.int64 or data.dtype == np.uint64:
            data = data.astype(np.int32)  # NIfTI images refuse 64-bit integers
        data = _squeeze3d(
            _resample_nearest(nib.Nifti1Image(data, atlas_img.affine), ref), source
        )
    if data.dtype.kind == "f":
        rounded = np.rint(np.nan_to_num(data))
        if not np.allclose(rounded, np.nan_to_num(data), atol=1e-3):
            raise InputDataError(
                f"{source}: atlas values are not integers; give a deterministic "
                "(integer label) atlas, not a probabilistic one"
            )
        data = rounded
    data = data.astype(np.int64)

    present = np.unique(data)
    present = present[present != 0]
    if labels is None:
        table = pd.DataFrame({"index": present, "name": [str(int(v)) for v in present]})
    else:
        missing = {"index", "name"} - set(labels.columns)
        if missing:
            raise InputDataError(
                f"label table lacks column(s) {sorted(missing)}; it needs 'index' "
                "and 'name' (BIDS dseg.tsv)"
            )
        table = labels[["index", "name"]].copy()
        try:
            table["index"] = table["index"].astype(np.int64)
        except (TypeError, ValueError) as exc:
            raise InputDataError(
                f"label table: column 'index' must hold integers ({exc})"
            ) from exc
        table["name"] = table["name"].astype(str)

    if select is not None:
        wanted = list(select)
        by_name = set(table["name"])
        by_index = set(table["index"].tolist())
        unknown = [
            w for w in wanted
            if not (str(w) in by_name or (_is_int(w) and int(w) in by_index))
        ]
        if unknown:
            raise InputDataError(
                f"region(s) {unknown} are not in the atlas label table; "
                "use names or indices listed in it"
            )
        keep = table["name"].isin([str(w) for w in wanted]) | table["index"].isin(
            [int(w) for w in wanted if _is_int(w)]
        )
        table = table[keep]

    masks: dict[str, np.ndarray] = {}
    for index, name in zip(table["index"], table["name"]):
        mask = data == index
        if not mask.any():
            if select is not None:
                raise InputDataError(
                    f"selected region '{name}' (index {index}) has no voxel on the "
                    "network grid; choose another region or a finer network grid"
                )
            LOGGER.warning("atlas region '%s' (index %d) has no voxel; skipped", name, index)
            continue
        masks[name] = mask
    return masks


def _is_int(value: object) -> bool:
    try:
        return float(value) == int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _load(path: str | PathLike) -> nib.spatialimages.SpatialImage:
    from pathlib import Path

    if not Path(path).exists():
        raise MissingInputError(f"{path}: file not found; check the path")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad files
        raise ReadError(f"{path}: cannot be read as a NIfTI image ({exc})") from exc


def load_mask_images(
    paths: Iterable[str | PathLike | nib.spatialimages.SpatialImage],
    target_img: nib.spatialimages.SpatialImage,
) -> list[np.ndarray]:
    """Load binary masks (e.g. lesions) on the network grid.

    Each image is resampled onto ``target_img``'s grid with nearest-neighbour
    interpolation when the grids differ, then thresholded at ``> 0`` (NaN is
    outside).  Nearest-neighbour keeps the mask binary; masks much smaller than
    a target voxel may vanish, which is reported as an error.

    Parameters
    ----------
    paths : iterable of path or nibabel image
        Mask images.
    target_img : nibabel image
        The network image whose grid is used.

    Returns
    -------
    list of ndarray of bool
        One mask per input, shape ``target_img.shape[:3]``.

    Raises
    ------
    MissingInputError
        If a file does not exist.
    InputDataError
        If an image is not 3-D or has no voxel > 0 on the network grid.
    """
    ref = target_img
    if len(ref.shape) > 3:
        ref = nib.Nifti1Image(np.zeros(ref.shape[:3], np.int8), ref.affine)
    out = []
    for item in paths:
        if isinstance(item, (str, PathLike)):
            source, img = str(item), _load(item)
        else:
            source, img = getattr(item, "get_filename", lambda: None)() or "mask image", item
        data = _squeeze3d(np.asanyarray(img.dataobj), source)
        img3 = nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine)
        res = np.nan_to_num(_resample_nearest(img3, ref), nan=0.0)
        mask = res > 0
        if not mask.any():
            raise InputDataError(
                f"{source}: the mask has no voxel > 0 on the network grid (shape "
                f"{list(ref.shape[:3])}); check that it is in MNI space and not empty"
            )
        out.append(mask)
    return out


def random_sphere_masks(
    n: int,
    diameter: float,
    brain_mask: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator | int | None = None,
    return_centers: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
    """Spheres centred on voxels drawn uniformly from a brain mask.

    Centres are voxel centres drawn with replacement (i.i.d. uniform over the
    in-mask voxels).  The spheres are not clipped to the brain mask, so they are
    treated like observed ROIs that are not clipped either.

    Parameters
    ----------
    n : int
        Number of spheres.
    diameter : float
        Sphere diameter (mm).
    brain_mask : ndarray of bool, 3-D
        Voxels allowed as centres.
    affine : ndarray, shape (4, 4)
        Grid affine.
    rng : numpy Generator, int or None
        Random generator or seed.
    return_centers : bool
        Also return the centres (mm).

    Returns
    -------
    list of ndarray of bool
        ``n`` sphere masks; with ``return_centers`` also an ``(n, 3)`` array of
        centres in mm.
    """
    rng = np.random.default_rng(rng)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    candidates = np.argwhere(brain_mask)
    if len(candidates) == 0:
        raise ValueError("brain mask is empty; cannot draw sphere centres")
    picks = candidates[rng.integers(0, len(candidates), size=int(n))]
    centers = voxel_to_world(picks, affine)
    masks = [sphere_mask(c, diameter, brain_mask.shape, affine) for c in centers]
    if return_centers:
        return masks, centers
    return masks


def cortex_shell(brain_mask: np.ndarray, affine: np.ndarray, depth_mm: float = 5.0) -> np.ndarray:
    """The outer shell of a brain mask: where electrode-like ROIs lie.

    A voxel of the mask belongs to the shell when its centre lies within
    ``depth_mm`` of the centre of the nearest voxel outside the mask (voxels
    beyond the grid's edge count as outside).  The distance is the exact
    Euclidean distance transform with the grid's voxel sizes (the norms of the
    affine's columns; exact for axis-aligned grids, flipped or not).  On a 2 mm
    grid the default 5 mm keeps the two outermost layers of voxels.

    Parameters
    ----------
    brain_mask : ndarray of bool, 3-D
        The analysis (brain) mask.
    affine : ndarray, shape (4, 4)
        Grid affine.
    depth_mm : float
        Shell thickness in mm (> 0).

    Returns
    -------
    ndarray of bool
        The shell, a subset of ``brain_mask``.
    """
    from scipy import ndimage

    if not np.isfinite(depth_mm) or depth_mm <= 0:
        raise ValueError(f"shell depth must be > 0 mm, got {depth_mm}")
    brain = np.asarray(brain_mask, dtype=bool)
    sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    # pad with one layer of "outside" so the grid's edge is a boundary too
    padded = np.pad(brain, 1, constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=sizes)[1:-1, 1:-1, 1:-1]
    return brain & (depth <= depth_mm * (1 + 1e-9))
