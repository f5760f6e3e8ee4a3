"""Template resources: TemplateFlow files when fetched, nilearn's bundled MNI152 otherwise.

TemplateFlow builds its index when it is imported, so each case runs in a fresh Python
process with its own ``TEMPLATEFLOW_HOME`` (offline: the files are written by the test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)
TPL = "MNI152NLin6Asym"


def _run(home: Path, code: str) -> dict:
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home), TEMPLATEFLOW_AUTOUPDATE="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _write_atlas(home: Path, atlas: str, labels: np.ndarray, names: dict[int, str]) -> None:
    folder = home / f"tpl-{TPL}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template_description.json").write_text(json.dumps({"Name": TPL}))
    nb.Nifti1Image(labels.astype(np.int16), AFFINE).to_filename(
        folder / f"tpl-{TPL}_res-02_atlas-{atlas}_desc-th25_dseg.nii.gz")
    rows = "".join(f"{i}\t{n}\n" for i, n in names.items())
    (folder / f"tpl-{TPL}_atlas-{atlas}_dseg.tsv").write_text("index\tname\n" + rows)


GM_CODE = f"""
import json, numpy as np
from bids_cnm.io.templates import grey_matter_mask
mask, source = grey_matter_mask({TPL!r}, {SHAPE!r}, np.array({AFFINE.tolist()!r}))
print(json.dumps({{"voxels": np.flatnonzero(mask).tolist(), "source": source}}))
"""


def test_grey_matter_from_templateflow_labels(tmp_path):
    """Grey matter = the subcortical atlas's grey labels (cortex, thalamus), not WM/ventricles."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[40:44, 50:54, 30:34] = 4   # thalamus: grey
    labels[50:54, 50:54, 30:34] = 13  # cerebral cortex: grey
    labels[60:64, 50:54, 30:34] = 1   # white matter
    labels[30:34, 50:54, 30:34] = 3   # ventricle
    _write_atlas(tmp_path, "HOSPA", labels, {
        0: "Background", 1: "Left Cerebral White Matter", 3: "Left Lateral Ventrical",
        4: "Left Thalamus", 13: "Right Cerebral Cortex "})
    got = _run(tmp_path, GM_CODE)
    expected = np.flatnonzero(np.isin(labels, [4, 13]))
    np.testing.assert_array_equal(got["voxels"], expected)
    assert "TemplateFlow" in got["source"] and "HOSPA" in got["source"]


def test_grey_matter_falls_back_to_nilearn(tmp_path):
    """Without fetched TemplateFlow files: nilearn's bundled mask, and the source says so."""
    got = _run(tmp_path / "missing", GM_CODE)
    from nilearn.datasets import load_mni152_gm_template
    from scipy.ndimage import map_coordinates

    # independently: the template's probability at each grid voxel centre (trilinear)
    template = load_mni152_gm_template(resolution=1)
    ijk = np.indices(SHAPE).reshape(3, -1).astype(float)
    world = AFFINE[:3, :3] @ ijk + AFFINE[:3, 3:4]
    inv = np.linalg.inv(template.affine)
    src = inv[:3, :3] @ world + inv[:3, 3:4]
    prob = map_coordinates(template.get_fdata(), src, order=1, mode="constant", cval=0.0)
    expected = np.flatnonzero(prob >= 0.5)
    got_voxels = np.asarray(got["voxels"])
    # trilinear weights computed two ways agree except where the value is 0.5 +- rounding
    disagree = np.setxor1d(got_voxels, expected)
    assert len(disagree) <= 1e-4 * len(expected), len(disagree)
    assert np.all(np.abs(prob[disagree] - 0.5) < 1e-4)
    assert "nilearn" in got["source"] and "not available" in got["source"]
    assert not (tmp_path / "missing").exists()  # nothing written where TemplateFlow would be


def test_placeholder_files_are_not_used(tmp_path):
    """TemplateFlow's skeleton holds empty placeholders: they count as missing."""
    folder = tmp_path / f"tpl-{TPL}"
    folder.mkdir()
    (folder / "template_description.json").write_text("{}")
    (folder / f"tpl-{TPL}_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz").write_bytes(b"")
    got = _run(tmp_path, GM_CODE)
    assert "nilearn" in got["source"]


def test_anatomical_labels(tmp_path):
    """Subcortical names first; the cortex is named by the cortical atlas."""
    sub = np.zeros(SHAPE, dtype=np.int16)
    sub[40:44, 50:54, 30:34] = 4
    sub[50:54, 50:54, 30:34] = 13
    cort = np.zeros(SHAPE, dtype=np.int16)
    cort[50:54, 50:54, 30:34] = 7
    _write_atlas(tmp_path, "HOSPA", sub, {4: "Left Thalamus", 13: "Right Cerebral Cortex"})
    _write_atlas(tmp_path, "HOCPA", cort, {7: "Insular Cortex"})

    def world(ijk):
        return (AFFINE[:3, :3] @ np.asarray(ijk, float) + AFFINE[:3, 3]).tolist()

    code = f"""
import json, numpy as np
from bids_cnm.io.templates import anatomical_atlas
atlas = anatomical_atlas({TPL!r}, np.array({AFFINE.tolist()!r}))
points = {[world((41, 51, 31)), world((51, 51, 31)), world((10, 10, 10))]!r}
print(json.dumps({{"labels": [atlas.label_at(p) for p in points], "source": atlas.source}}))
"""
    got = _run(tmp_path, code)
    assert got["labels"] == ["Left Thalamus", "Insular Cortex", ""]
    assert "HOSPA" in got["source"] and "HOCPA" in got["source"]


def test_no_atlas_offline(tmp_path):
    code = f"""
import json, numpy as np
from bids_cnm.io.templates import anatomical_atlas
print(json.dumps({{"atlas": anatomical_atlas({TPL!r}, np.array({AFFINE.tolist()!r})) is None}}))
"""
    assert _run(tmp_path / "missing", code) == {"atlas": True}
