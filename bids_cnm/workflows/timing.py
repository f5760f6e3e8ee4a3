"""Where a run's wall time went: one line at the end of the log.

nipype calls a plugin's ``status_callback`` when it starts and ends every node
(cached nodes included, with no work in between).  :class:`RunTimer` records
those times in the main process and sums, per kind of step, the wall time during
which at least one node of that kind was running (steps of one kind that run side
by side count once).  Orchestration is what is left: indexing the inputs, building
the seeds and the workflow, nipype's own bookkeeping and polling.
"""

from __future__ import annotations

import re
import time

#: kind of step of every node name (first match wins); anything else is "other"
KINDS = (
    ("preparation", re.compile(r"(\w+_)?prepare_")),
    ("connectivity", re.compile(r"(\w+_)?(analysis_mask|accumulate_|reduce|degree_sample)")),
    ("report", re.compile(r"report$")),
    ("ALE", re.compile(r"plan_ale$")),
    ("outputs", re.compile(r"(group_outputs|degree_check|specificity_|compare_connectome"
                           r"|plan_analyses|zmaps_)")),
)


#: kinds of step that run beside the others by design (the ALE needs only the
#: coordinates): counted where they run alone, their whole time said apart
BESIDE = ("ALE",)


def kind_of(name: str) -> str:
    """Kind of step of a node name (``collect_*`` merges count as orchestration)."""
    for kind, pattern in KINDS:
        if pattern.match(name):
            return kind
    return "orchestration"


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class RunTimer:
    """Collect node start and end times through nipype's ``status_callback``.

    Parameters
    ----------
    started : float
        ``time.time()`` when the run started (the total runs from there).
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self._open: dict[str, float] = {}
        self.intervals: dict[str, list[tuple[float, float]]] = {}
        #: seconds of every node, by name (for ``-v``: which steps were slow)
        self.nodes: dict[str, float] = {}

    def __call__(self, node, status: str) -> None:
        """nipype's callback: ``status`` is ``'start'``, ``'end'`` or ``'exception'``."""
        name = getattr(node, "fullname", None) or str(node)
        now = time.time()
        if status == "start":
            self._open[name] = now
        elif name in self._open:
            kind = kind_of(name.rsplit(".", 1)[-1])
            began = self._open.pop(name)
            self.intervals.setdefault(kind, []).append((began, now))
            self.nodes[name.rsplit(".", 1)[-1]] = now - began

    def slowest(self, n: int = 8) -> str:
        """The ``n`` slowest steps, ``name seconds`` each."""
        top = sorted(self.nodes.items(), key=lambda item: -item[1])[:n]
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in top)

    def breakdown(self, total: float | None = None) -> dict[str, float]:
        """Seconds per kind of step, and ``orchestration`` for the rest of ``total``.

        A kind of :data:`BESIDE` counts only while no other kind runs (so that the
        terms add up to the total); ``"<kind> in all"`` holds all its time.
        """
        total = time.time() - self.started if total is None else total
        spans = {kind: s for kind, s in self.intervals.items() if kind != "orchestration"}
        out = {kind: _union(s) for kind, s in spans.items() if kind not in BESIDE}
        others = [i for kind, s in spans.items() if kind not in BESIDE for i in s]
        for kind in BESIDE:
            if kind in spans:
                out[kind] = _union(others + spans[kind]) - _union(others)
                out[f"{kind} in all"] = _union(spans[kind])
        out["orchestration"] = max(0.0, total - _union([i for s in spans.values() for i in s]))
        out["total"] = total
        return out

    def summary(self, total: float | None = None) -> str:
        """One log line: ``time: 12.3 s = preparation 0.1 + connectivity 2.0 + ...``."""
        parts = self.breakdown(total)
        order = ("preparation", "connectivity", "ALE", "outputs", "report", "orchestration")
        terms = " + ".join(f"{k} {parts[k]:.1f}" for k in order if k in parts)
        beside = "".join(f"; the {k} ran {parts[f'{k} in all']:.1f} s in all, beside the others"
                         for k in BESIDE if k in parts)
        return (f"time: {parts['total']:.1f} s = {terms} "
                f"(steps running side by side count once{beside})")
