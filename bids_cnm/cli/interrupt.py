"""Ending a run cleanly: Ctrl-C, ``kill``/``scancel``/``docker stop``, or a killed parent.

nipype's MultiProc plugin runs nodes in forked worker processes.  Left alone, an
interrupted run prints one traceback per worker, and a main process killed with SIGKILL
leaves its workers computing for nobody.  Here

* every worker forked by ``multiprocessing`` ignores SIGINT (the terminal sends it to the
  whole process group: the main process alone decides what happens), takes SIGTERM with
  its default action, and asks the kernel to send it SIGTERM when its parent dies
  (Linux ``PR_SET_PDEATHSIG``), so a SIGKILL of the main process ends the workers too;
* the main process turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``), and
  :func:`stop_workers` ends the workers before the one-line message.  A signal that lands
  inside an at-fork hook (where CPython drops exceptions) is re-sent until the run has
  acknowledged it;
* nipype runs every interface with ``ignore_exception``, which swallows *any* exception,
  ``KeyboardInterrupt`` included: an interruption that lands while a node runs in the
  main process (merge nodes, ``run_without_submitting``) would turn into that node's
  crash and the run would go on.  Both signals are therefore also recorded, and
  :func:`raise_if_requested`, called by the run's nipype status callback before each
  node starts and after each ends, raises the interruption again where nipype lets it
  through;
* once interrupted, the run is ending: objects the interruption left half-built fail
  when collected (multiprocessing's ``Finalize``), and CPython would print those
  failures, with tracebacks, after the run's one line; they are dropped.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import threading

__all__ = ["Terminated", "acknowledge", "install", "raise_if_requested", "stop_workers"]

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The run received SIGTERM (e.g. ``kill``, ``scancel``, ``docker stop``)."""


#: re-sends SIGTERM until the main process has handled it (see _raise_terminated)
_RETRY = {"timer": None}

#: the interruption received and not yet acknowledged (see raise_if_requested)
_REQUESTED: dict[str, type[KeyboardInterrupt] | None] = {"exception": None}


#: set once the run was asked to stop: from then on it is ending (see _quiet_unraisable)
_ENDING = {"since": False}


def _raise_interrupted(signum, frame):
    _REQUESTED["exception"] = KeyboardInterrupt
    _ENDING["since"] = True
    raise KeyboardInterrupt()


def _raise_terminated(signum, frame):
    _REQUESTED["exception"] = Terminated
    _ENDING["since"] = True
    # An exception raised while CPython runs an at-fork hook (nipype forks its workers,
    # logging registers such hooks) is printed and dropped; until acknowledge() says the
    # run saw it, the signal comes again a second later.
    if _RETRY["timer"] is None:
        timer = threading.Timer(1.0, _resend)
        timer.daemon = True
        _RETRY["timer"] = timer
        timer.start()
    raise Terminated()


def _resend() -> None:
    _RETRY["timer"] = None
    os.kill(os.getpid(), signal.SIGTERM)


def raise_if_requested() -> None:
    """Raise the interruption received (SIGINT or SIGTERM) if something swallowed it.

    Raises
    ------
    KeyboardInterrupt
        :class:`Terminated` after SIGTERM.
    """
    exception = _REQUESTED["exception"]
    if exception is not None:
        raise exception()


def acknowledge() -> None:
    """The interruption reached the main code: no more re-sent signals, none handled."""
    _REQUESTED["exception"] = None
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    timer = _RETRY["timer"]
    if timer is not None:
        timer.cancel()
        _RETRY["timer"] = None


def _in_worker() -> None:
    """After fork, in a worker: leave interruption to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the libc this process runs on
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            return
        parent = multiprocessing.parent_process()
        # the parent may have died between the fork and prctl: no signal will come then
        if parent is not None and os.getppid() != parent.pid:
            os._exit(1)


class _Hook:
    """The object ``register_after_fork`` keys the worker hook on (kept alive here)."""

    def __call__(self, _obj) -> None:
        _in_worker()


_HOOK = _Hook()


def _quiet_unraisable(hook):
    """``sys.unraisablehook`` that drops interruptions CPython could not raise (at-fork),
    and everything once the run is ending."""

    def unraisable(info) -> None:
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            return  # re-sent (SIGTERM) or repeated by the user (Ctrl-C): not lost
        if _ENDING["since"]:
            # an interruption can land inside an object's construction (multiprocessing's
            # Finalize of a queue the pool was making), and the half-built object then
            # fails when collected: "'Finalize' object has no attribute '_key'", with a
            # traceback, after the run's one line.  The run is stopping; nothing to report.
            return
        hook(info)

    unraisable.bids_cnm_quiet = True  # installed once (see install)
    return unraisable


def install() -> None:
    """Set up the main process's SIGTERM and SIGINT and every future worker's signals."""
    _REQUESTED["exception"] = None
    _ENDING["since"] = False
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, _raise_interrupted)
    if not getattr(sys.unraisablehook, "bids_cnm_quiet", False):
        # once per process: main() runs many times in one process (tests, notebooks)
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    multiprocessing.util.register_after_fork(_HOOK, _HOOK)


def stop_workers(timeout: float = 5.0) -> int:
    """Terminate this process's multiprocessing children; returns how many were running."""
    # the pool reports the futures of the workers ended here as broken, each with a
    # traceback: expected while stopping, so not for the user's screen
    logging.getLogger("concurrent.futures").disabled = True
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join(1.0)
    return len(children)
