"""Pieces several sections share: slices of a map through its peaks, peak tables."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from bids_cnm.reports import figures
from bids_cnm.reports.atlas import ATLAS_NAME, cortical_labels
from bids_cnm.reports.blocks import Figure, Table, note
from bids_cnm.reports.context import ReportContext
from bids_cnm.reports.index import DerivativesIndex, DerivFile, threshold_value
from bids_cnm.reports.tables import read_text_tsv

__all__ = ["N_SLICES", "cuts", "map_figures", "peaks_table", "sibling", "thresh_text",
           "sorted_by_set", "named_files"]

#: axial slices of a map drawn through its peaks
N_SLICES = 6
#: slices closer than this (mm) are not both drawn
MIN_SLICE_GAP = 8.0


def thresh_text(label: str | None) -> str:
    """``5p1`` -> ``|t| > 5.1``."""
    value = threshold_value(label) if label else None
    return f"|t| > {value:g}" if value is not None else f"thresh-{label}"


def sibling(index: DerivativesIndex, f: DerivFile, suffix: str, extension, **changes):
    """The file with ``f``'s entities (changed by ``changes``; ``None`` drops one)."""
    wanted = dict(f.entities)
    for key, value in changes.items():
        if value is None:
            wanted.pop(key, None)
        else:
            wanted[key] = value
    for candidate in index.get(suffix=suffix, extension=extension):
        if candidate.entities == wanted:
            return candidate
    return None


def sorted_by_set(ctx: ReportContext, files: list[DerivFile]) -> list[DerivFile]:
    """Files in the order of the sets (then threshold, then name)."""
    order = {name: k for k, name in enumerate(ctx.set_colors)}

    def key(f: DerivFile) -> tuple:
        thresh = threshold_value(f.get("thresh", "")) if f.get("thresh") else None
        return (order.get(f.get("set"), len(order)), f.get("set") or "",
                thresh if thresh is not None else np.inf, f.name)

    return sorted(files, key=key)


def _spread(values: list[float], n: int) -> list[float]:
    """Up to ``n`` values, no two closer than :data:`MIN_SLICE_GAP`, in the given order."""
    kept: list[float] = []
    for v in values:
        if all(abs(v - k) >= MIN_SLICE_GAP for k in kept):
            kept.append(v)
        if len(kept) == n:
            break
    return kept


def cuts(data: np.ndarray, affine: np.ndarray, threshold: float,
         peaks: pd.DataFrame | None = None) -> tuple[tuple[float, float, float], list[float]]:
    """Where to slice a map: the crossing point (its largest peak) and axial cuts (mm)
    through its peaks, then through the slices holding most supra-threshold voxels."""
    shown = np.abs(data) > threshold
    crossing = None
    z_values: list[float] = []
    if peaks is not None and len(peaks) and {"x", "y", "z", "value"} <= set(peaks.columns):
        order = np.argsort(-np.abs(peaks["value"].to_numpy(float)), kind="stable")
        top = peaks.iloc[order]
        first = top.iloc[0]
        crossing = (float(first["x"]), float(first["y"]), float(first["z"]))
        z_values = [float(z) for z in top["z"]]
    if crossing is None:
        peak = np.unravel_index(np.argmax(np.abs(data)), data.shape)
        crossing = tuple(float(c) for c in (affine @ [*peak, 1])[:3])
    counts = shown.sum(axis=(0, 1))
    busiest = [float((affine @ [0, 0, k, 1])[2]) for k in np.argsort(-counts, kind="stable")
               if counts[k] > 0]
    z_cuts = _spread(z_values + busiest, N_SLICES) or [crossing[2]]
    return crossing, sorted(z_cuts)


def map_figures(f: DerivFile, *, what: str, vmax: float | None, threshold: float,
                symmetric: bool = True, cmap: str = "RdBu_r", cbar_label: str,
                peaks: pd.DataFrame | None = None, caption: str = "",
                markers: np.ndarray | None = None) -> list[Figure]:
    """Orthogonal slices through the largest peak and axial slices through the others.

    Returns no figure (but the caller's note) when nothing passes ``threshold``.
    """
    data = figures.finite_data(f.path)
    if vmax is None:
        vmax = figures.robust_abs_max([data], 99.5, floor=threshold * 1.2 or 1e-6)
    if not np.any(np.abs(data) > threshold):
        return []
    crossing, z_cuts = cuts(data, figures.load(f.path).affine, threshold, peaks)
    where = ", ".join(f"{c:g}" for c in crossing)
    tied = 0
    if peaks is not None and len(peaks) and "value" in peaks.columns:
        values = peaks["value"].to_numpy(float)
        top = values[np.argmax(np.abs(values))]
        tied = int(np.count_nonzero(np.abs(values - top) < 1e-9))
    # with a tie, "the largest peak" would name one of several equal maxima
    which = (f"the first of {tied} peaks tied at the maximum" if tied > 1
             else "the largest peak")
    ortho = Figure(
        partial(figures.stat_map_ortho, str(f.path), crossing, vmax, threshold, symmetric,
                cmap, None, cbar_label, markers),
        f"{caption} Slices cross at {which} ({where} mm); shown where "
        f"{cbar_label} exceeds {threshold:g}{' in absolute value' if symmetric else ''}, "
        f"on the MNI152 template.".strip(),
        f"{what}: orthogonal slices", [f.name])
    mosaic = Figure(
        partial(figures.stat_map_mosaic, str(f.path), z_cuts, vmax, threshold, symmetric,
                cmap, cbar_label),
        f"{what}: axial slices through the peaks (z = "
        f"{', '.join(f'{z:g}' for z in z_cuts)} mm).",
        f"{what}: axial slices", [f.name])
    return [ortho, mosaic]


def peaks_table(f: DerivFile, table_id: str | None = None, caption: str = "",
                user_atlas=None) -> list:
    """A peaks/clusters TSV as on disk, with an anatomical label column added.

    Parameters
    ----------
    f : DerivFile
        The table (columns x, y, z in MNI mm).
    table_id : str, optional
    caption : str
    user_atlas : bids_cnm.io.templates.Atlas, optional
        The analysis plan's atlas (:func:`bids_cnm.reports.atlas.plan_atlas`): its
        region at each peak goes into a column of its own.
    """
    frame = read_text_tsv(f)
    blocks: list = []
    if {"x", "y", "z"} <= set(frame.columns) and len(frame):
        xyz = frame[["x", "y", "z"]].astype(float).to_numpy()
        if user_atlas is not None:
            # the user's own regions, exactly at the peak ("" outside them)
            frame = frame.assign(plan_atlas=[user_atlas.label_at(p) or "-" for p in xyz])
            caption = (caption + f" plan_atlas: the region of {user_atlas.source} at the "
                       "peak (- outside its regions).").strip()
        labels = cortical_labels(xyz)
        if labels is not None:
            # subcortical names from the connectome template's own atlases when the
            # installation has them (TemplateFlow; fetched into the container image)
            from bids_cnm.io.templates import anatomical_atlas

            sub = anatomical_atlas(f.get("space"))
            named = 0
            if sub is not None:
                for i, label in enumerate(labels):
                    if label == "not cortical" and sub.label_at(xyz[i]):
                        labels[i], named = sub.label_at(xyz[i]), named + 1
            frame = frame.assign(label=labels)
            space = f.get("space") or "<space>"
            where = (f"; subcortical regions: {sub.source}" if sub is not None else
                     f"; subcortical peaks are 'not cortical': their names need "
                     f"TemplateFlow's tpl-{space}_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz, "
                     f"which is not on disk here (python -m bids_cnm.io.templates fetch "
                     f"gets it; the container image has it)")
            caption = (caption + f" Labels: {ATLAS_NAME}, the region at the peak (or the "
                       f"nearest within 4 mm){where}.").strip()
        else:
            caption = (caption + " No anatomical labels: the Harvard-Oxford atlas (from "
                       "NiMARE) is not installed.").strip()
    blocks.append(Table(frame, source=f.name, id=table_id, caption=caption))
    if frame.empty:
        blocks.append(note("No peaks."))
    return blocks


def named_files(ctx: ReportContext, prefix: str) -> dict[str, list[DerivFile]]:
    """Files whose ``desc`` is ``<prefix><Name>``, by name."""
    out: dict[str, list[DerivFile]] = {}
    for f in ctx.index.files:
        desc = f.get("desc") or ""
        if desc.startswith(prefix) and len(desc) > len(prefix) and f.extension != ".json":
            out.setdefault(desc[len(prefix):], []).append(f)
    return out
