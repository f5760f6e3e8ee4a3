"""The run's warnings record: held until the run's entry exists, then written as they
come, from the main process and from the forked worker processes of the workflow."""

from __future__ import annotations

import json
import logging
import multiprocessing
import warnings

import pytest

from bids_cnm.cli import record
from bids_cnm.io.run_record import (
    MAX_WARNINGS,
    RECORD,
    add_facts,
    begin_run,
    finish_run,
)


def _warn_in_child(message: str) -> None:
    logging.getLogger("bids_cnm.engine.somewhere").warning("%s", message)


@pytest.fixture
def recorder(tmp_path):
    logger = logging.getLogger("bids_cnm")
    handler = record.WarningRecorder()
    logger.addHandler(handler)
    saved = warnings.showwarning
    record.route_warnings(logger)
    yield handler
    warnings.showwarning = saved
    logger.removeHandler(handler)


def _warnings(out) -> list[dict]:
    return json.loads((out / RECORD).read_text())["levels"]["group"].get("warnings", [])


def test_warnings_before_and_after_start_and_from_workers_are_recorded(tmp_path, recorder):
    logger = logging.getLogger("bids_cnm.workflows.inputs")
    logger.warning("held until the record exists")
    begin_run(tmp_path, "group", {"path": "x"}, {"a": 1})
    assert _warnings(tmp_path) == []  # nothing written before start
    recorder.start(tmp_path, "group")
    assert [w["message"] for w in _warnings(tmp_path)] == ["held until the record exists"]
    assert _warnings(tmp_path)[0]["source"] == "test_report_warnings.test_warnings_before_" \
        "and_after_start_and_from_workers_are_recorded"
    # a worker of the workflow's pool (forked after the handler was attached)
    child = multiprocessing.get_context("fork").Process(target=_warn_in_child,
                                                        args=("from a worker",))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a Python warning", RuntimeWarning, stacklevel=1)
    logging.getLogger("bids_cnm.reports").warning("the report shows its own problems")
    logging.getLogger("bids_cnm").info("not a warning")
    kept = _warnings(tmp_path)
    assert [w["message"] for w in kept] == [
        "held until the record exists", "from a worker", "a Python warning (RuntimeWarning)"]
    assert kept[1]["source"] == "test_report_warnings._warn_in_child"
    assert kept[2]["source"].startswith("test_report_warnings.py:")
    # finishing the run keeps them; a new run of the level starts afresh
    finish_run(tmp_path, "group")
    assert len(_warnings(tmp_path)) == 3
    begin_run(tmp_path, "group", {"path": "x"}, {"a": 1})
    assert _warnings(tmp_path) == []


def test_a_repeated_warning_is_kept_once_and_the_record_is_capped(tmp_path, recorder):
    begin_run(tmp_path, "group", {"path": "x"}, {"a": 1})
    recorder.start(tmp_path, "group")
    logger = logging.getLogger("bids_cnm")
    for _ in range(3):
        logger.warning("same")
    for k in range(MAX_WARNINGS + 5):
        logger.warning("warning %d", k)
    entry = json.loads((tmp_path / RECORD).read_text())["levels"]["group"]
    assert len(entry["warnings"]) == MAX_WARNINGS
    assert [w["message"] for w in entry["warnings"]].count("same") == 1
    assert entry["warnings_dropped"] == 6


def test_participant_jobs_sharing_a_folder_keep_each_others_warnings(tmp_path, recorder):
    """Participant jobs of other subjects (a cluster array) write into one folder with the
    same settings: a job's start keeps the warnings and volumes of the jobs before it."""
    logger = logging.getLogger("bids_cnm.workflows.inputs")
    begin_run(tmp_path, "participant", {"path": "x"}, {"a": 1})
    recorder.start(tmp_path, "participant")
    logger.warning("sub-01 has 40 volumes")
    add_facts(tmp_path, "participant", volumes={"01": 40}, min_volumes=50)
    finish_run(tmp_path, "participant")
    begin_run(tmp_path, "participant", {"path": "x"}, {"a": 1})  # the next job
    logger.warning("sub-02 has 45 volumes")
    add_facts(tmp_path, "participant", volumes={"02": 45}, min_volumes=50)
    entry = json.loads((tmp_path / RECORD).read_text())["levels"]["participant"]
    assert [w["message"] for w in entry["warnings"]] == [
        "sub-01 has 40 volumes", "sub-02 has 45 volumes"]
    assert entry["volumes"] == {"01": 40, "02": 45} and entry["min_volumes"] == 50
    # other settings start afresh (their outputs are refused or removed too)
    begin_run(tmp_path, "participant", {"path": "x"}, {"a": 2}, overwrite=True)
    entry = json.loads((tmp_path / RECORD).read_text())["levels"]["participant"]
    assert "warnings" not in entry and "volumes" not in entry
