"""Peaks of a map: clusters above a fraction of the map's maximum and their local maxima.

The table is nilearn's :func:`~nilearn.reporting.get_clusters_table` (two-sided), computed
here cluster by cluster on the cluster's bounding box instead of the whole volume: nilearn
filters, labels and takes centres of mass over the full grid once per cluster, which costs
seconds on the overlap maps of a run (hundreds of small clusters).  Every step follows
nilearn's definition, so the rows are the same to the last bit (tests compare them with
``get_clusters_table`` itself):

* clusters: voxels with ``value > threshold`` (per sign) connected by faces
  (6-connectivity); clusters smaller than ``min_cluster_voxels`` voxels are dropped;
  clusters are ordered by their peak value (largest first, ties in the order of
  ``numpy.argsort`` of the negated peaks, clusters numbered in raster order);
* local maxima: voxels equal to the maximum of their 3x3x3 neighbourhood (the map is zero
  outside the cluster), without the inner voxels of plateaus unless the whole cluster is
  one value; the connected (faces) groups of maxima are reduced to their value-weighted
  centre of mass, rounded half to even, or to the nearest voxel of the group when the
  centre falls outside it;
* maxima sorted by value (``numpy.argsort`` of the negated values), then pared: a maximum
  is kept when it is more than ``min_distance`` mm from the last maximum kept before it
  (nilearn's rule: not from every one kept before it); at most 4 per cluster;
* cluster IDs: the peak's number then a letter for sub-peaks (``3``, ``3a``, ``3b``);
  the negative clusters' numbers continue after the positive ones' number of rows.
"""

from __future__ import annotations

from string import ascii_lowercase

import nibabel as nb
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy import ndimage

PEAK_COLUMNS = ["cluster", "sign", "x", "y", "z", "value", "cluster_size_mm3"]

#: faces connectivity (6 neighbours), nilearn's for clusters and for plateaus of maxima
FACES = ndimage.generate_binary_structure(3, 1)
#: rows of a cluster in nilearn's table: the peak and up to three sub-peaks
MAX_ROWS_PER_CLUSTER = 4


def find_peaks(
    img: nb.Nifti1Image,
    fraction: float = 0.5,
    min_distance: float = 8.0,
    min_cluster_voxels: int = 1,
) -> pd.DataFrame:
    """Local maxima of positive and negative clusters of a map.

    Clusters are the voxels connected by faces (6-connectivity) where
    ``|value| >= fraction * max|value|``; within each, local maxima more than
    ``min_distance`` mm from the previous kept one are listed, at most four per cluster
    (the table of nilearn's :func:`~nilearn.reporting.get_clusters_table`, which
    resolves the plateaus of discrete overlap maps to their centre; see the module's
    description for the exact conventions).

    Parameters
    ----------
    img : Nifti1Image
        3-D map (or 4-D with one volume).
    fraction : float
        Cluster-forming threshold as a fraction of the map's largest |value|.
    min_distance : float
        Minimum distance between peaks of one cluster, in mm.
    min_cluster_voxels : int
        Smaller clusters are dropped.

    Returns
    -------
    DataFrame
        Columns ``cluster``, ``sign`` (+1/−1), ``x``, ``y``, ``z`` (mm), ``value``,
        ``cluster_size_mm3`` (integer, truncated as nilearn does); sorted by |value|, largest first (stable: a cluster's
        rows keep nilearn's order among equal values); empty when the map is zero
        everywhere.
    """
    if min_distance <= 0:
        raise ValueError("'min_distance' must be positive.")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:  # one volume: nilearn takes it as 3-D
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"find_peaks needs a 3-D map, got shape {data.shape}")
    if data.dtype.kind != "f":
        data = data.astype(np.float64)  # integer counts: float64 holds them exactly
    data = np.nan_to_num(data)
    peak = np.abs(data).max() if data.size else 0.0
    if peak == 0:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    # Voxels strictly above the threshold are kept, compared in the data's dtype (as
    # nilearn does: a Python float meets a float32 array as float32), so the threshold
    # is built in that dtype and nudged one step below: values at exactly
    # `fraction * max` (frequent in overlap maps, k/n) then count as suprathreshold.
    dtype = data.dtype.type
    threshold = dtype(fraction) * dtype(peak)
    threshold = float(np.nextafter(threshold, dtype(0)))
    affine = np.asarray(img.affine, dtype=np.float64)
    # the voxel volume as nilearn takes it: the product of the header's float32 zooms
    voxel_mm3 = np.prod(nb.Nifti1Image(data, affine).header.get_zooms()[:3])

    rows: list[tuple] = []
    for sign in (1, -1):
        offset = len(rows)  # nilearn numbers the negative clusters after the positive rows
        values = data * sign  # same dtype: a Python int keeps float32 float32
        clusters = _clusters(values > threshold, min_cluster_voxels)
        if not clusters:
            continue
        # nilearn orders the clusters by (-peak).argsort() over clusters in label order;
        # the same call on the same float array gives the same order for equal peaks
        peaks = np.array([values[box][mask].max() for box, mask, _ in clusters])
        for number, index in enumerate((-peaks).argsort(), start=offset + 1):
            box, in_cluster, size = clusters[index]
            size_mm3 = int(size * voxel_mm3)
            ijk, peak_values = _cluster_maxima(values[box] * in_cluster, box, affine,
                                               min_distance)
            xyz = _to_mm(affine, ijk)
            for r in range(min(len(peak_values), MAX_ROWS_PER_CLUSTER)):
                name = str(number) if r == 0 else f"{number}{ascii_lowercase[r - 1]}"
                rows.append((name, sign, *xyz[r], float(peak_values[r] * sign),
                             size_mm3))
    if not rows:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    out = pd.DataFrame(rows, columns=PEAK_COLUMNS)
    order = np.argsort(-np.abs(out["value"].to_numpy()), kind="stable")
    return out.iloc[order].reset_index(drop=True)


def _clusters(
    suprathreshold: np.ndarray, min_voxels: int
) -> list[tuple[tuple[slice, ...], np.ndarray, np.int64]]:
    """The face-connected clusters of a binary map, in label (raster) order.

    Returns, for each cluster of at least ``min_voxels`` voxels: its bounding box grown
    by one voxel on each side (clipped to the grid), the cluster's mask in that box,
    and its number of voxels.  The one-voxel margin holds every neighbour a 3x3x3
    filter sees; where the box is clipped, the grid's edge is also the box's edge, so
    scipy's ``reflect`` boundary gives the same values as on the whole grid.
    """
    labels, n = ndimage.label(suprathreshold, FACES)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    out = []
    shape = labels.shape
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if sizes[label] < min_voxels:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, dim))
                      for s, dim in zip(box, shape))
        out.append((grown, labels[grown] == label, sizes[label]))
    return out


def _cluster_maxima(
    masked: np.ndarray, box: tuple[slice, ...], affine: np.ndarray, min_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """One cluster's local maxima (grid indices, values), sorted and pared.

    ``masked`` is the box of the (sign-flipped) map with zeros outside the cluster.
    """
    data_max = ndimage.maximum_filter(masked, 3)
    maxima = masked == data_max
    inside = masked != 0
    maxima &= inside
    cluster_values = masked[inside]
    # plateaus (all 27 values equal) are no maxima unless the cluster is one value
    if not np.isclose(cluster_values.max(), cluster_values.min()):
        maxima &= (data_max - ndimage.minimum_filter(masked, 3)) > 0
    groups, n_groups = ndimage.label(maxima, FACES)
    index = np.arange(1, n_groups + 1)
    ijk = np.round(_centres_of_mass(masked, groups, box, n_groups)).astype(int)
    local = ijk - [s.start for s in box]
    outside = groups[tuple(local.T)] != index
    for g in np.flatnonzero(outside):
        # a centre outside its group (a ring-shaped plateau): the group's nearest voxel,
        # the first in raster order among equally near ones
        members = np.argwhere(groups == index[g])
        nearest = members[np.argmin(np.linalg.norm(members - local[g], axis=1))]
        local[g] = nearest
        ijk[g] = nearest + [s.start for s in box]
    peak_values = masked[tuple(local.T)]
    order = (-peak_values).argsort()
    ijk, peak_values = ijk[order], peak_values[order]
    keep = _pare(apply_affine(affine, ijk), min_distance)
    return ijk[keep], peak_values[keep]


def _centres_of_mass(
    masked: np.ndarray, groups: np.ndarray, box: tuple[slice, ...], n_groups: int
) -> np.ndarray:
    """Value-weighted centre of every labelled group, in whole-grid voxel indices.

    Summed like :func:`scipy.ndimage.center_of_mass` on the whole grid (a ``bincount``
    over the voxels in raster order, weights ``value * index`` in float64), so the
    centres, and the rounding of exact halves, are the same as nilearn's.
    """
    flat = groups.ravel()
    total = np.bincount(flat, weights=masked.ravel(), minlength=n_groups + 1)[1:]
    centres = np.empty((n_groups, 3))
    for axis, s in enumerate(box):
        shape = [1, 1, 1]
        shape[axis] = -1
        position = np.arange(s.start, s.stop).astype(float).reshape(shape)
        weighted = np.bincount(flat, weights=(masked * position).ravel(),
                               minlength=n_groups + 1)[1:]
        centres[:, axis] = weighted / total
    return centres


def _pare(xyz: np.ndarray, min_distance: float) -> np.ndarray:
    """Which of the sorted maxima nilearn keeps: each is compared with the last kept one."""
    keep = np.ones(len(xyz), dtype=bool)
    last = 0
    for j in range(1, len(xyz)):
        keep[j] = np.linalg.norm(xyz[last] - xyz[j]) > min_distance
        if keep[j]:
            last = j
    return keep


def _to_mm(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates of the kept maxima, computed as nilearn's ``coord_transform``
    (one product of the affine with the homogeneous indices of all of them)."""
    homogeneous = np.c_[ijk[:, 0], ijk[:, 1], ijk[:, 2], np.ones_like(ijk[:, 2])].T
    return np.dot(affine, homogeneous)[:3].T
