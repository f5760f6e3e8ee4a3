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

# scipy.stats (about 1 s to import) in the functions that use it: the run's command line
# imports this module through the plan's seeds, and needs none of its tests
from scipy import ndimage, special

from bids_cnm.analyses.roi import same_grid, sphere_offsets, voxel_to_world
from bids_cnm.errors import InputDataError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "compare_groups",
    "distances_mm",
    "holm",
    "mean_region_overlap",
    "network_anova",
    "network_data",
    "null_distribution_random_regions",
    "null_distribution_random_spheres",
    "one_way_anova",
    "peak_in_region",
    "peak_plateaus",
    "permutation_p",
    "region_overlaps",
    "roi_overlap",
    "roi_to_network_connectivity",
    "spatial_correlation",
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


DENOMINATORS = ("roi", "mask")


def _flat(
    network: NetworkLike, roi_mask: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Network values, ROI and analysis mask as matching 1-D vectors.

    Returns ``values``, ``roi``, ``inside`` (the element is inside the analysis
    mask) and ``n_outside``: ROI voxels that the vectors do not hold (a 3-D ROI
    on a 1-D network over ``mask``), all outside the analysis mask.
    """
    values = network_data(network)
    roi = np.asarray(roi_mask, dtype=bool)
    if values.ndim == 1:
        n_outside = 0
        if roi.ndim == 3:
            if mask is None:
                raise ValueError(
                    "a 1-D network needs the analysis `mask` to place a 3-D ROI on it"
                )
            brain = np.asarray(mask, dtype=bool)
            n_outside = int((roi & ~brain).sum())
            roi = roi[brain]
        if roi.shape != values.shape:
            raise ValueError(f"ROI has {roi.shape} elements, network {values.shape}")
        return values, roi, np.ones(values.shape, dtype=bool), n_outside
    if roi.shape != values.shape:
        raise ValueError(f"ROI shape {roi.shape} differs from network shape {values.shape}")
    # without a mask, the non-finite voxels are the ones outside the analysis mask
    inside = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool)
    return values.ravel(), roi.ravel(), inside.ravel(), 0


def _check_denominator(denominator: str) -> None:
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, not {denominator!r}")


def _sum_count(
    network: NetworkLike, roi_mask: np.ndarray, mask: np.ndarray | None, denominator: str
) -> tuple[float, int]:
    """Sum of the ROI's network values and the count they are divided by."""
    _check_denominator(denominator)
    values, roi, inside, n_outside = _flat(network, roi_mask, mask)
    finite = np.isfinite(values)
    used = roi & inside & finite
    total = float(values[used].sum())
    if denominator == "mask":
        return total, int(used.sum())
    # Ji et al.: every ROI voxel counts; outside the analysis mask its value is 0.
    # A non-finite value inside the mask (undefined t) is not a 0: it is left out.
    undefined = int((roi & inside & ~finite).sum())
    return total, int(roi.sum()) + n_outside - undefined


def roi_overlap(
    network: NetworkLike,
    roi_mask: np.ndarray,
    mask: np.ndarray | None = None,
    denominator: str = "roi",
) -> float:
    """% overlap of an ROI with the network.

    Parameters
    ----------
    network : nibabel image or ndarray
        3-D map, or 1-D values over ``mask``.
    roi_mask : ndarray of bool
        ROI on the network grid (3-D, or 1-D over ``mask``).
    mask : ndarray of bool, optional
        Analysis mask: required for a 1-D network with a 3-D ROI.  For a 3-D
        network without it, the voxels with a non-finite value are taken as
        the ones outside the mask.
    denominator : {'roi', 'mask'}
        ``roi`` (Ji et al. 2025): the sum of the network's values inside the ROI
        divided by the number of ROI voxels on the grid, voxels outside the
        analysis mask counting as 0.  ``mask``: the mean over the ROI's voxels
        inside the analysis mask.  Either way, a non-finite value inside the
        mask (an undefined t) is left out of the sum and of the count.

    Returns
    -------
    float
        ``100 * sum / count``; signed for a signed network.

    Raises
    ------
    ValueError
        If the ROI is empty or none of its voxels counts.
    """
    if not np.asarray(roi_mask, dtype=bool).any():
        raise ValueError("the ROI is empty on the network grid")
    total, count = _sum_count(network, roi_mask, mask, denominator)
    if count == 0:
        raise ValueError("no voxel of the ROI has a finite network value")
    return float(100.0 * total / count)


def region_overlaps(
    network: NetworkLike,
    region_masks: Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    denominator: str = "roi",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region sum of finite network values and the count they are divided by.

    Parameters
    ----------
    network : nibabel image or ndarray
        The network.
    region_masks : sequence of ndarray of bool
        Regions on the network grid.
    mask : ndarray of bool, optional
        Analysis mask (see :func:`roi_overlap`).
    denominator : {'roi', 'mask'}
        See :func:`roi_overlap`.

    Returns
    -------
    sums, counts : ndarray, shape (n_regions,)
        ``sums[r] / counts[r] * 100`` is :func:`roi_overlap` of region ``r``.
    """
    pairs = [_sum_count(network, region, mask, denominator) for region in region_masks]
    sums = np.array([p[0] for p in pairs], dtype=float)
    counts = np.array([p[1] for p in pairs], dtype=float)
    return sums, counts


def _check_statistic(statistic: str) -> None:
    if statistic not in ("mean_of_regions", "pooled"):
        raise ValueError("statistic must be 'mean_of_regions' or 'pooled'")


def mean_region_overlap(
    network: NetworkLike,
    region_masks: Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    statistic: str = "mean_of_regions",
    denominator: str = "roi",
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
    denominator : {'roi', 'mask'}
        See :func:`roi_overlap`.

    Returns
    -------
    float
        % overlap.
    """
    _check_statistic(statistic)
    sums, counts = region_overlaps(network, region_masks, mask, denominator)
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
    denominator: str = "roi",
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
    denominator : {'roi', 'mask'}
        See :func:`roi_overlap`; use the same for the observed value.

    Returns
    -------
    ndarray, shape (n_draws,)
        Null % overlaps (and the draws with ``return_draws``).
    """
    _check_statistic(statistic)
    rng = np.random.default_rng(rng)
    sums, counts = region_overlaps(network, region_masks, mask, denominator)
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
    denominator: str = "roi",
    centres: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Null of the mean % overlap of ``n_select`` spheres at random locations.

    Centres are voxel centres drawn uniformly (with replacement) from
    ``centres`` (default: ``brain_mask``; e.g. a cortical shell from
    :func:`bids_cnm.analyses.roi.cortex_shell` for electrode-like ROIs, so that
    the null matches the observed spheres' depth), as in
    :func:`bids_cnm.analyses.roi.random_sphere_masks`.  Spheres are clipped to
    the grid but not to the brain mask (like observed coordinate spheres) and
    counted as :func:`roi_overlap` counts them.  Every candidate sphere's sum
    and count is a 3-D correlation with the sphere kernel, computed once, so
    draws are index arithmetic.

    Parameters
    ----------
    network : nibabel image or ndarray (3-D)
        The network (a 3-D grid is needed for spheres).
    brain_mask : ndarray of bool
        The analysis mask: outside it a sphere's voxels count as 0 (``roi``) or
        not at all (``mask``).
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
    denominator : {'roi', 'mask'}
        See :func:`roi_overlap`.
    centres : ndarray of bool, optional
        Voxels allowed as sphere centres (default ``brain_mask``).

    Returns
    -------
    ndarray, shape (n_draws,)
        Null % overlaps.
    """
    _check_statistic(statistic)
    _check_denominator(denominator)
    rng = np.random.default_rng(rng)
    values = network_data(network)
    if values.ndim != 3:
        raise ValueError("random spheres need a 3-D network")
    brain_mask = np.asarray(brain_mask, dtype=bool)
    allowed = brain_mask if centres is None else np.asarray(centres, dtype=bool)
    if brain_mask.shape != values.shape or allowed.shape != values.shape:
        raise ValueError("brain mask, centre mask and network differ in shape")
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        raise ValueError("the mask of allowed sphere centres is empty")
    # A voxel-centred sphere is a fixed set of index offsets, so every
    # candidate centre's sphere sum and count is one 3-D correlation with the
    # sphere kernel (zero padding = clipping at the grid edge); draws then only
    # index these maps.
    offsets = sphere_offsets(diameter, affine)
    half = np.abs(offsets).max(axis=0)
    kernel = np.zeros(tuple(2 * half + 1))
    kernel[tuple((offsets + half).T)] = 1.0
    finite = np.isfinite(values)
    used = brain_mask & finite
    if denominator == "mask":
        counted = used
    else:  # every grid voxel of the sphere, except undefined values inside the mask
        counted = ~(brain_mask & ~finite)
    filled = np.where(used, values, 0.0)

    def at_centres(image: np.ndarray) -> np.ndarray:
        return ndimage.correlate(image, kernel, mode="constant", cval=0.0)[allowed]

    sphere_sum = at_centres(filled)
    sphere_count = np.rint(at_centres(counted.astype(float)))
    if np.any(sphere_count == 0):
        raise ValueError("a sphere around an allowed centre has no finite network voxel")

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
    from scipy import stats

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
    from scipy import stats

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


PLATEAU_COLUMNS = ["plateau", "x", "y", "z", "i", "j", "k", "value", "n_voxels"]


def peak_plateaus(
    img: nib.spatialimages.SpatialImage,
    region_mask: np.ndarray,
    sign: str = "positive",
    references: pd.DataFrame | None = None,
    label_column: str = "label",
) -> pd.DataFrame:
    """Every plateau of the extreme value of a map inside a region.

    The voxels of the region (with a finite value) that share the extreme value
    exactly are split into plateaus: sets of such voxels connected by faces,
    edges or corners.  Count maps such as the IGE overlap (values k/21) often
    hold the same maximum in several places (both thalami), and a single peak
    would hide all but one of them.  Each plateau is placed at its voxel nearest
    (in mm, rounded to 1e-6) to the plateau's centroid, then the smallest
    (x, y, z), which does not depend on the grid's orientation.

    Parameters
    ----------
    img : nibabel image
        The map (3-D).
    region_mask : ndarray of bool
        Region on the image grid.
    sign : {'positive', 'negative', 'abs'}
        Maximum, minimum, or maximum absolute value.
    references : DataFrame, optional
        Reference coordinates (``label_column``, x, y, z in mm): each plateau
        gets its nearest reference and the distance to it.
    label_column : str
        Label column of ``references``.

    Returns
    -------
    DataFrame
        One row per plateau: ``plateau`` (1, 2, ...), ``x, y, z`` (mm), ``i, j,
        k`` (voxel), ``value``, ``n_voxels`` and, with references,
        ``nearest_reference`` and ``nearest_distance_mm``; ordered by
        ``n_voxels`` (largest first), then x, y, z.  A unique peak is one row.

    Raises
    ------
    ValueError
        If the region has no finite voxel or ``sign`` is unknown.
    """
    data = network_data(img)
    region = np.asarray(region_mask, dtype=bool)
    if data.ndim != 3 or region.shape != data.shape:
        raise ValueError(f"region shape {region.shape} differs from image shape {data.shape}")
    if sign not in ("positive", "negative", "abs"):
        raise ValueError("sign must be 'positive', 'negative' or 'abs'")
    keep = region & np.isfinite(data)
    if not keep.any():
        raise ValueError("the region has no finite voxel")
    score = {"positive": data, "negative": -data, "abs": np.abs(data)}[sign]
    best = score[keep].max()
    tied = keep & (score == best)
    labels, n_plateaus = ndimage.label(tied, structure=np.ones((3, 3, 3), dtype=bool))
    rows = []
    for label in range(1, n_plateaus + 1):
        ijk = np.argwhere(labels == label)
        xyz = voxel_to_world(ijk, img.affine)
        dist = np.linalg.norm(xyz - xyz.mean(0), axis=1)
        pick = np.lexsort((xyz[:, 2], xyz[:, 1], xyz[:, 0], np.round(dist, 6)))[0]
        i, j, k = (int(v) for v in ijk[pick])
        rows.append({
            "x": float(xyz[pick, 0]), "y": float(xyz[pick, 1]), "z": float(xyz[pick, 2]),
            "i": i, "j": j, "k": k, "value": float(data[i, j, k]), "n_voxels": len(ijk),
        })
    out = pd.DataFrame(rows)
    out = out.sort_values(["n_voxels", "x", "y", "z"], ascending=[False, True, True, True],
                          kind="stable").reset_index(drop=True)
    out.insert(0, "plateau", np.arange(1, len(out) + 1))
    if references is not None:
        nearest = [distances_mm(row, references, label_column).iloc[0]
                   for row in out[["x", "y", "z"]].to_dict("records")]
        out["nearest_reference"] = [n["label"] for n in nearest]
        out["nearest_distance_mm"] = [float(n["distance_mm"]) for n in nearest]
    return out


def peak_in_region(
    img: nib.spatialimages.SpatialImage, region_mask: np.ndarray, sign: str = "positive"
) -> dict:
    """Location and value of the extreme of a map inside a region.

    The first plateau of :func:`peak_plateaus` (the largest).  When
    ``n_plateaus`` > 1 the extreme is not unique: report every plateau
    (:func:`peak_plateaus`), not this one alone.

    Parameters
    ----------
    img, region_mask, sign
        As for :func:`peak_plateaus`.

    Returns
    -------
    dict
        ``x, y, z`` (mm), ``i, j, k`` (voxel), ``value``, ``n_ties`` (voxels
        sharing the extreme value, over all plateaus) and ``n_plateaus``.
    """
    plateaus = peak_plateaus(img, region_mask, sign)
    first = plateaus.iloc[0]
    out = {key: float(first[key]) for key in ("x", "y", "z", "value")}
    out.update({key: int(first[key]) for key in ("i", "j", "k")})
    out["n_ties"] = int(plateaus["n_voxels"].sum())
    out["n_plateaus"] = len(plateaus)
    return out


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


ANOVA_TESTS = ("nodes", "repeated_measures", "friedman")


def _ranking(names: list[str], groups: list[np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({
        "network": names,
        "mean": [g.mean() for g in groups],
        "sd": [g.std(ddof=1) if g.size > 1 else np.nan for g in groups],
        "n": [g.size for g in groups],
    }).sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)


def _posthoc(names: list[str], groups: list[np.ndarray], ranking: pd.DataFrame,
             kind: str) -> pd.DataFrame:
    """Pairwise tests in ranking order with Holm's adjustment.

    ``welch`` for independent units (nodes), ``paired`` t for subjects
    (repeated measures), ``wilcoxon`` signed-rank for the Friedman test.
    """
    from scipy import stats

    order = [names.index(n) for n in ranking["network"]]
    rows = []
    for ia, ib in itertools.combinations(order, 2):
        a, b = groups[ia], groups[ib]
        row = {"network_a": names[ia], "network_b": names[ib]}
        if kind == "welch" and min(a.size, b.size) < 2:
            # a network of one unit has no variance of its own: no pairwise test
            row.update(test="welch", statistic=np.nan, df=np.nan, p=np.nan,
                       mean_diff=float(a.mean() - b.mean()), hedges_g=np.nan)
        elif kind == "welch":
            res = compare_groups(a, b)
            row.update(test="welch", statistic=res["t"], df=res["df"], p=res["p"],
                       mean_diff=res["mean_diff"], hedges_g=res["hedges_g"])
        elif kind == "paired":
            res = stats.ttest_rel(a, b)
            diff = a - b
            row.update(test="paired_t", statistic=float(res.statistic), df=float(a.size - 1),
                       p=float(res.pvalue), mean_diff=float(diff.mean()),
                       cohens_dz=float(diff.mean() / diff.std(ddof=1)))
        else:
            res = stats.wilcoxon(a, b)
            row.update(test="wilcoxon", statistic=float(res.statistic), p=float(res.pvalue),
                       median_diff=float(np.median(a - b)))
        rows.append(row)
    posthoc = pd.DataFrame(rows)
    p = posthoc["p"].to_numpy(dtype=float)
    adjusted = np.full(p.size, np.nan)
    adjusted[np.isfinite(p)] = holm(p[np.isfinite(p)])  # over the tests that were made
    posthoc.insert(posthoc.columns.get_loc("p") + 1, "p_holm", adjusted)
    return posthoc


def _independent_anova(groups: list[np.ndarray], names: list[str], unit: str) -> dict:
    from scipy import stats

    empty = [n for n, g in zip(names, groups) if g.size == 0]
    if empty or sum(g.size for g in groups) <= len(groups):
        raise ValueError(f"network(s) {empty or names} have too few {unit}: the ANOVA needs "
                         f"one or more per network and more {unit} than networks")
    f, p = stats.f_oneway(*groups)
    allv = np.concatenate(groups)
    grand = allv.mean()
    ss_between = sum(g.size * (g.mean() - grand) ** 2 for g in groups)
    ss_total = ((allv - grand) ** 2).sum()
    ranking = _ranking(names, groups)
    return {
        "test": "one_way", "unit": unit, "statistic_name": "F",
        "F": float(f), "statistic": float(f),
        "df_between": int(len(groups) - 1),
        "df_within": int(allv.size - len(groups)),
        "p": float(p), "n_units": int(allv.size),
        "eta_squared": float(ss_between / ss_total) if ss_total > 0 else float("nan"),
        "ranking": ranking,
        "posthoc": _posthoc(names, groups, ranking, "welch"),
    }


def one_way_anova(values: np.ndarray | pd.DataFrame, names: Sequence[str] | None = None) -> dict:
    """One-way ANOVA across networks, with ranking and Holm-corrected post hoc tests.

    Each column (network) is a group of independent values (NaNs dropped),
    compared with scipy.stats.f_oneway and Welch post-hoc tests.  For the
    reference study's test, whose units are the nodes, see
    :func:`network_anova`.

    Parameters
    ----------
    values : ndarray or DataFrame, shape (n_units, n_networks)
        One column per network.
    names : sequence of str, optional
        Network names (default: DataFrame columns or ``net0..``).

    Returns
    -------
    dict
        ``F, df_between, df_within, p, eta_squared`` (SS_between / SS_total),
        ``ranking`` (DataFrame network, mean, sd, n sorted by decreasing mean)
        and ``posthoc`` (DataFrame of all pairs: network_a, network_b, test,
        statistic (t), p, p_holm, df, mean_diff, hedges_g; pairs in ranking order).
    """
    if isinstance(values, pd.DataFrame):
        names = list(values.columns) if names is None else list(names)
        values = values.to_numpy(dtype=float)
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError("values must be (units, networks) with >= 2 networks")
    if names is None:
        names = [f"net{n}" for n in range(values.shape[1])]
    names = [str(n) for n in names]
    groups = [col[~np.isnan(col)] for col in values.T]
    return _independent_anova(groups, names, "values")


def network_anova(
    z_values: np.ndarray, node_networks: Sequence[str], test: str = "nodes"
) -> dict:
    """Compare the seeds' connectivity across the networks of a parcellation.

    Parameters
    ----------
    z_values : ndarray, shape (n_subjects, n_seeds, n_nodes)
        Fisher-z connectivity of each seed with each node, per subject.
    node_networks : sequence of str, length n_nodes
        Network label of each node.
    test : {'nodes', 'repeated_measures', 'friedman'}
        ``nodes`` (the reference study's units: F(11, 651) for 663 nodes in 12
        networks): one value per node, its mean z over subjects and seeds
        (NaNs ignored), then a one-way ANOVA across networks with the nodes as
        independent units, df (G - 1, n_nodes - G), and Welch post-hoc tests.
        ``repeated_measures``: each subject's mean z per network
        (:func:`roi_to_network_connectivity`), a one-way repeated-measures
        ANOVA with subjects as the repeated factor, df (G - 1, (G - 1)(N - 1)),
        partial eta squared, and paired post-hoc t-tests.  ``friedman``: the
        same subject x network table ranked within subject
        (scipy.stats.friedmanchisquare), with Wilcoxon signed-rank post-hoc
        tests.  Subjects with a NaN network value are dropped from the last two.

    Returns
    -------
    dict
        ``test``, ``unit`` (nodes or subjects), ``statistic_name`` (F or chi2),
        ``statistic``, ``df_between``, ``df_within`` (None for Friedman),
        ``p``, ``n_units``, an effect size (``eta_squared``,
        ``partial_eta_squared`` or ``kendall_w``), ``ranking`` (network, mean,
        sd, n over the units) and ``posthoc`` (pairs with Holm-adjusted p).
    """
    from scipy import stats

    if test not in ANOVA_TESTS:
        raise ValueError(f"test must be one of {ANOVA_TESTS}, not {test!r}")
    z = np.asarray(z_values, dtype=float)
    if z.ndim == 2:
        z = z[:, None, :]
    labels = np.asarray([str(v) for v in node_networks])
    names = list(dict.fromkeys(labels.tolist()))
    if len(names) < 2:
        raise ValueError("the nodes belong to fewer than 2 networks")
    if test == "nodes":
        with np.errstate(invalid="ignore"):
            block = z.reshape(-1, z.shape[2])
            finite = np.isfinite(block)
            node_mean = np.where(finite, block, 0).sum(0) / finite.sum(0)
        groups = [node_mean[(labels == n) & np.isfinite(node_mean)] for n in names]
        out = _independent_anova(groups, names, "nodes")
        out["test"] = "nodes"
        out["node_means"] = node_mean
        return out
    table = roi_to_network_connectivity(z, labels).to_numpy()
    table = table[np.all(np.isfinite(table), axis=1)]
    n, g = table.shape
    if n < 2:
        raise ValueError("fewer than 2 subjects have a value for every network")
    groups = [table[:, k] for k in range(g)]
    ranking = _ranking(names, groups)
    if test == "friedman":
        chi2, p = stats.friedmanchisquare(*groups)
        return {
            "test": "friedman", "unit": "subjects", "statistic_name": "chi2",
            "statistic": float(chi2), "df_between": g - 1, "df_within": None,
            "p": float(p), "n_units": n, "kendall_w": float(chi2 / (n * (g - 1))),
            "ranking": ranking, "posthoc": _posthoc(names, groups, ranking, "wilcoxon"),
        }
    grand = table.mean()
    ss_networks = n * ((table.mean(0) - grand) ** 2).sum()
    ss_subjects = g * ((table.mean(1) - grand) ** 2).sum()
    ss_error = ((table - grand) ** 2).sum() - ss_networks - ss_subjects
    df1, df2 = g - 1, (g - 1) * (n - 1)
    f = (ss_networks / df1) / (ss_error / df2)
    return {
        "test": "repeated_measures", "unit": "subjects", "statistic_name": "F",
        "F": float(f), "statistic": float(f), "df_between": df1, "df_within": df2,
        "p": float(stats.f.sf(f, df1, df2)), "n_units": n,
        "partial_eta_squared": float(ss_networks / (ss_networks + ss_error)),
        "ranking": ranking, "posthoc": _posthoc(names, groups, ranking, "paired"),
    }
