"""The analysis plan end to end from the CLI on a small demo connectome with the demo plan."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_cnm.cli.run import main
from bids_cnm.demo.data import SPACE, make_demo_dataset
from bids_cnm.demo.plan import make_demo_plan


@pytest.fixture(scope="module")
def plan_command(tmp_path_factory):
    """The command of a group run with the demo plan, run once."""
    root = tmp_path_factory.mktemp("demo")
    demo = make_demo_dataset(root, n_subjects=6, n_volumes=50)
    plan = make_demo_plan(root)
    command = [str(demo.bids_dir), str(root / "out"), "group", "--coordinates",
               str(demo.coordinates), "-w", str(root / "work"), "--analysis", str(plan),
               "--nprocs", "2"]
    assert main(command) == 0
    return command


@pytest.fixture(scope="module")
def plan_run(plan_command):
    return Path(plan_command[1])


def test_plan_outputs_and_extra_seeds(plan_run):
    out = plan_run
    seeds = pd.read_csv(out / "seeds.tsv", sep="\t")
    assert {"dbs", "reference"} <= set(seeds["set"])
    g = f"task-rest_space-{SPACE}_res-4"
    for name in (f"dbs/{g}_set-dbs_desc-dbs_boldmap.nii.gz",
                 f"dbs/{g}_set-primary_thresh-5p1_desc-convergent_boldmap.nii.gz",
                 f"validation/{g}_set-primary_desc-roitoroi_values.tsv",
                 f"validation/{g}_set-primary_desc-roitoroi_summary.tsv",
                 "logs/plan.json", "bids_cnm_report.html"):
        assert (out / name).exists(), name
    # overlap networks are for coordinate sets only
    assert not list(out.rglob("*_set-dbs_thresh-*_desc-overlap_boldmap.nii.gz"))
    assert not list(out.rglob("*_set-reference_thresh-*"))
    plan = json.loads((out / "logs" / "plan.json").read_text())
    assert plan["primary_sets"] == ["primary"]


def test_roi_to_roi_values_come_from_every_subject(plan_run):
    out = plan_run
    values = pd.read_csv(next(out.glob("validation/*_desc-roitoroi_values.tsv")), sep="\t")
    assert values.shape[0] >= 6
    numeric = values.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy()).all()


def test_the_plan_as_run_is_an_output_of_the_rerun_check(plan_command, capsys):
    """logs/plan.json is written by the plan's step, not with the run's options: deleted
    or edited, it is written again by that step (not taken for a participant job's logs,
    which would keep the step cached with its file gone)."""
    out = Path(plan_command[1])
    plan_json = out / "logs" / "plan.json"
    written = plan_json.read_bytes()
    for change in ("delete", "edit"):
        if change == "delete":
            plan_json.unlink()
        else:
            plan_json.write_text("{}")
        capsys.readouterr()
        assert main(plan_command) == 0
        log = capsys.readouterr().err
        assert "an output of the earlier run was removed or modified" in log, change
        assert plan_json.read_bytes() == written
    assert main(plan_command) == 0
    assert "nothing to do: every output is up to date" in capsys.readouterr().err


def test_plan_rerun_verifies_until_a_file_the_plan_names_changes(plan_command, capsys):
    """The files the plan names, also those only its tables list (the DBS table's VAT
    images), are inputs of the re-run check (bids_cnm.io.rerun).  Last in this module:
    it runs the command again."""
    from bids_cnm.io.run_record import RECORD

    out = Path(plan_command[1])
    sealed = json.loads((out / RECORD).read_text())["levels"]["group"]["rerun"]
    vats = [Path(p) for p in sealed["plan_files"] if p.endswith("_vat.nii.gz")]
    assert vats, sealed["plan_files"]
    capsys.readouterr()
    assert main(plan_command) == 0
    assert "nothing to do: every output is up to date" in capsys.readouterr().err
    os.utime(vats[0])
    assert main(plan_command) == 0
    log = capsys.readouterr().err
    assert "re-run check: the plan's files changed since the earlier run" in log
    assert main(plan_command) == 0
    assert "nothing to do: every output is up to date" in capsys.readouterr().err
