"""Resolve what a run needs before its workflow is built: the connectome, the
coordinates, the seeds, the control sets and reusable participant outputs.

Pure functions of the :class:`~bids_cnm.config.Config` and the inputs on disk
(the seeds, plan and node files they save go into the work folder), so the
command line only parses, checks, builds and runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.analyses.plan_seeds import plan_nodes, plan_seeds
from bids_cnm.config import RANDOM_SET, Config
from bids_cnm.engine.nodes import save_nodes
from bids_cnm.engine.seeds import (
    Seeds,
    concat_seeds,
    load_seeds,
    make_seeds,
    save_seeds,
    seeds_digest,
)
from bids_cnm.errors import InputDataError, UsageError, found_columns
from bids_cnm.io.code_identity import code_identity
from bids_cnm.io.connectome import (
    Connectome,
    data_support,
    index_connectome,
    support_mask,
)
from bids_cnm.io.coordinates import read_coordinates
from bids_cnm.io.derivatives import bids_name, write_json, write_nifti
from bids_cnm.io.identity import dataset_identity, digest, subject_key
from bids_cnm.io.outputs import grid_entities
from bids_cnm.io.readable import check_all_readable
from bids_cnm.plan import Plan, load_plan
from bids_cnm.workflows.base import RunInputs
from bids_cnm.workflows.labels import check_labels, check_seed_ids

__all__ = [
    "bold_volumes",
    "build_seeds",
    "check_columns",
    "compare_pass",
    "connectivity_hash",
    "control_sets",
    "data_support",
    "find_participant_maps",
    "level_settings",
    "load_seed_ids",
    "resolve_inputs",
    "subject_keys",
    "with_reuse",
]

LOGGER = logging.getLogger("bids_cnm")


def layout_cache_dir(config: Config) -> Path | None:
    """Where pybids' index of the connectome is saved between runs (the work folder).

    ``None`` for ``--boilerplate-only``, which creates no work folder.
    """
    if config.boilerplate_only:
        return None
    return Path(config.work_dir) / "pybids"


def check_columns(config: Config, table: pd.DataFrame) -> None:
    """Check that the sets and columns the command line names exist in the coordinate table.

    Raises
    ------
    UsageError
        Naming the option, the missing set or column and what the table holds.
    """
    source = config.coordinates
    for column in config.subgroups:
        if column not in table.columns:
            raise UsageError(
                f"--subgroups {column}: {source} has no column '{column}' (columns: "
                f"{found_columns(table.columns)})."
            )
    sets = set(table["set"])
    if config.specificity and config.random_relocations > 0:
        sets.add(RANDOM_SET)  # the relocated studies are a control set of their own
    # with a plan, the sets come from its keys (read_inputs copies them into the config)
    flags = (("--primary-sets", "--control-sets") if config.analysis_plan is None else
             (f"{config.analysis_plan}, primary_sets", f"{config.analysis_plan}, control_sets"))
    for flag, names in zip(flags, (config.primary_sets, config.control_sets or ())):
        missing = sorted(set(names) - sets)
        if missing:
            raise UsageError(
                f"{flag} {' '.join(missing)}: no such set in {source} (sets: "
                f"{', '.join(sorted(sets))}); see its 'set' column."
            )


def control_sets(config: Config, seeds_table: pd.DataFrame) -> list[str]:
    """Control groups of the specificity tests.

    The named or all other coordinate sets with at least two study networks,
    plus the randomly relocated studies when there are any.
    """
    from bids_cnm.io.outputs import NON_NETWORK_SETS

    if config.control_sets is not None:
        # the relocated set is added below, once, whether or not it is named
        names = [s for s in config.control_sets if s != RANDOM_SET]
    else:
        names = [s for s in dict.fromkeys(seeds_table["set"])
                 if s not in config.primary_sets and s not in NON_NETWORK_SETS
                 and s != RANDOM_SET]
    counts = seeds_table[seeds_table["variant"] == "main"]["set"].value_counts()
    kept = []
    for name in names:
        if counts.get(name, 0) < 2:
            LOGGER.warning("specificity: set '%s' has %d study network(s); a two-sample test "
                           "needs at least 2, so it is skipped", name, counts.get(name, 0))
        else:
            kept.append(name)
    if config.random_relocations > 0:
        kept.append(RANDOM_SET)
    return kept


def build_seeds(
    config: Config, connectome: Connectome, table: pd.DataFrame, support: np.ndarray | None
) -> Seeds:
    """All seeds of one pass: main study seeds, sensitivity variants, relocated controls."""
    from bids_cnm.analyses.specificity import relocate_coordinates
    from bids_cnm.stats.overlap import threshold_label

    def seeds_for(data, warn: bool, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = make_seeds(data, connectome.shape, connectome.affine, support,
                              source=str(config.coordinates), **kwargs)
        if warn:  # the variants repeat the main seeds' warnings
            for warning in caught:
                LOGGER.warning("%s", warning.message)
        return made

    parts = [seeds_for(table, True, diameter=config.sphere_diameter)]
    for diameter in config.sphere_diameters:
        if diameter != config.sphere_diameter:
            tag = f"d{threshold_label(diameter)}mm"
            parts.append(seeds_for(table, False, diameter=diameter, variant=tag, id_suffix=tag))
    if config.per_coordinate:
        parts.append(seeds_for(table, False, diameter=config.sphere_diameter, per="coordinate",
                               variant="percoord"))
    if config.specificity and config.random_relocations > 0:
        from bids_cnm.analyses.grey_matter import GREY_MATTER_FOLDER, grey_matter

        where = support if support is not None else data_support(connectome)
        grey, source = grey_matter(connectome.shape, connectome.affine, config.relocation_mask,
                                   space=connectome.space,
                                   cache_dir=Path(config.work_dir) / GREY_MATTER_FOLDER)
        LOGGER.info("random relocations within grey matter: %s", source)
        relocated = relocate_coordinates(
            table, where, connectome.affine, config.random_relocations, config.random_seed,
            sets=list(config.primary_sets), mask=grey, mode=config.relocation_mode,
        )
        parts.append(seeds_for(relocated, False, diameter=config.sphere_diameter))
    check_seed_ids(parts, str(config.coordinates))
    seeds = concat_seeds(*parts)
    LOGGER.info(
        "coordinates: %d in %d studies, sets %s; %d seed(s) in one pass (%s)",
        len(table), table["study"].nunique(), sorted(table["set"].unique()), len(seeds),
        ", ".join(f"{v}: {n}" for v, n in seeds.table["variant"].value_counts().items()),
    )
    return seeds


def compare_pass(config: Config, connectome: Connectome) -> dict:
    """The second connectome or cohort (``--compare-*``), on the main one's grid.

    Returns
    -------
    dict
        ``{"compare": Connectome, "compare_label": str}``, or empty without a second pass.
    """
    if config.compare_connectome is None and not config.compare_participant_filter:
        return {}
    root = config.compare_connectome or config.bids_dir
    other = index_connectome(
        root,
        participant_filter=config.compare_participant_filter,
        task=connectome.task,
        space=connectome.space,
        res=connectome.res,
        bold_desc=config.bold_desc,
        database_path=layout_cache_dir(config),
    )
    if other.shape != connectome.shape or not np.allclose(other.affine, connectome.affine,
                                                           atol=1e-4):
        raise InputDataError(
            f"grid mismatch: {other.reference} (--compare-connectome) is not on the grid of "
            f"{connectome.reference}; both connectomes must share one template grid."
        )
    label = config.compare_label or (
        "".join(v for _, v in config.compare_participant_filter)
        if config.compare_connectome is None else Path(root).name
    )
    return {"compare": other, "compare_label": label}


def connectivity_hash(config: Config, seeds_hash: str) -> str:
    """Digest of everything that determines a participant z-map (12 hex digits)."""
    keys = ("task", "space", "res", "bold_desc", "cache_dtype", "seed_signal", "run_combination")
    settings = {k: v for k, v in config.science_settings().items() if k in keys}
    blob = json.dumps([settings, seeds_hash, code_identity()], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def find_participant_maps(
    inputs: RunInputs, seed_ids: list[str]
) -> tuple[dict[str, list[str]] | None, str]:
    """Participant z-maps matching this run, or ``None`` and the reason why not.

    Returns
    -------
    maps : dict or None
        Subject label -> its z-map paths (seed order) followed by its valid-voxel mask.
    reason : str
    """
    root = Path(inputs.writer["output_dir"])
    wanted = inputs.provenance["ConnectivityHash"]
    found: dict[str, list[str]] = {}
    for subject in inputs.connectome.subjects:
        key = inputs.subject_keys.get(subject.label, "")
        folder = root / f"sub-{subject.label}" / "func"
        paths = [
            folder / bids_name(dict(inputs.entities, sub=subject.label, seed=s, stat="z"),
                               "boldmap", ".nii.gz")
            for s in seed_ids
        ]
        paths.append(
            folder / bids_name(dict(inputs.entities, sub=subject.label, desc="connectivity"),
                               "mask", ".nii.gz")
        )
        for path in paths:
            sidecar = Path(str(path).replace(".nii.gz", ".json"))
            if not path.exists() or not sidecar.exists():
                return None, f"no participant output {path.name}"
            made = json.loads(sidecar.read_text())
            if made.get("ConnectivityHash") != wanted:
                return None, f"{path.name} was made with other seeds, settings or bids_cnm code"
            if made.get("ConnectomeKey") != key:
                return None, f"{path.name} was made from other data of sub-{subject.label}"
        found[subject.label] = [str(p) for p in paths]
    return found, "all participant outputs match"


def subject_keys(
    connectome: Connectome, participant_filter: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    """Each subject's data key (:func:`bids_cnm.io.identity.subject_key`)."""
    grid = (connectome.shape, connectome.affine)
    return {s.label: subject_key(connectome.root, s.bold + s.masks, grid, participant_filter)
            for s in connectome.subjects}


def bold_volumes(connectome: Connectome) -> dict[str, int]:
    """BOLD volumes of every subject (runs together), as indexed (else from the headers)."""
    return {s.label: sum(s.volumes) if len(s.volumes) == len(s.bold)
            else sum(int(nb.load(p).shape[3]) for p in s.bold)
            for s in connectome.subjects}


def level_settings(inputs: RunInputs) -> dict:
    """What determines the outputs of the run's level (recorded in OUTPUT_DIR).

    Participant z-maps depend on the connectivity settings and the seeds only;
    group outputs on every science setting, the seeds, the plan and the cohort.
    """
    config = inputs.config
    # the code too: outputs of another bids_cnm are not this run's (bids_cnm.io.code_identity)
    settings = {"version": __version__, "code": code_identity(), **inputs.provenance}
    if config.analysis_level == "participant":
        keys = ("task", "space", "res", "bold_desc", "cache_dtype", "seed_signal", "run_combination")
        return {**settings, **{k: v for k, v in config.science_settings().items() if k in keys}}
    settings.update(config.science_settings())
    settings["subjects"] = inputs.connectome.labels
    settings["plan"] = digest(json.loads(Path(inputs.plan_file).read_text()))
    if inputs.compare is not None:
        settings["compare"] = {**dataset_identity(inputs.compare.root),
                               "subjects": inputs.compare.labels}
    return settings


def load_seed_ids(inputs: RunInputs) -> list[str]:
    """Seed ids of a run (from the saved seeds)."""
    return load_seeds(str(inputs.seeds_file)).ids


def with_reuse(inputs: RunInputs) -> RunInputs:
    """The group level's inputs, reading matching participant z-maps when there are any."""
    found, reason = find_participant_maps(inputs, load_seed_ids(inputs))
    if found is None:
        LOGGER.info("group level: computing connectivity on the fly (%s)", reason)
        return inputs
    LOGGER.info("group level: reusing participant z-maps (%s)", reason)
    return dataclasses.replace(inputs, reuse_maps=found)


def read_inputs(config: Config) -> tuple[Config, Plan, pd.DataFrame, Connectome]:
    """The plan and the coordinates (checked first: they fail fast), then the connectome.

    Returns
    -------
    config : Config
        With the plan's sets and random seed when there is a plan.
    plan : Plan
    table : DataFrame
        The coordinates.
    connectome : Connectome
    """
    plan = load_plan(config.analysis_plan)
    if config.analysis_plan is not None:
        # the plan declares the study and control sets and the random seed
        config = dataclasses.replace(
            config, primary_sets=plan.primary_sets, control_sets=plan.control_sets,
            random_seed=plan.random_seed,
        )
        LOGGER.info("analysis plan %s: primary sets %s", config.analysis_plan,
                    ", ".join(plan.primary_sets))
    table = read_coordinates(config.coordinates)
    check_columns(config, table)
    connectome: Connectome = index_connectome(
        config.bids_dir,
        participant_label=config.participant_label,
        participant_filter=config.participant_filter,
        task=config.task,
        space=config.space,
        res=config.res,
        bold_desc=config.bold_desc,
        filters=config.bids_filters.get("bold"),
        database_path=layout_cache_dir(config),
    )
    return config, plan, table, connectome


def input_links(config: Config) -> dict[str, str]:
    """Named input folders: sidecars cite their files as ``bids:<name>:<path>``."""
    links = {"coordinates": config.coordinates.parent}
    if config.analysis_plan is not None:
        links["plan"] = config.analysis_plan.parent
    if config.compare_connectome is not None or config.compare_participant_filter:
        links["compare"] = config.compare_connectome or config.bids_dir
    return {name: str(path) for name, path in links.items()}


def resolve_inputs(config: Config, command: tuple[str, ...] = ()) -> RunInputs:
    """Read the plan and coordinates, index the connectome, build and save the seeds.

    Parameters
    ----------
    config : Config
    command : tuple of str
        The command line, recorded in the report.

    Returns
    -------
    RunInputs
    """
    config, plan, table, connectome = read_inputs(config)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    check_labels(table, config.subgroups, str(config.coordinates))
    compare = compare_pass(config, connectome)
    runs = [p for c in (connectome, compare.get("compare")) if c is not None
            for s in c.subjects for p in s.bold]
    check_all_readable(list(dict.fromkeys(runs)), config.work_dir / "readable_inputs.json")
    # read once: the warning below and the run record (the report's volume range)
    volumes = bold_volumes(connectome)
    short = {label: n for label, n in volumes.items() if n < config.min_volumes}
    if short:
        LOGGER.warning(
            "%d subject(s) have fewer than %d BOLD volumes (--min-volumes) and weigh like the "
            "others: %s", len(short), config.min_volumes,
            ", ".join(f"sub-{label} ({n})" for label, n in short.items()))
    support = support_mask(connectome, None if config.boilerplate_only
                           else Path(config.work_dir) / "support_masks")
    seeds = build_seeds(config, connectome, table, support)
    extra = plan_seeds(plan, connectome.shape, connectome.affine, support,
                       existing_ids=seeds.ids)
    if extra is not None:
        check_seed_ids([seeds, extra], str(config.coordinates))
        seeds = concat_seeds(seeds, extra)
        LOGGER.info("analysis plan: %d extra seed(s) (%s) in the same pass", len(extra),
                    ", ".join(sorted(set(extra.table["set"]))))
    digest = seeds_digest(seeds)
    plan_file = config.work_dir / f"plan_{digest}.json"
    write_json(plan_file, plan.to_dict())
    nodes_file = None
    nodes = plan_nodes(plan, connectome.shape, connectome.affine)
    if nodes is not None:
        nodes_file = save_nodes(config.work_dir / f"nodes_{digest}.npz", *nodes)
    seeds_file = config.work_dir / f"seeds_{digest}.npz"
    if not seeds_file.exists():
        save_seeds(seeds, str(seeds_file))
    support_file = None
    if support is not None:
        support_file = config.work_dir / f"support_{digest}.nii.gz"
        # written each time, left untouched when the same: the same seeds with another
        # support (other masks, another rule) must not find the old file
        write_nifti(support_file, nb.Nifti1Image(support.astype(np.uint8), connectome.affine))
    settings = config.science_settings()
    settings["coordinates"] = str(config.coordinates)
    return RunInputs(
        config=config,
        connectome=connectome,
        seeds_file=seeds_file,
        support_file=support_file,
        writer={
            "output_dir": str(config.output_dir),
            "bids_dir": str(config.bids_dir),
            "settings": settings,
            "space": connectome.space,
            "links": input_links(config),
        },
        entities=grid_entities(connectome.task, connectome.space, connectome.res),
        thresholds=[config.t_threshold, *config.t_thresholds],
        provenance={"ConnectivityHash": connectivity_hash(config, digest), "SeedsHash": digest},
        control_sets=control_sets(config, seeds.table) if config.specificity else [],
        **compare,
        plan_file=plan_file,
        nodes_file=nodes_file,
        command=tuple(command),
        subject_keys=subject_keys(connectome, config.participant_filter),
        coordinates=table,
        plan=plan,
        volumes=volumes,
    )
