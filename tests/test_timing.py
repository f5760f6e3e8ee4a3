"""The run's last log line: where the wall time went, by kind of step."""

from __future__ import annotations

import pytest

from bids_cnm.workflows.timing import RunTimer, kind_of


@pytest.mark.parametrize(("name", "kind"), [
    ("prepare_batch_0", "preparation"), ("compare_prepare_batch_1", "preparation"),
    ("accumulate_batch_3", "connectivity"), ("reduce", "connectivity"),
    ("plan_ale", "ALE"), ("plan_analyses", "outputs"), ("specificity_a_vs_b", "outputs"),
    ("report", "report"), ("collect_outputs", "orchestration"),
])
def test_kind_of_each_step(name, kind):
    assert kind_of(name) == kind


class _Node:
    """What nipype hands the status callback: an object with the node's full name."""

    def __init__(self, name: str) -> None:
        self.fullname = f"cnm_wf.{name}"


def test_breakdown_counts_overlapping_steps_of_a_kind_once(monkeypatch):
    clock = iter([1.0, 2.0, 3.0, 5.0, 6.0, 9.0]).__next__
    monkeypatch.setattr("bids_cnm.workflows.timing.time.time", clock)
    timer = RunTimer(started=0.0)
    # the ALE from 1 to 6 s, beside two preparation batches (2-5 s and 3-9 s)
    timer(_Node("plan_ale"), "start")           # 1
    timer(_Node("prepare_batch_0"), "start")    # 2
    timer(_Node("prepare_batch_1"), "start")    # 3
    timer(_Node("prepare_batch_0"), "end")      # 5
    timer(_Node("plan_ale"), "end")             # 6
    timer(_Node("prepare_batch_1"), "end")      # 9
    parts = timer.breakdown(total=10.0)
    assert parts["preparation"] == 7.0  # 2-9: the two batches overlap
    assert parts["ALE"] == 1.0  # 1-2: the only time the ALE ran alone
    assert parts["ALE in all"] == 5.0
    assert parts["orchestration"] == 2.0  # 0-1 and 9-10: no step running
    line = timer.summary(total=10.0)
    assert line == ("time: 10.0 s = preparation 7.0 + ALE 1.0 + orchestration 2.0 (steps "
                    "running side by side count once; the ALE ran 5.0 s in all, beside "
                    "the others)")
    # the terms add up to the total, as a user reading the line expects
    terms = line.split(" = ")[1].split(" (")[0].split(" + ")
    assert sum(float(t.rsplit(" ", 1)[1]) for t in terms) == 10.0
