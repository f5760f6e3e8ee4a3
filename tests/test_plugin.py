"""The MultiProc plugin woken by its workers (bids_cnm.workflows.plugin), on real nipype runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_cnm.workflows.plugin import EventMultiProcPlugin


def _slow_add(x: int, delay: float) -> int:
    import time

    time.sleep(delay)
    return x + 1


def _fail(x: int) -> int:
    raise ValueError(f"planned failure of {x}")


class CountingPlugin(EventMultiProcPlugin):
    """The plugin, counting the rounds of nipype's loop (each may collect garbage)."""

    rounds = 0

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        type(self).rounds += 1
        super()._send_procs_to_workers(updatehash=updatehash, graph=graph)


def _chain(base_dir: Path, delay: float) -> pe.Workflow:
    """a -> (b, c side by side) -> d: each adds 1 after ``delay`` seconds; b and c are
    also gathered by a node of the main process."""
    workflow = pe.Workflow(name="chain", base_dir=str(base_dir))
    workflow.config["execution"]["poll_sleep_duration"] = 0
    nodes = {}
    for name in "abcd":
        nodes[name] = pe.Node(niu.Function(input_names=["x", "delay"], output_names=["out"],
                                           function=_slow_add), name=name)
        nodes[name].inputs.delay = delay
    nodes["a"].inputs.x = 0
    workflow.connect([(nodes["a"], nodes["b"], [("out", "x")]),
                      (nodes["a"], nodes["c"], [("out", "x")]),
                      (nodes["b"], nodes["d"], [("out", "x")])])
    gather = pe.Node(niu.Merge(2), name="gather", run_without_submitting=True)
    workflow.connect([(nodes["b"], gather, [("out", "in1")]),
                      (nodes["c"], gather, [("out", "in2")])])
    return workflow


def _outputs(graph) -> dict[str, int]:
    return {node.name: node.result.outputs.out for node in graph.nodes()}


CHAIN = {"a": 1, "b": 2, "c": 2, "d": 3, "gather": [2, 2]}


def test_runs_dependencies_in_order_without_polling(tmp_path):
    """Every node runs once its inputs exist, and the loop turns about once per event
    (a start or an end), not once per poll: nipype's stock loop with no sleep would turn
    thousands of times during the 0.5 s steps."""
    events = []
    CountingPlugin.rounds = 0
    plugin = CountingPlugin({"n_procs": 2, "raise_insufficient": False,
                             "status_callback": lambda node, status: events.append(
                                 (node.name, status))})
    graph = _chain(tmp_path, 0.5).run(plugin=plugin)
    assert _outputs(graph) == CHAIN
    order = [name for name, status in events if status == "end"]
    assert order.index("a") < min(order.index("b"), order.index("c"))
    assert order.index("b") < order.index("d")
    assert 1 <= CountingPlugin.rounds <= 20


def test_cached_nodes_are_not_rerun(tmp_path):
    """A second run finds every node cached and finishes without waiting for a worker."""
    _chain(tmp_path, 0.0).run(plugin=EventMultiProcPlugin({"n_procs": 2}))
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result_*.pklz")}
    CountingPlugin.rounds = 0
    graph = _chain(tmp_path, 0.0).run(plugin=CountingPlugin({"n_procs": 2}))
    assert _outputs(graph) == CHAIN
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result_*.pklz")} == stamps
    assert CountingPlugin.rounds <= 10


def test_a_failing_node_stops_its_dependents_and_raises(tmp_path):
    workflow = pe.Workflow(name="failing", base_dir=str(tmp_path))
    workflow.config["execution"].update({"poll_sleep_duration": 0,
                                         "crashdump_dir": str(tmp_path / "crash")})
    fail = pe.Node(niu.Function(input_names=["x"], output_names=["out"], function=_fail),
                   name="fail")
    fail.inputs.x = 7
    after = pe.Node(niu.Function(input_names=["x", "delay"], output_names=["out"],
                                 function=_slow_add), name="after")
    after.inputs.delay = 0.0
    workflow.connect(fail, "out", after, "x")
    started = time.time()
    with pytest.raises(RuntimeError):
        workflow.run(plugin=EventMultiProcPlugin({"n_procs": 2}))
    crash = list((tmp_path / "crash").glob("crash-*"))
    assert len(crash) == 1 and crash[0].stat().st_mtime >= started - 1
    assert not (tmp_path / "failing" / "after").exists()  # never started


def test_a_worker_without_result_becomes_the_nodes_crash():
    """A future that failed in the pool (nipype's run_node cannot read the result of a
    node that failed early; a killed worker) is reported as that job's crash, in the
    main loop, instead of a traceback from the executor's thread and a job pending for
    ever."""
    from concurrent.futures import Future

    plugin = EventMultiProcPlugin({"n_procs": 1})
    future: Future = Future()
    plugin._task_obj[3] = future
    future.set_exception(FileNotFoundError("result_node.pklz"))
    plugin._async_callback(future)  # nipype's callback raises here; ours must not
    assert plugin._wake.is_set()
    result = plugin._get_result(3)
    assert result["result"] is None and result["taskid"] == 3
    assert "FileNotFoundError: result_node.pklz" in "".join(result["traceback"])
    pending: Future = Future()
    plugin._task_obj[4] = pending
    assert plugin._get_result(4) is None  # still running: no result yet


def _interrupt_self(x: int) -> int:
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)  # the handler raises here, inside nipype's interface run
    return x


@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_an_interruption_nipype_swallows_still_stops_the_run(tmp_path, plugin):
    """nipype runs interfaces ignoring every exception, KeyboardInterrupt included: a
    Ctrl-C landing in a node run by the main process must still end the run at once,
    without starting the next node (and, with MultiProc, without a crash file: nipype's
    Linear plugin writes it before it calls the status callback)."""
    import signal

    from bids_cnm.cli import interrupt
    from bids_cnm.cli.workflow import _interruptible
    from bids_cnm.workflows.timing import RunTimer

    workflow = pe.Workflow(name="interrupted", base_dir=str(tmp_path))
    workflow.config["execution"].update({"poll_sleep_duration": 0,
                                         "crashdump_dir": str(tmp_path / "crash")})
    first = pe.Node(niu.Function(input_names=["x"], output_names=["out"],
                                 function=_interrupt_self), name="first",
                    run_without_submitting=True)
    first.inputs.x = 1
    after = pe.Node(niu.Function(input_names=["x", "delay"], output_names=["out"],
                                 function=_slow_add), name="after")
    after.inputs.delay = 0.0
    workflow.connect(first, "out", after, "x")
    callback = _interruptible(RunTimer(time.time()))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupt.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            if plugin == "Linear":
                workflow.run(plugin="Linear", plugin_args={"status_callback": callback})
            else:
                workflow.run(plugin=EventMultiProcPlugin({"n_procs": 1,
                                                          "status_callback": callback}))
    finally:
        interrupt.acknowledge()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert plugin == "Linear" or not (tmp_path / "crash").exists()
    assert not (tmp_path / "interrupted" / "after").exists()
