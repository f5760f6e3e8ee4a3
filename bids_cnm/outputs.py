"""What a run writes: participant z-maps and the group-level network maps.

The file names are documented in ``docs/outputs.md``; this module is the only
place that composes them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm.io.derivatives import DerivativesWriter, unmask, write_tsv
from bids_cnm.seeds import Seeds, seed_label
from bids_cnm.stats.overlap import overlap_maps, threshold_label
from bids_cnm.stats.peaks import find_peaks

LOGGER = logging.getLogger("bids_cnm.outputs")

STAT_DESCRIPTIONS = {
    "r": "Mean Pearson correlation across connectome subjects between the seed's mean "
    "time course and each voxel.",
    "z": "Mean Fisher z (arctanh r) across connectome subjects.",
    "t": "One-sample t statistic of Fisher z against 0 across connectome subjects "
    "(df = n_subjects - 1).",
}
OVERLAP_DESCRIPTIONS = {
    "overlap": "Signed overlap of thresholded seed networks: (n_positive - n_negative) / "
    "n_studies, where a study's network is sign(t) at |t| > threshold.",
    "posoverlap": "Fraction of studies whose network is positive (t > threshold).",
    "negoverlap": "Fraction of studies whose network is negative (t < -threshold).",
}


def grid_entities(task: str | None, space: str, res: str | None) -> dict:
    """Entities shared by every map of a run."""
    return {"task": task, "space": space, "res": res}


def write_participant_maps(
    writer: DerivativesWriter,
    label: str,
    zmaps: np.ndarray,
    voxels: np.ndarray,
    seeds: Seeds,
    entities: dict,
    sources: list[str],
    provenance: dict,
) -> list[Path]:
    """Write one subject's Fisher-z map of every seed.

    Parameters
    ----------
    zmaps : ndarray, shape (V, K)
        Over the subject's valid voxels ``voxels``.
    provenance : dict
        Recorded in every sidecar (settings and seeds digests) so the group level
        can tell whether the maps match its own settings.
    """
    paths = []
    for k, seed_id in enumerate(seeds.ids):
        paths.append(
            writer.write_map(
                dict(entities, sub=label, seed=seed_id, stat="z"),
                unmask(zmaps[:, k], voxels, seeds.shape),
                seeds.affine,
                f"Fisher z of the correlation between seed {seed_id} and every voxel.",
                sources,
                **provenance,
            )
        )
    return paths


def write_seeds(writer: DerivativesWriter, seeds: Seeds, entities: dict) -> list[Path]:
    """Write every seed's mask and ``seeds.tsv``."""
    base = {k: v for k, v in entities.items() if k != "task"}
    paths = []
    for k, seed_id in enumerate(seeds.ids):
        row = seeds.table.iloc[k]
        paths.append(
            writer.write_map(
                dict(base, seed=seed_id),
                seeds.mask(k).astype(np.uint8),
                seeds.affine,
                f"Seed {seed_id}: {seeds.diameter:g} mm spheres at the coordinates of "
                f"study '{row['study']}' (set '{row['set']}'), united.",
                [],
                suffix="mask",
                Coordinates=row["coordinates"],
                SphereDiameter=seeds.diameter,
            )
        )
    table = seeds.table.copy()
    table.insert(5, "diameter_mm", seeds.diameter)
    paths.append(write_tsv(writer.root / "seeds.tsv", table))
    return paths


def write_group_maps(
    writer: DerivativesWriter,
    results: dict[str, np.ndarray],
    voxels: np.ndarray,
    seeds: Seeds,
    entities: dict,
    thresholds: Iterable[float],
    n_subjects: int,
    sources: list[str],
) -> list[Path]:
    """Write the seed maps (r, z, t), overlap maps per set and threshold, and peaks.

    Parameters
    ----------
    results : dict
        ``r``, ``z``, ``t`` arrays of shape (V, K) over ``voxels``.
    voxels : ndarray
        Flat indices of the analysis mask.
    thresholds : iterable of float
        |t| thresholds.
    """
    shape, affine = seeds.shape, seeds.affine
    paths = []
    for k, seed_id in enumerate(seeds.ids):
        for stat in ("r", "z", "t"):
            values = results[stat][:, k]
            if stat == "t":
                # a seed voxel with itself has zero variance; keep it finite on disk
                big = np.finfo(np.float32).max
                values = np.clip(np.nan_to_num(values, posinf=big, neginf=-big), -big, big)
            paths.append(
                writer.write_map(
                    dict(entities, seed=seed_id, stat=stat),
                    unmask(values, voxels, shape),
                    affine,
                    STAT_DESCRIPTIONS[stat],
                    sources,
                    NumberOfSubjects=n_subjects,
                    Seed=seed_id,
                    Study=seeds.table["study"].iloc[k],
                )
            )
    for set_name, members in seeds.table.groupby("set", sort=False):
        columns = members.index.to_numpy()
        for threshold in thresholds:
            maps = overlap_maps(results["t"][:, columns], threshold)
            ents = dict(entities, set=seed_label(set_name), thresh=threshold_label(threshold))
            peak_tables = []
            for desc, values in maps.items():
                path = writer.write_map(
                    dict(ents, desc=desc),
                    unmask(values, voxels, shape),
                    affine,
                    OVERLAP_DESCRIPTIONS[desc],
                    sources,
                    Threshold=threshold,
                    NumberOfStudies=len(columns),
                    Studies=list(members["study"]),
                    NumberOfSubjects=n_subjects,
                )
                paths.append(path)
                peaks = find_peaks(nb.load(path))
                peaks.insert(0, "map", desc)
                peak_tables.append(peaks)
            peaks_path = writer.path(ents, "peaks", ".tsv")
            paths.append(write_tsv(peaks_path, pd.concat(peak_tables, ignore_index=True)))
    return paths
