"""Entry point: parse -> check -> build -> run -> finalize.

Everything that can be checked before the heavy work (the connectome's files and
grid, the coordinate table, the seeds) is checked while the inputs are resolved
(:mod:`bids_cnm.workflows.inputs`), so bad input fails in seconds with one line
that says what to fix and a BIDS-Apps exit code.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# nipype asks the network for its latest version whenever an interface is made: a run
# reads local files only.  bids_cnm.cli (imported before this module) already set
# NIPYPE_NO_ET unless the user chose otherwise; see bids_cnm.cli.environment.
#
# Only light modules here: an identical re-run stops after the re-run check
# (bids_cnm.io.rerun), before the modules of the full run (nipype, pybids, pandas,
# scipy: seconds of start-up) are imported by _full_run.
from bids_cnm.cli import interrupt, record
from bids_cnm.cli.parser import parse_args
from bids_cnm.config import Config
from bids_cnm.errors import CNMError
from bids_cnm.io import rerun
from bids_cnm.io.lock import FolderLock
from bids_cnm.io.run_record import RECORD

LOGGER = logging.getLogger("bids_cnm")


def setup_logging(verbosity: int) -> None:
    """Progress on stderr (nipype's own chatter: :func:`bids_cnm.cli.workflow.nipype_verbosity`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [bids_cnm] %(message)s", "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    LOGGER.propagate = False
    record.route_warnings(LOGGER)


def run(config: Config, command: tuple[str, ...] = ()) -> int:
    """Check the folders, take their locks, resolve the inputs, then build and run
    the workflow of ``config.analysis_level``; return the exit code (0).

    ``command`` (the command line as typed) goes into the report.  The run's
    warnings go into its record (``logs/bids_cnm_run.json``), which the report shows.
    """
    recorder = record.WarningRecorder()
    LOGGER.addHandler(recorder)
    try:
        with record.folders_removed_on_error(config.output_dir, config.work_dir):
            return _run(config, command, recorder)
    finally:
        LOGGER.removeHandler(recorder)


def _run(config: Config, command: tuple[str, ...], recorder: record.WarningRecorder) -> int:
    started = time.time()
    verdict = _recheck(config)
    if verdict.up_to_date:
        LOGGER.info("nothing to do: every output is up to date (%s)", verdict.reason)
        LOGGER.info("time: %.1f s = verification %.1f (nothing recomputed)",
                    time.time() - started, time.time() - started)
        return 0
    return _full_run(config, command, recorder, started, verdict)


def _recheck(config: Config) -> rerun.Verdict:
    """The re-run check of a group run (:mod:`bids_cnm.io.rerun`), under OUTPUT_DIR's lock.

    The lock makes the check see no half-finished run: a run holding it makes this
    one exit 73 here, as the full run would.
    """
    if config.analysis_level != "group" or config.boilerplate_only:
        return rerun.Verdict(False, "no earlier group run recorded")
    if not (config.output_dir / RECORD).is_file():
        # a new output folder, or one deleted since a run with the same work folder:
        # nipype's cached steps may name outputs that are gone
        verdict = rerun.Verdict(False, "no earlier run recorded", outputs_changed=True)
        LOGGER.info("re-run check: %s; running the workflow", verdict.reason)
        return verdict
    with FolderLock(config.output_dir, "OUTPUT_DIR"):
        verdict = rerun.check(config)
    if not verdict.up_to_date:
        LOGGER.info("re-run check: %s; running the workflow", verdict.reason)
    return verdict


def _full_run(config: Config, command: tuple[str, ...], recorder: record.WarningRecorder,
              started: float, verdict: rerun.Verdict) -> int:
    """The full path: with the report's drawing server running (a group run drawn on
    this machine), index the inputs, build the workflow, run it, record the run."""
    from bids_cnm.reports import draw_server

    record.limit_threads(config.omp_nthreads)  # before any process is forked
    # the report's drawing server imports nilearn's plotting on the core this process
    # leaves idle while it imports nipype, indexes the inputs and builds the workflow
    with draw_server.running(_builds_report(config)):
        return _index_and_run(config, command, recorder, started, verdict)


def _builds_report(config: Config) -> bool:
    """Whether the run ends with a report drawn on this machine (a drawing server pays)."""
    return (config.analysis_level == "group" and not config.boilerplate_only
            and config.nipype_plugin in ("MultiProc", "Linear"))


def _index_and_run(config: Config, command: tuple[str, ...], recorder: record.WarningRecorder,
                   started: float, verdict: rerun.Verdict) -> int:
    """Index the inputs, build the workflow, run it and record the run (under the
    folders' locks); return the exit code."""
    from bids_cnm.cli.workflow import build_workflow, execute, nipype_verbosity
    from bids_cnm.io.derivatives import writable_folder
    from bids_cnm.io.identity import dataset_identity
    from bids_cnm.io.run_record import add_facts, begin_run, finish_run
    from bids_cnm.plan.files import plan_input_files
    from bids_cnm.workflows.inputs import level_settings, read_inputs, resolve_inputs

    nipype_verbosity(config.verbosity)
    writable_folder(config.output_dir, "OUTPUT_DIR")
    if config.boilerplate_only:  # the methods text only: no work folder, nothing computed
        run_config, plan, table, connectome = read_inputs(config)
        paths = record.write_record(run_config, connectome, table, plan)
        LOGGER.info("--boilerplate-only: wrote %s", ", ".join(p.name for p in paths))
        return 0
    writable_folder(config.work_dir, "--work-dir")
    # taken before any input is read: an input changed while the run reads it is
    # noticed by the next run's check (a group run's only: the seal is group-level, so a
    # participant job does not walk the connectome for it)
    sealing = config.analysis_level == rerun.LEVEL
    plan_files = rerun.plan_files(config) if sealing else None
    stamps = rerun.input_stamps(config, plan_files) if sealing else None
    # participant jobs of one cohort may share the folders (one per subject); a group
    # run owns them
    shared = config.analysis_level == "participant"
    with FolderLock(config.output_dir, "OUTPUT_DIR", shared), \
            FolderLock(config.work_dir, "--work-dir", shared):
        if config.clean_workdir:
            record.clean_workdir(config)
        inputs = resolve_inputs(config, command)
        _sweep(inputs)
        removed = begin_run(config.output_dir, config.analysis_level,
                            dataset_identity(config.bids_dir), level_settings(inputs),
                            config.overwrite)
        recorder.start(config.output_dir, config.analysis_level)  # the run's entry exists
        # BOLD volumes of every subject (runs together), for the report's summary: the
        # counts --min-volumes' check read, with no subject left out
        add_facts(config.output_dir, config.analysis_level, volumes=inputs.volumes,
                  min_volumes=config.min_volumes)
        if removed:
            LOGGER.info("--overwrite: removed %d file(s) of the earlier run", len(removed))
        # before the workflow, so the report shows the methods; again after it, when the
        # ALE's own description (NiMARE) exists
        facts = (inputs.config, inputs.connectome, inputs.coordinates, inputs.plan)
        record.write_record(*facts)
        workflow = build_workflow(inputs)
        if config.analysis_level == "group" and (verdict.outputs_changed or removed):
            # outputs of a finished run are gone or modified: nipype would reuse the
            # cached steps that wrote them (their inputs did not change) and write nothing.
            # (Never at the participant level: other jobs may be using the work folder.)
            record.forget_steps(config, workflow)
        timer = execute(workflow, inputs.config, started)
        record.write_record(*facts)
        finish_run(config.output_dir, config.analysis_level)
        # the plan the run loaded names the files stamped (a table edited in between
        # could list others): else the next run takes the full path again
        if sealing and plan_input_files(inputs.plan) == plan_files:
            rerun.seal(config.output_dir, config, stamps, plan_files)
    LOGGER.info("%s", timer.summary())  # the log's last line: where the time went
    return 0


def _sweep(inputs) -> None:
    """Remove the temporaries a killed run of ours left (only where no other job writes)."""
    from bids_cnm.io.derivatives import sweep_temporaries

    config = inputs.config
    if config.analysis_level == "group":
        removed = sweep_temporaries(config.output_dir)
    else:
        removed = [p for label in inputs.connectome.labels
                   for p in sweep_temporaries(config.output_dir / f"sub-{label}")]
    if removed:
        LOGGER.info("removed %d temporary file(s) of an interrupted run", len(removed))


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    interrupt.install()
    try:
        config = parse_args(argv)
        setup_logging(config.verbosity)
        return run(config, command=("bids_cnm", *map(str, argv)))
    except CNMError as exc:
        print(f"bids_cnm: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        interrupt.acknowledge()
        stopped = interrupt.stop_workers()
        what = "terminated" if isinstance(exc, interrupt.Terminated) else "interrupted"
        workers = f" ({stopped} worker process(es) stopped)" if stopped else ""
        print(f"bids_cnm: {what}{workers}; run the same command again to resume.",
              file=sys.stderr)
        # the shell's convention for a process ended by SIGTERM / SIGINT
        return 143 if isinstance(exc, interrupt.Terminated) else 130


def console() -> None:
    """The ``bids_cnm`` command: :func:`main`, then exit with its code.

    An interrupted run exits at once after its message: the interpreter's exit handlers
    would otherwise wait for the process pool's threads, which the stopped workers may
    leave waiting.  Every output is already complete or absent (written atomically).
    """
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
