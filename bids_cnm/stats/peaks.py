"""Peaks of a map: clusters above a fraction of the map's maximum and their local maxima."""

from __future__ import annotations

import warnings

import nibabel as nb
import numpy as np
import pandas as pd

PEAK_COLUMNS = ["cluster", "sign", "x", "y", "z", "value", "cluster_size_mm3"]


def find_peaks(
    img: nb.Nifti1Image,
    fraction: float = 0.5,
    min_distance: float = 8.0,
    min_cluster_voxels: int = 1,
) -> pd.DataFrame:
    """Local maxima of positive and negative clusters of a map.

    Clusters are the connected voxels (faces, edges and corners) where
    ``|value| >= fraction * max|value|``; within each, local maxima at least
    ``min_distance`` mm apart are listed (nilearn's
    :func:`~nilearn.reporting.get_clusters_table`, which resolves the plateaus
    of discrete overlap maps to their centre).

    Parameters
    ----------
    img : Nifti1Image
        3-D map.
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
        ``cluster_size_mm3``; sorted by |value|, largest first; empty when the map
        is zero everywhere.
    """
    from nilearn.reporting import get_clusters_table

    data = np.asanyarray(img.dataobj)
    if data.dtype.kind != "f":
        data = data.astype(np.float64)  # integer counts: float64 holds them exactly
    data = np.nan_to_num(data)
    peak = np.abs(data).max() if data.size else 0.0
    if peak == 0:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    # get_clusters_table keeps voxels strictly above the threshold and compares in
    # the data's dtype (a Python float meets a float32 array as float32), so the
    # threshold is built in that dtype and nudged one step below: values at exactly
    # `fraction * max` (frequent in overlap maps, k/n) then count as suprathreshold.
    dtype = data.dtype.type
    threshold = dtype(fraction) * dtype(peak)
    threshold = float(np.nextafter(threshold, dtype(0)))
    with warnings.catch_warnings():
        # "no clusters found" for an empty sign, and plateau notes: expected here
        warnings.simplefilter("ignore", UserWarning)
        table = get_clusters_table(
            nb.Nifti1Image(data, img.affine),
            stat_threshold=threshold,
            cluster_threshold=min_cluster_voxels,
            two_sided=True,
            min_distance=min_distance,
        )
    if table.empty:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    out = pd.DataFrame(
        {
            "cluster": table["Cluster ID"].astype(str),
            "x": table["X"].astype(float),
            "y": table["Y"].astype(float),
            "z": table["Z"].astype(float),
            "value": table["Peak Stat"].astype(float),
            "cluster_size_mm3": table["Cluster Size (mm3)"],
        }
    )
    out.insert(1, "sign", np.sign(out["value"]).astype(int))
    out["cluster_size_mm3"] = out["cluster_size_mm3"].replace("", np.nan).ffill()
    order = np.argsort(-np.abs(out["value"].to_numpy()), kind="stable")
    return out.iloc[order].reset_index(drop=True)[PEAK_COLUMNS]
