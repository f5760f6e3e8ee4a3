"""Seeds: spheres at MNI coordinates on the connectome grid, united per study.

A seed is a set of voxels.  The reference study (Ji et al. 2025) puts a 6 mm
diameter sphere at every reported coordinate and unites one study's spheres into
one study-level seed.  A voxel belongs to a sphere when its centre lies within
the radius of the coordinate; when no voxel centre does (a small sphere between
grid points), the nearest voxel stands for the coordinate, so every coordinate
contributes at least one voxel.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from bids_cnm.errors import InputDataError

LOGGER = logging.getLogger("bids_cnm.engine.seeds")


SEED_COLUMNS = (
    "id", "set", "study", "variant", "n_coordinates", "coordinates", "diameter_mm", "voxels",
)
_NOT_METADATA = frozenset({"study", "x", "y", "z", "set", "space", "source_row"})


class CoordinateOutsideMaskWarning(UserWarning):
    """A coordinate's sphere has no voxel inside the analysis mask."""


def sphere_voxels(
    center_mm: np.ndarray,
    diameter_mm: float,
    shape: tuple[int, ...],
    affine: np.ndarray,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """Return the flat indices of the voxels of one sphere.

    Parameters
    ----------
    center_mm : array of 3 floats
        Centre in world (MNI mm) coordinates.
    diameter_mm : float
        Sphere diameter.
    shape : tuple of int
        Grid shape (3-D).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine (flipped, anisotropic or oblique axes allowed).
    support : ndarray of bool, optional
        Flat (C-order) or 3-D mask of the voxels a sphere may hold (the analysis
        mask); the sphere is cut to it *before* the nearest-voxel fallback.

    Returns
    -------
    ndarray of int64
        Sorted flat (C-order) indices of the voxels whose centre is within the
        radius (a relative tolerance of 1e-9 keeps voxels exactly on the
        surface) and inside ``support``.  When there is none, the fallback: the
        nearest voxel of ``support`` among the voxels within one step of the
        centre along every axis (the corners of the grid cell that holds the
        centre, plus the neighbours of a centre exactly on a voxel or on the
        grid's edge); ties in distance go to the voxel
        that rounding the continuous voxel index gives (``numpy.rint``, half to
        even), so no direction is favoured.  Empty when the centre lies more than
        one voxel outside the grid or no corner voxel is in ``support``.
    """
    center = np.asarray(center_mm, dtype=float).reshape(3)
    affine = np.asarray(affine, dtype=float)
    shape = tuple(int(n) for n in shape[:3])
    flat_support = None if support is None else np.asarray(support, dtype=bool).ravel()
    radius = diameter_mm / 2.0
    inv = np.linalg.inv(affine)
    center_vox = inv[:3, :3] @ center + inv[:3, 3]
    # a ball of radius r spans r * ||row i of inv(A)|| voxels along axis i (any affine)
    half = radius * np.linalg.norm(inv[:3, :3], axis=1)
    lo = np.maximum(np.floor(center_vox - half).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(center_vox + half).astype(int) + 1, np.asarray(shape) - 1)
    if np.any(center_vox < -1) or np.any(center_vox > np.asarray(shape)) or np.any(lo > hi):
        return np.empty(0, dtype=np.int64)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    dist = np.linalg.norm(grid @ affine[:3, :3].T + affine[:3, 3] - center, axis=1)
    flat = np.ravel_multi_index(grid.T, shape).astype(np.int64)
    usable = np.ones(len(grid), dtype=bool) if flat_support is None else flat_support[flat]
    inside = usable & (dist <= radius * (1 + 1e-9))
    if not inside.any():
        # the voxels within one step of the centre along every axis (the corners of
        # its grid cell), cut to the support first
        near = np.all(np.abs(grid - center_vox) <= 1 + 1e-9, axis=1)
        candidates = np.flatnonzero(near & usable)
        if len(candidates) == 0:
            return np.empty(0, dtype=np.int64)
        nearest = dist[candidates] <= dist[candidates].min() * (1 + 1e-9) + 1e-12
        tied = candidates[nearest]
        # among equidistant corners, the one np.rint picks (half to even): unbiased
        off_round = np.abs(grid[tied] - np.rint(center_vox)).sum(axis=1)
        inside = np.zeros(len(grid), dtype=bool)
        inside[tied[np.argmin(off_round)]] = True
    return np.sort(flat[inside])


def seed_label(text: str) -> str:
    """Turn a study name into a BIDS label (letters and digits only)."""
    label = re.sub(r"[^a-zA-Z0-9]", "", str(text))
    return label or "seed"


@dataclass(frozen=True)
class Seeds:
    """Seed masks on one grid.

    Attributes
    ----------
    table : DataFrame
        One row per seed: ``id``, ``set``, ``study``, ``n_coordinates``,
        ``coordinates`` (``x,y,z`` triples joined by ``;``), ``voxels``.
    voxels : list of ndarray
        Flat voxel indices of every seed (in table order).
    shape : tuple of int
    affine : ndarray
    diameter : float
    """

    table: pd.DataFrame
    voxels: list[np.ndarray]
    shape: tuple[int, int, int]
    affine: np.ndarray
    diameter: float

    @property
    def ids(self) -> list[str]:
        """Seed ids (BIDS labels)."""
        return list(self.table["id"])

    def __len__(self) -> int:
        return len(self.voxels)

    def mask(self, index: int) -> np.ndarray:
        """3-D boolean mask of seed ``index``."""
        out = np.zeros(int(np.prod(self.shape)), dtype=bool)
        out[self.voxels[index]] = True
        return out.reshape(self.shape)

    def weights(self, positions: np.ndarray, n_rows: int) -> sparse.csr_matrix:
        """Averaging matrix ``(K, n_rows)`` over the seeds' voxels.

        Parameters
        ----------
        positions : ndarray of int64
            Flat grid index of every row of a subject's data (sorted).
        n_rows : int
            Number of rows of that data.

        Returns
        -------
        scipy.sparse.csr_matrix
            Row ``k`` holds ``1/n`` at the ``n`` rows inside seed ``k``; a
            seed voxel missing from the data is left out of the average.
        """
        positions = np.asarray(positions, dtype=np.int64)
        sizes = [len(v) for v in self.voxels]
        # one sorted search for all seeds' voxels at once (positions are sorted)
        vox = np.concatenate([np.asarray(v, dtype=np.int64) for v in self.voxels])
        seed_of = np.repeat(np.arange(len(sizes)), sizes)
        pos = np.minimum(np.searchsorted(positions, vox), max(len(positions) - 1, 0))
        hit = positions[pos] == vox if len(positions) else np.zeros(len(vox), dtype=bool)
        counts = np.bincount(seed_of[hit], minlength=len(sizes))
        for k in np.flatnonzero(counts == 0):
            raise InputDataError(
                f"seed '{self.table['id'].iloc[k]}' (study "
                f"'{self.table['study'].iloc[k]}') has no voxel with valid data in "
                "this subject; check the subject's brain mask and BOLD coverage."
            )
        per_seed = (1.0 / counts).astype(np.float32)
        return sparse.csr_matrix(
            (per_seed[seed_of[hit]], (seed_of[hit], pos[hit])), shape=(len(sizes), n_rows)
        )


def make_seeds(
    coordinates: pd.DataFrame,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    support: np.ndarray | None = None,
    diameter: float = 6.0,
    per: str = "study",
    source: str = "coordinates",
    variant: str = "main",
    id_suffix: str = "",
) -> Seeds:
    """Build seeds from a coordinate table.

    Parameters
    ----------
    coordinates : DataFrame
        Validated table (``study``, ``x``, ``y``, ``z``, ``set``, ``source_row``).
    shape, affine
        The connectome grid.
    support : ndarray of bool, optional
        Voxels where seeds may lie (the brain masks' intersection); spheres are
        cut to it.
    diameter : float
        Sphere diameter in mm.
    per : {'study', 'coordinate'}
        One seed per study (spheres united) or one per coordinate.
    source : str
        File name used in messages.
    variant : str
        Recorded in the table's ``variant`` column (``main`` for the analysis
        the settings ask for; e.g. ``d3mm`` or ``percoord`` for sensitivity
        variants that share the same pass over the connectome).
    id_suffix : str
        Appended to every seed id (keeps variants' ids unique).

    Returns
    -------
    Seeds
        The table also carries every metadata column of the coordinate table
        (e.g. ``subtype``, ``modality``), one value per seed: the distinct values
        of the seed's rows joined by ``+``.
    """
    if per not in ("study", "coordinate"):
        raise ValueError(f"per must be 'study' or 'coordinate', not {per!r}")
    flat_support = None if support is None else np.asarray(support, dtype=bool).ravel()
    rows = []
    voxel_sets = []
    used: dict[str, int] = {}
    table = coordinates.reset_index(drop=True)
    meta_columns = [c for c in table.columns if c not in _NOT_METADATA]
    group_keys = ["set", "study"] if per == "study" else ["set", "study", "source_row"]
    for key, group in table.groupby(group_keys, sort=False):
        set_name, study = key[0], key[1]
        parts = []
        for _, row in group.iterrows():
            vox = sphere_voxels(
                row[["x", "y", "z"]].to_numpy(float), diameter, shape, affine, flat_support
            )
            if len(vox) == 0:
                warnings.warn(
                    f"{source}, row {row.get('source_row', '?')}: coordinate "
                    f"({row['x']:g}, {row['y']:g}, {row['z']:g}) of study '{study}' is "
                    "outside the analysis mask; its sphere adds no voxel.",
                    CoordinateOutsideMaskWarning,
                    stacklevel=2,
                )
            parts.append(vox)
        vox = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
        if len(vox) == 0:
            numbers = [str(r) for r in group.get("source_row", [])]
            rows_text = ("row " if len(numbers) == 1 else "rows ") + ", ".join(numbers)
            raise InputDataError(
                f"{source}, {rows_text}: the seed of study '{study}' (set "
                f"'{set_name}') is empty: all its coordinates are outside the analysis "
                "mask. Check the coordinates' space (MNI vs TAL) and sign conventions, "
                "or remove the study."
            )
        base = seed_label(study)
        if per == "coordinate":
            base += f"c{len([r for r in rows if r['study'] == study and r['set'] == set_name]) + 1}"
        base += id_suffix
        label = base
        if label in used:
            used[base] += 1
            label = f"{base}{set_name if set_name != 'primary' else ''}{used[base]}"
        used.setdefault(label, 1)
        metadata = {
            column: "+".join(sorted({str(v) for v in group[column] if str(v) not in ("", "nan")}))
            for column in meta_columns
        }
        rows.append(
            {
                "id": label,
                "set": set_name,
                "study": study,
                "variant": variant,
                "n_coordinates": len(group),
                "coordinates": ";".join(
                    f"{x:g},{y:g},{z:g}" for x, y, z in group[["x", "y", "z"]].to_numpy(float)
                ),
                "diameter_mm": diameter,
                "voxels": len(vox),
                **metadata,
            }
        )
        voxel_sets.append(vox)
    seeds_table = pd.DataFrame(rows, columns=list(SEED_COLUMNS) + meta_columns)
    LOGGER.info("%d seeds (%s per %s, %g mm spheres)", len(rows), "one", per, diameter)
    return Seeds(seeds_table, voxel_sets, tuple(int(n) for n in shape), np.asarray(affine), diameter)


def seeds_digest(seeds: Seeds) -> str:
    """Digest of the seeds' table and voxels (12 hex digits): equal seeds, equal digest.

    The table (every column) is part of it, so seeds saved by a version with other
    columns are never mistaken for these.
    """
    import hashlib

    h = hashlib.sha256()
    h.update(seeds.table.to_json(orient="records").encode())
    h.update(np.asarray(seeds.shape, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(seeds.affine, dtype=float), 6).tobytes())
    for seed_id, vox in zip(seeds.ids, seeds.voxels):
        h.update(seed_id.encode())
        h.update(np.asarray(vox, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def save_seeds(seeds: Seeds, path: str) -> str:
    """Write seeds to an ``.npz`` file (table as records, voxel lists, grid), atomically.

    Participant jobs of a cluster array write the same file into a shared work
    directory: each writes a private temporary and renames it into place, so no
    job ever reads a half-written file.
    """
    import os
    import tempfile

    arrays = {f"voxels_{k}": v for k, v in enumerate(seeds.voxels)}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".seeds.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(
            tmp,
            table=seeds.table.to_json(orient="records"),
            shape=np.asarray(seeds.shape),
            affine=seeds.affine,
            diameter=seeds.diameter,
            **arrays,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_seeds(path: str) -> Seeds:
    """Read seeds written by :func:`save_seeds`."""
    import io

    with np.load(path) as f:
        table = pd.read_json(io.StringIO(str(f["table"])), orient="records", dtype=False)
        if table.empty:
            table = pd.DataFrame(columns=list(SEED_COLUMNS))
        table["id"] = table["id"].astype(str)
        table["study"] = table["study"].astype(str)
        table["set"] = table["set"].astype(str)
        for column in table.columns:
            if column not in ("n_coordinates", "voxels", "diameter_mm"):
                table[column] = table[column].fillna("").astype(str)
        voxels = [f[f"voxels_{k}"] for k in range(len(table))]
        return Seeds(
            table,
            voxels,
            tuple(int(n) for n in f["shape"]),
            f["affine"],
            float(f["diameter"]),
        )


def concat_seeds(*parts: Seeds) -> Seeds:
    """Concatenate seed sets on one grid into one, so one pass serves them all.

    Raises
    ------
    ValueError
        When the grids differ or seed ids collide.
    """
    first = parts[0]
    for other in parts[1:]:
        if other.shape != first.shape or not np.allclose(other.affine, first.affine):
            raise ValueError("seeds on different grids cannot be concatenated")
    table = pd.concat([p.table for p in parts], ignore_index=True)
    duplicated = table["id"][table["id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"duplicate seed ids: {', '.join(duplicated)}")
    for column in table.columns:
        if column not in ("n_coordinates", "voxels", "diameter_mm"):
            table[column] = table[column].fillna("").astype(str)
    voxels = [v for p in parts for v in p.voxels]
    return Seeds(table, voxels, first.shape, first.affine, first.diameter)


def seeds_from_masks(
    masks: list[np.ndarray],
    ids: list[str],
    set_name: str,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    studies: list[str] | None = None,
    variant: str = "main",
) -> Seeds:
    """Seeds given as 3-D boolean masks (e.g. DBS volumes of activated tissue).

    Raises
    ------
    InputDataError
        When a mask is empty.
    """
    voxels = []
    for seed_id, mask in zip(ids, masks):
        vox = np.flatnonzero(np.asarray(mask, dtype=bool).ravel()).astype(np.int64)
        if len(vox) == 0:
            raise InputDataError(f"the seed mask of '{seed_id}' is empty on the connectome grid.")
        voxels.append(vox)
    table = pd.DataFrame(
        {
            "id": [seed_label(i) for i in ids],
            "set": set_name,
            "study": studies or list(ids),
            "variant": variant,
            "n_coordinates": 0,
            "coordinates": "",
            "diameter_mm": 0.0,
            "voxels": [len(v) for v in voxels],
        }
    )
    return Seeds(table, voxels, tuple(int(n) for n in shape), np.asarray(affine), 0.0)
