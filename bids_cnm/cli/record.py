"""What a run does around the workflow: its record, its folders, its threads, its warnings.

- :func:`write_record`: ``logs/bids_cnm.toml`` (the options, to repeat the run with
  ``--config-file``) and the methods boilerplate ``logs/CITATION.*``;
- :func:`folders_removed_on_error`: a run that fails its checks leaves no empty output
  or work folder behind;
- :func:`clean_workdir`, :func:`limit_threads`: ``--clean-workdir``, ``--omp-nthreads``;
- :func:`forget_steps`: outputs of a finished run were removed or modified, so nipype's
  cache of the steps that write them must go;
- :func:`route_warnings`: Python warnings reach the log as one line each;
- :class:`WarningRecorder`: the run's warnings (logged or Python warnings) go into the
  run record ``logs/bids_cnm_run.json``, where the report reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bids_cnm.config import Config
from bids_cnm.errors import UsageError

if TYPE_CHECKING:  # nipype is not imported before the re-run check
    from nipype.pipeline.engine import Workflow

LOGGER = logging.getLogger("bids_cnm")

#: thread pools of BLAS and OpenMP, read by every worker process at start-up
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def route_warnings(logger: logging.Logger = LOGGER) -> None:
    """Show every Python warning as one log line (no file name, no source line)."""

    def show(message, category, filename, lineno, file=None, line=None):
        kind = "" if category is UserWarning else f" ({category.__name__})"
        # where the warning was raised, not this function, is its source in the record
        origin = f"{Path(filename).name}:{lineno}"
        logger.warning("%s%s", str(message).replace("\n", " "), kind,
                       extra={"origin": origin})

    warnings.showwarning = show


class WarningRecorder(logging.Handler):
    """Adds every warning the package logs to the run record (:func:`add_warning`).

    Attached to the package logger before the inputs are resolved, it holds the
    warnings until :meth:`start` names the output folder and level (the record's
    entry of the run exists only then), then writes each one as it comes.  The
    workflow's worker processes are forked with it, so their warnings are recorded
    too.  The report's own warnings are not recorded: the report shows them itself.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._held: list[dict] = []
        self._target: tuple[Path, str] | None = None

    def start(self, output_dir: Path, level: str) -> None:
        """Write the held warnings and every later one to ``output_dir``'s record."""
        self._target = (Path(output_dir), level)
        held, self._held = self._held, []
        for item in held:
            self._write(item)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("bids_cnm.reports"):
            return
        try:
            item = {
                "message": record.getMessage(),
                "source": getattr(record, "origin", None)
                or f"{record.module}.{record.funcName}",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)),
            }
            if self._target is None:
                self._held.append(item)
            else:
                self._write(item)
        # a warning that cannot be recorded must not stop the run
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def _write(self, item: dict) -> None:
        from bids_cnm.io.run_record import add_warning

        add_warning(*self._target, item)


def limit_threads(n: int | None) -> None:
    """``--omp-nthreads``: at most ``n`` BLAS/OpenMP threads in this process and its workers."""
    if not n:
        return
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)


def clean_workdir(config: Config) -> None:
    """``--clean-workdir``: empty the work directory (never a folder holding the data)."""
    work = config.work_dir
    if not work.exists():
        return
    for name, other in (("BIDS_DIR", config.bids_dir), ("OUTPUT_DIR", config.output_dir),
                        ("HOME", Path.home())):
        if work == other or work in other.parents:
            raise UsageError(f"--clean-workdir: the work directory {work} holds {name}; "
                             "give a work directory of its own with -w.")
    from bids_cnm.io.lock import LOCK_NAME

    LOGGER.info("--clean-workdir: emptying %s", work)
    for child in work.iterdir():
        if child.name == LOCK_NAME:
            continue  # this run holds it (taken before cleaning, so no other run is here)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


#: inputs that give a step the output folder: every step that writes into it has one
OUTPUT_INPUTS = ("writer", "output_dir")


def forget_steps(config: Config, workflow: Workflow) -> list[str]:
    """Remove nipype's cache of the steps that write into OUTPUT_DIR.

    When a file a finished run wrote is gone or was modified, nipype would reuse the
    cached step that wrote it (its inputs are unchanged) and write nothing (or fail on
    the missing file).  The steps given the output folder (an input in
    :data:`OUTPUT_INPUTS`) run again, and leave the files that already hold the right
    bytes untouched.  The others compute into the work folder only (the prepared time
    series, the connectivity sums and t-maps, the degree sample, the ALE) and are
    reused: a deleted output folder does not cost the connectivity pass again.  The
    work folder must be this run's alone (a group run's lock).

    Parameters
    ----------
    config : Config
        The run's configuration (its work folder).
    workflow : Workflow
        The run's workflow, built (not run).

    Returns
    -------
    list of str
        The steps whose cache was removed.
    """
    base = Path(config.work_dir) / workflow.name
    forgotten = []
    for name in workflow.list_node_names():
        inputs = workflow.get_node(name).inputs
        if all(inputs.trait(t) is None for t in OUTPUT_INPUTS):
            continue
        folder = base.joinpath(*name.split("."))
        if folder.is_dir():
            shutil.rmtree(folder)
            forgotten.append(name)
    if forgotten:
        LOGGER.info("outputs of the earlier run are missing or modified: the %d step(s) "
                    "that write them run again (removed nipype's cache of %s)",
                    len(forgotten), ", ".join(forgotten))
    return forgotten


@contextlib.contextmanager
def folders_removed_on_error(*folders: Path) -> Iterator[None]:
    """Remove those of ``folders`` this run creates if it fails while they are still empty."""
    from bids_cnm.io.lock import LOCK_NAME

    created = [Path(f) for f in folders if not Path(f).exists()]
    try:
        yield
    except BaseException:
        for folder in created:
            # the run's own lock file (released by now) does not make a folder used
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                folder.rmdir()
        raise


def _facts(config: Config, connectome, table):
    from bids_cnm.io.boilerplate import RunFacts

    name = Path(config.bids_dir).name
    with contextlib.suppress(OSError, ValueError):
        description = json.loads((Path(config.bids_dir) / "dataset_description.json")
                                 .read_text())
        name = description.get("Name") or name
    studies = (table.drop_duplicates(["set", "study"])["set"].value_counts(sort=False)
               .to_dict())
    return RunFacts(
        n_subjects=len(connectome.subjects), space=connectome.space, res=connectome.res,
        task=connectome.task, connectome=str(name), studies=studies,
        n_coordinates=len(table),
    )


def write_record(config: Config, connectome, table, plan=None) -> list[Path]:
    """Write ``logs/bids_cnm.toml`` and the methods boilerplate ``logs/CITATION.*``.

    Parameters
    ----------
    config : Config
    connectome : bids_cnm.io.connectome.Connectome
    table : DataFrame
        The coordinate table.
    plan : bids_cnm.plan.Plan, optional
        The analysis plan (``None`` when the run has none).
    """
    from bids_cnm.cli.config_file import options_toml
    from bids_cnm.io.boilerplate import ale_record, write_boilerplate
    from bids_cnm.io.derivatives import write_text
    from bids_cnm.io.layout import LOGS_FOLDER

    logs = Path(config.output_dir) / LOGS_FOLDER
    paths = []
    options = config.extra.get("options")
    if options:
        paths.append(write_text(logs / "bids_cnm.toml", options_toml(options)))
    paths += write_boilerplate(logs, config, _facts(config, connectome, table), plan,
                               ale_record(config.output_dir))
    return paths
