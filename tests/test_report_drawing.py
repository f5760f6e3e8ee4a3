"""Drawing the report's figures in parallel processes gives what drawing them here gives."""

from __future__ import annotations

import inspect
import os
from functools import partial
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_cnm.reports import drawing, figures
from bids_cnm.reports.blocks import Figure, Group, Row, Section, iter_figures

AFFINE = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
SHAPE = (46, 55, 46)


def _maps(folder: Path) -> tuple[Path, Path]:
    """A mask and a map with a positive and a negative blob, on the demo's 4 mm grid."""
    mask = np.zeros(SHAPE, np.float32)
    mask[8:38, 8:47, 8:38] = 1
    data = np.zeros(SHAPE, np.float32)
    data[14:18, 20:24, 20:24] = 7.0
    data[28:31, 30:34, 24:27] = -6.0
    paths = (folder / "mask.nii.gz", folder / "map.nii.gz")
    for path, values in zip(paths, (mask, data)):
        nb.Nifti1Image(values, AFFINE).to_filename(path)
    return paths


def _sections(folder: Path) -> list[Section]:
    """Sections holding figures of both kinds (drawn with nilearn and without)."""
    mask, tmap = _maps(folder)
    panel = figures.Panel("map", str(tmap), np.array([[-20.0, -40.0, 20.0]]))
    rng = np.random.default_rng(0)
    fig = partial(Figure, caption="c")
    return [
        Section("one", "One", [
            fig(partial(figures.glass_grid, [panel, panel], str(mask), 3.0), alt="grid"),
            fig(partial(figures.bars, ["a", "b", "c"], [1.0, -2.0, 3.0], "x"), alt="bars"),
            Row([fig(partial(figures.stat_map_ortho, str(tmap), (-20.0, -40.0, 20.0), 7.0,
                             3.0), alt="ortho"),
                 fig(partial(figures.stat_map_mosaic, str(tmap), [0.0, 20.0], 7.0, 3.0),
                     alt="mosaic")]),
        ]),
        Section("two", "Two", [Group("g", "G", [
            fig(partial(figures.heatmap, np.array([[1.0, 0.3], [0.3, 1.0]]), ["a", "b"],
                        ["a", "b"]), alt="heatmap"),
            fig(partial(figures.null_histogram, rng.normal(size=200), 1.5, 0.04, "r"),
                alt="null"),
            fig(partial(figures.coordinates_glass_brain, {"s": np.array([[0.0, 0.0, 0.0]])},
                        {"s": "#1f77b4"}), alt="coordinates"),
        ])]),
    ]


def _die() -> bytes:
    """A figure job whose process dies (as when the kernel kills it)."""
    os._exit(3)


def test_figures_drawn_in_parallel_equal_those_drawn_here(tmp_path):
    serial, parallel = _sections(tmp_path), _sections(tmp_path)
    assert len([f for s in serial for f in iter_figures(s.blocks)]) >= \
        drawing.MIN_FIGURES_FOR_POOL
    assert drawing.draw_figures(serial, n_procs=1) == []
    assert drawing.draw_figures(parallel, n_procs=2) == []
    drawn = [f for s in serial for f in iter_figures(s.blocks)]
    redrawn = [f for s in parallel for f in iter_figures(s.blocks)]
    assert [f.alt for f in drawn] == [f.alt for f in redrawn]
    kinds = {drawing.uses_nilearn(f) for f in drawn}
    assert kinds == {True, False}, "both pools are exercised"
    for a, b in zip(drawn, redrawn):
        assert a.png and a.png.startswith(b"\x89PNG"), a.alt
        assert a.png == b.png, f"{a.alt} differs when drawn in parallel"


def test_a_dead_drawing_process_costs_only_its_figure(tmp_path):
    sections = _sections(tmp_path)
    sections[0].blocks.insert(1, Figure(_die, "c", "dies"))
    failed = drawing.draw_figures(sections, n_procs=2)
    assert [f.alt for f in failed] == ["dies"]
    assert "ended" in failed[0].error or "no drawing process" in failed[0].error
    for f in (f for s in sections for f in iter_figures(s.blocks)):
        assert f.alt == "dies" or f.png.startswith(b"\x89PNG"), f.alt


def test_a_failing_figure_shows_its_error(tmp_path):
    sections = _sections(tmp_path)
    # a 1-D "matrix": the heatmap raises
    sections[1].blocks.append(Figure(partial(figures.heatmap, np.ones(3), ["a"], ["a"]), "c",
                                     "broken heatmap"))
    failed = drawing.draw_figures(sections, n_procs=2)
    assert [f.alt for f in failed] == ["broken heatmap"]
    assert failed[0].png is None and failed[0].error


@pytest.mark.parametrize("name", sorted(
    name for name, fn in inspect.getmembers(figures, inspect.isfunction)
    if fn.__module__ == figures.__name__
    and inspect.signature(fn).return_annotation == "bytes" and name != "to_png"))
def test_the_figures_drawn_with_nilearn_are_listed(name):
    """A nilearn figure drawn by a process forked before nilearn was imported would
    import it again (a second of CPU): every figure function using it is listed."""
    source = inspect.getsource(getattr(figures, name))
    if "from nilearn" in source or "paired_values(" in source:
        assert name in figures.NILEARN_FIGURES
    assert figures.NILEARN_FIGURES <= set(dir(figures))


def test_a_daemonic_process_draws_the_figures_itself(monkeypatch):
    """A multiprocessing.Pool's worker may not have children: no pool there."""
    import multiprocessing

    assert drawing._pool_size(10, 2) == 2
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert drawing._pool_size(10, 2) == 1


def _child_of_killed_parent(script: str) -> tuple:
    """Run ``script`` (it prints a child's pid, then maybe more words), SIGKILL it; the
    pid (or the pid and the words)."""
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True)
    words = parent.stdout.readline().split()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return int(words[0]) if len(words) == 1 else (int(words[0]), *words[1:])


def _ends(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` ends (or is a zombie) within ``seconds``; killed if not."""
    import signal
    import time

    def running() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + seconds
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if running():
        os.kill(pid, signal.SIGKILL)
        return False
    return True


def test_a_drawing_worker_ends_with_its_killed_parent():
    """A report interrupted by SIGKILL (a cluster's time limit) leaves no drawing process
    behind: the worker watches its parent, whose death does not close the worker's pipe."""
    script = ("import multiprocessing, time\n"
              "from bids_cnm.reports import drawing\n"
              "worker = drawing._Worker(multiprocessing.get_context('fork'), False)\n"
              "print(worker.process.pid, flush=True)\n"
              "time.sleep(60)\n")
    assert _ends(_child_of_killed_parent(script), 20)


def _pid(_: int) -> bytes:
    return str(os.getpid()).encode()


def test_figures_without_nilearn_use_every_process():
    """With no figure drawn by nilearn there is nothing to import first: every process
    draws from the start (before, one process drew them all and the other core idled)."""
    figs = [Figure(partial(_pid, k), "c", f"f{k}") for k in range(8)]
    assert drawing.draw_figures([Section("s", "S", figs)], n_procs=2) == []
    assert len({f.png for f in figs}) == 2
    assert str(os.getpid()).encode() not in {f.png for f in figs}


_DEADLOCK_SCRIPT = """
import sys
from functools import partial
import numpy as np
from bids_cnm.reports import drawing, figures
from bids_cnm.reports.blocks import Figure, Section

def echo(payload):
    return payload.tobytes()  # a result as large as the job

# 4 MB arrays each way: far more than a pipe holds
figs = [Figure(partial(echo, np.full(1 << 20, k, np.float32)), "c", f"big{k}")
        for k in range(6)]
# one nilearn figure: the other figures are handed to the early process up front
figs.append(Figure(partial(figures.coordinates_glass_brain, {"s": np.zeros((1, 3))},
                           {"s": "#1f77b4"}), "c", "glass"))
failed = drawing.draw_figures([Section("s", "S", figs)], n_procs=2)
assert not failed, [f.error for f in failed]
assert all(np.frombuffer(f.png, np.float32)[0] == k for k, f in enumerate(figs[:6]))
print("drawn")
"""


_NO_FORK_SCRIPT = """
import os, resource, sys
from functools import partial
import numpy as np
from bids_cnm.reports import drawing, figures
from bids_cnm.reports.blocks import Figure, Section

def pid(k):
    return str(os.getpid()).encode()

# what a drawing process reads under root's home (matplotlib's caches), read as root
figures.import_matplotlib()
import nilearn.plotting  # noqa: E402, F401
figs = [Figure(partial(pid, k), "c", f"f{k}") for k in range(6)]
figs.append(Figure(partial(figures.coordinates_glass_brain, {"s": np.zeros((1, 3))},
                           {"s": "#1f77b4"}), "c", "glass"))
# a user allowed only `extra` processes more than this one runs (its threads count)
extra = int(sys.argv[1])
threads = int(next(line.split()[1] for line in open("/proc/self/status")
                   if line.startswith("Threads:")))
os.setgid(65534)
os.setuid(65534)
resource.setrlimit(resource.RLIMIT_NPROC, (threads + extra, threads + extra))
if extra == 0:
    try:
        child = os.fork()
    except OSError:
        pass
    else:
        if child == 0:
            os._exit(0)
        sys.exit("a fork succeeded: the limit does not hold here")
failed = drawing.draw_figures([Section("s", "S", figs)], n_procs=2)
assert not failed, [f.error for f in failed]
assert figs[6].png.startswith(b"\\x89PNG")
here = str(os.getpid()).encode() in {f.png for f in figs[:6]}
print("drawn", "here" if here else "by another process")
"""


def _nobody_runs_processes() -> bool:
    """Whether no process runs as uid 65534 (the limit below counts every one of them)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = next(line.split()[1] for line in status.read_text().splitlines()
                       if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid == "65534":
            return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming a user limited to its own "
                                               "processes needs root")
@pytest.mark.skipif(not _nobody_runs_processes(), reason="processes run as uid 65534: "
                                                         "the process limit counts them")
@pytest.mark.parametrize(("extra", "where"), [(0, "here"), (1, "by another process")])
def test_figures_are_drawn_when_processes_cannot_be_forked(tmp_path, extra, where):
    """A system that refuses forks (a process limit) costs the report no figure: with no
    process to be had, the figures are drawn in the report's own process; with one, by
    it (the second fork failing); a warning says so."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_FORK_SCRIPT, str(extra)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1",
                               "BIDS_CNM_DRAW_SERVER": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"drawn {where}"
    assert "cannot start a drawing process" in proc.stderr


def test_large_figure_jobs_handed_out_up_front_do_not_block():
    """The early process gets several jobs at once while nilearn is imported here.  Sent
    one message each, a large job could wait for the process to read while the process
    waited to send back a large result: both blocked for ever."""
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", _DEADLOCK_SCRIPT], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, MPLBACKEND="Agg"))
    except subprocess.TimeoutExpired:
        pytest.fail("drawing blocked: the jobs and results filled the pipe both ways")
    assert proc.returncode == 0 and "drawn" in proc.stdout, proc.stderr[-2000:]


def test_a_figure_that_cannot_be_sent_to_a_process_is_drawn_here(tmp_path):
    sections = _sections(tmp_path)
    local = Figure(lambda: b"\x89PNG drawn here", "c", "lambda")  # a lambda cannot be pickled
    sections[0].blocks.append(local)
    assert drawing.draw_figures(sections, n_procs=2) == []
    assert local.png == b"\x89PNG drawn here"
    assert all(f.png.startswith(b"\x89PNG") for s in sections for f in iter_figures(s.blocks))


def test_without_nilearn_plotting_the_other_figures_are_drawn(tmp_path, monkeypatch):
    def broken() -> None:
        raise ImportError("no module named 'nilearn.plotting'")

    monkeypatch.setattr(drawing, "_prepare_nilearn", broken)
    sections = _sections(tmp_path)
    failed = drawing.draw_figures(sections, n_procs=2)
    drawn = [f for s in sections for f in iter_figures(s.blocks)]
    assert {f.alt for f in failed} == {f.alt for f in drawn if drawing.uses_nilearn(f)}
    assert all("nilearn" in f.error for f in failed)
    assert all(f.png.startswith(b"\x89PNG") for f in drawn if f not in failed)


_SERVER_SCRIPT = """
import json, os, sys
from functools import partial
from bids_cnm.reports import draw_server, drawing, figures
from bids_cnm.reports.blocks import Figure, Section

def where(k):
    return json.dumps([os.getpid(), os.getppid(), "nilearn.plotting" in sys.modules]).encode()

with draw_server.running() as started:
    server = draw_server._STARTED["process"].pid
    figs = [Figure(partial(where, k), "c", f"f{k}") for k in range(8)]
    assert drawing.draw_figures([Section("s", "S", figs)], n_procs=2) == []
    print(json.dumps({"started": started, "server": server,
                      "here": any(m in sys.modules for m in ("nilearn.plotting", "matplotlib")),
                      "drawn": [json.loads(f.png) for f in figs]}))
print(json.dumps({"env": os.environ.get(draw_server.ENV)}))
"""


def test_the_drawing_server_draws_with_nilearn_imported_where_the_report_has_not():
    """In a fresh process: the server's processes draw every figure (two of them, both
    children of the server), with nilearn's plotting imported by the server; the report's
    process imports neither it nor matplotlib.  Leaving the block ends the server and
    clears its address."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SERVER_SCRIPT], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, MPLBACKEND="Agg"),
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    result, after = json.loads(lines[0]), json.loads(lines[1])
    assert result["started"] and not result["here"]
    pids = {pid for pid, _, _ in result["drawn"]}
    assert len(pids) == 2
    assert all(ppid == result["server"] and imported for _, ppid, imported in result["drawn"])
    assert after["env"] is None
    assert not os.path.exists(f"/proc/{result['server']}")


def test_figures_drawn_by_the_server_equal_those_drawn_here(tmp_path, monkeypatch):
    """Every figure drawn by the server's processes is the PNG drawn in this process."""
    from bids_cnm.reports import draw_server

    here = _sections(tmp_path)
    for fig in iter_figures([b for s in here for b in s.blocks]):
        fig.png = fig.job()
    served = _sections(tmp_path)
    connected = []
    real = draw_server.connect
    monkeypatch.setattr(draw_server, "connect", lambda n: connected.append(real(n)) or
                        connected[-1])
    with draw_server.running() as started:
        assert started
        assert drawing.draw_figures(served, n_procs=2) == []
    assert connected and all(connected), "the figures were not drawn by the server"
    pairs = zip(iter_figures([b for s in here for b in s.blocks]),
                iter_figures([b for s in served for b in s.blocks]))
    for a, b in pairs:
        assert a.png == b.png, a.alt


def test_without_a_reachable_server_the_report_draws_its_own(tmp_path, monkeypatch):
    """An address left by a server that is gone (or another machine's): no error, the
    figures are drawn by the report's own processes."""
    from bids_cnm.reports import draw_server

    monkeypatch.setenv(draw_server.ENV, str(tmp_path / "gone" / "socket"))
    assert draw_server.connect(2) == []
    sections = _sections(tmp_path)
    assert drawing.draw_figures(sections, n_procs=2) == []
    assert all(f.png.startswith(b"\x89PNG") for s in sections for f in iter_figures(s.blocks))


def test_the_drawing_server_ends_with_its_killed_parent():
    """A run killed with SIGKILL leaves no server behind (it watches its parent)."""
    script = ("import time\n"
              "from bids_cnm.reports import draw_server\n"
              "draw_server.start()\n"
              "print(draw_server._STARTED['process'].pid, draw_server._STARTED['folder'],\n"
              "      flush=True)\n"
              "time.sleep(60)\n")
    pid, folder = _child_of_killed_parent(script)
    assert _ends(pid, 30)
    assert not os.path.exists(folder), "the server's socket folder was left behind"


def test_a_server_folder_left_by_a_killed_run_is_removed_by_the_next():
    """A run killed with its whole process group (SIGKILL) leaves its socket folder; the
    next run's server removes the folders of runs that are gone, not those of live ones."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from bids_cnm.reports import draw_server

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    root = Path(tempfile.gettempdir())
    stale = root / f"{draw_server._PREFIX}{int(gone.stdout)}-test"
    live = root / f"{draw_server._PREFIX}{os.getpid()}-test"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "socket").touch()
    try:
        with draw_server.running() as started:
            assert started
            assert draw_server._STARTED["folder"].name.startswith(
                f"{draw_server._PREFIX}{os.getpid()}-")
        assert not stale.exists() and live.exists()
    finally:
        for folder in (stale, live):
            if folder.exists():
                (folder / "socket").unlink()
                folder.rmdir()
