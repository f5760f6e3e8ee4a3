"""Degree of every voxel, in the same pass over the connectome as the seeds.

A voxel's degree is its mean absolute Fisher z to a fixed sample of ``S`` voxels
(a few hundred grey-matter voxels), averaged over subjects::

    degree[v] = mean over subjects of  mean over s != v of |arctanh(r[v, s])|

The sample voxels' own centred, unit-norm time courses play the part of seed time
courses in the engine's block product (:func:`connectivity._for_all_blocks`), so
each block of data read for a subject yields both; one compiled pass per block
takes the Fisher z of the ``S`` correlations (clipped to ±R_MAX as the seeds' are)
and adds their mean absolute value to one float64 sum per voxel: the memory is
``V`` values, not ``V × S``.  A sample voxel's correlation with itself is left out
of its own mean (it would add ``arctanh(R_MAX)/S`` to the sample voxels only).

The degree map depends on the connectome, the analysis mask and the sample, not on
the seeds.  Its cost (an ``S``-seed product per subject: with the default 300 samples
several times the cost of tens of seeds) is paid once per prepared subject: each
subject's share of the sums is saved in its prepared folder
(:meth:`DegreeSums.add` with ``keep``) and read back by later runs with the same mask
and sample, whatever their seeds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from bids_cnm.engine.connectivity import R_MAX, _atanh, _for_all_blocks, rows_of
from bids_cnm.engine.timeseries import PreparedSubject, is_prepared

#: version of what a saved subject share holds and how it is computed (part of its
#: file name: a new version is computed again beside the old files)
SHARE_FORMAT = 1

# The row sums are reductions: without leave to reassociate them LLVM keeps the
# additions in order and the loop runs one element at a time (~23 ns per element
# here).  ``reassoc`` lets it split the sum over SIMD lanes (~4 ns per element, about
# 5x faster); the result changes only by rounding (~1e-15 relative).  The own
# column is subtracted after the loop rather than skipped inside it, which would
# put a branch in the vectorized loop.
_REDUCTION_MATH = {"reassoc"}


@njit(nogil=True, error_model="numpy", cache=True, fastmath=_REDUCTION_MATH)
def _degree_block(r, factor, self_col, out, row0):
    """Add each row's mean |Fisher z| over the sample (own column left out) to ``out``."""
    rmax = R_MAX
    n, k = r.shape
    for i in range(n):
        f = factor[i]
        total = 0.0
        for j in range(k):
            x = np.float64(min(max(r[i, j] * f, -rmax), rmax))
            total += abs(_atanh(x))
        own = self_col[row0 + i]
        if own >= 0:
            x = np.float64(min(max(r[i, own] * f, -rmax), rmax))
            out[row0 + i] += (total - abs(_atanh(x))) / (k - 1)
        else:
            out[row0 + i] += total / k


@njit(nogil=True, error_model="numpy", cache=True, fastmath=_REDUCTION_MATH)
def _degree_runs_block(r, factor, self_col, out, row0):
    """As :func:`_degree_block` for run-wise r (R, n, K): |mean of the runs' z| per pair."""
    rmax = R_MAX
    n_runs, n, k = r.shape
    for i in range(n):
        own = self_col[row0 + i]
        total = 0.0
        own_z = 0.0
        for j in range(k):
            z = 0.0
            for q in range(n_runs):
                x = np.float64(min(max(r[q, i, j] * factor[i, q], -rmax), rmax))
                z += _atanh(x)
            total += abs(z / n_runs)
        if own >= 0:
            for q in range(n_runs):
                x = np.float64(min(max(r[q, i, own] * factor[i, q], -rmax), rmax))
                own_z += _atanh(x)
            out[row0 + i] += (total - abs(own_z / n_runs)) / (k - 1)
        else:
            out[row0 + i] += total / k


def sample_timeseries(subject: PreparedSubject, sample_rows: np.ndarray,
                      per_run: bool = False) -> np.ndarray:
    """Centred, unit-norm time courses of the sample voxels (rows of the subject's data).

    With ``per_run``, each run's segment is centred and scaled to unit norm on its own
    (for correlations computed run by run).

    Returns
    -------
    ndarray of float32, shape (S, T)
    """
    ts = np.asarray(subject.data[sample_rows], dtype=np.float64)
    ts *= subject.scale[sample_rows, None]
    for lo, hi in (subject.runs if per_run else [(0, ts.shape[1])]):
        seg = ts[:, lo:hi]
        seg -= seg.mean(axis=1, keepdims=True)
        seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    return ts.astype(np.float32)


def add_degree(
    total: np.ndarray, subject: PreparedSubject, rows: np.ndarray | None,
    sample_rows: np.ndarray, self_col: np.ndarray, runs: str = "average",
) -> None:
    """Add one subject's mean |z| to the sample to ``total`` (one value per target row).

    Parameters
    ----------
    total : ndarray of float64, shape (V,)
        Sums over subjects, updated in place.
    subject : PreparedSubject
    rows : ndarray of int64, optional
        Rows of the subject's data that are the targets (``None``: all its rows).
    sample_rows : ndarray of int64, shape (S,)
        Rows of the subject's data that are the sample voxels (at least 2).
    self_col : ndarray of int64, shape (V,)
        For each target, its column among the sample (left out of its own mean), or -1.
    runs : {'average', 'concatenate'}
        See :meth:`DegreeSums.add`.
    """
    if len(sample_rows) < 2:
        raise ValueError("the degree sample needs at least 2 voxels with data")
    spans = subject.runs if runs == "average" and len(subject.runs) > 1 else None
    seed_ts = sample_timeseries(subject, sample_rows, per_run=spans is not None)

    def consume(r: np.ndarray, factor: np.ndarray, start: int) -> None:
        if spans is None:
            _degree_block(r, factor, self_col, total, start)
        else:
            _degree_runs_block(r, factor, self_col, total, start)

    _for_all_blocks(subject, seed_ts, rows, consume, spans)


@dataclass
class DegreeSums:
    """Sum over subjects of every target voxel's mean |z| to the sample.

    Attributes
    ----------
    voxels : ndarray of int64, shape (V,)
        Flat indices of the target voxels (the analysis mask), sorted.
    sample : ndarray of int64, shape (S,)
        Flat indices of the sample voxels, a subset of ``voxels`` (in a ``--no-cache``
        batch, drawn before the data were read, it may hold voxels without data in some
        subject: see :mod:`bids_cnm.engine.streaming`).
    n : int
        Subjects added.
    total : ndarray of float64, shape (V,)
    """

    voxels: np.ndarray
    sample: np.ndarray
    n: int
    total: np.ndarray

    @classmethod
    def zeros(cls, voxels: np.ndarray, sample: np.ndarray) -> DegreeSums:
        """Empty sums over ``voxels`` for the sample ``sample`` (flat indices)."""
        voxels = np.asarray(voxels, dtype=np.int64)
        sample = np.asarray(sample, dtype=np.int64)
        if len(sample) < 2:
            raise ValueError("the degree sample needs at least 2 voxels")
        if not np.isin(sample, voxels).all():
            raise ValueError("the degree sample must lie within the target voxels")
        return cls(voxels, sample, 0, np.zeros(len(voxels)))

    def add(self, subject: PreparedSubject, rows: np.ndarray | None = None,
            runs: str = "average", keep: bool = False) -> None:
        """Add one subject.

        Parameters
        ----------
        subject : PreparedSubject
        rows : ndarray of int64, optional
            Rows of the subject's data that are the target voxels (as from
            :func:`~bids_cnm.engine.connectivity.rows_of`); computed when omitted.
        runs : {'average', 'concatenate'}
            Several runs: |mean of the run-wise z| (the seeds' convention by default),
            or |z| of one correlation over the concatenated runs.
        keep : bool
            When ``subject`` is a prepared folder of the work directory: read its share
            from there when an earlier run saved it for these voxels, sample and
            ``runs`` (see :func:`share_name`), else compute it and save it there (a
            subject decoded into memory is computed, nothing saved).  The sums are
            the same bits either way: the share is computed alone and then added, as
            it is without ``keep``.
        """
        from bids_cnm.io.saved_arrays import cached_array

        saved = None
        if keep and is_prepared(subject.path):  # not an in-memory (streamed) subject
            saved = Path(subject.path) / share_name(self.voxels, self.sample, runs)
        share = cached_array(saved, (len(self.voxels),), np.float64,
                             lambda: self.share(subject, rows, runs))
        self.total += share
        self.n += 1

    def share(self, subject: PreparedSubject, rows: np.ndarray | None = None,
              runs: str = "average") -> np.ndarray:
        """One subject's addition to :attr:`total` (its mean |z| to the sample per voxel).

        Parameters
        ----------
        subject, rows, runs
            See :meth:`add`.

        Returns
        -------
        ndarray of float64, shape (V,)
        """
        if rows is None:
            rows = rows_of(subject.voxels, self.voxels)
        target = np.arange(len(self.voxels)) if rows is None else rows
        positions = np.searchsorted(self.voxels, self.sample)  # sample within the targets
        self_col = np.full(len(self.voxels), -1, dtype=np.int64)
        self_col[positions] = np.arange(len(self.sample))
        share = np.zeros(len(self.voxels))
        add_degree(share, subject, rows, target[positions], self_col, runs)
        return share

    def restrict(self, voxels: np.ndarray) -> DegreeSums:
        """The sums over ``voxels`` only (a subset of :attr:`voxels`; itself when equal)."""
        rows = rows_of(self.voxels, np.asarray(voxels, dtype=np.int64))
        if rows is None:
            return self
        return DegreeSums(self.voxels[rows], self.sample, self.n, self.total[rows])

    def merge(self, other: DegreeSums) -> DegreeSums:
        """Add the sums of another batch of subjects (same voxels and sample)."""
        if not (np.array_equal(self.voxels, other.voxels)
                and np.array_equal(self.sample, other.sample)):
            raise ValueError("degree sums over different voxels or samples cannot be merged")
        self.n += other.n
        self.total += other.total
        return self

    def mean(self) -> np.ndarray:
        """The degree map over ``voxels`` (mean over subjects), float64."""
        if self.n < 1:
            raise ValueError("no subject added to the degree sums")
        return self.total / self.n

    def save(self, path: str | Path) -> Path:
        """Write to ``.npz``."""
        path = Path(path)
        np.savez(path, voxels=self.voxels, sample=self.sample, n=self.n, total=self.total)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DegreeSums:
        """Read sums written by :meth:`save`."""
        with np.load(path) as f:
            return cls(f["voxels"], f["sample"], int(f["n"]), f["total"])


def share_name(voxels: np.ndarray, sample: np.ndarray, runs: str) -> str:
    """File name of a subject's saved share: a digest of what it depends on besides the data.

    The targets, the sample, the run convention, the clipping of r and
    :data:`SHARE_FORMAT`.  The subject's data are those of the prepared folder it is
    saved in (a rebuilt folder starts empty).
    """
    digest = hashlib.sha256(json.dumps([SHARE_FORMAT, float(R_MAX), runs]).encode())
    for array in (voxels, sample):
        digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
        digest.update(b"|")
    return f"degree-{digest.hexdigest()[:16]}.npy"
