"""Prepared time series: each subject's masked, standardized BOLD in a compact file.

Decoding gzipped NIfTI costs far more than the connectivity itself, so every
subject is decoded once into a memory-mappable copy in the work directory and
all analyses (any seeds, any number of re-runs) read that copy.  Preparing is also
the proof that a subject's files are readable: every run is read to the end of its
gzip stream, and a damaged one ends the step with the one-line error the up-front
screen (:mod:`bids_cnm.io.readable`) gives, so a cold run decodes each file once.

Layout of a prepared subject (a folder, format :data:`FORMAT_VERSION`):

``data.npy``
    ``(V, T)`` array, voxel-major, each row a voxel's time series after every run
    was standardized (zero mean, unit variance over its volumes) and the runs
    concatenated.  ``float32`` (default, exact) or ``int16`` with a per-voxel scale.
``scale.npy``
    ``(V,)`` float32: multiply a row of ``data`` by it to get standardized values
    (ones for float32).
``norm.npy``
    ``(V,)`` float32: the Euclidean norm of each centred, dequantized row; a
    centred Pearson correlation over the concatenated runs divides by it (so
    quantization does not bias r).
``run_norm.npy``
    ``(V, R)`` float32: the same norm within each run (each run's segment centred on
    its own mean), for correlations computed run by run.
``sd.npy``
    ``(V, R)`` float32: each voxel's temporal standard deviation (population) in
    each run of the BOLD as the connectome gives it; ``sd * row`` restores the
    voxel's demeaned signal, so the mean BOLD signal of a seed is a weighted sum
    of rows.
``voxels.npy``
    ``(V,)`` int64 flat (C-order) indices of the voxels into the 3-D grid.
``meta.json``
    format version, shape, affine, number of volumes per run, source files.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nb
import numpy as np
from numba import njit

from bids_cnm.engine.bold_reader import (
    BLOCK_VOLUMES,
    Scratch,
    UnreadableData,
    read_concatenated_runs,
)
from bids_cnm.engine.bold_reader import valid_mask as bold_valid_mask
from bids_cnm.errors import InputDataError, MissingInputError, ReadError

LOGGER = logging.getLogger("bids_cnm.engine.timeseries")

_INT16_MAX = 32767.0

#: Version of the prepared-data layout; a cache of another version is rebuilt.  Raise
#: it whenever what preparation computes changes: prepared copies are not keyed by the
#: code's identity (bids_cnm.io.code_identity), which changes with every edit.
#: 1: data, scale, norm, voxels (no version key).  2: adds run_norm and sd.
FORMAT_VERSION = 2


def standardize(data: np.ndarray) -> np.ndarray:
    """Z-score each row of a ``(V, T)`` array over time, in place.

    Parameters
    ----------
    data : ndarray of float32, shape (V, T)
        Time series; rows with zero variance must be removed beforehand.

    Returns
    -------
    ndarray
        The same array, each row with mean 0 and (population) variance 1.
    """
    return _standardize(data)[0]


def _standardize(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`standardize` that also returns each row's population SD (float64)."""
    mean = data.mean(axis=1, dtype=np.float64)
    data -= mean[:, None].astype(data.dtype)
    # a second pass after centring is exact even when the mean is large (BOLD ~ 1e3)
    std = np.sqrt(np.einsum("ij,ij->i", data, data, dtype=np.float64) / data.shape[1])
    data /= std[:, None].astype(data.dtype)
    return data, std


def load_subject(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """Load, mask, standardize and concatenate a subject's runs.

    Parameters
    ----------
    bold_paths : list of str
        4-D BOLD runs on one grid.
    mask_paths : list of str
        Brain masks; their intersection restricts the voxels.  Without masks,
        every voxel whose time series varies in every run is kept.

    Returns
    -------
    data : ndarray of float32, shape (V, T)
        Standardized, concatenated time series of the valid voxels.
    voxels : ndarray of int64, shape (V,)
        Flat indices of the valid voxels.
    n_volumes : list of int
        Volumes per run.
    sd : ndarray of float32, shape (V, R)
        Temporal standard deviation (population) of every voxel in every run.
    """
    data, voxels, n_volumes, sd, _ = _load_standardized(bold_paths, mask_paths)
    return data, voxels, n_volumes, sd


def _load_standardized(bold_paths, mask_paths, scratch: Scratch | None = None):
    """:func:`load_subject` plus the centred norms of the rows (whole and per run).

    One decode of every run straight into a shared ``(V, T)`` array, then one fused
    pass per row (see :func:`_standardize_valid_rows`) that drops the invalid rows in
    place: the subject's data exist once in memory and are read twice at most.  With
    a ``scratch``, that array is the scratch's (valid until its next use).
    """
    shape = tuple(int(n) for n in nb.load(bold_paths[0]).shape[:3])
    mask = None
    for path in mask_paths:
        inside = np.asanyarray(nb.load(path).dataobj) > 0
        if inside.shape[:3] != shape:
            raise InputDataError(
                f"{path}: grid {inside.shape[:3]} differs from the BOLD run's {shape}."
            )
        mask = inside if mask is None else mask & inside
    try:
        raw, n_volumes = read_concatenated_runs(list(bold_paths), mask, scratch)
    except InputDataError:
        raise
    except UnreadableData as exc:
        # the up-front check's message and exit code (65), naming the damaged run; from
        # None: the crash file then names this error only (its exit code is kept)
        raise InputDataError(exc.message) from None
    except Exception as exc:  # noqa: BLE001 - anything else the reader meets: say which subject
        raise InputDataError(f"{bold_paths[0]}: cannot read the image data ({exc}).") from None
    candidates = np.flatnonzero(np.ones(shape, bool).ravel() if mask is None else mask.ravel())
    bounds = np.cumsum([0] + list(n_volumes)).astype(np.int64)
    n_runs = len(n_volumes)
    sd = np.empty((len(candidates), n_runs), dtype=np.float32)
    run_norm = np.empty((len(candidates), n_runs), dtype=np.float32)
    norm = np.empty(len(candidates), dtype=np.float32)
    keep = np.empty(len(candidates), dtype=np.bool_)
    n_kept = _standardize_in_halves(raw, bounds, keep, sd, run_norm, norm)
    if n_kept == 0:
        raise InputDataError(
            f"{bold_paths[0]}: no voxel with a varying, finite time series inside "
            "the brain mask; check the BOLD file and its desc-brain_mask."
        )
    # the kept rows were moved to the top in order: a prefix, no copy
    norms = {"norm": norm[:n_kept], "run_norm": run_norm[:n_kept]}
    return (raw[:n_kept], candidates[keep].astype(np.int64), list(n_volumes), sd[:n_kept],
            norms)


def _standardize_in_halves(data, bounds, keep, sd, run_norm, norm) -> int:
    """:func:`_standardize_valid_rows` on two threads, one per half of the rows (on one,
    when the process may use only one thread: one pass over all rows).

    After the decode, preparation's only other CPU work is this pass (0.2 s of a
    GSP1000-shaped subject's 1 s); the decoder's thread has ended, so a second thread
    halves it, when the process may use two (the engine's rule, which follows
    ``--omp-nthreads`` and the CPUs it may use).  Each half compacts its kept rows to
    its own start; the second half's are then moved down behind the first's (no move
    when no row of the first half was dropped).  Returns the number of kept rows, which
    are ``data[:n]`` in row order.
    """
    from bids_cnm.engine.connectivity import _n_workers  # here: a circular import

    if _n_workers() < 2:  # one CPU, or --omp-nthreads 1: one pass, no gap to close
        return _standardize_valid_rows(data, bounds, keep, sd, run_norm, norm, 0,
                                       data.shape[0])
    half = data.shape[0] // 2
    # numba releases the GIL (nogil), so the two halves run on two cores
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(_standardize_valid_rows, data, bounds, keep, sd, run_norm,
                             norm, half, data.shape[0])
        n_first = _standardize_valid_rows(data, bounds, keep, sd, run_norm, norm, 0, half)
        n_second = second.result()
    if n_first < half and n_second:
        _move_rows(data, half, n_first, n_second)
        for array in (sd, run_norm, norm):
            array[n_first:n_first + n_second] = array[half:half + n_second].copy()
    return n_first + n_second


@njit(nogil=True, cache=True)
def _move_rows(data, source, target, count):  # pragma: no cover - numba
    """Copy rows ``source:source + count`` to ``target:`` (``target < source``), in place.

    Forward row by row: a row is read before any later row overwrites it, with no
    temporary copy of the block (numpy copies overlapping slices through one).
    """
    for i in range(count):
        data[target + i, :] = data[source + i, :]


# reassoc lets the float64 sums use SIMD lanes (0.33 -> 0.28 s for a GSP1000-shaped
# subject); only the order of float64 additions changes, not the float32 arithmetic
@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _standardize_valid_rows(data, bounds, keep, sd, run_norm, norm, start,
                            stop):  # pragma: no cover - numba
    """Standardize every run of the rows that are finite and vary in every run.

    Rows ``start:stop`` are read; row ``i`` kept is written, standardized, to row
    ``j``, ``start`` plus its rank among the kept rows (so ``j <= i`` and compaction in
    place never overwrites an unread row); ``sd``, ``run_norm`` and ``norm`` get row
    ``j`` too, and ``keep[i]`` says whether row ``i`` was kept.  The arithmetic is the
    reference's (:func:`_standardize` then :func:`_centred_norm`): float32 values,
    float64 sums, a second pass after centring; a row fits in L1, so the extra passes
    cost no memory traffic.  Returns the number of kept rows.

    Validity comes from the sums themselves, with no pass of its own: a float64 sum
    of float32 values cannot overflow, so it is finite exactly when every value is;
    and the squares about the float32 mean are zero exactly when every value equals
    it (the float32 difference of two different floats is never zero), that is when
    the run is constant.
    """
    n_runs = bounds.shape[0] - 1
    n_total = bounds[n_runs]
    means = np.empty(n_runs, dtype=np.float32)  # of the current row, per run
    centres = np.empty(n_runs)  # of its standardized runs (~0 up to rounding)
    j = start
    for i in range(start, stop):
        ok = True
        for r in range(n_runs):
            a = bounds[r]
            b = bounds[r + 1]
            total = 0.0
            for t in range(a, b):
                total += data[i, t]
            if not np.isfinite(total):
                ok = False
                break
            mean = np.float32(total / (b - a))
            squares = 0.0
            for t in range(a, b):
                d = np.float64(data[i, t] - mean)
                squares += d * d
            if not squares > 0:
                ok = False
                break
            means[r] = mean
            sd[j, r] = np.sqrt(squares / (b - a))
        keep[i] = ok
        if not ok:
            continue
        whole = 0.0
        for r in range(n_runs):
            a = bounds[r]
            b = bounds[r + 1]
            mean = means[r]
            std32 = sd[j, r]
            total = 0.0
            for t in range(a, b):
                x = (data[i, t] - mean) / std32
                data[j, t] = x
                total += x
            whole += total
            centres[r] = total / (b - a)  # kept so the norms are the centred ones
        # the norms of every run and of the whole row, in one pass
        centre = whole / n_total
        squares = 0.0
        for r in range(n_runs):
            run_centre = centres[r]
            run_squares = 0.0
            for t in range(bounds[r], bounds[r + 1]):
                x = data[j, t]
                d = x - run_centre
                run_squares += d * d
                e = x - centre
                squares += e * e
            run_norm[j, r] = np.sqrt(run_squares)
        norm[j] = np.sqrt(squares)
        j += 1
    return j - start


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _quantize_rows(data, bounds, stored, scale, run_norm, norm):  # pragma: no cover - numba
    """Quantize every row to int16, and the centred norms of the dequantized rows.

    One scale per row, ``max|row| / 32767`` in float32, and ``rint(x / scale)`` (round
    half to even; docs/methods.md); the norms are those of ``stored * scale``, centred in
    float64 as :func:`_standardize_valid_rows` centres the float32 rows.  One pass per
    row while it is in L1, instead of numpy's passes over the whole array and a float32
    copy of the dequantized values.
    """
    n_runs = bounds.shape[0] - 1
    n_total = bounds[n_runs]
    for i in range(data.shape[0]):
        peak = np.float32(0.0)
        for t in range(n_total):
            peak = max(peak, abs(data[i, t]))
        step = peak / np.float32(_INT16_MAX)
        if step == 0:
            step = np.float32(1.0)
        scale[i] = step
        whole = 0.0
        for r in range(n_runs):
            a = bounds[r]
            b = bounds[r + 1]
            total = 0.0
            for t in range(a, b):
                q = np.int16(np.rint(data[i, t] / step))
                stored[i, t] = q
                total += np.float32(q) * step
            whole += total
            centre = total / (b - a)
            squares = 0.0
            for t in range(a, b):
                d = np.float32(stored[i, t]) * step - centre
                squares += d * d
            run_norm[i, r] = np.sqrt(squares)
        centre = whole / n_total
        squares = 0.0
        for t in range(n_total):
            d = np.float32(stored[i, t]) * step - centre
            squares += d * d
        norm[i] = np.sqrt(squares)


def _stored_arrays(data: np.ndarray, n_volumes: list[int], dtype: str, norms: dict,
                   scratch: Scratch | None = None) -> dict[str, np.ndarray]:
    """The stored ``data``, ``scale``, ``norm`` and ``run_norm`` of standardized rows.

    float32: the rows themselves, with the norms the standardizing pass computed; int16:
    quantized by :func:`_quantize_rows` (into the scratch's ``"stored"`` buffer when given).
    """
    if dtype == "float32":
        return dict(data=data, scale=np.ones(len(data), dtype=np.float32), **norms)
    if dtype != "int16":
        raise ValueError(f"unknown cache dtype {dtype!r}; use 'int16' or 'float32'")
    shape = data.shape
    stored = (np.empty(shape, dtype=np.int16) if scratch is None
              else scratch.array("stored", shape, np.int16))
    scale = np.empty(shape[0], dtype=np.float32)
    run_norm = np.empty((shape[0], len(n_volumes)), dtype=np.float32)
    norm = np.empty(shape[0], dtype=np.float32)
    bounds = np.cumsum([0] + list(n_volumes)).astype(np.int64)
    _quantize_rows(data, bounds, stored, scale, run_norm, norm)
    return {"data": stored, "scale": scale, "norm": norm, "run_norm": run_norm}


@dataclass(frozen=True)
class PreparedSubject:
    """A prepared subject opened for reading (arrays are memory maps).

    Attributes
    ----------
    path : Path
    data : ndarray, shape (V, T)
        Standardized rows (float32 or int16).
    scale : ndarray of float32, shape (V,)
        Dequantization scale of every row.
    norm : ndarray of float32, shape (V,)
        Centred norm of every dequantized row over all volumes.
    run_norm : ndarray of float32, shape (V, R)
        Centred norm of every dequantized row within each run.
    sd : ndarray of float32, shape (V, R)
        Temporal SD of every voxel's BOLD in each run.
    voxels : ndarray of int64, shape (V,)
    meta : dict
    """

    path: Path
    data: np.ndarray
    scale: np.ndarray
    norm: np.ndarray
    run_norm: np.ndarray
    sd: np.ndarray
    voxels: np.ndarray
    meta: dict

    @property
    def n_volumes(self) -> int:
        """Number of concatenated volumes."""
        return int(self.data.shape[1])

    @property
    def runs(self) -> list[tuple[int, int]]:
        """Columns ``(start, stop)`` of every run within the concatenated volumes."""
        stops = np.cumsum(self.meta["n_volumes"]).tolist()
        return list(zip([0] + stops[:-1], stops))


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)


def _centred_norm(rows: np.ndarray) -> np.ndarray:
    """Euclidean norm of every row after subtracting its mean (float32)."""
    c = rows - rows.mean(axis=1, keepdims=True)
    return np.sqrt(np.einsum("ij,ij->i", c, c, dtype=np.float64)).astype(np.float32)


def prepared_arrays(
    data: np.ndarray, n_volumes: list[int], dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """The stored arrays of a subject from its standardized, concatenated runs.

    Parameters
    ----------
    data : ndarray of float32, shape (V, T)
        From :func:`load_subject`.
    n_volumes : list of int
        Volumes per run (summing to T).
    dtype : {'float32', 'int16'}
        Storage type of the time series.

    Returns
    -------
    dict
        ``data``, ``scale``, ``norm`` and ``run_norm`` as stored in the cache.
    """
    if dtype == "int16":  # what preparation stores
        return _stored_arrays(data, n_volumes, dtype, {})
    bounds = np.cumsum([0] + list(n_volumes))
    run_norm = np.stack(
        [_centred_norm(data[:, a:b]) for a, b in itertools.pairwise(bounds)], axis=1
    )
    norms = {"norm": _centred_norm(data), "run_norm": run_norm}
    return _stored_arrays(data, n_volumes, dtype, norms)


def in_memory_subject(
    runs: list[np.ndarray], voxels: np.ndarray, shape: tuple[int, int, int],
    affine: np.ndarray | None = None, dtype: str = "float32",
) -> PreparedSubject:
    """A prepared subject held in memory, from raw ``(V, T_r)`` runs (tests, benchmarks).

    Every row must vary in every run.
    """
    parts = [_standardize(np.array(run, dtype=np.float32)) for run in runs]
    n_volumes = [int(np.shape(run)[1]) for run in runs]
    arrays = prepared_arrays(np.concatenate([x for x, _ in parts], axis=1), n_volumes, dtype)
    meta = {"format_version": FORMAT_VERSION, "shape": [int(n) for n in shape],
            "affine": np.asarray(affine if affine is not None else np.eye(4)).tolist(),
            "n_volumes": n_volumes, "dtype": dtype, "bold": [], "masks": []}
    return PreparedSubject(
        path=Path("<memory>"), voxels=np.asarray(voxels, dtype=np.int64), meta=meta,
        sd=np.stack([sd for _, sd in parts], axis=1).astype(np.float32), **arrays,
    )


def _format_version(out_dir: Path) -> int | None:
    """Format version of a complete cache folder (1 before versions); None when absent."""
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return int(meta.get("format_version", 1))


def prepare_subject(
    bold_paths: list[str] | tuple[str, ...],
    mask_paths: list[str] | tuple[str, ...],
    out_dir: str | Path,
    dtype: str = "float32",
    store_data: bool = True,
    scratch: Scratch | None = None,
) -> Path:
    """Write a subject's prepared time series to ``out_dir`` (atomically).

    Parameters
    ----------
    bold_paths, mask_paths : list of str
        See :func:`load_subject`.
    out_dir : path
        Folder to create; a complete one of this format version is left untouched
        (resume), one of another version is rebuilt.
    dtype : {'float32', 'int16'}
        Storage type of the time series (float32 exact; int16 half the bytes).
    store_data : bool
        False: write only the valid voxels and ``meta.json`` (``"streamed": true``);
        :func:`open_prepared` then decodes the runs again into memory (a one-off run
        that keeps no copy of the data on disk).  The valid voxels are found by
        streaming the runs in constant memory.
    scratch : Scratch, optional
        Decode into its buffers (a batch of subjects in one process then touches
        new memory once, not once per subject).

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    version = _format_version(out_dir)
    if version == FORMAT_VERSION:
        return out_dir
    if version is not None:
        LOGGER.info("%s: prepared data of format %d, this version reads format %d; "
                    "rebuilding it", out_dir, version, FORMAT_VERSION)
    img = nb.load(bold_paths[0])
    meta = {
        "format_version": FORMAT_VERSION,
        "shape": [int(n) for n in img.shape[:3]],
        "affine": np.asarray(img.affine).tolist(),
        "n_volumes": [],
        "dtype": dtype,
        "bold": [str(p) for p in bold_paths],
        "masks": [str(p) for p in mask_paths],
    }
    if store_data:
        data, voxels, n_volumes, sd, norms = _load_standardized(bold_paths, mask_paths,
                                                                 scratch)
        arrays = _stored_arrays(data, n_volumes, dtype, norms, scratch)
        arrays.update(sd=sd, voxels=voxels)
    else:
        voxels, n_volumes = _streamed_voxels(bold_paths, mask_paths)
        arrays = {"voxels": voxels}
        meta["streamed"] = True
    meta["n_volumes"] = n_volumes
    # build next to the target and rename, so a kill never leaves a half-written copy
    _remove_stale_temporaries(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        _save_npy(tmp, f"{name}.npy", array)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporaries of ``out_dir`` left by killed processes of this host.

    Another host's (a cluster job on a shared disk) or a live process's are kept.
    """
    prefix = f"{out_dir.name}.tmp-{socket.gethostname()}-"
    for tmp in out_dir.parent.glob(f"{glob.escape(prefix)}*"):
        try:
            os.kill(int(tmp.name[len(prefix):]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _streamed_voxels(bold_paths, mask_paths) -> tuple[np.ndarray, list[int]]:
    """Valid voxels of a subject (as :func:`load_subject` keeps them) in constant memory."""
    shape = tuple(int(n) for n in nb.load(bold_paths[0]).shape[:3])
    inside = None
    for path in mask_paths:  # first: only the brain's voxels need to be followed
        this = np.asanyarray(nb.load(path).dataobj) > 0
        if this.shape[:3] != shape:
            raise InputDataError(
                f"{path}: grid {this.shape[:3]} differs from the BOLD run's {shape}.")
        inside = this if inside is None else inside & this
    try:
        valid = bold_valid_mask(list(bold_paths), inside)
    except UnreadableData as exc:
        raise InputDataError(exc.message) from None
    except (InputDataError, ReadError) as exc:
        raise InputDataError(f"{bold_paths[0]}: cannot read the image data ({exc}).") from None
    if not valid.any():
        raise InputDataError(
            f"{bold_paths[0]}: no voxel with a varying, finite time series inside "
            "the brain mask; check the BOLD file and its desc-brain_mask."
        )
    n_volumes = [int(nb.load(p).shape[3]) for p in bold_paths]
    return np.flatnonzero(valid.ravel()).astype(np.int64), n_volumes


def cache_key(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...],
    dtype: str = "float32", store_data: bool = True,
) -> str:
    """Name of a subject's prepared folder: a digest of its sources and the layout.

    The sources enter by path, size and modification time (as ``make`` and nipype's
    default hashing do): a replaced file gets a new folder; reading the files'
    content would cost as much as preparing them.
    """
    parts: list[object] = [FORMAT_VERSION, dtype, bool(store_data)]
    for path in [*bold_paths, "|", *mask_paths]:
        if path == "|":
            parts.append(path)
            continue
        stat = os.stat(path)
        parts.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return f"{Path(bold_paths[0]).name.split('_', 1)[0]}_{digest}"


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` holds a complete prepared subject of this format version."""
    return _format_version(Path(path)) == FORMAT_VERSION


def cache_bytes(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...],
    dtype: str = "float32",
) -> int:
    """Bytes a prepared copy of the subject will take (an upper bound: every in-mask voxel).

    Reads the NIfTI headers and the (small) brain masks only.
    """
    shape = nb.load(bold_paths[0]).shape[:3]
    if mask_paths:
        inside = np.ones(shape, dtype=bool)
        for path in mask_paths:
            inside &= np.asanyarray(nb.load(path).dataobj) > 0
        n_voxels = int(inside.sum())
    else:
        n_voxels = int(np.prod(shape))
    n_time = sum(int(nb.load(p).shape[3]) for p in bold_paths)
    item = 2 if dtype == "int16" else 4
    # data, then scale, norm, voxels (int64) and sd, run_norm per run
    return n_voxels * (n_time * item + 4 + 4 + 8 + 8 * len(bold_paths)) + 4096


def preparation_bytes(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...],
    dtype: str = "float32",
) -> int:
    """Peak memory of the arrays :func:`prepare_subject` holds for the subject (a bound).

    The runs are decoded into one float32 array whatever the cache's type, beside the
    reader's two blocks of the whole grid; int16 adds the quantized copy (half the
    float32 array).  Measured on a GSP1000-shaped subject: 1.16x the float32 array for
    float32, 1.37x for int16, besides the blocks.  The masks and voxel orders are counted
    as 16 bytes per grid voxel; the interpreter and the compiled kernels come on top.
    """
    header = nb.load(bold_paths[0])
    grid = int(np.prod(header.shape[:3]))
    blocks = 2 * BLOCK_VOLUMES * grid * header.get_data_dtype().itemsize
    decoded = cache_bytes(bold_paths, mask_paths, "float32")
    return int(decoded * (1.7 if dtype == "int16" else 1.2)) + blocks + 16 * grid


def open_prepared(path: str | Path) -> PreparedSubject:
    """Open a prepared subject written by :func:`prepare_subject`.

    A cache of another format version is rebuilt first from the files its
    ``meta.json`` names; a streamed record (``store_data=False``) is decoded again
    from its sources into memory.

    Raises
    ------
    MissingInputError
        When an outdated cache must be rebuilt but its BOLD files are gone.
    """
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if int(meta.get("format_version", 1)) != FORMAT_VERSION or meta.get("streamed"):
        missing = [p for p in meta["bold"] + meta.get("masks", []) if not Path(p).exists()]
        if missing:
            raise MissingInputError(
                f"{path}: prepared data to rebuild or stream, and its source {missing[0]} "
                "is gone; delete this folder (or the work directory) and run again."
            )
    if meta.get("streamed"):
        subject = stream_subject(meta["bold"], meta.get("masks", []),
                                 meta.get("dtype", "float32"))
        if not np.array_equal(subject.voxels, np.load(path / "voxels.npy")):
            raise InputDataError(f"{meta['bold'][0]}: its valid voxels changed since {path} "
                                 "was written; delete that folder and run again.")
        return replace(subject, path=path, meta=meta)
    if int(meta.get("format_version", 1)) != FORMAT_VERSION:
        prepare_subject(meta["bold"], meta.get("masks", []), path, meta.get("dtype", "float32"))
        meta = json.loads((path / "meta.json").read_text())
    return PreparedSubject(
        path=path,
        data=np.load(path / "data.npy", mmap_mode="r"),
        scale=np.load(path / "scale.npy"),
        norm=np.load(path / "norm.npy"),
        run_norm=np.load(path / "run_norm.npy"),
        sd=np.load(path / "sd.npy"),
        voxels=np.load(path / "voxels.npy"),
        meta=meta,
    )


def stream_subject(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...] = (),
    dtype: str = "float32", scratch: Scratch | None = None,
) -> PreparedSubject:
    """A subject decoded once from its files into memory, as a prepared copy would read.

    For ``--no-cache``: the same arrays (the same values) as :func:`prepare_subject`
    followed by :func:`open_prepared`, without writing them anywhere.

    Parameters
    ----------
    bold_paths, mask_paths : list of str
        See :func:`load_subject`.
    dtype : {'float32', 'int16'}
        The values a prepared copy of this type would hold (int16: quantized rows).
    scratch : Scratch, optional
        Decode into its buffers: the subject's float32 data are then valid only until
        the scratch's next use (one subject at a time, as a streaming pass reads them).

    Returns
    -------
    PreparedSubject
        In memory; ``path`` is the first BOLD run.
    """
    data, voxels, n_volumes, sd, norms = _load_standardized(bold_paths, mask_paths, scratch)
    arrays = _stored_arrays(data, n_volumes, dtype, norms, scratch)
    img = nb.load(bold_paths[0])  # the header only
    meta = {"format_version": FORMAT_VERSION, "shape": [int(n) for n in img.shape[:3]],
            "affine": np.asarray(img.affine).tolist(), "n_volumes": list(n_volumes),
            "dtype": dtype, "bold": [str(p) for p in bold_paths],
            "masks": [str(p) for p in mask_paths], "streamed": True}
    return PreparedSubject(path=Path(bold_paths[0]), voxels=voxels, sd=sd, meta=meta,
                           **arrays)


def prepared_voxels(path: str | Path) -> tuple[np.ndarray, dict]:
    """A prepared subject's valid voxels and ``meta.json``, without reading its data."""
    path = Path(path)
    return np.load(path / "voxels.npy"), json.loads((path / "meta.json").read_text())


def valid_mask(prepared: PreparedSubject) -> np.ndarray:
    """Return the subject's valid voxels as a 3-D boolean array."""
    shape = tuple(prepared.meta["shape"])
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[prepared.voxels] = True
    return mask.reshape(shape)
