"""The analysis plan: which sets are primary and control, and which validation, DBS and
ALE analyses run on the group results, with which inputs.

A plan is a JSON or YAML file (told apart by content) given with ``--analysis``.  It is
validated completely when it is loaded, before any connectivity is computed: an unknown
key, a value of the wrong type, a bad value, a missing file or a table without the
needed columns is an :class:`~bids_cnm.errors.InputDataError` (or
:class:`~bids_cnm.errors.MissingInputError` for files) whose message names the key path
(e.g. ``validation.roi_overlap[2].spheres.table``) and says how to fix it.  Relative
paths are resolved against the plan file's folder; paths inside tables (VAT images,
lesion masks) against the table's folder.

Without a plan, :func:`default_plan` applies: the ``primary`` set is primary, every
other set is a control, and only the analyses that need no extra input run.

The schema is documented key by key in ``docs/plan.md``.  Every section is a frozen
dataclass; a :class:`Plan` pickles (for nipype nodes) and :meth:`Plan.to_dict` returns a
JSON-able dict that :func:`plan_from_dict` loads back to an equal plan.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_cnm.errors import InputDataError, MissingInputError, ReadError, where

__all__ = [
    "ALE",
    "DBS",
    "DBSPatient",
    "Atlas",
    "Compare",
    "Image",
    "Masks",
    "Null",
    "Peak",
    "Plan",
    "Region",
    "ROIOverlap",
    "ROIToROI",
    "SpatialCorrelation",
    "Spheres",
    "Validation",
    "default_plan",
    "load_plan",
    "plan_from_dict",
    "read_table",
    "coordinate_table",
    "mask_roi_files",
    "atlas_labels",
    "sphere_labels",
    "read_dbs_table",
    "OVERLAP_MAPS",
    "DBS_MAPS",
    "RESERVED_SETS",
    "OVERLAP_DENOMINATORS",
    "NULL_WITHIN",
    "ROI_TO_ROI_TESTS",
]

#: maps of a set's overlap (``overlap`` alone means the primary sets')
OVERLAP_MAPS = ("overlap", "posoverlap", "negoverlap")
#: maps made by the DBS analysis
DBS_MAPS = ("dbs", "dbsrmap", "convergent")
#: sets of the extra seeds made from the plan (see ``bids_cnm.analyses.plan_seeds``)
RESERVED_SETS = ("dbs", "reference")
#: columns of a DBS table row that gives a contact instead of VAT images
CONTACT_COLUMNS = ("side", "x", "y", "z", "amplitude")
#: columns of a DBS table that give VAT images
VAT_COLUMNS = ("vat", "vat_left", "vat_right")
ALE_TARGETS = ("mni152_2mm", "mni152_1mm", "ale_2mm")
VAT_MODELS = ("kuncel2008", "maedler2012", "dembek2017")
#: what an ROI's % overlap divides by (see ``ROIOverlap``)
OVERLAP_DENOMINATORS = ("roi", "mask")
#: where a random-sphere null draws its centres
NULL_WITHIN = ("auto", "brain", "cortex", "mask")
#: the between-network test of ROI-to-ROI connectivity
ROI_TO_ROI_TESTS = ("nodes", "repeated_measures", "friedman")

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_MAP_REF = re.compile(r"^(overlap|posoverlap|negoverlap)(?::(.+))?$")
_NA_VALUES = ["", "n/a", "N/A", "NA", "nan", "NaN"]


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Image:
    """A map given as a NIfTI file (resampled onto the connectome grid when needed)."""

    image: Path


@dataclass(frozen=True)
class Spheres:
    """Spheres at the coordinates of a table (``x``, ``y``, ``z`` in MNI mm)."""

    table: Path
    diameter: float = 6.0
    label_column: str | None = None


@dataclass(frozen=True)
class Masks:
    """Binary mask images (e.g. lesions): a folder, a list of files, or a table of files."""

    folder: Path | None = None
    files: tuple[Path, ...] | None = None
    table: Path | None = None
    file_column: str = "file"


@dataclass(frozen=True)
class Atlas:
    """Regions of an integer-label atlas image with a label table (``index``, ``name``)."""

    image: Path
    labels: Path | None = None
    select: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class Null:
    """Null model of a mean ROI overlap: random atlas regions or random in-mask spheres."""

    kind: str
    n_draws: int = 10000
    diameter: float | None = None
    atlas: Atlas | None = None
    alternative: str = "greater"
    within: str = "auto"
    within_mask: Path | None = None
    shell_mm: float = 5.0


@dataclass(frozen=True)
class Compare:
    """Welch test of the ROI overlaps of group ``a`` against group ``b`` of a column."""

    column: str
    a: str
    b: str


@dataclass(frozen=True)
class ROIOverlap:
    """% overlap of a set of ROIs (x 100), with null and comparison.

    ``denominator``: ``roi`` (Ji et al. 2025: sum of the network's values in the ROI over
    the number of ROI voxels, outside the analysis mask counted as 0) or ``mask`` (mean
    over the ROI's voxels inside the analysis mask).
    """

    name: str
    network: str | Image = "overlap"
    spheres: Spheres | None = None
    masks: Masks | None = None
    atlas: Atlas | None = None
    null_model: Null | None = None
    compare: Compare | None = None
    statistic: str = "mean_of_regions"
    denominator: str = "roi"

    @property
    def kind(self) -> str:
        """``spheres``, ``masks`` or ``atlas``."""
        return "spheres" if self.spheres else ("masks" if self.masks else "atlas")


@dataclass(frozen=True)
class SpatialCorrelation:
    """Spatial correlation of networks with a reference map (a seed network or an image)."""

    name: str
    seeds: Spheres | None = None
    image: Path | None = None
    network: tuple[str | Image, ...] = ("overlap",)
    stat: str = "t"
    method: str = "pearson"

    @property
    def seed_id(self) -> str:
        """Id of the reference seed made by ``plan_seeds`` (``ref<name>``)."""
        return f"ref{self.name}"


@dataclass(frozen=True)
class ROIToROI:
    """Mean connectivity of the study seeds to each network of a parcellation's nodes."""

    nodes: Path
    diameter: float = 6.0
    sets: tuple[str, ...] | None = None
    test: str = "nodes"


@dataclass(frozen=True)
class Region:
    """A region given as spheres, atlas regions or a mask image (exactly one)."""

    spheres: Spheres | None = None
    atlas: Atlas | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class Peak:
    """Peak of a map inside a region, with distances to reference coordinates."""

    name: str
    region: Region
    map: str | Image = "overlap"
    references: Path | None = None
    sign: str = "positive"


@dataclass(frozen=True)
class Validation:
    """The validation analyses."""

    controls: bool = True
    roi_overlap: tuple[ROIOverlap, ...] = ()
    spatial_correlation: tuple[SpatialCorrelation, ...] = ()
    roi_to_roi: ROIToROI | None = None
    peaks: tuple[Peak, ...] = ()


@dataclass(frozen=True)
class DBS:
    """Deep brain stimulation: patients' VATs and outcomes."""

    table: Path
    patient_column: str = "patient"
    outcome_column: str = "outcome"
    stat: str = "t"
    normalize: str = "n"
    n_permutations: int = 1000
    vat_model: str = "kuncel2008"
    unit: str | None = None
    network: str | Image = "overlap"
    convergent: bool = True
    alternative: str = "greater"


@dataclass(frozen=True)
class ALE:
    """Activation likelihood estimation of the coordinates with NiMARE."""

    n_iters: int = 10000
    voxel_thresh: float = 0.001
    cluster_threshold: float = 0.05
    sample_size_column: str | None = None
    default_sample_size: int = 20
    sets: tuple[str, ...] | None = None
    target: str = "mni152_2mm"


@dataclass(frozen=True)
class Plan:
    """A validated analysis plan.

    Attributes
    ----------
    primary_sets : tuple of str
        Coordinate sets whose studies make the coordinate network (the primary overlap).
    control_sets : tuple of str or None
        Control sets; ``None`` means every set of the results that is neither primary
        nor one of :data:`RESERVED_SETS` (see :meth:`controls_in`).
    random_seed : int
        Seed of every random draw (each analysis derives its own stream from it and its
        name, so adding an analysis does not change the others' draws).
    validation : Validation
    dbs : DBS or None
    ale : ALE or None
    source : str or None
        The plan file (for messages); not part of :meth:`to_dict` nor of equality.
    """

    primary_sets: tuple[str, ...] = ("primary",)
    control_sets: tuple[str, ...] | None = None
    random_seed: int = 0
    validation: Validation = field(default_factory=Validation)
    dbs: DBS | None = None
    ale: ALE | None = None
    source: str | None = field(default=None, compare=False, metadata={"export": False})

    def to_dict(self) -> dict:
        """The plan as JSON-able values in the schema's form (absolute paths, defaults filled)."""
        return _export(self)

    def controls_in(self, sets: list[str] | tuple[str, ...]) -> list[str]:
        """The control sets among ``sets`` (the sets present in the results).

        Parameters
        ----------
        sets : sequence of str
            Set names present (in their order).

        Returns
        -------
        list of str
            ``control_sets`` when given (in the plan's order), else every set that is
            neither primary nor reserved.
        """
        if self.control_sets is not None:
            return list(self.control_sets)
        taken = set(self.primary_sets) | set(RESERVED_SETS)
        return [s for s in dict.fromkeys(sets) if s not in taken]

    @property
    def label(self) -> str:
        """Where the plan comes from, for messages."""
        return f"analysis plan {self.source}" if self.source else "analysis plan"


def _export(value: Any) -> Any:
    if is_dataclass(value):
        out = {}
        for f in fields(value):
            if not f.metadata.get("export", True):
                continue
            item = getattr(value, f.name)
            if item is None:
                continue
            out[f.name] = _export(item)
        return out
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_export(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading


class _Ctx:
    """Where values come from: the plan file (for messages) and its folder (for paths)."""

    def __init__(self, base: Path, source: str | None) -> None:
        self.base = base
        self.label = f"analysis plan {source}" if source else "analysis plan"

    def error(self, key: str, problem: str, fix: str) -> InputDataError:
        return InputDataError(f"{self.label}, {key}: {problem}; {fix}")


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (dict, Mapping)):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


Spec = Callable[[Any, str, _Ctx], Any]


def _str(choices: tuple[str, ...] | None = None, label: bool = False) -> Spec:
    def check(value: Any, key: str, ctx: _Ctx) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ctx.error(key, f"expected a text value, got {_type_name(value)}",
                            "write a non-empty text (quote it in YAML if needed)")
        value = value.strip()
        if choices is not None and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise ctx.error(
                key, f"'{value}' is not allowed"
                + (f" (did you mean '{hint[0]}'?)" if hint else ""),
                f"use one of: {', '.join(choices)}",
            )
        if label and not _LABEL.match(value):
            raise ctx.error(key, f"'{value}' is not a valid name",
                            "use letters and digits only (it becomes part of BIDS file names)")
        return value

    return check


def _scalar_text(value: Any, key: str, ctx: _Ctx) -> str:
    """A table value to match: text or number (kept as text)."""
    if isinstance(value, bool):
        raise ctx.error(
            key, f"got {_type_name(value)}",
            "YAML reads unquoted yes/no/true/false/on/off as booleans; quote the value "
            "as it is written in the table (e.g. 'yes')",
        )
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ctx.error(key, f"expected a text or number, got {_type_name(value)}",
                    "give the value as written in the table")


def _select_item(value: Any, key: str, ctx: _Ctx) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (
        isinstance(value, str) and not value.strip()
    ):
        raise ctx.error(key, f"expected a region name or integer index, got {_type_name(value)}",
                        "list names or indices of the atlas label table")
    return value.strip() if isinstance(value, str) else int(value)


def _int(minimum: int | None = None) -> Spec:
    def check(value: Any, key: str, ctx: _Ctx) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(key, f"expected an integer, got {_type_name(value)}",
                            "write a whole number without quotes")
        if minimum is not None and value < minimum:
            raise ctx.error(key, f"{value} is too small", f"give an integer >= {minimum}")
        return int(value)

    return check


def _float(minimum: float | None = None, strict: bool = False,
           maximum: float | None = None) -> Spec:
    def check(value: Any, key: str, ctx: _Ctx) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(key, f"expected a number, got {_type_name(value)}",
                            "write a number without quotes")
        value = float(value)
        if not math.isfinite(value):
            raise ctx.error(key, f"{value} is not finite", "write a finite number")
        low_bad = minimum is not None and (value <= minimum if strict else value < minimum)
        high_bad = maximum is not None and value >= maximum
        if low_bad or high_bad:
            lo = "" if minimum is None else (f"> {minimum:g}" if strict else f">= {minimum:g}")
            hi = "" if maximum is None else f"< {maximum:g}"
            raise ctx.error(key, f"{value:g} is out of range",
                            f"give a number {' and '.join(p for p in (lo, hi) if p)}")
        return value

    return check


def _bool(value: Any, key: str, ctx: _Ctx) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(key, f"expected true or false, got {_type_name(value)}",
                        "write true or false without quotes")
    return value


def _path(kind: str = "file") -> Spec:
    def check(value: Any, key: str, ctx: _Ctx) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ctx.error(key, f"expected a path, got {_type_name(value)}",
                            "give a file path (relative to the plan file's folder or absolute)")
        path = Path(value.strip()).expanduser()
        if not path.is_absolute():
            path = ctx.base / path
        path = path.resolve()
        ok = path.is_dir() if kind == "dir" else path.is_file()
        if not ok:
            what = "folder" if kind == "dir" else "file"
            if path.exists():
                raise MissingInputError(
                    f"{ctx.label}, {key}: {path} is not a {what}; give the {what} itself"
                )
            raise MissingInputError(
                f"{ctx.label}, {key}: {what} not found: {path}; check the path (relative "
                f"paths are resolved against the plan file's folder {ctx.base})"
            )
        return path

    return check


def _list(item: Spec, min_items: int = 1, scalar_ok: bool = False) -> Spec:
    def check(value: Any, key: str, ctx: _Ctx) -> tuple:
        if scalar_ok and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise ctx.error(key, f"expected a list, got {_type_name(value)}",
                            "write a list ([a, b] or one '- item' per line in YAML)")
        if len(value) < min_items:
            raise ctx.error(key, "the list is empty",
                            f"give at least {min_items} item{'s' if min_items > 1 else ''} "
                            "or remove the key")
        return tuple(item(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))

    return check


def _map_ref(value: Any, key: str, ctx: _Ctx) -> str | Image:
    if isinstance(value, dict):
        return _record(Image, {"image": (_path(), True)})(value, key, ctx)
    if isinstance(value, str):
        text = value.strip()
        if text in DBS_MAPS or _MAP_REF.match(text):
            return text
    raise ctx.error(
        key, f"{_type_name(value)} is not a map",
        "use overlap, posoverlap or negoverlap (the primary sets' overlap), "
        "overlap:<set> (another set's), dbs, dbsrmap, convergent, or {image: <NIfTI path>}",
    )


def _record(cls: type, specs: dict[str, tuple[Spec, bool]],
            one_of: tuple[str, ...] | None = None) -> Spec:
    """A mapping with the given keys, made into ``cls``."""

    def check(value: Any, key: str, ctx: _Ctx) -> Any:
        prefix = f"{key}." if key else ""
        if not isinstance(value, dict):
            raise ctx.error(key or "top level", f"expected a mapping, got {_type_name(value)}",
                            f"give a mapping with keys among: {', '.join(specs)}")
        for name in value:
            if name is None:
                raise ctx.error(
                    f"{prefix}null", "YAML reads the key 'null' (or '~') as nothing",
                    "name the null model 'null_model'" if "null_model" in specs
                    else f"allowed keys here: {', '.join(specs)}",
                )
            if name not in specs:
                hint = difflib.get_close_matches(str(name), list(specs), n=1)
                raise ctx.error(
                    f"{prefix}{name}",
                    "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""),
                    f"allowed keys here: {', '.join(specs)}",
                )
        if one_of is not None:
            given = [k for k in one_of if value.get(k) is not None]
            if len(given) != 1:
                problem = ("none of " if not given else "more than one of ") + ", ".join(
                    given or one_of)
                raise ctx.error(key or "top level", f"{problem} given",
                                f"give exactly one of: {', '.join(one_of)}")
        out = {}
        for name, (spec, required) in specs.items():
            item = value.get(name)
            if item is None:
                if required:
                    raise ctx.error(f"{prefix}{name}", "required key is missing",
                                    f"add '{name}' to {key or 'the plan'}")
                continue
            out[name] = spec(item, f"{prefix}{name}", ctx)
        return cls(**out)

    return check


_SET_NAME = _str()
_SETS = _list(_SET_NAME)

_SPHERES = _record(Spheres, {
    "table": (_path(), True),
    "diameter": (_float(0, strict=True), False),
    "label_column": (_str(), False),
})
_ATLAS = _record(Atlas, {
    "image": (_path(), True),
    "labels": (_path(), False),
    "select": (_list(_select_item, scalar_ok=True), False),
})
_MASKS = _record(Masks, {
    "folder": (_path("dir"), False),
    "files": (_list(_path()), False),
    "table": (_path(), False),
    "file_column": (_str(), False),
})
_NULL = _record(Null, {
    "kind": (_str(("regions", "spheres")), True),
    "n_draws": (_int(1), False),
    "diameter": (_float(0, strict=True), False),
    "atlas": (_ATLAS, False),
    "alternative": (_str(("greater", "less", "two-sided")), False),
    "within": (_str(NULL_WITHIN), False),
    "within_mask": (_path(), False),
    "shell_mm": (_float(0, strict=True), False),
})
_COMPARE = _record(Compare, {
    "column": (_str(), True),
    "a": (_scalar_text, True),
    "b": (_scalar_text, True),
})
_ROI_OVERLAP = _record(ROIOverlap, {
    "name": (_str(label=True), True),
    "network": (_map_ref, False),
    "spheres": (_SPHERES, False),
    "masks": (_MASKS, False),
    "atlas": (_ATLAS, False),
    "null_model": (_NULL, False),
    "compare": (_COMPARE, False),
    "statistic": (_str(("mean_of_regions", "pooled")), False),
    "denominator": (_str(OVERLAP_DENOMINATORS), False),
}, one_of=("spheres", "masks", "atlas"))
_SPATIAL = _record(SpatialCorrelation, {
    "name": (_str(label=True), True),
    "seeds": (_SPHERES, False),
    "image": (_path(), False),
    "network": (_list(_map_ref, scalar_ok=True), False),
    "stat": (_str(("t", "z", "r")), False),
    "method": (_str(("pearson", "spearman")), False),
}, one_of=("seeds", "image"))
_ROI_TO_ROI = _record(ROIToROI, {
    "nodes": (_path(), True),
    "diameter": (_float(0, strict=True), False),
    "sets": (_SETS, False),
    "test": (_str(ROI_TO_ROI_TESTS), False),
})
_REGION = _record(Region, {
    "spheres": (_SPHERES, False),
    "atlas": (_ATLAS, False),
    "mask": (_path(), False),
}, one_of=("spheres", "atlas", "mask"))
_PEAK = _record(Peak, {
    "name": (_str(label=True), True),
    "map": (_map_ref, False),
    "region": (_REGION, True),
    "references": (_path(), False),
    "sign": (_str(("positive", "negative", "abs")), False),
})
_VALIDATION = _record(Validation, {
    "controls": (_bool, False),
    "roi_overlap": (_list(_ROI_OVERLAP, min_items=0), False),
    "spatial_correlation": (_list(_SPATIAL, min_items=0), False),
    "roi_to_roi": (_ROI_TO_ROI, False),
    "peaks": (_list(_PEAK, min_items=0), False),
})
_DBS = _record(DBS, {
    "table": (_path(), True),
    "patient_column": (_str(), False),
    "outcome_column": (_str(), False),
    "stat": (_str(("t", "z", "r")), False),
    "normalize": (_str(("n", "sum", "abs_sum")), False),
    "n_permutations": (_int(0), False),
    "vat_model": (_str(VAT_MODELS), False),
    "unit": (_str(("mA", "V")), False),
    "network": (_map_ref, False),
    "convergent": (_bool, False),
    "alternative": (_str(("greater", "less", "two-sided")), False),
})
_ALE = _record(ALE, {
    "n_iters": (_int(1), False),
    "voxel_thresh": (_float(0, strict=True, maximum=1), False),
    "cluster_threshold": (_float(0, strict=True, maximum=1), False),
    "sample_size_column": (_str(), False),
    "default_sample_size": (_int(1), False),
    "sets": (_SETS, False),
    "target": (_str(ALE_TARGETS), False),
})
_PLAN = _record(Plan, {
    "primary_sets": (_SETS, False),
    "control_sets": (_list(_SET_NAME, min_items=0), False),
    "random_seed": (_int(0), False),
    "validation": (_VALIDATION, False),
    "dbs": (_DBS, False),
    "ale": (_ALE, False),
})


def default_plan() -> Plan:
    """The plan used without ``--analysis``.

    The ``primary`` set is primary, every other set of the coordinates is a control,
    the control sets' overlaps are correlated with the primary overlap, and nothing else
    runs (ROI, DBS and ALE analyses need inputs or minutes of Monte Carlo: ask for them
    in a plan).
    """
    return Plan()


def load_plan(path: str | Path | None) -> Plan:
    """Read and validate an analysis plan (JSON or YAML).

    Parameters
    ----------
    path : path or None
        The plan file; ``None`` gives :func:`default_plan`.  JSON is recognized by its
        content (a leading ``{``), anything else is read as YAML.

    Returns
    -------
    Plan

    Raises
    ------
    MissingInputError
        The plan or a file it names does not exist (the message names the key).
    ReadError
        The plan cannot be read.
    InputDataError
        A syntax error, an unknown key, a wrong type or value, or a table without the
        needed columns (the message names the key path and the fix).
    """
    if path is None:
        return default_plan()
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"analysis plan {path}: file not found; check the path given to --analysis"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReadError(f"analysis plan {path}: cannot be read ({exc})") from exc
    data = _parse(text, path)
    return plan_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def _parse(text: str, path: Path) -> dict:
    import yaml

    stripped = text.lstrip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"analysis plan {where(path, exc.lineno)}: invalid JSON ({exc.msg}, column "
                f"{exc.colno}); fix the syntax (or write the plan in YAML)"
            ) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputDataError(
                f"analysis plan {where(path, line)}: invalid YAML ({problem}); fix the "
                "syntax (indent nested keys with spaces, not tabs)"
            ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputDataError(
            f"analysis plan {path}: the top level is {_type_name(data)}, not a mapping; "
            "start with keys such as primary_sets:, validation:, dbs:, ale:"
        )
    return data


def plan_from_dict(data: Mapping, base_dir: str | Path | None = None,
                   source: str | None = None) -> Plan:
    """Validate a plan given as a mapping (e.g. the output of :meth:`Plan.to_dict`).

    Parameters
    ----------
    data : mapping
        The plan's content.
    base_dir : path, optional
        Folder that relative paths are resolved against (default: the working folder).
    source : str, optional
        Name of the plan in messages.

    Returns
    -------
    Plan
    """
    ctx = _Ctx(Path(base_dir or Path.cwd()).resolve(), source)
    plan = _PLAN(dict(data), "", ctx)
    plan = Plan(**{f.name: getattr(plan, f.name) for f in fields(Plan) if f.name != "source"},
                source=source)
    _check_plan(plan, ctx)
    return plan


# --------------------------------------------------------------------------- tables


def read_table(path: Path, key: str, label: str = "analysis plan",
               columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a TSV (CSV when the name ends in ``.csv``) as text, checking its columns.

    Parameters
    ----------
    path : Path
        The table.
    key : str
        Plan key that names the table (for messages).
    label : str
        Plan name for messages (``Plan.label``).
    columns : tuple of str
        Required columns.

    Returns
    -------
    DataFrame
        Every value as text; missing values (``n/a``, empty) are NaN.
    """
    sep = "," if str(path).lower().endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            na_values=_NA_VALUES)
    except FileNotFoundError as exc:
        raise MissingInputError(f"{label}, {key}: file not found: {path}; check the path") \
            from exc
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(
            f"{label}, {key} ({path}): the table is empty; write a header line and one "
            "row per entry") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReadError(f"{label}, {key} ({path}): cannot be read as a "
                        f"{'CSV' if sep == ',' else 'TSV'} table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputDataError(
            f"{label}, {key} ({where(path, 1)}): missing column(s) {missing}; the table "
            f"needs {', '.join(columns)} (columns found: {', '.join(table.columns)}; "
            f"{'comma' if sep == ',' else 'tab'}-separated)"
        )
    if len(table) == 0:
        raise InputDataError(f"{label}, {key} ({path}): the table has no rows; add rows")
    return table


def coordinate_table(path: Path, key: str, label: str = "analysis plan",
                     columns: tuple[str, ...] = ("x", "y", "z"),
                     numeric: tuple[str, ...] = ("x", "y", "z")) -> pd.DataFrame:
    """Read a table with numeric columns (e.g. ``x, y, z`` in MNI mm).

    Returns
    -------
    DataFrame
        The ``numeric`` columns as float64, the others as text.
    """
    table = read_table(path, key, label, columns)
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raw = table[column].iloc[bad[0]]
            raise InputDataError(
                f"{label}, {key} ({where(path, int(bad[0]) + 2, column)}): "
                f"{'an empty value' if pd.isna(raw) else repr(raw)} is not a number; "
                "give a number" + (" (MNI mm)" if column in ("x", "y", "z") else "")
            )
        table[column] = values
    return table


def _check_column(table: pd.DataFrame, column: str, path: Path, key: str, label: str) -> None:
    if column not in table.columns:
        raise InputDataError(
            f"{label}, {key}: column '{column}' is not in {path} (columns: "
            f"{', '.join(table.columns)}); name one of them"
        )


def sphere_labels(spec: Spheres, table: pd.DataFrame) -> list[str]:
    """ROI names of a sphere table: ``label_column``, else ``name``/``label``, else ``roi<n>``."""
    column = spec.label_column or next(
        (c for c in ("name", "label") if c in table.columns), None
    )
    if column is None:
        return [f"roi{i + 1}" for i in range(len(table))]
    return [str(v) if not pd.isna(v) else f"roi{i + 1}" for i, v in enumerate(table[column])]


def mask_roi_files(spec: Masks, key: str, label: str = "analysis plan"
                   ) -> tuple[list[Path], pd.DataFrame]:
    """The mask files of a ``masks`` entry and their table.

    With a ``table``, its ``file_column`` lists the files (relative to ``folder`` when
    given, else to the table's folder); without it, ``files`` or every ``.nii``/
    ``.nii.gz`` of ``folder`` (sorted by name).

    Returns
    -------
    files : list of Path
    table : DataFrame
        One row per file: ``roi`` (the file name without extension) and the table's
        columns.
    """
    if spec.table is not None:
        table = read_table(spec.table, f"{key}.table", label, (spec.file_column,))
        root = spec.folder or spec.table.parent
        files = []
        for i, value in enumerate(table[spec.file_column]):
            if pd.isna(value):
                raise InputDataError(
                    f"{label}, {key}.table ({where(spec.table, i + 2, spec.file_column)}): "
                    "empty file name; give the mask file of every row")
            path = Path(str(value).strip()).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise MissingInputError(
                    f"{label}, {key}.table ({where(spec.table, i + 2, spec.file_column)}): "
                    f"mask file not found: {path}; paths in the table are relative to "
                    f"{'the folder' if spec.folder else 'the table'} {root}")
            files.append(path)
        table = table.copy()
    else:
        if spec.files is not None:
            files = list(spec.files)
        elif spec.folder is not None:
            files = sorted(p for p in spec.folder.iterdir()
                           if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
            if not files:
                raise MissingInputError(
                    f"{label}, {key}.folder: no .nii or .nii.gz file in {spec.folder}; "
                    "put the mask images there or list them under 'files'")
        else:
            raise InputDataError(f"{label}, {key}: no masks given; give folder, files or table")
        table = pd.DataFrame(index=range(len(files)))
    names = [re.sub(r"\.nii(\.gz)?$", "", p.name) for p in files]
    table.insert(0, "roi", names)
    return files, table


def atlas_labels(spec: Atlas, key: str, label: str = "analysis plan") -> pd.DataFrame | None:
    """The label table of an atlas (``index``, ``name`` and any columns), or None."""
    if spec.labels is None:
        return None
    table = read_table(spec.labels, f"{key}.labels", label, ("index", "name"))
    index = pd.to_numeric(table["index"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(index) | (index != np.round(index)))
    if bad.size:
        raise InputDataError(
            f"{label}, {key}.labels ({where(spec.labels, int(bad[0]) + 2, 'index')}): "
            f"{table['index'].iloc[bad[0]]!r} is not an integer label; give the atlas value")
    table["index"] = index.astype(np.int64)
    table["name"] = table["name"].astype(str)
    return table


@dataclass(frozen=True)
class DBSPatient:
    """One DBS patient: outcome, VAT images and active contacts (either may be empty)."""

    patient: str
    outcome: float
    vat_files: tuple[Path, ...]
    contacts: pd.DataFrame = field(compare=False, repr=False)


def read_dbs_table(spec: DBS, label: str = "analysis plan") -> list[DBSPatient]:
    """Read the DBS table: one or more rows per patient.

    A row gives VAT images (columns ``vat``, ``vat_left``, ``vat_right``; paths relative
    to the table's folder) or one active contact (``side, x, y, z, amplitude`` and
    optional ``unit``, ``pulse_width_us``, ``impedance_ohm``).  The outcome must be the
    same on every row of a patient.

    Returns
    -------
    list of DBSPatient
        In order of first appearance.
    """
    key = "dbs.table"
    table = read_table(spec.table, key, label, (spec.patient_column, spec.outcome_column))
    vat_columns = [c for c in VAT_COLUMNS if c in table.columns]
    has_contacts = all(c in table.columns for c in CONTACT_COLUMNS)
    if not vat_columns and not has_contacts:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, 1)}): no VAT columns ({', '.join(VAT_COLUMNS)}) "
            f"and no contact columns ({', '.join(CONTACT_COLUMNS)}); add VAT image paths or "
            "the active contacts' coordinates and amplitudes")
    outcome = pd.to_numeric(table[spec.outcome_column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(outcome))
    if bad.size:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, int(bad[0]) + 2, spec.outcome_column)}): "
            f"{table[spec.outcome_column].iloc[bad[0]]!r} is not a number; give the outcome "
            "(e.g. % seizure reduction) of every row")
    empty = np.flatnonzero(table[spec.patient_column].isna().to_numpy())
    if empty.size:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, int(empty[0]) + 2, spec.patient_column)}): "
            "empty patient label; label every row")
    if "unit" not in table.columns and spec.unit is None and has_contacts:
        needs_unit = any(
            not any(pd.notna(table[c].iloc[i]) for c in vat_columns) for i in range(len(table))
        )
        if needs_unit:
            raise InputDataError(
                f"{label}, dbs.unit: the contacts' amplitude unit is unknown; set dbs.unit "
                "to mA or V, or add a 'unit' column to the DBS table")
    patients: dict[str, dict] = {}
    for i in range(len(table)):
        row = table.iloc[i]
        name = str(row[spec.patient_column]).strip()
        entry = patients.setdefault(name, {"outcome": outcome[i], "files": [], "contacts": []})
        if not np.isclose(entry["outcome"], outcome[i]):
            raise InputDataError(
                f"{label}, {key} ({where(spec.table, i + 2, spec.outcome_column)}): patient "
                f"'{name}' has outcomes {entry['outcome']:g} and {outcome[i]:g}; give one "
                "outcome per patient")
        files = [row[c] for c in vat_columns if pd.notna(row[c])]
        for column in vat_columns:
            value = row[column]
            if pd.isna(value):
                continue
            path = Path(str(value).strip()).expanduser()
            path = path if path.is_absolute() else spec.table.parent / path
            if not path.is_file():
                raise MissingInputError(
                    f"{label}, {key} ({where(spec.table, i + 2, column)}): VAT image not "
                    f"found: {path}; paths in the table are relative to its folder")
            entry["files"].append(path)
        if not files:
            if not has_contacts or any(pd.isna(row[c]) for c in CONTACT_COLUMNS):
                raise InputDataError(
                    f"{label}, {key} ({where(spec.table, i + 2)}): the row has neither a VAT "
                    f"image nor a complete contact ({', '.join(CONTACT_COLUMNS)}); fill one")
            entry["contacts"].append(i)
    if has_contacts:
        contacts_all = table.rename(columns={spec.patient_column: "patient"})
        contacts_all["patient"] = contacts_all["patient"].astype(str).str.strip()
        for column in ("x", "y", "z", "amplitude"):
            rows = [r for e in patients.values() for r in e["contacts"]]
            values = pd.to_numeric(contacts_all[column].iloc[rows], errors="coerce")
            bad = [r for r, v in zip(rows, values) if not np.isfinite(v)]
            if bad:
                raise InputDataError(
                    f"{label}, {key} ({where(spec.table, bad[0] + 2, column)}): "
                    f"{contacts_all[column].iloc[bad[0]]!r} is not a number; give a number")
    out = []
    for name, entry in patients.items():
        contacts = (
            contacts_all.iloc[entry["contacts"]].reset_index(drop=True)
            if entry["contacts"] else pd.DataFrame()
        )
        out.append(DBSPatient(name, float(entry["outcome"]), tuple(entry["files"]), contacts))
    if len(out) < 4:
        raise InputDataError(
            f"{label}, {key} ({spec.table}): {len(out)} patient(s); the DBS analyses need at "
            "least 4 (leave-one-out prediction); add patients or remove the dbs section")
    if np.ptp([p.outcome for p in out]) == 0:
        raise InputDataError(
            f"{label}, {key} ({spec.table}): every patient has the same outcome; the R-map "
            "and the prediction need outcomes that vary")
    return out


# --------------------------------------------------------------------------- semantics


def _check_values_present(table: pd.DataFrame, compare: Compare, path: Path, key: str,
                          label: str) -> None:
    _check_column(table, compare.column, path, f"{key}.compare.column", label)
    values = {str(v).strip() for v in table[compare.column] if pd.notna(v)}
    for side in ("a", "b"):
        wanted = getattr(compare, side)
        if wanted not in values:
            raise InputDataError(
                f"{label}, {key}.compare.{side}: no ROI has '{wanted}' in column "
                f"'{compare.column}' of {path} (values: {', '.join(sorted(values))}); use one "
                "of them")
    if compare.a == compare.b:
        raise InputDataError(f"{label}, {key}.compare: a and b are both '{compare.a}'; "
                             "compare two different groups")


def _check_atlas(spec: Atlas, key: str, label: str) -> pd.DataFrame | None:
    labels = atlas_labels(spec, key, label)
    if spec.select is not None:
        if labels is None:
            bad = [s for s in spec.select if not isinstance(s, int)]
            if bad:
                raise InputDataError(
                    f"{label}, {key}.select: region names {bad} need a label table; add "
                    "'labels' or select integer indices")
        else:
            names = set(labels["name"])
            indices = set(labels["index"].tolist())
            unknown = [s for s in spec.select
                       if not (str(s) in names or (isinstance(s, int) and s in indices))]
            if unknown:
                raise InputDataError(
                    f"{label}, {key}.select: region(s) {unknown} are not in {spec.labels}; use "
                    "names or indices of the label table")
    return labels


def _check_map_ref(ref: str | Image, key: str, plan: Plan, ctx: _Ctx,
                   allow_dbs: bool = True) -> None:
    if not isinstance(ref, str) or ref not in DBS_MAPS:
        match = _MAP_REF.match(ref) if isinstance(ref, str) else None
        if match and match.group(2) in RESERVED_SETS:
            raise ctx.error(key, f"'{ref}': the {match.group(2)} seeds have no overlap map",
                            "use a coordinate set, or dbs/convergent for the DBS networks")
        return
    if not allow_dbs:
        raise ctx.error(key, f"'{ref}' is made by the DBS analysis itself",
                        "compare the DBS network with overlap (or another set's overlap)")
    if plan.dbs is None:
        raise ctx.error(key, f"the map '{ref}' needs the dbs section",
                        "add a dbs section or choose another map")
    if ref == "convergent" and not plan.dbs.convergent:
        raise ctx.error(key, "the convergent map is switched off (dbs.convergent: false)",
                        "set dbs.convergent: true or choose another map")


def _check_names(items: tuple, key: str, ctx: _Ctx) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        low = item.name.lower()
        if low in seen:
            raise ctx.error(f"{key}[{i}].name",
                            f"'{item.name}' is also the name of {key}[{seen[low]}]",
                            "give every entry its own name (letters and digits)")
        seen[low] = i


def _check_plan(plan: Plan, ctx: _Ctx) -> None:
    """Cross-key checks and table contents."""
    label = ctx.label
    for key, sets in (("primary_sets", plan.primary_sets),
                      ("control_sets", plan.control_sets or ())):
        for i, name in enumerate(sets):
            if name in RESERVED_SETS:
                raise ctx.error(f"{key}[{i}]", f"'{name}' is reserved for the plan's own seeds",
                                "rename that coordinate set")
    both = set(plan.primary_sets) & set(plan.control_sets or ())
    if both:
        raise ctx.error("control_sets", f"{sorted(both)} are also primary sets",
                        "a set is either primary or control")

    val = plan.validation
    _check_names(val.roi_overlap, "validation.roi_overlap", ctx)
    _check_names(val.spatial_correlation, "validation.spatial_correlation", ctx)
    _check_names(val.peaks, "validation.peaks", ctx)

    for i, item in enumerate(val.roi_overlap):
        key = f"validation.roi_overlap[{i}]"
        _check_map_ref(item.network, f"{key}.network", plan, ctx)
        table, table_path = None, None
        if item.spheres is not None:
            table_path = item.spheres.table
            table = coordinate_table(table_path, f"{key}.spheres.table", label)
            if item.spheres.label_column:
                _check_column(table, item.spheres.label_column, table_path,
                              f"{key}.spheres.label_column", label)
        elif item.masks is not None:
            given = [k for k in ("folder", "files") if getattr(item.masks, k) is not None]
            if item.masks.table is None and len(given) != 1:
                raise ctx.error(f"{key}.masks", "give exactly one of folder, files (or a table)",
                                "a folder of mask images, a list of files, or a table of files")
            if item.masks.files is not None and item.masks.table is not None:
                raise ctx.error(f"{key}.masks", "both files and table given",
                                "list the files in the table's file column instead")
            _, table = mask_roi_files(item.masks, f"{key}.masks", label)
            table_path = item.masks.table
        else:
            table = _check_atlas(item.atlas, f"{key}.atlas", label)
            table_path = item.atlas.labels
        if item.compare is not None:
            if table_path is None:
                raise ctx.error(f"{key}.compare",
                                "the ROIs have no table to take the groups from",
                                "add masks.table (or atlas.labels) with the group column")
            _check_values_present(table, item.compare, table_path, key, label)
        if item.null_model is not None:
            nkey = f"{key}.null_model"
            null = item.null_model
            if null.kind == "regions":
                if null.diameter is not None:
                    raise ctx.error(f"{nkey}.diameter", "a region null has no sphere diameter",
                                    "remove diameter or use kind: spheres")
                if null.atlas is None and item.atlas is None:
                    raise ctx.error(f"{nkey}.atlas",
                                    "a random-region null needs the atlas to draw regions from",
                                    "add null_model.atlas (image, labels) or give the ROIs as "
                                    "atlas")
                if null.atlas is not None:
                    _check_atlas(null.atlas, f"{nkey}.atlas", label)
            else:
                if null.atlas is not None:
                    raise ctx.error(f"{nkey}.atlas", "a random-sphere null draws no atlas regions",
                                    "remove atlas or use kind: regions")
                if null.diameter is None and item.spheres is None:
                    raise ctx.error(f"{nkey}.diameter",
                                    "the random spheres' diameter is unknown",
                                    "add null_model.diameter (mm)")
                if (null.within == "mask") != (null.within_mask is not None):
                    raise ctx.error(f"{nkey}.within_mask",
                                    "within: mask and within_mask go together",
                                    "give both (within: mask, within_mask: <NIfTI>) or neither")
            if null.kind == "regions" and (null.within != "auto" or null.within_mask
                                           is not None or null.shell_mm != 5.0):
                raise ctx.error(f"{nkey}.within", "a region null draws atlas regions, not "
                                "sphere centres", "remove within, within_mask and shell_mm")

    for i, item in enumerate(val.spatial_correlation):
        key = f"validation.spatial_correlation[{i}]"
        for j, ref in enumerate(item.network):
            _check_map_ref(ref, f"{key}.network[{j}]", plan, ctx)
        if item.seeds is not None:
            table = coordinate_table(item.seeds.table, f"{key}.seeds.table", label)
            if item.seeds.label_column:
                _check_column(table, item.seeds.label_column, item.seeds.table,
                              f"{key}.seeds.label_column", label)
        elif item.stat != "t":
            raise ctx.error(f"{key}.stat", "stat applies to a reference seed's map only",
                            "remove stat (the image is used as it is)")

    if val.roi_to_roi is not None:
        key = "validation.roi_to_roi"
        nodes = coordinate_table(val.roi_to_roi.nodes, f"{key}.nodes", label,
                                 columns=("x", "y", "z", "network"))
        if nodes["network"].isna().any():
            row = int(np.flatnonzero(nodes["network"].isna().to_numpy())[0]) + 2
            raise InputDataError(
                f"{label}, {key}.nodes ({where(val.roi_to_roi.nodes, row, 'network')}): "
                "empty network label; label every node")
        if nodes["network"].nunique() < 2:
            raise ctx.error(f"{key}.nodes", "the nodes belong to fewer than 2 networks",
                            "the one-way ANOVA compares >= 2 networks; label nodes by network")
        for j, name in enumerate(val.roi_to_roi.sets or ()):
            if name in RESERVED_SETS:
                raise ctx.error(f"{key}.sets[{j}]", f"'{name}' seeds are not study seeds",
                                "name coordinate sets")

    for i, item in enumerate(val.peaks):
        key = f"validation.peaks[{i}]"
        _check_map_ref(item.map, f"{key}.map", plan, ctx)
        if item.region.spheres is not None:
            coordinate_table(item.region.spheres.table, f"{key}.region.spheres.table", label)
        elif item.region.atlas is not None:
            _check_atlas(item.region.atlas, f"{key}.region.atlas", label)
        if item.references is not None:
            coordinate_table(item.references, f"{key}.references", label,
                             columns=("label", "x", "y", "z"))

    if plan.dbs is not None:
        _check_map_ref(plan.dbs.network, "dbs.network", plan, ctx, allow_dbs=False)
        read_dbs_table(plan.dbs, label)

    if plan.ale is not None:
        for j, name in enumerate(plan.ale.sets or ()):
            if name in RESERVED_SETS:
                raise ctx.error(f"ale.sets[{j}]", f"'{name}' seeds have no coordinates",
                                "name coordinate sets")
