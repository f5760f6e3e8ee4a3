"""nipype's MultiProc plugin, woken by its workers instead of polling.

nipype's :class:`~nipype.pipeline.plugins.multiproc.MultiProcPlugin` checks its jobs
every ``poll_sleep_duration`` seconds, and on every check with a process free it calls
``gc.collect()`` before looking for work.  With nipype's default (2 s) a chain of
dependent steps waits up to 2 s per step; with a short poll the main process spends a
core on those checks and collections (0.1-0.3 s each on the heap of a run that has
indexed a dataset with pybids) while the workers need both cores.  Either way the cost
grows with the run's length and its number of steps.

:class:`EventMultiProcPlugin` runs nipype's own loop unchanged, except that:

* it looks for new work (and lets nipype collect garbage) only when a job may be
  ready, i.e. at the start and after a job ended;
* between two such moments it sleeps until a worker reports a finished job (a
  ``concurrent.futures`` done-callback sets an event), so a step starts as soon as the
  step it depends on ends, and the main process uses no CPU while the workers run.

Everything else (scheduling by memory and processors, crash files, the status
callback, ``plugin_args``) is nipype's.
"""

from __future__ import annotations

import logging
import threading
import traceback

import numpy as np
from nipype.pipeline.plugins.multiproc import MultiProcPlugin

__all__ = ["EventMultiProcPlugin"]

LOGGER = logging.getLogger("bids_cnm")

#: longest sleep between two checks (s): a safety net only, every finished job wakes
#: the loop at once
MAX_WAIT = 2.0


class EventMultiProcPlugin(MultiProcPlugin):
    """MultiProc without busy polling (see the module docstring).

    Parameters
    ----------
    plugin_args : dict, optional
        nipype's MultiProc ``plugin_args`` (``n_procs``, ``memory_gb``, ...).

    Notes
    -----
    Pass it as an object to ``Workflow.run(plugin=EventMultiProcPlugin(args))``, with
    the workflow's ``execution.poll_sleep_duration`` set to 0: nipype's loop then never
    sleeps by itself, all waiting happens in :meth:`_send_procs_to_workers`.
    """

    def __init__(self, plugin_args: dict | None = None) -> None:
        super().__init__(plugin_args=plugin_args)
        self._wake = threading.Event()

    def _async_callback(self, args):
        # runs in the executor's thread once the job's result is stored: wake the loop
        try:
            super()._async_callback(args)
        except Exception as error:  # noqa: BLE001 - reported by _get_result, in the main thread
            # the worker returned no result: nipype's run_node fails when a node fails
            # before writing its result file, and a killed worker breaks its future.
            # Raised here, in the executor's thread, it would print a traceback and
            # leave the job pending for ever.
            LOGGER.debug("a worker returned no result: %r", error)
        finally:
            self._wake.set()

    def _get_result(self, taskid):
        """The job's result, or a crash with the worker's exception when it had none."""
        result = super()._get_result(taskid)
        future = self._task_obj.get(taskid)
        if result is None and future is not None and future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                result = {"result": None, "taskid": taskid,
                          "traceback": traceback.format_exception(error)}
        return result

    def _ready_jobs(self) -> np.ndarray:
        """Jobs not yet started whose dependencies have all finished."""
        return np.flatnonzero(~self.proc_done & (self.depidx.sum(axis=0) == 0).__array__())

    def _finished(self) -> int:
        return int(np.sum(self.proc_done & ~self.proc_pending))

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        ready = self._ready_jobs()
        if len(ready):
            finished = self._finished()
            super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
            if self._finished() > finished:
                return  # cached nodes were finished here: their dependents may be ready
        if self.pending_tasks:
            # a result stored before the wait is found by the next round (nipype checks
            # every running job); one stored after it sets the event again
            self._wake.wait(MAX_WAIT)
            self._wake.clear()
        elif len(ready):
            # jobs wait for resources while nothing runs (nipype admits a job larger
            # than the limits when nothing runs, so this does not last): do not spin
            self._wake.wait(0.01)
