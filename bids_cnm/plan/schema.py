"""The analysis plan's schema: one set of pydantic models.

The loader's validation (:mod:`bids_cnm.plan.load`), the committed JSON Schema
(``bids_cnm/data/plan.schema.json``, printed by ``python -m bids_cnm.plan``) and
the key tables of ``docs/plan.md`` (:mod:`bids_cnm.plan.docs`) all come from these models,
so they cannot disagree.  Every model is frozen and picklable (plans travel through nipype
nodes); the attribute interface is that of the frozen dataclasses they replaced.

Errors a plan can contain are raised as :class:`~pydantic_core.PydanticCustomError` of
type ``plan`` (or ``missing_file``) whose context carries the problem, the fix and, when
the problem sits below the model that found it, the sub-key; :mod:`bids_cnm.plan.load`
turns them (and pydantic's own errors) into one-line messages naming the key path.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import annotated_types as at
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StringConstraints,
    ValidationInfo,
    WrapSerializer,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ALE", "DBS", "Atlas", "Compare", "Image", "Masks", "Null", "Peak", "Plan", "Region",
    "ROIOverlap", "ROIToROI", "SpatialCorrelation", "Spheres", "Validation", "Doc",
    "json_schema", "schema_text", "default_plan", "OVERLAP_MAPS", "DBS_MAPS", "RESERVED_SETS",
    "OVERLAP_DENOMINATORS", "NULL_WITHIN", "ROI_TO_ROI_TESTS", "CONTACT_COLUMNS",
    "VAT_COLUMNS", "SCHEMA_URL",
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
#: what an ROI's % overlap divides by (see ``ROIOverlap``)
OVERLAP_DENOMINATORS = ("roi", "mask")
#: where a random-sphere null draws its centres
NULL_WITHIN = ("auto", "brain", "cortex", "mask")
#: the between-network test of ROI-to-ROI connectivity
ROI_TO_ROI_TESTS = ("nodes", "repeated_measures", "friedman")

#: where editors find the committed JSON Schema of a plan file
SCHEMA_URL = ("https://raw.githubusercontent.com/bids-cnm/bids_cnm/main/bids_cnm/data/"
              "plan.schema.json")

_MAP_REF = re.compile(r"^(overlap|posoverlap|negoverlap)(?::(.+))?$")
_MAP_PATTERN = r"^((overlap|posoverlap|negoverlap)(:.+)?|dbs|dbsrmap|convergent)$"


def invalid(problem: str, fix: str, key: str | None = None,
            kind: str = "plan") -> PydanticCustomError:
    """A plan error: ``problem; fix``, at the sub-key ``key`` of the model raising it."""
    ctx = {"problem": problem, "fix": fix} | ({"key": key} if key else {})
    return PydanticCustomError(kind, "{problem}; {fix}", ctx)


def type_name(value: Any) -> str:
    """How a wrong value is named in messages (YAML's view of it, not Python's)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


@dataclass(frozen=True)
class Doc:
    """How ``docs/plan.md`` shows a key whose type or default reads better in words."""

    type: str | None = None
    default: str | None = None


# --------------------------------------------------------------------------- value types


def _whole(value: Any) -> Any:
    # 1e4 or 10000.0 in a plan means the integer
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _path_check(kind: str):
    def check(value: Any, info: ValidationInfo) -> Path:
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise invalid(f"expected a path, got {type_name(value)}",
                          "give a file path (relative to the plan file's folder or absolute)")
        base = Path((info.context or {}).get("base") or Path.cwd())
        path = Path(str(value).strip()).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        if path.is_dir() if kind == "dir" else path.is_file():
            return path
        what = "folder" if kind == "dir" else "file"
        if path.exists():
            raise invalid(f"{path} is not a {what}", f"give the {what} itself",
                          kind="missing_file")
        raise invalid(f"{what} not found: {path}", "check the path (relative paths are "
                      f"resolved against the plan file's folder {base})", kind="missing_file")

    return check


def _listify(value: Any) -> Any:
    # a single item where a list is expected: the list of it
    return value if isinstance(value, (list, tuple)) else [value]


def _scalar_text(value: Any) -> Any:
    """A table value to match: text or number (kept as text)."""
    if isinstance(value, bool):
        raise invalid(f"got {type_name(value)}", "YAML reads unquoted yes/no/true/false/on/off "
                      "as booleans; quote the value as it is written in the table (e.g. 'yes')")
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise invalid(f"expected a text or number, got {type_name(value)}",
                  "give the value as written in the table")


def _select_item(value: Any) -> Any:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise invalid(f"expected a region name or integer index, got {type_name(value)}",
                  "list names or indices of the atlas label table")


def _map_ref(value: Any, handler) -> Any:
    if isinstance(value, (dict, Image)):
        return handler(value)  # {image: ...}: validated as an Image, key paths intact
    if isinstance(value, str):
        text = value.strip()
        match = _MAP_REF.match(text)
        if match and match.group(2) in RESERVED_SETS:
            raise invalid(f"'{text}': the {match.group(2)} seeds have no overlap map",
                          "use a coordinate set, or dbs/convergent for the DBS networks")
        if match or text in DBS_MAPS:
            return text
    raise invalid(f"{type_name(value)} is not a map",
                  "use overlap, posoverlap or negoverlap (the primary sets' overlap), "
                  "overlap:<set> (another set's), dbs, dbsrmap, convergent, or "
                  "{image: <NIfTI path>}")


Text = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1),
                 Doc("text")]
Label = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1,
                                                   pattern=r"^[A-Za-z0-9]+$"), Doc("label")]
Int0 = Annotated[int, Strict(), at.Ge(0), BeforeValidator(_whole)]
Int1 = Annotated[int, Strict(), at.Ge(1), BeforeValidator(_whole)]
Mm = Annotated[float, Strict(), AllowInfNan(False), at.Gt(0), Doc("mm")]
Fraction = Annotated[float, Strict(), AllowInfNan(False), at.Gt(0), at.Lt(1)]
Flag = Annotated[bool, Strict()]
FilePath = Annotated[Path, BeforeValidator(_path_check("file"), json_schema_input_type=str),
                     Doc("path")]
DirPath = Annotated[Path, BeforeValidator(_path_check("dir"), json_schema_input_type=str),
                    Doc("path")]
SetNames = Annotated[tuple[Text, ...], at.MinLen(1), Doc("list of set names")]
ScalarText = Annotated[str, BeforeValidator(_scalar_text, json_schema_input_type=str | float)]
SelectItem = Annotated[str | int, BeforeValidator(_select_item)]
Alternative = Literal["greater", "less", "two-sided"]
MapStat = Literal["t", "z", "r"]


# --------------------------------------------------------------------------- models


class Section(BaseModel):
    """A mapping of the plan: known keys only (with a hint), ``null`` values as absent."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: keys of which exactly one must be given
    one_of: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # positional arguments in field order, as the dataclasses these models replaced
        super().__init__(**dict(zip(type(self).model_fields, args)), **kwargs)

    # pydantic routes model_validate through a custom __init__, which drops the validation
    # context (the plan's folder); this one only maps positional arguments, so let pydantic
    # treat it as its own
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict:
        # "exactly one of" in the JSON Schema too, so editors flag it
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.one_of:
            schema["oneOf"] = [{"required": [key]} for key in cls.one_of]
        return schema

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # pydantic names the wrong type
        allowed = ", ".join(cls.model_fields)
        for name in data:
            if name is None:
                raise invalid("YAML reads the key 'null' (or '~') as nothing",
                              "name the null model 'null_model'" if "null_model" in
                              cls.model_fields else f"allowed keys here: {allowed}", key="null")
            if name not in cls.model_fields:
                hint = difflib.get_close_matches(str(name), list(cls.model_fields), n=1)
                raise invalid("unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""),
                              f"allowed keys here: {allowed}", key=str(name))
        if cls.one_of:
            given = [k for k in cls.one_of if data.get(k) is not None]
            if len(given) != 1:
                problem = ("none of " if not given else "more than one of ") + ", ".join(
                    given or cls.one_of)
                raise invalid(f"{problem} given", f"give exactly one of: {', '.join(cls.one_of)}")
        return {k: v for k, v in data.items() if v is not None}


class Image(Section):
    """A map given as a NIfTI file (resampled onto the connectome grid when needed)."""

    image: FilePath = Field(description="the NIfTI map")


MapRef = Annotated[
    Image,  # or one of the map names: the wrap validator takes those before Image does
    WrapValidator(_map_ref, json_schema_input_type=(
        Annotated[str, Field(pattern=_MAP_PATTERN)] | Image)),
    WrapSerializer(lambda value, handler: value if isinstance(value, str) else handler(value)),
    Doc("map"),
]


class Spheres(Section):
    """Spheres at the coordinates of a table (``x``, ``y``, ``z`` in MNI mm)."""

    table: FilePath = Field(description="table with columns `x`, `y`, `z` (MNI mm); any "
                            "others are kept")
    diameter: Mm = Field(6.0, description="sphere diameter")
    label_column: Text | None = Field(None, description="column naming the spheres "
                                      "(default `name` or `label` if present, else "
                                      "`roi1`, `roi2`…)")


class Masks(Section):
    """Binary mask images (e.g. lesions): a folder, a list of files, or a table of files."""

    folder: DirPath | None = Field(None, description="every `.nii`/`.nii.gz` of the folder")
    files: Annotated[tuple[FilePath, ...], at.MinLen(1)] | None = Field(
        None, description="the mask files")
    table: FilePath | None = Field(None, description="table whose `file_column` lists the "
                                   "files (relative to `folder` when given, else to the "
                                   "table), one row per ROI, with any group columns")
    file_column: Text = Field("file", description="column of `table` with the files")

    @model_validator(mode="after")
    def _one_source(self) -> Masks:
        if self.table is None and (self.folder is None) == (self.files is None):
            raise invalid("give exactly one of folder, files (or a table)",
                          "a folder of mask images, a list of files, or a table of files")
        if self.files is not None and self.table is not None:
            raise invalid("both files and table given",
                          "list the files in the table's file column instead")
        return self


class Atlas(Section):
    """Regions of an integer-label atlas image with a label table (``index``, ``name``)."""

    image: FilePath = Field(description="integer-label image (resampled nearest-neighbour)")
    labels: FilePath | None = Field(None, description="table with `index`, `name` and any "
                                    "columns")
    select: Annotated[tuple[SelectItem, ...], at.MinLen(1), BeforeValidator(
        _listify, json_schema_input_type=SelectItem | list[SelectItem])] | None = Field(
        None, description="region names or indices (default every region)")


class Null(Section):
    """Null model of a mean ROI overlap: random atlas regions or random in-mask spheres."""

    kind: Literal["regions", "spheres"] = Field(
        description="`regions`: draw as many atlas regions as there are ROIs, uniformly "
        "without replacement; `spheres`: as many spheres centred on random voxels of the "
        "analysis mask")
    n_draws: Int1 = Field(10000, description="number of draws")
    diameter: Annotated[Mm | None, Doc(default="the ROIs' sphere diameter")] = Field(
        None, description="random spheres' diameter (`spheres`; required when the ROIs are "
        "not spheres)")
    atlas: Annotated[Atlas | None, Doc(default="the ROIs' atlas, all regions")] = Field(
        None, description="the atlas to draw from (`regions`; `select` restricts the "
        "candidates, e.g. to cortical regions)")
    alternative: Alternative = Field(
        "greater", description="direction of the permutation p: `(count of null draws at "
        "least as extreme + 1) / (n_draws + 1)`; two-sided is twice the smaller one-sided p")
    within: Literal[NULL_WITHIN] = Field(  # type: ignore[valid-type]
        "auto", description="where random sphere centres are drawn (`spheres` only): `brain` "
        "anywhere in the analysis mask; `cortex` its outer shell (mask voxels within "
        "`shell_mm` of the mask's boundary), to match electrode-like ROIs in depth; `mask` "
        "the voxels of `within_mask` inside the analysis mask; `auto` = `cortex` when every "
        "ROI sphere centre lies in the shell or outside the mask (electrode-like sets, e.g. "
        "10–20 positions), else `brain`")
    within_mask: FilePath | None = Field(None, description="the NIfTI mask of `within: "
                                         "mask` (resampled nearest-neighbour)")
    shell_mm: Mm = Field(5.0, description="thickness of the `cortex` shell")

    @model_validator(mode="after")
    def _kind_keys(self) -> Null:
        if self.kind == "regions":
            if self.diameter is not None:
                raise invalid("a region null has no sphere diameter",
                              "remove diameter or use kind: spheres", key="diameter")
            if self.within != "auto" or self.within_mask is not None or self.shell_mm != 5.0:
                raise invalid("a region null draws atlas regions, not sphere centres",
                              "remove within, within_mask and shell_mm", key="within")
        else:
            if self.atlas is not None:
                raise invalid("a random-sphere null draws no atlas regions",
                              "remove atlas or use kind: regions", key="atlas")
            if (self.within == "mask") != (self.within_mask is not None):
                raise invalid("within: mask and within_mask go together",
                              "give both (within: mask, within_mask: <NIfTI>) or neither",
                              key="within_mask")
        return self


class Compare(Section):
    """Welch test of the ROI overlaps of group ``a`` against group ``b`` of a column."""

    column: Text = Field(description="column of the ROI table with the groups")
    a: ScalarText = Field(description="value of `column` of the first group")
    b: ScalarText = Field(description="value of `column` of the second group")

    @model_validator(mode="after")
    def _two_groups(self) -> Compare:
        if self.a == self.b:
            raise invalid(f"a and b are both '{self.a}'", "compare two different groups")
        return self


class ROIOverlap(Section):
    """% overlap of a set of ROIs (x 100), with null and comparison.

    ``denominator``: ``roi`` (Ji et al. 2025: sum of the network's values in the ROI over
    the number of ROI voxels, outside the analysis mask counted as 0) or ``mask`` (mean
    over the ROI's voxels inside the analysis mask).
    """

    one_of: ClassVar[tuple[str, ...]] = ("spheres", "masks", "atlas")

    name: Label = Field(description="names the outputs (`desc-roioverlap<name>`)")
    network: MapRef = Field("overlap", description="the network whose overlap is measured")
    spheres: Spheres | None = Field(
        None, description="ROIs as spheres: `table` (columns `x`, `y`, `z` in MNI mm, any "
        "others kept), `diameter` (mm, default 6), `label_column` (default `name` or "
        "`label` if present, else `roi1`, `roi2`…)")
    masks: Masks | None = Field(
        None, description="ROIs as mask images (e.g. lesions), resampled nearest-neighbour "
        "onto the grid: `folder` (every `.nii`/`.nii.gz`) or `files` (a list), and "
        "optionally `table` whose `file_column` (default `file`) lists the files, one row "
        "per ROI, with any group columns")
    atlas: Atlas | None = Field(
        None, description="ROIs as atlas regions: `image` (integer labels, resampled "
        "nearest-neighbour), `labels` (TSV with `index`, `name` and any columns), `select` "
        "(names or indices; default every region)")
    null_model: Null | None = Field(
        None, description="null distribution of the set's mean overlap (below)")
    compare: Compare | None = Field(
        None, description="`column`, `a`, `b`: Welch t-test of the ROIs whose `column` is "
        "`a` against those whose `column` is `b`")
    statistic: Literal["mean_of_regions", "pooled"] = Field(
        "mean_of_regions", description="observed statistic: the mean of the ROIs' % "
        "overlaps, or the % overlap of all their voxels pooled")
    denominator: Literal[OVERLAP_DENOMINATORS] = Field(  # type: ignore[valid-type]
        "roi", description="`roi` (Ji et al. 2025): sum of the network's values in the ROI / "
        "number of ROI voxels, outside the analysis mask counted as 0; `mask`: mean over the "
        "ROI's voxels inside the analysis mask")

    @property
    def kind(self) -> str:
        """``spheres``, ``masks`` or ``atlas``."""
        return "spheres" if self.spheres else ("masks" if self.masks else "atlas")

    @model_validator(mode="after")
    def _null_fits_rois(self) -> ROIOverlap:
        null = self.null_model
        if null is not None and null.kind == "regions" and null.atlas is None \
                and self.atlas is None:
            raise invalid("a random-region null needs the atlas to draw regions from",
                          "add null_model.atlas (image, labels) or give the ROIs as atlas",
                          key="null_model.atlas")
        if null is not None and null.kind == "spheres" and null.diameter is None \
                and self.spheres is None:
            raise invalid("the random spheres' diameter is unknown",
                          "add null_model.diameter (mm)", key="null_model.diameter")
        return self


MapRefs = Annotated[tuple[MapRef, ...], at.MinLen(1), Doc("map or list of maps"),
                    BeforeValidator(_listify, json_schema_input_type=MapRef | list[MapRef])]


class SpatialCorrelation(Section):
    """Spatial correlation of networks with a reference map (a seed network or an image)."""

    one_of: ClassVar[tuple[str, ...]] = ("seeds", "image")

    name: Label = Field(description="`desc-spatialcorr<name>`")
    seeds: Spheres | None = Field(
        None, description="a reference *seed network* computed in the same pass over the "
        "connectome: `table` (`x`, `y`, `z`), `diameter` (default 6); all spheres are united "
        "into ONE seed (id `ref<name>`, set `reference`), e.g. the nodes of the "
        "somato-cognitive action network (SCAN)")
    image: FilePath | None = Field(None, description="a reference NIfTI map (resampled "
                                   "linearly onto the grid)")
    network: MapRefs = Field(("overlap",), description="the networks correlated with the "
                             "reference")
    stat: MapStat = Field("t", description="which map of the reference seed (`seeds` only)")
    method: Literal["pearson", "spearman"] = Field(
        "pearson", description="correlation over the voxels finite in both maps")

    @property
    def seed_id(self) -> str:
        """Id of the reference seed made by ``plan_seeds`` (``ref<name>``)."""
        return f"ref{self.name}"

    @model_validator(mode="after")
    def _stat_needs_seeds(self) -> SpatialCorrelation:
        if self.seeds is None and self.stat != "t":
            raise invalid("stat applies to a reference seed's map only",
                          "remove stat (the image is used as it is)", key="stat")
        return self


def _study_sets(sets: tuple[str, ...] | None, key: str, problem: str,
                fix: str = "name coordinate sets") -> None:
    """Reserved set names where study coordinate sets are meant."""
    for j, name in enumerate(sets or ()):
        if name in RESERVED_SETS:
            raise invalid(f"'{name}' {problem}", fix, key=f"{key}[{j}]")


class ROIToROI(Section):
    """Mean connectivity of the study seeds to each network of a parcellation's nodes."""

    nodes: FilePath = Field(description="TSV with `x`, `y`, `z`, `network` and optional "
                            "`name`: one row per node (e.g. the centroids of a "
                            "canonical-network parcellation), at least 2 networks")
    diameter: Mm = Field(6.0, description="sphere diameter of a node")
    sets: Annotated[SetNames | None, Doc("list of sets", "`primary_sets`")] = Field(
        None, description="whose seeds (each subject's value averages the sets' seeds and "
        "the network's nodes)")
    test: Literal[ROI_TO_ROI_TESTS] = Field(  # type: ignore[valid-type]
        "nodes", description="`nodes`: one-way ANOVA of the node means, Welch post hoc; "
        "`repeated_measures`: repeated-measures ANOVA over subjects (subject × network "
        "means), paired t post hoc; `friedman`: Friedman test over subjects, Wilcoxon post "
        "hoc")

    @model_validator(mode="after")
    def _study_seeds(self) -> ROIToROI:
        _study_sets(self.sets, "sets", "seeds are not study seeds")
        return self


class Region(Section):
    """A region given as spheres, atlas regions or a mask image (exactly one)."""

    one_of: ClassVar[tuple[str, ...]] = ("spheres", "atlas", "mask")

    spheres: Spheres | None = Field(None, description="union of spheres")
    atlas: Atlas | None = Field(None, description="union of atlas regions")
    mask: FilePath | None = Field(None, description="a NIfTI mask")


class Peak(Section):
    """Peak of a map inside a region, with distances to reference coordinates."""

    name: Label = Field(description="`desc-peak<name>`")
    map: MapRef = Field("overlap", description="the map searched")
    region: Region = Field(description="exactly one of `spheres` (`table`, `diameter`: union "
                           "of spheres), `atlas` (`image`, `labels`, `select`: union of "
                           "regions), `mask` (a NIfTI)")
    references: FilePath | None = Field(None, description="TSV `label`, `x`, `y`, `z`: "
                                        "distances from the peak (e.g. thalamic nuclei)")
    sign: Literal["positive", "negative", "abs"] = Field(
        "positive", description="maximum, minimum or largest absolute value")


def _unique_names(items: tuple, key: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        low = item.name.lower()
        if low in seen:
            raise invalid(f"'{item.name}' is also the name of validation.{key}[{seen[low]}]",
                          "give every entry its own name (letters and digits)",
                          key=f"{key}[{i}].name")
        seen[low] = i


class Validation(Section):
    """The validation analyses."""

    controls: Flag = Field(True, description="correlate each control set's overlap with the "
                           "primary overlap")
    roi_overlap: tuple[ROIOverlap, ...] = Field((), description="ROI overlaps (below)")
    spatial_correlation: tuple[SpatialCorrelation, ...] = Field(
        (), description="spatial correlations with reference maps")
    roi_to_roi: ROIToROI | None = Field(None, description="connectivity of the study seeds "
                                        "to the networks of a parcellation")
    peaks: tuple[Peak, ...] = Field((), description="peaks of maps inside regions")

    @model_validator(mode="after")
    def _names(self) -> Validation:
        for key in ("roi_overlap", "spatial_correlation", "peaks"):
            _unique_names(getattr(self, key), key)
        return self


class DBS(Section):
    """Deep brain stimulation: patients' VATs and outcomes."""

    table: FilePath = Field(description="the patients (below)")
    patient_column: Text = Field("patient", description="patient label column")
    outcome_column: Text = Field("outcome", description="outcome (e.g. % seizure reduction)")
    stat: MapStat = Field("t", description="which group map of each patient's VAT seed is "
                          "the patient's network")
    normalize: Literal["n", "sum", "abs_sum"] = Field(
        "n", description="DBS network = Σ outcomeᵢ · networkᵢ divided by n (the reference "
        "study), Σ outcome or Σ |outcome|")
    n_permutations: Int0 = Field(1000, description="outcome permutations for the R-map and "
                                 "the leave-one-out prediction")
    alternative: Alternative = Field("greater", description="permutation p of the prediction")
    vat_model: Literal["kuncel2008", "maedler2012", "dembek2017"] = Field(
        "kuncel2008", description="amplitude → VAT radius for contacts (see "
        "`bids_cnm.analyses.dbs.vat_radius_mm`)")
    unit: Literal["mA", "V"] | None = Field(None, description="amplitude unit when the "
                                            "table has no `unit` column")
    network: MapRef = Field("overlap", description="the coordinate network compared with and "
                            "combined into the convergent network")
    convergent: Flag = Field(True, description="compute the convergent network")

    @model_validator(mode="after")
    def _not_own_map(self) -> DBS:
        if isinstance(self.network, str) and self.network in DBS_MAPS:
            raise invalid(f"'{self.network}' is made by the DBS analysis itself",
                          "compare the DBS network with overlap (or another set's overlap)",
                          key="network")
        return self


class ALE(Section):
    """Activation likelihood estimation of the coordinates with NiMARE."""

    n_iters: Int1 = Field(10000, description="Monte-Carlo iterations")
    voxel_thresh: Fraction = Field(0.001, description="cluster-forming voxel-level p")
    cluster_threshold: Fraction = Field(0.05, description="cluster-level FWE alpha")
    sample_size_column: Text | None = Field(
        None, description="coordinate-table column with each study's sample size (else "
        "`sample_size`/`n` when present, else `default_sample_size`)")
    default_sample_size: Int1 = Field(20, description="sample size of studies without one")
    sets: Annotated[SetNames | None, Doc("list of sets", "`primary_sets`")] = Field(
        None, description="coordinates meta-analysed")
    target: Literal["mni152_2mm", "mni152_1mm", "ale_2mm"] = Field(
        "mni152_2mm", description="NiMARE template (maps are written on its grid: "
        "`space-MNI152NLin6Asym_res-2`)")

    @model_validator(mode="after")
    def _sets_are_studies(self) -> ALE:
        _study_sets(self.sets, "sets", "seeds have no coordinates")
        return self


class Plan(Section):
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

    model_config = ConfigDict(title="bids_cnm analysis plan")

    primary_sets: SetNames = Field(("primary",), description="sets whose studies make the "
                                   "coordinate network")
    control_sets: Annotated[Annotated[tuple[Text, ...], Doc("list of set names")] | None,
                            Doc(default="every other set")] = Field(
        None, description="control sets (`[]`: none)")
    random_seed: Int0 = Field(0, description="seed of every random draw")
    validation: Annotated[Validation, Doc(default="see below")] = Field(
        default_factory=Validation, description="the validation analyses")
    dbs: DBS | None = Field(None, description="the DBS analyses")
    ale: ALE | None = Field(None, description="the ALE meta-analysis (`ale: {}` for the "
                            "defaults)")

    # the plan file, for messages: kept out of the schema, of to_dict and of equality
    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The plan file (for messages), or None."""
        return self._source

    @property
    def label(self) -> str:
        """Where the plan comes from, for messages."""
        return f"analysis plan {self._source}" if self._source else "analysis plan"

    def __eq__(self, other: object) -> bool:
        # pydantic compares private attributes too; the source is not part of the plan
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def to_dict(self) -> dict:
        """The plan as JSON-able values in the schema's form (absolute paths, defaults filled)."""
        return self.model_dump(mode="json", exclude_none=True)

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

    @model_validator(mode="after")
    def _cross_keys(self) -> Plan:
        for key, sets in (("primary_sets", self.primary_sets),
                          ("control_sets", self.control_sets)):
            _study_sets(sets, key, "is reserved for the plan's own seeds",
                        "rename that coordinate set")
        both = set(self.primary_sets) & set(self.control_sets or ())
        if both:
            raise invalid(f"{sorted(both)} are also primary sets",
                          "a set is either primary or control", key="control_sets")
        val = self.validation
        refs = [(f"validation.roi_overlap[{i}].network", item.network)
                for i, item in enumerate(val.roi_overlap)]
        refs += [(f"validation.spatial_correlation[{i}].network[{j}]", ref)
                 for i, item in enumerate(val.spatial_correlation)
                 for j, ref in enumerate(item.network)]
        refs += [(f"validation.peaks[{i}].map", item.map) for i, item in enumerate(val.peaks)]
        for key, ref in refs:
            if not isinstance(ref, str) or ref not in DBS_MAPS:
                continue
            if self.dbs is None:
                raise invalid(f"the map '{ref}' needs the dbs section",
                              "add a dbs section or choose another map", key=key)
            if ref == "convergent" and not self.dbs.convergent:
                raise invalid("the convergent map is switched off (dbs.convergent: false)",
                              "set dbs.convergent: true or choose another map", key=key)
        return self


def default_plan() -> Plan:
    """The plan used without ``--analysis``.

    The ``primary`` set is primary, every other set of the coordinates is a control,
    the control sets' overlaps are correlated with the primary overlap, and nothing else
    runs (ROI, DBS and ALE analyses need inputs or minutes of Monte Carlo: ask for them
    in a plan).
    """
    return Plan()


#: every model by class name (pydantic names the class in a wrong-type error)
MODELS = {cls.__name__: cls for cls in Section.__subclasses__()}


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a plan file, as committed in ``bids_cnm/data``."""
    schema = Plan.model_json_schema(mode="validation")
    schema["properties"] = {"$schema": {
        "type": "string", "description": "the JSON Schema of the plan, for editors (the "
        "loader ignores it)"}} | schema["properties"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_URL} | schema


def schema_text() -> str:
    """``plan.schema.json`` as committed (and as ``python -m bids_cnm.plan`` prints it)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """``python -m bids_cnm.plan``: print the JSON Schema of a plan file."""
    sys.stdout.write(schema_text())
    return 0
