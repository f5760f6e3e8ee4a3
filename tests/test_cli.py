"""The command line end to end on a tiny connectome, and every bad input's clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest
from conftest import (
    SPACE,
    TINY_COORDS,
    planted_truth,
    write_coordinates,
    write_tiny_connectome,
)

from bids_cnm import __version__
from bids_cnm.cli.run import main
from bids_cnm.errors import EX_DATAERR, EX_NOINPUT, EX_NOMATCH, EX_USAGE
from bids_cnm.io.derivatives import PYBIDS_CONFIG

ENTS = f"task-rest_space-{SPACE}"


def expected_group_files(seed_ids, sets, thresholds=("5p1",)) -> set[str]:
    """The complete list of files a group run with these settings must write."""
    files = {"dataset_description.json", ".bidsignore", "seeds.tsv", "seeds.json",
             "bids_cnm_report.html", "logs/bids_cnm.toml", "logs/CITATION.md",
             "logs/CITATION.html", "logs/CITATION.bib",
             # the run record and the locks (see docs/guarantees.md)
             "logs/bids_cnm_run.json", "logs/.bids_cnm_run.lock", ".bids_cnm.lock"}
    for name in (f"space-{SPACE}_desc-analysis_mask",):
        files |= {f"{name}.nii.gz", f"{name}.json"}
    for seed in seed_ids:
        files |= {f"seeds/space-{SPACE}_seed-{seed}_mask.nii.gz",
                  f"seeds/space-{SPACE}_seed-{seed}_mask.json"}
        for stat in "rzt":
            stem = f"seeds/{ENTS}_seed-{seed}_stat-{stat}_boldmap"
            files |= {f"{stem}.nii.gz", f"{stem}.json"}
    for s in sets:
        for th in thresholds:
            for desc in ("overlap", "posoverlap", "negoverlap"):
                stem = f"network/{ENTS}_set-{s}_thresh-{th}_desc-{desc}_boldmap"
                files |= {f"{stem}.nii.gz", f"{stem}.json"}
            files |= {f"network/{ENTS}_set-{s}_thresh-{th}_peaks.tsv",
                      f"network/{ENTS}_set-{s}_thresh-{th}_peaks.json"}
    # the degree check (on by default): degree map, residual networks, table
    for stem in [f"degree/{ENTS}_stat-degree_boldmap",
                 *(f"degree/{ENTS}_set-{s}_thresh-{thresholds[0]}_desc-degreeresidual_boldmap"
                   for s in sets)]:
        files |= {f"{stem}.nii.gz", f"{stem}.json"}
    files |= {f"degree/{ENTS}_desc-degree_correlations.tsv",
              f"degree/{ENTS}_desc-degree_correlations.json"}
    # the default analysis plan: the plan as run, and each control set vs the primary set
    files.add("logs/plan.json")
    stem = f"validation/{ENTS}_set-primary_thresh-{thresholds[0]}_desc-controls_summary"
    files |= {f"{stem}.tsv", f"{stem}.json"}
    return files


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def group_run(tiny_connectome, tiny_coordinates, tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "out"
    work = out.parent / "work"
    code = run_cli(tiny_connectome, out, "group", "--coordinates", tiny_coordinates,
                   "-w", work, "--nprocs", "2")
    assert code == 0
    return out, work


def test_group_writes_every_file(group_run):
    out, _ = group_run
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected_group_files(["StudyA", "StudyB", "StudyC", "CtrlX"],
                                           ["primary", "control"])
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_cnm"
    assert description["GeneratedBy"][0]["Version"] == __version__
    sidecar = json.loads((out / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.json").read_text())
    assert {"Description", "Sources", "SpatialReference", "bids_cnm"} <= set(sidecar)
    assert sidecar["bids_cnm"]["sphere_diameter"] == 6.0


def test_warm_and_repeated_multiproc_runs_give_the_same_maps(group_run, tiny_connectome,
                                                             tiny_coordinates, tmp_path):
    """With the prepared copies kept (nipype's cache gone), the MultiProc run checks them in
    the main process and computes everything else in its workers; its maps and tables equal
    the first run's, and running it again changes no file."""
    ref, ref_work = group_run
    out, work = tmp_path / "out", tmp_path / "work"
    shutil.copytree(ref_work / "prepared", work / "prepared")
    # each subject's share of the degree map was saved with its prepared copy; the warm
    # run reads it (the degree outputs below are the same) and does not write it again
    subjects = [p for p in (work / "prepared").iterdir() if p.is_dir()]
    shares = {p: p.stat().st_mtime_ns for p in (work / "prepared").glob("*/degree-*.npy")}
    assert subjects and sorted(p.parent for p in shares) == sorted(subjects)
    command = [tiny_connectome, out, "group", "--coordinates", tiny_coordinates, "-w", work,
               "--nprocs", "2"]
    assert run_cli(*command) == 0
    after = {p: p.stat().st_mtime_ns for p in (work / "prepared").glob("*/degree-*.npy")}
    assert after == shares
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.suffix in (".gz", ".tsv"))
    assert files and files == sorted(p.relative_to(out) for p in out.rglob("*")
                                     if p.suffix in (".gz", ".tsv"))
    for name in files:
        if name.suffix == ".gz":
            np.testing.assert_array_equal(np.asarray(nb.load(out / name).dataobj),
                                          np.asarray(nb.load(ref / name).dataobj))
        else:
            assert (out / name).read_text() == (ref / name).read_text(), name
    # the derivatives, not the run's record (logs/) nor the lock, which each run renews
    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
                and "logs" not in p.relative_to(out).parts and p.name != ".bids_cnm.lock"}

    before = stamps()
    assert run_cli(*command) == 0
    assert stamps() == before


def test_outputs_index_with_pybids(group_run):
    from bids import BIDSLayout

    out, _ = group_run
    layout = BIDSLayout(out, validate=False, config=["bids", "derivatives", str(PYBIDS_CONFIG)])
    tmaps = layout.get(stat="t", suffix="boldmap", extension=".nii.gz")
    assert sorted(f.entities["seed"] for f in tmaps) == ["CtrlX", "StudyA", "StudyB", "StudyC"]
    overlap = layout.get(set="primary", thresh="5p1", desc="overlap", extension=".nii.gz")
    assert len(overlap) == 1


def test_overlap_recovers_planted_network(group_run):
    """The primary studies sit in network A: their overlap is A (+) and its anti-network B (-)."""
    out, _ = group_run
    img = nb.load(out / "network" / f"{ENTS}_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz")
    mask = np.asarray(nb.load(out / f"space-{SPACE}_desc-analysis_mask.nii.gz").dataobj) > 0
    overlap = np.asarray(img.dataobj)[mask]
    truth = planted_truth()[mask]
    assert overlap.max() == 1.0 and overlap.min() == -1.0
    # where all three studies agree, the voxel is in network A (+) or B (-).  With 8
    # subjects (df 7) a null voxel passes |t| > 5.1 with p ~ 0.0014 per seed, so a few
    # chance voxels may join the seeds' shared noise; 90% bounds that generously.
    assert np.mean(truth[overlap == 1.0] > 0.1) > 0.9
    assert np.mean(truth[overlap == -1.0] < -0.1) > 0.9
    assert (truth[overlap == 1.0] > 0.1).sum() >= 10
    tmap_img = nb.load(out / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz")
    tmap = np.asarray(tmap_img.dataobj)[mask]
    assert np.corrcoef(tmap, truth)[0, 1] > 0.8


def test_rerun_reuses_and_participant_then_group(tiny_connectome, tiny_coordinates, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--coordinates", tiny_coordinates, "-w", work, "--nipype-plugin", "Linear"]
    assert run_cli(tiny_connectome, out, "participant", "--participant_label", "sub-01", "02",
                   *common) == 0
    zmaps = sorted((out / "sub-01" / "func").glob("*_stat-z_boldmap.nii.gz"))
    assert len(zmaps) == 4
    assert not (out / "sub-03").exists()
    assert run_cli(tiny_connectome, out, "participant", *common) == 0
    assert run_cli(tiny_connectome, out, "group", *common) == 0
    reused = nb.load(out / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz").get_fdata()
    # the same group run from scratch (no participant maps) gives the same t-map
    fresh = tmp_path / "fresh"
    assert run_cli(tiny_connectome, fresh, "group", "--coordinates", tiny_coordinates, "-w",
                   tmp_path / "work2", "--nipype-plugin", "Linear") == 0
    direct = nb.load(fresh / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz").get_fdata()
    np.testing.assert_allclose(reused, direct, rtol=1e-4, atol=1e-4)


def test_the_report_is_drawn_by_the_runs_drawing_server(group_run, tiny_connectome,
                                                       tiny_coordinates, tmp_path, monkeypatch):
    """The group run starts a drawing server (nilearn imported while the run starts), the
    report draws with its processes, and the run leaves neither server nor address."""
    import multiprocessing

    from bids_cnm.reports import draw_server

    _, ref_work = group_run
    work = tmp_path / "work"
    shutil.copytree(ref_work / "prepared", work / "prepared")
    served = []
    real = draw_server.connect
    monkeypatch.setattr(draw_server, "connect", lambda n: served.append(real(n)) or served[-1])
    assert run_cli(tiny_connectome, tmp_path / "out", "group", "--coordinates",
                   tiny_coordinates, "-w", work, "--nipype-plugin", "Linear") == 0
    assert served and all(served), "the report drew without the server"
    assert not draw_server._STARTED and draw_server.ENV not in os.environ
    assert not [p for p in multiprocessing.active_children()
                if p.name == "bids_cnm-draw-server"]


def test_participant_filter_selects_cohort(tiny_connectome, tiny_coordinates, tmp_path):
    out = tmp_path / "out"
    assert run_cli(tiny_connectome, out, "participant", "--coordinates", tiny_coordinates,
                   "--participant-filter", "group=IGE", "-w", tmp_path / "w",
                   "--nipype-plugin", "Linear") == 0
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-02", "sub-04", "sub-06", "sub-08"]


def test_entry_points():
    result = subprocess.run([sys.executable, "-m", "bids_cnm", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
    exe = shutil.which("bids_cnm")
    if exe:
        assert __version__ in subprocess.run([exe, "--version"], capture_output=True,
                                             text=True).stdout


# ---- bad input: one clear line, the right exit code, nothing written into BIDS_DIR ----

def error_of(capsys, *args) -> tuple[int, str]:
    try:
        code = run_cli(*args)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def test_output_inside_bids_dir_refused(tiny_connectome, tiny_coordinates, capsys):
    before = sorted(p for p in tiny_connectome.rglob("*"))
    for out in (tiny_connectome, tiny_connectome / "derivatives" / "cnm"):
        code, err = error_of(capsys, tiny_connectome, out, "group", "--coordinates",
                             tiny_coordinates)
        assert code == EX_USAGE and "never writes into the input dataset" in err
    assert sorted(p for p in tiny_connectome.rglob("*")) == before


def test_usage_errors(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "group")
    assert code == EX_USAGE and "--coordinates" in err
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                         tiny_coordinates, "--participant-filter", "group")
    assert code == EX_USAGE and "COLUMN=VALUE" in err
    # preparing only, and keeping nothing prepared: the run would decode for nothing
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "participant",
                         "--coordinates", tiny_coordinates, "-w", tmp_path / "w",
                         "--skip-participant-maps", "--no-cache")
    assert code == EX_USAGE and "nothing to do" in err and "drop --no-cache" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_missing_inputs(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    code, err = error_of(capsys, tmp_path / "nope", tmp_path / "o", "group", "--coordinates",
                         tiny_coordinates, "-w", tmp_path / "w")
    assert code == EX_NOINPUT and "nope" in err
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                         tmp_path / "missing.tsv", "-w", tmp_path / "w")
    assert code == EX_NOINPUT and "missing.tsv" in err


def test_filters_matching_nothing(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    base = [tiny_connectome, tmp_path / "o", "group", "--coordinates", tiny_coordinates,
            "-w", tmp_path / "w"]
    code, err = error_of(capsys, *base, "--participant-label", "99")
    assert code == EX_NOMATCH and "99" in err
    code, err = error_of(capsys, *base, "--participant-filter", "group=PSP")
    assert code == EX_NOMATCH and "group=PSP" in err
    code, err = error_of(capsys, *base, "--task", "motor")
    assert code == EX_NOMATCH and "--task motor" in err
    code, err = error_of(capsys, *base, "--participant-filter", "diagnosis=IGE")
    assert code == EX_DATAERR and "participants.tsv" in err and "diagnosis" in err


def test_grid_mismatch_names_both_files(tmp_path, tiny_coordinates, capsys):
    root = write_tiny_connectome(tmp_path / "conn", n_subjects=2, n_volumes=10,
                                 two_runs_first=False)
    bold = next((root / "sub-02" / "func").glob("*_bold.nii.gz"))
    img = nb.load(bold)
    affine = img.affine.copy()
    affine[0, 3] += 2.0
    nb.Nifti1Image(np.asarray(img.dataobj), affine).to_filename(bold)
    code, err = error_of(capsys, root, tmp_path / "o", "group", "--coordinates",
                         tiny_coordinates, "-w", tmp_path / "w")
    assert code == EX_DATAERR and "grid mismatch" in err
    assert "sub-02" in err and "sub-01" in err


def test_bad_coordinates(tiny_connectome, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("study\tx\ty\tz\nA\t1\t2\t3\nB\t4\tfoo\t6\n")
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                         bad, "-w", tmp_path / "w")
    assert code == EX_DATAERR and "bad.tsv" in err and "row 3" in err and "'y'" in err


def test_empty_seed_and_outside_warning(tiny_connectome, tmp_path, capsys):
    # (70, 0, 0) lies outside the tiny brain: a warning for StudyA, an error for StudyD
    coords = write_coordinates(tmp_path / "c.tsv", TINY_COORDS[:2] + [("StudyA", 36, 0, 0),
                                                                       ("StudyD", -38, 30, 40)])
    code, err = error_of(capsys, tiny_connectome, tmp_path / "o", "group", "--coordinates",
                         coords, "-w", tmp_path / "w")
    assert code == EX_DATAERR
    assert "StudyD" in err and "empty" in err and "row 5" in err


def test_outside_coordinate_is_a_warning(tiny_connectome, tmp_path, capsys):
    coords = write_coordinates(tmp_path / "c.tsv", TINY_COORDS[:2] + [("StudyA", 38, 30, 40)])
    code = run_cli(tiny_connectome, tmp_path / "o", "participant", "--coordinates", coords,
                   "-w", tmp_path / "w", "--participant-label", "01",
                   "--nipype-plugin", "Linear")
    err = capsys.readouterr().err
    assert code == 0
    assert "row 4" in err and "StudyA" in err and "outside the analysis mask" in err


def test_unreadable_bold_in_node_keeps_exit_code(tmp_path, tiny_coordinates, capsys):
    root = write_tiny_connectome(tmp_path / "conn", n_subjects=2, n_volumes=10,
                                 two_runs_first=False)
    bold = next((root / "sub-02" / "func").glob("*_bold.nii.gz"))
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])  # truncated gzip: header fine, data not
    code, err = error_of(capsys, root, tmp_path / "o", "group", "--coordinates",
                         tiny_coordinates, "-w", tmp_path / "w", "--nipype-plugin", "Linear")
    assert code == EX_DATAERR and "sub-02" in err and "cannot read the image data" in err
    assert not list((tmp_path / "o").glob("*_boldmap.nii.gz"))


def test_skip_participant_maps_prepares_only(tiny_connectome, tiny_coordinates, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert run_cli(tiny_connectome, out, "participant", "--coordinates", tiny_coordinates,
                   "-w", work, "--participant-label", "03", "--skip-participant-maps",
                   "--nipype-plugin", "Linear") == 0
    assert not list(out.rglob("*_boldmap.nii.gz"))
    # the prepared copy is in the work directory's shared cache, one folder per subject
    assert [p.parent.name.split("_")[0] for p in (work / "prepared").glob("*/meta.json")] == [
        "sub-03"]


def test_output_that_cannot_be_created(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = error_of(capsys, tiny_connectome, blocker / "out", "group", "--coordinates",
                         tiny_coordinates, "-w", tmp_path / "w")
    assert code == 73 and "cannot create OUTPUT_DIR" in err


def test_connectome_without_masks_uses_data_mask(tmp_path, tiny_coordinates):
    root = write_tiny_connectome(tmp_path / "conn", n_subjects=3, n_volumes=30,
                                 two_runs_first=False, with_masks=False)
    out = tmp_path / "out"
    assert run_cli(root, out, "group", "--coordinates", tiny_coordinates, "-w", tmp_path / "w",
                   "--nipype-plugin", "Linear") == 0
    from conftest import tiny_mask

    mask = nb.load(out / f"space-{SPACE}_desc-analysis_mask.nii.gz").get_fdata() > 0
    np.testing.assert_array_equal(mask, tiny_mask())  # voxels with varying data


def test_killed_run_resumes(tiny_connectome, tiny_coordinates, tmp_path):
    """SIGKILL in the middle of a group run; the same command finishes it, reusing steps."""
    import os
    import signal
    import time

    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "-m", "bids_cnm", str(tiny_connectome), str(out), "group",
               "--coordinates", str(tiny_coordinates), "-w", str(work),
               "--nipype-plugin", "Linear"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # a subject is prepared once its folder is renamed into the cache with its meta.json;
    # kill the run then, in the middle of its preparation batch
    deadline = time.time() + 120
    while (not list((work / "prepared").glob("sub-*/meta.json")) and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (first,) = list((work / "prepared").glob("sub-*/meta.json"))[:1]
    stamp = first.stat().st_mtime_ns
    # nothing half-written: every map on disk is complete and readable
    for path in out.rglob("*.nii.gz"):
        nb.load(path).get_fdata()
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert first.stat().st_mtime_ns == stamp  # the subject prepared before the kill was reused
    assert not list((work / "prepared").glob("*.tmp*"))  # no half-written copy left
    assert (out / "network"
            / f"{ENTS}_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz").exists()
    assert not list(out.rglob(".*.part")) and not list(out.rglob(".*.nii.gz"))


def test_outputs_are_readable_by_others(group_run):
    """Atomic writes go through private temporaries; the final files must not stay private."""
    out, _ = group_run
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask  # what open() would have given
    for path in (out / "dataset_description.json", out / "seeds.tsv",
                 out / "seeds" / f"{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz",
                 out / "bids_cnm_report.html"):
        assert path.stat().st_mode & 0o777 == expected, path


def test_no_cache_streams_the_same_maps(group_run, tiny_connectome, tiny_coordinates, tmp_path,
                                        capfd):
    """--no-cache keeps no copy of the time series and gives the default run's t-maps."""
    ref, _ = group_run
    out, work = tmp_path / "out", tmp_path / "work"
    assert run_cli(tiny_connectome, out, "group", "--coordinates", tiny_coordinates,
                   "-w", work, "--no-cache", "--nipype-plugin", "Linear",
                   "--no-degree-check") == 0
    assert not list((work / "prepared").rglob("data.npy"))  # voxel lists only
    for name in (f"seeds/{ENTS}_seed-StudyA_stat-t_boldmap.nii.gz",
                 f"seeds/{ENTS}_seed-CtrlX_stat-z_boldmap.nii.gz"):
        np.testing.assert_array_equal(nb.load(out / name).get_fdata(),
                                      nb.load(ref / name).get_fdata())
    # the log ends with where the time went
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert "time: " in last and "connectivity" in last and "orchestration" in last


def test_cache_larger_than_the_disk_stops(tiny_connectome, tiny_coordinates, tmp_path, capsys,
                                          monkeypatch):
    import collections

    import bids_cnm.workflows.base as base

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(base.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    code = run_cli(tiny_connectome, tmp_path / "out", "group", "--coordinates",
                   tiny_coordinates, "-w", tmp_path / "work", "--nipype-plugin", "Linear")
    err = capsys.readouterr().err
    assert code == 73 and "GB free" in err and "--no-cache" in err
