"""Nipype workflows of bids_cnm (niworkflows-style ``init_*_wf`` builders).

The top-level workflow is always named ``cnm_wf`` and every subject's
preparation node ``prepare_sub_<label>``, so participant and group runs that
share a work directory share the prepared time series: the expensive decoding
of the connectome happens once, whatever is analysed afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_cnm.config import Config
from bids_cnm.interfaces.cnm import (
    AccumulateConnectivity,
    AccumulateFromMaps,
    AnalysisMask,
    GroupOutputs,
    ParticipantMaps,
    PrepareTimeseries,
)
from bids_cnm.io.connectome import Connectome, SubjectData


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


def _node_name(prefix: str, label: str) -> str:
    return f"{prefix}_sub_{re.sub(r'[^a-zA-Z0-9]', '_', label)}"


def init_prepare_node(subject: SubjectData, config: Config) -> pe.Node:
    """The node that prepares one subject's time series."""
    return pe.Node(
        PrepareTimeseries(
            bold=list(subject.bold), masks=list(subject.masks), dtype=config.cache_dtype
        ),
        name=_node_name("prepare", subject.label),
        mem_gb=1.0,
    )


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
    for subject in inputs.connectome.subjects:
        prepare = init_prepare_node(subject, config)
        maps = pe.Node(
            ParticipantMaps(
                seeds=str(inputs.seeds_file),
                label=subject.label,
                writer=inputs.writer,
                entities=inputs.entities,
                sources=[str(p) for p in subject.bold],
                provenance=inputs.provenance,
            ),
            name=_node_name("zmaps", subject.label),
        )
        workflow.connect(prepare, "prepared", maps, "prepared")
    return workflow


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


def init_group_wf(inputs: RunInputs) -> pe.Workflow:
    """Group level: streamed connectivity sums, t-maps, overlap networks, peaks.

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

    mask = pe.Node(AnalysisMask(), name="analysis_mask")
    if inputs.support_file is not None:
        mask.inputs.support = str(inputs.support_file)
    if inputs.reuse_maps is None:
        prepares = [init_prepare_node(s, config) for s in subjects]
        collect = pe.Node(niu.Merge(len(prepares)), name="collect_prepared")
        for i, node in enumerate(prepares, 1):
            workflow.connect(node, "prepared", collect, f"in{i}")
        workflow.connect(collect, "out", mask, "prepared")
    else:
        # the participant level wrote each subject's valid-voxel mask last
        mask.inputs.masks = [inputs.reuse_maps[s.label][-1] for s in subjects]

    outputs = pe.Node(
        GroupOutputs(
            seeds=str(inputs.seeds_file),
            writer=inputs.writer,
            entities=inputs.entities,
            thresholds=list(inputs.thresholds),
            sources=[f"bids:connectome:sub-{s.label}" for s in subjects],
        ),
        name="group_outputs",
    )
    workflow.connect([(mask, outputs, [("voxels", "voxels"), ("mask", "mask")])])

    if inputs.reuse_maps is not None:
        from bids_cnm.seeds import load_seeds

        n_seeds = len(load_seeds(str(inputs.seeds_file)))
        files = [f for s in subjects for f in inputs.reuse_maps[s.label][:-1]]
        reader = pe.Node(
            AccumulateFromMaps(zmaps=files, n_seeds=n_seeds), name="accumulate_from_maps"
        )
        workflow.connect(mask, "voxels", reader, "voxels")
        gather = pe.Node(niu.Merge(1), name="collect_stats")
        workflow.connect(reader, "stats", gather, "in1")
    else:
        groups = batches(list(range(len(subjects))), config.batch_size, config.nprocs)
        gather = pe.Node(niu.Merge(len(groups)), name="collect_stats")
        for b, members in enumerate(groups):
            merge = pe.Node(niu.Merge(len(members)), name=f"collect_batch_{b}")
            for j, i in enumerate(members, 1):
                workflow.connect(prepares[i], "prepared", merge, f"in{j}")
            accumulate = pe.Node(
                AccumulateConnectivity(
                    seeds=str(inputs.seeds_file), batch=f"batch {b + 1}/{len(groups)}"
                ),
                name=f"accumulate_batch_{b}",
                mem_gb=2.0,
            )
            workflow.connect([
                (merge, accumulate, [("out", "prepared")]),
                (mask, accumulate, [("voxels", "voxels")]),
                (accumulate, gather, [("stats", f"in{b + 1}")]),
            ])
    workflow.connect(gather, "out", outputs, "stats")
    return workflow
