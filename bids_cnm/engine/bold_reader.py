"""Decode BOLD runs straight into in-mask ``(V, T)`` float32 arrays, at the inflater's speed.

Preparing a subject is dominated by gzip decoding.  This reader

* inflates with python-isal (``isal.igzip``, 2-3x zlib) when it is installed and
  falls back to the standard library's ``gzip`` otherwise;
* streams each run in blocks of a few volumes into two reused buffers, so the full
  4-D float array (0.9 GB for a 2 mm GSP run) never exists in memory; a thread
  inflates the next block while the caller works on the current one (the inflater
  releases the GIL), so decoding and copying overlap when a core is free;
* copies only the in-mask voxels of each block into a preallocated ``(V, T)``
  float32 array, applying ``scl_slope``/``scl_inter`` on the way.

The copy visits the voxels in file order (NIfTI is x-fastest) so reads are
sequential, and writes a block's volumes (:data:`BLOCK_VOLUMES`) side by side into
each output row; rows are in C order of the 3-D grid (``np.flatnonzero(mask.ravel())``), the
order the prepared cache uses.

Memory the process has not touched yet costs a page fault per page on first write:
on the development VM, 0.3-0.5 s of system time for a GSP1000 subject's 220 MB
array, a third of decoding it.  A :class:`Scratch` passed to the readers keeps
their buffers from one subject to the next, so a batch of subjects pays it once.

Every run is read to the end of its stream, past the voxel data: gzip checks a
member's CRC-32 and length only there, so a run that decodes without
:class:`UnreadableData` is proven intact, and preparing a subject is also the proof
that its files are readable (no separate pass over the data is needed).

Public: :class:`Scratch`, :func:`read_masked_runs`, :func:`read_concatenated_runs`,
:func:`valid_voxels` (rows of decoded runs), :func:`valid_mask` (3-D, streamed),
:func:`open_decompressed` and :func:`is_gzip`.
"""

from __future__ import annotations

import gzip
import io
import queue
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nb
import numpy as np
from numba import njit

from bids_cnm.errors import InputDataError, ReadError

try:  # python-isal: the same DEFLATE format, decoded with Intel ISA-L
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - exercised only without isal installed
    _igzip = _isal_zlib = None

#: volumes decoded per block.  A block is inflated into memory and then gathered into
#: the rows of the output, so it should stay near the cache: at 2 mm (902,629 voxels) a
#: volume is 3.6 MB, and 16 volumes (58 MB, one 64-byte line of each output row) read a
#: GSP1000-shaped subject in 2.9-3.4 s against 1.9-2.0 s for 4 volumes (best of two,
#: same bytes; 2 volumes are no faster) on the 2-core development VM
BLOCK_VOLUMES = 4

#: what a damaged stream raises: BadGzipFile (an OSError: CRC, length, magic),
#: EOFError (the stream ends early) and the inflaters' own errors (a bad DEFLATE block)
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error) + (
    (_isal_zlib.error,) if _isal_zlib is not None else ())

#: the advice of every unreadable-data message (the up-front check gives the same)
UNREADABLE_FIX = "the file is truncated or corrupt; copy it again or rerun its preprocessing"


class Scratch:
    """Buffers the readers reuse from one subject to the next (one process, one at a time).

    An array handed out by :meth:`array` is a view of a buffer that the next request
    under the same name overwrites; a caller keeps what it needs before asking again.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialized array of ``shape`` and ``dtype`` in the buffer ``name``.

        The buffer grows when a request does not fit; it never shrinks.
        """
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)


class UnreadableData(ReadError):
    """A run's data cannot be decoded to the end of the file.

    The message is the one :func:`bids_cnm.io.readable.check_readable` gives, so a
    damaged file reads the same whether it is found up front or while it is decoded.

    Parameters
    ----------
    path : path
        The damaged file.
    reason : str
        What went wrong: the exception's type name, or the bytes the file holds.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: cannot read the image data ({reason}); {UNREADABLE_FIX}.")
        self.path = str(path)


def decoder_name() -> str:
    """Name of the inflater in use (``'isal'`` or ``'zlib'``)."""
    return "isal" if _igzip is not None else "zlib"


def is_gzip(path: str | Path) -> bool:
    """Whether the file starts with gzip's magic bytes (its name may say otherwise)."""
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def open_decompressed(path: str | Path) -> io.BufferedIOBase:
    """Open a NIfTI file for sequential reading of its decompressed bytes.

    Parameters
    ----------
    path : path
        ``.nii.gz`` (inflated with isal when available, else zlib) or ``.nii``.

    Returns
    -------
    file object
        Binary, read-only; supports ``readinto``.
    """
    path = Path(path)
    if not is_gzip(path):
        return open(path, "rb")
    if _igzip is not None:
        return _igzip.open(path, "rb")
    return gzip.open(path, "rb")


def _read_exact(f, view: memoryview) -> int:
    """Fill ``view`` from ``f``; the bytes read (fewer only when the stream ended)."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _read_header(f, path: Path) -> tuple[nb.Nifti1Header, int]:
    """Parse the NIfTI-1/2 header (and skip extensions) from a decompressed stream.

    Returns the header and the offset of the voxel data.
    """
    raw = f.read(348)
    if len(raw) < 348:
        raise InputDataError(f"{path}: not a NIfTI file (only {len(raw)} bytes).")
    sizeof = int.from_bytes(raw[:4], "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(raw[:4], "big")
    if sizeof == 540:
        raw += f.read(540 - 348)
        klass = nb.Nifti2Header
    elif sizeof == 348:
        klass = nb.Nifti1Header
    else:
        raise InputDataError(f"{path}: not a NIfTI-1 or NIfTI-2 file (header size {sizeof}).")
    header = klass.from_fileobj(io.BytesIO(raw + b"\0" * 4), check=False)
    offset = int(header["vox_offset"])
    if offset < len(raw):
        offset = len(raw) + 4  # a .nii without vox_offset set: data after the 4-byte extender
    f.read(offset - len(raw))  # extensions: not needed here
    return header, offset


@njit(nogil=True, cache=True)
def _copy_block(block, n_used, src, dst, out, t0, slope, inter):  # pragma: no cover - numba
    # src: file-order offsets of the in-mask voxels (increasing: sequential reads);
    # dst: their rows in the output; a row gets n_used consecutive values at once
    for v in range(src.shape[0]):
        s = src[v]
        r = dst[v]
        for b in range(n_used):
            out[r, t0 + b] = np.float32(block[b, s] * slope + inter)


@njit(nogil=True, cache=True)
def _copy_block_raw(block, n_used, src, dst, out, t0):  # pragma: no cover - numba
    for v in range(src.shape[0]):
        s = src[v]
        r = dst[v]
        for b in range(n_used):
            out[r, t0 + b] = np.float32(block[b, s])


def _voxel_order(mask: np.ndarray | None, shape: tuple[int, int, int]):
    """File-order offsets of the in-mask voxels and the output row of each."""
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    rows = np.flatnonzero(mask.ravel())  # C order: the output order
    fortran = np.ravel_multi_index(np.unravel_index(rows, shape), shape, order="F")
    order = np.argsort(fortran, kind="stable")
    return fortran[order].astype(np.int64), order.astype(np.int64), len(rows)


class _Blocks:
    """A run's header facts and an iterator over blocks of its decoded volumes."""

    def __init__(self, path: str | Path, scratch: Scratch | None = None) -> None:
        self.path = Path(path)
        self.scratch = scratch
        try:
            self._file = open_decompressed(self.path)
        except OSError as exc:
            raise ReadError(f"{self.path}: cannot open ({exc}).") from exc
        try:
            header, self.offset = _read_header(self._file, self.path)
        except DECODE_ERRORS as exc:
            self._file.close()
            raise UnreadableData(self.path, type(exc).__name__) from exc
        dims = header.get_data_shape()
        if len(dims) != 4 or any(int(n) > 1 for n in dims[4:]):
            self._file.close()
            raise InputDataError(f"{self.path}: a BOLD run must be 4-D, found shape {dims}.")
        self.shape = tuple(int(n) for n in dims[:3])
        self.n_volumes = int(dims[3])
        self.dtype = header.get_data_dtype()
        slope, inter = header.get_slope_inter()
        self.slope = 1.0 if slope is None else float(slope)
        self.inter = 0.0 if inter is None else float(inter)
        #: nibabel writes slope 1, inter 0 for float data: no arithmetic then
        self.scaled = (self.slope, self.inter) != (1.0, 0.0)

    def __iter__(self):
        """Yield ``(block, n_used, t0)``: raw volumes ``block[:n_used]`` from volume t0.

        A thread inflates the next block into the other of two buffers while the
        caller works on this one; a block stays valid until the next is requested.
        After the last block the stream is read to its end (gzip checks the CRC-32
        and length of the data only there).

        Raises
        ------
        UnreadableData
            The stream ends early or fails to decode (naming the file).
        """
        n_vox = int(np.prod(self.shape))
        size = min(BLOCK_VOLUMES, self.n_volumes)
        free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(2):
            free.put(np.empty((size, n_vox), dtype=self.dtype) if self.scratch is None
                     else self.scratch.array(f"block{i}", (size, n_vox), self.dtype))
        decoded: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(target=self._decode, args=(free, decoded, size),
                                  name=f"decode {self.path.name}", daemon=True)
        thread.start()
        try:
            while (item := decoded.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                block, n_used, t0 = item
                native = block if self.dtype.isnative else block.astype(
                    self.dtype.newbyteorder("=")
                )
                yield native, n_used, t0
                free.put(block)
        finally:  # also when the caller stops early: the thread waits for a buffer
            free.put(None)
            thread.join()

    def _decode(self, free: queue.SimpleQueue, decoded: queue.SimpleQueue, size: int) -> None:
        """Inflate the run block by block into the free buffers (the decode thread).

        Puts ``(block, n_used, t0)`` per block, then ``None`` after the trailer was
        checked; an exception instead ends the stream (the caller raises it).
        """
        per_volume = int(np.prod(self.shape)) * self.dtype.itemsize
        expected = self.offset + self.n_volumes * per_volume
        item: BaseException | None = None  # what ends the stream: None when intact
        try:
            with self._file as f:
                for t0 in range(0, self.n_volumes, size):
                    block = free.get()
                    if block is None:  # the caller stopped: nobody reads on
                        return
                    n_used = min(size, self.n_volumes - t0)
                    flat = memoryview(block.reshape(-1).view(np.uint8))
                    done = _read_exact(f, flat[: n_used * per_volume])
                    if done < n_used * per_volume:
                        held = self.offset + t0 * per_volume + done
                        raise UnreadableData(self.path, f"it holds {held} of {expected} bytes")
                    decoded.put((block, n_used, t0))
                # bytes after the data (rare) are allowed; the trailer must check out
                while f.read(1 << 16):
                    pass
        except UnreadableData as exc:
            item = exc
        except DECODE_ERRORS as exc:
            item = UnreadableData(self.path, type(exc).__name__)
        except BaseException as exc:  # noqa: BLE001 - anything else reaches the caller too
            item = exc
        decoded.put(item)


def read_masked_run(
    path: str | Path, mask: np.ndarray | None = None, _order=None,
    out: np.ndarray | None = None, column: int = 0, scratch: Scratch | None = None,
) -> np.ndarray:
    """Decode one 4-D run into its in-mask ``(V, T)`` float32 time series.

    Parameters
    ----------
    path : path
        4-D NIfTI-1/2, gzipped or not, any numeric data type.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to keep (``None``: all); rows follow ``np.flatnonzero(mask.ravel())``.
    out : ndarray of float32, shape (V, >= column + T), optional
        Array to decode into, at columns ``column:column + T`` (several runs of a
        subject side by side without a concatenated copy); a new array when omitted.
    column : int
        First column of ``out`` written.
    scratch : Scratch, optional
        Holds the decode buffers (reused across calls).

    Returns
    -------
    ndarray of float32, shape (V, T)
        Equal to ``np.asarray(nb.load(path).dataobj, dtype=np.float32)[mask]``
        up to float32 rounding of the scaling (a view of ``out`` when given).
    """
    blocks = _Blocks(path, scratch)
    if mask is not None and tuple(mask.shape) != blocks.shape:
        blocks._file.close()
        raise InputDataError(
            f"{path}: grid {blocks.shape} differs from the mask's {tuple(mask.shape)}."
        )
    src, dst, n_rows = _order if _order is not None else _voxel_order(mask, blocks.shape)
    if out is None:
        out, column = np.empty((n_rows, blocks.n_volumes), dtype=np.float32), 0
    elif out.shape[0] != n_rows or out.shape[1] < column + blocks.n_volumes:
        blocks._file.close()
        raise ValueError(f"out of shape {out.shape} cannot hold {n_rows} x "
                         f"{blocks.n_volumes} values from column {column}")
    for block, n_used, t0 in blocks:
        t0 += column
        if blocks.scaled:
            _copy_block(block, n_used, src, dst, out, t0, blocks.slope, blocks.inter)
        else:
            _copy_block_raw(block, n_used, src, dst, out, t0)
    return out[:, column:column + blocks.n_volumes]


@njit(nogil=True, cache=True)
def _update_range(block, n_used, src, low, high, finite):  # pragma: no cover - numba
    # the range of the voxels at file-order offsets src (all of them, or the in-mask ones)
    for b in range(n_used):
        for v in range(src.shape[0]):
            x = np.float64(block[b, src[v]])
            if not np.isfinite(x):
                finite[v] = False
            else:
                if x < low[v]:
                    low[v] = x
                if x > high[v]:
                    high[v] = x


def valid_mask(paths: Sequence[str | Path], mask: np.ndarray | None = None) -> np.ndarray:
    """3-D mask of the voxels finite and varying in every run, in constant memory.

    Streams each run block by block (never holding a run), so it can derive a
    brain mask from a connectome's data at the decoder's speed.

    Parameters
    ----------
    paths : sequence of path
        4-D NIfTI runs on one grid.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to consider (e.g. the brain masks'); the result is False outside it,
        and only its voxels are tracked (a brain is a quarter of the grid).

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        Equal to ``valid_mask(paths) & mask`` when a mask is given.
    """
    keep = None
    keep_shape = None
    src = None
    for path in paths:
        blocks = _Blocks(path)
        n_vox = int(np.prod(blocks.shape))
        keep_shape = keep_shape or blocks.shape
        if keep is not None and keep.size != n_vox:
            blocks._file.close()
            raise InputDataError(f"grid mismatch: {path} has shape {blocks.shape}, "
                                 f"{paths[0]} has {keep_shape}.")
        if src is None:
            if mask is not None and tuple(mask.shape) != blocks.shape:
                blocks._file.close()
                raise InputDataError(
                    f"{path}: grid {blocks.shape} differs from the mask's {tuple(mask.shape)}.")
            src = (np.arange(n_vox, dtype=np.int64) if mask is None else np.flatnonzero(
                np.asarray(mask, dtype=bool).ravel(order="F")).astype(np.int64))
        low = np.full(len(src), np.inf)
        high = np.full(len(src), -np.inf)
        finite = np.ones(len(src), dtype=bool)
        for block, n_used, _ in blocks:
            _update_range(block, n_used, src, low, high, finite)
        # scaling is monotonic (slope != 0), so it cannot make a constant voxel vary
        varies = np.zeros(n_vox, dtype=bool)
        varies[src] = finite & (high > low) & (blocks.slope != 0)
        keep = varies if keep is None else keep & varies
        keep_shape = blocks.shape
    assert keep is not None
    return keep.reshape(keep_shape, order="F")


def read_masked_runs(
    paths: Sequence[str | Path], mask: np.ndarray | None = None
) -> list[np.ndarray]:
    """Decode a subject's runs into in-mask float32 arrays, one ``(V, T_run)`` per run.

    Parameters
    ----------
    paths : sequence of path
        4-D NIfTI runs on one grid (``.nii`` or ``.nii.gz``).
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to keep, e.g. the intersection of the subject's brain masks;
        ``None`` keeps every voxel.  Row ``i`` of every array is the voxel
        ``np.flatnonzero(mask.ravel())[i]``.

    Returns
    -------
    list of ndarray of float32
        One ``(V, T_run)`` array per run, in the order of ``paths``.

    Notes
    -----
    Peak memory is the returned arrays plus one block of
    :data:`BLOCK_VOLUMES` volumes; see :func:`valid_voxels` for the voxels to keep.
    """
    return _read_runs(paths, mask, concatenate=False)[0]


def read_concatenated_runs(
    paths: Sequence[str | Path], mask: np.ndarray | None = None,
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode a subject's runs side by side into one ``(V, T_1 + T_2 + ...)`` array.

    The same values as ``np.concatenate(read_masked_runs(paths, mask), axis=1)``
    without the concatenated copy: each run is decoded straight into its columns.

    Parameters
    ----------
    paths, mask
        See :func:`read_masked_runs`.
    scratch : Scratch, optional
        Reuse its buffers (the decode blocks and the returned array, under the name
        ``"runs"``): the array is then valid until the scratch's next use.

    Returns
    -------
    data : ndarray of float32, shape (V, T)
    n_volumes : list of int
        Volumes of each run, in the order of ``paths``.
    """
    runs, out = _read_runs(paths, mask, concatenate=True, scratch=scratch)
    return out, [r.shape[1] for r in runs]


def _read_runs(
    paths, mask, concatenate: bool, scratch: Scratch | None = None
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Check the runs' grids, then decode each (into one shared array if ``concatenate``)."""
    headers = [nb.load(path) for path in paths]  # headers only: the data are not read
    shape = tuple(int(n) for n in headers[0].shape[:3])
    for path, img in zip(paths, headers):
        this_shape = tuple(int(n) for n in img.shape[:3])
        if this_shape != shape:
            raise InputDataError(
                f"grid mismatch: {path} has shape {this_shape}, {paths[0]} has {shape}."
            )
    order = _voxel_order(mask, shape) if mask is None or mask.shape == shape else None
    out = None
    if concatenate and order is not None:
        n_volumes = [int(img.shape[3]) if len(img.shape) > 3 else 1 for img in headers]
        dims = (order[2], sum(n_volumes))
        out = (np.empty(dims, dtype=np.float32) if scratch is None
               else scratch.array("runs", dims, np.float32))
    runs: list[np.ndarray] = []
    column = 0
    for path in paths:
        runs.append(read_masked_run(path, mask, _order=order, out=out, column=column,
                                    scratch=scratch))
        column += runs[-1].shape[1]
    return runs, out


def valid_voxels(runs: Sequence[np.ndarray]) -> np.ndarray:
    """Rows that are finite and vary in every run (what preparation keeps).

    Parameters
    ----------
    runs : sequence of ndarray, shape (V, T_run)
        The output of :func:`read_masked_runs`.

    Returns
    -------
    ndarray of bool, shape (V,)
    """
    keep = np.ones(runs[0].shape[0], dtype=bool)
    for run in runs:
        # max > min fails for constant rows and (through NaN comparisons) for NaN rows
        with np.errstate(invalid="ignore"):
            keep &= np.isfinite(run).all(axis=1) & (run.max(axis=1) > run.min(axis=1))
    return keep
