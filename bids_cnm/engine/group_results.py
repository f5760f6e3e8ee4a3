"""The group-level results every downstream analysis reads.

One pass over the connectome yields, for every seed (studies, variants,
random relocations, DBS VATs, reference seeds alike), the mean r, mean z and
t-map over the analysis mask.  :class:`GroupResults` bundles them with the seeds'
table so analyses (sensitivity, specificity, validation, DBS) select seeds by
their ``set`` and ``variant`` columns and never touch the connectome again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bids_cnm.engine.seeds import Seeds, load_seeds
from bids_cnm.io.derivatives import unmask
from bids_cnm.io.saved_arrays import write_stacked


@dataclass
class GroupResults:
    """Group-level maps of all seeds over the analysis mask.

    Attributes
    ----------
    seeds : Seeds
        ``seeds.table`` has at least ``id``, ``set``, ``study``, ``variant``.
    voxels : ndarray of int64, shape (V,)
        Flat indices of the analysis mask in the grid ``seeds.shape``.
    r, z, t : ndarray of float32, shape (V, K)
        Mean r, mean Fisher z and one-sample t per voxel and seed (seed order of
        ``seeds.table``).  t is NaN where it is undefined: z equal in every subject
        (e.g. a one-voxel seed with its own voxel); every analysis leaves such
        voxels out (:attr:`undefined`).
    n_subjects : int
    node_values : ndarray, shape (n_subjects, K, N), optional
        Per-subject mean Fisher z of every seed within each ROI node (ROI-to-ROI).
    node_table : list of dict, optional
        One entry per node (``name``, ``network``, ...).
    subjects : list of str, optional
        Connectome subject labels (order of ``node_values``).
    """

    seeds: Seeds
    voxels: np.ndarray
    r: np.ndarray
    z: np.ndarray
    t: np.ndarray
    n_subjects: int
    node_values: np.ndarray | None = None
    node_table: list[dict] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return self.seeds.shape

    @property
    def affine(self) -> np.ndarray:
        """Grid affine."""
        return self.seeds.affine

    @property
    def undefined(self) -> np.ndarray:
        """(V, K) bool: where t is undefined (NaN)."""
        return np.isnan(self.t)

    @property
    def mask(self) -> np.ndarray:
        """The analysis mask as a 3-D boolean array."""
        out = np.zeros(int(np.prod(self.shape)), dtype=bool)
        out[self.voxels] = True
        return out.reshape(self.shape)

    def columns(self, set_name: str | None = None, variant: str | None = "main") -> np.ndarray:
        """Column indices of the seeds of a set and variant (``None`` matches any)."""
        table = self.seeds.table
        keep = np.ones(len(table), dtype=bool)
        if set_name is not None:
            keep &= (table["set"] == set_name).to_numpy()
        if variant is not None:
            keep &= (table["variant"] == variant).to_numpy()
        return np.flatnonzero(keep)

    def volume(self, values: np.ndarray, order: str = "C") -> np.ndarray:
        """Put a (V,) or (V, K) array on the 3-D grid (float32, zeros off the mask).

        Parameters
        ----------
        values : ndarray, shape (V,) or (V, K)
        order : {"C", "F"}
            Memory layout of the result.  ``"F"`` (a (V,) array only) is the voxel order
            of a NIfTI file: the writer then copies the map instead of transposing it.
        """
        if order == "C":
            return unmask(values, self.voxels, self.shape)
        if order != "F" or np.ndim(values) != 1:
            raise ValueError("volume(order='F') takes a (V,) array")
        flat = np.zeros(int(np.prod(self.shape)), dtype=np.float32)
        flat[self._fortran_voxels] = values
        return flat.reshape(self.shape, order="F")

    @cached_property
    def _fortran_voxels(self) -> np.ndarray:
        """``voxels`` as flat indices in Fortran order (computed once: ~2 ms)."""
        return np.ravel_multi_index(np.unravel_index(self.voxels, self.shape), self.shape,
                                    order="F")

    def save(self, path: str | Path, seeds_file: str | Path) -> Path:
        """Write to ``path`` (``.npz``), the maps to an ``.npy`` beside it that :meth:`load` maps.

        ``r``, ``z`` and ``t`` go to ``<stem>_maps.npy``, stacked ``(3, V, K)`` float32,
        written one after the other (no stacked copy); the rest (the seeds' file, the
        voxels, the node values and tables) to the ``.npz``.  Every step after the
        reduce step loads the results: a zip member is read back into new memory after
        its checksum (0.5 s for 200 seeds' maps in each of them), a mapped ``.npy``
        costs nothing until its pages are read.
        """
        path = Path(path)
        extra = {}
        if self.node_values is not None:
            extra["node_values"] = self.node_values
        write_stacked(_maps_path(path),
                      [np.ascontiguousarray(a, dtype=np.float32) for a in (self.r, self.z, self.t)])
        np.savez(
            path, seeds_file=str(seeds_file), voxels=self.voxels, n_subjects=self.n_subjects,
            node_table=json.dumps(self.node_table, default=float),
            subjects=np.asarray(self.subjects, dtype=str), **extra,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> GroupResults:
        """Read results written by :meth:`save` (the maps mapped copy-on-write: changing
        them changes this process's pages only), or by its ``.npz``-only predecessor."""
        path = Path(path)
        with np.load(path) as f:
            seeds = load_seeds(str(f["seeds_file"]))
            if "r" in f:  # written whole into the .npz (a work folder of 2026-11)
                r, z, t = f["r"], f["z"], f["t"]
            else:
                r, z, t = np.load(_maps_path(path), mmap_mode="c")
            return cls(
                seeds=seeds,
                voxels=f["voxels"],
                r=r,
                z=z,
                t=t,
                n_subjects=int(f["n_subjects"]),
                node_values=f.get("node_values"),
                node_table=json.loads(str(f["node_table"])) if "node_table" in f else [],
                subjects=[str(x) for x in f["subjects"]] if "subjects" in f else [],
            )


def _maps_path(path: Path) -> Path:
    """The ``.npy`` of the maps beside a results file."""
    return path.with_name(f"{path.stem}_maps.npy")
