"""One pass over subjects read from their files (``--no-cache``): each is decoded once.

The cached group level first prepares every subject, intersects their valid voxels
into the analysis mask and then correlates each subject over that mask.  Without a
prepared copy that order would decode every subject twice (once for its valid voxels,
once for its time series).  Here each subject is decoded once and its correlations
are added over the voxels still *valid in every subject of the batch so far*:

* the targets are the first subject's valid voxels (within the cohort's brain-mask
  intersection, which bounds the analysis mask anyway);
* a later subject without data at a target marks it dead; its rows are still
  computed (from a stand-in row, so the arithmetic stays finite) and dropped at the
  end, since the analysis mask is the intersection of every subject's valid voxels
  and can never hold them;
* every target alive at the end received every subject's update in the same order
  and with the same values as the cached path (the seed time course is each
  subject's own, which does not depend on the mask), so the reduce step, given the
  analysis mask, selects those rows and merges the batches exactly as before.

The degree sample must be fixed before the pass, so it is drawn from the brain-mask
intersection (or, without masks, the first run's non-zero voxels) rather than the
analysis mask; a sample voxel without data in a subject is left out of that
subject's mean (see ``docs/methods.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bids_cnm.engine import connectivity
from bids_cnm.engine.bold_reader import Scratch
from bids_cnm.engine.degree import DegreeSums, add_degree
from bids_cnm.engine.nodes import node_zvalues
from bids_cnm.engine.seeds import Seeds
from bids_cnm.engine.timeseries import PreparedSubject, stream_subject

LOGGER = logging.getLogger("bids_cnm")


def target_rows(
    subject_voxels: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Rows of a subject's data holding ``targets``, and which targets it has.

    Parameters
    ----------
    subject_voxels : ndarray of int64, shape (V_s,)
        The subject's valid voxels (sorted flat indices).
    targets : ndarray of int64, shape (V,)
        Sorted flat indices.

    Returns
    -------
    rows : ndarray of int64, shape (V,), or None
        ``None`` when both lists are equal; otherwise the row of every target, and
        row 0 (a stand-in whose result is discarded) for a target the subject lacks.
    present : ndarray of bool, shape (V,)
    """
    if len(subject_voxels) == len(targets) and np.array_equal(subject_voxels, targets):
        return None, np.ones(len(targets), dtype=bool)
    pos = np.minimum(np.searchsorted(subject_voxels, targets), len(subject_voxels) - 1)
    present = subject_voxels[pos] == targets
    return np.where(present, pos, 0).astype(np.int64), present


@dataclass
class BatchSums:
    """What one pass over a batch of subjects adds up.

    Attributes
    ----------
    voxels : ndarray of int64, shape (V,)
        Voxels valid in every subject of the batch (within the support), sorted.
    stats : RunningStats
        Moments over ``voxels``.
    node_values : ndarray of float32, shape (N_subjects, K, N_nodes), optional
    degree : DegreeSums, optional
        Over ``voxels``.
    """

    voxels: np.ndarray
    stats: connectivity.RunningStats
    node_values: np.ndarray | None = None
    degree: DegreeSums | None = None


def _degree_columns(
    subject: PreparedSubject, targets: np.ndarray, sample: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the sample voxels the subject has, and each target's own column (or -1)."""
    pos = np.minimum(np.searchsorted(subject.voxels, sample), len(subject.voxels) - 1)
    has = subject.voxels[pos] == sample
    used = sample[has]
    self_col = np.full(len(targets), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(targets, used), max(len(targets) - 1, 0))
    hit = targets[at] == used if len(targets) else np.zeros(len(used), dtype=bool)
    self_col[at[hit]] = np.flatnonzero(hit)
    return pos[has].astype(np.int64), self_col


def stream_batch(
    subjects: Sequence[tuple[Sequence[str], Sequence[str]]],
    seeds: Seeds,
    support: np.ndarray | None = None,
    signal: str = "mean",
    runs: str = "average",
    dtype: str = "float32",
    nodes: list[np.ndarray] | None = None,
    degree_sample: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSums:
    """Decode each subject once and add its connectivity to the batch's sums.

    Parameters
    ----------
    subjects : sequence of (bold paths, mask paths)
    seeds : Seeds
    support : ndarray of bool, optional
        Flat (C-order) mask bounding the targets (the cohort's brain-mask intersection).
    signal, runs : str
        See :func:`bids_cnm.engine.connectivity.accumulate_subject`.
    dtype : {'float32', 'int16'}
        The values a prepared copy of this type would hold.
    nodes : list of ndarray, optional
        ROI-to-ROI nodes (flat voxel lists): each subject's node values.
    degree_sample : ndarray of int64, optional
        Flat indices of the degree sample: the degree sums too.
    progress : callable, optional
        Called as ``progress(i, n)`` after subject ``i`` of ``n``.

    Returns
    -------
    BatchSums
    """
    stats = targets = alive = total = None
    values = []
    n_degree = 0
    short: list[str] = []  # subjects without data at some sample voxels
    scratch = Scratch()  # one subject at a time: its data are done with before the next
    for i, (bold, masks) in enumerate(subjects, 1):
        subject = stream_subject(list(bold), list(masks), dtype, scratch)
        if targets is None:
            targets = subject.voxels
            if support is not None:
                targets = targets[np.asarray(support, dtype=bool).ravel()[targets]]
            alive = np.ones(len(targets), dtype=bool)
            stats = connectivity.RunningStats.zeros(len(targets), len(seeds))
            total = np.zeros(len(targets)) if degree_sample is not None else None
        rows, present = target_rows(subject.voxels, targets)
        alive &= present
        connectivity.accumulate_subject(stats, subject, seeds, rows, signal, runs)
        if nodes is not None:
            values.append(node_zvalues(subject, seeds, nodes, signal, runs))
        if total is not None:
            sample_rows, self_col = _degree_columns(subject, targets, degree_sample)
            add_degree(total, subject, rows, sample_rows, self_col, runs)
            n_degree += 1
            if len(sample_rows) < len(degree_sample):
                short.append(f"{bold[0]} ({len(degree_sample) - len(sample_rows)})")
        if progress is not None:
            progress(i, len(subjects))
    if targets is None:
        raise ValueError("a batch without subjects")
    if short:
        LOGGER.warning("degree check: %d subject(s) have no data at some of the %d sample "
                       "voxels, whose degree uses the others: %s", len(short),
                       len(degree_sample), ", ".join(short))
    keep = np.flatnonzero(alive)
    degree = None
    if total is not None:
        degree = DegreeSums(targets[keep], np.asarray(degree_sample, dtype=np.int64), n_degree,
                            total[keep])
    return BatchSums(
        voxels=targets[keep], stats=stats.select(keep if len(keep) < len(targets) else None),
        node_values=np.stack(values) if nodes is not None else None, degree=degree,
    )
