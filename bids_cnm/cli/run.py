"""Entry point: command line -> Config -> inputs resolved -> nipype workflow -> run.

Everything that can be checked before the heavy work (the connectome's files and
grid, the coordinate table, the seeds) is checked here, so bad input fails in
seconds with one line that says what to fix and a BIDS-Apps exit code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm import __version__
from bids_cnm.cli.parser import parse_args
from bids_cnm.config import RANDOM_SET, Config
from bids_cnm.analyses.plan_seeds import plan_nodes, plan_seeds
from bids_cnm.errors import (
    CNMError,
    InputDataError,
    MissingInputError,
    OutputError,
    ReadError,
    UsageError,
)
from bids_cnm.io.connectome import Connectome, index_connectome, support_mask
from bids_cnm.io.coordinates import read_coordinates
from bids_cnm.io.derivatives import bids_name, write_json, write_nifti
from bids_cnm.engine.nodes import save_nodes
from bids_cnm.io.outputs import grid_entities
from bids_cnm.plan import load_plan
from bids_cnm.engine.seeds import concat_seeds, make_seeds, save_seeds, seeds_digest
from bids_cnm.workflows.base import RunInputs, init_group_wf, init_participant_wf
from bids_cnm.workflows.timing import RunTimer

LOGGER = logging.getLogger("bids_cnm")


def setup_logging(verbosity: int) -> None:
    """Progress on stderr; nipype's own chatter only with ``-vv``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [bids_cnm] %(message)s", "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    LOGGER.propagate = False
    nipype_level = logging.INFO if verbosity >= 2 else logging.WARNING
    from nipype import logging as nlogging

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(nipype_level)


def check_columns(config: Config, table) -> None:
    """The sets and columns the command line names must exist in the coordinate table."""
    source = config.coordinates
    for column in config.subgroups:
        if column not in table.columns:
            raise UsageError(
                f"--subgroups {column}: {source} has no column '{column}' (columns: "
                f"{', '.join(map(str, table.columns))})."
            )
    sets = set(table["set"])
    if config.specificity and config.random_relocations > 0:
        sets.add(RANDOM_SET)  # the relocated studies are a control set of their own
    for flag, names in (("--primary-sets", config.primary_sets),
                        ("--control-sets", config.control_sets or ())):
        missing = sorted(set(names) - sets)
        if missing:
            raise UsageError(
                f"{flag} {' '.join(missing)}: no such set in {source} (sets: "
                f"{', '.join(sorted(sets))}); see its 'set' column."
            )


def control_sets(config: Config, seeds_table) -> list[str]:
    """Control groups of the specificity tests: the named or all other coordinate sets,
    plus the randomly relocated studies."""
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


def build_seeds(config: Config, connectome: Connectome, table, support):
    """All seeds of one pass: main study seeds, sensitivity variants, relocated controls."""
    from bids_cnm.analyses.specificity import relocate_coordinates
    from bids_cnm.stats.overlap import threshold_label

    def seeds_for(data, warn: bool, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = make_seeds(data, connectome.shape, connectome.affine, support,
                              source=str(config.coordinates), **kwargs)
        if warn:
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
        from bids_cnm.analyses.grey_matter import grey_matter

        where = support if support is not None else data_support(connectome)
        grey, source = grey_matter(connectome.shape, connectome.affine, config.relocation_mask,
                                   space=connectome.space)
        LOGGER.info("random relocations within grey matter: %s", source)
        relocated = relocate_coordinates(
            table, where, connectome.affine, config.random_relocations, config.random_seed,
            sets=list(config.primary_sets), mask=grey, mode=config.relocation_mode,
        )
        parts.append(seeds_for(relocated, False, diameter=config.sphere_diameter))
    seeds = concat_seeds(*parts)
    LOGGER.info(
        "coordinates: %d in %d studies, sets %s; %d seed(s) in one pass (%s)",
        len(table), table["study"].nunique(), sorted(table["set"].unique()), len(seeds),
        ", ".join(f"{v}: {n}" for v, n in seeds.table["variant"].value_counts().items()),
    )
    return seeds


def compare_pass(config: Config, connectome: Connectome) -> dict:
    """The second connectome or cohort (``--compare-*``), on the main one's grid."""
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


def data_support(connectome: Connectome) -> np.ndarray:
    """Voxels whose first BOLD volume is non-zero in the first subject (no brain masks)."""
    img = nb.load(connectome.reference)
    return np.asarray(img.dataobj[..., 0]) != 0


def connectivity_hash(config: Config, seeds_hash: str) -> str:
    """Digest of everything that determines a participant z-map."""
    import hashlib

    keys = ("task", "space", "res", "bold_desc", "cache_dtype", "seed_signal", "run_combination")
    settings = {k: v for k, v in config.science_settings().items() if k in keys}
    blob = json.dumps([settings, seeds_hash, __version__], sort_keys=True).encode()
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
            if json.loads(sidecar.read_text()).get("ConnectivityHash") != wanted:
                return None, f"{path.name} was made with other seeds or settings"
        found[subject.label] = [str(p) for p in paths]
    return found, "all participant outputs match"


def resolve_inputs(config: Config) -> RunInputs:
    """Index the connectome, read the coordinates and build the seeds."""
    config.work_dir.mkdir(parents=True, exist_ok=True)
    connectome: Connectome = index_connectome(
        config.bids_dir,
        participant_label=config.participant_label,
        participant_filter=config.participant_filter,
        task=config.task,
        space=config.space,
        res=config.res,
        bold_desc=config.bold_desc,
    )
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
    support = support_mask(connectome)
    seeds = build_seeds(config, connectome, table, support)
    extra = plan_seeds(plan, connectome.shape, connectome.affine, support,
                       existing_ids=seeds.ids)
    if extra is not None:
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
        if not support_file.exists():
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
        },
        entities=grid_entities(connectome.task, connectome.space, connectome.res),
        thresholds=[config.t_threshold, *config.t_thresholds],
        provenance={"ConnectivityHash": connectivity_hash(config, digest), "SeedsHash": digest},
        control_sets=control_sets(config, seeds.table) if config.specificity else [],
        **compare_pass(config, connectome),
        plan_file=plan_file,
        nodes_file=nodes_file,
    )


_ERROR_LINE = re.compile(r"bids_cnm\.errors\.(\w+): (.*)")


def _error_from_crash(crash_dir: Path, since: float) -> CNMError:
    """Turn the nipype crash file of this run back into a one-line bids_cnm error.

    A :class:`~bids_cnm.errors.CNMError` raised inside a node keeps its class
    (and so its exit code); anything else becomes a :class:`ReadError` quoting
    the exception's last line and the crash file.
    """
    from bids_cnm import errors

    crashes = [c for c in sorted(crash_dir.glob("crash-*.txt")) if c.stat().st_mtime >= since]
    for crash in crashes:
        lines = [ln.strip() for ln in crash.read_text(errors="replace").splitlines()]
        for line in lines:
            match = _ERROR_LINE.search(line)
            if match and hasattr(errors, match.group(1)):
                return getattr(errors, match.group(1))(match.group(2))
    if crashes:
        lines = [ln.strip() for ln in crashes[0].read_text(errors="replace").splitlines()]
        last = next((ln for ln in reversed(lines) if re.match(r"^\w+(\.\w+)*(Error|Exception)", ln)), "")
        return ReadError(
            f"a step failed: {last or 'see the crash file'} (details: {crashes[0]}). "
            "Fix the cause and run the same command again: finished steps are reused."
        )
    return ReadError(
        f"the workflow failed without a crash file in {crash_dir}; run again with -vv."
    )


def run(config: Config, command: tuple[str, ...] = ()) -> int:
    """Build and run the workflow of ``config.analysis_level``.

    Parameters
    ----------
    config : Config
    command : tuple of str
        The command line, recorded in the report.
    """
    started = time.time()
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create OUTPUT_DIR {config.output_dir}: {exc}") from exc
    inputs = resolve_inputs(config)
    inputs = RunInputs(**{**inputs.__dict__, "command": tuple(command)})
    if config.analysis_level == "participant":
        workflow = init_participant_wf(inputs)
    else:
        found, reason = find_participant_maps(inputs, list(load_seed_ids(inputs)))
        if found is not None:
            LOGGER.info("group level: reusing participant z-maps (%s)", reason)
            inputs = RunInputs(**{**inputs.__dict__, "reuse_maps": found})
        else:
            LOGGER.info("group level: computing connectivity on the fly (%s)", reason)
        workflow = init_group_wf(inputs)
    crash_dir = config.work_dir / "crash"
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": True,
            "remove_unnecessary_outputs": False,
        }
    )
    plugin_args = plugin_arguments(config)
    LOGGER.info(
        "running %s level with %s (%d process(es)); work directory %s",
        config.analysis_level, config.nipype_plugin, config.nprocs, config.work_dir,
    )
    timer = RunTimer(started)
    try:
        if config.nipype_plugin == "Linear":
            workflow.run(plugin="Linear", plugin_args={"status_callback": timer})
        else:
            workflow.run(plugin=config.nipype_plugin,
                         plugin_args={**plugin_args, "status_callback": timer})
    except RuntimeError as exc:
        raise _error_from_crash(crash_dir, started - 1) from exc
    LOGGER.info("done in %.0f s; outputs in %s", time.time() - started, config.output_dir)
    LOGGER.debug("slowest steps (s): %s", timer.slowest())
    LOGGER.info("%s", timer.summary())
    return 0


def plugin_arguments(config: Config) -> dict:
    """nipype ``plugin_args``: MultiProc settings, then the --plugin-config file on top."""
    args: dict = {}
    if config.nipype_plugin == "MultiProc":
        args = {"n_procs": config.nprocs, "raise_insufficient": False}
        if config.mem_gb:
            args["memory_gb"] = config.mem_gb
    if config.plugin_config is not None:
        path = config.plugin_config
        if not path.exists():
            raise MissingInputError(f"--plugin-config {path} does not exist.")
        try:
            import yaml

            loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except Exception as exc:
            raise InputDataError(f"{path}: not valid JSON/YAML ({exc}).") from exc
        if not isinstance(loaded, dict):
            raise InputDataError(
                f"{path}: must hold a mapping of nipype plugin_args "
                "(e.g. {\"sbatch_args\": \"--time=1:00:00\"})."
            )
        args.update(loaded.get("plugin_args", loaded))
    return args


def load_seed_ids(inputs: RunInputs) -> list[str]:
    """Seed ids of a run (from the saved seeds)."""
    from bids_cnm.engine.seeds import load_seeds

    return load_seeds(str(inputs.seeds_file)).ids


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(argv)
        setup_logging(config.verbosity)
        return run(config, command=("bids_cnm", *map(str, argv)))
    except CNMError as exc:
        print(f"bids_cnm: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bids_cnm: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
