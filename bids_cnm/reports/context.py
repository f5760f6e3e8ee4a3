"""What every section builder of the report gets: the index and what was read once."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm.reports.index import DerivativesIndex

__all__ = ["Section", "ReportContext", "NIFTI", "parse_coordinates"]

NIFTI = (".nii.gz", ".nii")


@dataclass
class Section:
    """One section of the report (``body`` is HTML)."""

    id: str
    title: str
    body: str


@dataclass
class ReportContext:
    """Shared state of one report."""

    index: DerivativesIndex
    settings: dict
    seeds: pd.DataFrame | None = None  # seeds.tsv as text (exactly as on disk)
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # seed id -> (n, 3) mm
    seed_sets: dict[str, str] = field(default_factory=dict)  # seed id -> set
    seed_variants: dict[str, str] = field(default_factory=dict)  # seed id -> variant
    set_colors: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    mask: nb.spatialimages.SpatialImage | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drawn: set = field(default_factory=set)  # paths a renderer has shown already

    def main_seeds(self) -> list[str]:
        """Seed ids of the main variant (all seeds when there is no ``variant`` column)."""
        return [s for s in self.coords if self.seed_variants.get(s, "main") == "main"]


def parse_coordinates(text: str) -> np.ndarray:
    """``"x,y,z;x,y,z"`` -> array (n, 3); empty or malformed triples are skipped."""
    rows = []
    for triple in str(text).split(";"):
        parts = triple.strip().split(",")
        if len(parts) != 3:
            continue
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            continue
    return np.asarray(rows, dtype=float).reshape(-1, 3)
