"""Sensitivity variants and specificity tests: units against references, and end to end."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from conftest import SPACE, TINY_AFFINE, TINY_SHAPE, tiny_mask
from scipy import stats

from bids_cnm.analyses.sensitivity import (
    correlation_matrix,
    enumerate_variants,
    variant_maps,
)
from bids_cnm.analyses.specificity import compare_networks, relocate_coordinates
from bids_cnm.cli.run import main
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import Seeds

ENTS = f"task-rest_space-{SPACE}"


def synthetic_results(rng, n_primary=6, n_control=6, n_random=8, effect=4.0) -> GroupResults:
    """t-maps on the tiny grid: primary networks share a planted blob, controls do not."""
    mask = tiny_mask()
    voxels = np.flatnonzero(mask.ravel())
    blob = np.zeros(TINY_SHAPE)
    blob[4:9, 4:9, 4:9] = 1
    planted = blob.ravel()[voxels]
    rows, maps = [], []
    for set_name, n, shift in (("primary", n_primary, effect), ("control", n_control, 0.0),
                               ("random", n_random, 0.0)):
        for i in range(n):
            modality = "fMRI" if i % 2 else "PET"
            rows.append({"id": f"{set_name}{i}", "set": set_name, "study": f"{set_name}{i}",
                         "variant": "main", "n_coordinates": 1, "coordinates": "0,0,0",
                         "diameter_mm": 6.0, "voxels": 1, "modality": modality})
            maps.append(rng.standard_normal(len(voxels)) * 2 + shift * planted)
    t = np.stack(maps, axis=1).astype(np.float32)
    seeds = Seeds(pd.DataFrame(rows), [np.array([0])] * len(rows), TINY_SHAPE, TINY_AFFINE, 6.0)
    return GroupResults(seeds, voxels, t, t, t, n_subjects=30)


def test_variants_and_correlations_match_direct_computation():
    results = synthetic_results(np.random.default_rng(0))
    variants = enumerate_variants(results, "primary", 2.0, [3.0], ["modality"])
    labels = [v.label for v in variants]
    assert labels == ["main", "thresh-3", "modalityPET", "modalityWithoutPET",
                      "modalityfMRI", "modalityWithoutfMRI"]
    maps = variant_maps(results, variants)
    t = results.t[:, results.columns("primary")]
    pet = t[:, 0::2]  # even studies are PET
    signs = np.sign(pet) * (np.abs(pet) > 2.0)
    np.testing.assert_allclose(maps["modalityPET"]["overlap"], signs.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(maps["modalityWithoutPET"]["overlap"],
                               (np.sign(t[:, 1::2]) * (np.abs(t[:, 1::2]) > 2.0)).mean(axis=1),
                               atol=1e-6)
    matrix = correlation_matrix({k: m["overlap"] for k, m in maps.items()})
    expected = stats.pearsonr(maps["main"]["overlap"], maps["thresh-3"]["overlap"])[0]
    assert matrix.loc["main", "thresh-3"] == pytest.approx(expected)
    assert np.allclose(np.diag(matrix.to_numpy()), 1.0)


def test_relocation_is_reproducible_and_in_mask():
    mask = tiny_mask()
    table = pd.DataFrame({"study": ["A", "A", "B"], "x": [0.0, 4, 8], "y": [0.0, 0, 0],
                          "z": [0.0, 0, 0], "set": ["primary"] * 3})
    one = relocate_coordinates(table, mask, TINY_AFFINE, 3, random_state=7)
    two = relocate_coordinates(table, mask, TINY_AFFINE, 3, random_state=7)
    other = relocate_coordinates(table, mask, TINY_AFFINE, 3, random_state=8)
    pd.testing.assert_frame_equal(one, two)
    assert not np.allclose(one[["x", "y", "z"]], other[["x", "y", "z"]])
    assert len(one) == 9 and set(one["set"]) == {"random"}
    assert sorted(one["study"].unique()) == ["Arand1", "Arand2", "Arand3", "Brand1", "Brand2",
                                             "Brand3"]
    ijk = np.rint((np.linalg.inv(TINY_AFFINE) @ np.c_[one[["x", "y", "z"]], np.ones(9)].T)[:3])
    assert mask[tuple(ijk.astype(int))].all()


def test_specificity_finds_planted_difference_and_matches_scipy_t():
    results = synthetic_results(np.random.default_rng(1))
    out = compare_networks(results, "primary", "control", n_permutations=200, tfce=True,
                           random_state=0)
    a = results.t[:, results.columns("primary")].T.astype(np.float64)
    b = results.t[:, results.columns("control")].T.astype(np.float64)
    np.testing.assert_allclose(out.maps["t"], stats.ttest_ind(a, b).statistic, rtol=1e-5)
    blob = np.zeros(TINY_SHAPE, bool)
    blob[4:9, 4:9, 4:9] = True
    inside = blob.ravel()[results.voxels]
    significant = out.maps["significant"] > 0
    assert significant[inside].mean() > 0.5
    assert significant[~inside].mean() < 0.05


def test_specificity_null_is_not_significant():
    results = synthetic_results(np.random.default_rng(2), effect=0.0)
    out = compare_networks(results, "primary", "random", n_permutations=200, tfce=False,
                           random_state=0)
    assert out.maps["logpFWE"].max() < -np.log10(0.01)


def test_cli_sensitivity_and_specificity(tiny_connectome, tmp_path):
    coords = tmp_path / "coords.tsv"
    pd.DataFrame({
        "study": ["StudyA", "StudyA", "StudyB", "StudyC", "StudyC", "CtrlX", "CtrlY"],
        "x": [-20, 20, -20, 21, -19, 20, 18], "y": [-24, 16, -20, 15, -24, -24, -22],
        "z": [12, 0, 12, 1, 13, 12, 12],
        "set": ["primary"] * 5 + ["control"] * 2,
        "modality": ["fMRI", "fMRI", "PET", "fMRI", "fMRI", "fMRI", "PET"],
    }).to_csv(coords, sep="\t", index=False)
    out = tmp_path / "out"
    code = main([str(tiny_connectome), str(out), "group", "--coordinates", str(coords),
                 "-w", str(tmp_path / "w"), "--t-thresholds", "4", "7",
                 "--sphere-diameters", "9", "--per-coordinate", "--subgroups", "modality",
                 "--specificity", "--random-relocations", "2", "--n-permutations", "40",
                 "--nipype-plugin", "Linear"])
    assert code == 0
    seeds = pd.read_csv(out / "seeds.tsv", sep="\t")
    assert sorted(seeds["variant"].unique()) == ["d9mm", "main", "percoord"]
    assert (seeds["set"] == "random").sum() == 6  # 3 primary studies x 2 relocations
    prefix = f"{ENTS}_set-primary"
    for name in (f"network/{prefix}_thresh-4_desc-overlap_boldmap.nii.gz",
                 f"network/{prefix}_thresh-7_desc-overlap_boldmap.nii.gz",
                 f"sensitivity/{prefix}_variant-d9mm_thresh-5p1_desc-overlap_boldmap.nii.gz",
                 (f"sensitivity/{prefix}_variant-percoord_thresh-5p1_desc-overlap_boldmap"
                 ".nii.gz"),
                 (f"sensitivity/{prefix}_variant-modalityPET_thresh-5p1_desc-overlap_boldmap"
                 ".nii.gz"),
                 (f"sensitivity/{prefix}_variant-modalityWithoutPET_thresh-5p1_desc-overlap_boldmap"
                 ".nii.gz"),
                 f"sensitivity/{prefix}_desc-sensitivity_correlations.tsv",
                 f"sensitivity/{prefix}_desc-sensitivity_variants.tsv"):
        assert (out / name).exists(), name
    matrix = pd.read_csv(out / "sensitivity" / f"{prefix}_desc-sensitivity_correlations.tsv",
                         sep="\t",
                         index_col=0)
    main_map = nb.load(out / "network" / f"{prefix}_thresh-5p1_desc-overlap_boldmap.nii.gz"
                       ).get_fdata()
    d9 = nb.load(out / "sensitivity"
                 / f"{prefix}_variant-d9mm_thresh-5p1_desc-overlap_boldmap.nii.gz")
    mask = nb.load(out / f"space-{SPACE}_desc-analysis_mask.nii.gz").get_fdata() > 0
    expected = np.corrcoef(main_map[mask], d9.get_fdata()[mask])[0, 1]
    assert matrix.loc["main", "d9mm"] == pytest.approx(expected, abs=1e-6)
    for control in ("control", "random"):
        stem = f"specificity/{prefix}_control-{control}"
        for stat in ("t", "tfce", "logp", "logpFWE", "logpFDR"):
            assert (out / f"{stem}_stat-{stat}_boldmap.nii.gz").exists()
        assert (out / f"{stem}_desc-significant_mask.nii.gz").exists()
        assert (out / f"{stem}_desc-significant_clusters.tsv").exists()
        sidecar = json.loads((out / f"{stem}_stat-tfce_boldmap.json").read_text())
        assert sidecar["NumberOfPermutations"] == 40
    # the degree check (on by default): r of each network with the degree map, over the mask
    degree = nb.load(out / "degree" / f"{ENTS}_stat-degree_boldmap.nii.gz").get_fdata()[mask]
    assert (degree > 0).all()
    check = pd.read_csv(out / "degree" / f"{ENTS}_desc-degree_correlations.tsv", sep="\t")
    assert list(check["network"]) == ["main", "main", "relocation-1", "relocation-2"]
    row = check.iloc[0]
    assert row["set"] == "primary" and row["n_null"] == 2
    assert row["r_degree"] == pytest.approx(np.corrcoef(main_map[mask], degree)[0, 1], abs=1e-5)
    residual = nb.load(out / "degree" / f"{prefix}_thresh-5p1_desc-degreeresidual_boldmap.nii.gz")
    design = np.c_[np.ones(mask.sum()), degree]
    beta, *_ = np.linalg.lstsq(design, main_map[mask], rcond=None)
    np.testing.assert_allclose(residual.get_fdata()[mask], main_map[mask] - design @ beta,
                               atol=1e-5)
    described = json.loads((out / "degree" / f"{ENTS}_desc-degree_correlations.json").read_text())
    assert described["NumberOfSampleVoxels"] == 300 and "p_degree" in described
    # where the sample's grey matter came from (the degree sample step says so)
    assert "grey-matter" in described["GreyMatter"] or "GM" in described["GreyMatter"]


def test_cli_compare_cohort(tiny_connectome, tiny_coordinates, tmp_path):
    """The same network on a second cohort of the same connectome, and the likeness table."""
    out = tmp_path / "out"
    assert main([str(tiny_connectome), str(out), "group", "--coordinates", str(tiny_coordinates),
                 "-w", str(tmp_path / "w"), "--participant-filter", "group=HC",
                 "--compare-participant-filter", "group=IGE", "--nipype-plugin", "Linear",
                 "--no-degree-check"]) == 0
    assert not list(out.rglob("*degree*"))
    prefix = f"{ENTS}_set-primary"
    other = (out / "sensitivity"
             / f"{prefix}_variant-connectomeIGE_thresh-5p1_desc-overlap_boldmap.nii.gz")
    assert other.exists()
    table = pd.read_csv(out / "sensitivity" / f"{prefix}_desc-connectomes_correlations.tsv",
                        sep="\t")
    assert list(table["n_subjects"]) == [4, 4]
    main_map = nb.load(out / "network" / f"{prefix}_thresh-5p1_desc-overlap_boldmap.nii.gz"
                       ).get_fdata()
    mask = nb.load(out / f"space-{SPACE}_desc-analysis_mask.nii.gz").get_fdata() > 0
    expected = np.corrcoef(main_map[mask], nb.load(other).get_fdata()[mask])[0, 1]
    assert table["r_with_main"].iloc[1] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.3  # both cohorts carry the same planted network


def test_undefined_t_is_left_out_of_specificity():
    """A ±float32-max stand-in (one-voxel seed with itself) must not drive the test."""
    results = synthetic_results(np.random.default_rng(3), effect=0.0)
    results.t[5, results.columns("primary")[0]] = np.finfo(np.float32).max
    out = compare_networks(results, "primary", "control", n_permutations=50, tfce=False)
    assert out.maps["t"][5] == 0.0
    assert np.isfinite(out.maps["t"]).all()


def test_parser_rejects_negative_relocations_and_dedupes(tmp_path):
    from bids_cnm.cli.parser import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["/data", str(tmp_path / "o"), "group", "--coordinates", "c.tsv",
                    "--random-relocations", "-1"])
    assert exc.value.code == 64
    config = parse_args(["/data", str(tmp_path / "o"), "group", "--coordinates", "c.tsv",
                         "--t-thresholds", "7", "7", "9", "--sphere-diameters", "3", "3"])
    assert config.t_thresholds == (7.0, 9.0) and config.sphere_diameters == (3.0,)


@pytest.mark.parametrize("columns", [(0, 1, 2, 3), (2, 3), (3,), (0, 2, 3), (3, 1), ()])
def test_variant_columns_view_only_consecutive_ones(columns):
    from bids_cnm.analyses.sensitivity import _columns

    values = np.arange(20.0).reshape(5, 4)
    picked = _columns(values, columns)
    np.testing.assert_array_equal(picked, values[:, list(columns)])
    consecutive = len(columns) > 0 and list(columns) == list(range(columns[0],
                                                                   columns[0] + len(columns)))
    assert np.shares_memory(picked, values) == consecutive
