"""Runs never mix (issue 9): each fault injected, then the exit code, the one-line
message and the output folder's state checked.  See docs/guarantees.md."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SPACE, TINY_COORDS, write_coordinates, write_tiny_connectome

from bids_cnm.cli.run import main
from bids_cnm.errors import EX_CANTCREAT, EX_DATAERR, EX_USAGE, OutputError
from bids_cnm.io.identity import file_fingerprint, subject_key
from bids_cnm.io.lock import LOCK_NAME, FolderLock
from bids_cnm.io.run_record import RECORD

ENTS = f"task-rest_space-{SPACE}"


def run_cli(capsys, *args) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def outputs(folder) -> set[str]:
    """Derivatives in a folder (not the locks)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and "lock" not in p.name}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two small connectomes with the same layout and other data."""
    root = tmp_path_factory.mktemp("small")
    a = write_tiny_connectome(root / "A", n_subjects=3, n_volumes=20, two_runs_first=False)
    b = write_tiny_connectome(root / "B", n_subjects=3, n_volumes=20, seed=1,
                              two_runs_first=False)
    return a, b


# ---- 1. reuse only of maps made from the same files ----

def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100000)
    first = file_fingerprint(path)
    assert file_fingerprint(path) == first
    path.write_bytes(b"x" * 99999 + b"y")  # same size, last block changed
    assert file_fingerprint(path) != first
    grid = ((2, 2, 2), np.eye(4))
    (tmp_path / "dataset_description.json").write_text('{"Name": "A"}')
    key = subject_key(tmp_path, [path], grid)
    assert key == subject_key(tmp_path, [path], grid)
    assert key != subject_key(tmp_path, [path], grid, [("group", "IGE")])
    (tmp_path / "dataset_description.json").write_text('{"Name": "B"}')
    assert key != subject_key(tmp_path, [path], grid)


def test_participant_maps_of_other_data_are_not_reused(small, tmp_path, capsys):
    """Issue 9.1: participant maps of connectome A, then group on B, same OUTPUT_DIR."""
    a, b = small
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--coordinates", write_coordinates(tmp_path / "c.tsv", TINY_COORDS[:3]),
              "--nipype-plugin", "Linear", "--min-volumes", "0"]
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in tests")

    with pytest.MonkeyPatch.context() as patch:  # a run never touches the network
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "getaddrinfo", no_network)
        code, _ = run_cli(capsys, a, out, "participant", "-w", work, *common)
    assert code == 0 and attempts == []
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    # B in A's folder: refused (the folder is A's), nothing changed
    code, err = run_cli(capsys, b, out, "group", "-w", tmp_path / "work2", *common)
    assert code == EX_USAGE and str(a) in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before
    # A rewritten in place (same path and name, other data): computed again, not reused
    bold = next((a / "sub-02" / "func").glob("*_bold.nii.gz"))
    other = next((b / "sub-02" / "func").glob("*_bold.nii.gz"))
    bold.write_bytes(other.read_bytes())
    code, err = run_cli(capsys, a, out, "group", "-w", work, *common)
    assert code == 0
    assert "computing connectivity on the fly" in err and "other data of sub-02" in err


# ---- 2. one run per folder ----

def test_second_run_exits_73_naming_the_holder(tiny_connectome, tiny_coordinates, tmp_path,
                                               capsys):
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, "OUTPUT_DIR"):
        code, err = run_cli(capsys, tiny_connectome, out, "group", "--coordinates",
                            tiny_coordinates, "-w", tmp_path / "w")
    assert code == EX_CANTCREAT
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in err and "in use" in err
    assert outputs(out) == set()


def test_lock_modes_and_stale_lock(tmp_path):
    # a killed run's lock file (its flock went with the process) is taken over
    (tmp_path / LOCK_NAME).write_text('{"pid": 999999999, "host": "gone"}')
    with FolderLock(tmp_path, "OUTPUT_DIR"):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(OutputError, match="in use by another bids_cnm run"):
            FolderLock(tmp_path, "OUTPUT_DIR", shared=True).acquire()
    # participant jobs share a folder; a group run excludes them
    with FolderLock(tmp_path, "OUTPUT_DIR", shared=True), \
            FolderLock(tmp_path, "OUTPUT_DIR", shared=True):
        with pytest.raises(OutputError):
            FolderLock(tmp_path, "OUTPUT_DIR").acquire()


# ---- 3. other settings: refused, or the earlier run's files removed ----

def test_other_settings_refused_then_overwritten(small, tmp_path, capsys):
    a, _ = small
    out, work = tmp_path / "out", tmp_path / "work"
    common = [a, out, "group", "--coordinates", write_coordinates(tmp_path / "c.tsv",
              TINY_COORDS), "-w", work, "--nipype-plugin", "Linear", "--min-volumes", "0"]
    assert run_cli(capsys, *common, "--t-thresholds", "4")[0] == 0
    first = outputs(out)
    assert any("thresh-4_" in f for f in first)
    (out / "README").write_text("the user's own file")
    code, err = run_cli(capsys, *common, "--t-threshold", "6")
    assert code == EX_USAGE and "t_threshold: 5.1 there, 6.0 now" in err
    assert outputs(out) == first | {"README"}
    code, err = run_cli(capsys, *common, "--t-threshold", "6", "--overwrite")
    assert code == 0
    now = outputs(out)
    assert not any("thresh-4_" in f or "thresh-5p1" in f for f in now)
    assert "README" in now  # not the earlier run's file: kept
    record = json.loads((out / RECORD).read_text())
    # logs/ (the run record, the options, the methods text) belongs to no one level
    assert set(record["levels"]["group"]["files"]) == {
        f for f in now - {"README", "dataset_description.json"} if not f.startswith("logs/")}
    report = (out / "bids_cnm_report.html").read_text()
    assert "thresh-5p1" not in report and "thresh-4_" not in report


# ---- 4. labels that collide in file names ----

@pytest.mark.parametrize("rows, extra, names", [
    ([("S1", -20, -24, 12, "ctl-a"), ("S2", 20, 16, 0, "ctla")], [], ("ctl-a", "ctla")),
    ([("ab2", -20, -24, 12), ("ab", 20, 16, 0), ("a/b", -20, -20, 12)], [], ("ab", "a/b")),
    ([("P1", -20, -24, 12), ("P1d9mm", 20, 16, 0)], ["--sphere-diameters", "9"],
     ("P1d9mm", "variant d9mm")),
])
def test_label_collisions_refused(tiny_connectome, tmp_path, capsys, rows, extra, names):
    coords = write_coordinates(tmp_path / "c.tsv", rows)
    out = tmp_path / "out"
    code, err = run_cli(capsys, tiny_connectome, out, "group", "--coordinates", coords,
                        "-w", tmp_path / "w", "--primary-sets", rows[0][4] if len(rows[0]) > 4
                        else "primary", *extra)
    assert code == EX_DATAERR, err
    assert all(name in err for name in names) and "file names" in err
    assert outputs(out) == set()


def test_subgroup_levels_collision_refused(tiny_connectome, tmp_path, capsys):
    coords = tmp_path / "c.tsv"
    coords.write_text("study\tx\ty\tz\tsubtype\nS1\t-20\t-24\t12\tJ-ME\nS2\t20\t16\t0\tJME\n")
    code, err = run_cli(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                        coords, "-w", tmp_path / "w", "--subgroups", "subtype")
    assert code == EX_DATAERR and "'J-ME' and 'JME'" in err


# ---- 6. numbers checked when parsed ----

@pytest.mark.parametrize("option", [
    ["--t-threshold", "nan"], ["--t-thresholds", "4", "inf"], ["--sphere-diameter", "inf"],
    ["--sphere-diameters", "nan"], ["--random-seed", "-5"], ["--n-permutations", "0"],
    ["--mem-gb", "nan"], ["--min-volumes", "-1"],
])
def test_numeric_options_validated(tiny_connectome, tiny_coordinates, tmp_path, capsys,
                                   option):
    code, err = run_cli(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                        tiny_coordinates, *option)
    assert code == EX_USAGE and option[0] in err
    assert not (tmp_path / "o").exists()


# ---- 7. short subjects ----

def test_short_subjects_warned_once(tiny_connectome, tiny_coordinates, tmp_path, caplog,
                                    monkeypatch):
    import logging

    from bids_cnm.config import Config
    from bids_cnm.workflows.inputs import resolve_inputs

    # earlier main() calls pointed the logger at their own stderr
    logger = logging.getLogger("bids_cnm")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)

    config = Config(bids_dir=tiny_connectome, output_dir=tmp_path / "o", analysis_level="group",
                    coordinates=tiny_coordinates, work_dir=tmp_path / "w", min_volumes=100)
    resolve_inputs(config)
    warnings = [r.getMessage() for r in caplog.records if "--min-volumes" in r.getMessage()]
    assert len(warnings) == 1
    # sub-01 has two runs of 60 volumes; the others one
    assert "sub-02 (60)" in warnings[0] and "sub-08 (60)" in warnings[0]
    assert "sub-01" not in warnings[0]


# ---- 8. never inside an input dataset ----

def test_output_inside_compare_connectome_refused(small, tiny_coordinates, tmp_path, capsys):
    a, b = small
    before = sorted(b.rglob("*"))
    code, err = run_cli(capsys, a, b / "derivatives" / "cnm", "group", "--coordinates",
                        tiny_coordinates, "--compare-connectome", b, "-w", tmp_path / "w")
    assert code == EX_USAGE and "inside --compare-connectome" in err
    assert sorted(b.rglob("*")) == before


# ---- 9-11. no tracebacks, checks up front, no stale temporaries ----

def test_work_dir_that_is_a_file(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    blocker = tmp_path / "work"
    blocker.write_text("a file")
    code, err = run_cli(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                        tiny_coordinates, "-w", blocker)
    assert code == EX_CANTCREAT and "--work-dir" in err and "is a file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_refused_up_front(tiny_connectome, tiny_coordinates, tmp_path,
                                           capsys):
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = run_cli(capsys, tiny_connectome, out, "group", "--coordinates",
                            tiny_coordinates, "-w", tmp_path / "w")
    finally:
        out.chmod(0o755)
    assert code == EX_CANTCREAT and "OUTPUT_DIR" in err
    assert not (tmp_path / "w" / "cnm_wf").exists()  # before any computation


@pytest.mark.parametrize("damage", ["truncate", "crc"])
def test_corrupt_bold_caught_up_front(tmp_path, tiny_coordinates, capsys, damage):
    """A damaged BOLD file ends the run with one line naming it (65), nothing written.

    A truncated file is found up front (its gzip length does not match its header);
    a CRC error only shows at the end of the decoded stream, which preparation reads
    (the data are decoded once): same message and exit code, no output, the
    subjects prepared before it kept, and the run completes once the file is fixed.
    """
    root = write_tiny_connectome(tmp_path / "conn", n_subjects=2, n_volumes=10,
                                 two_runs_first=False)
    bold = next((root / "sub-02" / "func").glob("*_bold.nii.gz"))
    intact = bold.read_bytes()
    data = bytearray(intact)
    if damage == "truncate":
        data = data[: len(data) - 200]
    else:
        data[-6] ^= 0xFF  # the CRC-32 in the gzip trailer
    bold.write_bytes(bytes(data))
    work = tmp_path / "w"
    code, err = run_cli(capsys, root, tmp_path / "o", "group", "--coordinates",
                        tiny_coordinates, "-w", work, "--nipype-plugin", "Linear")
    reason = "EOFError" if damage == "truncate" else "BadGzipFile"
    assert code == EX_DATAERR and "Traceback" not in err
    assert (f"{bold}: cannot read the image data ({reason}); the file is truncated or "
            "corrupt; copy it again or rerun its preprocessing." in err)
    written = outputs(tmp_path / "o")
    prepared = sorted((work / "prepared").glob("sub-*")) if (work / "prepared").exists() else []
    if damage == "truncate":
        assert not (work / "cnm_wf").exists()  # found before the workflow ran
        assert written == set()
    else:  # found by preparation: the run's record says so, and nothing was derived
        assert written, "the record of the started run"
        assert all(name == "bids_cnm_run.json" or name.startswith("logs/")
                   for name in written), written
    # what was prepared is complete, and the damaged subject has no prepared copy
    assert all((p / "meta.json").exists() for p in prepared)
    assert not [p for p in prepared if p.name.startswith("sub-02")]
    bold.write_bytes(intact)  # copied again: the same command completes
    code, err = run_cli(capsys, root, tmp_path / "o", "group", "--coordinates",
                        tiny_coordinates, "-w", work, "--nipype-plugin", "Linear")
    assert code == 0, err


def test_stale_temporaries_swept(tmp_path):
    from bids_cnm.io.derivatives import sweep_temporaries

    stale = tmp_path / f".{ENTS}_boldmap.nii.gz._an6qmza.nii.gz"
    part = tmp_path / "sub-01" / ".seeds.tsv.k2j_8abc.part"
    part.parent.mkdir()
    keep = [tmp_path / ".gitignore", tmp_path / f"{ENTS}_boldmap.nii.gz"]
    for path in (stale, part, *keep):
        path.write_bytes(b"")
    assert sorted(sweep_temporaries(tmp_path)) == sorted([stale, part])
    assert all(p.exists() for p in keep)


# --------------------------------------------------------------------------------------
# Interrupting a run (issue 9, item 11)


def _children(pid: int) -> set[int]:
    """PIDs of a process's children (Linux /proc)."""
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_multiproc_run(tiny_connectome, tiny_coordinates, tmp_path):
    import subprocess
    import time

    command = [sys.executable, "-m", "bids_cnm", str(tiny_connectome), str(tmp_path / "out"),
               "group", "--coordinates", str(tiny_coordinates), "-w", str(tmp_path / "work"),
               "--nipype-plugin", "MultiProc", "--nprocs", "2"]
    # stderr to a file: workers inherit it, and a pipe would stay open while any lives
    log = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.time() + 120
    workers: set[int] = set()
    started = tmp_path / "work" / "cnm_wf"  # the workflow runs: the handlers are set
    while time.time() < deadline and proc.poll() is None and not (workers and started.exists()):
        time.sleep(0.05)
        workers = _children(proc.pid)
    if not workers:
        proc.kill()
        pytest.skip("the run ended before its worker processes could be seen")
    return proc, workers


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_workers_with_one_line(tiny_connectome, tiny_coordinates, tmp_path):
    import signal
    import time

    proc, workers = _start_multiproc_run(tiny_connectome, tiny_coordinates, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stderr = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("bids_cnm: terminated")
    assert "Traceback" not in stderr
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes outlived the run"


def test_an_interrupted_run_prints_no_failure_of_half_built_objects():
    """A signal can land inside an object's construction (multiprocessing's Finalize of a
    queue the pool was making); collected later, the half-built object fails, and CPython
    prints that with a traceback after the run's one line.  Once interrupted, the run
    drops such reports; before, they are shown as usual."""
    import subprocess
    import sys

    code = """if True:
        import signal
        import sys
        from bids_cnm.cli import interrupt

        class HalfBuilt:
            def __del__(self):
                raise AttributeError("no attribute '_key'")

        interrupt.install()
        hook = sys.unraisablehook
        interrupt.install()  # main() again in the same process: the same hook, not nested
        assert sys.unraisablehook is hook
        HalfBuilt()  # nothing interrupted: reported
        try:
            signal.raise_signal(signal.SIGTERM)
        except interrupt.Terminated:
            interrupt.acknowledge()
        HalfBuilt()  # the run is ending: dropped
        print("end")
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "end\n", proc.stderr
    assert proc.stderr.count("AttributeError: no attribute '_key'") == 1, proc.stderr


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_the_main_process_ends_its_workers(tiny_connectome, tiny_coordinates,
                                                      tmp_path):
    import time

    proc, workers = _start_multiproc_run(tiny_connectome, tiny_coordinates, tmp_path)
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "orphaned workers kept running"


def test_a_non_table_is_never_echoed(tmp_path):
    """A plan or coordinate 'table' that is some other file: the error never shows its
    first line (issue 9, item 12), but still says what is wrong."""
    from bids_cnm.errors import InputDataError
    from bids_cnm.io.coordinates import read_coordinates
    from bids_cnm.plan import plan_from_dict

    secret = "root:$6$saltsalt$c2VjcmV0aGFzaA:19000:0:99999:7:::"
    other = tmp_path / "shadow"
    other.write_text(secret + "\ndaemon:*:19000:0:99999:7:::\n")
    with pytest.raises(InputDataError) as info:
        read_coordinates(other)
    assert "saltsalt" not in str(info.value) and "c2VjcmV0" not in str(info.value)
    assert "study, x, y and z" in str(info.value)
    data = {"validation": {"roi_overlap": [
        {"name": "electrodes", "spheres": {"table": str(other)}}]}}
    with pytest.raises(InputDataError) as info:
        plan_from_dict(data, base_dir=tmp_path)
    assert "saltsalt" not in str(info.value) and "c2VjcmV0" not in str(info.value)
    assert "validation.roi_overlap[0].spheres.table" in str(info.value)


def test_found_columns_shows_real_headers():
    from bids_cnm.errors import found_columns

    assert found_columns(["study", "x", "y", "z (mm)"]) == "study, x, y, z (mm)"
    assert "1 column(s)" in found_columns(["root:*:19000:0:99999:7:::"])


def test_unknown_plan_set_blames_the_plan_key(tiny_connectome, tmp_path, capsys):
    """A plan naming a set the coordinates lack: the message names the plan's key."""
    plan = tmp_path / "plan.yml"
    plan.write_text("primary_sets: [epilepsy]\n")
    code, err = run_cli(capsys, tiny_connectome, tmp_path / "out", "group", "--coordinates",
                        write_coordinates(tmp_path / "c.tsv", TINY_COORDS), "--analysis", plan)
    assert code == EX_USAGE
    assert f"{plan}, primary_sets epilepsy: no such set" in err and "--primary-sets" not in err


def test_corrupt_bold_of_the_compare_connectome_caught_up_front(tiny_connectome, tmp_path,
                                                               capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_connectome, other)
    bold = sorted(other.rglob("*_bold.nii.gz"))[-1]
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])  # truncated
    code, err = run_cli(capsys, tiny_connectome, tmp_path / "out", "group", "--coordinates",
                        write_coordinates(tmp_path / "c.tsv", TINY_COORDS),
                        "--compare-connectome", other, "-w", tmp_path / "work")
    assert code == EX_DATAERR and bold.name in err
    assert not list((tmp_path / "work").glob("cnm_wf"))  # before any workflow ran
