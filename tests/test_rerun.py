"""An identical re-run only verifies; any change takes the full path (bids_cnm.io.rerun)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_cnm.cli.run import main
from bids_cnm.io.run_record import RECORD

FAST = "nothing to do: every output is up to date"
LOCKS = {".bids_cnm.lock", ".bids_cnm_run.lock"}


def stamps(out: Path) -> dict:
    """Every file of the output folder (the run record included) but the locks."""
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size,
                                            p.stat().st_ino)
            for p in out.rglob("*") if p.is_file() and p.name not in LOCKS}


@pytest.fixture
def setup(tiny_connectome, tiny_coordinates, tmp_path):
    """A group run on copies of the inputs (the tests touch them), finished once."""
    bids = tmp_path / "connectome"
    shutil.copytree(tiny_connectome, bids)
    coordinates = tmp_path / "coords.tsv"
    shutil.copy(tiny_coordinates, coordinates)
    out, work = tmp_path / "out", tmp_path / "work"
    command = [str(bids), str(out), "group", "--coordinates", str(coordinates), "-w",
               str(work), "--nipype-plugin", "Linear", "--no-degree-check"]
    assert main(command) == 0
    return command, bids, coordinates, out


def rerun(capsys, command: list[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*command, *extra])
    return code, capsys.readouterr().err


def test_identical_rerun_verifies_only(setup, capsys):
    command, _, _, out = setup
    before = stamps(out)
    code, log = rerun(capsys, command)
    assert code == 0
    assert FAST in log and "running" not in log
    assert log.strip().splitlines()[-1].endswith("(nothing recomputed)")  # the time line
    assert stamps(out) == before  # no output touched, the record neither


def test_rerun_loads_no_heavy_module(setup):
    """The check runs before nipype, pybids, pandas or scipy are imported."""
    command = setup[0]
    code = ("import sys; from bids_cnm.cli.run import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('nipype', 'bids', 'pandas', 'scipy', 'nibabel', 'numpy') "
            "if m in sys.modules]; print(rc, heavy)")
    proc = subprocess.run([sys.executable, "-c", code, *command], capture_output=True,
                          text=True, check=False)
    assert proc.stdout.strip() == "0 []", proc.stderr
    assert FAST in proc.stderr


def test_touched_inputs_take_the_full_path(setup, capsys):
    command, bids, coordinates, _ = setup
    bold = min(bids.rglob("*_bold.nii.gz"))
    for path, name in ((bold, "connectome"), (coordinates, "coordinates")):
        os.utime(path)  # the same content, a new modification time
        code, log = rerun(capsys, command)
        assert code == 0
        assert f"re-run check: the {name} changed since the earlier run" in log
        assert FAST not in log
        code, log = rerun(capsys, command)  # recorded again: verified only
        assert code == 0 and FAST in log


def test_changed_coordinates_are_not_verified(setup, capsys):
    """Other seeds: the full path, which refuses the folder's other settings (64)."""
    command, _, coordinates, _ = setup
    text = coordinates.read_text().splitlines()
    coordinates.write_text("\n".join([*text[:-1], text[-1].replace("12", "14")]) + "\n")
    code, log = rerun(capsys, command)
    assert code == 64 and FAST not in log
    assert "re-run check: the coordinates changed" in log


def test_changed_option_takes_the_full_path(setup, capsys):
    command = setup[0]
    code, log = rerun(capsys, command, "--min-volumes", "10")
    assert code == 0 and "re-run check: the options differ" in log
    code, log = rerun(capsys, command, "--min-volumes", "10")
    assert code == 0 and FAST in log
    code, log = rerun(capsys, command)  # the first command again differs from the last run
    assert code == 0 and "re-run check: the options differ" in log


def test_execution_options_are_verified_not_run_again(setup, capsys):
    """More log lines, threads, memory or another plugin: the same maps, so only verified.
    The processes are not among them: they set the batches, whose merge order can change
    a map's last bits."""
    command = setup[0]
    code, log = rerun(capsys, command[:-3], "-v", "--mem-mb", "4000", "--omp-nthreads", "1",
                      "--nipype-plugin", "MultiProc", "--no-degree-check")
    assert code == 0 and FAST in log, log[-2000:]
    for other in (["--nprocs", "3"], ["--min-volumes", "10"]):
        code, log = rerun(capsys, command, "-v", *other)
        assert code == 0 and "re-run check: the options differ" in log, other


def _connectivity_steps(command: list[str]) -> dict[Path, int]:
    """The result files of the connectivity steps (sums, t-maps) and when they were written."""
    work = Path(command[command.index("-w") + 1]) / "cnm_wf"
    steps = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")
             if p.parent.name.startswith(("accumulate_", "reduce"))}
    assert len(steps) >= 2
    return steps


@pytest.mark.parametrize("change", ["delete", "modify"])
def test_changed_output_is_restored(setup, capsys, change):
    command, _, _, out = setup
    overlap = next(out.glob("network/*_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz"))
    table = out / "seeds.tsv"
    expected = {p: p.read_bytes() for p in (overlap, table)}
    if change == "delete":
        overlap.unlink()
    else:
        table.write_text(table.read_text() + "an edit\n")
        with open(overlap, "r+b") as f:  # same size, other bytes
            f.seek(100)
            f.write(b"\0" * 8)
    computed = _connectivity_steps(command)
    code, log = rerun(capsys, command)
    assert code == 0
    assert "re-run check: an output of the earlier run was removed or modified" in log
    assert {p: p.read_bytes() for p in expected} == expected
    assert _connectivity_steps(command) == computed  # the writers ran again, not these
    code, log = rerun(capsys, command)
    assert code == 0 and FAST in log


def test_the_run_record_files_are_those_every_run_writes(setup):
    """The re-run check digests apart the logs/ files every run of either level rewrites
    (its options, its methods text); the list is the one a group run writes."""
    from bids_cnm.io.rerun import _NOT_OUTPUTS, RUN_RECORD_FILES

    out = setup[3]
    written = {p.name for p in (out / "logs").iterdir()} - _NOT_OUTPUTS
    # and the plan as run (the default plan here), which the plan's step writes
    assert written == RUN_RECORD_FILES | {"plan.json"}


def test_participant_run_after_the_group_run_is_not_recomputed(setup, capsys):
    """A participant job in the same folders after the group run leaves its own command
    and methods text in logs/ and does not touch the group's maps.  The group's identical
    re-run then rewrites the logs with nipype's cached steps (none is run again), and the
    next one is verified only."""
    command, bids, coordinates, out = setup
    work = Path(command[command.index("-w") + 1])
    participant = [str(bids), str(out), "participant", "--participant-label", "01",
                   "--coordinates", str(coordinates), "-w", str(work),
                   "--nipype-plugin", "Linear"]
    assert main(participant) == 0
    assert 'participant-label = ["01"]' in (out / "logs" / "bids_cnm.toml").read_text()
    group_files = {p: s for p, s in stamps(out).items()
                   if not p.startswith(("logs/", "sub-")) and p != "bids_cnm_report.html"}
    # (the preparation's nodes always run: they check the prepared copies, a stat each)
    steps = {p: p.stat().st_mtime_ns for p in (work / "cnm_wf").rglob("result_*.pklz")
             if "prepare_" not in p.name}
    assert any("accumulate" in p.name for p in steps)
    code, log = rerun(capsys, command)
    assert code == 0, log[-2000:]
    assert "re-run check: the options and methods text in logs/ were rewritten" in log
    assert "removed nipype's cache" not in log
    assert {p: p.stat().st_mtime_ns for p in steps} == steps  # every other step was cached
    assert "participant-label = []" in (out / "logs" / "bids_cnm.toml").read_text()
    assert {p: s for p, s in stamps(out).items() if p in group_files} == group_files
    code, log = rerun(capsys, command)
    assert code == 0 and FAST in log


def test_deleted_output_folder_is_written_again(setup, capsys):
    """The output folder removed, the same command with the same work folder: nipype's
    cache still holds the steps that wrote into the deleted folder; the run must write
    everything again, not fail on a missing file."""
    import shutil

    command, _, _, out = setup
    expected = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.tsv")}
    computed = _connectivity_steps(command)
    shutil.rmtree(out)
    code, log = rerun(capsys, command)
    assert code == 0, log[-2000:]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.tsv")} == expected
    assert "re-run check: no earlier run recorded" in log
    # only the steps that write into the output folder ran again: not the connectivity
    assert "removed nipype's cache of group_outputs" in log
    assert _connectivity_steps(command) == computed
    code, log = rerun(capsys, command)
    assert code == 0 and FAST in log


def test_interrupted_run_is_never_verified(setup, capsys):
    """An earlier run that did not finish (``files`` null, as while it runs) is resumed,
    even when its entry still holds what a finished run recorded.  (Not named after
    ``_unfinished``: nipype removes that word from its whole node path.)"""
    command, _, _, out = setup
    record = json.loads((out / RECORD).read_text())
    assert record["levels"]["group"]["rerun"]
    record["levels"]["group"]["files"] = None
    (out / RECORD).write_text(json.dumps(record))
    code, log = rerun(capsys, command)
    assert code == 0 and "re-run check: the earlier run did not finish" in log
    assert FAST not in log
    code, log = rerun(capsys, command)
    assert code == 0 and FAST in log


def test_record_without_check_takes_the_full_path(setup, capsys):
    """A record of an older version (no ``rerun`` entry), or a changed one, is not trusted."""
    command, _, _, out = setup
    record = json.loads((out / RECORD).read_text())
    del record["levels"]["group"]["rerun"]
    (out / RECORD).write_text(json.dumps(record))
    code, log = rerun(capsys, command)
    assert code == 0 and "recorded no re-run check" in log


def test_older_seal_drops_the_steps_cache(setup, capsys):
    """A seal without the logs' own digest (outputs and logs were one digest): whether an
    output changed cannot be told, so the steps that wrote them run again."""
    command, _, _, out = setup
    record = json.loads((out / RECORD).read_text())
    del record["levels"]["group"]["rerun"]["logs"]
    (out / RECORD).write_text(json.dumps(record))
    code, log = rerun(capsys, command)
    assert code == 0 and "re-run check is of an older version" in log
    assert "removed nipype's cache" in log
    code, log = rerun(capsys, command)
    assert code == 0 and FAST in log


def test_same_nodes_are_not_rewritten(tmp_path):
    """The ROI-to-ROI nodes file keeps its time when a run saves the same nodes (nipype
    hashes it: a rewrite recomputed connectivity on every full run with a plan)."""
    import numpy as np

    from bids_cnm.engine.nodes import load_nodes, save_nodes

    path = tmp_path / "nodes.npz"
    voxels = [np.array([1, 2, 3]), np.array([7])]
    table = [{"name": "a", "x": 1.5}, {"name": "b", "x": 2.0}]
    save_nodes(path, voxels, table)
    os.utime(path, ns=(1, 1))
    save_nodes(path, [v.copy() for v in voxels], [dict(t) for t in table])
    assert path.stat().st_mtime_ns == 1  # the same nodes: untouched
    save_nodes(path, [voxels[0], np.array([8])], table)
    assert path.stat().st_mtime_ns != 1  # other voxels: written
    assert load_nodes(str(path))[0][1].tolist() == [8]
    os.utime(path, ns=(1, 1))
    other = [table[0], {"name": "b", "x": 3.0}]
    save_nodes(path, [voxels[0], np.array([8])], other)
    assert path.stat().st_mtime_ns != 1  # another table: written
    assert load_nodes(str(path))[1] == other


def test_outputs_of_other_code_are_neither_verified_nor_mixed(setup, capsys, monkeypatch,
                                                              tmp_path):
    """After an upgrade (here: the package's files with one edited, as this process's code
    identity), the same command does not pass the earlier run's outputs off as this
    code's: it refuses them as outputs of other settings; with --overwrite every step runs
    again (nipype's cache of the earlier code is not reused), and the next run verifies."""
    from bids_cnm.io import code_identity

    command, _, _, out = setup
    earlier = code_identity.code_identity()
    other = tmp_path / "upgraded" / "bids_cnm"
    shutil.copytree(code_identity.PACKAGE_ROOT, other,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (other / "config.py").write_text((other / "config.py").read_text() + "\n# edited\n")
    monkeypatch.setattr(code_identity, "PACKAGE_ROOT", other)
    upgraded = code_identity.code_identity()
    assert upgraded != earlier
    before, computed = stamps(out), _connectivity_steps(command)

    code, log = rerun(capsys, command)
    assert code == 64
    assert (f"re-run check: the earlier run was made by other bids_cnm code ({earlier}; "
            f"this is {upgraded})") in log
    assert f'holds group-level outputs of other settings (code: "{earlier}" there, ' in log
    assert stamps(out) == before  # refused: nothing written

    code, log = rerun(capsys, command, "--overwrite")
    assert code == 0, log[-2000:]
    steps = _connectivity_steps(command)
    assert steps.keys() == computed.keys()
    assert all(steps[p] != computed[p] for p in steps)  # computed again by this code
    code, log = rerun(capsys, command, "--overwrite")
    assert code == 0 and FAST in log
