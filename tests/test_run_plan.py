"""Tests of the plan's seeds/nodes and of run_plan, on GroupResults built from arrays.

No connectome: the t-maps of every seed are synthetic, with planted structure, so each
output is checked against a direct numpy/scipy computation and against the planted truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_cnm.analyses import roi
from bids_cnm.analyses.dbs import vat_from_contacts
from bids_cnm.analyses.plan_seeds import plan_nodes, plan_seeds
from bids_cnm.analyses.run_plan import run_plan
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import concat_seeds, make_seeds, sphere_voxels
from bids_cnm.errors import InputDataError
from bids_cnm.io.derivatives import DerivativesWriter
from bids_cnm.plan import load_plan, plan_from_dict

SHAPE = (20, 24, 20)
AFFINE = np.array([[4.0, 0, 0, -40], [0, 4.0, 0, -56], [0, 0, 4.0, -32], [0, 0, 0, 1]])
FINE_AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -56], [0, 0, 2.0, -32], [0, 0, 0, 1]])
FINE_SHAPE = (40, 48, 40)
NET_A = [(-20, -24, 12), (20, 16, 0)]
NET_B = [(20, -24, 12), (-20, 16, 0)]
ELSEWHERE = (0, -40, -16)
THAL = (-8, -16, 4)
OUTCOMES = [10.0, 30.0, 45.0, 60.0, 80.0, 90.0]
THRESHOLD = 5.1
GRID = {"task": "rest", "space": "MNI152NLin2009cAsym", "res": None}
PREFIX = "task-rest_space-MNI152NLin2009cAsym"


def brain() -> np.ndarray:
    ii, jj, kk = np.indices(SHAPE)
    c = (np.asarray(SHAPE) - 1) / 2
    r = np.asarray(SHAPE) / 2 - 1
    return (((ii - c[0]) / r[0]) ** 2 + ((jj - c[1]) / r[1]) ** 2
            + ((kk - c[2]) / r[2]) ** 2) <= 1


def blob(center, fwhm=12.0) -> np.ndarray:
    xyz = roi.voxel_to_world(np.indices(SHAPE).reshape(3, -1).T, AFFINE)
    d2 = ((xyz - np.asarray(center, float)) ** 2).sum(1)
    return np.exp(-d2 / (2 * (fwhm / 2.355) ** 2))


def _tsv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _img(path: Path, data, affine=AFFINE) -> Path:
    nib.Nifti1Image(np.asarray(data), affine).to_filename(path)
    return path


def write_inputs(root: Path) -> Path:
    """Inputs and a plan using every analysis; returns the plan path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    on = [np.add(c, rng.integers(-4, 5, 3)) for c in NET_A for _ in range(2)]
    off = [(0, -8, -12), (0, -8, 28), (-28, -4, -4), (28, -4, 24)]
    _tsv(root / "rois.tsv", [{"name": f"on{i}", "x": c[0], "y": c[1], "z": c[2], "group": "on"}
                             for i, c in enumerate(on)]
         + [{"name": f"off{i}", "x": c[0], "y": c[1], "z": c[2], "group": "off"}
            for i, c in enumerate(off)])
    (root / "lesions").mkdir(exist_ok=True)
    rows = []
    for i, (centre, group) in enumerate([(NET_A[0], "yes"), (NET_A[1], "yes"),
                                         (off[0], "no"), (off[1], "no")]):
        mask = roi.sphere_mask(centre, 10 + 2 * i, FINE_SHAPE, FINE_AFFINE)
        _img(root / "lesions" / f"les{i}.nii.gz", mask.astype(np.uint8), FINE_AFFINE)
        rows.append({"file": f"les{i}.nii.gz", "causes": group})
    _tsv(root / "lesions.tsv", rows)
    # atlas: 3x3x3-voxel blocks tiling the brain; regions 'a1', 'a2' contain NET_A centres
    atlas = np.zeros(SHAPE, np.int16)
    blocks = np.indices(SHAPE) // 4
    block_id = blocks[0] * 100 + blocks[1] * 10 + blocks[2] + 1
    atlas[brain()] = block_id[brain()]
    labels = []
    for value in np.unique(atlas[atlas > 0]):
        labels.append({"index": int(value), "name": f"r{value}"})
    for k, centre in enumerate(NET_A):
        ijk = tuple(np.rint(roi.world_to_voxel(centre, AFFINE)).astype(int))
        value = atlas[ijk]
        for row in labels:
            if row["index"] == value:
                row["name"] = f"a{k + 1}"
    _img(root / "atlas.nii.gz", atlas)
    _tsv(root / "atlas.tsv", labels)
    _tsv(root / "scan.tsv", [{"x": c[0], "y": c[1], "z": c[2]} for c in NET_A])
    _tsv(root / "nodes.tsv", [
        {"name": "nA1", "x": -20, "y": -24, "z": 12, "network": "A"},
        {"name": "nA2", "x": 20, "y": 16, "z": 0, "network": "A"},
        {"name": "nB1", "x": 20, "y": -24, "z": 12, "network": "B"},
        {"name": "nB2", "x": -20, "y": 16, "z": 0, "network": "B"},
        {"x": 0, "y": -40, "z": -16, "network": "C"}])
    _tsv(root / "refs.tsv", [{"label": "CM", "x": -10, "y": -18, "z": 2},
                             {"label": "ANT", "x": -6, "y": -6, "z": 12}])
    planted = np.exp(-((roi.voxel_to_world(np.indices(SHAPE).reshape(3, -1).T, AFFINE)
                        - np.asarray(THAL)) ** 2).sum(1) / 50).reshape(SHAPE)
    _img(root / "planted.nii.gz", planted.astype(np.float32))
    dbs = []
    for p, outcome in enumerate(OUTCOMES[:4]):
        for side, sx in (("L", -1), ("R", 1)):
            dbs.append({"patient": f"P{p + 1}", "outcome": outcome, "side": side,
                        "x": sx * 8 + p, "y": -16, "z": 4, "amplitude": 3.0, "unit": "mA"})
    for p, outcome in enumerate(OUTCOMES[4:], start=4):
        name = f"vat{p}.nii.gz"
        _img(root / name, roi.sphere_mask((-8, -16 + p, 4), 8, FINE_SHAPE, FINE_AFFINE)
             .astype(np.uint8), FINE_AFFINE)
        dbs.append({"patient": f"P{p + 1}", "outcome": outcome, "vat_left": name})
    _tsv(root / "dbs.tsv", dbs)
    plan = {
        "primary_sets": ["primary"],
        "random_seed": 7,
        "validation": {
            "roi_overlap": [
                {"name": "Groups", "spheres": {"table": "rois.tsv", "diameter": 8,
                                               "label_column": "name"},
                 "compare": {"column": "group", "a": "on", "b": "off"},
                 "null_model": {"kind": "spheres", "n_draws": 300}},
                {"name": "Lesions", "masks": {"folder": "lesions", "table": "lesions.tsv"},
                 "compare": {"column": "causes", "a": "yes", "b": "no"}},
                {"name": "Atlas", "atlas": {"image": "atlas.nii.gz", "labels": "atlas.tsv",
                                            "select": ["a1", "a2"]},
                 "null_model": {"kind": "regions", "n_draws": 2000}},
            ],
            "spatial_correlation": [
                {"name": "Scan", "seeds": {"table": "scan.tsv", "diameter": 8},
                 "network": ["overlap", "overlap:control"]},
                {"name": "Img", "image": "planted.nii.gz", "network": ["dbs"]},
            ],
            "roi_to_roi": {"nodes": "nodes.tsv", "diameter": 8},
            "peaks": [
                {"name": "Thal", "map": "dbs", "references": "refs.tsv",
                 "region": {"spheres": {"table": "refs.tsv", "diameter": 16}}},
                {"name": "Img", "map": {"image": "planted.nii.gz"},
                 "region": {"atlas": {"image": "atlas.nii.gz", "labels": "atlas.tsv"}}},
            ],
        },
        "dbs": {"table": "dbs.tsv", "n_permutations": 200},
        "ale": {"n_iters": 5, "sample_size_column": "n_subjects"},
    }
    path = root / "plan.json"
    path.write_text(json.dumps(plan, indent=1))
    return path


def coordinates() -> pd.DataFrame:
    rows = []
    for s in range(4):
        for c in NET_A:
            rows.append({"study": f"prim{s}", "x": c[0] + s, "y": c[1], "z": c[2],
                         "set": "primary", "n_subjects": 20 + s})
    for s in range(2):
        rows.append({"study": f"ctl{s}", "x": ELSEWHERE[0] + 4 * s, "y": ELSEWHERE[1],
                     "z": ELSEWHERE[2], "set": "control", "n_subjects": 15})
    table = pd.DataFrame(rows)
    table["source_row"] = np.arange(len(table)) + 2
    return table


def build_results(plan, support: np.ndarray) -> GroupResults:
    """GroupResults of study + plan seeds with planted t-maps."""
    study = make_seeds(coordinates(), SHAPE, AFFINE, support=support, diameter=6)
    extra = plan_seeds(plan, SHAPE, AFFINE, support, existing_ids=study.ids)
    seeds = concat_seeds(study, extra)
    voxels = np.flatnonzero(support.ravel())
    rng = np.random.default_rng(0)
    net_a = sum(blob(c) for c in NET_A)
    net_b = sum(blob(c) for c in NET_B)
    thal = blob(THAL, fwhm=8)
    table = seeds.table
    t = np.empty((len(voxels), len(seeds)))
    for k, (set_name, study_name) in enumerate(zip(table["set"], table["study"])):
        noise = rng.normal(0, 1, len(voxels))
        if set_name == "primary":
            t[:, k] = (12 * (net_a - net_b))[voxels] + noise
        elif set_name == "control":
            t[:, k] = (12 * blob(ELSEWHERE, 16))[voxels] + noise
        elif set_name == "dbs":
            weight = OUTCOMES[int(study_name[1:]) - 1] / 100
            t[:, k] = (10 * weight * net_a + 6 * weight * thal)[voxels] + 0.3 * noise
        else:
            t[:, k] = (8 * net_a)[voxels] + noise
    big = np.finfo(np.float32).max  # the engine's stand-in for an infinite t
    t[0, np.flatnonzero((table["set"] == "dbs").to_numpy())[0]] = big
    t[1, np.flatnonzero((table["set"] == "reference").to_numpy())[0]] = -big
    z = (t / 10).clip(-3, 3)
    nodes = plan_nodes(plan, SHAPE, AFFINE)
    networks = np.array([n["network"] for n in nodes[1]])
    node_values = rng.normal(0, 0.05, (12, len(seeds), len(networks)))
    primary = (table["set"] == "primary").to_numpy()
    node_values[:, primary, :] += np.where(networks == "A", 0.4,
                                           np.where(networks == "B", -0.2, 0.0))
    return GroupResults(seeds, voxels, np.tanh(z).astype(np.float32), z.astype(np.float32),
                        t.astype(np.float32), 12, node_values=node_values,
                        node_table=nodes[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the full plan once; tests read its outputs."""
    import bids_cnm.analyses.run_plan as rp

    root = tmp_path_factory.mktemp("plan")
    plan = load_plan(write_inputs(root / "inputs"))
    support = brain()
    results = build_results(plan, support)
    writer = DerivativesWriter(root / "out", root, {"t_threshold": THRESHOLD}, GRID["space"])
    captured = {}
    real = rp.ale_mod.run_ale

    def spy(coords, **kwargs):
        captured["coords"], captured["kwargs"] = coords.copy(), kwargs
        captured["maps"] = real(coords, **kwargs)
        return captured["maps"]

    rp.ale_mod.run_ale = spy
    try:
        paths = run_plan(plan, results, writer, GRID, THRESHOLD, coordinates())
    finally:
        rp.ale_mod.run_ale = real
    return {"plan": plan, "results": results, "paths": paths, "out": root / "out",
            "ale": captured, "inputs": root / "inputs", "writer": writer}


def find(root: Path, name: str) -> Path:
    """An output by file name, in whichever analysis folder (test_written_files checks them)."""
    return next(Path(root).rglob(name))


def read(run, name: str) -> pd.DataFrame:
    return pd.read_csv(find(run["out"], name), sep="\t")


def image(run, name: str) -> np.ndarray:
    return np.asarray(nib.load(find(run["out"], name)).dataobj, dtype=float)


def overlap_volume(results: GroupResults, set_name: str = "primary") -> np.ndarray:
    t = results.t[:, results.columns(set_name)]
    signs = np.sign(t) * (np.abs(t) > THRESHOLD)
    vol = np.full(int(np.prod(SHAPE)), np.nan)
    vol[results.voxels] = signs.mean(1)
    return vol.reshape(SHAPE)


def in_mask(results: GroupResults, vol: np.ndarray) -> np.ndarray:
    return vol.ravel()[results.voxels]


def zscore(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


# --------------------------------------------------------------------------- plan seeds


def test_plan_seeds_dbs_and_reference(run):
    results = run["results"]
    table = results.seeds.table
    dbs = table[table["set"] == "dbs"]
    assert list(dbs["id"]) == [f"dbsP{i}" for i in range(1, 7)]
    assert list(dbs["study"]) == [f"P{i}" for i in range(1, 7)]
    assert set(dbs["variant"]) == {"main"}
    contacts = pd.read_csv(run["inputs"] / "dbs.tsv", sep="\t").dropna(subset=["x"])
    expected = vat_from_contacts(contacts, SHAPE, AFFINE)
    support = brain().ravel()
    for k, patient in zip(dbs.index[:4], dbs["study"][:4]):
        want = np.flatnonzero(expected[patient].ravel() & support)
        np.testing.assert_array_equal(results.seeds.voxels[k], want)
    # a VAT image on a 2 mm grid, resampled nearest onto the 4 mm grid
    vat = roi.load_mask_images([run["inputs"] / "vat4.nii.gz"],
                               nib.Nifti1Image(np.zeros(SHAPE), AFFINE))[0]
    np.testing.assert_array_equal(results.seeds.voxels[dbs.index[4]],
                                  np.flatnonzero(vat.ravel() & support))
    ref = table[table["set"] == "reference"]
    assert list(ref["id"]) == ["refScan"] and list(ref["study"]) == ["Scan"]
    want = np.unique(np.concatenate([sphere_voxels(np.asarray(c, float), 8, SHAPE, AFFINE)
                                     for c in NET_A]))
    np.testing.assert_array_equal(results.seeds.voxels[ref.index[0]], want[support[want]])


def test_plan_seeds_ids_never_collide_and_none_without_seeds(run):
    plan = run["plan"]
    seeds = plan_seeds(plan, SHAPE, AFFINE, brain(), existing_ids=["dbsP1", "refScan"])
    assert seeds.ids[0] == "dbsP12" and seeds.ids[-1] == "refScan2"
    assert plan_seeds(plan_from_dict({}), SHAPE, AFFINE) is None
    assert plan_nodes(plan_from_dict({}), SHAPE, AFFINE) is None


def test_plan_nodes(run):
    voxels, table = plan_nodes(run["plan"], SHAPE, AFFINE)
    assert [n["network"] for n in table] == ["A", "A", "B", "B", "C"]
    assert [n["name"] for n in table] == ["nA1", "nA2", "nB1", "nB2", "node5"]
    for vox, node in zip(voxels, table):
        want = np.flatnonzero(roi.sphere_mask((node["x"], node["y"], node["z"]), 8, SHAPE,
                                              AFFINE).ravel())
        np.testing.assert_array_equal(vox, want)
        assert node["n_voxels"] == len(want)


def test_plan_seeds_empty_vat_is_an_error(run, tmp_path):
    _tsv(tmp_path / "dbs.tsv", [{"patient": f"P{i}", "outcome": i, "side": "L", "x": 36,
                                 "y": 40, "z": 40, "amplitude": 3, "unit": "mA"}
                                for i in range(4)])
    plan = plan_from_dict({"dbs": {"table": "dbs.tsv"}}, base_dir=tmp_path)
    with pytest.raises(InputDataError, match=r"dbs\.table.*patient 'P0' has no voxel inside"):
        plan_seeds(plan, SHAPE, AFFINE, brain())


# --------------------------------------------------------------------------- outputs


def test_written_files(run):
    names = sorted(p.name for p in run["paths"])
    base = f"{PREFIX}_set-primary_thresh-5p1"
    expected = [
        f"{base}_desc-roioverlapGroups_values.tsv", f"{base}_desc-roioverlapGroups_summary.tsv",
        f"{base}_desc-roioverlapGroups_null.tsv", f"{base}_desc-roioverlapLesions_summary.tsv",
        f"{base}_desc-roioverlapAtlas_null.tsv", f"{base}_desc-controls_summary.tsv",
        f"{PREFIX}_desc-spatialcorrScan_summary.tsv", f"{PREFIX}_desc-spatialcorrImg_summary.tsv",
        f"{PREFIX}_set-primary_desc-roitoroi_values.tsv",
        f"{PREFIX}_set-primary_desc-roitoroi_posthoc.tsv",
        f"{PREFIX}_set-dbs_desc-dbs_boldmap.nii.gz",
        f"{PREFIX}_set-dbs_stat-r_desc-dbsrmap_boldmap.nii.gz",
        f"{PREFIX}_set-dbs_stat-pfwe_desc-dbsrmap_boldmap.nii.gz",
        f"{PREFIX}_set-dbs_desc-dbsloo_values.tsv", f"{PREFIX}_set-dbs_desc-dbs_summary.tsv",
        f"{base}_desc-convergent_boldmap.nii.gz", f"{base}_desc-convergent_peaks.tsv",
        f"{PREFIX}_set-dbs_desc-peakThal_peaks.tsv",
        f"{PREFIX}_set-dbs_desc-peakThal_distances.tsv", f"{PREFIX}_desc-peakImg_peaks.tsv",
        "space-MNI152NLin6Asym_res-2_set-primary_stat-z_desc-ale_statmap.nii.gz",
        "space-MNI152NLin6Asym_res-2_set-primary_desc-ale_summary.tsv", "plan.json",
    ]
    for name in expected:
        assert name in names, name
    folders = {p.relative_to(run["out"]).parts[0] for p in run["paths"]}
    assert folders == {"validation", "dbs", "ale", "logs"}
    assert (run["out"] / "ale" / "space-MNI152NLin6Asym_res-2_set-primary_desc-ale_summary.tsv"
            ).is_file()
    for path in run["paths"]:
        assert path.exists()
        if path.name != "plan.json":
            sidecar = path.with_name(path.name.split(".")[0] + ".json")
            content = json.loads(sidecar.read_text())
            assert content["Description"] and content["bids_cnm"] == {"t_threshold": 5.1}
    assert not list(run["out"].rglob("*.part"))
    record = json.loads((run["out"] / "logs" / "plan.json").read_text())
    assert record["Threshold"] == THRESHOLD and record["dbs"]["n_permutations"] == 200


def test_every_column_is_described_by_what_it_holds(run):
    """Every column of the plan's tables has a description of its own (none falls back to
    the generic text); those said to be copied from one of the plan's tables are columns of
    one; a name with two meanings is described by the one its table gives it."""
    from bids_cnm.analyses.run_plan import UNDESCRIBED

    given = set()
    for table in run["inputs"].rglob("*.tsv"):
        given |= set(pd.read_csv(table, sep="\t", nrows=0).columns)
    described = {}
    for path in run["paths"]:
        if path.suffix != ".tsv":
            continue
        sidecar = json.loads(path.with_suffix(".json").read_text())
        for column in pd.read_csv(path, sep="\t", nrows=0).columns:
            text = sidecar[column]["Description"]
            assert text != UNDESCRIBED.format(column=column), (path.name, column)
            if "as given" in text:
                assert column in given, (path.name, column)
            described[(path.name.rsplit("_", 1)[0].split("desc-")[-1], path.stem.rsplit("_", 1)[1],
                       column)] = text
    assert "reference" in described[("peakThal", "distances", "x")]
    assert "plateau" in described[("peakThal", "peaks", "x")]
    assert "F or chi2" in described[("roitoroi", "summary", "statistic_name")]
    assert "statistic_name" in described[("roitoroi", "summary", "statistic")]
    assert "mean_of_regions" in described[("roioverlapGroups", "summary", "statistic")]


def test_roi_overlap_values_and_group_comparison(run):
    results = run["results"]
    vol = overlap_volume(results)
    values = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlapGroups_values.tsv")
    table = pd.read_csv(run["inputs"] / "rois.tsv", sep="\t")
    assert list(values["roi"]) == list(table["name"])
    for _, row in values.iterrows():
        src = table[table["name"] == row["roi"]].iloc[0]
        sphere = roi.sphere_mask(src[["x", "y", "z"]].to_numpy(float), 8, SHAPE, AFFINE)
        assert row["n_voxels"] == sphere.sum()
        # Ji et al.: sum over the sphere / its voxel count (outside the mask = 0)
        assert row["overlap_pct"] == pytest.approx(100 * np.nansum(vol[sphere]) / sphere.sum())
        assert row["denominator"] == "roi"
    summary = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlapGroups_summary.tsv")
    s = summary.iloc[0]
    assert s["observed"] == pytest.approx(values["overlap_pct"].mean())
    a = values.loc[values["group"] == "on", "overlap_pct"]
    b = values.loc[values["group"] == "off", "overlap_pct"]
    welch = stats.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert s["t"] == pytest.approx(welch.statistic) and s["p_welch"] == pytest.approx(welch.pvalue)
    assert s["df"] == pytest.approx(welch.df)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert (s["n_a"], s["n_b"]) == (4, 4)
    # planted truth: ROIs on the primary network overlap it more
    assert s["mean_a"] > 50 and abs(s["mean_b"]) < 10 and s["p_welch"] < 0.01
    assert s["hedges_g"] > 2


def test_roi_overlap_null_models(run):
    base = f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlap"
    for name, n_draws in (("Groups", 300), ("Atlas", 2000)):
        summary = read(run, f"{base}{name}_summary.tsv").iloc[0]
        null = read(run, f"{base}{name}_null.tsv")["null_overlap"].to_numpy()
        assert null.size == n_draws == summary["n_draws"]
        assert summary["null_mean"] == pytest.approx(null.mean())
        assert summary["null_sd"] == pytest.approx(null.std(ddof=1))
        p = (np.sum(null >= summary["observed"] - 1e-9) + 1) / (n_draws + 1)
        assert summary["p_null"] == pytest.approx(p)
        assert summary["p_null"] < 0.05  # the ROIs sit on the planted network
    groups = read(run, f"{base}Groups_summary.tsv").iloc[0]
    # ROIs spread through the brain: the default 'auto' draws centres anywhere in the mask
    assert groups["null_within"] == "brain" and groups["denominator"] == "roi"
    assert groups["n_candidate_centres"] == run["results"].mask.sum()
    # the atlas null draws 2 of all regions: its mean is the mean of the regions' overlaps
    results = run["results"]
    vol = overlap_volume(results)
    atlas = np.asarray(nib.load(run["inputs"] / "atlas.nii.gz").dataobj)
    region_means = [np.nanmean(vol[atlas == v]) for v in np.unique(atlas[atlas > 0])
                    if np.isfinite(vol[atlas == v]).any()]
    summary = read(run, f"{base}Atlas_summary.tsv").iloc[0]
    assert summary["n_candidate_regions"] == len(region_means)
    assert summary["null_mean"] == pytest.approx(100 * np.mean(region_means), abs=2)
    values = read(run, f"{base}Atlas_values.tsv")
    assert list(values["roi"]) == ["a1", "a2"]
    for _, row in values.iterrows():
        value = int(pd.read_csv(run["inputs"] / "atlas.tsv", sep="\t")
                    .set_index("name").loc[row["roi"], "index"])
        assert row["overlap_pct"] == pytest.approx(100 * np.nanmean(vol[atlas == value]))
    assert summary["observed"] == pytest.approx(values["overlap_pct"].mean())


def test_lesion_masks_resampled(run):
    vol = overlap_volume(run["results"])
    values = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlapLesions_values.tsv")
    files = [run["inputs"] / "lesions" / f for f in values["file"]]
    masks = roi.load_mask_images(files, nib.Nifti1Image(np.zeros(SHAPE), AFFINE))
    for mask, value in zip(masks, values["overlap_pct"]):
        assert value == pytest.approx(100 * np.nansum(vol[mask]) / mask.sum())
    summary = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlapLesions_summary.tsv")
    assert summary["mean_a"].iloc[0] > summary["mean_b"].iloc[0] + 50


def test_dbs_network_rmap_and_prediction(run):
    results = run["results"]
    cols = results.columns("dbs")
    nets = results.t[:, cols].astype(float)
    nets[np.abs(nets) > 1e30] = np.nan
    outcomes = np.array(OUTCOMES)
    dbs_map = image(run, f"{PREFIX}_set-dbs_desc-dbs_boldmap.nii.gz")
    expected = (nets * outcomes).sum(1) / len(outcomes)
    got = in_mask(results, dbs_map)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5)
    assert np.isnan(got[~finite]).all() and (~finite).sum() == 1
    r_map = in_mask(results, image(run, f"{PREFIX}_set-dbs_stat-r_desc-dbsrmap_boldmap.nii.gz"))
    for v in np.flatnonzero(finite)[::97]:
        assert r_map[v] == pytest.approx(np.corrcoef(nets[v], outcomes)[0, 1], abs=1e-5)
    p = in_mask(results, image(run, f"{PREFIX}_set-dbs_stat-p_desc-dbsrmap_boldmap.nii.gz"))
    assert np.nanmin(p) >= 1 / 201 and np.nanmax(p) <= 1
    loo = read(run, f"{PREFIX}_set-dbs_desc-dbsloo_values.tsv")
    assert list(loo["patient"]) == [f"P{i}" for i in range(1, 7)]
    keep = finite
    for i in range(len(outcomes)):
        others = np.delete(np.arange(len(outcomes)), i)
        loo_net = (nets[keep][:, others] * outcomes[others]).sum(1) / (len(outcomes) - 1)
        assert loo["similarity"].iloc[i] == pytest.approx(
            np.corrcoef(loo_net, nets[keep, i])[0, 1], abs=1e-6)
    summary = read(run, f"{PREFIX}_set-dbs_desc-dbs_summary.tsv").iloc[0]
    r, p_param = stats.pearsonr(loo["similarity"], outcomes)
    assert summary["loo_r"] == pytest.approx(r) and summary["loo_p_parametric"] == \
        pytest.approx(p_param)
    assert summary["loo_r"] > 0.8 and summary["loo_p_permutation"] < 0.05  # planted
    overlap = in_mask(results, overlap_volume(results))
    assert summary["r_dbs_network"] == pytest.approx(
        np.corrcoef(expected[finite], overlap[finite])[0, 1], abs=1e-6)


def test_convergent_network(run):
    results = run["results"]
    overlap = in_mask(results, overlap_volume(results))
    dbs = in_mask(results, image(run, f"{PREFIX}_set-dbs_desc-dbs_boldmap.nii.gz"))
    keep = np.isfinite(dbs)
    conv = in_mask(results, image(
        run, f"{PREFIX}_set-primary_thresh-5p1_desc-convergent_boldmap.nii.gz"))
    expected = (zscore(overlap[keep]) + zscore(dbs[keep])) / 2
    np.testing.assert_allclose(conv[keep], expected, rtol=1e-5, atol=1e-5)
    summary = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-convergent_summary.tsv").iloc[0]
    assert summary["r_convergent_dbs"] == pytest.approx(
        np.corrcoef(expected, dbs[keep])[0, 1], abs=1e-5)
    assert summary["r_convergent_network"] == pytest.approx(
        np.sqrt((1 + summary["r_network_dbs"]) / 2), abs=1e-6)


def test_spatial_correlations_and_controls(run):
    results = run["results"]
    overlap = in_mask(results, overlap_volume(results))
    ref = results.t[:, results.columns("reference")[0]].astype(float)
    keep = np.abs(ref) < 1e30
    scan = read(run, f"{PREFIX}_desc-spatialcorrScan_summary.tsv")
    assert list(scan["network"]) == ["overlap:primary", "overlap:control"]
    assert scan["r"].iloc[0] == pytest.approx(np.corrcoef(overlap[keep], ref[keep])[0, 1])
    assert scan["n_voxels"].iloc[0] == keep.sum()
    control = in_mask(results, overlap_volume(results, "control"))
    assert scan["r"].iloc[1] == pytest.approx(np.corrcoef(control[keep], ref[keep])[0, 1])
    # planted: the reference seed's network is network A, the primary network's positive part
    assert scan["r"].iloc[0] > 0.25 > abs(scan["r"].iloc[1])
    controls = read(run, f"{PREFIX}_set-primary_thresh-5p1_desc-controls_summary.tsv")
    assert list(controls["control_set"]) == ["control"] and controls["n_studies"].iloc[0] == 2
    assert controls["r"].iloc[0] == pytest.approx(np.corrcoef(overlap, control)[0, 1])
    img = read(run, f"{PREFIX}_desc-spatialcorrImg_summary.tsv")
    planted = np.asarray(nib.load(run["inputs"] / "planted.nii.gz").dataobj).ravel()
    dbs = in_mask(results, image(run, f"{PREFIX}_set-dbs_desc-dbs_boldmap.nii.gz"))
    both = np.isfinite(dbs)
    assert img["r"].iloc[0] == pytest.approx(
        np.corrcoef(dbs[both], planted[results.voxels][both])[0, 1], abs=1e-6)
    # an image is named as the sidecars' Sources name it (a BIDS URI: this writer's
    # connectome folder holds the plan's inputs), never by its absolute path
    uri = "bids:connectome:inputs/planted.nii.gz"
    assert list(img["reference"]) == [uri]
    assert uri in json.loads(find(run["out"], f"{PREFIX}_desc-spatialcorrImg_summary.json")
                             .read_text())["Sources"]
    assert read(run, f"{PREFIX}_desc-peakImg_peaks.tsv")["map"].iloc[0] == uri
    for path in run["paths"]:
        if path.suffix == ".tsv":
            cells = pd.read_csv(path, sep="\t", dtype=str).to_numpy().ravel()
            assert not [c for c in cells if isinstance(c, str) and c.startswith("/")], path.name


def test_roi_to_roi(run):
    results = run["results"]
    values = read(run, f"{PREFIX}_set-primary_desc-roitoroi_values.tsv")
    nodes = np.array([n["network"] for n in results.node_table])
    z = results.node_values[:, results.columns("primary"), :]
    for net in ("A", "B", "C"):
        expected = z[:, :, nodes == net].reshape(len(z), -1).mean(1)
        np.testing.assert_allclose(values[net], expected, rtol=1e-6)  # 7 digits in TSVs
    # the study's units: one value per node (mean z over subjects and seeds)
    node_means = z.mean(axis=(0, 1))
    nodes_table = read(run, f"{PREFIX}_set-primary_desc-roitoroinodes_values.tsv")
    np.testing.assert_allclose(nodes_table["mean_z"], node_means, rtol=1e-6)
    assert list(nodes_table["network"]) == list(nodes)
    summary = read(run, f"{PREFIX}_set-primary_desc-roitoroi_summary.tsv").iloc[0]
    f, p = stats.f_oneway(*[node_means[nodes == net] for net in ("A", "B", "C")])
    assert summary["test"] == "nodes" and summary["statistic_name"] == "F"
    assert summary["statistic"] == pytest.approx(f) and summary["p"] == pytest.approx(p,
                                                                                    rel=1e-6)
    assert (summary["df_between"], summary["df_within"]) == (2, len(nodes) - 3)
    assert summary["n_units"] == len(nodes)
    assert summary["top_network"] == "A" and summary["n_seeds"] == 4
    ranking = read(run, f"{PREFIX}_set-primary_desc-roitoroi_ranking.tsv")
    by_mean = sorted(("A", "B", "C"), key=lambda net: -node_means[nodes == net].mean())
    assert list(ranking["network"]) == by_mean and by_mean[0] == "A"
    posthoc = read(run, f"{PREFIX}_set-primary_desc-roitoroi_posthoc.tsv")
    tested = posthoc.dropna(subset=["p"])  # network C has one node: no pairwise test
    assert len(posthoc) == 3 and len(tested) == 1
    assert (tested["p_holm"] >= tested["p"]).all()


def test_peaks_at_the_planted_location(run):
    peak = read(run, f"{PREFIX}_set-dbs_desc-peakThal_peaks.tsv").iloc[0]
    assert (peak["x"], peak["y"], peak["z"]) == (-8, -16, 4)  # THAL is a voxel centre
    dist = read(run, f"{PREFIX}_set-dbs_desc-peakThal_distances.tsv")
    refs = pd.read_csv(run["inputs"] / "refs.tsv", sep="\t").set_index("label")
    for _, row in dist.iterrows():
        assert row["distance_mm"] == pytest.approx(
            np.linalg.norm(refs.loc[row["label"]].to_numpy(float) - np.asarray(THAL)))
    assert peak["nearest_reference"] == "CM" == dist["label"].iloc[0]
    img_peak = read(run, f"{PREFIX}_desc-peakImg_peaks.tsv").iloc[0]
    assert (img_peak["x"], img_peak["y"], img_peak["z"]) == (-8, -16, 4)
    assert img_peak["value"] == pytest.approx(1.0)


def test_ale_inputs_and_maps(run):
    captured = run["ale"]
    coords = captured["coords"]
    assert set(coords["study"]) == {f"prim{s}" for s in range(4)}  # the primary set only
    assert "sample_size" in coords and coords.groupby("study")["sample_size"].first().tolist() \
        == [20, 21, 22, 23]
    assert captured["kwargs"]["n_iters"] == 5 and captured["kwargs"]["random_state"] == 7
    z = image(run, "space-MNI152NLin6Asym_res-2_set-primary_stat-z_desc-ale_statmap.nii.gz")
    np.testing.assert_allclose(z, captured["maps"]["z"].get_fdata(), rtol=1e-6)
    sidecar = json.loads((run["out"] / "ale" / "space-MNI152NLin6Asym_res-2_set-primary_stat-z"
                          "_desc-ale_statmap.json").read_text())
    assert sidecar["SpatialReference"] == "MNI152NLin6Asym" and sidecar["Iterations"] == 5
    summary = read(run, "space-MNI152NLin6Asym_res-2_set-primary_desc-ale_summary.tsv").iloc[0]
    assert summary["n_studies"] == 4 and summary["n_foci"] == 8
    assert summary["max_z"] == pytest.approx(z.max())
    # clusters counted with face (6-) connectivity, as NiMARE forms them
    from scipy import ndimage

    thr = image(run, "space-MNI152NLin6Asym_res-2_set-primary_stat-z_desc-aleclusterfwe_"
                     "statmap.nii.gz")
    faces = ndimage.generate_binary_structure(3, 1)
    assert summary["n_clusters"] == ndimage.label(thr != 0, structure=faces)[1]


def test_ale_computed_beforehand_writes_the_same_files(run, tmp_path, monkeypatch):
    """The workflow computes the ALE in a step of its own, from the plan's ALE part alone
    (compute_ale, saved, loaded back): run_plan then writes the same maps and tables as
    when it computes the ALE itself from the whole plan."""
    import bids_cnm.analyses.run_plan as rp
    from bids_cnm.analyses.ale import load_maps, save_maps

    plan = run["plan"]
    part = plan_from_dict(rp.ale_part(plan))
    assert part.ale == plan.ale and part.validation != plan.validation
    saved = save_maps(rp.compute_ale(part, coordinates()), tmp_path, rp.ALE_MAPS)
    only_ale = plan_from_dict({**plan.to_dict(), "dbs": None, "validation": {}})

    def not_again(*args, **kwargs):
        raise AssertionError("the ALE was computed again")

    monkeypatch.setattr(rp.ale_mod, "run_ale", not_again)
    out = tmp_path / "out"
    paths = run_plan(only_ale, run["results"], DerivativesWriter(out, tmp_path, {},
                                                                 GRID["space"]),
                     GRID, THRESHOLD, coordinates(), ale_maps=load_maps(saved))
    written = sorted(p.name for p in paths if p.parent.name == "ale")
    assert len(written) == len(rp.ALE_MAPS) + 2  # the maps, the summary, the peaks
    for name in written:
        if name.endswith(".nii.gz"):
            here, there = nib.load(out / "ale" / name), nib.load(find(run["out"], name))
            np.testing.assert_array_equal(here.get_fdata(), there.get_fdata())
            np.testing.assert_array_equal(here.affine, there.affine)
        else:
            pd.testing.assert_frame_equal(pd.read_csv(out / "ale" / name, sep="\t"),
                                          read(run, name))


def test_runs_are_reproducible(run, tmp_path):
    plan = run["plan"]
    plan = plan_from_dict({**plan.to_dict(), "ale": None, "dbs": None,
                           "validation": {"roi_overlap": [plan.to_dict()["validation"]
                                                          ["roi_overlap"][0]]}})
    writer = DerivativesWriter(tmp_path, tmp_path, {}, GRID["space"])
    results = run["results"]
    run_plan(plan, results, writer, GRID, THRESHOLD)
    name = f"{PREFIX}_set-primary_thresh-5p1_desc-roioverlapGroups_null.tsv"
    pd.testing.assert_frame_equal(pd.read_csv(find(tmp_path, name), sep="\t"), read(run, name))


def test_default_plan_and_runtime_errors(run, tmp_path):
    results = run["results"]
    writer = DerivativesWriter(tmp_path, tmp_path, {}, GRID["space"])
    paths = run_plan(load_plan(None), results, writer, GRID, THRESHOLD)
    assert sorted(p.name for p in paths) == [
        "plan.json", f"{PREFIX}_set-primary_thresh-5p1_desc-controls_summary.tsv"]
    with pytest.raises(InputDataError, match=r"primary_sets: no seed of set\(s\) \['IGE'\]"):
        run_plan(plan_from_dict({"primary_sets": ["IGE"]}), results, writer, GRID, THRESHOLD)
    with pytest.raises(InputDataError, match=r"control_sets\[0\]: no seed of set 'HC'"):
        run_plan(plan_from_dict({"control_sets": ["HC"]}), results, writer, GRID, THRESHOLD)
    no_nodes = GroupResults(results.seeds, results.voxels, results.r, results.z, results.t,
                            results.n_subjects)
    plan = plan_from_dict({"validation": {"roi_to_roi": {"nodes": "nodes.tsv"}}},
                          base_dir=run["inputs"])
    with pytest.raises(InputDataError, match=r"validation\.roi_to_roi: the group results "
                                             r"have no node values"):
        run_plan(plan, no_nodes, writer, GRID, THRESHOLD)
    study_only = results.seeds.table["set"].isin(["primary", "control"]).to_numpy()
    keep = np.flatnonzero(study_only)
    from bids_cnm.engine.seeds import Seeds

    seeds = Seeds(results.seeds.table.iloc[keep].reset_index(drop=True),
                  [results.seeds.voxels[k] for k in keep], SHAPE, AFFINE, 6.0)
    bare = GroupResults(seeds, results.voxels, results.r[:, keep], results.z[:, keep],
                        results.t[:, keep], results.n_subjects)
    plan = plan_from_dict({"dbs": {"table": "dbs.tsv"}}, base_dir=run["inputs"])
    with pytest.raises(InputDataError, match=r"dbs\.table: the results have 0 seed\(s\) of "
                                             r"set 'dbs' for 'P1'.*plan_seeds"):
        run_plan(plan, bare, writer, GRID, THRESHOLD)
    plan = plan_from_dict({"ale": {}})
    with pytest.raises(InputDataError, match="ale: the coordinates table was not given"):
        run_plan(plan, results, writer, GRID, THRESHOLD)
