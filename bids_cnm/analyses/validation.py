"""Validation statistics of a network map: ROI overlap, nulls, group tests, peaks.

A *network* is a 3-D nibabel image, a 3-D array, or a 1-D array over the voxels
of a boolean analysis mask (then pass that ``mask``).  ROI masks are boolean
arrays on the network grid (see :mod:`bids_cnm.analyses.roi`).

The % overlap follows Ji et al. 2025 (Nat Commun,
doi:10.1038/s41467-025-57392-7): the mean network value inside an ROI times
100.  For the signed IGE overlap map, whose values are (n_pos - n_neg)/21 in
[-1, 1], it is a signed percentage of the contributing studies.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

from bids_cnm.errors import InputDataError
from bids_cnm.analyses.roi import same_grid, sphere_offsets, voxel_to_world

LOGGER = logging.getLogger(__name__)

__all__ = [
    "network_data",
    "roi_overlap",
    "region_overlaps",
    "mean_region_overlap",
    "null_distribution_random_regions",
    "null_distribution_random_spheres",
    "permutation_p",
    "compare_groups",
    "spatial_correlation",
    "peak_in_region",
    "distances_mm",
    "roi_to_network_connectivity",
    "holm",
    "one_way_anova",
]

NetworkLike = nib.spatialimages.SpatialImage | np.ndarray


def network_data(network: NetworkLike) -> np.ndarray:
    """Float data of a network (image or array); a 4-D image with one volume is squeezed.

    Parameters
    ----------
    network : nibabel image or ndarray
        The network.

    Returns
    -------
    ndarray of float
        1-D or 3-D values.
    """
    if isinstance(network, nib.spatialimages.SpatialImage):
        data = np.asanyarray(network.dataobj).astype(float)
    else:
        data = np.asarray(network, dtype=float)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (1, 3):
        raise ValueError(f"a network must be 1-D or 3-D, got shape {data.shape}")
    return data


def _flat(
    network: NetworkLike, roi_mask: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Network values and ROI as matching 1-D vectors."""
    values = network_data(network)
    roi = np.asarray(roi_mask, dtype=bool)
    if values.ndim == 1:
        if roi.ndim == 3:
            if mask is None:
                raise ValueError(
                    "a 1-D network needs the analysis `mask` to place a 3-D ROI on it"
                )
            roi = roi[np.asarray(mask, dtype=bool)]
        if roi.shape != values.shape:
            raise ValueError(f"ROI has {roi.shape} elements, network {values.shape}")
        return values, roi
    if roi.shape != values.shape:
        raise ValueError(f"ROI shape {roi.shape} differs from network shape {values.shape}")
    if mask is not None:
        roi = roi & np.asarray(mask, dtype=bool)
    return values.ravel(), roi.ravel()


def roi_overlap(
    network: NetworkLike, roi_mask: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """% overlap of an ROI with the network: mean network value in the ROI x 100.

    Parameters
    ----------
    network : nibabel image or ndarray
        3-D map, or 1-D values over ``mask``.
    roi_mask : ndarray of bool
        ROI on the network grid (3-D, or 1-D over ``mask``).
    mask : ndarray of bool, optional
        Analysis mask: required for a 1-D network with a 3-D ROI; for a 3-D
        network it restricts the ROI.

    Returns
    -------
    float
        ``100 * mean(network[roi])`` over the ROI voxels where the network is not
        NaN.  Signed for a signed network.

    Raises
    ------
    ValueError
        If the ROI is empty or none of its voxels has a finite network value.
    """
    values, roi = _flat(network, roi_mask, mask)
    if not roi.any():
        raise ValueError("the ROI is empty on the network grid")
    inside = values[roi]
    inside = inside[np.isfinite(inside)]  # outside the network's support: ignored
    if inside.size == 0:
        raise ValueError("no voxel of the ROI has a finite network value")
    return float(100.0 * inside.mean())


def region_overlaps(
    network: NetworkLike, region_masks: Sequence[np.ndarray], mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region sum of finite network values and count of finite voxels.

    Parameters
    ----------
    network : nibabel image or ndarray
        The network.
    region_masks : sequence of ndarray of bool
        Regions on the network grid.
    mask : ndarray of bool, optional
        Analysis mask (see :func:`roi_overlap`).

    Returns
    -------
    sums, counts : ndarray, shape (n_regions,)
        ``sums[r] / counts[r] * 100`` is :func:`roi_overlap` of region ``r``.
    """
    sums = np.empty(len(region_masks))
    counts = np.empty(len(region_masks))
    for r, region in enumerate(region_masks):
        values, roi = _flat(network, region, mask)
        inside = values[roi]
        finite = np.isfinite(inside)
        sums[r] = inside[finite].sum()
        counts[r] = finite.sum()
    return sums, counts


def _check_statistic(statistic: str) -> None:
    if statistic not in ("mean_of_regions", "pooled"):
        raise ValueError("statistic must be 'mean_of_regions' or 'pooled'")


def mean_region_overlap(
    network: NetworkLike,
    region_masks: Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    statistic: str = "mean_of_regions",
) -> float:
    """The observed statistic matching the random-region null.

    Parameters
    ----------
    network : nibabel image or ndarray
        The network.
    region_masks : sequence of ndarray of bool
        The observed regions (e.g. atrophic regions, EEG electrode spheres).
    mask : ndarray of bool, optional
        Analysis mask.
    statistic : {'mean_of_regions', 'pooled'}
        ``mean_of_regions``: the mean of the regions' % overlaps (each region
        weighs the same); ``pooled``: the % overlap of their union counted with
        multiplicity (large regions weigh more).

    Returns
    -------
    float
        % overlap.
    """
    _check_statistic(statistic)
    sums, counts = region_overlaps(network, region_masks, mask)
    if np.any(counts == 0):
        raise ValueError(f"region(s) {np.flatnonzero(counts == 0).tolist()} have no finite voxel")
    if statistic == "pooled":
        return float(100 * sums.sum() / counts.sum())
    return float(100 * np.mean(sums / counts))


def null_distribution_random_regions(
    network: NetworkLike,
    region_masks: Sequence[np.ndarray],
    n_select: int,
    n_draws: int = 10000,
    rng: np.random.Generator | int | None = None,
    mask: np.ndarray | None = None,
    statistic: str = "mean_of_regions",
    return_draws: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Null of the mean % overlap of ``n_select`` regions drawn at random.

    The reference study's null for a set of atlas regions (e.g. regions with
    cortical atrophy): draw ``n_select`` distinct regions of the atlas
    uniformly at random, take their mean % overlap, repeat ``n_draws`` times.
    Each region's sum and voxel count are computed once, so a draw is only
    index arithmetic.

    Parameters
    ----------
    network : nibabel image or ndarray
        The network.
    region_masks : sequence of ndarray of bool
        All candidate regions (the whole atlas).
    n_select : int
        Regions per draw (the size of the observed set).
    n_draws : int
        Number of draws.
    rng : numpy Generator, int or None
        Random generator or seed.
    mask : ndarray of bool, optional
        Analysis mask (see :func:`roi_overlap`).
    statistic : {'mean_of_regions', 'pooled'}
        See :func:`mean_region_overlap`; use the same for the observed value.
    return_draws : bool
        Also return the drawn region indices, shape ``(n_draws, n_select)``.

    Returns
    -------
    ndarray, shape (n_draws,)
        Null % overlaps (and the draws with ``return_draws``).
    """
    _check_statistic(statistic)
    rng = np.random.default_rng(rng)
    sums, counts = region_overlaps(network, region_masks, mask)
    n_regions = len(sums)
    if not 1 <= n_select <= n_regions:
        raise ValueError(f"n_select must be within 1..{n_regions}, got {n_select}")
    if np.any(counts == 0):
        raise ValueError(
            f"region(s) {np.flatnonzero(counts == 0).tolist()} have no finite network "
            "voxel; drop them from the candidate regions"
        )
    means = sums / counts
    null = np.empty(n_draws)
    draws = np.empty((n_draws, n_select), dtype=np.int64) if return_draws else None
    chunk = max(1, min(n_draws, 2_000_000 // max(n_regions, 1)))
    for start in range(0, n_draws, chunk):
        stop = min(start + chunk, n_draws)
        keys = rng.random((stop - start, n_regions))
        # The n_select smallest of i.i.d. uniform keys: a uniform subset without
        # replacement, for all draws of the chunk at once.
        if n_select < n_regions:
            idx = np.argpartition(keys, n_select - 1, axis=1)[:, :n_select]
        else:
            idx = np.broadcast_to(np.arange(n_regions), keys.shape)
        if statistic == "pooled":
            null[start:stop] = 100 * sums[idx].sum(1) / counts[idx].sum(1)
        else:
            null[start:stop] = 100 * means[idx].mean(1)
        if draws is not None:
            draws[start:stop] = idx
    if return_draws:
        return null, draws
    return null


def null_distribution_random_spheres(
    network: NetworkLike,
    brain_mask: np.ndarray,
    affine: np.ndarray,
    n_select: int,
    diameter: float,
    n_draws: int = 10000,
    rng: np.random.Generator | int | None = None,
    statistic: str = "mean_of_regions",
    return_centers: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Null of the mean % overlap of ``n_select`` spheres at random brain locations.

    Centres are voxel centres drawn uniformly (with replacement) from
    ``brain_mask``, as in :func:`bids_cnm.analyses.roi.random_sphere_masks`;
    spheres are clipped to the grid but not to the brain mask (like observed
    coordinate spheres).  Every candidate sphere's sum is computed once by a
    3-D correlation with the sphere kernel, so draws are index arithmetic.

    Parameters
    ----------
    network : nibabel image or ndarray (3-D)
        The network (a 3-D grid is needed for spheres).
    brain_mask : ndarray of bool
        Voxels allowed as centres.
    affine : ndarray, shape (4, 4)
        Grid affine.
    n_select : int
        Spheres per draw (the number of observed coordinates).
    diameter : float
        Sphere diameter (mm).
    n_draws : int
        Number of draws.
    rng : numpy Generator, int or None
        Random generator or seed.
    statistic : {'mean_of_regions', 'pooled'}
        See :func:`mean_region_overlap`.
    return_centers : bool
        Also return the centres in mm, shape ``(n_draws, n_select, 3)``.

    Returns
    -------
    ndarray, shape (n_draws,)
        Null % overlaps.
    """
    _check_statistic(statistic)
    rng = np.random.default_rng(rng)
    values = network_data(network)
    if values.ndim != 3:
        raise ValueError("random spheres need a 3-D network")
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if brain_mask.shape != values.shape:
        raise ValueError("brain mask and network differ in shape")
    candidates = np.argwhere(brain_mask)
    if len(candidates) == 0:
        raise ValueError("brain mask is empty")
    # A voxel-centred sphere is a fixed set of index offsets, so every
    # candidate centre's sphere sum and count is one 3-D correlation with the
    # sphere kernel (zero padding = clipping at the grid edge); draws then only
    # index these maps.
    offsets = sphere_offsets(diameter, affine)
    half = np.abs(offsets).max(axis=0)
    kernel = np.zeros(tuple(2 * half + 1))
    kernel[tuple((offsets + half).T)] = 1.0
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    sphere_sum = ndimage.correlate(filled, kernel, mode="constant", cval=0.0)[brain_mask]
    sphere_count = np.rint(
        ndimage.correlate(finite.astype(float), kernel, mode="constant", cval=0.0)
    )[brain_mask]
    if np.any(sphere_count == 0):
        raise ValueError("a sphere around a brain-mask voxel has no finite network voxel")

    picks = rng.integers(0, len(candidates), size=(n_draws, n_select))
    s, c = sphere_sum[picks], sphere_count[picks]
    if statistic == "pooled":
        null = 100 * s.sum(1) / c.sum(1)
    else:
        null = 100 * (s / c).mean(1)
    if return_centers:
        return null, voxel_to_world(candidates[picks], affine)
    return null


def permutation_p(observed: float, null: np.ndarray, alternative: str = "greater") -> float:
    """Permutation p-value ``(count + 1) / (n + 1)``.

    Parameters
    ----------
    observed : float
        Observed statistic.
    null : array-like
        Null statistics.
    alternative : {'greater', 'less', 'two-sided'}
        ``greater`` counts null >= observed, ``less`` counts null <= observed;
        ``two-sided`` is ``min(1, 2 * min(p_greater, p_less))``, which does not
        assume a null centred on zero (random-region nulls are not).

    Returns
    -------
    float
        The p-value.  Null values within 1e-12 (relative) of the observed value
        count as ties (extreme), so float round-off cannot hide the identity
        permutation.
    """
    null = np.asarray(null, dtype=float).ravel()
    if null.size == 0 or not np.all(np.isfinite(null)):
        raise ValueError("the null distribution is empty or has non-finite values")
    if not np.isfinite(observed):
        raise ValueError(f"observed statistic is not finite: {observed}")
    tol = 1e-12 * max(1.0, abs(observed))
    n = null.size
    p_greater = (np.count_nonzero(null >= observed - tol) + 1) / (n + 1)
    p_less = (np.count_nonzero(null <= observed + tol) + 1) / (n + 1)
    if alternative == "greater":
        return float(p_greater)
    if alternative == "less":
        return float(p_less)
    if alternative == "two-sided":
        return float(min(1.0, 2 * min(p_greater, p_less)))
    raise ValueError("alternative must be 'greater', 'less' or 'two-sided'")


def compare_groups(
    values_a: Sequence[float], values_b: Sequence[float], confidence: float = 0.95
) -> dict:
    """Welch's t-test of two independent groups, with effect sizes.

    NaNs are dropped.  ``df`` is the Welch-Satterthwaite value; the CI of the
    mean difference (a - b) is ``diff +/- t_{(1+confidence)/2, df} * se`` with
    ``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` (as ``scipy.stats.ttest_ind(...,
    equal_var=False).confidence_interval()``).  Cohen's d uses the pooled SD
    ``sqrt(((n_a-1)s_a^2 + (n_b-1)s_b^2)/(n_a+n_b-2))``; Hedges' g multiplies it
    by the exact small-sample factor
    ``J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))``, ``m = n_a+n_b-2``
    (Hedges 1981; ~ ``1 - 3/(4m - 1)``).

    Parameters
    ----------
    values_a, values_b : array-like
        Group values.
    confidence : float
        CI level.

    Returns
    -------
    dict
        ``t, df, p`` (two-sided), ``mean_diff, ci_low, ci_high, confidence,
        cohens_d, hedges_g, n_a, n_b, mean_a, mean_b, sd_a, sd_b`` (SD with
        ddof=1).
    """
    a = np.asarray(values_a, dtype=float).ravel()
    b = np.asarray(values_b, dtype=float).ravel()
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        raise ValueError(f"each group needs >= 2 values (got {na} and {nb})")
    ma, mb = a.mean(), b.mean()
    va, vb = a.var(ddof=1), b.var(ddof=1)
    se2a, se2b = va / na, vb / nb
    se = np.sqrt(se2a + se2b)
    diff = ma - mb
    if se == 0:
        raise ValueError("both groups are constant; the t statistic is undefined")
    t = diff / se
    df = (se2a + se2b) ** 2 / (se2a**2 / (na - 1) + se2b**2 / (nb - 1))
    p = 2 * stats.t.sf(abs(t), df)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    m = na + nb - 2
    sd_pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / m)
    d = diff / sd_pooled if sd_pooled > 0 else np.nan
    j = np.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / np.sqrt(m / 2)
    return {
        "t": float(t),
        "df": float(df),
        "p": float(p),
        "mean_diff": float(diff),
        "ci_low": float(diff - half),
        "ci_high": float(diff + half),
        "confidence": float(confidence),
        "cohens_d": float(d),
        "hedges_g": float(d * j),
        "n_a": int(na),
        "n_b": int(nb),
        "mean_a": float(ma),
        "mean_b": float(mb),
        "sd_a": float(np.sqrt(va)),
        "sd_b": float(np.sqrt(vb)),
    }


def spatial_correlation(
    map_a: NetworkLike,
    map_b: NetworkLike,
    mask: np.ndarray | None = None,
    method: str = "pearson",
    interpolation: str = "linear",
) -> float:
    """Voxel-wise correlation of two maps over voxels where both are finite.

    Parameters
    ----------
    map_a, map_b : nibabel image or ndarray
        Maps of equal shape.  If both are images on different grids, ``map_b``
        is resampled onto ``map_a``'s grid (nilearn, ``interpolation``).
    mask : ndarray of bool, optional
        Restrict to these voxels (same shape as the maps).
    method : {'pearson', 'spearman'}
        Correlation type.
    interpolation : {'linear', 'continuous', 'nearest'}
        Used only when resampling.

    Returns
    -------
    float
        The correlation; NaN (with a warning) if a map is constant.
    """
    if (
        isinstance(map_a, nib.spatialimages.SpatialImage)
        and isinstance(map_b, nib.spatialimages.SpatialImage)
        and not same_grid(map_a.shape, map_a.affine, map_b.shape, map_b.affine)
    ):
        from nilearn.image import resample_to_img

        ref = nib.Nifti1Image(np.zeros(map_a.shape[:3], np.int8), map_a.affine)
        # float data so that voxels outside map_b's field of view can be NaN
        map_b = nib.Nifti1Image(network_data(map_b).astype(np.float32), map_b.affine)
        map_b = resample_to_img(
            map_b, ref, interpolation=interpolation, force_resample=True, copy_header=True,
            fill_value=np.nan,
        )
    a, b = network_data(map_a), network_data(map_b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} differs from map shape {a.shape}")
        keep &= mask
    if keep.sum() < 3:
        raise ValueError("fewer than 3 voxels are finite in both maps (and in the mask)")
    x, y = a[keep], b[keep]
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    elif method != "pearson":
        raise ValueError("method must be 'pearson' or 'spearman'")
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    if den == 0:
        LOGGER.warning("spatial correlation undefined: a map is constant over the voxels")
        return float("nan")
    return float(np.clip((x @ y) / den, -1.0, 1.0))


def peak_in_region(
    img: nib.spatialimages.SpatialImage, region_mask: np.ndarray, sign: str = "positive"
) -> dict:
    """Location and value of the extreme of a map inside a region.

    Ties (plateaus are common in count maps such as the IGE overlap, whose
    values are k/21) are broken by choosing, among the tied voxels, the one
    nearest (in mm) to their centroid, then the smallest (x, y, z).  This makes
    the result independent of the grid orientation.

    Parameters
    ----------
    img : nibabel image
        The map (3-D).
    region_mask : ndarray of bool
        Region on the image grid.
    sign : {'positive', 'negative', 'abs'}
        Maximum, minimum, or maximum absolute value.

    Returns
    -------
    dict
        ``x, y, z`` (mm), ``i, j, k`` (voxel), ``value`` and ``n_ties`` (number
        of voxels sharing the extreme value).
    """
    data = network_data(img)
    region = np.asarray(region_mask, dtype=bool)
    if data.ndim != 3 or region.shape != data.shape:
        raise ValueError(f"region shape {region.shape} differs from image shape {data.shape}")
    keep = region & np.isfinite(data)
    if not keep.any():
        raise ValueError("the region has no finite voxel")
    ijk = np.argwhere(keep)
    vals = data[keep]
    if sign == "positive":
        score = vals
    elif sign == "negative":
        score = -vals
    elif sign == "abs":
        score = np.abs(vals)
    else:
        raise ValueError("sign must be 'positive', 'negative' or 'abs'")
    tied = np.flatnonzero(score == score.max())
    xyz = voxel_to_world(ijk[tied], img.affine)
    dist = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    order = np.lexsort((xyz[:, 2], xyz[:, 1], xyz[:, 0], np.round(dist, 6)))
    best = tied[order[0]]
    i, j, k = (int(v) for v in ijk[best])
    x, y, z = (float(v) for v in voxel_to_world(ijk[best], img.affine))
    return {
        "x": x, "y": y, "z": z, "i": i, "j": j, "k": k,
        "value": float(vals[best]), "n_ties": int(tied.size),
    }


def distances_mm(
    point: Sequence[float] | dict, references: pd.DataFrame, label_column: str = "label"
) -> pd.DataFrame:
    """Euclidean distances from a point to labelled reference coordinates.

    Parameters
    ----------
    point : array-like of 3 floats, or dict with x, y, z
        The point in mm (e.g. a peak from :func:`peak_in_region`).
    references : DataFrame
        Columns ``label_column``, x, y, z (mm).
    label_column : str
        Name of the label column.

    Returns
    -------
    DataFrame
        label, x, y, z, distance_mm; sorted by distance (nearest first).
    """
    if isinstance(point, dict):
        point = [point["x"], point["y"], point["z"]]
    p = np.asarray(point, dtype=float).reshape(3)
    missing = {label_column, "x", "y", "z"} - set(references.columns)
    if missing:
        raise InputDataError(
            f"reference coordinate table lacks column(s) {sorted(missing)}; "
            f"it needs {label_column}, x, y, z"
        )
    xyz = references[["x", "y", "z"]].to_numpy(dtype=float)
    out = pd.DataFrame({
        "label": references[label_column].to_numpy(),
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "distance_mm": np.linalg.norm(xyz - p, axis=1),
    })
    return out.sort_values("distance_mm", kind="stable").reset_index(drop=True)


def roi_to_network_connectivity(
    z_values: np.ndarray,
    node_networks: Sequence[str],
    subjects: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean Fisher-z connectivity of seeds to each large-scale network.

    Parameters
    ----------
    z_values : ndarray, shape (n_subjects, n_seeds, n_nodes)
        Fisher-z connectivity of each seed (e.g. the thalamic peak, CM) with
        each node of a parcellation, per subject.
    node_networks : sequence of str, length n_nodes
        Network label of each node (e.g. Yeo-7 name).
    subjects : sequence of str, optional
        Subject labels (index of the output).

    Returns
    -------
    DataFrame, shape (n_subjects, n_networks)
        Per subject and network, the mean over seeds and the network's nodes
        (NaNs ignored; averaging in Fisher-z space), columns in order of first
        appearance in ``node_networks``.
    """
    z = np.asarray(z_values, dtype=float)
    if z.ndim == 2:  # a single seed
        z = z[:, None, :]
    if z.ndim != 3:
        raise ValueError("z_values must be (subjects, seeds, nodes)")
    labels = np.asarray([str(v) for v in node_networks])
    if labels.size != z.shape[2]:
        raise ValueError(f"{labels.size} node labels for {z.shape[2]} nodes")
    names = list(dict.fromkeys(labels.tolist()))
    out = np.empty((z.shape[0], len(names)))
    for n, name in enumerate(names):
        block = z[:, :, labels == name].reshape(z.shape[0], -1)
        out[:, n] = np.nanmean(block, axis=1) if np.isnan(block).any() else block.mean(1)
    index = list(subjects) if subjects is not None else None
    return pd.DataFrame(out, columns=names, index=index)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values.

    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over sorted p-values.

    Parameters
    ----------
    p_values : array-like
        Unadjusted p-values.

    Returns
    -------
    ndarray
        Adjusted p-values in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def one_way_anova(values: np.ndarray | pd.DataFrame, names: Sequence[str] | None = None) -> dict:
    """One-way ANOVA across networks, with ranking and Holm-corrected post hoc tests.

    Each column (network) is a group of subject values, as in the reference
    study's between-network comparison (scipy.stats.f_oneway; note the groups
    share subjects, so this ignores the pairing).

    Parameters
    ----------
    values : ndarray or DataFrame, shape (n_subjects, n_networks)
        E.g. the output of :func:`roi_to_network_connectivity`.
    names : sequence of str, optional
        Network names (default: DataFrame columns or ``net0..``).

    Returns
    -------
    dict
        ``F, df_between, df_within, p, eta_squared`` (SS_between / SS_total),
        ``ranking`` (DataFrame network, mean, sd, n sorted by decreasing mean)
        and ``posthoc`` (DataFrame of all pairs: network_a, network_b, t, df,
        p, p_holm, mean_diff, hedges_g; Welch tests, pairs in ranking order).
    """
    if isinstance(values, pd.DataFrame):
        names = list(values.columns) if names is None else list(names)
        values = values.to_numpy(dtype=float)
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError("values must be (subjects, networks) with >= 2 networks")
    if names is None:
        names = [f"net{n}" for n in range(values.shape[1])]
    names = [str(n) for n in names]
    groups = [col[~np.isnan(col)] for col in values.T]
    f, p = stats.f_oneway(*groups)
    allv = np.concatenate(groups)
    grand = allv.mean()
    ss_between = sum(g.size * (g.mean() - grand) ** 2 for g in groups)
    ss_total = ((allv - grand) ** 2).sum()
    ranking = pd.DataFrame({
        "network": names,
        "mean": [g.mean() for g in groups],
        "sd": [g.std(ddof=1) for g in groups],
        "n": [g.size for g in groups],
    }).sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
    order = [names.index(n) for n in ranking["network"]]
    rows = []
    for ia, ib in itertools.combinations(order, 2):
        res = compare_groups(groups[ia], groups[ib])
        rows.append({
            "network_a": names[ia], "network_b": names[ib], "t": res["t"], "df": res["df"],
            "p": res["p"], "mean_diff": res["mean_diff"], "hedges_g": res["hedges_g"],
        })
    posthoc = pd.DataFrame(rows)
    posthoc.insert(5, "p_holm", holm(posthoc["p"].to_numpy()))
    return {
        "F": float(f),
        "df_between": int(len(groups) - 1),
        "df_within": int(allv.size - len(groups)),
        "p": float(p),
        "eta_squared": float(ss_between / ss_total) if ss_total > 0 else float("nan"),
        "ranking": ranking,
        "posthoc": posthoc,
    }
