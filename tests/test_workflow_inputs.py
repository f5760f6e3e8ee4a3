"""The pure functions that resolve a run's inputs before its workflow is built."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from bids_cnm.config import Config
from bids_cnm.errors import EX_DATAERR, EX_IOERR, UsageError
from bids_cnm.io.derivatives import bids_name
from bids_cnm.workflows.crash import error_from_crash
from bids_cnm.workflows.inputs import (
    check_columns,
    connectivity_hash,
    control_sets,
    find_participant_maps,
    load_seed_ids,
    resolve_inputs,
)


def _config(tmp_path, **changes) -> Config:
    return Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="group",
                  coordinates=Path("coords.tsv"), work_dir=tmp_path / "work", **changes)


def test_check_columns_names_the_option(tmp_path):
    table = pd.DataFrame({"study": ["a"], "set": ["primary"], "modality": ["fMRI"]})
    check_columns(_config(tmp_path, subgroups=("modality",)), table)
    with pytest.raises(UsageError, match="--subgroups subtype: coords.tsv has no column"):
        check_columns(_config(tmp_path, subgroups=("subtype",)), table)
    with pytest.raises(UsageError, match="--control-sets other: no such set"):
        check_columns(_config(tmp_path, control_sets=("other",)), table)


def test_control_sets_skip_single_networks(tmp_path, caplog):
    seeds = pd.DataFrame({"set": ["primary", "primary", "ctl", "ctl", "one"],
                          "variant": ["main"] * 5})
    assert control_sets(_config(tmp_path, random_relocations=0), seeds) == ["ctl"]
    assert "set 'one' has 1 study network(s)" in caplog.text
    assert control_sets(_config(tmp_path), seeds) == ["ctl", "random"]
    assert control_sets(_config(tmp_path, control_sets=("one",), random_relocations=0),
                        seeds) == []


def test_connectivity_hash_ignores_group_settings(tmp_path):
    base = connectivity_hash(_config(tmp_path), "seeds1")
    assert base == connectivity_hash(_config(tmp_path, t_threshold=4.0, nprocs=4), "seeds1")
    assert base != connectivity_hash(_config(tmp_path), "seeds2")
    assert base != connectivity_hash(_config(tmp_path, cache_dtype="int16"), "seeds1")


def test_find_participant_maps(tiny_connectome, tiny_coordinates, tmp_path, monkeypatch):
    config = Config(bids_dir=tiny_connectome, output_dir=tmp_path / "out",
                    analysis_level="group", coordinates=tiny_coordinates,
                    work_dir=tmp_path / "work", participant_label=("01",))
    inputs = resolve_inputs(config)
    seeds = load_seed_ids(inputs)
    assert seeds == ["StudyA", "StudyB", "StudyC", "CtrlX"]
    found, reason = find_participant_maps(inputs, seeds)
    assert found is None and reason.startswith("no participant output")
    folder = tmp_path / "out" / "sub-01" / "func"
    folder.mkdir(parents=True)
    names = [bids_name(dict(inputs.entities, sub="01", seed=s, stat="z"), "boldmap", ".nii.gz")
             for s in seeds]
    names.append(bids_name(dict(inputs.entities, sub="01", desc="connectivity"), "mask",
                           ".nii.gz"))
    made = dict(inputs.provenance, ConnectomeKey=inputs.subject_keys["01"])
    for name in names:
        (folder / name).write_bytes(b"")
        (folder / name.replace(".nii.gz", ".json")).write_text(json.dumps(made))
    found, reason = find_participant_maps(inputs, seeds)
    assert found == {"01": [str(folder / n) for n in names]}
    other = dataclasses.replace(inputs, provenance={"ConnectivityHash": "another"})
    found, reason = find_participant_maps(other, seeds)
    assert found is None and "other seeds, settings or bids_cnm code" in reason
    # same settings, other data (another connectome, or its files rewritten)
    other = dataclasses.replace(inputs, subject_keys={"01": "another"})
    found, reason = find_participant_maps(other, seeds)
    assert found is None and "other data of sub-01" in reason
    # the same settings and data, another bids_cnm (its files, one edited)
    from bids_cnm.io import code_identity

    copy = tmp_path / "upgraded" / "bids_cnm"
    shutil.copytree(code_identity.PACKAGE_ROOT, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "config.py").write_text((copy / "config.py").read_text() + "\n# edited\n")
    monkeypatch.setattr(code_identity, "PACKAGE_ROOT", copy)
    found, reason = find_participant_maps(resolve_inputs(config), seeds)
    assert found is None and "other seeds, settings or bids_cnm code" in reason


def test_error_from_crash(tmp_path):
    started = time.time()
    assert error_from_crash(tmp_path, started).exit_code == EX_IOERR
    old = tmp_path / "crash-old.txt"
    old.write_text("bids_cnm.errors.UsageError: an earlier run's\n")
    os.utime(old, (started - 100, started - 100))
    (tmp_path / "crash-new.txt").write_text(
        "Traceback\n  raise\nbids_cnm.errors.InputDataError: sub-02: bad data\n")
    error = error_from_crash(tmp_path, started - 1)
    assert error.exit_code == EX_DATAERR and error.message == "sub-02: bad data"
    (tmp_path / "crash-new.txt").write_text("Traceback\nValueError: boom\n")
    error = error_from_crash(tmp_path, started - 1)
    assert error.exit_code == EX_IOERR and "ValueError: boom" in error.message
