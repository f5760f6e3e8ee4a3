"""Prepared time series: each subject's masked, standardized BOLD in a compact file.

Decoding gzipped NIfTI costs far more than the connectivity itself, so every
subject is decoded once into a memory-mappable copy in the work directory and
all analyses (any seeds, any number of re-runs) read that copy.

Layout of a prepared subject (a folder):

``data.npy``
    ``(V, T)`` array, voxel-major, each row a voxel's time series after every run
    was standardized (zero mean, unit variance over its volumes) and the runs
    concatenated.  ``float32`` (default, exact) or ``int16`` with a per-voxel scale.
``scale.npy``
    ``(V,)`` float32: multiply a row of ``data`` by it to get standardized values
    (ones for float32).
``norm.npy``
    ``(V,)`` float32: the Euclidean norm of each centred, dequantized row; a
    centred Pearson correlation divides by it (so quantization does not bias r).
``voxels.npy``
    ``(V,)`` int64 flat (C-order) indices of the voxels into the 3-D grid.
``meta.json``
    shape, affine, number of volumes per run, source files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm.errors import InputDataError

_INT16_MAX = 32767.0


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
    mean = data.mean(axis=1, dtype=np.float64)
    data -= mean[:, None].astype(data.dtype)
    # a second pass after centring is exact even when the mean is large (BOLD ~ 1e3)
    std = np.sqrt(np.einsum("ij,ij->i", data, data, dtype=np.float64) / data.shape[1])
    data /= std[:, None].astype(data.dtype)
    return data


def load_subject(
    bold_paths: list[str] | tuple[str, ...], mask_paths: list[str] | tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, list[int]]:
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
    """
    shape = nb.load(bold_paths[0]).shape[:3]
    valid = np.ones(shape, dtype=bool)
    for path in mask_paths:
        valid &= np.asanyarray(nb.load(path).dataobj) > 0
    runs = []
    for path in bold_paths:
        img = nb.load(path)
        try:
            volume = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:
            raise InputDataError(f"{path}: cannot read the image data ({exc}).") from exc
        run = volume[valid]  # (V_candidates, T) copy of in-mask voxels only
        del volume
        finite = np.isfinite(run).all(axis=1)
        varies = run.max(axis=1) > run.min(axis=1)
        runs.append((run, finite & varies))
    # a voxel is valid only if it is finite and varies in every run
    keep = np.logical_and.reduce([ok for _, ok in runs])
    if not keep.any():
        raise InputDataError(
            f"{bold_paths[0]}: no voxel with a varying, finite time series inside "
            "the brain mask; check the BOLD file and its desc-brain_mask."
        )
    voxels = np.flatnonzero(valid.ravel())[keep]
    data = np.concatenate([standardize(run[keep]) for run, _ in runs], axis=1)
    return data, voxels.astype(np.int64), [run.shape[1] for run, _ in runs]


def quantize(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize standardized rows to int16 with one scale per row.

    Returns
    -------
    q : ndarray of int16
    scale : ndarray of float32
        ``q * scale[:, None]`` approximates ``data``; the error is at most half a
        step, ``max|row| / 65534``.
    """
    peak = np.abs(data).max(axis=1)
    scale = (peak / _INT16_MAX).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.rint(data / scale[:, None]).astype(np.int16)
    return q, scale


@dataclass(frozen=True)
class PreparedSubject:
    """A prepared subject opened for reading (arrays are memory maps)."""

    path: Path
    data: np.ndarray
    scale: np.ndarray
    norm: np.ndarray
    voxels: np.ndarray
    meta: dict

    @property
    def n_volumes(self) -> int:
        """Number of concatenated volumes."""
        return int(self.data.shape[1])


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)


def prepare_subject(
    bold_paths: list[str] | tuple[str, ...],
    mask_paths: list[str] | tuple[str, ...],
    out_dir: str | Path,
    dtype: str = "float32",
) -> Path:
    """Write a subject's prepared time series to ``out_dir`` (atomically).

    Parameters
    ----------
    bold_paths, mask_paths : list of str
        See :func:`load_subject`.
    out_dir : path
        Folder to create; a complete one is left untouched (resume).
    dtype : {'float32', 'int16'}
        Storage type of the time series (float32 exact; int16 half the bytes).

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").exists():
        return out_dir
    data, voxels, n_volumes = load_subject(bold_paths, mask_paths)
    if dtype == "int16":
        stored, scale = quantize(data)
        deq = stored.astype(np.float32) * scale[:, None]
    elif dtype == "float32":
        stored, scale, deq = data, np.ones(len(data), dtype=np.float32), data
    else:
        raise ValueError(f"unknown cache dtype {dtype!r}; use 'int16' or 'float32'")
    deq = deq - deq.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", deq, deq, dtype=np.float64)).astype(np.float32)
    del deq
    img = nb.load(bold_paths[0])
    meta = {
        "shape": [int(n) for n in img.shape[:3]],
        "affine": np.asarray(img.affine).tolist(),
        "n_volumes": n_volumes,
        "dtype": dtype,
        "bold": [str(p) for p in bold_paths],
        "masks": [str(p) for p in mask_paths],
    }
    # build next to the target and rename, so a kill never leaves a half-written copy
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_npy(tmp, "data.npy", stored)
    _save_npy(tmp, "scale.npy", scale)
    _save_npy(tmp, "norm.npy", norm)
    _save_npy(tmp, "voxels.npy", voxels)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def open_prepared(path: str | Path) -> PreparedSubject:
    """Open a prepared subject written by :func:`prepare_subject`."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    return PreparedSubject(
        path=path,
        data=np.load(path / "data.npy", mmap_mode="r"),
        scale=np.load(path / "scale.npy"),
        norm=np.load(path / "norm.npy"),
        voxels=np.load(path / "voxels.npy"),
        meta=meta,
    )


def valid_mask(prepared: PreparedSubject) -> np.ndarray:
    """Return the subject's valid voxels as a 3-D boolean array."""
    shape = tuple(prepared.meta["shape"])
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[prepared.voxels] = True
    return mask.reshape(shape)
