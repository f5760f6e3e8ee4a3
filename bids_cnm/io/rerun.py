"""The re-run check: is a group run's output folder already what this command asks for?

Running the same command again is the usual way to resume a run; once the run has
finished, the same command only needs to verify.  Indexing the connectome with
pybids and building the nipype workflow to find that nothing is left to do takes
seconds; comparing what the finished run recorded with this command takes a few
``stat`` calls.  When a group run finishes, :func:`seal` adds to its entry of the run
record (``logs/bids_cnm_run.json``)::

    "rerun": {"request": ..., "inputs": {...}, "outputs": ...}

- ``request``: a digest of every option of the run (paths resolved) and the version,
  but those that only change how it executes (:data:`EXECUTION_ONLY`: verbosity,
  threads, memory, plugin);
- ``inputs``: for each input (the connectome's folder, the coordinate table, the
  relocation mask, the second connectome, the plugin configuration, the analysis
  plan and every file it names, listed in ``plan_files``), a digest of the path,
  size, modification and change times and inode of each of its files, taken
  *before* the run read them (so an input changed while it ran is noticed);
- ``outputs``: the same digest of every file the run wrote (``files`` of the
  entry, ``dataset_description.json`` and the plan as run, ``logs/plan.json``);
- ``logs``: the same of the run's options and methods text in ``logs/``
  (:data:`RUN_RECORD_FILES`), apart: a participant job in the same folder rewrites
  them after the group run without touching the group's maps.

:func:`check` recomputes the four and compares them: all equal means every output
is what this command would write, and the run stops there without touching any file.
Anything else (an input touched, an option changed, other bids_cnm code
(:mod:`bids_cnm.io.code_identity`, recorded with the run's settings), an output deleted
or modified, an earlier run that did not finish, the options or methods text rewritten)
takes the full path; only a deleted or modified output makes it drop nipype's cache
of the steps that write into the output folder (``Verdict.outputs_changed``), since a
cached step would not write its file again.  The files an analysis plan names (ROI
tables, masks, VAT images listed in tables) are known once it is loaded: the full run
lists them (:func:`plan_files`) and the check stats the recorded list (the plan file
itself is an input too, so a plan naming other files is noticed).

Only the standard library is imported here: the check runs before numpy, pandas,
pybids or nipype load, which take longer than the check itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bids_cnm import __version__
from bids_cnm.config import Config
from bids_cnm.io.code_identity import code_identity
from bids_cnm.io.run_record import RECORD, add_facts, read_record
from bids_cnm.io.stamps import digest, stamp, stat_row

__all__ = ["EXECUTION_ONLY", "Verdict", "check", "input_stamps", "plan_files",
           "request_digest", "seal"]

#: the level whose re-runs are checked: participant jobs of one cohort share the
#: folder and the record's entry (one per subject on a cluster), so an entry says
#: little about one job's own request
LEVEL = "group"

#: files of ``logs/`` that are not outputs of a run: the record itself (each run
#: renews it) and the lock serializing its updates
_NOT_OUTPUTS = frozenset({RECORD.name, ".bids_cnm_run.lock"})

LOGS = RECORD.parent.as_posix()

#: the files of ``logs/`` that every run of either level rewrites
#: (:func:`bids_cnm.cli.record.write_record`): its options and its methods text.  The
#: others there (``plan.json``, written by the plan's step) are outputs like the maps.
RUN_RECORD_FILES = frozenset({"bids_cnm.toml", "CITATION.md", "CITATION.html", "CITATION.bib"})


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check`.

    Attributes
    ----------
    up_to_date : bool
        Every output is what this command asks for: nothing to do.
    reason : str
        Why not (or what was verified), for the log.
    outputs_changed : bool
        A file the earlier finished run wrote is missing or was modified since, or the
        output folder holds no record (new, or deleted): nipype's cache of the steps
        that wrote into it would not write them again.
    """

    up_to_date: bool
    reason: str
    outputs_changed: bool = False


#: options that change how a run executes and what it logs, never a value of its maps:
#: the same analysis asked for with more log lines, threads or memory is verified, not
#: run again.  ``--nprocs`` and ``--batch-size`` stay in: they set the batches, which
#: merge the sums in another order (the last bits of a map may change)
EXECUTION_ONLY = frozenset({"verbosity", "mem_gb", "omp_nthreads", "nipype_plugin",
                            "stop_on_first_crash"})


def request_digest(config: Config) -> str:
    """Digest of the run's options (paths resolved, as parsed) and the version.

    Every option but the :data:`EXECUTION_ONLY` ones, and not the options as typed
    (``extra``): each is one of the parsed settings, or an execution-only one.  A verified
    run writes nothing, so ``logs/bids_cnm.toml`` and the report keep the command of the
    run that wrote the outputs.
    """
    options = {k: v for k, v in config.to_dict().items()
               if k not in EXECUTION_ONLY and k != "extra"}
    return digest([__version__, options])


def plan_files(config: Config) -> list[str]:
    """The files the run's analysis plan names (empty without ``--analysis``).

    Loads the plan (its errors are the run's own); call it before the run reads the
    files, and compare the list with the one of the plan the run loaded.
    """
    if config.analysis_plan is None:
        return []
    from bids_cnm.plan import load_plan
    from bids_cnm.plan.files import plan_input_files

    return plan_input_files(load_plan(config.analysis_plan))


def input_stamps(config: Config, plan_files: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """A digest of each input's files (stat only: no file is opened).

    Parameters
    ----------
    config : Config
    plan_files : list of str
        The files the analysis plan names (:func:`plan_files`).

    Returns
    -------
    dict
        Input name -> digest, for the inputs this run has.
    """
    inputs = {"connectome": config.bids_dir, "coordinates": config.coordinates,
              "relocation mask": config.relocation_mask,
              "second connectome": config.compare_connectome,
              "plugin configuration": config.plugin_config,
              "analysis plan": config.analysis_plan}
    stamps = {name: stamp(path) for name, path in inputs.items() if path is not None}
    if plan_files:
        stamps["plan's files"] = digest([stamp(Path(p)) for p in plan_files])
    return stamps


def _logs(output_dir: Path) -> list[str]:
    """The names of the files of ``logs/`` but the record itself and its lock."""
    logs = output_dir / LOGS
    if not logs.is_dir():
        return []
    return [p.name for p in logs.iterdir()
            if p.name not in _NOT_OUTPUTS and not p.name.startswith(".")]


def _level_files(output_dir: Path, files: list[str]) -> list[str]:
    """The level's files, ``dataset_description.json`` and the steps' files of ``logs/``."""
    steps_logs = {f"{LOGS}/{name}" for name in _logs(output_dir)
                  if name not in RUN_RECORD_FILES}
    return sorted(set(files) | {"dataset_description.json"} | steps_logs)


def _record_files(output_dir: Path) -> list[str]:
    """The run's options and methods text in ``logs/`` (:data:`RUN_RECORD_FILES`).

    Every run of either level rewrites them: a participant job after the group run
    leaves its own there, while the group's maps stay what they were.
    """
    return sorted(f"{LOGS}/{name}" for name in _logs(output_dir) if name in RUN_RECORD_FILES)


def _digest_of(output_dir: Path, names: list[str]) -> str:
    return digest([stat_row(str(output_dir / f), f) for f in names])


def seal(output_dir: Path, config: Config, inputs: dict[str, str],
         plan_files: list[str] | tuple[str, ...] = ()) -> None:
    """Record what :func:`check` compares, once the group run has finished.

    Parameters
    ----------
    output_dir : Path
    config : Config
        The run's configuration.
    inputs : dict
        :func:`input_stamps` taken when the run started.
    plan_files : list of str
        The files of the analysis plan those stamps cover.
    """
    record = read_record(output_dir)
    entry = (record or {}).get("levels", {}).get(LEVEL) or {}
    if entry.get("files") is None:
        return  # not finished: nothing to seal
    add_facts(output_dir, LEVEL, rerun={
        "request": request_digest(config), "inputs": inputs,
        "plan_files": list(plan_files),
        "outputs": _digest_of(Path(output_dir), _level_files(Path(output_dir), entry["files"])),
        "logs": _digest_of(Path(output_dir), _record_files(Path(output_dir))),
    })


def check(config: Config) -> Verdict:
    """Compare the output folder's record of its last group run with this command.

    Parameters
    ----------
    config : Config
        This run's configuration.

    Returns
    -------
    Verdict
    """
    output_dir = Path(config.output_dir)
    record = read_record(output_dir)
    if record is None:
        # a new output folder, or one deleted since a run with the same work folder:
        # nipype's cached steps may name outputs that are gone (a cached step is not
        # run again, and the next one fails on the missing file)
        return Verdict(False, "no earlier run recorded", True)
    entry = record.get("levels", {}).get(LEVEL)
    if not isinstance(entry, dict):
        return Verdict(False, "no earlier group run recorded")
    if entry.get("files") is None:
        return Verdict(False, "the earlier run did not finish")
    earlier_code = (entry.get("settings") or {}).get("code")
    if earlier_code != code_identity():
        return Verdict(False, f"the earlier run was made by other bids_cnm code "
                              f"({earlier_code or 'not recorded'}; this is {code_identity()})")
    sealed = entry.get("rerun")
    if not isinstance(sealed, dict):
        return Verdict(False, "the earlier run recorded no re-run check")
    if "logs" not in sealed:  # an older seal (outputs and logs in one digest): not trusted
        return Verdict(False, "the earlier run's re-run check is of an older version", True)
    if sealed.get("outputs") != _digest_of(output_dir, _level_files(output_dir, entry["files"])):
        return Verdict(False, "an output of the earlier run was removed or modified", True)
    if config.clean_workdir:
        return Verdict(False, "--clean-workdir")
    if sealed.get("request") != request_digest(config):
        return Verdict(False, "the options differ from the earlier run's")
    before = sealed.get("inputs") or {}
    now = input_stamps(config, sealed.get("plan_files") or [])
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            return Verdict(False, f"the {name} changed since the earlier run")
    if sealed["logs"] != _digest_of(output_dir, _record_files(output_dir)):
        # the maps are the earlier run's: the run reuses nipype's steps, rewrites the logs
        return Verdict(False, f"the options and methods text in {LOGS}/ were rewritten "
                              "since the earlier run (by a participant run, or edited)")
    reason = f"same options, inputs and outputs as the run of {entry.get('started', '?')}"
    warnings = len(entry.get("warnings") or []) + int(entry.get("warnings_dropped", 0))
    if warnings:  # not logged again: the user may not have seen them the first time
        reason += f"; its {warnings} warning(s) are in bids_cnm_report.html and {RECORD}"
    return Verdict(True, reason)
