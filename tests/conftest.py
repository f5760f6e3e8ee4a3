"""Shared fixtures: a tiny BIDS connectome written to disk, fast enough for unit tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIDS_CNM_SHARED_DATA", REPO.parent / "shared" / "data"))

TINY_SHAPE = (20, 24, 20)
TINY_AFFINE = np.array(
    [[4.0, 0, 0, -40.0], [0, 4.0, 0, -56.0], [0, 0, 4.0, -32.0], [0, 0, 0, 1]]
)
SPACE = "MNI152NLin2009cAsym"


def tiny_mask() -> np.ndarray:
    """An ellipsoidal 'brain' filling most of the tiny grid."""
    ii, jj, kk = np.indices(TINY_SHAPE)
    c = (np.asarray(TINY_SHAPE) - 1) / 2
    r = np.asarray(TINY_SHAPE) / 2 - 1
    return (((ii - c[0]) / r[0]) ** 2 + ((jj - c[1]) / r[1]) ** 2 + ((kk - c[2]) / r[2]) ** 2) <= 1


def blob(center_mm, fwhm=10.0) -> np.ndarray:
    """A Gaussian blob on the tiny grid."""
    ijk = np.indices(TINY_SHAPE).reshape(3, -1).T
    xyz = ijk @ TINY_AFFINE[:3, :3].T + TINY_AFFINE[:3, 3]
    sigma = fwhm / 2.355
    d2 = ((xyz - np.asarray(center_mm)) ** 2).sum(axis=1)
    return np.exp(-d2 / (2 * sigma**2)).reshape(TINY_SHAPE)


#: a network A (two blobs, positive) anticorrelated with network B (two blobs)
NETWORK_A = [(-20, -24, 12), (20, 16, 0)]
NETWORK_B = [(20, -24, 12), (-20, 16, 0)]


def planted_truth() -> np.ndarray:
    """Loading of the shared latent: + on network A, - on network B."""
    return sum(blob(c) for c in NETWORK_A) - sum(blob(c) for c in NETWORK_B)


def write_tiny_connectome(
    root: Path,
    n_subjects: int = 8,
    n_volumes: int = 60,
    seed: int = 0,
    two_runs_first: bool = True,
    with_masks: bool = True,
) -> Path:
    """Write a tiny fMRIPrep-like derivatives dataset with one planted network pair."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "tests"}]})
    )
    labels = [f"{i + 1:02d}" for i in range(n_subjects)]
    pd.DataFrame(
        {"participant_id": [f"sub-{s}" for s in labels],
         "group": ["IGE" if i % 2 else "HC" for i in range(n_subjects)]}
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    mask = tiny_mask()
    loading = planted_truth()
    offset = rng.uniform(200, 800, TINY_SHAPE).astype(np.float32)
    for i, label in enumerate(labels):
        func = root / f"sub-{label}" / "func"
        func.mkdir(parents=True)
        runs = [1, 2] if (two_runs_first and i == 0) else [None]
        for run in runs:
            latent = rng.standard_normal(n_volumes)
            noise = rng.standard_normal(TINY_SHAPE + (n_volumes,))
            data = loading[..., None] * 2.0 * latent + noise
            data = (data * rng.uniform(5, 20) + offset[..., None]) * mask[..., None]
            stem = f"sub-{label}_task-rest" + (f"_run-{run}" if run else "") + f"_space-{SPACE}"
            img = nb.Nifti1Image(data.astype(np.float32), TINY_AFFINE)
            img.header.set_zooms((4.0, 4.0, 4.0, 2.0))
            img.to_filename(func / f"{stem}_desc-preproc_bold.nii.gz")
            (func / f"{stem}_desc-preproc_bold.json").write_text(
                json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"})
            )
            if with_masks:
                nb.Nifti1Image(mask.astype(np.uint8), TINY_AFFINE).to_filename(
                    func / f"{stem}_desc-brain_mask.nii.gz"
                )
    return root


def write_coordinates(path: Path, rows: list[tuple]) -> Path:
    """Write a coordinate TSV from (study, x, y, z[, set]) tuples."""
    records = [
        {"study": r[0], "x": r[1], "y": r[2], "z": r[3], "set": r[4] if len(r) > 4 else "primary"}
        for r in rows
    ]
    pd.DataFrame(records).to_csv(path, sep="\t", index=False)
    return path


TINY_COORDS = [
    ("StudyA", -20, -24, 12),
    ("StudyA", 20, 16, 0),
    ("StudyB", -20, -20, 12),
    ("StudyC", 21, 15, 1),
    ("StudyC", -19, -24, 13),
    ("CtrlX", 20, -24, 12, "control"),
]


@pytest.fixture(scope="session")
def tiny_connectome(tmp_path_factory) -> Path:
    """A tiny connectome (8 subjects, first with 2 runs), shared read-only by tests."""
    return write_tiny_connectome(tmp_path_factory.mktemp("tiny") / "connectome")


@pytest.fixture(scope="session")
def tiny_coordinates(tmp_path_factory) -> Path:
    """Coordinates for the tiny connectome: 3 primary studies in network A, 1 control."""
    return write_coordinates(tmp_path_factory.mktemp("coords") / "coords.tsv", TINY_COORDS)


@pytest.fixture(autouse=True)
def _fresh_bids_cnm_logger():
    """Each test starts with the 'bids_cnm' logger as a library leaves it (propagating, no
    handler of its own): the CLI, run in-process by earlier tests or fixtures, gives it its
    own stderr handler and stops propagation, which would hide its messages from caplog."""
    import logging

    logger = logging.getLogger("bids_cnm")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    yield
