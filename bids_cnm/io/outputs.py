"""What a run writes: participant z-maps and the group-level network maps.

The file names are documented in ``docs/outputs.md``; this module is the only
place that composes them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm.analyses.sensitivity import (
    Variant,
    correlation_matrix,
    enumerate_variants,
    variant_maps,
)
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import Seeds, seed_label
from bids_cnm.io.derivatives import DerivativesWriter, unmask
from bids_cnm.stats.overlap import threshold_label
from bids_cnm.stats.peaks import find_peaks

LOGGER = logging.getLogger("bids_cnm.io.outputs")

STAT_DESCRIPTIONS = {
    "r": "Mean Pearson correlation across connectome subjects between the seed's mean "
    "time course and each voxel.",
    "z": "Mean Fisher z (arctanh r) across connectome subjects.",
    "t": "One-sample t statistic of Fisher z against 0 across connectome subjects "
    "(df = n_subjects - 1); NaN where z is equal in every subject (t undefined, e.g. a "
    "one-voxel seed's own voxel; UndefinedVoxels counts them).",
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
    rows = seeds.table.to_dict("records")  # a row by iloc costs ~0.5 ms, per seed
    for k, seed_id in enumerate(seeds.ids):
        row = rows[k]
        paths.append(
            writer.write_map(
                dict(base, seed=seed_id),
                seeds.mask(k).astype(np.uint8),
                seeds.affine,
                (
                    f"Seed {seed_id}: {row['diameter_mm']:g} mm spheres at the coordinates of "
                    f"study '{row['study']}' (set '{row['set']}'), united."
                    if row["n_coordinates"]
                    else f"Seed {seed_id} (set '{row['set']}') given as a mask."
                ),
                [],
                suffix="mask",
                Coordinates=row["coordinates"],
                SphereDiameter=row["diameter_mm"],
                Set=row["set"],
                Variant=row["variant"],
            )
        )
    paths.append(writer.write_tsv_with_sidecar(
        writer.root / "seeds.tsv", seeds.table,
        "The seeds of the run: one row per seed (its mask is "
        "seeds/<grid>_seed-<id>_mask.nii.gz).", [writer.settings.get("coordinates", "")],
        fallback=lambda column: f"The coordinate table's column '{column}' (first value of "
        "the seed's coordinates).",
        settings=("coordinates", "sphere_diameter", "sphere_diameters", "per_coordinate",
                  "random_relocations", "relocation_mode", "random_seed"),
    ))
    return paths


#: seeds whose columns are made contiguous at once (a few MB of r, z and t each)
SEED_BLOCK = 16


def _seed_columns(results: GroupResults) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Every seed's r, z and t over the mask, as contiguous arrays.

    A seed's column of the (V, K) arrays is strided by K values: reading it voxel by
    voxel misses the cache at every value.  A block of columns transposed at once reads
    each row's values together.
    """
    for start in range(0, results.t.shape[1], SEED_BLOCK):
        block = slice(start, start + SEED_BLOCK)
        rows = {stat: np.ascontiguousarray(getattr(results, stat)[:, block].T)
                for stat in ("r", "z", "t")}
        for j in range(len(rows["t"])):
            yield start + j, {stat: values[j] for stat, values in rows.items()}


def write_seed_maps(
    writer: DerivativesWriter, results: GroupResults, entities: dict, sources: list[str],
    n_threads: int | None = None,
) -> list[Path]:
    """Write every seed's mean r, mean z and t-map (three per seed, in seed order).

    The maps are written by ``n_threads`` threads (default: two where the engine would
    use two, see ``--omp-nthreads``): their deflate and file writes release the GIL, and 200 seeds make
    600 files.  At most two maps per thread are in flight.
    """
    seeds = results.seeds
    # once for all seeds: results.undefined is a fresh (V, K) array at every access
    undefined = results.undefined.sum(axis=0)
    rows = seeds.table.to_dict("records")
    ids = seeds.ids

    def write(k: int, stat: str, values: np.ndarray) -> Path:
        extra = {"UndefinedVoxels": int(undefined[k])} if stat == "t" else {}
        row = rows[k]
        return writer.write_map(
            dict(entities, seed=ids[k], stat=stat),
            # in the file's voxel order: written without a transposing copy
            results.volume(values, order="F"),
            results.affine,
            STAT_DESCRIPTIONS[stat],
            sources,
            NumberOfSubjects=results.n_subjects,
            Seed=ids[k],
            Study=row["study"],
            Set=row["set"],
            Variant=row["variant"],
            **extra,
        )

    if n_threads is None:
        from bids_cnm.engine.connectivity import _n_workers

        n_threads = min(2, _n_workers())  # the engine's rule: --omp-nthreads, the CPUs
    jobs = ((k, stat, columns[stat]) for k, columns in _seed_columns(results)
            for stat in ("r", "z", "t"))
    if n_threads <= 1:
        return [write(*job) for job in jobs]
    paths: list[Path] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(n_threads) as pool:
        for job in jobs:
            if len(pending) >= 2 * n_threads:
                paths.append(pending.popleft().result())
            pending.append(pool.submit(write, *job))
        paths += [future.result() for future in pending]
    return paths


def network_entities(entities: dict, variant: Variant) -> dict:
    """Entities of a variant's overlap maps."""
    return dict(
        entities,
        set=seed_label(variant.set_name),
        variant=variant.entity,
        thresh=threshold_label(variant.threshold),
    )


def network_folder(variant: Variant) -> str:
    """``network/`` for a set's network at any threshold, ``sensitivity/`` for the
    networks of other seeds, subgroups or connectomes."""
    return "network" if variant.entity is None else "sensitivity"


def write_network(
    writer: DerivativesWriter,
    results: GroupResults,
    variant: Variant,
    maps: dict[str, np.ndarray],
    entities: dict,
    sources: list[str],
) -> list[Path]:
    """Write a variant's signed/positive/negative overlap maps and their peaks."""
    ents = network_entities(entities, variant)
    folder = network_folder(variant)
    studies = list(results.seeds.table["study"].iloc[list(variant.columns)])
    paths, peak_tables = [], []
    for desc, values in maps.items():
        volume = results.volume(values, order="F")
        path = writer.write_map(
            dict(ents, desc=desc),
            volume,
            results.affine,
            OVERLAP_DESCRIPTIONS[desc],
            sources,
            folder=folder,
            Threshold=variant.threshold,
            Variant=variant.label,
            NumberOfStudies=len(studies),
            Studies=studies,
            NumberOfSubjects=results.n_subjects,
        )
        paths.append(path)
        # the map in memory, as the file holds it: no reading back and inflating
        peaks = find_peaks(nb.Nifti1Image(volume, results.affine))
        peaks.insert(0, "map", desc)
        peak_tables.append(peaks)
    paths.append(writer.write_table(
        ents, "peaks", pd.concat(peak_tables, ignore_index=True),
        f"Peaks of the clusters of the {variant.label} network's overlap maps.", sources,
        folder=folder, Threshold=variant.threshold,
    ))
    return paths


#: seed sets that are not coordinate sets: no overlap network of their own
NON_NETWORK_SETS = frozenset({"dbs", "reference"})


def write_networks(
    writer: DerivativesWriter,
    results: GroupResults,
    entities: dict,
    threshold: float,
    thresholds: Iterable[float] = (),
    primary_sets: Iterable[str] = ("primary",),
    subgroup_columns: Iterable[str] = (),
    sources: list[str] | None = None,
) -> list[Path]:
    """Overlap networks of every coordinate set and variant; sensitivity tables.

    For each primary set, also the per-level and leave-one-level-out subgroup
    networks and ``desc-sensitivity_correlations.tsv``: the spatial correlation
    (over the analysis mask) between the signed overlap maps of all variants,
    with ``desc-sensitivity_variants.tsv`` describing each variant.
    """
    sources = sources or []
    primary_sets = list(primary_sets)
    paths = []
    table = results.seeds.table
    for set_name in dict.fromkeys(table["set"]):
        if set_name in NON_NETWORK_SETS or not len(results.columns(set_name, "main")):
            continue
        variants = enumerate_variants(
            results, set_name, threshold, list(thresholds),
            list(subgroup_columns) if set_name in primary_sets else [],
        )
        maps = variant_maps(results, variants)
        for variant in variants:
            paths += write_network(writer, results, variant, maps[variant.label], entities,
                                   sources)
        if set_name not in primary_sets or len(variants) < 2:
            continue
        set_ents = dict(entities, set=seed_label(set_name))
        matrix = correlation_matrix({label: m["overlap"] for label, m in maps.items()})
        matrix.insert(0, "variant", matrix.index)
        paths.append(writer.write_table(
            dict(set_ents, desc="sensitivity"), "correlations", matrix,
            "Spatial correlations (Pearson r over the analysis mask) between the signed "
            "overlap maps of the network variants.", sources,
            fallback=lambda column: f"Pearson r with the signed overlap map of variant "
            f"'{column}'.",
        ))
        described = pd.DataFrame(
            {
                "variant": [v.label for v in variants],
                "seed_variant": [v.variant for v in variants],
                "threshold": [v.threshold for v in variants],
                "n_studies": [len(v.columns) for v in variants],
                "n_positive_voxels": [int((maps[v.label]["overlap"] > 0).sum()) for v in variants],
                "n_negative_voxels": [int((maps[v.label]["overlap"] < 0).sum()) for v in variants],
                "r_with_main": matrix["main"].to_numpy(),
                "file": [
                    writer.path(dict(network_entities(entities, v), desc="overlap"), "boldmap",
                                ".nii.gz", network_folder(v)).relative_to(writer.root).as_posix()
                    for v in variants
                ],
            }
        )
        paths.append(writer.write_table(
            dict(set_ents, desc="sensitivity"), "variants", described,
            "The network variants of the sensitivity analysis: seeds, threshold, size and "
            "likeness to the main network.", sources,
        ))
    return paths


SPECIFICITY_DESCRIPTIONS = {
    "t": "Two-sample t of the study networks (t-maps) vs the control networks; positive "
    "where the studies' networks are higher.",
    "stat": "Liebermeister statistic of binarized study vs control networks.",
    "tfce": "Threshold-free cluster enhancement of the two-sample t.",
    "logp": "-log10 uncorrected permutation p-value.",
    "logpFWE": "-log10 family-wise-error corrected p-value (maximum statistic).",
    "logpFDR": "-log10 Benjamini-Hochberg FDR adjusted p-value.",
}


def write_specificity(
    writer: DerivativesWriter,
    results: GroupResults,
    result,
    entities: dict,
    primary_set: str,
    settings: dict,
) -> list[Path]:
    """Write one specificity comparison: statistic maps, significant mask, clusters.

    ``result`` is a :class:`bids_cnm.analyses.specificity.SpecificityResult`.
    """
    ents = dict(entities, set=seed_label(primary_set), control=seed_label(result.control))
    extra = dict(settings, NumberOfStudyNetworks=result.n_primary,
                 NumberOfControlNetworks=result.n_control)
    descriptions = dict(SPECIFICITY_DESCRIPTIONS)
    significant_text = ("Voxels where the study networks differ from the control networks "
                        "(FWE p < 0.05; +1 studies higher, -1 lower).")
    if result.method == "liebermeister":
        descriptions["logp"] = "-log10 one-sided Liebermeister p-value (studies more often " \
            "positively connected than controls)."
        significant_text = ("Voxels where the studies' networks are positive more often than "
                            "the controls' (one-sided Liebermeister test, FDR q < 0.05).")
    paths = []
    for name, values in result.maps.items():
        if name == "significant":
            continue
        paths.append(writer.write_map(dict(ents, stat=name), results.volume(values),
                                      results.affine, descriptions[name], [], **extra))
    significant = result.maps["significant"]
    path = writer.write_map(
        dict(ents, desc="significant"), results.volume(significant).astype(np.int8),
        results.affine, significant_text, [], suffix="mask", **extra,
    )
    paths.append(path)
    stat = result.maps.get("t", result.maps.get("stat"))
    surviving = nb.Nifti1Image(results.volume(stat * (significant != 0)), results.affine)
    clusters = find_peaks(surviving, fraction=1e-9)
    paths.append(writer.write_table(
        dict(ents, desc="significant"), "clusters", clusters,
        "Peaks of the clusters of significant voxels (values: the test statistic).", [],
        **extra,
    ))
    LOGGER.info("specificity %s vs %s: %d significant voxels", primary_set, result.control,
                int((significant != 0).sum()))
    return paths


def write_connectome_comparison(
    writer: DerivativesWriter,
    results: GroupResults,
    other: GroupResults,
    label: str,
    entities: dict,
    threshold: float,
    primary_sets: Iterable[str],
    sources: list[str],
) -> list[Path]:
    """The main network computed on another connectome or cohort, and its likeness.

    Writes the other connectome's overlap maps (``variant-connectome<label>``) and
    ``desc-connectomes_correlations.tsv``: the spatial correlation of the two
    signed overlap maps over the voxels both analysis masks share.
    """
    paths = []
    tag = seed_label(f"connectome{label}")
    for set_name in primary_sets:
        variants = enumerate_variants(results, set_name, threshold)[:1]
        mine = variant_maps(results, variants)["main"]["overlap"]
        theirs_variant = Variant(tag, set_name, "main", threshold,
                                 tuple(other.columns(set_name, "main")), tag)
        theirs = variant_maps(other, [theirs_variant])[theirs_variant.label]
        paths += write_network(writer, other, theirs_variant, theirs, entities, sources)
        shared = np.intersect1d(results.voxels, other.voxels)
        a = mine[np.searchsorted(results.voxels, shared)]
        b = theirs["overlap"][np.searchsorted(other.voxels, shared)]
        r = correlation_matrix({"main": a, tag: b}).iloc[0, 1]
        table = pd.DataFrame({
            "network": ["main", theirs_variant.label],
            "n_subjects": [results.n_subjects, other.n_subjects],
            "r_with_main": [1.0, r],
            "n_voxels_compared": [len(shared), len(shared)],
        })
        ents = dict(entities, set=seed_label(set_name), desc="connectomes")
        paths.append(writer.write_table(
            ents, "correlations", table,
            f"Spatial correlation of the main network with the one computed on connectome "
            f"'{label}', over the voxels both analysis masks share.", sources,
        ))
        LOGGER.info("set %s: network on connectome '%s' correlates r = %.3f with the main one",
                    set_name, label, r)
    return paths


DEGREE_COLUMNS = {
    "set": "Coordinate set of the network (random: the relocated studies).",
    "network": "main: the set's overlap network at the main threshold; relocation-<i>: the "
    "overlap network of the i-th relocated copy of the primary studies.",
    "n_studies": "Study networks in the overlap.",
    "r_degree": "Pearson r, over the analysis mask, of the signed overlap map with the "
    "degree map.",
    "r_residual": "Pearson r of the overlap after regressing degree out (least squares with "
    "intercept) with the overlap itself: the part of the network degree does not explain.",
    "r_first": "Pearson r of the overlap map with the first primary set's.",
    "r_first_partial": "The same after regressing degree out of both maps (partial r).",
    "p_degree": "Fraction of the relocated networks whose |r_degree| is at least this "
    "network's (n/a for relocated networks, or without relocations).",
    "n_null": "Relocated networks compared (p_degree cannot go below 1/n_null, except 0).",
}


def write_degree_check(
    writer: DerivativesWriter,
    results: GroupResults,
    degree: np.ndarray,
    check,
    entities: dict,
    threshold: float,
    sources: list[str],
    provenance: dict,
) -> list[Path]:
    """Write the degree map, each set's residual network and the degree-check table.

    ``degree`` is the degree map over ``results.voxels``; ``check`` a
    :class:`bids_cnm.analyses.degree.DegreeCheck`; ``provenance`` goes into every
    sidecar (sample size, seed, grey matter, reference).
    """
    paths = [writer.write_map(
        dict(entities, stat="degree"), results.volume(degree), results.affine,
        "Degree: every voxel's mean |Fisher z| to a fixed random sample of grey-matter "
        "voxels (itself left out), averaged over connectome subjects.",
        sources, **provenance,
    )]
    for set_name, residual in check.residuals.items():
        paths.append(writer.write_map(
            dict(entities, set=seed_label(set_name), thresh=threshold_label(threshold),
                 desc="degreeresidual"),
            results.volume(residual), results.affine,
            "Signed overlap network after regressing the degree map out (least-squares "
            "residual with intercept, over the analysis mask).",
            sources, Threshold=threshold, **provenance,
        ))
    paths.append(writer.write_table(
        dict(entities, desc="degree"), "correlations", check.table,
        "Degree check: how much of each overlap network the connectome's degree map "
        "explains.", sources, columns=DEGREE_COLUMNS, Threshold=threshold, **provenance,
    ))
    for row in check.table[check.table["network"] == "main"].itertuples():
        LOGGER.info("degree check: set %s, r with degree %.3f (p %s vs %d relocated networks)",
                    row.set, row.r_degree, f"{row.p_degree:.3f}", row.n_null)
    return paths
