"""Summary (first: the run and its key numbers), inputs, provenance."""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from functools import partial

import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.reports import figures
from bids_cnm.reports.blocks import (
    Figure,
    KeyValues,
    Pre,
    Section,
    Table,
    error,
    kv_items,
    note,
    subhead,
    warning,
)
from bids_cnm.reports.context import NIFTI, ReportContext
from bids_cnm.reports.index import threshold_value

__all__ = ["summary_section", "inputs_section", "provenance_section", "n_subjects"]


def n_subjects(ctx: ReportContext) -> int | None:
    """Connectome subjects, from the group maps' sidecars."""
    index = ctx.index
    for f in index.get(desc="overlap", extension=NIFTI) + index.get(stat="t", extension=NIFTI):
        side = f.sidecar
        if isinstance(side.get("NumberOfSubjects"), int):
            return side["NumberOfSubjects"]
        labels = {s.split("sub-")[-1].split("/")[0] for s in side.get("Sources") or []
                  if "sub-" in str(s)}
        if labels:
            return len(labels)
    return None


def _connectome(ctx: ReportContext) -> str:
    index = ctx.index
    name = ctx.settings.get("connectome") or ctx.settings.get("bids_dir")
    n = n_subjects(ctx)
    space = next((f.sidecar.get("SpatialReference") for f in index.get(
        desc="overlap", extension=NIFTI) if f.sidecar.get("SpatialReference")), None)
    grid_files = [f for f in index.files if f.get("task")]
    spaces = index.values("space", grid_files) or index.values("space")
    res = index.values("res", grid_files)
    text = (f"{name}: " if name else "") + f"{n if n is not None else 'unknown number of'} " \
        f"subjects; space {space or ', '.join(spaces) or 'unknown'}"
    if res:
        text += f" (res-{', '.join(res)})"
    if ctx.mask is not None:
        img = figures.load(ctx.mask.path)
        zooms = img.header.get_zooms()[:3]
        n_vox = int(np.count_nonzero(np.asarray(img.dataobj)))
        text += (f"; grid {'x'.join(map(str, img.shape[:3]))} of "
                 f"{'x'.join(f'{z:g}' for z in zooms)} mm, analysis mask {n_vox} voxels")
    return text


def volume_range(volumes: dict[str, int], min_volumes: int | None = None) -> str:
    """The range of the subjects' BOLD volumes, e.g. ``"50–100 BOLD volumes per subject
    (runs together; median 50, 6 subjects); 5 below --min-volumes 60"``.

    Parameters
    ----------
    volumes : dict
        Subject label -> BOLD volumes (all runs together).
    min_volumes : int, optional
        The run's ``--min-volumes``: the subjects below it are counted.
    """
    if not volumes:
        return ""
    counts = np.asarray(list(volumes.values()))
    text = (f"{counts.min()}–{counts.max()} BOLD volumes per subject (runs together; "
            f"median {np.median(counts):g}, {len(counts)} subjects)")
    if min_volumes is not None:
        short = int(np.count_nonzero(counts < min_volumes))
        text += f"; {short} below --min-volumes {min_volumes}"
    return text


def _run_warning_items(ctx: ReportContext) -> list[str]:
    items = []
    for w in ctx.run_warnings:
        where = w.get("source") or "unknown source"
        level = "" if w.get("level") == "group" else f"{w.get('level')} run, "
        items.append(f"{w['message']} ({level}{where})")
    if ctx.run_warnings_dropped:
        items.append(f"… and {ctx.run_warnings_dropped} more (not recorded).")
    return items


def _sets(ctx: ReportContext) -> str:
    if ctx.seeds is None or not ctx.coords:
        return ", ".join(ctx.index.values("set")) or "none"
    main = ctx.main_seeds()
    parts = []
    for set_name in ctx.set_colors:
        members = [s for s in main if ctx.seed_sets.get(s) == set_name]
        if not members:
            continue
        n_coords = sum(len(ctx.coords[s]) for s in members)
        # only the coordinate sets hold studies; the plan's DBS and reference seeds and the
        # random relocations are seeds of another kind
        kind = {"random": "relocated copies", "dbs": "DBS seeds",
                "reference": "reference seeds"}.get(set_name, "studies")
        parts.append(f"{set_name}: {len(members)} {kind}"
                     + (f", {n_coords} coordinates" if n_coords else ""))
    diameter = ctx.settings.get("sphere_diameter")
    if diameter is None and "diameter_mm" in ctx.seeds and len(ctx.seeds):
        diameter = ctx.seeds["diameter_mm"].iloc[0]
    return "; ".join(parts) + (f" ({float(diameter):g} mm spheres)" if diameter else "")


def summary_section(ctx: ReportContext, sections: list[Section]) -> Section:
    """The run in one screen: inputs, threshold, what ran, warnings, key numbers."""
    thresholds = sorted({t for t in (threshold_value(v) for v in ctx.index.values("thresh"))
                         if t is not None})
    items = [
        ("Connectome", _connectome(ctx)),
        *([("BOLD volumes", volume_range(ctx.volumes, ctx.min_volumes))]
          if ctx.volumes else []),
        ("Coordinate sets", _sets(ctx)),
        ("Main threshold", f"|t| > {ctx.threshold:g}" if ctx.threshold is not None
         else "not recorded"),
    ]
    if len(thresholds) > 1:
        items.append(("Other thresholds", ", ".join(f"{t:g}" for t in thresholds
                                                     if t != ctx.threshold)))
    items.append(("What ran", ", ".join(s.nav or s.title for s in sections) or "nothing"))
    items.append(("Output files", f"{len(ctx.index.files)} group-level files in "
                  f"{ctx.index.root}"))
    blocks: list = [KeyValues(items, id="summary-list")]
    warnings = list(ctx.warnings)
    if ctx.seeds is not None and "voxels" in ctx.seeds:
        empty = ctx.seeds.loc[ctx.seeds["voxels"].isin(["0", "0.0"]), "id"].tolist()
        if empty:
            warnings.append(f"Seed(s) with no voxel in the analysis mask: {', '.join(empty)}.")
    logged = _run_warning_items(ctx)
    if logged:
        blocks.append(warning("Warnings the run logged (logs/bids_cnm_run.json):", logged))
    if warnings:
        blocks.append(warning("Warnings recorded with the outputs:", warnings))
    if ctx.errors:
        blocks.append(error("Errors while building this report: " + " | ".join(ctx.errors)))
    if ctx.key_numbers:
        frame = pd.DataFrame([{"analysis": k.analysis, "result": k.result,
                               "statistic": k.statistic, "p": k.p}
                              for k in ctx.key_numbers])
        blocks.append(subhead("Key numbers"))
        blocks.append(Table(frame, id="key-numbers", max_rows=None))
    return Section("summary", "Summary", blocks)


def inputs_section(ctx: ReportContext) -> Section | None:
    """The coordinates on a glass brain by set, and the seeds' table."""
    if ctx.seeds is None:
        return None
    seeds = ctx.seeds
    row_classes = None
    if "voxels" in seeds:
        row_classes = ["warn" if v in ("0", "0.0") else "" for v in seeds["voxels"]]
    source = ctx.settings.get("coordinates")
    blocks: list = []
    main = ctx.main_seeds()
    points: dict[str, list] = {}
    for seed_id in main:
        xyz = ctx.coords[seed_id]
        # the randomly relocated copies are a null, not input: summarised elsewhere
        if len(xyz) and ctx.seed_sets.get(seed_id) != "random":
            points.setdefault(ctx.seed_sets.get(seed_id, "primary"), []).extend(xyz.tolist())
    if points:
        arrays = {k: np.asarray(v, float).reshape(-1, 3) for k, v in points.items()}
        n = sum(len(v) for v in arrays.values())
        blocks.append(Figure(
            partial(figures.coordinates_glass_brain, arrays,
                    {k: ctx.set_colors.get(k, "black") for k in arrays}),
            f"The {n} input coordinates (MNI mm) of the main seeds on a glass brain, coloured "
            "by set (number of coordinates in brackets); the randomly relocated copies are "
            "not drawn.", "glass brain of the input coordinates",
            ["seeds.tsv"], css="wide"))
    studies = [s for s in main if ctx.seed_sets.get(s) in ctx.set_colors
               and ctx.seed_sets.get(s) not in ("random", "dbs", "reference")]
    if "voxels" in seeds and studies:
        shown = seeds[seeds["id"].isin(studies)]
        blocks.append(Figure(
            partial(figures.bars, list(shown["id"]), shown["voxels"].astype(float).to_numpy(),
                    "voxels in the analysis mask"),
            "Seed sizes: each study's seed (the union of its spheres) in voxels of the "
            "analysis mask.", "seed sizes", ["seeds.tsv"]))
    blocks.append(note((f"Coordinates read from {source}. " if source else "")
                       + "One seed per study: spheres at its coordinates, united; voxels "
                       "counts the seed's voxels inside the analysis mask."))
    blocks.append(Table(seeds, source="seeds.tsv", id="seeds-table", row_classes=row_classes,
                        max_rows=None))
    return Section("inputs", "Inputs: coordinates and seeds", blocks, nav="Inputs",
                   analyses=["seeds.tsv"])


def provenance_section(ctx: ReportContext, command: list[str] | None, settings_given: bool,
                       versions: dict[str, str], elapsed: float) -> Section:
    """Command, versions, settings, dataset description, methods text."""
    blocks: list = [subhead("Command")]
    blocks.append(Pre(shlex.join(map(str, command)), id="command") if command else
                  note("Not recorded (the report was built without the command)."))
    blocks += [subhead("Versions"), KeyValues(kv_items(versions), id="versions"),
               subhead("Settings")]
    if ctx.settings:
        origin = "given to the report" if settings_given else \
            "recorded in the sidecars (bids_cnm key)"
        blocks += [note(f"Settings {origin}."), KeyValues(kv_items(ctx.settings),
                                                          id="settings")]
    else:
        blocks.append(note("No settings recorded."))
    description = ctx.index.first("dataset_description.json")
    blocks.append(subhead("dataset_description.json"))
    if description is not None:
        try:
            blocks.append(Pre(json.dumps(json.loads(description.read_text()), indent=2)))
        except ValueError as exc:
            blocks.append(error(f"dataset_description.json is not valid JSON: {exc}"))
    else:
        blocks.append(note("Missing."))
    for name in ("CITATION.md", "methods.md", "boilerplate.md"):
        path = ctx.index.first(name)
        if path is None and (ctx.index.root / "logs" / name).is_file():
            path = ctx.index.root / "logs" / name  # the index leaves logs/ out
        if path is not None:
            blocks += [subhead("Methods"), Pre(path.read_text(encoding="utf-8"))]
            break
    plan = ctx.index.first("plan.json")
    if plan is not None:
        ctx.show(plan)
        blocks.append(note("The analysis plan as run: plan.json."))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    blocks.append(note(f"Report generated {now} in {elapsed:.1f} s by bids_cnm {__version__} "
                       f"from {ctx.index.root}."))
    return Section("provenance", "Provenance", blocks)
