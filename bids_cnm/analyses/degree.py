"""Is a network more than the connectome's hubs?  The degree check.

Network maps made by seeding a normative connectome can largely reflect the
connectome's degree (hub) structure, whatever the seeds (van den Heuvel et al.
2026, *Nat Neurosci*, doi:10.1038/s41593-025-02196-7).  The degree map
(:mod:`bids_cnm.engine.degree`: every voxel's mean |Fisher z| to a fixed random
sample of grey-matter voxels, averaged over subjects) is computed in the same pass
as the seeds, and every overlap network is compared with it:

* ``r_degree``: Pearson correlation, over the analysis mask, of the signed overlap
  map with the degree map;
* the overlap after regressing degree out: the residual of the least-squares fit
  ``overlap ≈ a + b·degree`` (written as a map), and ``r_residual``, its correlation
  with the overlap map (the part of the network degree does not explain);
* the null: the same numbers for the overlap networks of the randomly relocated
  studies (one network per relocation copy), and ``p_degree``, the fraction of
  relocated networks whose ``|r_degree|`` is at least the network's.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_cnm.analyses.grey_matter import grey_matter_mask
from bids_cnm.config import RANDOM_SET
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.stats.overlap import overlap_maps

LOGGER = logging.getLogger("bids_cnm")

#: DOI of the critique the check answers
REFERENCE_DOI = "10.1038/s41593-025-02196-7"

#: stream of the sample draw: ``default_rng([random_seed, SAMPLE_STREAM])`` (apart
#: from the relocations' and permutations' streams)
SAMPLE_STREAM = 0xDE6


def degree_sample(
    voxels: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
    n_samples: int = 300,
    random_state: int = 0,
    mask: np.ndarray | str | os.PathLike | None = None,
    space: str | None = None,
) -> np.ndarray:
    """The fixed random sample of grey-matter voxels the degree is measured against.

    Parameters
    ----------
    voxels : ndarray of int64
        Flat indices of the analysis mask.
    shape, affine
        The grid.
    n_samples : int
        Voxels drawn (all grey-matter voxels when there are fewer).
    random_state : int
        Seed; the draw uses ``numpy.random.default_rng([random_state, SAMPLE_STREAM])``.
    mask : ndarray of bool, path-like, optional
        Grey matter: a boolean array on the grid, a mask file, or ``None`` for that of
        ``space`` (see :func:`bids_cnm.analyses.grey_matter.grey_matter`).
    space : str, optional
        The connectome's template space.

    Returns
    -------
    ndarray of int64
        Sorted flat indices, drawn uniformly without replacement from the analysis
        mask's grey-matter voxels (from the whole analysis mask, with a warning,
        when the grid has no grey matter, e.g. a grid outside MNI space).
    """
    voxels = np.asarray(voxels, dtype=np.int64)
    if not isinstance(mask, np.ndarray):
        mask = grey_matter_mask(shape, affine, mask, space=space)
    grey = np.asarray(mask, dtype=bool).ravel()[voxels]
    pool = voxels[grey]
    if len(pool) < 2:
        LOGGER.warning("degree check: no grey matter within the analysis mask; the degree "
                       "sample is drawn from the whole analysis mask")
        pool = voxels
    rng = np.random.default_rng([random_state, SAMPLE_STREAM])
    n = min(n_samples, len(pool))
    if n < n_samples:
        LOGGER.warning("degree check: only %d candidate voxels; all are used", n)
    return np.sort(rng.choice(pool, size=n, replace=False))


def regress_out(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residual of the least-squares fit ``y ≈ a + b·x``.

    Parameters
    ----------
    y, x : ndarray, shape (V,)

    Returns
    -------
    ndarray of float64, shape (V,)
    """
    y = np.asarray(y, dtype=np.float64)
    xc = np.asarray(x, dtype=np.float64) - np.mean(x)
    yc = y - y.mean()
    denominator = xc @ xc
    slope = (xc @ yc) / denominator if denominator > 0 else 0.0
    return yc - slope * xc


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either map is constant (e.g. an empty network)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def relocated_networks(results: GroupResults) -> dict[int, np.ndarray]:
    """Seed columns of each relocation copy's studies (``relocation`` -> columns)."""
    columns = results.columns(RANDOM_SET, "main")
    table = results.seeds.table.iloc[columns]
    if "relocation" in table.columns:
        copies = pd.to_numeric(table["relocation"], errors="coerce").to_numpy()
    else:  # seeds saved before the column existed: the study name ends in rand<i>
        copies = np.array([float(m.group(1)) if (m := re.search(r"rand(\d+)$", str(s)))
                           else np.nan for s in table["study"]])
    return {int(c): columns[copies == c] for c in np.unique(copies[np.isfinite(copies)])}


@dataclass(frozen=True)
class DegreeCheck:
    """The degree check of every overlap network.

    Attributes
    ----------
    table : DataFrame
        One row per network (see :func:`degree_check`).
    residuals : dict
        Set name -> residual overlap map (V,) of the set's main network.
    """

    table: pd.DataFrame
    residuals: dict[str, np.ndarray]


def degree_check(
    results: GroupResults, degree: np.ndarray, threshold: float, sets: list[str]
) -> DegreeCheck:
    """Compare every set's main overlap network, and the relocated ones, with degree.

    Parameters
    ----------
    results : GroupResults
    degree : ndarray, shape (V,)
        The degree map over ``results.voxels``.
    threshold : float
        The main |t| threshold of the overlap networks.
    sets : list of str
        Coordinate sets whose main network is checked (the first is the reference
        of ``r_first``).

    Returns
    -------
    DegreeCheck
        ``table`` columns: ``set``, ``network`` (``main``, or ``relocation-<i>`` for
        set ``random``), ``n_studies``, ``r_degree``, ``r_residual``, ``r_first``
        and ``r_first_partial`` (correlation with the first set's network before
        and after regressing degree out of both), ``p_degree`` and ``n_null`` (the
        relocated networks it is compared with; NaN and 0 for relocated rows).
    """
    degree = np.asarray(degree, dtype=np.float64)
    networks: list[tuple[str, str, np.ndarray]] = [
        (s, "main", results.columns(s, "main")) for s in sets
    ]
    networks += [(RANDOM_SET, f"relocation-{i}", cols)
                 for i, cols in relocated_networks(results).items()]
    maps = {(s, n): overlap_maps(results.t[:, cols], threshold)["overlap"]
            for s, n, cols in networks}
    residuals = {key: regress_out(m, degree) for key, m in maps.items()}
    first = (sets[0], "main") if sets else None
    rows = []
    for s, name, cols in networks:
        overlap = maps[(s, name)]
        rows.append({
            "set": s, "network": name, "n_studies": len(cols),
            "r_degree": _pearson(overlap, degree),
            "r_residual": _pearson(residuals[(s, name)], overlap),
            "r_first": _pearson(overlap, maps[first]) if first else np.nan,
            "r_first_partial": (_pearson(residuals[(s, name)], residuals[first])
                                if first else np.nan),
        })
    table = pd.DataFrame(rows)
    null = table.loc[table["set"] == RANDOM_SET, "r_degree"].abs().to_numpy()
    null = null[np.isfinite(null)]
    observed = table["r_degree"].abs().to_numpy()
    is_null = (table["set"] == RANDOM_SET).to_numpy()
    with np.errstate(invalid="ignore"):
        table["p_degree"] = np.where(
            is_null | (len(null) == 0) | ~np.isfinite(observed), np.nan,
            (null[None, :] >= observed[:, None]).mean(axis=1) if len(null) else np.nan,
        )
    table["n_null"] = np.where(is_null, 0, len(null))
    return DegreeCheck(table, {s: residuals[(s, n)] for s, n, _ in networks if n == "main"})
