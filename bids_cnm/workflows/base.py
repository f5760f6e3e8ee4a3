"""Nipype workflows of bids_cnm (niworkflows-style ``init_*_wf`` builders).

The top-level workflow is always named ``cnm_wf``.  Prepared time series live
outside nipype's node folders, in ``<work_dir>/prepared/<sub>_<digest>`` (named by
the source files' paths, sizes and times), so participant and group runs, passes
over a second connectome and re-runs that share a work directory share them: the
expensive decoding of the connectome happens once, whatever is analysed
afterwards, and checking it costs a ``stat`` per file, not a nipype node per
subject.  With ``--no-cache`` nothing is prepared: each batch node decodes its
subjects once, straight into the connectivity sums (:mod:`bids_cnm.engine.streaming`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_cnm.analyses.grey_matter import GREY_MATTER_FOLDER
from bids_cnm.config import Config
from bids_cnm.engine.timeseries import (
    cache_bytes,
    cache_key,
    is_prepared,
    preparation_bytes,
)
from bids_cnm.errors import OutputError
from bids_cnm.interfaces.cnm import (
    AccumulateConnectivity,
    AccumulateFromMaps,
    AnalysisMask,
    CompareConnectome,
    DegreeCheck,
    DegreeSample,
    GroupOutputs,
    GroupReport,
    ParticipantMaps,
    PlanALE,
    PlanAnalyses,
    PrepareTimeseries,
    ReduceConnectivity,
    Specificity,
    StreamConnectivity,
)
from bids_cnm.io.code_identity import code_identity
from bids_cnm.io.connectome import Connectome, SubjectData, data_support
from bids_cnm.io.derivatives import write_nifti

if TYPE_CHECKING:  # annotations only: no import cost for the workflow builders
    import pandas as pd

    from bids_cnm.plan import Plan

LOGGER = logging.getLogger("bids_cnm")


@dataclass(frozen=True)
class RunInputs:
    """What the command line resolved before the workflow is built."""

    config: Config
    connectome: Connectome
    seeds_file: Path
    support_file: Path | None
    writer: dict
    entities: dict
    thresholds: list[float]
    provenance: dict = field(default_factory=dict)
    reuse_maps: dict[str, list[str]] | None = None
    control_sets: list[str] = field(default_factory=list)
    compare: Connectome | None = None
    compare_label: str = ""
    command: tuple[str, ...] = ()
    plan_file: Path | None = None
    nodes_file: Path | None = None
    #: subject label -> key of its data (dataset identity, files' fingerprints, grid):
    #: a participant z-map is reused only when its sidecar carries the same key
    subject_keys: dict[str, str] = field(default_factory=dict)
    #: the coordinate table and the plan as read (and checked) once, for the run's record
    coordinates: pd.DataFrame | None = field(default=None, compare=False, repr=False)
    plan: Plan | None = field(default=None, compare=False, repr=False)
    #: BOLD volumes of every subject (runs together), read from the headers once
    volumes: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


def _safe(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "_", label)


def _node_name(prefix: str, label: str) -> str:
    return f"{prefix}_sub_{_safe(label)}"


def _merge(n_inputs: int, name: str) -> pe.Node:
    """A node gathering ``n_inputs`` outputs into one list.

    It runs in the main process (``run_without_submitting``): a list is not worth a
    worker's round trip, nor a job of its own on a cluster.
    """
    return pe.Node(niu.Merge(n_inputs), name=name, run_without_submitting=True)


def subject_spec(subject: SubjectData) -> dict:
    """A subject as the preparation node takes it (plain lists: nipype hashes them fast)."""
    return {"label": subject.label, "bold": list(subject.bold), "masks": list(subject.masks)}


def streamed_spec(subject: SubjectData, config: Config) -> dict:
    """A subject as a ``--no-cache`` node decoding it takes it.

    With the files' key (paths, sizes, times: :func:`cache_key`), which enters nipype's
    hash of the node, so a re-run reuses a finished node's result only while the files
    are unchanged (the paths alone would not tell).
    """
    key = cache_key(subject.bold, subject.masks, config.cache_dtype, store_data=False)
    return dict(subject_spec(subject), key=key)


def cache_dir(config: Config) -> Path:
    """Folder of the prepared subjects, shared by every run using this work directory."""
    return Path(config.work_dir) / "prepared"


def init_prepare_node(
    subjects: list[SubjectData], config: Config, name: str, mem_gb: float = 1.0
) -> pe.Node:
    """The node that prepares a batch of subjects (see :class:`PrepareTimeseries`).

    When every subject of the batch is prepared already, the node (a ``stat`` per
    file) runs in the main process: a warm run or a re-run then waits for no worker
    process, and on a cluster submits no job, just to find the folders there.
    """
    return pe.Node(
        PrepareTimeseries(
            subjects=[subject_spec(s) for s in subjects], cache_dir=str(cache_dir(config)),
            dtype=config.cache_dtype, store_data=not config.no_cache,
        ),
        name=name,
        mem_gb=mem_gb,
        run_without_submitting=all_prepared(config, subjects),
    )


def all_prepared(config: Config, subjects: list[SubjectData]) -> bool:
    """Whether the work folder holds a complete prepared copy of every subject."""
    folder = cache_dir(config)
    return not config.no_cache and all(
        is_prepared(folder / cache_key(s.bold, s.masks, config.cache_dtype)) for s in subjects)


def check_preparation(config: Config, subjects: list[SubjectData]) -> float:
    """Log what preparation will write; stop when the work folder's disk cannot hold it.

    Returns
    -------
    float
        Memory (GB) a process preparing one subject needs: nipype's MultiProc runs
        as many preparation nodes side by side as ``--mem-gb`` allows.

    Raises
    ------
    OutputError
        When the prepared copies of the subjects not yet prepared exceed the free
        space of the work folder's disk (exit code 73).
    """
    if not subjects:
        return 1.0
    first = subjects[0]
    per_subject = cache_bytes(first.bold, first.masks, config.cache_dtype)
    per_run = per_subject / len(first.bold)
    # the step's arrays, plus the interpreter and the compiled kernels
    mem_gb = round(preparation_bytes(first.bold, first.masks, config.cache_dtype) / 1e9
                   + 0.4, 2)
    if config.no_cache:
        LOGGER.info("--no-cache: no prepared copy is kept (about %.2f GB per subject); each "
                    "subject is decoded once, straight into the connectivity sums",
                    per_subject / 1e9)
        return mem_gb
    folder = cache_dir(config)
    todo = [s for s in subjects if not is_prepared(
        folder / cache_key(s.bold, s.masks, config.cache_dtype))]
    needed = sum(per_run * len(s.bold) for s in todo)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    LOGGER.info("prepared time series: %d of %d subject(s) to prepare, about %.2f GB in %s "
                "(%.1f GB free)", len(todo), len(subjects), needed / 1e9, folder, free / 1e9)
    if needed > free:
        raise OutputError(
            f"the prepared time series need about {needed / 1e9:.1f} GB in {folder} but its "
            f"disk has {free / 1e9:.1f} GB free; use --work-dir on a larger disk, "
            "--cache-dtype int16 (half the size) or --no-cache."
        )
    return mem_gb


def execution_settings(config: Config) -> dict:
    """nipype ``execution`` settings that keep orchestration from growing per node.

    nipype's distributed plugins check their jobs every ``poll_sleep_duration``
    (2 s by default), and a chain of dependent steps waits one poll per step.  The
    MultiProc run uses :class:`~bids_cnm.workflows.plugin.EventMultiProcPlugin`,
    which sleeps until a worker reports a finished job: nipype's own sleep is off
    (0).  Linear does not poll; cluster plugins keep nipype's default (each poll
    queries the scheduler).
    """
    if config.nipype_plugin == "MultiProc":
        return {"poll_sleep_duration": 0}
    return {}


def init_participant_wf(inputs: RunInputs) -> pe.Workflow:
    """Participant level: every selected subject's z-map of every seed.

    Parameters
    ----------
    inputs : RunInputs

    Returns
    -------
    nipype Workflow
    """
    config = inputs.config
    workflow = pe.Workflow(name="cnm_wf", base_dir=str(config.work_dir))
    workflow.config["execution"].update(execution_settings(config))
    subjects = list(inputs.connectome.subjects)
    mem_gb = check_preparation(config, subjects)
    if not config.write_participant_maps:
        # only fill the work directory's cache: one node per subject on a cluster (one
        # job each), a few batches otherwise (nipype's cost grows with the nodes)
        one_each = config.nipype_plugin not in ("MultiProc", "Linear")
        groups = ([[s] for s in subjects] if one_each
                  else batches(subjects, config.batch_size, config.nprocs))
        for b, members in enumerate(groups):
            name = (_node_name("prepare", members[0].label) if one_each
                    else f"prepare_batch_{b}")
            workflow.add_nodes([init_prepare_node(members, config, name, mem_gb)])
        return stamp_code(workflow)
    for subject in subjects:
        maps = pe.Node(
            ParticipantMaps(
                seeds=str(inputs.seeds_file),
                label=subject.label,
                writer=inputs.writer,
                entities=inputs.entities,
                sources=[str(p) for p in subject.bold],
                provenance=dict(inputs.provenance,
                                ConnectomeKey=inputs.subject_keys.get(subject.label, "")),
                seed_signal=config.seed_signal,
                run_combination=config.run_combination,
            ),
            name=_node_name("zmaps", subject.label),
            # with --no-cache the node decodes the subject: a preparation's memory
            **({"mem_gb": mem_gb} if config.no_cache else {}),
        )
        if config.no_cache:  # decoded once, in the maps' node: nothing to prepare
            maps.inputs.subject = streamed_spec(subject, config)
            maps.inputs.dtype = config.cache_dtype
            workflow.add_nodes([maps])
            continue
        prepare = init_prepare_node([subject], config, _node_name("prepare", subject.label),
                                    mem_gb)
        workflow.connect(prepare, ("prepared", _first), maps, "prepared")
    return stamp_code(workflow)


def stamp_code(workflow: pe.Workflow) -> pe.Workflow:
    """Give every step of ``workflow`` that has a ``code`` input this code's identity.

    The identity enters nipype's hash of each step, so a step cached by another
    bids_cnm is run again (:mod:`bids_cnm.io.code_identity`).

    Parameters
    ----------
    workflow : nipype Workflow

    Returns
    -------
    nipype Workflow
        The same workflow.

    Raises
    ------
    TypeError
        A step computes something but has no ``code`` input (an interface not built on
        the steps' common inputs): its cache would outlive a change of the code.
    """
    identity = code_identity()
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if "code" in node.inputs.copyable_trait_names():
            node.inputs.code = identity
        elif not isinstance(node.interface, niu.Merge):  # a list of its inputs: no code
            raise TypeError(f"step {name} ({type(node.interface).__name__}) has no 'code' "
                            "input: build its inputs on bids_cnm.interfaces.cnm._CNMInputSpec")
    return workflow


def _first(items):
    """The only element of a one-subject batch's output (a nipype connection function).

    nipype hands a one-element ``OutputMultiObject`` over as the element itself.
    """
    return items if isinstance(items, str) else items[0]


def batches(items: list, batch_size: int, min_batches: int = 1) -> list[list]:
    """Split items into contiguous, near-equal batches.

    At least ``min_batches`` (so every process has work), no batch larger than
    ``batch_size``.
    """
    if not items:
        return []
    n = max(min_batches, -(-len(items) // max(batch_size, 1)))
    n = min(n, len(items))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for b in range(n):
        stop = start + size + (b < extra)
        out.append(items[start:stop])
        start = stop
    return out


def init_connectivity_branch(
    workflow: pe.Workflow,
    inputs: RunInputs,
    connectome: Connectome,
    prefix: str = "",
    reuse_maps: dict[str, list[str]] | None = None,
) -> tuple[pe.Node, pe.Node]:
    """Add one pass over a connectome: prepare, analysis mask, batched sums, reduce.

    Parameters
    ----------
    workflow : Workflow
        Where the nodes are added.
    inputs : RunInputs
    connectome : Connectome
        The subjects of this pass.
    prefix : str
        Prefix of node names (another connectome's pass must not share the
        main pass's nodes); preparation nodes are shared when the BOLD files are.
    reuse_maps : dict, optional
        Participant z-maps to read instead of computing connectivity.

    Returns
    -------
    mask, reduce : Node
        Nodes with outputs ``mask``/``voxels`` and ``results``.
    """
    config = inputs.config
    subjects = list(connectome.subjects)
    mask = pe.Node(AnalysisMask(), name=f"{prefix}analysis_mask")
    if inputs.support_file is not None:
        mask.inputs.support = str(inputs.support_file)
    if reuse_maps is None and config.no_cache:
        gather, gather_nodes, cover = _streamed_batches(workflow, inputs, subjects, mask, prefix)
    elif reuse_maps is None:
        cover = None
        groups = batches(list(range(len(subjects))), config.batch_size, config.nprocs)
        mem_gb = check_preparation(config, subjects)
        # a few batch nodes, not one per subject: a warm run checks the prepared folders
        # itself (a stat per file) instead of paying nipype's per-node cost
        prepares = [init_prepare_node([subjects[i] for i in members], config,
                                      f"{prefix}prepare_batch_{b}", mem_gb)
                    for b, members in enumerate(groups)]
        collect = _merge(len(prepares), f"{prefix}collect_prepared")
        for b, node in enumerate(prepares, 1):
            workflow.connect(node, "prepared", collect, f"in{b}")
        workflow.connect(collect, "out", mask, "prepared")
        gather = _merge(len(groups), f"{prefix}collect_stats")
        gather_nodes = _merge(len(groups), f"{prefix}collect_node_values")
        for b, members in enumerate(groups):
            accumulate = pe.Node(
                AccumulateConnectivity(
                    seeds=str(inputs.seeds_file), batch=f"{prefix}batch {b + 1}/{len(groups)}",
                    # batches run side by side: share the cores instead of oversubscribing
                    n_threads=max(1, (os.cpu_count() or 1) // min(len(groups), config.nprocs)),
                    seed_signal=config.seed_signal,
                    run_combination=config.run_combination,
                ),
                name=f"{prefix}accumulate_batch_{b}",
                mem_gb=2.0,
            )
            if inputs.nodes_file is not None:
                accumulate.inputs.nodes = str(inputs.nodes_file)
                workflow.connect(accumulate, "node_values", gather_nodes, f"in{b + 1}")
            workflow.connect([
                (prepares[b], accumulate, [("prepared", "prepared")]),
                (mask, accumulate, [("voxels", "voxels")]),
                (accumulate, gather, [("stats", f"in{b + 1}")]),
            ])
    else:
        cover = None
        # the participant level wrote each subject's valid-voxel mask last
        mask.inputs.masks = [reuse_maps[s.label][-1] for s in subjects]
        from bids_cnm.engine.seeds import load_seeds

        n_seeds = len(load_seeds(str(inputs.seeds_file)))
        files = [f for s in subjects for f in reuse_maps[s.label][:-1]]
        reader = pe.Node(
            AccumulateFromMaps(zmaps=files, n_seeds=n_seeds), name=f"{prefix}accumulate_from_maps"
        )
        workflow.connect(mask, "voxels", reader, "voxels")
        gather = _merge(1, f"{prefix}collect_stats")
        gather_nodes = _merge(1, f"{prefix}collect_node_values")
        workflow.connect(reader, "stats", gather, "in1")
        if inputs.nodes_file is not None:
            reader.inputs.nodes = str(inputs.nodes_file)
            workflow.connect(reader, "node_values", gather_nodes, "in1")
    reduce = pe.Node(
        ReduceConnectivity(seeds=str(inputs.seeds_file), subjects=[s.label for s in subjects]),
        name=f"{prefix}reduce", mem_gb=2.0,
    )
    workflow.connect([
        (gather, reduce, [("out", "stats")]),
        (mask, reduce, [("voxels", "voxels")]),
    ])
    if cover is not None:
        workflow.connect(cover, "out", reduce, "stats_voxels")
    if inputs.nodes_file is not None:
        reduce.inputs.nodes = str(inputs.nodes_file)
        workflow.connect(gather_nodes, "out", reduce, "node_values")
    return mask, reduce


def _streamed_batches(
    workflow: pe.Workflow, inputs: RunInputs, subjects: list[SubjectData], mask: pe.Node,
    prefix: str,
) -> tuple[pe.Node, pe.Node, pe.Node]:
    """``--no-cache``: batches that decode each subject once and correlate it at once.

    No preparation nodes: every ``accumulate_batch_<b>`` reads its subjects' files
    (:class:`StreamConnectivity`) and reports the voxels valid in all of them; the
    analysis mask is their intersection, and the reduce step cuts each batch's sums
    to it (see :mod:`bids_cnm.engine.streaming`).

    Returns
    -------
    gather, gather_nodes, cover : Node
        Merges of the batches' sums, node values and voxel lists.
    """
    config = inputs.config
    groups = batches(subjects, config.batch_size, config.nprocs)
    # a decoded subject (as preparing it) and the running sums (as accumulating)
    mem_gb = check_preparation(config, subjects) + 2.0
    gather = _merge(len(groups), f"{prefix}collect_stats")
    gather_nodes = _merge(len(groups), f"{prefix}collect_node_values")
    cover = _merge(len(groups), f"{prefix}collect_voxels")
    valid = _merge(len(groups), f"{prefix}collect_valid_masks")
    for b, members in enumerate(groups):
        stream = pe.Node(
            StreamConnectivity(
                subjects=[streamed_spec(s, config) for s in members],
                seeds=str(inputs.seeds_file),
                dtype=config.cache_dtype, batch=f"{prefix}batch {b + 1}/{len(groups)}",
                # batches run side by side: share the cores instead of oversubscribing
                n_threads=max(1, (os.cpu_count() or 1) // min(len(groups), config.nprocs)),
                seed_signal=config.seed_signal, run_combination=config.run_combination,
            ),
            name=f"{prefix}accumulate_batch_{b}",
            mem_gb=mem_gb,
        )
        if inputs.support_file is not None:
            stream.inputs.support = str(inputs.support_file)
        if inputs.nodes_file is not None:
            stream.inputs.nodes = str(inputs.nodes_file)
            workflow.connect(stream, "node_values", gather_nodes, f"in{b + 1}")
        workflow.connect([
            (stream, gather, [("stats", f"in{b + 1}")]),
            (stream, cover, [("voxels", f"in{b + 1}")]),
            (stream, valid, [("valid_mask", f"in{b + 1}")]),
        ])
    workflow.connect(valid, "out", mask, "masks")
    return gather, gather_nodes, cover


def sample_pool(inputs: RunInputs) -> Path:
    """Where a ``--no-cache`` run draws the degree sample from, as a mask file.

    The brain masks' intersection (the seeds' support), which bounds the analysis
    mask; without brain masks, the first subject's non-zero voxels (one volume read),
    written once into the work folder.
    """
    if inputs.support_file is not None:
        return Path(inputs.support_file)
    connectome = inputs.connectome
    key = cache_key([connectome.reference], [])  # the file's path, size and time
    path = Path(inputs.config.work_dir) / f"sample_pool_{key}.nii.gz"
    if not path.exists():
        write_nifti(path, nb.Nifti1Image(data_support(connectome).astype(np.uint8),
                                         connectome.affine))
    return path


def init_degree_check(
    workflow: pe.Workflow, inputs: RunInputs, mask: pe.Node, reduce: pe.Node
) -> pe.Node:
    """Add the degree map to the main pass's batches, and its comparison with the networks.

    The sample of grey-matter voxels is drawn once; every ``accumulate_batch_<b>`` node
    of the main pass (see :func:`init_connectivity_branch`) then adds its subjects'
    degree while their data are read for the seeds.

    Returns
    -------
    Node
        The check, with output ``out_files``.
    """
    config = inputs.config
    sample = pe.Node(DegreeSample(n_samples=config.degree_samples,
                                  space=inputs.connectome.space or "",
                                  random_seed=config.random_seed,
                                  cache_dir=str(Path(config.work_dir) / GREY_MATTER_FOLDER)),
                     name="degree_sample")
    check = pe.Node(
        DegreeCheck(
            writer=inputs.writer, entities=inputs.entities, threshold=inputs.thresholds[0],
            primary_sets=list(config.primary_sets), random_seed=config.random_seed,
            sources=[f"bids:connectome:sub-{s.label}" for s in inputs.connectome.subjects],
        ),
        name="degree_check",
    )
    if config.relocation_mask is not None:
        sample.inputs.grey_matter = str(config.relocation_mask)
    if config.no_cache:
        # the batches need the sample before any subject is read, so before the analysis
        # mask exists: draw it from the brain masks' intersection (docs/methods.md)
        sample.inputs.candidates = str(sample_pool(inputs))
    else:
        workflow.connect([(mask, sample, [("voxels", "voxels"), ("mask", "mask")])])
    workflow.connect([(sample, check, [("grey_matter_source", "grey_matter_source")]),
                      (reduce, check, [("results", "results")])])
    batches = sorted((n for n in workflow.list_node_names()
                      if re.fullmatch(r"accumulate_batch_\d+", n)),
                     key=lambda n: int(n.rsplit("_", 1)[1]))
    gather = _merge(len(batches), "collect_degree")
    for b, name in enumerate(batches, 1):
        accumulate = workflow.get_node(name)
        workflow.connect([(sample, accumulate, [("sample", "degree_sample")]),
                          (accumulate, gather, [("degree", f"in{b}")])])
    workflow.connect(gather, "out", check, "degree")
    return check


def init_group_wf(inputs: RunInputs) -> pe.Workflow:
    """Group level: streamed connectivity sums, t-maps, overlap networks, variants, tests.

    Connectivity is computed on the fly from the prepared time series, or read
    back from participant-level z-maps when ``inputs.reuse_maps`` is given.

    Parameters
    ----------
    inputs : RunInputs

    Returns
    -------
    nipype Workflow
    """
    config = inputs.config
    subjects = list(inputs.connectome.subjects)
    workflow = pe.Workflow(name="cnm_wf", base_dir=str(config.work_dir))
    workflow.config["execution"].update(execution_settings(config))
    mask, reduce = init_connectivity_branch(
        workflow, inputs, inputs.connectome, reuse_maps=inputs.reuse_maps
    )
    outputs = pe.Node(
        GroupOutputs(
            writer=inputs.writer,
            entities=inputs.entities,
            threshold=inputs.thresholds[0],
            thresholds=list(inputs.thresholds[1:]),
            primary_sets=list(config.primary_sets),
            subgroups=list(config.subgroups),
            sources=[f"bids:connectome:sub-{s.label}" for s in subjects],
        ),
        name="group_outputs",
    )
    workflow.connect([
        (reduce, outputs, [("results", "results")]),
        (mask, outputs, [("mask", "mask")]),
    ])
    finals = [outputs]
    if config.degree_check and inputs.reuse_maps is None:
        finals.append(init_degree_check(workflow, inputs, mask, reduce))
    elif config.degree_check:
        logging.getLogger("bids_cnm").info(
            "degree check skipped: the participant z-maps are reused, the time series are not "
            "read (remove them or use a new output folder to get it)")
    for primary in config.primary_sets if inputs.control_sets else ():
        for control in inputs.control_sets:
            test = pe.Node(
                Specificity(
                    primary_set=primary, control_set=control,
                    n_permutations=config.n_permutations, tfce=config.tfce,
                    maps=config.specificity_maps, threshold=config.t_threshold,
                    random_seed=config.random_seed, writer=inputs.writer,
                    entities=inputs.entities,
                ),
                name=f"specificity_{_safe(primary)}_vs_{_safe(control)}",
                mem_gb=2.0,
            )
            workflow.connect(reduce, "results", test, "results")
            finals.append(test)
    if inputs.compare is not None:
        _, compare_reduce = init_connectivity_branch(workflow, inputs, inputs.compare,
                                                     prefix="compare_")
        compare = pe.Node(
            CompareConnectome(
                label=inputs.compare_label, writer=inputs.writer, entities=inputs.entities,
                threshold=inputs.thresholds[0], primary_sets=list(config.primary_sets),
                sources=[f"bids:compare:sub-{s.label}" for s in inputs.compare.subjects],
            ),
            name="compare_connectome",
        )
        workflow.connect([
            (reduce, compare, [("results", "results")]),
            (compare_reduce, compare, [("results", "compare_results")]),
        ])
        finals.append(compare)
    if inputs.plan_file is not None:
        plan = pe.Node(
            PlanAnalyses(
                plan=str(inputs.plan_file), coordinates=str(config.coordinates),
                writer=inputs.writer, entities=inputs.entities, threshold=inputs.thresholds[0],
            ),
            name="plan_analyses",
            mem_gb=2.0,
        )
        workflow.connect(reduce, "results", plan, "results")
        if inputs.plan is not None and inputs.plan.ale is not None:
            # the ALE reads only the coordinates: it runs from the start, beside the
            # connectome's preparation, not after the connectivity (NiMARE's 10,000
            # Monte-Carlo iterations take minutes); imported here: a plan with an ALE
            # loads the plan's analyses anyway, a run without one need not
            from bids_cnm.analyses.run_plan import ale_part

            ale = pe.Node(PlanALE(plan=ale_part(inputs.plan),
                                  coordinates=str(config.coordinates)),
                          name="plan_ale", mem_gb=1.0)
            workflow.connect(ale, "maps", plan, "ale_maps")
        finals.append(plan)
    # the report reads the derivatives from disk, once every step has written its own
    gather = _merge(len(finals), "collect_outputs")
    for i, node in enumerate(finals, 1):
        workflow.connect(node, "out_files", gather, f"in{i}")
    report = pe.Node(
        GroupReport(output_dir=inputs.writer["output_dir"], command=list(inputs.command)),
        name="report",
    )
    workflow.connect(gather, "out", report, "after")
    return stamp_code(workflow)
