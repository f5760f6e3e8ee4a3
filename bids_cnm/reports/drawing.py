"""Draw the figures of the report's sections, in parallel processes when it pays.

Plotting is CPU-bound and matplotlib is not thread-safe, so the figures are
drawn in forked worker processes (fork is cheap and the workers inherit the
imports).  Importing nilearn's plotting module costs about a second of CPU,
which would keep every core but one idle if it came before the first fork.  So
there are two pools:

* the *early* pool is forked before nilearn is imported, with one process less
  than there are cores (all of them when no figure needs nilearn): it starts on
  the figures drawn without nilearn
  (:data:`bids_cnm.reports.figures.NILEARN_FIGURES` lists the others) while
  this process imports nilearn's plotting module and loads the MNI template;
* the *late* pool is forked after that, so its processes have both, and draws
  the nilearn figures, then what is left of the others.

When the run started a drawing server (:mod:`bids_cnm.reports.draw_server`), whose
processes have nilearn imported already, they draw every figure instead of both pools.

At most as many figures are drawn at a time as there are processes allowed, the
costliest first (a long figure started last would leave the other processes
idle at the end: longest-processing-time-first scheduling).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

from bids_cnm.reports import draw_server
from bids_cnm.reports.blocks import Figure, Section, iter_figures

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = ["MIN_FIGURES_FOR_POOL", "draw_figures", "uses_nilearn"]

#: fewer figures than this are drawn in this process (a pool costs ~0.3 s to start)
MIN_FIGURES_FOR_POOL = 6

#: relative drawing cost of the figure functions (CPU time measured on the benchmark's
#: 20-seed run and the demo); unknown ones count 1
_COST = {"glass_grid": 4.0, "voxel_scatter": 4.0, "coordinates_glass_brain": 3.0,
         "plateaus_glass_brain": 3.0, "values_glass_brain": 3.0, "zoomed_slices": 2.0,
         "slices_grid": 2.0, "stat_map_ortho": 1.5, "stat_map_mosaic": 1.5}

Result = tuple[bytes | None, str | None]


def _name(fig: Figure) -> str:
    return getattr(getattr(fig.job, "func", None), "__name__", "")


def uses_nilearn(fig: Figure) -> bool:
    """Whether the figure's job draws with nilearn."""
    from bids_cnm.reports.figures import NILEARN_FIGURES

    return _name(fig) in NILEARN_FIGURES


def _cost(fig: Figure) -> float:
    if _name(fig) == "bars":  # one bar, label and value per seed: hundreds of seeds add up
        args = getattr(fig.job, "args", ())
        return 1.0 + (len(args[0]) / 50 if args else 0.0)
    return _COST.get(_name(fig), 1.0)


def _draw(job: Callable[[], bytes]) -> Result:
    """Run one figure's job; a failing figure gives its error, not an exception."""
    try:
        return job(), None
    except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the report
        return None, f"{type(exc).__name__}: {exc}"


def _pool_size(n_figures: int, n_procs: int | None) -> int:
    if n_procs is None:
        n_procs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if n_figures < MIN_FIGURES_FOR_POOL or sys.platform != "linux":
        return 1  # fork (cheap, inherits the imports) is only safe to rely on on Linux
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process (a multiprocessing.Pool's worker) may not fork
    return max(1, min(n_procs, n_figures))


def _prepare_nilearn() -> None:
    """Import nilearn's plotting module and load the template (inherited by forks)."""
    import nilearn.plotting  # noqa: F401

    from bids_cnm.reports.figures import background

    background()


def _serve(conn: Connection) -> None:
    """A worker process: draw the jobs of each list received, until ``None``.

    Each result is sent back in turn.  It also ends when its parent does (killed, say,
    by a job's time limit): the forked worker holds a copy of the parent's end of its
    own pipe (and of the pipes made before it), so the parent's death alone never ends
    ``recv``.
    """
    parent = multiprocessing.parent_process()
    watched = [conn] if parent is None else [conn, parent.sentinel]
    while True:
        if conn not in wait(watched):  # only the parent's sentinel: it is gone
            return
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        for job in jobs:
            conn.send(_draw(job))


class _Worker:
    """One forked drawing process and its pipe; it draws the figures sent, in order.

    Not a ``ProcessPoolExecutor``: its helper threads would still run in this
    process when the late pool forks (forking a process with threads can leave a
    child waiting for ever on a lock a thread held); a pipe per worker needs none.
    """

    def __init__(self, context: multiprocessing.context.BaseContext | None,
                 with_nilearn: bool, served: tuple[Connection, int] | None = None) -> None:
        self.with_nilearn = with_nilearn  # forked after nilearn was imported
        self.pending: deque[int] = deque()  # figures sent, not yet returned
        self.process = None
        if served is not None:  # a process of the drawing server (not a child of this one)
            self.conn, self.pid = served
            return
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        try:
            self.process.start()
        except BaseException:  # no process (a fork refused): no pipe left open either
            self.conn.close()
            child.close()
            raise
        self.pid = self.process.pid
        child.close()

    def send(self, ks: Sequence[int], figures: Sequence[Figure]) -> None:
        """Hand the figures ``ks`` to the process, in one message.

        One message, because the process reads no more until it has sent every result
        back: a second message sent while it draws could fill the pipe both ways (the
        job's arrays one way, a result the other) and leave both processes waiting.
        """
        self.conn.send([figures[k].job for k in ks])  # pickled whole before a byte is sent
        self.pending.extend(ks)

    def stop(self) -> None:
        """End the process: at once when it is still drawing (the report was
        interrupted), else when it has read the end of its jobs."""
        if self.pending:
            self._kill()
        try:
            self.conn.send(None)
        except OSError:
            pass
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()  # a server's process also ends when it reads the end of the pipe

    def _kill(self) -> None:
        # a server's process is not this process's child (its pid may be reused once the
        # server reaped it): it ends when it next writes to the closed pipe
        if self.process is not None:
            self.process.kill()


def _hand_out(worker: _Worker, ks: Sequence[int], figures: Sequence[Figure],
              results: list[Result | None]) -> None:
    """Send figures ``ks`` to ``worker``; those that cannot reach it are drawn here."""
    try:
        worker.send(ks, figures)
    except (pickle.PicklingError, AttributeError, TypeError, OSError):
        # a job holding a lambda or a local function, say, or a process that died
        # while idle (its pipe is closed)
        for k in ks:
            results[k] = _draw(figures[k].job)


def _start(context: multiprocessing.context.BaseContext, with_nilearn: bool, n: int,
           workers: list[_Worker]) -> list[_Worker]:
    """Fork up to ``n`` drawing processes, each added to ``workers`` once started.

    Fewer when the system refuses a fork (process or memory limits): the figures are
    then drawn by the processes there are, or by this one; every process started is
    in ``workers``, which the caller stops.
    """
    started = []
    for _ in range(n):
        try:
            worker = _Worker(context, with_nilearn)
        except OSError as exc:
            LOGGER.warning("report: cannot start a drawing process (%s); the figures are "
                           "drawn by those running, or in the report's own process", exc)
            break
        workers.append(worker)
        started.append(worker)
    return started


#: cost units (:data:`_COST`) the early pool's processes are given up front: about
#: what they draw while this process imports nilearn (~0.9 s of CPU)
_IMPORT_COST = 6.0


def _draw_in_pools(figures: Sequence[Figure], size: int) -> list[Result]:
    """Every figure's result, drawn by ``size`` processes in the two pools."""
    order = sorted(range(len(figures)), key=lambda k: -_cost(figures[k]))
    plain = deque(k for k in order if not uses_nilearn(figures[k]))
    nilearn = deque(k for k in order if uses_nilearn(figures[k]))
    context = multiprocessing.get_context("fork")
    results: list[Result | None] = [None] * len(figures)
    workers: list[_Worker] = []
    try:
        # the run's drawing server has nilearn imported already: its processes draw all
        served = [_Worker(None, True, conn_pid) for conn_pid in draw_server.connect(size)]
        workers += served
        if served:  # one queue, costliest first: every process has nilearn
            nilearn, plain = deque(order), deque()
        else:
            from bids_cnm.reports.figures import import_matplotlib

            import_matplotlib()  # what every figure draws with, inherited by the forks below
        # else the early pool: it draws what needs no nilearn while this process imports
        # it (every process, when no figure needs nilearn)
        early = [] if served else _start(
            context, False, min(len(plain), max(1, size - 1) if nilearn else size), workers)
        if nilearn and not served:
            # the early pool's figures are given up front (this process cannot hand
            # any out while it imports)
            given: list[list[int]] = [[] for _ in early]
            cost = [0.0] * len(early)
            while plain and early and min(cost) < _IMPORT_COST:
                n = cost.index(min(cost))
                cost[n] += _cost(figures[plain[0]])
                given[n].append(plain.popleft())
            for worker, ks in zip(early, given):
                if ks:
                    _hand_out(worker, ks, figures, results)
            try:
                _prepare_nilearn()
            except Exception as exc:  # noqa: BLE001 - the other figures can still be drawn
                for k in nilearn:
                    results[k] = (None, f"cannot import nilearn's plotting: {exc}")
                nilearn.clear()
            # the late pool: forked now, with nilearn; `size` processes in all
            _start(context, True, min(size - len(workers), len(nilearn)), workers)
        while True:
            for i, worker in enumerate(workers):
                if worker.pending:
                    continue
                # nilearn figures first where nilearn is; the early pool draws the others
                if nilearn and worker.with_nilearn:
                    _hand_out(worker, [nilearn.popleft()], figures, results)
                elif plain:
                    _hand_out(worker, [plain.popleft()], figures, results)
                elif nilearn:  # an early process with nothing left: one with nilearn instead
                    worker.stop()
                    replaced = _start(context, True, 1, [])
                    workers[i] = replaced[0] if replaced else None
                    if replaced:
                        _hand_out(replaced[0], [nilearn.popleft()], figures, results)
            workers[:] = [w for w in workers if w is not None]
            busy = [w for w in workers if w.pending]
            if not busy:
                if workers and (plain or nilearn):
                    continue  # what was handed out was drawn here (it could not be sent)
                # no process left (none could be forked, or they died): the rest, here
                for k in (*plain, *nilearn):
                    results[k] = _draw(figures[k].job)
                break
            for conn in wait([w.conn for w in busy]):
                worker = next(w for w in busy if w.conn is conn)
                try:
                    results[worker.pending[0]] = conn.recv()
                    worker.pending.popleft()
                except (EOFError, OSError) as exc:  # the process died (killed, out of memory)
                    for k in worker.pending:
                        results[k] = (None, f"drawing process ended: {exc!r}")
                    worker.pending.clear()
                    worker.stop()  # reaped
                    workers.remove(worker)
    finally:
        for worker in workers:
            if worker is not None:  # (a process that could not be replaced)
                worker.stop()
    # figures no process was left to draw (all that could draw them died)
    return [r if r is not None else (None, "no drawing process left") for r in results]


def draw_figures(sections: Sequence[Section], n_procs: int | None = None) -> list[Figure]:
    """Draw every figure of ``sections`` (sets ``png`` or ``error``); returns the failures.

    Parameters
    ----------
    sections : sequence of Section
    n_procs : int, optional
        Processes to draw in; default the CPUs this process may use.

    Returns
    -------
    list of Figure
        The figures that could not be drawn (their ``error`` says why).
    """
    figures = [f for s in sections for f in iter_figures(s.blocks)]
    size = _pool_size(len(figures), n_procs)
    if size > 1:
        results = _draw_in_pools(figures, size)
    else:
        results = [_draw(f.job) for f in figures]
    failed = []
    for fig, (png, err) in zip(figures, results):
        fig.png, fig.error = png, err
        if err:
            LOGGER.warning("report: cannot draw %r: %s", fig.alt, err)
            failed.append(fig)
    return failed
