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

from bids_cnm import __version__
from bids_cnm.cli import docs
from bids_cnm.cli.parser import build_parser
from conftest import REPO, TINY_COORDS, write_coordinates, write_tiny_connectome

DESCRIPTOR = REPO / "boutiques.json"
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY_DEF = REPO / "singularity" / "bids_cnm.def"


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
        "type": "docker", "image": f"bids_cnm:{__version__}", "entrypoint": True,
    }
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
    overlap = sorted(out.glob("*_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz"))
    assert len(overlap) == 1, sorted(p.name for p in out.iterdir())
    assert "Missing files" in result.stdout  # bosh's report, listing none
    report = result.stdout.split("Missing files", 1)[1]
    assert "Required" not in report, report


# ----------------------------------------------------------------- container recipes


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    if pending:
        joined.append(pending)
    out = []
    for line in joined:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in instructions:
        if word != "ENV":
            continue
        parts = shlex.split(rest)
        if parts and "=" not in parts[0]:  # legacy form: ENV KEY value
            env[parts[0]] = " ".join(parts[1:])
            continue
        for part in parts:
            key, _, value = part.partition("=")
            env[key] = value
    return env


def test_dockerfile_essentials():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert words.count("FROM") == 1

    entrypoints = [json.loads(rest) for w, rest in instructions if w == "ENTRYPOINT"]
    assert entrypoints == [["bids_cnm"]], "exec-form ENTRYPOINT [\"bids_cnm\"]"
    assert words.index("ENTRYPOINT") > words.index("USER")

    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as non-root"

    env = dockerfile_env(instructions)
    assert env["BIDS_CNM_CONTAINER"] == "docker"
    assert env["MPLBACKEND"] == "Agg"
    assert env["TEMPLATEFLOW_HOME"].startswith("/") and not env["TEMPLATEFLOW_HOME"].startswith(
        ("/root", "/home", "/tmp"))
    assert env.get("NIPYPE_NO_ET") == "1", "no network call to the nipype version server"

    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    assert re.search(r"pip install --no-cache-dir \.", runs)
    assert not re.search(r"pip install[^&;]* (-e|--editable) ", runs), "install, not editable"
    for template in ("MNI152NLin2009cAsym", "MNI152NLin6Asym"):
        assert template in runs
    assert "templateflow.api" in runs and "tf.get(" in runs
    assert "resolution=r" in runs and "for r in (1, 2)" in runs
    # the templates are fetched before switching to the unprivileged user
    fetch = next(i for i, (w, r) in enumerate(instructions) if w == "RUN" and "tf.get(" in r)
    assert fetch < words.index("USER")
    # everything COPY'd exists in the build context and is not excluded by .dockerignore
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")}
    for word, rest in instructions:
        if word == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source
                assert source not in ignored, source


def test_dockerignore():
    patterns = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    assert {".git", ".pytest_cache", "**/__pycache__", "demo_data", "demo_out", "work"} <= patterns
    assert "bids_cnm" not in patterns and "setup.cfg" not in patterns


def singularity_sections(text: str) -> dict[str, str]:
    sections, name = {"header": ""}, "header"
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            name = match.group(1)
            sections[name] = ""
        elif not line.lstrip().startswith("#"):
            sections[name] += line.strip() + "\n"
    return sections


def test_singularity_definition():
    sections = singularity_sections(SINGULARITY_DEF.read_text())
    header = dict(
        line.split(":", 1) for line in sections["header"].splitlines() if ":" in line
    )
    assert header["Bootstrap"].strip() == "docker"
    assert header["From"].strip() == "python:3.11-slim"
    assert "export BIDS_CNM_CONTAINER=singularity" in sections["environment"]
    assert "export MPLBACKEND=Agg" in sections["environment"]
    assert "export TEMPLATEFLOW_HOME=/opt/templateflow" in sections["environment"]
    assert sections["runscript"].strip() == 'exec bids_cnm "$@"'
    assert "pip install --no-cache-dir" in sections["post"]
    assert "MNI152NLin2009cAsym" in sections["post"] and "MNI152NLin6Asym" in sections["post"]
    for line in sections["files"].splitlines():
        if line.strip():
            assert (REPO / line.split()[0]).exists(), line
    readme = (REPO / "singularity" / "README.md").read_text()
    for needle in ("apptainer build", "--cleanenv", "--dependency=afterok", "--array",
                   "--nipype-plugin SLURM", "--plugin-config", "sbatch_args", "-w /scratch/work"):
        assert needle in readme, needle
