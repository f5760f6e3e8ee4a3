"""Random relocation in grey matter (jittered, optionally rigid) and the reserved set name."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_cnm.analyses.relocation import relocate_coordinates
from bids_cnm.cli.run import main
from bids_cnm.errors import InputDataError
from bids_cnm.io.coordinates import read_coordinates

#: a 4 mm grid covering the MNI brain
GRID_SHAPE = (45, 54, 45)
GRID_AFFINE = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])

STUDIES = pd.DataFrame({
    "study": ["A", "A", "A", "B", "C", "C"],
    "x": [-40.0, 38, 2, 10, -30, -22], "y": [-20.0, -18, 40, -60, 10, 14],
    "z": [30.0, 28, 10, 20, -4, 2], "set": ["primary"] * 5 + ["primary"],
})


def to_voxels(xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel coordinates of mm points."""
    inv = np.linalg.inv(affine)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def template_gm_at_voxel_centres(ijk: np.ndarray) -> np.ndarray:
    """GM probability of the nilearn template, trilinear at the grid's voxel centres."""
    from nilearn.datasets import load_mni152_gm_template

    template = load_mni152_gm_template(resolution=1)
    centres_mm = ijk @ GRID_AFFINE[:3, :3].T + GRID_AFFINE[:3, 3]
    in_template = to_voxels(centres_mm, template.affine)
    return ndimage.map_coordinates(np.asarray(template.dataobj, dtype=float), in_template.T,
                                   order=1, mode="constant", cval=0.0)


def test_default_relocation_lands_in_grey_matter_off_grid_and_is_reproducible():
    support = np.ones(GRID_SHAPE, dtype=bool)
    one = relocate_coordinates(STUDIES, support, GRID_AFFINE, 5, random_state=3)
    two = relocate_coordinates(STUDIES, support, GRID_AFFINE, 5, random_state=3)
    other = relocate_coordinates(STUDIES, support, GRID_AFFINE, 5, random_state=4)
    pd.testing.assert_frame_equal(one, two)
    assert not np.allclose(one[["x", "y", "z"]], other[["x", "y", "z"]])
    assert len(one) == 30 and set(one["set"]) == {"random"}
    assert list(one["relocation"].unique()) == [1, 2, 3, 4, 5]
    ijk = to_voxels(one[["x", "y", "z"]].to_numpy(), GRID_AFFINE)
    voxel = np.rint(ijk)
    # the voxel holding each centre is grey matter by the definition (p >= 0.5)
    assert (template_gm_at_voxel_centres(voxel) >= 0.5).all()
    # off-grid: uniform within the voxel, not at its centre
    offsets = ijk - voxel
    assert np.abs(offsets).max() <= 0.5
    assert (np.abs(offsets) > 1e-3).mean() > 0.95
    assert np.abs(offsets.mean(axis=0)).max() < 0.2


def test_relocation_respects_a_user_mask_and_the_support(tmp_path):
    mask = np.zeros(GRID_SHAPE, dtype=bool)
    mask[10:20, 20:30, 20:25] = True
    path = tmp_path / "gm.nii.gz"
    nb.Nifti1Image(mask.astype(np.uint8), GRID_AFFINE).to_filename(path)
    support = np.zeros(GRID_SHAPE, dtype=bool)
    support[15:40, :, :] = True
    out = relocate_coordinates(STUDIES, support, GRID_AFFINE, 4, mask=path)
    voxel = np.rint(to_voxels(out[["x", "y", "z"]].to_numpy(), GRID_AFFINE)).astype(int)
    assert (mask & support)[tuple(voxel.T)].all()
    with pytest.raises(InputDataError, match="--relocation-mask"):
        relocate_coordinates(STUDIES, ~mask, GRID_AFFINE, 1, mask=path)


def pairwise(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))


def test_rigid_relocation_preserves_each_studys_configuration():
    support = np.ones(GRID_SHAPE, dtype=bool)
    out = relocate_coordinates(STUDIES, support, GRID_AFFINE, 4, random_state=1, mode="rigid")
    again = relocate_coordinates(STUDIES, support, GRID_AFFINE, 4, random_state=1, mode="rigid")
    pd.testing.assert_frame_equal(out, again)
    voxel = np.rint(to_voxels(out[["x", "y", "z"]].to_numpy(), GRID_AFFINE))
    assert (template_gm_at_voxel_centres(voxel) >= 0.5).all()
    original = STUDIES[["x", "y", "z"]].to_numpy()
    directions = []
    for (study, copy), rows in out.groupby(["relocated_from", "relocation"]).groups.items():
        moved = out.loc[rows, ["x", "y", "z"]].to_numpy()
        before = original[(STUDIES["study"] == study).to_numpy()]
        np.testing.assert_allclose(pairwise(moved), pairwise(before), atol=1e-9)
        assert not np.allclose(moved, before)
        if len(moved) > 1:
            d = moved[1] - moved[0]
            directions.append(d / np.linalg.norm(d))
    # rotated, not only translated: the direction between two foci changes
    assert np.ptp(np.array(directions), axis=0).max() > 0.5


def test_rigid_relocation_that_cannot_fit_is_a_clear_error():
    region = np.zeros(GRID_SHAPE, dtype=bool)
    region[20:23, 20:23, 20:23] = True  # 12 mm cube: a 80 mm wide study cannot fit
    with pytest.raises(InputDataError, match="study 'A'.*--relocation-mode independent"):
        relocate_coordinates(STUDIES, np.ones(GRID_SHAPE, bool), GRID_AFFINE, 1,
                             mask=region, mode="rigid")


def test_user_set_named_random_is_refused(tmp_path):
    path = tmp_path / "coords.tsv"
    pd.DataFrame({"study": ["A", "B", "C"], "x": [0, 1, 2], "y": [0, 0, 0], "z": [0, 0, 0],
                  "set": ["primary", "control", "random"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputDataError) as err:
        read_coordinates(path)
    message = str(err.value)
    assert f"{path}, row 4, column 'set'" in message
    assert "'random' is reserved" in message and "rename" in message


def test_cli_refuses_a_user_random_set_before_computing(tiny_connectome, tmp_path, capsys):
    path = tmp_path / "coords.tsv"
    pd.DataFrame({"study": ["A", "B"], "x": [-20, 20], "y": [-24, 16], "z": [12, 0],
                  "set": ["primary", "random"]}).to_csv(path, sep="\t", index=False)
    code = main([str(tiny_connectome), str(tmp_path / "out"), "group", "--coordinates",
                 str(path), "-w", str(tmp_path / "w"), "--nipype-plugin", "Linear"])
    assert code == 65
    assert "reserved" in capsys.readouterr().err
    assert not (tmp_path / "w" / "cnm_wf").exists()
