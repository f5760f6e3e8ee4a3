"""Tests of bids_cnm.plan: loading, defaults, and every validation error naming its key."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydantic
import pytest
import yaml

from bids_cnm.errors import InputDataError, MissingInputError
from bids_cnm.plan import (
    DBS,
    Image,
    Plan,
    default_plan,
    load_plan,
    plan_from_dict,
    read_dbs_table,
)

SHAPE = (20, 24, 20)
AFFINE = np.array([[4.0, 0, 0, -40], [0, 4.0, 0, -56], [0, 0, 4.0, -32], [0, 0, 0, 1]])


def _tsv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _img(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Every input file a full plan names, in ``tmp_path/inputs``."""
    root = tmp_path / "inputs"
    (root / "masks").mkdir(parents=True)
    _tsv(root / "spheres.tsv", [
        {"name": f"s{i}", "x": -20 + 4 * i, "y": -24, "z": 12, "group": "g1" if i < 3 else "g2"}
        for i in range(6)])
    for i in range(2):
        data = np.zeros(SHAPE, np.uint8)
        data[5 + i, 5:8, 5:8] = 1
        _img(root / "masks" / f"m{i}.nii.gz", data)
    _tsv(root / "masks.tsv", [{"file": "m0.nii.gz", "group": "yes"},
                              {"file": "m1.nii.gz", "group": "no"}])
    atlas = np.zeros(SHAPE, np.int16)
    atlas[2:6, 2:6, 2:6], atlas[10:14, 10:14, 10:14], atlas[14:18, 4:8, 8:12] = 1, 2, 3
    _img(root / "atlas.nii.gz", atlas)
    _tsv(root / "atlas.tsv", [{"index": 1, "name": "thal", "network": "a"},
                              {"index": 2, "name": "pcc", "network": "a"},
                              {"index": 3, "name": "m1", "network": "b"}])
    _tsv(root / "nodes.tsv", [{"name": "n1", "x": -20, "y": -24, "z": 12, "network": "A"},
                              {"name": "n2", "x": 20, "y": -24, "z": 12, "network": "B"}])
    _tsv(root / "refs.tsv", [{"label": "CM", "x": -10, "y": -18, "z": 4}])
    _tsv(root / "dbs.tsv", [
        {"patient": f"P{p}", "outcome": 20 * p, "side": side, "x": sx * 10, "y": -18, "z": 4,
         "amplitude": 3, "unit": "mA"}
        for p in range(1, 5) for side, sx in (("L", -1), ("R", 1))])
    _img(root / "image.nii.gz", np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    return root


def full_plan() -> dict:
    """A plan using every key, with paths relative to ``inputs/``."""
    return {
        "primary_sets": ["primary"],
        "control_sets": ["control"],
        "random_seed": 3,
        "validation": {
            "controls": True,
            "roi_overlap": [
                {"name": "Spheres", "spheres": {"table": "spheres.tsv", "diameter": 8,
                                                "label_column": "name"},
                 "compare": {"column": "group", "a": "g1", "b": "g2"}},
                {"name": "Masks", "network": "posoverlap",
                 "masks": {"folder": "masks", "table": "masks.tsv"},
                 "compare": {"column": "group", "a": "yes", "b": "no"}},
                {"name": "Electrodes", "spheres": {"table": "spheres.tsv", "diameter": 25},
                 "denominator": "mask",
                 "null_model": {"kind": "spheres", "n_draws": 50, "alternative": "two-sided",
                                "within": "cortex", "shell_mm": 6}},
                {"name": "Atlas", "network": {"image": "image.nii.gz"},
                 "atlas": {"image": "atlas.nii.gz", "labels": "atlas.tsv", "select": ["thal"]},
                 "null_model": {"kind": "regions", "n_draws": 50}},
            ],
            "spatial_correlation": [
                {"name": "Scan", "seeds": {"table": "spheres.tsv", "diameter": 6},
                 "network": ["overlap", "overlap:control"], "stat": "z"},
                {"name": "Img", "image": "image.nii.gz", "network": "dbs"},
            ],
            "roi_to_roi": {"nodes": "nodes.tsv", "diameter": 6, "test": "friedman"},
            "peaks": [
                {"name": "Thal", "map": "convergent", "references": "refs.tsv",
                 "region": {"atlas": {"image": "atlas.nii.gz", "labels": "atlas.tsv",
                                      "select": ["thal", 2]}}},
                {"name": "Mask", "region": {"mask": "masks/m0.nii.gz"}, "sign": "abs"},
            ],
        },
        "dbs": {"table": "dbs.tsv", "n_permutations": 99, "normalize": "sum"},
        "ale": {"n_iters": 10, "sets": ["primary"]},
    }


def write_plan(folder: Path, content: dict, fmt: str = "yml") -> Path:
    path = folder / f"plan.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(content, indent=1))
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _set(data: dict, key: str, value: object) -> dict:
    """Set (or with ``value=DELETE`` delete) the item at a dotted key path."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    target = data
    for part in parts[:-1]:
        target = target[int(part[1:-1])] if part.startswith("[") else target[part]
    last = parts[-1]
    last = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


# --------------------------------------------------------------------------- loading


def test_default_plan():
    plan = load_plan(None)
    assert plan == default_plan() == Plan()
    assert plan.primary_sets == ("primary",) and plan.control_sets is None
    assert plan.validation.controls and not plan.validation.roi_overlap
    assert plan.dbs is None and plan.ale is None
    assert plan.controls_in(["primary", "control", "ctl2", "dbs", "reference"]) == [
        "control", "ctl2"]


def test_full_plan_loads_with_defaults_and_absolute_paths(inputs, tmp_path, monkeypatch):
    path = write_plan(inputs, full_plan())
    monkeypatch.chdir(tmp_path)  # relative paths follow the plan file, not the working folder
    plan = load_plan(path)
    rois = plan.validation.roi_overlap
    assert rois[0].spheres.table == (inputs / "spheres.tsv").resolve()
    assert rois[0].kind == "spheres" and rois[1].kind == "masks" and rois[3].kind == "atlas"
    assert rois[1].masks.folder == (inputs / "masks").resolve()
    assert rois[3].network == Image((inputs / "image.nii.gz").resolve())
    assert rois[3].atlas.select == ("thal",)
    assert rois[2].null_model.n_draws == 50 and rois[2].null_model.kind == "spheres"
    assert rois[0].network == "overlap" and rois[0].statistic == "mean_of_regions"
    # the study's conventions by default, the others as asked
    assert rois[0].denominator == "roi" and rois[2].denominator == "mask"
    assert (rois[2].null_model.within, rois[2].null_model.shell_mm) == ("cortex", 6.0)
    assert rois[3].null_model.within == "auto" and rois[3].null_model.within_mask is None
    assert plan.validation.roi_to_roi.test == "friedman"
    sc = plan.validation.spatial_correlation
    assert sc[0].network == ("overlap", "overlap:control") and sc[0].seed_id == "refScan"
    assert sc[1].network == ("dbs",) and sc[1].image == (inputs / "image.nii.gz").resolve()
    assert plan.validation.peaks[0].region.atlas.select == ("thal", 2)
    assert plan.validation.peaks[1].region.mask == (inputs / "masks" / "m0.nii.gz").resolve()
    assert plan.dbs == DBS(table=(inputs / "dbs.tsv").resolve(), n_permutations=99,
                           normalize="sum")
    assert plan.ale.n_iters == 10 and plan.ale.voxel_thresh == 0.001
    assert plan.random_seed == 3 and plan.source == str(path)


def test_yaml_and_json_are_equivalent(inputs):
    from_yaml = load_plan(write_plan(inputs, full_plan(), "yml"))
    from_json = load_plan(write_plan(inputs, full_plan(), "json"))
    assert from_yaml == from_json
    assert from_yaml.to_dict() == from_json.to_dict()
    # JSON is recognized by content, whatever the extension
    odd = inputs / "plan.txt"
    odd.write_text(json.dumps(full_plan()))
    assert load_plan(odd) == from_json


def test_round_trip_and_pickle(inputs, tmp_path):
    plan = load_plan(write_plan(inputs, full_plan()))
    data = plan.to_dict()
    json.dumps(data)  # JSON-able
    assert "source" not in data
    again = plan_from_dict(data, base_dir=tmp_path)  # absolute paths: base_dir is irrelevant
    assert again == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert hash(plan) == hash(again)
    # a to_dict written out loads back too
    assert load_plan(write_plan(tmp_path, data, "json")) == plan


def test_empty_plan_is_the_default(tmp_path):
    path = tmp_path / "plan.yml"
    path.write_text("# nothing yet\n")
    assert load_plan(path) == default_plan()


def test_paths_relative_to_a_subfolder_plan(inputs, tmp_path):
    sub = tmp_path / "plans" / "v1"
    sub.mkdir(parents=True)
    content = full_plan()
    content["dbs"]["table"] = "../../inputs/dbs.tsv"
    content["validation"] = {"roi_to_roi": {"nodes": str(inputs / "nodes.tsv")}}  # absolute
    plan = load_plan(write_plan(sub, {k: content[k] for k in ("dbs", "validation")}))
    assert plan.dbs.table == (inputs / "dbs.tsv").resolve()
    assert plan.validation.roi_to_roi.nodes == (inputs / "nodes.tsv").resolve()


def test_read_dbs_table_contacts_and_vat_images(inputs):
    data = np.zeros(SHAPE, np.uint8)
    data[8:10, 8:10, 8:10] = 1
    _img(inputs / "vat.nii.gz", data)
    table = pd.read_csv(inputs / "dbs.tsv", sep="\t")
    table = pd.concat([table, pd.DataFrame([{"patient": "P5", "outcome": 0,
                                              "vat_left": "vat.nii.gz"}])])
    table.to_csv(inputs / "dbs2.tsv", sep="\t", index=False, na_rep="n/a")
    patients = read_dbs_table(DBS(table=inputs / "dbs2.tsv"))
    assert [p.patient for p in patients] == ["P1", "P2", "P3", "P4", "P5"]
    assert [p.outcome for p in patients] == [20, 40, 60, 80, 0]
    assert len(patients[0].contacts) == 2 and not patients[0].vat_files
    assert patients[4].vat_files == (inputs / "vat.nii.gz",) and len(patients[4].contacts) == 0


# --------------------------------------------------------------------------- errors

# (key path to change, new value, exception, substrings of the message)
CASES = [
    # unknown keys: named, with the allowed keys
    ("validaton", {}, InputDataError, ["validaton: unknown key (did you mean 'validation'?)",
                                       "allowed keys here: primary_sets"]),
    ("validation.roi_overlap[1].nul", {}, InputDataError,
     ["validation.roi_overlap[1].nul: unknown key", "null_model"]),
    ("validation.peaks[0].region.atlas.radius", 3, InputDataError,
     ["validation.peaks[0].region.atlas.radius: unknown key", "image, labels, select"]),
    ("dbs.permutations", 3, InputDataError,
     ["dbs.permutations: unknown key (did you mean 'n_permutations'?)"]),
    ("ale.iterations", 3, InputDataError, ["ale.iterations: unknown key", "n_iters"]),
    # wrong types
    ("primary_sets", "primary", InputDataError, ["primary_sets: expected a list"]),
    ("validation.roi_overlap[2].null_model.n_draws", "many", InputDataError,
     ["validation.roi_overlap[2].null_model.n_draws: expected an integer"]),
    ("validation.roi_overlap[0].spheres.diameter", "big", InputDataError,
     ["validation.roi_overlap[0].spheres.diameter: expected a number"]),
    ("validation.controls", "yes", InputDataError,
     ["validation.controls: expected true or false"]),
    ("dbs.n_permutations", True, InputDataError,
     ["dbs.n_permutations: expected an integer, got the boolean true"]),
    ("validation.roi_overlap", {"name": "x"}, InputDataError,
     ["validation.roi_overlap: expected a list"]),
    ("validation.roi_to_roi", ["nodes.tsv"], InputDataError,
     ["validation.roi_to_roi: expected a mapping"]),
    ("validation.roi_overlap[0].spheres.table", 5, InputDataError,
     ["validation.roi_overlap[0].spheres.table: expected a path"]),
    ("validation.roi_overlap[0].compare.a", True, InputDataError,
     ["validation.roi_overlap[0].compare.a: got the boolean true", "quote"]),
    ("validation.peaks[0].region.atlas.select", [1.5], InputDataError,
     ["validation.peaks[0].region.atlas.select[0]: expected a region name or integer"]),
    ("validation.spatial_correlation[0].network", [3], InputDataError,
     ["validation.spatial_correlation[0].network[0]: 3 (int) is not a map"]),
    # missing files
    ("validation.roi_overlap[2].spheres.table", "nope.tsv", MissingInputError,
     ["validation.roi_overlap[2].spheres.table: file not found", "nope.tsv",
      "resolved against the plan file's folder"]),
    ("validation.roi_overlap[1].masks.folder", "no_folder", MissingInputError,
     ["validation.roi_overlap[1].masks.folder: folder not found"]),
    ("validation.roi_overlap[3].atlas.image", "masks", MissingInputError,
     ["validation.roi_overlap[3].atlas.image:", "is not a file"]),
    ("dbs.table", "dbs_missing.tsv", MissingInputError, ["dbs.table: file not found"]),
    ("validation.peaks[1].region.mask", "masks/m9.nii.gz", MissingInputError,
     ["validation.peaks[1].region.mask: file not found"]),
    ("validation.spatial_correlation[1].image", "x.nii.gz", MissingInputError,
     ["validation.spatial_correlation[1].image: file not found"]),
    # bad values
    ("random_seed", -1, InputDataError, ["random_seed: -1 is too small", ">= 0"]),
    ("validation.roi_overlap[2].null_model.kind", "random", InputDataError,
     ["validation.roi_overlap[2].null_model.kind: 'random' is not allowed",
      "regions, spheres"]),
    ("validation.roi_overlap[2].null_model.alternative", "greatr", InputDataError,
     ["alternative: 'greatr' is not allowed (did you mean 'greater'?)"]),
    ("validation.roi_overlap[0].name", "EEG_fMRI", InputDataError,
     ["validation.roi_overlap[0].name: 'EEG_fMRI' is not a valid name", "letters and digits"]),
    ("validation.roi_overlap[1].name", "spheres", InputDataError,
     ["validation.roi_overlap[1].name: 'spheres' is also the name of "
      "validation.roi_overlap[0]"]),
    ("validation.roi_overlap[0].spheres.diameter", 0, InputDataError,
     ["validation.roi_overlap[0].spheres.diameter: 0 is out of range", "> 0"]),
    ("ale.voxel_thresh", 1.5, InputDataError, ["ale.voxel_thresh: 1.5 is out of range"]),
    ("validation.roi_overlap[0].atlas", {"image": "atlas.nii.gz"}, InputDataError,
     ["validation.roi_overlap[0]: more than one of spheres, atlas given",
      "exactly one of: spheres, masks, atlas"]),
    ("validation.roi_overlap[0].spheres", DELETE, InputDataError,
     ["validation.roi_overlap[0]: none of spheres, masks, atlas given"]),
    ("validation.roi_overlap[0].name", DELETE, InputDataError,
     ["validation.roi_overlap[0].name: required key is missing"]),
    ("validation.roi_overlap[0].network", "overlap:dbs", InputDataError,
     ["validation.roi_overlap[0].network: 'overlap:dbs'"]),
    ("validation.roi_overlap[0].network", "tmap", InputDataError,
     ["validation.roi_overlap[0].network: 'tmap' (str) is not a map"]),
    ("dbs.network", "convergent", InputDataError,
     ["dbs.network: 'convergent' is made by the DBS analysis itself"]),
    ("dbs.convergent", False, InputDataError,
     ["validation.peaks[0].map: the convergent map is switched off (dbs.convergent: false)"]),
    ("control_sets", ["primary"], InputDataError, ["control_sets: ['primary'] are also primary"]),
    ("primary_sets", ["dbs"], InputDataError, ["primary_sets[0]: 'dbs' is reserved"]),
    ("validation.roi_overlap[0].compare.b", "g3", InputDataError,
     ["validation.roi_overlap[0].compare.b: no ROI has 'g3' in column 'group'", "g1, g2"]),
    ("validation.roi_overlap[0].compare.column", "grp", InputDataError,
     ["validation.roi_overlap[0].compare.column: column 'grp' is not in"]),
    ("validation.roi_overlap[0].spheres.label_column", "nom", InputDataError,
     ["validation.roi_overlap[0].spheres.label_column: column 'nom'"]),
    ("validation.roi_overlap[3].atlas.select", ["thalamus"], InputDataError,
     ["validation.roi_overlap[3].atlas.select: region(s) ['thalamus'] are not in"]),
    ("validation.roi_overlap[1].null_model", {"kind": "regions"}, InputDataError,
     ["validation.roi_overlap[1].null_model.atlas: a random-region null needs the atlas"]),
    ("validation.roi_overlap[1].null_model", {"kind": "spheres"}, InputDataError,
     ["validation.roi_overlap[1].null_model.diameter: the random spheres' diameter"]),
    ("validation.roi_overlap[3].null_model.diameter", 10, InputDataError,
     ["validation.roi_overlap[3].null_model.diameter: a region null has no sphere diameter"]),
    ("validation.roi_overlap[2].compare", {"column": "group", "a": "g1", "b": "g2"},
     InputDataError, []),  # allowed: spheres tables have columns: no error expected
    ("validation.roi_overlap[1].masks.files", ["masks/m0.nii.gz"], InputDataError,
     ["validation.roi_overlap[1].masks: both files and table given"]),
    ("validation.spatial_correlation[1].stat", "z", InputDataError,
     ["validation.spatial_correlation[1].stat: stat applies to a reference seed's map only"]),
    ("validation.peaks[0].region", {}, InputDataError,
     ["validation.peaks[0].region: none of spheres, atlas, mask given"]),
    ("ale.sets", [], InputDataError, ["ale.sets: the list is empty"]),
    ("validation.roi_overlap[0].denominator", "brain", InputDataError,
     ["validation.roi_overlap[0].denominator: 'brain' is not allowed", "roi, mask"]),
    ("validation.roi_overlap[2].null_model.within", "surface", InputDataError,
     ["validation.roi_overlap[2].null_model.within: 'surface' is not allowed",
      "auto, brain, cortex, mask"]),
    ("validation.roi_overlap[2].null_model.within", "mask", InputDataError,
     ["validation.roi_overlap[2].null_model.within_mask: within: mask and within_mask go "
      "together"]),
    ("validation.roi_overlap[2].null_model.within_mask", "masks/m0.nii.gz", InputDataError,
     ["validation.roi_overlap[2].null_model.within_mask: within: mask and within_mask"]),
    ("validation.roi_overlap[2].null_model.shell_mm", 0, InputDataError,
     ["validation.roi_overlap[2].null_model.shell_mm: 0 is out of range"]),
    ("validation.roi_overlap[3].null_model.within", "cortex", InputDataError,
     ["validation.roi_overlap[3].null_model.within: a region null draws atlas regions"]),
    ("validation.roi_to_roi.test", "anova", InputDataError,
     ["validation.roi_to_roi.test: 'anova' is not allowed",
      "nodes, repeated_measures, friedman"]),
    ("validation.roi_to_roi.sets", ["reference"], InputDataError,
     ["validation.roi_to_roi.sets[0]: 'reference' seeds are not study seeds"]),
]


@pytest.mark.parametrize("key,value,error,parts", CASES, ids=[f"{c[0]}={c[1]!r}"[:60]
                                                               for c in CASES])
def test_errors_name_the_key(inputs, key, value, error, parts):
    content = _set(copy.deepcopy(full_plan()), key, value)
    path = write_plan(inputs, content)
    if not parts:
        load_plan(path)
        return
    with pytest.raises(error) as info:
        load_plan(path)
    message = info.value.message
    assert str(path) in message
    for part in parts:
        assert part in message, message
    assert info.value.exit_code == (66 if error is MissingInputError else 65)


TABLE_CASES = [
    # (file, rows, key, substrings)
    ("spheres.tsv", [{"name": "a", "x": 1, "y": "ten", "z": 3}],
     "validation.roi_overlap[0].spheres.table", ["row 2, column 'y'", "'ten' is not a number"]),
    ("spheres.tsv", [{"name": "a", "x": 1, "y": 2}], "validation.roi_overlap[0].spheres.table",
     ["missing column(s) ['z']"]),
    ("nodes.tsv", [{"x": 1, "y": 2, "z": 3, "network": "A"}], "validation.roi_to_roi.nodes",
     ["fewer than 2 networks"]),
    ("nodes.tsv", [{"x": 1, "y": 2, "z": 3}], "validation.roi_to_roi.nodes",
     ["missing column(s) ['network']"]),
    ("refs.tsv", [{"name": "CM", "x": 1, "y": 2, "z": 3}], "validation.peaks[0].references",
     ["missing column(s) ['label']"]),
    ("atlas.tsv", [{"index": "one", "name": "thal"}], "validation.roi_overlap[3].atlas.labels",
     ["row 2, column 'index'", "not an integer label"]),
    ("masks.tsv", [{"file": "m7.nii.gz", "group": "yes"}, {"file": "m1.nii.gz", "group": "no"}],
     "validation.roi_overlap[1].masks.table", ["row 2, column 'file'", "mask file not found"]),
    ("dbs.tsv", [{"patient": "P1", "outcome": 5, "side": "L", "x": 1, "y": 2, "z": 3,
                  "amplitude": 3, "unit": "mA"}] * 2, "dbs.table",
     ["1 patient(s)", "at least 4"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": "good" if i == 2 else 5, "side": "L", "x": 1,
                  "y": 2, "z": 3, "amplitude": 3, "unit": "mA"} for i in range(4)], "dbs.table",
     ["row 4, column 'outcome'", "'good' is not a number"]),
    ("dbs.tsv", [{"patient": "P1" if i < 2 else f"P{i}", "outcome": i, "side": "L", "x": 1,
                  "y": 2, "z": 3, "amplitude": 3, "unit": "mA"} for i in range(5)], "dbs.table",
     ["row 3, column 'outcome'", "patient 'P1' has outcomes 0 and 1"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": i, "side": "L", "x": 1, "y": 2, "z": 3,
                  "amplitude": 3} for i in range(4)], "dbs.unit", ["amplitude unit is unknown"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": i} for i in range(4)], "dbs.table",
     ["no VAT columns"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": i, "vat_left": "v.nii.gz"} for i in range(4)],
     "dbs.table", ["row 2, column 'vat_left'", "VAT image not found"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": i, "side": "L", "x": 1, "y": 2,
                  "z": 3 if i else None, "amplitude": 3, "unit": "mA"} for i in range(4)],
     "dbs.table", ["row 2", "neither a VAT image nor a complete contact"]),
    ("dbs.tsv", [{"patient": f"P{i}", "outcome": 5, "side": "L", "x": 1, "y": 2, "z": 3,
                  "amplitude": 3, "unit": "mA"} for i in range(4)], "dbs.table",
     ["same outcome"]),
]


@pytest.mark.parametrize("name,rows,key,parts", TABLE_CASES,
                         ids=[f"{c[0]}:{c[3][0]}"[:50] for c in TABLE_CASES])
def test_table_content_errors_name_the_key(inputs, name, rows, key, parts):
    _tsv(inputs / name, rows)
    with pytest.raises((InputDataError, MissingInputError)) as info:
        load_plan(write_plan(inputs, full_plan()))
    message = info.value.message
    assert f"{key}" in message, message
    for part in parts:
        assert part in message, message


def test_yaml_null_key_and_syntax_errors(inputs):
    path = inputs / "plan.yml"
    path.write_text("validation:\n  roi_overlap:\n    - name: A\n      spheres: {table: "
                    "spheres.tsv}\n      null: {kind: spheres}\n")
    with pytest.raises(InputDataError, match=r"validation\.roi_overlap\[0\]\.null: YAML reads "
                                             r"the key 'null'.*null_model"):
        load_plan(path)
    path.write_text("validation:\n  controls: [true\n")
    with pytest.raises(InputDataError, match=r"plan\.yml, row \d: invalid YAML"):
        load_plan(path)
    path.write_text('{"validation": {"controls": true,}}')
    with pytest.raises(InputDataError, match=r"plan\.yml, row 1: invalid JSON"):
        load_plan(path)
    path.write_text("- primary_sets\n")
    with pytest.raises(InputDataError, match="top level is a list, not a mapping"):
        load_plan(path)
    with pytest.raises(MissingInputError, match="file not found.*--analysis"):
        load_plan(inputs / "missing.yml")


def test_demo_plan_uses_every_analysis(tmp_path):
    from bids_cnm.demo.plan import make_demo_plan

    plan = load_plan(make_demo_plan(tmp_path / "demo"))
    val = plan.validation
    assert {r.kind for r in val.roi_overlap} == {"spheres", "masks", "atlas"}
    assert {r.null_model.kind for r in val.roi_overlap if r.null_model} == {"spheres", "regions"}
    assert sum(r.compare is not None for r in val.roi_overlap) == 3
    assert {("seeds" if s.seeds else "image") for s in val.spatial_correlation} == {
        "seeds", "image"}
    assert val.roi_to_roi is not None and val.controls
    assert {("atlas" if p.region.atlas else "mask") for p in val.peaks} == {"atlas", "mask"}
    assert plan.ale.n_iters == 100
    patients = read_dbs_table(plan.dbs)
    assert len(patients) == 6
    assert sum(bool(p.vat_files) for p in patients) == 2  # the others by contacts
    # outcomes fall with the contacts' distance from the DMN thalamic blob
    dist = [np.linalg.norm(p.contacts[["x", "y", "z"]].to_numpy(float)
                           - [[-10, -18, 8], [10, -18, 8]], axis=1).mean()
            for p in patients if len(p.contacts)]
    outcome = [p.outcome for p in patients if len(p.contacts)]
    assert np.corrcoef(dist, outcome)[0, 1] < -0.8


# --------------------------------------------------------------------------- JSON Schema


def _json_validator():
    jsonschema = pytest.importorskip("jsonschema")
    from bids_cnm.plan.docs import SCHEMA_JSON

    schema = json.loads(SCHEMA_JSON.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_committed_json_schema_is_generated_from_the_models(capsys):
    from bids_cnm.plan.docs import SCHEMA_JSON
    from bids_cnm.plan.schema import main

    assert main() == 0  # python -m bids_cnm.plan
    assert SCHEMA_JSON.read_text() == capsys.readouterr().out, (
        "bids_cnm/data/plan.schema.json differs from the models: run "
        "`python -m bids_cnm.cli.docs`")


def test_json_schema_accepts_the_example_plans(tmp_path):
    from bids_cnm.demo.plan import make_demo_plan

    validator = _json_validator()
    demo = make_demo_plan(tmp_path / "demo")
    text = demo.read_text()
    # the first line points editors at the schema, written beside the plan
    first = text.splitlines()[0]
    assert first == "# yaml-language-server: $schema=plan.schema.json"
    assert (demo.parent / "plan.schema.json").read_text() == json.dumps(
        validator.schema, indent=2, ensure_ascii=False) + "\n"
    validator.validate(yaml.safe_load(text))
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plan.md").read_text()
    example = docs.split("## A complete example", 1)[1].split("```yaml\n", 1)[1]
    validator.validate(yaml.safe_load(example.split("```", 1)[0]))
    validator.validate(full_plan())
    validator.validate(Plan().to_dict())


@pytest.mark.parametrize("key,value", [
    ("validaton", {}), ("validation.roi_overlap[0].nul", {}), ("random_seed", -1),
    ("validation.roi_overlap[2].null_model.kind", "random"), ("ale.voxel_thresh", 1.5),
    ("validation.roi_overlap[0].name", "EEG_fMRI"), ("validation.controls", "yes"),
    ("validation.spatial_correlation[0].network", ["tmap"]), ("primary_sets", []),
    ("validation.roi_overlap[0].atlas", {"image": "atlas.nii.gz"}),
    ("validation.peaks[0].region", {}),
])
def test_json_schema_rejects_what_the_loader_rejects(key, value):
    errors = list(_json_validator().iter_errors(_set(copy.deepcopy(full_plan()), key, value)))
    assert errors, f"{key}={value!r} passes the JSON Schema"


def test_schema_key_is_ignored_and_models_are_frozen(inputs):
    content = {"$schema": "plan.schema.json", **full_plan()}
    plan = load_plan(write_plan(inputs, content, "json"))
    assert plan == load_plan(write_plan(inputs, full_plan()))
    assert "$schema" not in plan.to_dict()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.random_seed = 4  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.validation.roi_overlap[0].spheres.diameter = 4  # type: ignore[misc]


def test_plan_images_are_checked_when_the_plan_loads(tmp_path):
    """A broken or 4-D NIfTI named by the plan fails at load, naming its key (issue 9.10)."""
    import nibabel as nb
    import numpy as np

    from bids_cnm.errors import InputDataError
    from bids_cnm.plan import plan_from_dict

    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    volume4d = tmp_path / "four.nii.gz"
    nb.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)).to_filename(volume4d)
    for path, words in ((broken, "not a readable NIfTI"), (volume4d, "give a 3-D image")):
        data = {"validation": {"spatial_correlation": [
            {"name": "ref", "image": str(path)}]}}
        with pytest.raises(InputDataError, match=words) as info:
            plan_from_dict(data, base_dir=tmp_path)
        assert "validation.spatial_correlation[0].image" in str(info.value)
