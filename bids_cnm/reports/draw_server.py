"""Drawing processes with nilearn already imported, from a server started with the run.

Importing nilearn's plotting module (with matplotlib, scikit-learn and scipy.stats) and
loading the template costs one core about 2 s, and the report, the run's last step,
waits for it.  At the start of a run, though, one core idles: the main process imports
nipype, indexes the inputs and builds the workflow on the other, for a second or two.

:func:`start` forks a server then.  On the idle core it does those imports, then
listens on a Unix socket in a private temporary folder (mode 0700: only this user, or
root, can connect) and forks one drawing process per connection, which inherits the
imports.  The address is passed on in the environment (:data:`ENV`), so the processes
forked after it (nipype's MultiProc workers, where the report runs) find it;
:func:`connect` gives the report's drawing (:mod:`bids_cnm.reports.drawing`) its
processes from there, or nothing (no server: another machine's job, a server that
failed), and the report then forks its own.  The figures are the same: the
same jobs run in a process with the same modules.

The server runs at niceness :data:`NICENESS`, and so do the drawing processes it forks
(a process may not lower its niceness): at the end of a run nothing else competes with
them.  It holds nilearn, scikit-learn and matplotlib in memory (~270 MB resident) for
the length of the run.  It ends with the run (:func:`stop`) or with the run's process
(it watches its parent, and then removes its folder), and its drawing processes when
their connection closes or the run's process dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = ["ENV", "connect", "running", "start", "stop"]

#: environment variable holding the server's socket path
ENV = "BIDS_CNM_DRAW_SERVER"

#: seconds a drawing process may take to come: the server may still be importing
READY_TIMEOUT = 60.0

#: the server's niceness: its imports take the cores the run leaves idle (while the main
#: process starts), not those of the connectivity steps that follow
NICENESS = 10

#: name of the server's temporary folder, followed by the run's pid
_PREFIX = "bids_cnm-draw-"

#: the server this process started (one at a time)
_STARTED: dict[str, object] = {}


def start() -> bool:
    """Fork the server (Linux only); ``False`` when one runs already or it cannot start.

    Call early, before the run's heavy imports: the server imports nilearn while this
    process goes on.
    """
    if sys.platform != "linux" or _STARTED:
        return False
    _remove_stale_folders()
    folder = None
    try:
        # mode 0700; named with this process's pid, so that a later run can tell the
        # folder of a run killed with its server (SIGKILL to the group) from a live one's
        folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        address = folder / "socket"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(address))
            listener.listen(16)
            process = multiprocessing.get_context("fork").Process(
                target=_serve_forever, args=(listener, folder), daemon=True,
                name="bids_cnm-draw-server")
            process.start()  # the server has its own copy of the listener
    except OSError as exc:  # no temporary folder, a socket path longer than allowed...
        LOGGER.debug("no drawing server (%s)", exc)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return False
    _STARTED.update(process=process, folder=folder)
    os.environ[ENV] = str(address)
    return True


def _remove_stale_folders() -> None:
    """Remove the socket folders of this user's runs whose process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        try:
            pid = int(folder.name[len(_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)  # another user's stays (no permission)
        except PermissionError:
            continue


def stop() -> None:
    """End the server this process started (its drawing processes end with their reports)."""
    process = _STARTED.pop("process", None)
    folder = _STARTED.pop("folder", None)
    if process is not None:
        os.environ.pop(ENV, None)
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running(enabled: bool = True) -> Iterator[bool]:
    """A server for the ``with`` block (none when not ``enabled``); yields whether it started."""
    started = start() if enabled else False
    try:
        yield started
    finally:
        if started:
            stop()


def connect(n: int) -> list[tuple[Connection, int]]:
    """Connections to ``n`` new drawing processes, and their pids; ``[]`` without a server.

    All or nothing: when one cannot be had, those already had are closed (they end).
    """
    address = os.environ.get(ENV)
    if not address:
        return []
    served: list[tuple[Connection, int]] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            conn = Connection(sock.detach())
            # the process says its pid when it exists (after the server's imports)
            if not conn.poll(READY_TIMEOUT):
                conn.close()
                raise TimeoutError(f"no drawing process in {READY_TIMEOUT:.0f} s")
            served.append((conn, int(conn.recv())))
    except (OSError, EOFError, TimeoutError, ValueError) as exc:
        LOGGER.debug("drawing server at %s unavailable (%s); drawing here", address, exc)
        for conn, _ in served:
            conn.close()
        return []
    return served


def _serve_forever(listener: socket.socket, folder: Path) -> None:
    """The server: import what drawing needs, then fork a drawing process per connection.

    Ctrl-C is the run's to handle (the terminal sends it to every process of the group):
    ignored here.  When the run's process is gone, the server removes its folder.
    """
    from bids_cnm.reports.drawing import _prepare_nilearn, _serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the drawing processes reap themselves
    os.nice(NICENESS)
    parent = multiprocessing.parent_process()
    try:
        _prepare_nilearn()
    except Exception as exc:  # noqa: BLE001 - its figures fail with their own error
        LOGGER.debug("drawing server: cannot import nilearn's plotting (%s)", exc)
    watched = [listener] if parent is None else [listener, parent.sentinel]
    while True:
        if listener not in wait(watched):  # the run's process is gone
            shutil.rmtree(folder, ignore_errors=True)
            return
        try:
            sock, _ = listener.accept()
        except OSError:
            continue
        if os.fork() == 0:  # the drawing process
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a figure's own children
                listener.close()
                conn = Connection(sock.detach())
                conn.send(os.getpid())
                _serve(conn)
            finally:
                os._exit(0)
        sock.close()

