"""Which bids_cnm computed a step or an output (bids_cnm.io.code_identity)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from bids_cnm import __version__
from bids_cnm.io import code_identity as module
from bids_cnm.io.code_identity import PACKAGE_ROOT, code_identity


def copy_of_package(root: Path) -> Path:
    """The installed package's files, without what Python and numba derive from them."""
    copy = root / "bids_cnm"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_same_files_have_the_same_identity_and_any_change_another(tmp_path):
    module._identity.cache_clear()  # the files as they are now
    copy = copy_of_package(tmp_path)
    identity = code_identity()
    assert identity.startswith(f"{__version__}+") and len(identity.split("+")[1]) == 12
    assert module._identity(copy) == identity  # the files alone, wherever they are
    # byte-code and numba caches follow from the sources, and a checkout's editor and
    # desktop files are in no installation: not part of it
    (copy / "engine" / "__pycache__").mkdir(exist_ok=True)
    (copy / "engine" / "__pycache__" / "connectivity.f-1.py311.nbi").write_bytes(b"x")
    (copy / "engine" / ".connectivity.py.swp").write_bytes(b"x")
    (copy / "reports" / ".DS_Store").write_bytes(b"x")
    (copy / "reports" / "notes.txt").write_text("a note")
    module._identity.cache_clear()
    assert module._identity(copy) == identity
    changes = {
        "a source": lambda: (copy / "stats" / "__init__.py").write_text(
            (copy / "stats" / "__init__.py").read_text() + "\n# edited\n"),
        "a data file": lambda: (copy / "data" / "plan.schema.json").write_bytes(
            (copy / "data" / "plan.schema.json").read_bytes() + b" "),
        "a renamed file": lambda: (copy / "errors.py").rename(copy / "errors_.py"),
        "a new module": lambda: (copy / "reports" / "new.py").write_text(""),
        "a new template": lambda: (copy / "reports" / "templates" / "new.j2").write_text(""),
    }
    seen = {identity}
    for what, change in changes.items():
        change()
        module._identity.cache_clear()
        now = module._identity(copy)
        assert now not in seen, what
        seen.add(now)


def test_the_digested_files_are_those_an_installation_holds():
    """The patterns are setup.cfg's package data (and the modules), and they cover every
    file of the package the repository tracks: a checkout and a wheel have one identity."""
    import configparser
    import subprocess

    if not (PACKAGE_ROOT.parent / "setup.cfg").is_file():
        pytest.skip("an installed package, not a checkout")
    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE_ROOT.parent / "setup.cfg")
    data = {p.strip() for p in cfg["options.package_data"]["bids_cnm"].split(",")}
    assert set(module.PACKAGE_FILES) == {"**/*.py"} | data
    tracked = subprocess.run(["git", "ls-files", "bids_cnm"], cwd=PACKAGE_ROOT.parent,
                             capture_output=True, text=True, check=False)
    if tracked.returncode != 0 or not tracked.stdout:
        pytest.skip("not a git checkout")
    digested = {p.relative_to(PACKAGE_ROOT.parent).as_posix()
                for pattern in module.PACKAGE_FILES for p in PACKAGE_ROOT.glob(pattern)}
    assert set(tracked.stdout.split()) <= digested


def test_every_step_carries_the_code_and_nipype_hashes_it(tiny_connectome, tiny_coordinates,
                                                          tmp_path):
    """A step cached by other code is not reused: the code is among the inputs nipype
    hashes (its own ``get_hashval``, as a run takes it) of every step of bids_cnm, in
    every kind of workflow the builders make."""
    from nipype.interfaces.utility import Merge

    from bids_cnm.config import Config
    from bids_cnm.io.connectome import index_connectome
    from bids_cnm.plan import plan_from_dict
    from bids_cnm.workflows.base import init_group_wf, init_participant_wf
    from bids_cnm.workflows.inputs import resolve_inputs

    config = Config(bids_dir=tiny_connectome, output_dir=tmp_path / "out",
                    analysis_level="group", coordinates=tiny_coordinates,
                    work_dir=tmp_path / "work", nprocs=2)
    inputs = resolve_inputs(config, ("bids_cnm", "test"))

    def variant(**changes):
        return dataclasses.replace(inputs, config=dataclasses.replace(inputs.config, **changes))

    cohort = index_connectome(tiny_connectome, participant_filter=(("group", "IGE"),))
    maps = {s.label: [str(tmp_path / f"z{s.label}_{k}.nii.gz") for k in range(4)]
            + [str(tmp_path / f"m{s.label}.nii.gz")] for s in inputs.connectome.subjects}
    for path in (p for paths in maps.values() for p in paths):
        Path(path).touch()  # the interfaces' traits want existing files
    workflows = {
        "group": init_group_wf(inputs),
        "group, specificity, second cohort, plan with ALE": init_group_wf(dataclasses.replace(
            variant(specificity=True), control_sets=["random"], compare=cohort,
            compare_label="IGE", plan=plan_from_dict({"ale": {"n_iters": 100}}))),
        "group, --no-cache": init_group_wf(variant(no_cache=True)),
        "group from participant maps": init_group_wf(dataclasses.replace(inputs,
                                                                          reuse_maps=maps)),
        "participant": init_participant_wf(variant(analysis_level="participant")),
        "participant, --no-cache": init_participant_wf(variant(analysis_level="participant",
                                                               no_cache=True)),
        "participant, preparation only": init_participant_wf(variant(
            analysis_level="participant", write_participant_maps=False)),
    }
    kinds = set()
    for what, workflow in workflows.items():
        hash_method = workflow.config["execution"]["hash_method"]
        for name in workflow.list_node_names():
            node = workflow.get_node(name)
            if isinstance(node.interface, Merge):
                continue  # nipype's own list of its inputs: nothing computed
            kinds.add(type(node.interface).__name__)
            assert node.inputs.code == code_identity(), (what, name)
            before = node.inputs.get_hashval(hash_method)[1]
            node.inputs.code = "0.1.0+000000000000"
            assert node.inputs.get_hashval(hash_method)[1] != before, (what, name)
    # every step kind of bids_cnm.interfaces.cnm was seen (a new one joins this test)
    from bids_cnm.interfaces import cnm

    defined = {name for name, obj in vars(cnm).items() if isinstance(obj, type)
               and obj.__module__ == cnm.__name__ and name[0] != "_"
               and hasattr(obj, "input_spec")}
    assert kinds == defined



def test_a_step_without_the_code_is_refused():
    """A step whose cache would outlive a change of the code is a builder's bug, caught
    when the workflow is built."""
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline import engine as pe

    from bids_cnm.workflows.base import stamp_code

    workflow = pe.Workflow(name="wf")
    workflow.add_nodes([pe.Node(IdentityInterface(fields=["a"]), name="passes_on")])
    with pytest.raises(TypeError, match="step passes_on .* has no 'code' input"):
        stamp_code(workflow)

