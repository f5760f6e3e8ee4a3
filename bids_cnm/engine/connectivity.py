"""The connectivity engine: every seed against every voxel in one matrix product.

For one subject with prepared data ``X`` (voxels × volumes, each run of each row
standardized) and ``K`` seeds, the seed time courses are weighted sums of ``X`` over
each seed's voxels (a sparse product; weights ``sd/n`` give the mean BOLD signal,
``1/n`` the mean standardized series), centred and scaled to unit norm (``S``,
``K × T``).  The centred Pearson correlation of every voxel with every seed is
then one dense product::

    r[v, k] = X[v] · S[k] / ||X[v] - mean(X[v])||

(``S[k]`` sums to zero, so the voxel's own mean drops out).  With several runs
averaged, each run is its own product on its columns and its own norm, and z is
averaged over the runs.  The product runs on blocks of voxels small enough for a
core's cache; right after each block's product one compiled pass (numba) scales
and clips ``r``, takes Fisher's z in float64 and adds r and z to the float64
running moments of :class:`RunningStats` (Welford), so memory does not grow with
the number of subjects and the big arrays are streamed through exactly once per
subject.

Threads: the blocks are shared out to as many workers as the BLAS library has
threads; each worker runs its own single-threaded products and passes (both
release the GIL).  For the skinny products of a few seeds this is much faster
than one multi-threaded product per block, and nothing waits for a hand-over
between the BLAS and the element-wise stage.  Each worker reads its block of a
memory-mapped subject with ``pread`` into a cache-resident buffer (no page
faults), gathering the target rows from there when ``rows`` is given.

Fisher's z is computed in float64 from the float32 r (an IEEE-exact, vectorized
arctanh, ~1e-14 relative), so it is more accurate than :func:`fisher_z`, which
is kept for callers that want float32.

``benchmarks/bench_connectivity.py`` measures all of this against the machine's
own GEMM, memory and element-wise rates.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from bids_cnm.engine.seeds import Seeds
from bids_cnm.engine.timeseries import PreparedSubject
from bids_cnm.errors import InputDataError

LOGGER = logging.getLogger("bids_cnm.engine.connectivity")

#: r is clipped to ±R_MAX before Fisher's transform so that a seed voxel that
#: correlates perfectly with its own seed still has a finite z (|z| <= 7.25).
R_MAX = np.float32(1.0 - 1e-6)

#: elements (voxels × seeds) per block of :func:`iter_correlation_blocks`
_BLOCK_ELEMENTS = 1 << 18

#: bytes of one worker's block in the threaded engine (its rows of data as
#: float32 plus its block of r): about a core's L2 cache (1 MB on Zen 4), so both
#: stay close between the product and the element-wise pass (288 to 592 rows at
#: 200 seeds measured within 2 %)
_WORKER_BLOCK_BYTES = 1 << 20

#: OpenBLAS multiplies without packing when M·N·K is at most this (its small-matrix path)
_SMALL_GEMM = 1_000_000

#: read the blocks of memory-mapped subjects with pread (see _FileRows)
_READ_FILES = True

#: seed time course: mean BOLD of the seed's voxels, or mean of their standardized series
SEED_SIGNALS = ("mean", "standardized")

#: several runs: Fisher z averaged over run-wise correlations, or one correlation
#: over the concatenated standardized runs
RUN_COMBINATIONS = ("average", "concatenate")


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


# --------------------------------------------------------------------------------------
# Compiled kernels.  ``error_model="numpy"`` lets LLVM vectorize divisions (no Python
# ZeroDivisionError check); fastmath stays off, so every operation is IEEE-exact.


@intrinsic
def _float_bits(typingctx, x):
    """Reinterpret a float64 as int64 (a bit cast, vectorizable)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, x):
    """Reinterpret an int64 as float64."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD  # float64 bits of sqrt(1/2)

#: coefficients, highest power first: arctanh(s) / s in s², to s**22; exp(f) to f**13
_ATANH_SERIES = tuple(1.0 / n for n in range(23, 0, -2))
_EXP_SERIES = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))


@njit(inline="always", error_model="numpy", cache=True)
def _horner(x, coefficients):
    """The polynomial of ``coefficients`` (highest power first) at ``x``."""
    p = 0.0
    for c in coefficients:
        p = p * x + c
    return p
_HALF_LN2 = 0.5 * math.log(2.0)


@njit(inline="always", error_model="numpy", cache=True)
def _atanh(r):
    """arctanh of a float64 in (-1, 1) to ~1e-13 relative error, in vectorizable code.

    With ``u = 1 + r`` and ``w = 1 - r`` (both exact for a float32 ``r``) written
    as ``m · 2**e`` with ``m`` in [sqrt(1/2), sqrt(2)), ``arctanh(r) = log(u / w) / 2
    = (e_u - e_w) log(2) / 2 + arctanh(s)`` with ``s = (m_u - m_w) / (m_u + m_w)``,
    ``|s| < 1/3`` (``m_u - m_w`` is exact), and ``arctanh(s)`` is its odd series
    summed to s**23.  One division, no library call.
    """
    ub = _float_bits(1.0 + r)
    wb = _float_bits(1.0 - r)
    ue = (ub - _SQRT_HALF_BITS) >> 52
    we = (wb - _SQRT_HALF_BITS) >> 52
    um = _bits_float(ub - (ue << 52))
    wm = _bits_float(wb - (we << 52))
    s = (um - wm) / (um + wm)
    return (ue - we) * _HALF_LN2 + s * _horner(s * s, _ATANH_SERIES)


@njit(inline="always", error_model="numpy", cache=True)
def _clipped(r, f):
    """``r * f`` (float32) clipped to ±R_MAX, as float64."""
    rmax = R_MAX
    return np.float64(min(max(r * f, -rmax), rmax))


@njit(inline="always", error_model="numpy", cache=True)
def _welford(x, z, sum_r, mean_z, m2_z, out, j, inv_n):
    """Add one subject's r and z to the sums and Welford's running mean and M2 of z.

    The first subject (``inv_n == 1``) sets the mean to z exactly and adds 0 to M2,
    so a z that never varies keeps M2 exactly 0 (no rounding noise).
    """
    sum_r[out, j] += x
    d = z - mean_z[out, j]
    m = mean_z[out, j] + d * inv_n
    mean_z[out, j] = m
    m2_z[out, j] += d * (z - m)


_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.0 / math.log(2.0)


@njit(inline="always", error_model="numpy", cache=True)
def _tanh(z):
    """tanh of a float64 with |z| <= 8 to ~1e-15 absolute error, in vectorizable code.

    ``tanh(z) = (e - 1) / (e + 1)`` with ``e = exp(2 z) = 2**k exp(f)``, ``|f| <= ln(2)/2``,
    and ``exp(f)`` its Taylor series summed to f**13 (libm's tanh is a call per element,
    about 20x slower than the rest of the pass).
    """
    y = 2.0 * z
    k = np.floor(y * _INV_LN2 + 0.5)
    f = (y - k * _LN2_HI) - k * _LN2_LO
    e = _horner(f, _EXP_SERIES) * _bits_float((np.int64(k) + 1023) << 52)
    return (e - 1.0) / (e + 1.0)


@njit(nogil=True, error_model="numpy", cache=True)
def _accumulate_block(r, factor, sum_r, mean_z, m2_z, row0, inv_n):
    """Scale and clip a block of r; add r, z to rows ``row0:`` of the running moments.

    ``inv_n`` is 1 / (number of subjects including this one).
    """
    n, k = r.shape
    for i in range(n):
        f = factor[i]
        out = row0 + i
        for j in range(k):
            x = _clipped(r[i, j], f)
            _welford(x, _atanh(x), sum_r, mean_z, m2_z, out, j, inv_n)


@njit(inline="always", error_model="numpy", cache=True)
def _run_mean_z_row(r, factor, i, z0, dz):
    """Mean Fisher z over the runs of row ``i`` of ``r`` (runs, n, k), into ``z0``.

    Summed as ``z_0 + mean(z_q - z_0)``, exact when every run gives the same z
    (a one-voxel seed with itself), whatever the number of runs.  One loop over
    the row per run, so that each vectorizes.
    """
    runs, _, k = r.shape
    f = factor[i, 0]
    for j in range(k):
        z0[j] = _atanh(_clipped(r[0, i, j], f))
        dz[j] = 0.0
    for q in range(1, runs):
        f = factor[i, q]
        for j in range(k):
            dz[j] += _atanh(_clipped(r[q, i, j], f)) - z0[j]
    inv_runs = 1.0 / runs
    for j in range(k):
        z0[j] += dz[j] * inv_runs


@njit(nogil=True, error_model="numpy", cache=True)
def _accumulate_runs_block(r, factor, sum_r, mean_z, m2_z, row0, inv_n):
    """:func:`_accumulate_block` for ``r`` of shape (runs, n, k): z averaged over runs.

    The subject's r is ``tanh`` of its run-averaged z (what a z-map read back gives).
    """
    _, n, k = r.shape
    z = np.empty(k)
    dz = np.empty(k)
    for i in range(n):
        _run_mean_z_row(r, factor, i, z, dz)
        out = row0 + i
        for j in range(k):
            _welford(_tanh(z[j]), z[j], sum_r, mean_z, m2_z, out, j, inv_n)


@njit(nogil=True, error_model="numpy", cache=True)
def _zmap_block(r, factor, z_out, row0):
    """Scale and clip a block of r; write its Fisher z to rows ``row0:`` of ``z_out``."""
    n, k = r.shape
    for i in range(n):
        f = factor[i]
        out = row0 + i
        for j in range(k):
            z_out[out, j] = _atanh(_clipped(r[i, j], f))


@njit(nogil=True, error_model="numpy", cache=True)
def _zmap_runs_block(r, factor, z_out, row0):
    """:func:`_zmap_block` for ``r`` of shape (runs, n, k): z averaged over runs."""
    buffers = np.empty((2, r.shape[2]))
    for i in range(r.shape[1]):
        _run_mean_z_row(r, factor, i, buffers[0], buffers[1])
        z_out[row0 + i] = buffers[0]


@njit(nogil=True, cache=True)
def _scale_clip(r, factor):
    """``r *= factor[:, None]`` and clip to ±R_MAX, in place (float32)."""
    rmax = R_MAX
    n, k = r.shape
    for i in range(n):
        f = factor[i]
        for j in range(k):
            r[i, j] = min(max(r[i, j] * f, -rmax), rmax)


@njit(nogil=True, cache=True)
def _copy_rows(data, start, stop, out):
    """``out[:n] = data[start:stop]`` as float32 (e.g. from int16)."""
    t = data.shape[1]
    for i in range(stop - start):
        for j in range(t):
            out[i, j] = data[start + i, j]


@njit(nogil=True, cache=True)
def _gather_rows(data, rows, start, stop, out, first):
    """``out[:n] = data[rows[start:stop] - first]`` as float32."""
    t = data.shape[1]
    for i in range(stop - start):
        src = rows[start + i] - first
        for j in range(t):
            out[i, j] = data[src, j]


# --------------------------------------------------------------------------------------
# BLAS threads


_BLAS = {"controller": None, "failed": False}
_BLAS_LOCK = threading.Lock()


def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries (None if unavailable)."""
    with _BLAS_LOCK:
        if _BLAS["controller"] is None and not _BLAS["failed"]:
            try:
                from threadpoolctl import ThreadpoolController

                _BLAS["controller"] = ThreadpoolController().select(user_api="blas")
            except Exception:  # noqa: BLE001  # pragma: no cover - threadpoolctl missing or broken
                _BLAS["failed"] = True
        return _BLAS["controller"]


def _n_workers() -> int:
    """Workers for the threaded engine: the BLAS library's current thread count.

    Follows whatever limits the caller set (``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``, threadpoolctl), capped by the CPUs this process may use.
    """
    controller = _blas_controller()
    if controller is None or not controller.lib_controllers:
        return 1
    threads = max(lib.num_threads for lib in controller.lib_controllers)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(threads, cpus))


_LIMIT = {"depth": 0, "limiter": None}


@contextmanager
def _single_threaded_blas():
    """Limit the BLAS library to one thread (process-wide) for the duration.

    Nested or concurrent uses share one limit; the last to leave restores the
    original thread counts.
    """
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with _BLAS_LOCK:
        if _LIMIT["depth"] == 0:
            _LIMIT["limiter"] = controller.limit(limits=1)
        _LIMIT["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _LIMIT["depth"] -= 1
            if _LIMIT["depth"] == 0:
                _LIMIT["limiter"].restore_original_limits()
                _LIMIT["limiter"] = None


# --------------------------------------------------------------------------------------
# Seeds


def seed_timeseries(
    subject: PreparedSubject, seeds: Seeds, signal: str = "mean", per_run: bool = False
) -> np.ndarray:
    """Centred, unit-norm time course of every seed.

    Parameters
    ----------
    subject : PreparedSubject
    seeds : Seeds
    signal : {'mean', 'standardized'}
        ``mean``: the mean BOLD signal of the seed's voxels as the connectome gives it
        (each run's mean removed), i.e. ``sum_v sd_v X_v / n`` over the seed's voxels
        with the voxels' temporal SD ``sd_v`` in that run; ``standardized``: the mean
        of the voxels' standardized series, ``sum_v X_v / n``.
    per_run : bool
        Each run's segment is centred and scaled on its own: to unit norm with
        ``per_run`` (for correlations computed run by run), otherwise to unit
        variance (standardized, like the voxels' rows) and then the whole
        concatenated course to unit norm.

    Returns
    -------
    ndarray of float32, shape (K, T)

    Raises
    ------
    ValueError
        When a seed's time course is constant (in a run, with ``per_run``).
    """
    _check_options(signal, RUN_COMBINATIONS[0])
    source = (subject.meta.get("bold") or [str(subject.path)])[0]
    try:
        weights = seeds.weights(subject.voxels, len(subject.voxels))
    except InputDataError as exc:  # name the subject, and what the user can do
        raise InputDataError(
            f"{source}: {exc.message.rstrip('.')}; or drop the subject "
            "(--participant-label / --participant-filter)."
        ) from exc
    needed = np.unique(weights.indices)  # CSR: column indices = data rows used
    rows = subject.data[needed].astype(np.float64) * subject.scale[needed, None]
    weights = weights[:, needed]
    spans = subject.runs if per_run or signal == "mean" else [(0, subject.n_volumes)]
    ts = np.empty((len(seeds), subject.n_volumes))
    for q, (lo, hi) in enumerate(spans):
        part = rows[:, lo:hi]
        if signal == "mean":  # back to the demeaned BOLD: sd times the standardized row
            part = part * subject.sd[needed, q, None]
        ts[:, lo:hi] = weights @ part
    # like the voxels' rows, the seed's course is standardized within every run
    for lo, hi in subject.runs:
        seg = ts[:, lo:hi]
        seg -= seg.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(seg, axis=1, keepdims=True)
        if np.any(norm == 0):
            bad = [seeds.ids[k] for k in np.flatnonzero(norm[:, 0] == 0)]
            raise InputDataError(
                f"{source}: seed(s) {', '.join(bad)} have a constant time course; drop the "
                "subject (--participant-label / --participant-filter) or check its data."
            )
        seg /= norm if per_run else norm / np.sqrt(hi - lo)
    if not per_run:
        ts /= np.linalg.norm(ts, axis=1, keepdims=True)
    return ts.astype(np.float32)


# --------------------------------------------------------------------------------------
# Blocks of r


def _row_factor(
    subject: PreparedSubject, rows: np.ndarray | None, per_run: bool = False
) -> np.ndarray:
    """Per target row: dequantization scale over the centred norm (float32).

    ``(n,)`` over all volumes, or ``(n, R)`` over each run with ``per_run``.
    """
    if per_run:
        factor = np.ascontiguousarray(subject.scale[:, None] / subject.run_norm, np.float32)
    else:
        factor = (subject.scale / subject.norm).astype(np.float32, copy=False)
    return factor if rows is None else np.ascontiguousarray(factor[rows])


def _data_block(
    data: np.ndarray, rows: np.ndarray | None, start: int, stop: int, buf: np.ndarray | None
) -> np.ndarray:
    """Rows ``start:stop`` of the target rows of ``data`` as float32 (a view when possible)."""
    if rows is None and data.dtype == np.float32:
        return data[start:stop]
    out = buf[: stop - start]
    if rows is None:
        _copy_rows(data, start, stop, out)
    else:
        _gather_rows(data, rows, start, stop, out, 0)
    return out


def _target_rows(subject: PreparedSubject, rows: np.ndarray | None) -> np.ndarray | None:
    """``rows`` as int64 indices in range (negative ones count from the end, as in numpy)."""
    if rows is None:
        return None
    n = subject.data.shape[0]
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) and rows.min() < 0:
        rows = np.where(rows < 0, rows + n, rows)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"rows out of range of the subject's {n} data rows")
    return rows


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
    rows = _target_rows(subject, rows)
    data = np.asarray(subject.data)  # a plain ndarray view of the memory map
    n_rows = len(subject.voxels) if rows is None else len(rows)
    k = seed_ts.shape[0]
    step = max(64, block_elements // max(k, 1))
    seed_ts_t = np.ascontiguousarray(seed_ts.T, dtype=np.float32)
    factor = _row_factor(subject, rows)
    buf = None
    if rows is not None or data.dtype != np.float32:
        buf = np.empty((min(step, n_rows), data.shape[1]), dtype=np.float32)
    r_buf = np.empty((min(step, n_rows), k), dtype=np.float32)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        r = r_buf[: stop - start]
        np.matmul(_data_block(data, rows, start, stop, buf), seed_ts_t, out=r)
        _scale_clip(r, factor[start:stop])
        yield slice(start, stop), r


def _worker_step(n_volumes: int, n_seeds: int) -> int:
    """Rows per worker block.

    The block's data rows (float32) and its r fit in _WORKER_BLOCK_BYTES.  For few
    seeds, blocks small enough for OpenBLAS's small-matrix GEMM path (no packing;
    rows × seeds × volumes <= 1e6, about 1.6x faster at 20 seeds) are used when that
    still leaves at least 128 rows per block (Python's per-block overhead).
    """
    step = _WORKER_BLOCK_BYTES // (4 * (n_volumes + n_seeds))
    small = _SMALL_GEMM // max(1, n_seeds * n_volumes)
    if small >= 128:
        step = min(step, small)
    return int(max(32, min(2048, step // 16 * 16)))


class _FileRows:
    """Read row ranges of a memory-mapped 2-D array with ``pread`` instead of touching the map.

    Reading each block straight into a worker's cache-resident buffer costs one copy
    from the page cache, with no page faults and no page-table teardown (a TLB
    shoot-down on every core) when the subject's map is closed.
    """

    def __init__(self, fd: int, position: int, row_bytes: int) -> None:
        self.fd = fd
        self.position = position
        self.row_bytes = row_bytes

    @classmethod
    def open(cls, data: np.ndarray) -> _FileRows | None:
        """A reader for ``data`` if it is a C-contiguous map of a file, else None."""
        mapping = getattr(data, "_mmap", None)
        filename = getattr(data, "filename", None)
        if (mapping is None or not filename or data.ndim != 2 or not data.flags.c_contiguous
                or not hasattr(os, "preadv")):
            return None
        try:
            mapped = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
            fd = os.open(filename, os.O_RDONLY)
        except (TypeError, ValueError, OSError):
            return None
        # the map starts at the allocation-granular offset below data.offset
        start = data.offset - data.offset % mmap.ALLOCATIONGRANULARITY
        position = start + (data.ctypes.data - mapped)
        if position < 0 or position + data.nbytes > os.fstat(fd).st_size:
            os.close(fd)
            return None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return cls(fd, position, data.shape[1] * data.itemsize)

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``lo:hi`` into ``out[:hi - lo]`` (same dtype); returns that view."""
        view = out[: hi - lo]
        buffer = memoryview(view).cast("B")
        offset = self.position + lo * self.row_bytes
        done = 0
        while done < len(buffer):
            n = os.preadv(self.fd, [buffer[done:]], offset + done)
            if n <= 0:
                raise OSError(f"unexpected end of file reading rows {lo}:{hi}")
            done += n
        return view

    def close(self) -> None:
        os.close(self.fd)


def _block_plan(rows: np.ndarray | None, n_rows: int, step: int, spans: bool) -> np.ndarray:
    """Blocks as rows ``(start, stop, lo, hi)``: target rows start:stop, data rows lo:hi.

    With ``spans`` (``rows`` strictly increasing), a block holds the targets whose
    data rows fall in one window of ``step`` consecutive rows, so that the block is
    read as one range of at most ``step`` rows.
    """
    if rows is None or not spans:
        starts = np.arange(0, n_rows, step, dtype=np.int64)
        stops = np.minimum(starts + step, n_rows)
        return np.stack([starts, stops, starts, stops], axis=1)  # lo:hi unused with rows
    window = (rows - rows[0]) // step
    starts = np.concatenate([[0], np.flatnonzero(window[1:] != window[:-1]) + 1])
    stops = np.append(starts[1:], n_rows)
    return np.stack([starts, stops, rows[starts], rows[stops - 1] + 1], axis=1).astype(np.int64)


def _for_all_blocks(
    subject: PreparedSubject,
    seed_ts: np.ndarray,
    rows: np.ndarray | None,
    consume: Callable[[np.ndarray, np.ndarray, int], None],
    runs: list[tuple[int, int]] | None = None,
) -> None:
    """Compute unscaled r block by block on all workers; ``consume(r, factor, start)``.

    Without ``runs``, ``r`` is ``(n, K)`` (one product over all volumes) and ``factor``
    ``(n,)``.  With ``runs`` (column spans of two or more runs, ``seed_ts`` centred
    per run), ``r`` is ``(R, n, K)``, one product per run on that run's columns (the
    same operations as one product), and ``factor`` is ``(n, R)``.

    ``consume`` runs on the worker that computed the block (blocks are disjoint, so
    writes to different rows of shared outputs need no lock) and must release the GIL
    to run in parallel (the numba kernels do).
    """
    rows = _target_rows(subject, rows)
    data = np.asarray(subject.data)  # a plain ndarray view of the memory map
    n_rows = len(subject.voxels) if rows is None else len(rows)
    n_volumes = data.shape[1]
    k = seed_ts.shape[0]
    seed_ts_t = np.ascontiguousarray(seed_ts.T, dtype=np.float32)
    factor = _row_factor(subject, rows, per_run=runs is not None)
    step = _worker_step(n_volumes, k * (len(runs) if runs else 1))
    # read blocks as row ranges of the file unless the targets are scattered rows
    dense = rows is None or (
        n_rows > 0 and bool(np.all(rows[1:] > rows[:-1]))
        and rows[-1] - rows[0] < 2 * n_rows
    )
    reader = _FileRows.open(subject.data) if dense and _READ_FILES else None
    plan = _block_plan(rows, n_rows, step, spans=reader is not None)
    n_blocks = len(plan)
    n_workers = min(_n_workers(), n_blocks)
    convert = rows is not None or data.dtype != np.float32
    plan = plan.tolist()
    claim = itertools.count()  # next() on it is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        try:
            raw = np.empty((step, n_volumes), dtype=data.dtype) if reader else None
            buf = np.empty((step, n_volumes), dtype=np.float32) if convert else None
            r_buf = np.empty((len(runs) if runs else 1, step, k), dtype=np.float32)
            while not errors:
                b = next(claim)
                if b >= n_blocks:
                    return
                start, stop, lo, hi = plan[b]
                if reader is None:
                    x = _data_block(data, rows, start, stop, buf)
                else:
                    x = reader.read(lo, hi, raw)
                    if rows is not None:
                        _gather_rows(x, rows, start, stop, buf, lo)
                        x = buf[: stop - start]
                    elif convert:
                        _copy_rows(x, 0, stop - start, buf)
                        x = buf[: stop - start]
                r = r_buf[:, : stop - start]
                if runs is None:
                    np.matmul(x, seed_ts_t, out=r[0])
                    r = r[0]
                else:
                    for q, (c0, c1) in enumerate(runs):
                        np.matmul(x[:, c0:c1], seed_ts_t[c0:c1], out=r[q])
                consume(r, factor[start:stop], start)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    try:
        if n_workers <= 1:
            work()
        else:
            with _single_threaded_blas():
                threads = [
                    threading.Thread(target=work, daemon=True) for _ in range(n_workers - 1)
                ]
                for thread in threads:
                    thread.start()
                work()
                for thread in threads:
                    thread.join()
    finally:
        if reader is not None:
            reader.close()
    if errors:
        raise errors[0]


#: relative spread of z below which t is undefined: z equal to float64 rounding
_UNDEFINED_SPREAD = 1e-12


# error_model numpy: a zero SD beside a NaN mean divides by zero as numpy does (NaN),
# where numba's default would raise
@njit(nogil=True, cache=True, error_model="numpy")
def _finalize(sum_r, mean_z, m2_z, n, spread, r, z, t, undefined):  # pragma: no cover - numba
    """:meth:`RunningStats.finalize` in one pass over the maps.

    numpy's float64 operations in its order, element by element; numpy made five float64
    temporaries of the maps' size (a second per 14 million values on the benchmark VM).
    """
    root_n = np.sqrt(np.float64(n))
    for i in range(mean_z.shape[0]):
        for j in range(mean_z.shape[1]):
            m2 = m2_z[i, j]
            if m2 < 0.0:  # rounding; a NaN stays NaN, as np.maximum keeps it
                m2 = 0.0
            sd = np.sqrt(m2 / (n - 1))
            mean = mean_z[i, j]
            flat = sd <= spread * abs(mean)
            undefined[i, j] = flat
            t[i, j] = np.nan if flat else mean / (sd / root_n)
            r[i, j] = sum_r[i, j] / n
            z[i, j] = mean


@dataclass
class RunningStats:
    """Streaming moments over subjects of r and z for every voxel and seed.

    z is accumulated stably with Welford's update (running mean and sum of squared
    deviations ``M2``), batches are merged with Chan et al.'s pairwise formula, so
    a z that is the same in every subject (a one-voxel seed with itself) has
    ``M2`` exactly 0 and its t is reported as undefined, not as rounding noise.

    Attributes
    ----------
    n : int
        Subjects added.
    sum_r : ndarray of float64, shape (V, K)
        Sum of r over subjects.
    mean_z : ndarray of float64, shape (V, K)
        Mean of z over the subjects added.
    m2_z : ndarray of float64, shape (V, K)
        Sum of squared deviations of z from ``mean_z``.
    """

    n: int
    sum_r: np.ndarray
    mean_z: np.ndarray
    m2_z: np.ndarray

    def __post_init__(self) -> None:
        # the compiled kernels update the arrays in place
        for name in ("sum_r", "mean_z", "m2_z"):
            setattr(self, name, np.require(getattr(self, name), np.float64, ["C", "W"]))

    @classmethod
    def zeros(cls, n_voxels: int, n_seeds: int) -> RunningStats:
        """Empty moments."""
        shape = (n_voxels, n_seeds)
        return cls(0, np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def add_block(self, block: slice, r: np.ndarray, z: np.ndarray) -> None:
        """Add one subject's block of r and z.

        Call once per block of the subject, then increment :attr:`n` once.
        """
        self.sum_r[block] += r
        mean = self.mean_z[block]
        d = z - mean
        mean += d / (self.n + 1)
        self.m2_z[block] += d * (z - mean)

    def merge(self, other: RunningStats) -> RunningStats:
        """Add the moments of another batch of subjects (Chan et al.'s pairwise update)."""
        n = self.n + other.n
        if other.n:
            _merge_block(self.sum_r, self.mean_z, self.m2_z, other.sum_r, other.mean_z,
                         other.m2_z, *_merge_weights(self.n, other.n))
            self.n = n
        return self

    def select(self, rows: np.ndarray | None) -> RunningStats:
        """The moments of some voxels only (``rows`` of the arrays; ``None``: all, itself)."""
        if rows is None:
            return self
        return RunningStats(self.n, self.sum_r[rows], self.mean_z[rows], self.m2_z[rows])

    def save(self, path: str | Path) -> Path:
        """Write the moments to ``path``, an ``.npy`` file that :meth:`load` maps.

        The file holds ``sum_r``, ``mean_z`` and ``m2_z`` stacked, ``(3, V, K)`` float64,
        written one after the other (no stacked copy); the number of subjects goes to
        the ``.json`` file beside it.  Not ``np.savez``: a zip member is read back into
        new memory after its checksum, 0.8 s for 200 seeds' sums in the reduce step,
        where a mapped ``.npy`` costs nothing until its pages are read.
        """
        from bids_cnm.io.saved_arrays import write_stacked

        path = Path(path)
        write_stacked(path, [self.sum_r, self.mean_z, self.m2_z])  # C-contiguous (post_init)
        path.with_suffix(".json").write_text(json.dumps({"n": self.n}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunningStats:
        """Read moments written by :meth:`save` (mapped copy-on-write: merging into them
        changes this process's pages only), or by ``np.savez`` before it.

        Raises
        ------
        ValueError
            For sums written by an older version (plain sums of z and z²).
        """
        path = Path(path)
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if not zipped:
            stacked = np.load(path, mmap_mode="c")
            n = json.loads(path.with_suffix(".json").read_text())["n"]
            return cls(int(n), stacked[0], stacked[1], stacked[2])
        with np.load(path) as f:  # written by np.savez (a work folder of 2026-11)
            if "m2_z" not in f:
                raise ValueError(
                    f"{path}: running sums of an older bids_cnm version; delete the work "
                    "directory's accumulate_batch_* folders and run again."
                )
            return cls(int(f["n"]), f["sum_r"], f["mean_z"], f["m2_z"])

    def finalize(self, dtype: type = np.float64) -> dict[str, np.ndarray]:
        """Mean r, mean z and the one-sample t of z (against 0) per voxel and seed.

        Parameters
        ----------
        dtype : numpy dtype
            Of the returned maps (float32: what the outputs store, rounded from the
            float64 values, without float64 copies of the maps).

        Returns
        -------
        dict
            ``r``, ``z``, ``t`` arrays of ``dtype``, shape (V, K), and ``undefined``
            (bool): where z does not vary across subjects (its sample SD is at most
            1e-12 of |mean z|, i.e. float64 rounding), t is undefined and NaN.
            In float64: ``r = sum_r / n``, ``sd = sqrt(max(m2_z, 0) / (n - 1))``,
            ``t = mean_z / (sd / sqrt(n))``.
        """
        if self.n < 2:
            raise ValueError("a one-sample t-test needs at least 2 subjects")
        out = {name: np.empty(self.mean_z.shape, dtype=dtype) for name in ("r", "z", "t")}
        undefined = np.empty(self.mean_z.shape, dtype=bool)
        _finalize(self.sum_r, self.mean_z, self.m2_z, self.n, _UNDEFINED_SPREAD,
                  out["r"], out["z"], out["t"], undefined)
        return {**out, "undefined": undefined}


def _merge_weights(n_a: int, n_b: int) -> tuple[float, float]:
    """Chan et al.'s weights of a merge of ``n_b`` subjects into ``n_a``: of the means'
    difference in the mean, of its square in ``M2``."""
    return n_b / (n_a + n_b), n_a * n_b / (n_a + n_b)


@njit(nogil=True, cache=True, error_model="numpy")
def _merge_block(sum_r, mean_z, m2_z, o_sum_r, o_mean_z, o_m2_z,  # pragma: no cover
                 w_mean, w_m2):
    """Chan et al.'s merge of moments ``o_*`` into rows of ``sum_r``, ``mean_z``, ``m2_z``
    (weights from :func:`_merge_weights`), element by element, in place."""
    for i in range(mean_z.shape[0]):
        for j in range(mean_z.shape[1]):
            delta = o_mean_z[i, j] - mean_z[i, j]
            mean_z[i, j] += delta * w_mean
            m2_z[i, j] += o_m2_z[i, j] + (delta * delta) * w_m2
            sum_r[i, j] += o_sum_r[i, j]


#: rows of the maps merged and finalized at a time (the block's float64 moments stay in
#: the cache: 3 x 512 rows x 200 seeds x 8 bytes is 2.4 MB)
MERGE_ROWS = 512


def merge_and_finalize(
    batches: Sequence[RunningStats], rows: Sequence[np.ndarray | None] | None = None,
    dtype: type = np.float32,
) -> tuple[int, dict[str, np.ndarray]]:
    """The batches' moments merged, then finalized: :meth:`RunningStats.merge` of each
    batch in turn into the first (the same kernel), then :meth:`RunningStats.finalize`.

    Block by block of :data:`MERGE_ROWS` rows, so that no merged copy of the moments
    is made: the batches (mapped files) are read once, and only the maps are written
    (merging into the first batch's mapping copied every page of it, and numpy's
    merge made three float64 temporaries of the moments' size).

    Parameters
    ----------
    batches : sequence of RunningStats
        In the order of their subjects.
    rows : sequence of (ndarray of int64 or None), optional
        For each batch, its rows that are the maps' rows, in order (``None``: all):
        :meth:`RunningStats.select` of each batch, without copying it.
    dtype : numpy dtype
        Of the maps.

    Returns
    -------
    n : int
        Subjects in all.
    maps : dict
        As :meth:`RunningStats.finalize`.
    """
    rows = list(rows) if rows is not None else [None] * len(batches)
    n_rows = len(rows[0]) if rows[0] is not None else batches[0].mean_z.shape[0]
    k = batches[0].mean_z.shape[1]
    for batch, picked in zip(batches, rows):  # the kernels do not check bounds
        size = batch.mean_z.shape[0] if picked is None else len(picked)
        if size != n_rows or batch.mean_z.shape[1] != k or (
                picked is not None and len(picked)
                and not 0 <= picked.min() <= picked.max() < batch.mean_z.shape[0]):
            raise ValueError(
                f"running sums of {batch.mean_z.shape} (rows {size}) do not match the "
                f"maps' {n_rows} voxels x {k} seeds")
    # the weights of each merge in turn, as RunningStats.merge takes them
    weights, n = [], batches[0].n
    for batch in batches[1:]:
        weights.append(_merge_weights(n, batch.n) if batch.n else None)
        n += batch.n
    if n < 2:
        raise ValueError("a one-sample t-test needs at least 2 subjects")
    out = {name: np.empty((n_rows, k), dtype=dtype) for name in ("r", "z", "t")}
    undefined = np.empty((n_rows, k), dtype=bool)
    moments = [np.empty((min(MERGE_ROWS, n_rows), k)) for _ in range(3)]

    def block(batch: RunningStats, picked: np.ndarray | None, start: int, stop: int):
        take = slice(start, stop) if picked is None else picked[start:stop]
        return batch.sum_r[take], batch.mean_z[take], batch.m2_z[take]

    for start in range(0, n_rows, MERGE_ROWS):
        stop = min(start + MERGE_ROWS, n_rows)
        acc = [m[: stop - start] for m in moments]
        for target, source in zip(acc, block(batches[0], rows[0], start, stop)):
            target[:] = source
        for batch, picked, weight in zip(batches[1:], rows[1:], weights):
            if weight is not None:
                _merge_block(*acc, *block(batch, picked, start, stop), *weight)
        _finalize(*acc, n, _UNDEFINED_SPREAD, out["r"][start:stop], out["z"][start:stop],
                  out["t"][start:stop], undefined[start:stop])
    return n, {**out, "undefined": undefined}


def _check_options(signal: str, runs: str) -> None:
    if signal not in SEED_SIGNALS:
        raise ValueError(f"seed signal must be one of {SEED_SIGNALS}, not {signal!r}")
    if runs not in RUN_COMBINATIONS:
        raise ValueError(f"run combination must be one of {RUN_COMBINATIONS}, not {runs!r}")


def _subject_pass(
    subject: PreparedSubject, seeds: Seeds, rows: np.ndarray | None, signal: str,
    runs: str, single, per_run,
) -> None:
    """One pass over a subject with the kernel of its run handling.

    ``single(r, factor, start)`` consumes (n, K) blocks of one correlation over all
    volumes; ``per_run(r, factor, start)`` consumes (R, n, K) blocks of run-wise ones.
    """
    _check_options(signal, runs)
    spans = subject.runs if runs == "average" and len(subject.runs) > 1 else None
    seed_ts = seed_timeseries(subject, seeds, signal, per_run=spans is not None)
    _for_all_blocks(subject, seed_ts, rows, single if spans is None else per_run, spans)


def accumulate_subject(
    stats: RunningStats,
    subject: PreparedSubject,
    seeds: Seeds,
    rows: np.ndarray | None = None,
    signal: str = "mean",
    runs: str = "average",
) -> None:
    """Add one subject's r and z maps of all seeds to the running moments.

    Parameters
    ----------
    stats : RunningStats
        Moments over the target voxels (``len(rows)`` or all of the subject's).
    subject : PreparedSubject
    seeds : Seeds
    rows : ndarray of int64, optional
        Rows of the subject's data that are the target voxels, in order.
    signal : {'mean', 'standardized'}
        Seed time course (see :func:`seed_timeseries`).
    runs : {'average', 'concatenate'}
        Several runs: the mean of the run-wise Fisher z (the subject's r is its
        tanh), or one correlation over the concatenated standardized runs.
    """
    n_rows = len(subject.voxels) if rows is None else len(rows)
    if stats.mean_z.shape != (n_rows, len(seeds)):
        raise ValueError(
            f"running sums of shape {stats.mean_z.shape} do not match {n_rows} target "
            f"voxels x {len(seeds)} seeds"
        )
    moments = (stats.sum_r, stats.mean_z, stats.m2_z)
    inv_n = 1.0 / (stats.n + 1)

    def single(r: np.ndarray, factor: np.ndarray, start: int) -> None:
        _accumulate_block(r, factor, *moments, start, inv_n)

    def per_run(r: np.ndarray, factor: np.ndarray, start: int) -> None:
        _accumulate_runs_block(r, factor, *moments, start, inv_n)

    _subject_pass(subject, seeds, rows, signal, runs, single, per_run)
    stats.n += 1


def subject_zmaps(
    subject: PreparedSubject, seeds: Seeds, rows: np.ndarray | None = None,
    signal: str = "mean", runs: str = "average",
) -> np.ndarray:
    """Fisher-z maps of all seeds for one subject.

    Parameters
    ----------
    subject, seeds, rows, signal, runs
        See :func:`accumulate_subject`.

    Returns
    -------
    ndarray of float32, shape (V, K)
        Over ``rows`` (or all the subject's voxels).
    """
    n_rows = len(subject.voxels) if rows is None else len(rows)
    out = np.empty((n_rows, len(seeds)), dtype=np.float32)

    def single(r: np.ndarray, factor: np.ndarray, start: int) -> None:
        _zmap_block(r, factor, out, start)

    def per_run(r: np.ndarray, factor: np.ndarray, start: int) -> None:
        _zmap_runs_block(r, factor, out, start)

    _subject_pass(subject, seeds, rows, signal, runs, single, per_run)
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
    haystack = np.ascontiguousarray(subject_voxels, dtype=np.int64)
    needles = np.ascontiguousarray(target_voxels, dtype=np.int64)
    if len(haystack) and _increasing(haystack) and _increasing(needles):
        pos = np.empty(len(needles), dtype=np.int64)  # one linear merge of two sorted lists
        if not _merge_positions(haystack, needles, pos):
            raise ValueError("target voxels are not a subset of the subject's voxels")
        return pos
    pos = np.searchsorted(subject_voxels, target_voxels)
    pos = np.minimum(pos, len(subject_voxels) - 1)
    if not np.array_equal(subject_voxels[pos], target_voxels):
        raise ValueError("target voxels are not a subset of the subject's voxels")
    return pos.astype(np.int64)


def _increasing(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))


@njit(nogil=True, cache=True)
def _merge_positions(haystack, needles, out):
    """``out[i]`` = position of ``needles[i]`` in ``haystack`` (both strictly increasing).

    Returns False when a needle is missing.
    """
    j = 0
    n = len(haystack)
    for i in range(len(needles)):
        x = needles[i]
        while j < n and haystack[j] < x:
            j += 1
        if j == n or haystack[j] != x:
            return False
        out[i] = j
    return True
