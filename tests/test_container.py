"""The container as users meet it, checked without a Docker engine.

* The Dockerfile and the Apptainer definition build the same thing: pinned dependencies,
  the TemplateFlow download behind ``FETCH_TEMPLATES``, the same runtime environment.
* The container's conditions, reproduced on this machine: the group level run as a uid
  that owns nothing but its output folder, with HOME and the current folder not writable,
  the install read-only to it, the Dockerfile's environment, no network (``unshare -n``)
  and no TemplateFlow files (an image built with ``FETCH_TEMPLATES=0``).
"""

from __future__ import annotations

import configparser
import importlib.metadata as metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY_DEF = REPO / "singularity" / "bids_cnm.def"
CONSTRAINTS = REPO / "constraints.txt"

#: runtime variables that may differ: which container it is; the default work folder
#: (Docker has a writable /work; on a cluster it belongs on scratch, given with -w)
MAY_DIFFER = {"BIDS_CNM_CONTAINER", "BIDS_CNM_WORK_DIR"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
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


def dockerfile_assignments(instructions: list[tuple[str, str]], word: str) -> dict[str, str]:
    """KEY=value pairs of every ENV (or ARG) instruction."""
    values = {}
    for w, rest in instructions:
        if w != word:
            continue
        for part in shlex.split(rest):
            key, _, value = part.partition("=")
            values[key] = value
    return values


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


def singularity_environment(sections: dict[str, str]) -> dict[str, str]:
    env = {}
    for line in sections["environment"].splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return env


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())
DOCKER_ENV = dockerfile_assignments(INSTRUCTIONS, "ENV")


def test_dockerfile_essentials():
    words = [w for w, _ in INSTRUCTIONS]
    assert INSTRUCTIONS[0] == ("FROM", "python:3.11-slim")
    assert words.count("FROM") == 1
    entrypoints = [json.loads(rest) for w, rest in INSTRUCTIONS if w == "ENTRYPOINT"]
    assert entrypoints == [["bids_cnm"]], "exec-form ENTRYPOINT [\"bids_cnm\"]"
    users = [rest for w, rest in INSTRUCTIONS if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as non-root"
    assert words.index("ENTRYPOINT") > words.index("USER")
    # the default work folder exists and anyone may write into it
    assert DOCKER_ENV["BIDS_CNM_WORK_DIR"] == "/work"
    assert ("WORKDIR", "/work") in INSTRUCTIONS
    runs = [rest for w, rest in INSTRUCTIONS if w == "RUN"]
    assert any("mkdir -p /work" in r and "chmod 1777 /work" in r for r in runs)
    # pinned, non-editable install
    assert any(re.search(r"pip install --no-cache-dir -c constraints\.txt \.", r) for r in runs)
    copied = " ".join(rest for w, rest in INSTRUCTIONS if w == "COPY")
    assert "constraints.txt" in copied
    # no runtime cache folder baked in for one uid (the per-user defaults take over)
    assert "NUMBA_CACHE_DIR" not in DOCKER_ENV and "MPLCONFIGDIR" not in DOCKER_ENV
    assert DOCKER_ENV["NIPYPE_NO_ET"] == "1" and DOCKER_ENV["PYTHONNOUSERSITE"] == "1"
    # everything COPY'd exists and is not excluded by .dockerignore
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")}
    for w, rest in INSTRUCTIONS:
        if w == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source
                assert source not in ignored, source


def test_templates_are_a_build_argument():
    """FETCH_TEMPLATES=1 by default fetches through the app's own list; 0 skips it."""
    args = dockerfile_assignments(INSTRUCTIONS, "ARG")
    assert args["FETCH_TEMPLATES"] == "1"
    words = [w for w, _ in INSTRUCTIONS]
    fetch = [i for i, (w, r) in enumerate(INSTRUCTIONS)
             if w == "RUN" and "bids_cnm.io.templates fetch" in r]
    assert len(fetch) == 1
    assert '"$FETCH_TEMPLATES" = "1"' in INSTRUCTIONS[fetch[0]][1]
    assert fetch[0] < words.index("USER")
    assert words.index("ARG") < fetch[0]
    assert "nilearn" not in " ".join(r for w, r in INSTRUCTIONS if w == "RUN")
    sections = singularity_sections(SINGULARITY_DEF.read_text())
    assert "FETCH_TEMPLATES=1" in sections["arguments"]
    assert "bids_cnm.io.templates fetch" in sections["post"]
    assert '"{{ FETCH_TEMPLATES }}" = "1"' in sections["post"]


def test_docker_and_apptainer_set_the_same_environment():
    sections = singularity_sections(SINGULARITY_DEF.read_text())
    apptainer = singularity_environment(sections)
    assert apptainer["BIDS_CNM_CONTAINER"] == "singularity"
    assert DOCKER_ENV["BIDS_CNM_CONTAINER"] == "docker"
    shared = {k: v for k, v in DOCKER_ENV.items() if k not in MAY_DIFFER}
    assert {k: v for k, v in apptainer.items() if k not in MAY_DIFFER} == shared
    header = dict(line.split(":", 1) for line in sections["header"].splitlines() if ":" in line)
    assert header["From"].strip() == INSTRUCTIONS[0][1]
    assert sections["runscript"].strip() == 'exec bids_cnm "$@"'
    assert "pip install --no-cache-dir -c /opt/bids_cnm-src/constraints.txt" in sections["post"]
    for line in sections["files"].splitlines():
        if line.strip():
            assert (REPO / line.split()[0]).exists(), line
    readme = (REPO / "singularity" / "README.md").read_text()
    for needle in ("apptainer build", "--cleanenv", "--dependency=afterok", "--array",
                   "--nipype-plugin SLURM", "--plugin-config", "sbatch_args", "-w /scratch/work"):
        assert needle in readme, needle


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[re.sub(r"[-_.]+", "-", req.name).lower()] = spec.version
    return pins


def test_constraints_pin_every_requirement():
    """Each install_requires entry is pinned, and the pin satisfies setup.cfg's range."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pins = _pins()
    for line in cfg["options"]["install_requires"].strip().splitlines():
        req = Requirement(line.strip())
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_installed_versions_are_the_pinned_ones():
    """CI installs with -c constraints.txt: the tests run what the image ships."""
    mismatched = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched[name] = (version, None)
            continue
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"pinned vs installed: {mismatched}"


# --------------------------------------------------------------------------------------
# The container's conditions

UID = 54321


def _as_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        prefix = ["unshare", "-n", "--", *prefix]  # no network, as with docker --network none
    return subprocess.run(prefix + command, capture_output=True, text=True, **kwargs)


def _container_env(root: Path, work: Path | None = None) -> dict[str, str]:
    """The Dockerfile's environment for a run in ``root`` (see :func:`container_root`)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(DOCKER_ENV)
    env.update(
        HOME="/nonexistent",                                   # like an arbitrary -u uid
        TEMPLATEFLOW_HOME="/nonexistent-templateflow",         # FETCH_TEMPLATES=0
        BIDS_CNM_WORK_DIR=str(work or root),
        PYTHONPATH=str(root / "site"),  # the read-only copy of the package, not the checkout
    )
    return env


@pytest.fixture
def container_root():
    """A folder under /tmp that the test uid can reach (pytest's tmp_path is root-only),
    holding a read-only copy of the package in ``site/``, as the image installs it: the
    checkout itself may not be readable by other users (e.g. a mode-700 temporary clone)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another uid")
    root = Path(tempfile.mkdtemp(prefix="bids_cnm_container_", dir="/tmp"))
    root.chmod(0o755)
    site = root / "site"
    shutil.copytree(REPO / "bids_cnm", site / "bids_cnm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [site, *site.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # readable by all, writable by none
    yield root
    for path in [site, *site.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def test_any_uid_can_ask_for_the_version(container_root):
    bids_cnm = shutil.which("bids_cnm")
    probe = _as_user([bids_cnm, "--version"], env=_container_env(container_root),
                     cwd="/")
    if probe.returncode != 0 and "Permission denied" in probe.stderr + probe.stdout:
        pytest.skip(f"the Python install is not readable by uid {UID} here "
                    "(.ci/run makes it so)")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("bids_cnm ")


def test_group_level_under_container_conditions(container_root, tiny_connectome,
                                                tiny_coordinates):
    """Read-only inputs, unwritable HOME and cwd, no network, no TemplateFlow: exit 0, and
    every output belongs to the uid that ran it."""
    data = container_root / "data"
    shutil.copytree(tiny_connectome, data / "connectome")
    shutil.copy(tiny_coordinates, data / "coordinates.tsv")
    for path in [data, *data.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # mounted :ro
    work = container_root / "work"   # the image's /work: anyone may write
    work.mkdir(mode=0o1777)
    work.chmod(0o1777)
    out = container_root / "out"     # the user's own folder, mounted at /out
    out.mkdir()
    os.chown(out, UID, UID)
    readonly_cwd = container_root / "cwd"
    readonly_cwd.mkdir(mode=0o555)
    bids_cnm = shutil.which("bids_cnm")
    result = _as_user(
        [bids_cnm, str(data / "connectome"), str(out / "derivatives"), "group",
         "--coordinates", str(data / "coordinates.tsv"), "--nipype-plugin", "Linear"],
        env=_container_env(container_root, work), cwd=readonly_cwd, timeout=600,
    )
    if result.returncode != 0 and "Permission denied" in result.stderr and not any(out.iterdir()):
        probe = _as_user([bids_cnm, "--version"], env=_container_env(container_root, work),
                         cwd="/")
        if probe.returncode != 0:
            pytest.skip(f"the Python install is not readable by uid {UID} here")
    assert result.returncode == 0, result.stderr[-3000:]
    written = list((out / "derivatives").rglob("*"))
    assert any(p.name.endswith("_boldmap.nii.gz") for p in written)
    assert all(p.stat().st_uid == UID for p in written), "outputs owned by the running uid"
    assert list(readonly_cwd.iterdir()) == []
    assert any(work.iterdir())  # the default work folder was used


def test_prepare_environment_gives_each_library_a_writable_folder(tmp_path):
    """A HOME or cache folder this user cannot write is replaced by one of its own."""
    from bids_cnm.cli.environment import prepare_environment

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    env = {"HOME": "/nonexistent", "NUMBA_CACHE_DIR": str(locked / "numba"),
           "MPLCONFIGDIR": str(tmp_path / "mpl"), "TMPDIR": str(tmp_path / "tmp")}
    if os.geteuid() == 0:  # root writes anywhere: only the missing HOME can be checked
        env.pop("NUMBA_CACHE_DIR")
    changed = prepare_environment(env)
    root = tmp_path / "tmp" / f"bids_cnm-{os.getuid()}"
    assert env["HOME"] == str(root / "home") and (root / "home").is_dir()
    assert env["NIPYPE_NO_ET"] == "1"  # no network lookup unless the user asks for it
    assert env["MPLCONFIGDIR"] == str(tmp_path / "mpl")  # writable: kept
    if os.geteuid() != 0:
        assert env["NUMBA_CACHE_DIR"] == str(root / "numba")
    assert set(changed) <= {"HOME", "NIPYPE_NO_ET", "NUMBA_CACHE_DIR"}
    # a user's explicit choice of telemetry is respected
    env2 = {"HOME": str(tmp_path), "NIPYPE_NO_ET": "0", "TMPDIR": str(tmp_path)}
    assert prepare_environment(env2) == {} and env2["NIPYPE_NO_ET"] == "0"
