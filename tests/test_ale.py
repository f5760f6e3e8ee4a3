"""Tests of bids_cnm.analyses.ale (NiMARE ALE with Monte-Carlo FWE correction)."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pandas as pd
import pytest

from bids_cnm.analyses import ale
from bids_cnm.analyses.roi import voxel_to_world
from bids_cnm.errors import InputDataError

nimare = pytest.importorskip("nimare")

PLANTED = np.array([30.0, -20.0, 10.0])
EXPECTED_MAPS = {
    "stat", "p", "z", "logp",
    "z_level-voxel_corr-FWE_method-montecarlo",
    "logp_level-voxel_corr-FWE_method-montecarlo",
    "z_desc-size_level-cluster_corr-FWE_method-montecarlo",
    "logp_desc-size_level-cluster_corr-FWE_method-montecarlo",
    "z_desc-mass_level-cluster_corr-FWE_method-montecarlo",
    "logp_desc-mass_level-cluster_corr-FWE_method-montecarlo",
    ale.THRESHOLDED_MAP,
}


def _synthetic(n_studies=12, seed=0, with_n=True):
    """Each study: 3 foci jittered (SD 3 mm) around PLANTED plus 2 random foci."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        n = int(rng.integers(12, 40))
        foci = [PLANTED + rng.normal(0, 3, 3) for _ in range(3)]
        foci += [rng.uniform([-60, -90, -30], [60, 60, 60]) for _ in range(2)]
        rows += [
            {"study": f"study{s:02d}", "x": f[0], "y": f[1], "z": f[2], "sample_size": n}
            for f in foci
        ]
    table = pd.DataFrame(rows)
    return table if with_n else table.drop(columns="sample_size")


def test_source_conversion_and_validation(caplog):
    table = _synthetic(3)
    src = ale.coordinates_to_nimare_source(table)
    assert list(src) == ["study00", "study01", "study02"]
    c = src["study01"]["contrasts"]["1"]
    rows = table[table.study == "study01"]
    assert c["coords"]["x"] == rows.x.tolist()
    assert c["metadata"]["sample_sizes"] == [int(rows.sample_size.iloc[0])]
    # 'n' is accepted as the sample-size column.
    src_n = ale.coordinates_to_nimare_source(table.rename(columns={"sample_size": "n"}))
    assert src_n["study01"]["contrasts"]["1"]["metadata"] == c["metadata"]
    with caplog.at_level(logging.WARNING):
        src = ale.coordinates_to_nimare_source(table.drop(columns="sample_size"))
    assert "default sample size 20" in caplog.text
    meta = src["study00"]["contrasts"]["1"]["metadata"]
    assert meta["sample_sizes"] == [ale.DEFAULT_SAMPLE_SIZE]

    with pytest.raises(InputDataError, match="missing column"):
        ale.coordinates_to_nimare_source(table.drop(columns="study"), source="coords.tsv")
    bad = table.astype({"z": object})
    bad.loc[4, "z"] = "ten"
    with pytest.raises(InputDataError, match=r"coords.tsv, row 6, column 'z'"):
        ale.coordinates_to_nimare_source(bad, source="coords.tsv")
    conflict = table.copy()
    conflict.loc[0, "sample_size"] = 999
    with pytest.raises(InputDataError, match="different sample sizes"):
        ale.coordinates_to_nimare_source(conflict)
    zero = table.copy()
    zero.loc[2, "sample_size"] = 0
    with pytest.raises(InputDataError, match="row 4"):
        ale.coordinates_to_nimare_source(zero)


def test_experiments_are_keyed_by_set_and_study():
    # Two sets may both hold a study named 'study00': two experiments, each with its own
    # foci and sample size, not one merged study.
    a = _synthetic(2, seed=1).assign(set="IGE")
    b = _synthetic(2, seed=2).assign(set="control")
    src = ale.coordinates_to_nimare_source(pd.concat([a, b], ignore_index=True))
    assert sorted(src) == ["IGE:study00", "IGE:study01", "control:study00", "control:study01"]
    for name, table in (("IGE", a), ("control", b)):
        rows = table[table.study == "study00"]
        c = src[f"{name}:study00"]["contrasts"]["1"]
        assert c["coords"]["x"] == rows.x.tolist() and len(c["coords"]["x"]) == 5
        assert c["metadata"]["sample_sizes"] == [int(rows.sample_size.iloc[0])]


def test_ale_peak_at_planted_cluster():
    maps = ale.run_ale(_synthetic(), n_iters=50, random_state=0)
    assert set(maps) == EXPECTED_MAPS
    z = maps["z"]
    assert z.shape == (91, 109, 91)
    data = z.get_fdata()
    peak = voxel_to_world(np.unravel_index(np.argmax(data), data.shape), z.affine)
    assert np.linalg.norm(peak - PLANTED) < 6
    thr = maps[ale.THRESHOLDED_MAP].get_fdata()
    # The planted cluster survives cluster-level FWE; surviving voxels keep their z.
    assert thr[np.unravel_index(np.argmax(data), data.shape)] == pytest.approx(data.max())
    assert np.all((thr == 0) | np.isclose(thr, data))


def test_saved_maps_are_read_back_with_their_values_type_and_texts(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-90, -126, -72)
    # NiMARE's maps carry its mask's header: uint8, over float32 arrays
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    maps = ale.ALEMaps({
        "z": nib.Nifti1Image(rng.normal(size=(4, 5, 6)).astype(np.float32), affine, header),
        "logp_desc-size_level-cluster_corr-FWE_method-montecarlo":
            nib.Nifti1Image(rng.random((4, 5, 6)), affine),
        "not kept": nib.Nifti1Image(np.ones((4, 5, 6)), affine),
    })
    maps.description, maps.bibtex = "NiMARE's text", "@article{x}"
    kept = ["z", "logp_desc-size_level-cluster_corr-FWE_method-montecarlo"]
    back = ale.load_maps(ale.save_maps(maps, tmp_path, kept))
    assert list(back) == kept
    for name in kept:
        data = np.asarray(back[name].dataobj)
        assert data.dtype == np.asarray(maps[name].dataobj).dtype
        np.testing.assert_array_equal(data, np.asarray(maps[name].dataobj))
        np.testing.assert_array_equal(back[name].affine, affine)
    assert (back.description, back.bibtex) == (maps.description, maps.bibtex)


def test_ale_on_nimare_pain_dataset():
    path = os.path.join(os.path.dirname(nimare.__file__), "tests", "data", "nidm_pain_dset.json")
    if not os.path.exists(path):
        pytest.skip("NiMARE's bundled nidm_pain_dset.json is not installed")
    with open(path) as fobj:
        dset = json.load(fobj)
    rows = []
    for study, content in dset.items():
        for contrast in content["contrasts"].values():
            c = contrast["coords"]
            n = contrast.get("metadata", {}).get("sample_sizes", [None])[0]
            rows += [{"study": study, "x": x, "y": y, "z": z, "sample_size": n}
                     for x, y, z in zip(c["x"], c["y"], c["z"])]
    table = pd.DataFrame(rows)
    assert (table.study.nunique(), len(table)) == (21, 267)
    start = time.perf_counter()
    maps = ale.run_ale(table, n_iters=10, random_state=1)
    if time.perf_counter() - start > 60:
        pytest.skip("NiMARE ALE on the pain dataset took > 60 s on this machine")
    assert set(maps) == EXPECTED_MAPS
    z = maps["z"].get_fdata()
    assert np.isfinite(z).all() and z.max() > 3
