"""What every section builder of the report gets: the index and what was read once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_cnm.reports.index import DerivativesIndex, DerivFile

__all__ = ["ReportContext", "KeyNumber", "NIFTI", "parse_coordinates"]

NIFTI = (".nii.gz", ".nii")


@dataclass
class KeyNumber:
    """One row of the summary's table of key numbers."""

    analysis: str
    result: str
    statistic: str = ""
    p: str = ""
    section: str = ""  # id of the section that shows it


@dataclass
class ReportContext:
    """Shared state of one report: read once, filled in by the section builders."""

    index: DerivativesIndex
    settings: dict
    seeds: pd.DataFrame | None = None  # seeds.tsv as text (exactly as on disk)
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # seed id -> (n, 3) mm
    seed_sets: dict[str, str] = field(default_factory=dict)  # seed id -> set
    seed_variants: dict[str, str] = field(default_factory=dict)  # seed id -> variant
    set_colors: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    mask: DerivFile | None = None  # the analysis mask
    plan: dict | None = None  # plan.json, when the run had an analysis plan
    user_atlas: object | None = None  # the plan's labelled atlas (io.templates.Atlas)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: warnings the run logged (run record), each {"message", "source", "time", "level"}
    run_warnings: list[dict] = field(default_factory=list)
    run_warnings_dropped: int = 0  # beyond the record's cap
    volumes: dict[str, int] = field(default_factory=dict)  # subject -> BOLD volumes
    min_volumes: int | None = None  # the run's --min-volumes
    key_numbers: list[KeyNumber] = field(default_factory=list)
    shown: set[Path] = field(default_factory=set)  # files a section has shown

    def main_seeds(self) -> list[str]:
        """Seed ids of the main variant (all seeds when there is no ``variant`` column)."""
        return [s for s in self.coords if self.seed_variants.get(s, "main") == "main"]

    def show(self, *files: DerivFile | Path | None) -> list[str]:
        """Mark files as shown; returns their names (for captions)."""
        names = []
        for f in files:
            if f is None:
                continue
            path = f.path if isinstance(f, DerivFile) else Path(f)
            self.shown.add(path)
            names.append(path.name)
        return names

    def set_is_primary(self, name: str) -> bool:
        """Whether a set holds studies (the plan's primary sets; default the first set)."""
        primary = (self.plan or {}).get("primary_sets")
        if primary:
            return name in primary
        return bool(self.set_colors) and name == next(iter(self.set_colors))

    @property
    def mask_path(self) -> Path | None:
        return self.mask.path if self.mask is not None else None

    def resolve(self, name: str) -> Path | None:
        """The file a table names: a BIDS URI (``bids::<path>`` in these derivatives,
        ``bids:<dataset>:<path>`` in a dataset of ``dataset_description.json``'s
        ``DatasetLinks``) or a path; ``None`` when it is not (or no longer) there."""
        text = str(name)
        path = Path(text)
        if text.startswith("bids:"):
            dataset, _, relative = text[len("bids:"):].partition(":")
            root = self.index.root if not dataset else self._links().get(dataset)
            if root is None:
                return None
            path = Path(root) / relative
        return path if path.is_file() else None

    def _links(self) -> dict[str, Path]:
        """``DatasetLinks`` of the derivatives (file URIs) as folders."""
        import json
        from urllib.parse import unquote, urlparse

        try:
            description = json.loads((self.index.root / "dataset_description.json").read_text())
        except (OSError, ValueError):
            return {}
        links = {}
        for name, uri in (description.get("DatasetLinks") or {}).items():
            parsed = urlparse(str(uri))
            links[name] = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
        return links


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
