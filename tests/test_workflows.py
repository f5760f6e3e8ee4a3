"""Structural tests: the workflows' node names and connections, built without running nipype.

Node names are part of the contract.  Preparation is keyed by content outside nipype (a
cache folder per subject in the work folder), so participant jobs (``prepare_sub_<label>``)
and the group level's few batch nodes (``prepare_batch_<b>``) share the prepared data and
the connectome is decoded once.
"""

from __future__ import annotations

import dataclasses
import re
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
    """(source node, output, destination node, input) of every connection; an output
    passed through a connection function is named by the output alone."""
    return {
        (u.name, src[0] if isinstance(src, tuple) else src, v.name, dst)
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
    """--skip-participant-maps: only the cache is filled, in a few batch nodes."""
    workflow = init_participant_wf(_with(inputs, write_participant_maps=False))
    names = _names(workflow)
    assert names and all(re.fullmatch(r"prepare_batch_\d+", n) for n in names)
    assert len(names) <= inputs.config.nprocs
    assert not _edges(workflow)


def test_group_wf_streams_in_batches(inputs):
    workflow = init_group_wf(inputs)
    names = _names(workflow)
    batches = sorted(n for n in names if n.startswith("prepare_batch_"))
    assert batches == ["prepare_batch_0", "prepare_batch_1"]  # nprocs=2: two batches
    assert not any(n.startswith("prepare_sub_") for n in names)  # not one node per subject
    assert {"accumulate_batch_0", "accumulate_batch_1", "collect_prepared", "analysis_mask",
            "collect_stats", "reduce", "group_outputs", "collect_outputs", "report",
            "degree_sample", "degree_check"} <= names
    edges = _edges(workflow)
    for b in (0, 1):
        assert (f"prepare_batch_{b}", "prepared", f"accumulate_batch_{b}", "prepared") in edges
        assert (f"prepare_batch_{b}", "prepared", "collect_prepared", f"in{b + 1}") in edges
        assert ("analysis_mask", "voxels", f"accumulate_batch_{b}", "voxels") in edges
        assert (f"accumulate_batch_{b}", "stats", "collect_stats", f"in{b + 1}") in edges
        assert ("degree_sample", "sample", f"accumulate_batch_{b}", "degree_sample") in edges
    assert {("collect_prepared", "out", "analysis_mask", "prepared"),
            ("collect_stats", "out", "reduce", "stats"),
            ("reduce", "results", "group_outputs", "results"),
            ("reduce", "results", "degree_check", "results"),
            ("collect_outputs", "out", "report", "after")} <= edges
    # the gathering of lists runs in the main process (no worker hop, no cluster job)
    assert all(workflow.get_node(n).run_without_submitting
               for n in names if n.startswith("collect_"))
    # every subject is prepared by exactly one batch
    prepared = [s["label"] for b in batches
                for s in workflow.get_node(b).inputs.subjects]
    assert sorted(prepared) == SUBJECTS


def test_group_wf_reads_participant_maps(inputs, tmp_path):
    maps = {s: [str(tmp_path / f"z{s}_{k}.nii.gz") for k in range(4)]
            + [str(tmp_path / f"m{s}.nii.gz")] for s in SUBJECTS}
    for path in (p for paths in maps.values() for p in paths):
        Path(path).touch()  # the interfaces' traits want existing files
    workflow = init_group_wf(dataclasses.replace(inputs, reuse_maps=maps))
    names = _names(workflow)
    assert "accumulate_from_maps" in names
    assert not any(n.startswith(("prepare_", "accumulate_batch"))
                   for n in names)
    reader = workflow.get_node("accumulate_from_maps")
    assert reader.inputs.zmaps == [f for s in SUBJECTS for f in maps[s][:-1]]
    assert workflow.get_node("analysis_mask").inputs.masks == [maps[s][-1] for s in SUBJECTS]
    assert {("analysis_mask", "voxels", "accumulate_from_maps", "voxels"),
            ("accumulate_from_maps", "stats", "collect_stats", "in1")} <= _edges(workflow)


def test_group_wf_specificity_and_compare_cohort(inputs):
    """One test per control set; a second, overlapping cohort of the same dataset gets its
    own batch nodes (no "Duplicate node name"), which find the main pass's prepared
    subjects in the shared cache."""
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
    edges = _edges(workflow)
    assert ("reduce", "results", "specificity_primary_vs_random", "results") in edges
    assert ("compare_reduce", "results", "compare_connectome", "compare_results") in edges
    compare_batches = sorted(n for n in names if n.startswith("compare_prepare_batch_"))
    assert compare_batches
    for b, name in enumerate(compare_batches):
        assert (name, "prepared", f"compare_accumulate_batch_{b}", "prepared") in edges
    cohort_labels = sorted(s.label for s in cohort.subjects)
    prepared = sorted(s["label"] for n in compare_batches
                      for s in workflow.get_node(n).inputs.subjects)
    assert prepared == cohort_labels
    main = {s["label"]: s["bold"] for n in names if n.startswith("prepare_batch_")
            for s in workflow.get_node(n).inputs.subjects}
    for n in compare_batches:  # the same files, hence the same cache keys
        for s in workflow.get_node(n).inputs.subjects:
            assert s["bold"] == main[s["label"]]
    finals = {u for u, _, v, _ in edges if v == "collect_outputs"}
    assert finals == {"group_outputs", "specificity_primary_vs_random", "compare_connectome",
                      "plan_analyses", "degree_check"}


def test_the_plans_ale_runs_from_the_start(inputs):
    """The ALE reads only the coordinates: no step comes before it (it runs beside the
    preparation), and its maps go to the plan's step; a plan without ALE has no such step."""
    from bids_cnm.plan import plan_from_dict

    def ale_step(plan: dict):
        workflow = init_group_wf(dataclasses.replace(inputs, plan=plan_from_dict(plan)))
        return workflow, workflow.get_node("plan_ale")

    hash_method = init_group_wf(inputs).config["execution"]["hash_method"]

    def cache_key(node) -> str:  # nipype's hash of the step's inputs, as the run takes it
        return node.inputs.get_hashval(hash_method)[1]

    workflow, ale = ale_step({"ale": {"n_iters": 100}})
    edges = _edges(workflow)
    assert not [e for e in edges if e[2] == "plan_ale"]
    assert ("plan_ale", "maps", "plan_analyses", "ale_maps") in edges
    assert "plan_ale" not in _names(init_group_wf(inputs))
    # nipype's cache of the ALE outlives edits of the rest of the plan, not of its own part
    key = cache_key(ale)
    edited = {"ale": {"n_iters": 100}, "validation": {"controls": False}, "dbs": None}
    assert cache_key(ale_step(edited)[1]) == key
    for other in ({"ale": {"n_iters": 200}}, {"ale": {"n_iters": 100}, "random_seed": 3},
                  {"ale": {"n_iters": 100}, "primary_sets": ["IGE"]}):
        assert cache_key(ale_step(other)[1]) != key, other


def test_prepared_batches_run_in_the_main_process(inputs, tmp_path):
    """Once every subject of a batch is prepared, its check runs in the main process (no
    worker, no cluster job); a batch with a subject left to prepare goes to a worker."""
    from bids_cnm.engine.timeseries import cache_key, prepare_subject
    from bids_cnm.workflows.base import all_prepared

    changed = _with(inputs, work_dir=tmp_path / "work")
    subjects = list(changed.connectome.subjects)
    assert not all_prepared(changed.config, subjects)
    for subject in subjects[:-1]:  # all but the last: the second batch is incomplete
        prepare_subject(list(subject.bold), list(subject.masks),
                        tmp_path / "work" / "prepared"
                        / cache_key(subject.bold, subject.masks, changed.config.cache_dtype))
    workflow = init_group_wf(changed)
    assert workflow.get_node("prepare_batch_0").run_without_submitting
    assert not workflow.get_node("prepare_batch_1").run_without_submitting


def test_no_cache_batches_read_the_files_once(inputs, tmp_path):
    """--no-cache keeps no copy: no preparation node; each batch decodes its subjects once
    and reports their valid voxels, which make the analysis mask, which cuts the batches'
    sums in the reduce step; the degree sample is drawn before the batches run."""
    workflow = init_group_wf(_with(inputs, work_dir=tmp_path / "work", no_cache=True))
    names, edges = _names(workflow), _edges(workflow)
    assert not [n for n in names if "prepare" in n]
    batches = sorted(n for n in names if re.fullmatch(r"accumulate_batch_\d+", n))
    assert len(batches) == 2
    spread = [s["label"] for n in batches for s in workflow.get_node(n).inputs.subjects]
    assert spread == SUBJECTS  # every subject in exactly one batch
    for b, name in enumerate(batches, 1):
        node = workflow.get_node(name)
        assert node.inputs.support == str(inputs.support_file)
        assert not node.run_without_submitting
        assert {(name, "voxels", "collect_voxels", f"in{b}"),
                (name, "valid_mask", "collect_valid_masks", f"in{b}"),
                (name, "stats", "collect_stats", f"in{b}"),
                ("degree_sample", "sample", name, "degree_sample")} <= edges
    assert {("collect_valid_masks", "out", "analysis_mask", "masks"),
            ("collect_voxels", "out", "reduce", "stats_voxels"),
            ("analysis_mask", "voxels", "reduce", "voxels")} <= edges
    assert not [e for e in edges if e[2] == "degree_sample"]  # not from the analysis mask
    assert workflow.get_node("degree_sample").inputs.candidates == str(inputs.support_file)


def test_participant_no_cache_decodes_in_the_maps_node(inputs, tmp_path):
    workflow = init_participant_wf(_with(inputs, analysis_level="participant",
                                         work_dir=tmp_path / "work", no_cache=True))
    assert _names(workflow) == {f"zmaps_sub_{s}" for s in SUBJECTS}
    node = workflow.get_node("zmaps_sub_01")
    assert node.inputs.subject["label"] == "01" and node.inputs.subject["bold"]
