"""Which bids_cnm computed a step or an output (bids_cnm.io.code_identity)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

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
    # byte-code and numba caches follow from the sources: not part of it
    (copy / "engine" / "__pycache__").mkdir(exist_ok=True)
    (copy / "engine" / "__pycache__" / "connectivity.f-1.py311.nbi").write_bytes(b"x")
    module._identity.cache_clear()
    assert module._identity(copy) == identity
    changes = {
        "a source": lambda: (copy / "stats" / "__init__.py").write_text(
            (copy / "stats" / "__init__.py").read_text() + "\n# edited\n"),
        "a data file": lambda: (copy / "data" / "plan.schema.json").write_bytes(
            (copy / "data" / "plan.schema.json").read_bytes() + b" "),
        "a renamed file": lambda: (copy / "errors.py").rename(copy / "errors_.py"),
        "a new file": lambda: (copy / "reports" / "new.txt").write_text(""),
    }
    seen = {identity}
    for what, change in changes.items():
        change()
        module._identity.cache_clear()
        now = module._identity(copy)
        assert now not in seen, what
        seen.add(now)


def test_every_step_carries_the_code_and_nipype_hashes_it(tiny_connectome, tiny_coordinates,
                                                          tmp_path):
    """A step cached by other code is not reused: the code is among the inputs nipype
    hashes (its own ``get_hashval``, as a run takes it) of every step of bids_cnm."""
    from bids_cnm.config import Config
    from bids_cnm.workflows.base import init_group_wf, init_participant_wf
    from bids_cnm.workflows.inputs import resolve_inputs

    config = Config(bids_dir=tiny_connectome, output_dir=tmp_path / "out",
                    analysis_level="group", coordinates=tiny_coordinates,
                    work_dir=tmp_path / "work", nprocs=2)
    inputs = resolve_inputs(config, ("bids_cnm", "test"))
    participant = resolve_inputs(dataclasses.replace(config, analysis_level="participant"),
                                 ("bids_cnm", "test"))
    steps = 0
    for workflow in (init_group_wf(inputs), init_participant_wf(participant)):
        hash_method = workflow.config["execution"]["hash_method"]
        for name in workflow.list_node_names():
            node = workflow.get_node(name)
            if not type(node.interface).__module__.startswith("bids_cnm."):
                continue  # nipype's own list merges: nothing computed
            steps += 1
            assert node.inputs.code == code_identity(), name
            before = node.inputs.get_hashval(hash_method)[1]
            node.inputs.code = "0.1.0+000000000000"
            assert node.inputs.get_hashval(hash_method)[1] != before, name
    assert steps >= 10

