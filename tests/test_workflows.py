"""Structural tests: the workflows' node names and connections, built without running nipype.

Node names are part of the contract: participant and group runs sharing a work folder
share the preparation nodes (``prepare_sub_<label>``), so the connectome is decoded once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bids_cnm.config import Config
from bids_cnm.workflows.base import init_group_wf, init_participant_wf
from bids_cnm.workflows.inputs import resolve_inputs

SUBJECTS = [f"{i:02d}" for i in range(1, 9)]


@pytest.fixture(scope="module")
def inputs(tiny_connectome, tiny_coordinates, tmp_path_factory):
    """RunInputs of a group run on the tiny connectome (seeds saved, nothing run)."""
    root = tmp_path_factory.mktemp("structure")
    config = Config(bids_dir=tiny_connectome, output_dir=root / "out", analysis_level="group",
                    coordinates=tiny_coordinates, work_dir=root / "work", nprocs=2)
    return resolve_inputs(config, ("bids_cnm", "test"))


def _names(workflow) -> set[str]:
    return set(workflow.list_node_names())


def _edges(workflow) -> set[tuple[str, str, str, str]]:
    """(source node, output, destination node, input) of every connection."""
    return {
        (u.name, src, v.name, dst)
        for u, v, data in workflow._graph.edges(data=True)
        for src, dst in data["connect"]
    }


def _with(inputs, **changes):
    return dataclasses.replace(inputs, config=dataclasses.replace(inputs.config, **changes))


def test_participant_wf_one_branch_per_subject(inputs):
    workflow = init_participant_wf(_with(inputs, analysis_level="participant"))
    assert workflow.name == "cnm_wf"
    assert _names(workflow) == ({f"prepare_sub_{s}" for s in SUBJECTS}
                                | {f"zmaps_sub_{s}" for s in SUBJECTS})
    assert _edges(workflow) == {
        (f"prepare_sub_{s}", "prepared", f"zmaps_sub_{s}", "prepared") for s in SUBJECTS
    }
    node = workflow.get_node("zmaps_sub_01")
    assert node.inputs.seeds == str(inputs.seeds_file)
    # each subject's z-maps carry its data's key (reused only for the same files)
    assert node.inputs.provenance == dict(inputs.provenance,
                                          ConnectomeKey=inputs.subject_keys["01"])
    assert len(set(inputs.subject_keys.values())) == len(SUBJECTS)


def test_participant_wf_prepare_only(inputs):
    workflow = init_participant_wf(_with(inputs, write_participant_maps=False))
    assert _names(workflow) == {f"prepare_sub_{s}" for s in SUBJECTS}
    assert not _edges(workflow)


def test_group_wf_streams_in_batches(inputs):
    workflow = init_group_wf(inputs)
    names = _names(workflow)
    assert {f"prepare_sub_{s}" for s in SUBJECTS} <= names
    # 8 subjects, 2 processes: two batches of four, side by side
    assert {"accumulate_batch_0", "accumulate_batch_1", "collect_batch_0", "collect_batch_1",
            "collect_prepared", "analysis_mask", "collect_stats", "reduce", "group_outputs",
            "plan_analyses", "collect_outputs", "report"} <= names
    assert "accumulate_batch_2" not in names and "accumulate_from_maps" not in names
    assert not any(n.startswith("specificity_") or n.startswith("compare_") for n in names)
    edges = _edges(workflow)
    for i, subject in enumerate(SUBJECTS):
        batch, slot = divmod(i, 4)
        assert (f"prepare_sub_{subject}", "prepared", f"collect_batch_{batch}",
                f"in{slot + 1}") in edges
        assert (f"prepare_sub_{subject}", "prepared", "collect_prepared", f"in{i + 1}") in edges
    for b in (0, 1):
        assert (f"collect_batch_{b}", "out", f"accumulate_batch_{b}", "prepared") in edges
        assert ("analysis_mask", "voxels", f"accumulate_batch_{b}", "voxels") in edges
        assert (f"accumulate_batch_{b}", "stats", "collect_stats", f"in{b + 1}") in edges
    assert {("collect_prepared", "out", "analysis_mask", "prepared"),
            ("collect_stats", "out", "reduce", "stats"),
            ("analysis_mask", "voxels", "reduce", "voxels"),
            ("reduce", "results", "group_outputs", "results"),
            ("analysis_mask", "mask", "group_outputs", "mask"),
            ("reduce", "results", "plan_analyses", "results"),
            ("group_outputs", "out_files", "collect_outputs", "in1"),
            ("plan_analyses", "out_files", "collect_outputs", "in2"),
            ("collect_outputs", "out", "report", "after")} <= edges
    assert workflow.get_node("report").inputs.command == ["bids_cnm", "test"]


def test_group_wf_reads_participant_maps(inputs, tmp_path):
    maps = {s: [str(tmp_path / f"z{s}_{k}.nii.gz") for k in range(4)]
            + [str(tmp_path / f"m{s}.nii.gz")] for s in SUBJECTS}
    for path in (p for paths in maps.values() for p in paths):
        Path(path).touch()  # the interfaces' traits want existing files
    workflow = init_group_wf(dataclasses.replace(inputs, reuse_maps=maps))
    names = _names(workflow)
    assert "accumulate_from_maps" in names
    assert not any(n.startswith(("prepare_", "accumulate_batch", "collect_batch"))
                   for n in names)
    reader = workflow.get_node("accumulate_from_maps")
    assert reader.inputs.zmaps == [f for s in SUBJECTS for f in maps[s][:-1]]
    assert workflow.get_node("analysis_mask").inputs.masks == [maps[s][-1] for s in SUBJECTS]
    assert {("analysis_mask", "voxels", "accumulate_from_maps", "voxels"),
            ("accumulate_from_maps", "stats", "collect_stats", "in1")} <= _edges(workflow)


def test_group_wf_specificity_and_compare_cohort(inputs):
    """One test per control set; a second, overlapping cohort of the same dataset shares
    the preparation nodes (it crashed with "Duplicate node name" before)."""
    from bids_cnm.io.connectome import index_connectome

    cohort = index_connectome(inputs.config.bids_dir, participant_filter=(("group", "IGE"),))
    changed = dataclasses.replace(
        _with(inputs, specificity=True), control_sets=["random"], compare=cohort,
        compare_label="IGE",
    )
    workflow = init_group_wf(changed)
    names = _names(workflow)
    assert "specificity_primary_vs_random" in names
    assert {"compare_analysis_mask", "compare_reduce", "compare_connectome"} <= names
    assert not any(n.startswith("compare_prepare") for n in names)
    edges = _edges(workflow)
    assert ("reduce", "results", "specificity_primary_vs_random", "results") in edges
    assert ("compare_reduce", "results", "compare_connectome", "compare_results") in edges
    # the IGE cohort (even subjects) reuses the main pass's preparation nodes
    assert ("prepare_sub_02", "prepared", "compare_collect_prepared", "in1") in edges
    finals = {u for u, _, v, _ in edges if v == "collect_outputs"}
    assert finals == {"group_outputs", "specificity_primary_vs_random", "compare_connectome",
                      "plan_analyses"}
