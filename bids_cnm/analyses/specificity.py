"""Specificity: are the study networks different from control networks?

Control networks come from other coordinate sets (e.g. other diseases) and from
randomly relocated coordinates: every study of a primary set, its coordinates
moved to random grey-matter positions, ``k`` times
(:mod:`bids_cnm.analyses.relocation`).  The relocated studies are extra seeds of
the same pass over the connectome (set ``random``).

Voxel-wise, the primary study networks are compared with each control group by
a two-sample permutation test (labels shuffled), with TFCE and family-wise error
from the maximum statistic (:mod:`bids_cnm.stats.permutation`).  Unthresholded
t-maps are compared by default; binarized (signed) maps are an option, with the
Liebermeister test as the binarized alternative.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from bids_cnm.analyses.relocation import relocate_coordinates
from bids_cnm.config import RANDOM_SET
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.stats.overlap import binarize
from bids_cnm.stats.permutation import (
    PermutationResult,
    fdr_bh,
    liebermeister_test,
    two_sample_permutation_test,
)

LOGGER = logging.getLogger("bids_cnm")

# relocate_coordinates and RANDOM_SET are re-exported: the command line imports them here
__all__ = ["RANDOM_SET", "SpecificityResult", "compare_networks", "relocate_coordinates"]


@dataclass(frozen=True)
class SpecificityResult:
    """One primary-vs-control comparison."""

    control: str
    n_primary: int
    n_control: int
    maps: dict[str, np.ndarray]  # name -> (V,) array
    method: str
    n_permutations: int


def _neglog10(p: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(p, np.finfo(float).tiny, 1.0))


def compare_networks(
    results: GroupResults,
    primary_set: str,
    control_set: str,
    n_permutations: int = 5000,
    tfce: bool = True,
    maps: str = "t",
    threshold: float = 5.1,
    random_state: int = 0,
) -> SpecificityResult:
    """Voxel-wise test of the primary study networks against one control group.

    Parameters
    ----------
    results : GroupResults
    primary_set, control_set : str
        Seed sets (main variant) compared; ``control_set`` may be ``random``.
    n_permutations : int
    tfce : bool
        TFCE-enhance the t statistic (ignored for the Liebermeister test).
    maps : {'t', 'binarized', 'liebermeister'}
        Compare unthresholded t-maps, signed binarized maps (|t| > threshold)
        by permutation, or binarized maps by the Liebermeister test.
    threshold : float
        |t| threshold for binarized maps.
    random_state : int

    Returns
    -------
    SpecificityResult
        ``maps`` holds ``t`` (two-sample t, primary > control positive),
        ``tfce`` (when used), ``logp`` (−log10 uncorrected p), ``logpFWE``,
        ``logpFDR`` and ``significant`` (1 where FWE p < 0.05).
    """
    a = results.columns(primary_set, "main")
    b = results.columns(control_set, "main")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"specificity needs at least 2 networks per group: {len(a)} in '{primary_set}', "
            f"{len(b)} in '{control_set}'"
        )
    group_a = results.t[:, a].T.astype(np.float64)
    group_b = results.t[:, b].T.astype(np.float64)
    # a one-voxel seed correlates perfectly with itself: its t is a stand-in for
    # infinity (±float32 max) that would dominate any test; such voxels are left out
    # (statistic 0, p = 1) rather than compared
    undefined = np.zeros(group_a.shape[1], dtype=bool)
    for group in (group_a, group_b):
        undefined |= (~np.isfinite(group) | (np.abs(group) >= np.finfo(np.float32).max)).any(0)
    group_a[:, undefined] = 0.0
    group_b[:, undefined] = 0.0
    mask = results.mask
    start = time.perf_counter()
    if maps == "liebermeister":
        pos_a, pos_b = binarize(group_a, threshold) > 0, binarize(group_b, threshold) > 0
        p, stat = liebermeister_test(pos_a.astype(np.int8), pos_b.astype(np.int8))
        p_fdr = fdr_bh(p)
        out = {
            "stat": stat,
            "logp": _neglog10(p),
            "logpFDR": _neglog10(p_fdr),
            "significant": (p_fdr < 0.05).astype(np.float32),
        }
        return SpecificityResult(control_set, len(a), len(b), out, "liebermeister", 0)

    if maps == "binarized":
        group_a = binarize(group_a, threshold).astype(np.float64)
        group_b = binarize(group_b, threshold).astype(np.float64)
    elif maps != "t":
        raise ValueError(f"maps must be 't', 'binarized' or 'liebermeister', not {maps!r}")

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        LOGGER.info(
            "specificity %s vs %s: %d/%d permutations, about %.0f s left",
            primary_set, control_set, done, total, elapsed / max(done, 1) * (total - done),
        )

    result: PermutationResult = two_sample_permutation_test(
        group_a, group_b, mask, n_permutations=n_permutations, tfce=tfce,
        two_sided=True, random_state=random_state, progress=progress,
    )
    out = {
        "t": result.t,
        "logp": _neglog10(result.p_uncorrected),
        "logpFWE": _neglog10(result.p_fwe),
        "logpFDR": _neglog10(result.p_fdr),
        "significant": (result.p_fwe < 0.05).astype(np.float32) * np.sign(result.t),
    }
    if result.tfce is not None:
        out["tfce"] = result.tfce
    return SpecificityResult(
        control_set, len(a), len(b), out, "tfce" if tfce else "t", result.n_permutations
    )
