"""The HTML report of a bids_cnm run, rendered only from the derivatives on disk.

:func:`build_report` writes ``<output_dir>/bids_cnm_report.html``: one
self-contained file (figures embedded as base64 PNG, CSS and a few lines of
script inline, no external URL; a Content-Security-Policy forbids loading
anything else), rendered from Jinja2 templates with autoescaping.

The sections follow the reference study's figures (:data:`sections.BODY`): the
summary with the key numbers first, the inputs, the network at the main
threshold, the seed networks, sensitivity, specificity, validation, DBS and the
convergent network, the ALE, further outputs, provenance.  A section appears
when its files exist.  The figures of all sections are drawn together, in
parallel processes (:func:`bids_cnm.reports.drawing.draw_figures`).  A section
or figure that fails shows its error in place (and the summary lists it); the
report itself is still written.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pandas as pd

from bids_cnm import __version__
from bids_cnm.analyses.frozen_heap import frozen_heap
from bids_cnm.errors import MissingInputError
from bids_cnm.io.derivatives import write_text
from bids_cnm.reports import figures
from bids_cnm.reports.blocks import Section, error
from bids_cnm.reports.context import NIFTI, ReportContext, parse_coordinates
from bids_cnm.reports.drawing import draw_figures
from bids_cnm.reports.index import DerivativesIndex, threshold_value
from bids_cnm.reports.render import render_page
from bids_cnm.reports.sections import BODY, provenance_section, summary_section

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = ["REPORT_NAME", "build_report", "environment_versions", "make_context"]

REPORT_NAME = "bids_cnm_report.html"
_VERSION_PACKAGES = ("numpy", "scipy", "nibabel", "nilearn", "nipype", "pybids", "pandas",
                     "matplotlib", "nimare", "jinja2")


def environment_versions() -> dict[str, str]:
    """Versions of Python, bids_cnm and its main dependencies in this environment."""
    out = {"bids_cnm": __version__, "python": platform.python_version()}
    for dist in _VERSION_PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _find_settings(index: DerivativesIndex) -> dict:
    """The ``bids_cnm`` settings recorded in the sidecars (overlap maps first)."""
    for f in index.get(desc="overlap", extension=".json") + index.get(extension=".json"):
        try:
            content = json.loads(f.path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and isinstance(content.get("bids_cnm"), dict):
            return dict(content["bids_cnm"])
    return {}


def _run_warnings(index: DerivativesIndex) -> list[str]:
    """``Warnings`` recorded in the sidecars (each once)."""
    found: dict[str, None] = {}
    for f in index.files:
        if f.extension == ".json":
            continue
        for w in f.sidecar.get("Warnings") or []:
            found.setdefault(f"{w} ({f.name})", None)
    return list(found)


def _read_run_record(ctx: ReportContext) -> None:
    """The run's warnings and its subjects' BOLD volumes, from ``logs/bids_cnm_run.json``.

    The group run's entry comes first; the participant run's warnings follow (the
    group run may reuse its maps).
    """
    from bids_cnm.io.run_record import read_record

    record = read_record(ctx.index.root) or {}
    levels = record.get("levels") if isinstance(record.get("levels"), dict) else {}
    for level in ("group", "participant"):
        entry = levels.get(level)
        if not isinstance(entry, dict):
            continue
        for w in entry.get("warnings") or []:
            if isinstance(w, dict) and w.get("message"):
                ctx.run_warnings.append({**w, "level": level})
        ctx.run_warnings_dropped += int(entry.get("warnings_dropped") or 0)
        volumes = entry.get("volumes")
        if not ctx.volumes and isinstance(volumes, dict):
            ctx.volumes = {str(k): int(v) for k, v in volumes.items()
                           if isinstance(v, (int, float))}
            if isinstance(entry.get("min_volumes"), int):
                ctx.min_volumes = entry["min_volumes"]


def make_context(root: Path, settings: dict | None = None,
                 files: Iterable[str | Path] | None = None) -> ReportContext:
    """Read what every section needs from the output folder ``root``.

    ``files`` restricts the report to these files (e.g. a run manifest's list).
    """
    index = DerivativesIndex(root, only=files)
    ctx = ReportContext(index=index, settings=dict(settings or _find_settings(index)))
    seeds_path = index.first("seeds.tsv")
    if seeds_path is not None:
        seeds = pd.read_csv(seeds_path, sep="\t", dtype=str, keep_default_na=False)
        ctx.seeds = seeds
        if {"id", "coordinates"} <= set(seeds.columns):
            for _, row in seeds.iterrows():
                ctx.coords[row["id"]] = parse_coordinates(row["coordinates"])
                ctx.seed_sets[row["id"]] = row.get("set", "primary") or "primary"
                ctx.seed_variants[row["id"]] = row.get("variant", "main") or "main"
    plan = index.first("plan.json")
    if plan is None and (index.root / "logs" / "plan.json").is_file():
        plan = index.root / "logs" / "plan.json"  # where the run keeps it (index skips logs/)
    if plan is not None:
        try:
            ctx.plan = json.loads(plan.read_text())
        except ValueError:
            ctx.errors.append("plan.json is not valid JSON")
    sets = list(dict.fromkeys(ctx.seed_sets.values())) or index.values("set")
    for k, name in enumerate(sets):
        ctx.set_colors[name] = figures.SET_COLORS[k % len(figures.SET_COLORS)]
    threshold = ctx.settings.get("t_threshold", (ctx.plan or {}).get("Threshold"))
    if isinstance(threshold, (int, float)):
        ctx.threshold = float(threshold)
    else:
        values = [threshold_value(t) for t in index.values("thresh")]
        values = [v for v in values if v is not None]
        ctx.threshold = min(values) if values else None
    masks = index.get(suffix="mask", desc="analysis", extension=NIFTI)
    ctx.mask = masks[0] if masks else None
    from bids_cnm.reports.atlas import plan_atlas

    ctx.user_atlas = plan_atlas(ctx.plan)
    ctx.warnings = _run_warnings(index)
    _read_run_record(ctx)
    return ctx


def _body(ctx: ReportContext) -> list[Section]:
    out = []
    for build in BODY:
        try:
            section = build(ctx)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not cost the report
            name = build.__name__.replace("_section", "")
            LOGGER.warning("report: the %s section failed: %s", name, exc)
            ctx.errors.append(f"{name} section: {type(exc).__name__}: {exc}")
            section = Section(name, name.capitalize(), [error(f"{type(exc).__name__}: {exc}")])
        if section is not None:
            out.append(section)
    return out


def build_report(
    output_dir: Path,
    command: list[str] | None = None,
    settings: dict | None = None,
    versions: dict | None = None,
    files: Iterable[str | Path] | None = None,
    n_procs: int | None = None,
) -> Path:
    """Write ``output_dir/bids_cnm_report.html`` from the derivatives in ``output_dir``.

    Parameters
    ----------
    output_dir : Path
        A bids_cnm output folder (group level; participant-only folders give a
        short report).
    command : list of str, optional
        The command line of the run, shown under Provenance.
    settings : dict, optional
        The run's settings; default those recorded in the sidecars.
    versions : dict, optional
        Versions of the run's software (added to/overriding those of this environment).
    files : iterable of path, optional
        Only these files of ``output_dir`` (e.g. the run's manifest); default all.
    n_procs : int, optional
        Processes drawing the figures; default the CPUs available.

    Returns
    -------
    Path
        The report.

    Raises
    ------
    MissingInputError
        When ``output_dir`` is not a folder.
    """
    started = time.perf_counter()
    root = Path(output_dir)
    if not root.is_dir():
        raise MissingInputError(f"cannot build the report: {root} is not a folder.")
    ctx = make_context(root, settings, files)
    with frozen_heap():
        body = _body(ctx)
        failed = draw_figures(body, n_procs)
    ctx.errors += [f"figure {f.alt!r}: {f.error}" for f in failed]
    env = environment_versions()
    env.update({str(k): str(v) for k, v in (versions or {}).items()})
    summary = summary_section(ctx, body)
    provenance = provenance_section(ctx, command, settings is not None, env,
                                    time.perf_counter() - started)
    name = "bids_cnm"
    description = ctx.index.first("dataset_description.json")
    if description is not None:
        try:
            name = json.loads(description.read_text()).get("Name", name)
        except ValueError:
            pass
    html_text = render_page([summary, *body, provenance], f"{name}: report", str(root))
    out = root / REPORT_NAME
    write_text(out, html_text)
    LOGGER.info("report: %s (%.1f s)", out, time.perf_counter() - started)
    return out
