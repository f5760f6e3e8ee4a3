"""The participant and group levels through nipype's SLURM plugin on a real Slurm cluster.

Skipped unless ``sbatch``, ``squeue`` and ``sinfo`` are on PATH and ``sinfo`` answers.
``.ci/run`` starts a throw-away single-node cluster (``shared/tools/slurm-local``) for it;
by hand, as root::

    ../shared/tools/slurm-local start && eval "$(../shared/tools/slurm-local env)"
    python -m pytest -q tests/test_slurm.py
    ../shared/tools/slurm-local stop

Every workflow node becomes one Slurm job that runs on the cluster's node (this machine),
so the work and output directories only need to be on a path that node sees.  The maps
must equal those of a MultiProc run of the same data.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import TINY_COORDS, write_coordinates, write_tiny_connectome

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_unavailable() -> str | None:
    """Why Slurm cannot be used here, or ``None`` when it can."""
    missing = [exe for exe in ("sbatch", "squeue", "sinfo") if shutil.which(exe) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (start a cluster with slurm-local)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    states = result.stdout.split()
    if result.returncode != 0 or not states:
        return f"sinfo failed: {(result.stderr or result.stdout).strip()[:200]}"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable Slurm node (states: {', '.join(states)})"
    return None


REASON = slurm_unavailable()


def run_level(env: dict, cwd: Path, *args: object) -> float:
    """Run ``bids_cnm`` in a subprocess; return its wall time."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bids_cnm", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return time.perf_counter() - start


def maps(folder: Path, pattern: str) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nb.load(p).dataobj) for p in sorted(folder.glob(pattern))}


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_participant_then_group_on_slurm_equals_multiproc(tmp_path):
    connectome = write_tiny_connectome(tmp_path / "connectome", n_subjects=4, n_volumes=40)
    coordinates = write_coordinates(tmp_path / "coordinates.tsv", TINY_COORDS)

    # nipype polls the queue every 2 s by default; poll faster, the jobs are tiny
    config_dir = tmp_path / "nipype"
    config_dir.mkdir()
    (config_dir / "nipype.cfg").write_text(
        "[execution]\npoll_sleep_duration = 0.5\njob_finished_timeout = 10\n"
    )
    env = dict(os.environ, NIPYPE_CONFIG_DIR=str(config_dir), MPLBACKEND="Agg",
               NIPYPE_NO_ET="1")
    env.setdefault("LOGNAME", getpass.getuser())  # nipype's SLURM plugin names jobs with it
    plugin = tmp_path / "plugin.yml"
    plugin.write_text('sbatch_args: "--time=00:10:00 --ntasks=1 --cpus-per-task=1"\n'
                      "max_jobs: 8\n")

    common = ["--coordinates", coordinates]
    slurm_out, slurm_work = tmp_path / "slurm" / "out", tmp_path / "slurm" / "work"
    slurm = ["-w", slurm_work, "--nipype-plugin", "SLURM", "--plugin-config", plugin]
    timings = {}
    timings["slurm participant"] = run_level(env, tmp_path, connectome, slurm_out,
                                             "participant", *common, *slurm)
    timings["slurm group"] = run_level(env, tmp_path, connectome, slurm_out, "group",
                                       *common, *slurm)

    ref_out, ref_work = tmp_path / "multiproc" / "out", tmp_path / "multiproc" / "work"
    multiproc = ["-w", ref_work, "--nipype-plugin", "MultiProc", "--nprocs", "2"]
    timings["multiproc participant"] = run_level(env, tmp_path, connectome, ref_out,
                                                 "participant", *common, *multiproc)
    timings["multiproc group"] = run_level(env, tmp_path, connectome, ref_out, "group",
                                           *common, *multiproc)
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    # the nodes really ran as Slurm jobs: nipype's batch scripts and Slurm's job logs
    batch = slurm_work / "cnm_wf" / "batch"
    scripts = sorted(batch.glob("batchscript_*.sh"))
    logs = sorted(batch.glob("slurm-*.out"))
    assert any("prepare_sub_01" in p.name for p in scripts)
    assert len(logs) >= 4 + 4, [p.name for p in logs]  # a prepare and a z-map job per subject
    assert not list(slurm_work.glob("crash/crash-*"))

    for label in ("01", "02", "03", "04"):
        assert maps(slurm_out / f"sub-{label}" / "func", "*_stat-z_boldmap.nii.gz")

    # group maps sit in analysis folders: seeds/ (t, z) and network/ (overlaps)
    for pattern in ("seeds/*_stat-t_boldmap.nii.gz", "seeds/*_stat-z_boldmap.nii.gz",
                    "network/*_desc-overlap_boldmap.nii.gz"):
        got, expected = maps(slurm_out, pattern), maps(ref_out, pattern)
        assert got and sorted(got) == sorted(expected), pattern
        for name, values in expected.items():
            np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-5, err_msg=name)
