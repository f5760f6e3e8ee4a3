"""Build the workflow of a run and execute it with the chosen nipype plugin
(the counterpart of fMRIPrep's ``cli/workflow.py``)."""

from __future__ import annotations

import atexit
import gc
import logging
import time

from nipype.pipeline import engine as pe

from bids_cnm.analyses.frozen_heap import frozen_heap
from bids_cnm.cli import interrupt
from bids_cnm.config import Config
from bids_cnm.errors import InputDataError, MissingInputError
from bids_cnm.workflows.base import RunInputs, init_group_wf, init_participant_wf
from bids_cnm.workflows.crash import error_from_crash
from bids_cnm.workflows.inputs import with_reuse
from bids_cnm.workflows.plugin import EventMultiProcPlugin
from bids_cnm.workflows.timing import RunTimer

__all__ = ["build_workflow", "execute", "nipype_verbosity", "plugin_arguments"]

LOGGER = logging.getLogger("bids_cnm")


def build_workflow(inputs: RunInputs) -> pe.Workflow:
    """The workflow of ``inputs.config.analysis_level``, with crash files as text."""
    config = inputs.config
    if config.analysis_level == "participant":
        workflow = init_participant_wf(inputs)
    else:
        workflow = init_group_wf(with_reuse(inputs))
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(config.work_dir / "crash"),
            "crashfile_format": "txt",
            "stop_on_first_crash": config.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
        }
    )
    return workflow


def execute(workflow: pe.Workflow, config: Config, started: float) -> RunTimer:
    """Run ``workflow``; a failed node becomes the one-line error of its crash file.

    Parameters
    ----------
    workflow : Workflow
    config : Config
    started : float
        Start of the run (seconds since the epoch): older crash files are ignored.

    Returns
    -------
    RunTimer
        Where the time went (its ``summary()`` ends the run's log).
    """
    plugin_args = plugin_arguments(config)
    LOGGER.info(
        "running %s level with %s (%d process(es)); work directory %s",
        config.analysis_level, config.nipype_plugin, config.nprocs, config.work_dir,
    )
    timer = RunTimer(started)
    callback = _interruptible(timer)
    _freeze_at_exit()
    # nipype calls gc.collect() before it submits jobs and after each node it runs in
    # this process (and nilearn in its plotting); on this process's heap (pybids,
    # pandas, scipy: ~200k objects) each takes 0.1-0.3 s.  Frozen objects are skipped
    # by the collector: a collection then scans only what the run itself allocates.
    # The workers fork from this process and inherit the frozen heap too.
    try:
        with frozen_heap():
            if config.nipype_plugin == "Linear":
                workflow.run(plugin="Linear", plugin_args={"status_callback": callback})
            elif config.nipype_plugin == "MultiProc":
                # nipype's MultiProc, woken by its workers instead of polling
                workflow.run(plugin=EventMultiProcPlugin({**plugin_args,
                                                          "status_callback": callback}))
            else:
                workflow.run(plugin=config.nipype_plugin,
                             plugin_args={**plugin_args, "status_callback": callback})
    except RuntimeError as exc:
        raise error_from_crash(config.work_dir / "crash", started - 1) from exc
    LOGGER.info("done in %.0f s; outputs in %s", time.time() - started, config.output_dir)
    LOGGER.debug("slowest steps (s): %s", timer.slowest())
    return timer


def _interruptible(timer: RunTimer):
    """nipype's status callback: time the node, after re-raising a swallowed interruption.

    nipype calls it in this process before it starts each node (in a worker or here)
    and after each ends or fails, outside the ``except Exception`` blocks around its
    nodes: an interruption that nipype turned into a node's crash stops the run there,
    before another node starts (see :mod:`bids_cnm.cli.interrupt`).
    """

    def callback(node, status: str) -> None:
        interrupt.raise_if_requested()
        timer(node, status)

    return callback


def _freeze_at_exit() -> None:
    """Skip the cycle collector's passes over the whole heap when the interpreter ends.

    After a run the heap holds every library a run loads (hundreds of thousands of
    objects); the interpreter's finalization collects it, 0.3-1 s that a user waits
    for after the last log line.  Freezing it in an exit handler (which runs before
    finalization; registered once per process) skips that; the process's memory is
    returned to the system all the same.
    """
    if not _FREEZE_AT_EXIT:
        atexit.register(gc.freeze)
        _FREEZE_AT_EXIT.append(True)


_FREEZE_AT_EXIT: list[bool] = []


def plugin_arguments(config: Config) -> dict:
    """nipype ``plugin_args``: MultiProc settings, then the --plugin-config file on top."""
    args: dict = {}
    if config.nipype_plugin == "MultiProc":
        args = {"n_procs": config.nprocs, "raise_insufficient": False}
        if config.mem_gb:
            args["memory_gb"] = config.mem_gb
    if config.plugin_config is not None:
        path = config.plugin_config
        if not path.exists():
            raise MissingInputError(f"--plugin-config {path} does not exist.")
        try:
            import yaml

            loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except Exception as exc:
            raise InputDataError(f"{path}: not valid JSON/YAML ({exc}).") from exc
        if not isinstance(loaded, dict):
            raise InputDataError(
                f"{path}: must hold a mapping of nipype plugin_args "
                "(e.g. {\"sbatch_args\": \"--time=1:00:00\"})."
            )
        args.update(loaded.get("plugin_args", loaded))
    return args


def nipype_verbosity(verbosity: int) -> None:
    """nipype's own messages only with ``-vv`` (its warnings always)."""
    from nipype import logging as nlogging

    level = logging.INFO if verbosity >= 2 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(level)
