"""The Boutiques descriptor and the container recipes agree with the command line.

``boutiques.json`` is generated from the argument parser (``python -m bids_cnm.cli.docs``);
these tests fail when the two drift apart, validate it with ``bosh``, and run the app
through ``bosh exec launch`` on a tiny connectome.  The Dockerfile and the Apptainer
definition cannot be built here (no container engine): their essentials are checked by
reading them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_COORDS, write_coordinates, write_tiny_connectome

from bids_cnm import __version__
from bids_cnm.cli import docs
from bids_cnm.cli.parser import build_parser

DESCRIPTOR = REPO / "boutiques.json"


def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def bosh_command() -> list[str]:
    """``bosh`` next to this Python (the console script of the boutiques package)."""
    pytest.importorskip("boutiques")
    exe = Path(sys.executable).parent / "bosh"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("bosh")
    if not found:
        pytest.skip("the boutiques package has no bosh executable on PATH")
    return [found]


def tool_env() -> dict:
    """Environment in which ``bids_cnm`` (this install's console script) is on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    return env


# ----------------------------------------------------------------- descriptor vs parser


def test_descriptor_is_up_to_date():
    assert DESCRIPTOR.read_text() == docs.boutiques_text(), (
        "boutiques.json differs from the parser: run `python -m bids_cnm.cli.docs`"
    )


def test_descriptor_lists_exactly_the_parser_options():
    """Checked against the parser directly, not through the generator's own mapping."""
    parser = build_parser()
    desc = descriptor()
    inputs = desc["inputs"]
    by_flag = {i["command-line-flag"]: i for i in inputs if "command-line-flag" in i}
    positional = [i for i in inputs if "command-line-flag" not in i]
    actions = [a for a in parser._actions if a.dest not in ("help", "version")]

    assert len(inputs) == len(actions)
    assert len({i["id"] for i in inputs}) == len(inputs)
    expected_positional = [a.dest for a in actions if not a.option_strings]
    assert [i["id"] for i in positional] == expected_positional
    # the command line puts the positional arguments first, in the parser's order
    keys = re.findall(r"\[[A-Z0-9_]+\]", desc["command-line"])
    assert keys[: len(positional)] == [i["value-key"] for i in positional]
    assert sorted(keys) == sorted(i["value-key"] for i in inputs)

    for action in actions:
        if not action.option_strings:
            continue
        matches = [f for f in by_flag if f in action.option_strings]
        assert len(matches) == 1, f"{action.option_strings} not in boutiques.json"
        entry = by_flag[matches[0]]
        assert entry["optional"] is not bool(action.required), action.dest
        assert (entry["type"] == "Flag") == (action.nargs == 0), action.dest
        if action.choices is not None:
            assert entry["value-choices"] == list(action.choices)
        assert bool(entry.get("list")) == (action.nargs in ("+", "*")), action.dest
    assert set(by_flag) == {docs.main_flag(a) for a in actions if a.option_strings}


def test_descriptor_metadata():
    desc = descriptor()
    assert desc["schema-version"] == "0.5"
    assert desc["tool-version"] == __version__
    assert desc["container-image"] == {
        "type": "docker", "image": f"ghcr.io/bids-cnm/bids_cnm:{__version__}",
        "entrypoint": True,
    }
    # the image a release publishes (.github/workflows/release.yml)
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text()
    assert "ghcr.io/bids-cnm/bids_cnm" in workflow or "ghcr.io/${{ github.repository }}" in workflow
    outputs = {o["id"]: o for o in desc["output-files"]}
    assert outputs["derivatives"]["path-template"] == "[OUTPUT_DIR]"
    assert outputs["dataset_description"]["path-template"] == (
        "[OUTPUT_DIR]/dataset_description.json"
    )
    assert "desc-overlap_boldmap.nii.gz" in outputs["overlap_map"]["path-template"]
    assert {e["code"] for e in desc["error-codes"]} == {18, 64, 65, 66, 73, 74}


def test_bosh_validate():
    result = subprocess.run([*bosh_command(), "validate", str(DESCRIPTOR)],
                            capture_output=True, text=True, env=tool_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_simulated_command_parses(tmp_path):
    """Every input given: bosh's command line means to the parser what the invocation says."""
    invocation = {
        "bids_dir": "/data/connectome",
        "output_dir": "/out",
        "analysis_level": "participant",
        "coordinates": "/data/coords.tsv",
        "participant_label": ["01", "02"],
        "participant_filter": ["group=IGE", "site=A"],
        "sphere_diameter": 8,
        "work_dir": "/scratch/work",
        "nprocs": 3,
        "cache_dtype": "int16",
        "nipype_plugin": "SLURM",
        "verbosity": True,
    }
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    result = subprocess.run(
        [*bosh_command(), "exec", "simulate", "-i", str(path), str(DESCRIPTOR)],
        capture_output=True, text=True, env=tool_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("bids_cnm "))
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert str(args.bids_dir) == "/data/connectome" and str(args.output_dir) == "/out"
    assert args.analysis_level == "participant"
    assert args.participant_label == ["01", "02"]
    assert args.participant_filter == [("group", "IGE"), ("site", "A")]
    assert args.sphere_diameter == 8.0 and args.nprocs == 3
    assert args.cache_dtype == "int16" and args.nipype_plugin == "SLURM"
    assert str(args.work_dir) == "/scratch/work" and args.verbosity == 1
    # the descriptor's defaults are the parser's
    defaults = build_parser().parse_args(["a", "b", "group", "--coordinates", "c"])
    assert args.t_threshold == defaults.t_threshold
    assert args.bold_desc == defaults.bold_desc


@pytest.mark.slow
def test_bosh_exec_launch(tmp_path):
    """A real run through Boutiques (no container) on a tiny connectome."""
    connectome = write_tiny_connectome(tmp_path / "connectome", n_subjects=4, n_volumes=40)
    coordinates = write_coordinates(tmp_path / "coordinates.tsv", TINY_COORDS)
    out = tmp_path / "derivatives"
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({
        "bids_dir": str(connectome),
        "output_dir": str(out),
        "analysis_level": "group",
        "coordinates": str(coordinates),
        "work_dir": str(tmp_path / "work"),
        "nprocs": 2,
    }))
    result = subprocess.run(
        [*bosh_command(), "exec", "launch", "--no-container", "--skip-data-collection",
         str(DESCRIPTOR), str(invocation)],
        capture_output=True, text=True, env=tool_env(), cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "dataset_description.json").exists()
    overlap = sorted(out.glob("network/*_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz"))
    assert len(overlap) == 1, sorted(p.name for p in out.iterdir())
    assert "Missing files" in result.stdout  # bosh's report, listing none
    report = result.stdout.split("Missing files", 1)[1]
    assert "Required" not in report, report


# ----------------------------------------------------------------- container recipes


def test_dockerignore():
    patterns = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    assert {".git", ".pytest_cache", "**/__pycache__", "demo_data", "demo_out", "work"} <= patterns
    assert "bids_cnm" not in patterns and "setup.cfg" not in patterns
