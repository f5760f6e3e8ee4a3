"""The connectivity engine: every seed against every voxel in one matrix product.

For one subject with prepared data ``X`` (voxels × volumes, each row
standardized) and ``K`` seeds, the seed time courses are the means of ``X`` over
each seed's voxels (a sparse product), centred and scaled to unit norm (``S``,
``K × T``).  The centred Pearson correlation of every voxel with every seed is
then one dense product::

    r[v, k] = X[v] · S[k] / ||X[v] - mean(X[v])||

(``S[k]`` sums to zero, so the voxel's own mean drops out).  The product runs on
blocks of voxels so the per-element work after it (scaling, Fisher z, running
sums) stays in cache.  Across subjects, :class:`RunningStats` keeps sums of r,
z and z² in float64, so memory does not grow with the number of subjects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_cnm.seeds import Seeds
from bids_cnm.timeseries import PreparedSubject

LOGGER = logging.getLogger("bids_cnm.connectivity")

#: r is clipped to ±R_MAX before Fisher's transform so that a seed voxel that
#: correlates perfectly with its own seed still has a finite z (|z| <= 7.25).
R_MAX = np.float32(1.0 - 1e-6)

#: elements (voxels × seeds) per block: ~1 MB of float32, cache-sized
_BLOCK_ELEMENTS = 1 << 18


def fisher_z(r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Fisher's z = arctanh(r) of correlations already clipped to ±R_MAX.

    Computed as ``0.5 * log((1 + r) / (1 - r))``, several times faster than
    ``np.arctanh`` and equal to it within float32 rounding.

    Parameters
    ----------
    r : ndarray of float32
        Correlations in ``[-R_MAX, R_MAX]``.
    out : ndarray, optional
        Output array (may not be ``r``).

    Returns
    -------
    ndarray
    """
    out = np.subtract(1.0, r, out=out, dtype=r.dtype)
    np.divide(1.0 + r, out, out=out)
    np.log(out, out=out)
    out *= 0.5
    return out


def seed_timeseries(subject: PreparedSubject, seeds: Seeds) -> np.ndarray:
    """Centred, unit-norm mean time course of every seed.

    Parameters
    ----------
    subject : PreparedSubject
    seeds : Seeds

    Returns
    -------
    ndarray of float32, shape (K, T)
    """
    weights = seeds.weights(subject.voxels, len(subject.voxels))
    needed = np.unique(weights.indices)  # CSR: column indices = data rows used
    rows = subject.data[needed].astype(np.float32) * subject.scale[needed, None]
    ts = np.asarray(weights[:, needed] @ rows, dtype=np.float64)
    ts -= ts.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(ts, axis=1, keepdims=True)
    if np.any(norm == 0):
        bad = [seeds.ids[k] for k in np.flatnonzero(norm[:, 0] == 0)]
        raise ValueError(
            f"seed(s) {', '.join(bad)} have a constant time course in {subject.path}"
        )
    return (ts / norm).astype(np.float32)


def iter_correlation_blocks(
    subject: PreparedSubject,
    seed_ts: np.ndarray,
    rows: np.ndarray | None = None,
    block_elements: int = _BLOCK_ELEMENTS,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield blocks of the correlation matrix ``r`` (voxels × seeds).

    Parameters
    ----------
    subject : PreparedSubject
    seed_ts : ndarray, shape (K, T)
        From :func:`seed_timeseries`.
    rows : ndarray of int64, optional
        Rows of the subject's data to correlate (e.g. the analysis mask's
        voxels); all rows when omitted.
    block_elements : int
        Target size of one block in elements.

    Yields
    ------
    block : slice
        Positions of the block within ``rows``.
    r : ndarray of float32, shape (n, K)
        Correlations clipped to ±R_MAX (reused buffer: copy to keep).
    """
    n_rows = len(subject.voxels) if rows is None else len(rows)
    k = seed_ts.shape[0]
    step = max(64, block_elements // max(k, 1))
    seed_ts_t = np.ascontiguousarray(seed_ts.T)
    factor = subject.scale / subject.norm
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        index = slice(start, stop) if rows is None else rows[start:stop]
        block = np.asarray(subject.data[index], dtype=np.float32)
        r = block @ seed_ts_t
        r *= factor[index, None]
        np.clip(r, -R_MAX, R_MAX, out=r)
        yield slice(start, stop), r


@dataclass
class RunningStats:
    """Streaming sums over subjects of r, z and z² for every voxel and seed.

    Attributes
    ----------
    n : int
        Subjects added.
    sum_r, sum_z, sum_z2 : ndarray of float64, shape (V, K)
    """

    n: int
    sum_r: np.ndarray
    sum_z: np.ndarray
    sum_z2: np.ndarray

    @classmethod
    def zeros(cls, n_voxels: int, n_seeds: int) -> RunningStats:
        """Empty sums."""
        shape = (n_voxels, n_seeds)
        return cls(0, np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def add_block(self, block: slice, r: np.ndarray, z: np.ndarray) -> None:
        """Add one subject's block of r and z."""
        self.sum_r[block] += r
        self.sum_z[block] += z
        z *= z  # z is scratch here: square in place
        self.sum_z2[block] += z

    def merge(self, other: RunningStats) -> RunningStats:
        """Add another set of sums (from another batch of subjects)."""
        self.n += other.n
        self.sum_r += other.sum_r
        self.sum_z += other.sum_z
        self.sum_z2 += other.sum_z2
        return self

    def save(self, path: str | Path) -> Path:
        """Write the sums to an ``.npz`` file."""
        path = Path(path)
        np.savez(path, n=self.n, sum_r=self.sum_r, sum_z=self.sum_z, sum_z2=self.sum_z2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunningStats:
        """Read sums written by :meth:`save`."""
        with np.load(path) as f:
            return cls(int(f["n"]), f["sum_r"], f["sum_z"], f["sum_z2"])

    def finalize(self) -> dict[str, np.ndarray]:
        """Mean r, mean z and the one-sample t of z (against 0) per voxel and seed.

        Returns
        -------
        dict
            ``r``, ``z``, ``t`` arrays of float64, shape (V, K).  Where z does not
            vary across subjects (e.g. a one-voxel seed with itself), t is
            ``±inf`` (``0`` when the mean is 0 too).
        """
        if self.n < 2:
            raise ValueError("a one-sample t-test needs at least 2 subjects")
        n = self.n
        mean_z = self.sum_z / n
        var = (self.sum_z2 - n * mean_z**2) / (n - 1)
        np.maximum(var, 0.0, out=var)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = mean_z / np.sqrt(var / n)
        t[(var == 0) & (mean_z == 0)] = 0.0
        return {"r": self.sum_r / n, "z": mean_z, "t": t}


def accumulate_subject(
    stats: RunningStats,
    subject: PreparedSubject,
    seeds: Seeds,
    rows: np.ndarray | None = None,
) -> None:
    """Add one subject's r and z maps of all seeds to running sums.

    Parameters
    ----------
    stats : RunningStats
        Sums over the target voxels (``len(rows)`` or all of the subject's).
    subject : PreparedSubject
    seeds : Seeds
    rows : ndarray of int64, optional
        Rows of the subject's data that are the target voxels, in order.
    """
    seed_ts = seed_timeseries(subject, seeds)
    z = None
    for block, r in iter_correlation_blocks(subject, seed_ts, rows):
        if z is None or z.shape != r.shape:
            z = np.empty_like(r)
        fisher_z(r, out=z)
        stats.add_block(block, r, z)
    stats.n += 1


def subject_zmaps(
    subject: PreparedSubject, seeds: Seeds, rows: np.ndarray | None = None
) -> np.ndarray:
    """Fisher-z maps of all seeds for one subject.

    Returns
    -------
    ndarray of float32, shape (V, K)
        Over ``rows`` (or all the subject's voxels).
    """
    seed_ts = seed_timeseries(subject, seeds)
    n_rows = len(subject.voxels) if rows is None else len(rows)
    out = np.empty((n_rows, len(seeds)), dtype=np.float32)
    for block, r in iter_correlation_blocks(subject, seed_ts, rows):
        fisher_z(r, out=out[block])
    return out


def rows_of(subject_voxels: np.ndarray, target_voxels: np.ndarray) -> np.ndarray | None:
    """Positions of ``target_voxels`` within a subject's sorted voxel list.

    Returns ``None`` when both lists are equal (no indexing needed).

    Raises
    ------
    ValueError
        When a target voxel is missing from the subject's data.
    """
    if len(subject_voxels) == len(target_voxels) and np.array_equal(
        subject_voxels, target_voxels
    ):
        return None
    pos = np.searchsorted(subject_voxels, target_voxels)
    pos = np.minimum(pos, len(subject_voxels) - 1)
    if not np.array_equal(subject_voxels[pos], target_voxels):
        raise ValueError("target voxels are not a subset of the subject's voxels")
    return pos.astype(np.int64)
