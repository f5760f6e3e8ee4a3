"""Synthetic validation inputs and an analysis plan for the demo connectome.

:func:`make_demo_plan` writes, under ``<demo_dir>/plan/``, inputs shaped like those of the
reference study (Ji et al. 2025) but placed on the networks planted by
:mod:`bids_cnm.demo.data`, so each analysis has a known answer:

``eeg_fmri.tsv``
    EEG-fMRI activation peaks: ``generalized`` ones on the default-mode-like (DMN) and
    thalamic blobs, ``focal`` ones at random cortical places away from every planted
    blob (the generalized ones overlap the primary network more).
``lesions/*.nii.gz`` + ``lesions.tsv``
    6 spherical lesion masks on a 2 mm grid (resampled onto the connectome grid); the 3
    ``epileptogenic = yes`` ones sit on DMN blobs.
``electrodes.tsv``
    10-20 scalp positions projected onto the cortex (approximate MNI mm), for 25 mm
    spheres against a random in-mask sphere null.
``atlas.nii.gz`` + ``atlas.tsv``
    A small parcellation (2 mm grid): every planted blob is a labelled region (with its
    ``network``), the rest of the brain is cut into Voronoi parcels.
``scan_nodes.tsv``, ``motor_regions.tsv``
    SCAN-like inter-effector nodes (one reference seed for a spatial correlation), and
    inter-effector vs effector motor regions for a group comparison.
``nodes.tsv``
    ROI-to-ROI nodes: every blob centre with its network label.
``thalamus_nuclei.tsv``, ``thalamus_mask.nii.gz``
    Reference points (CM, ANT, pulvinar) and a thalamus mask for the peak analyses.
``dbs.tsv`` (+ ``vats/``)
    6 DBS patients: 4 given by active contacts and amplitudes (spherical VATs), 2 by VAT
    images; the outcome (% seizure reduction) falls with the contacts' distance from the
    DMN thalamic blob.
``dmn_loading.nii.gz``
    The planted DMN loading map (a reference image for a spatial correlation).
``plan.yml`` (+ ``plan.schema.json``)
    A plan that runs every analysis on these inputs, the ALE with 100 iterations; its
    first line points editors at the plan's JSON Schema beside it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_cnm.analyses.roi import sphere_mask, voxel_to_world, world_to_voxel
from bids_cnm.demo.data import NETWORK_BLOBS, load_grid_mask, loading_maps
from bids_cnm.plan.schema import schema_text

__all__ = ["make_demo_plan", "DEMO_PLAN_NAME", "main"]

DEMO_PLAN_NAME = "plan.yml"

#: approximate cortical projections of 10-20 positions (MNI mm)
ELECTRODES = [
    ("Fp1", -22, 62, 0), ("Fp2", 24, 62, 0), ("F3", -38, 38, 38), ("F4", 40, 38, 38),
    ("Fz", 0, 36, 52), ("C3", -50, -16, 56), ("C4", 52, -16, 56), ("Cz", 0, -12, 70),
    ("P3", -42, -62, 48), ("P4", 42, -62, 48), ("Pz", 0, -60, 58), ("O1", -24, -98, 6),
    ("O2", 26, -98, 6),
]

#: thalamic reference points of the demo (the DMN thalamic blob is at (+-10, -18, 8))
THALAMUS_REFERENCES = [
    ("CM_L", -10, -18, 4), ("CM_R", 10, -18, 4), ("ANT_L", -6, -6, 12), ("ANT_R", 6, -6, 12),
    ("PUL_L", -16, -30, 6), ("PUL_R", 16, -30, 6),
]

_NETWORK_OF_FACTOR = {"dmn": "dmn", "sensorimotor": "sensorimotor", "visual": "visual"}


def _blobs() -> list[tuple[str, str, np.ndarray]]:
    """(name, network, centre) of every planted blob (DMN blobs with negative loading: dan)."""
    out = []
    for factor, blobs in NETWORK_BLOBS.items():
        for name, centre, peak in blobs:
            network = "dan" if factor == "dmn" and peak < 0 else _NETWORK_OF_FACTOR[factor]
            out.append((name, network, np.asarray(centre, dtype=float)))
    return out


def _fine_grid(mask_img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    """A 2 mm grid covering the demo grid (inputs on another grid exercise resampling)."""
    zooms = np.sqrt((mask_img.affine[:3, :3] ** 2).sum(0))
    extent = np.asarray(mask_img.shape[:3]) * zooms
    shape = tuple(int(n) for n in np.ceil(extent / 2.0))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = mask_img.affine[:3, 3]
    return shape, affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.to_filename(path)
    return path


def _away_from_blobs(rng: np.random.Generator, mask: np.ndarray, affine: np.ndarray, n: int,
                     min_distance: float = 24.0, cortex: bool = True) -> np.ndarray:
    """n in-mask voxel centres (mm) at least ``min_distance`` from every planted blob."""
    from scipy import ndimage

    candidates = mask
    if cortex:  # near the brain's edge: within 12 mm of the outside
        depth = ndimage.distance_transform_edt(mask) * np.sqrt((affine[:3, :3] ** 2).sum(0))[0]
        candidates = mask & (depth <= 12)
    xyz = voxel_to_world(np.argwhere(candidates), affine)
    centres = np.stack([c for _, _, c in _blobs()])
    far = np.linalg.norm(xyz[:, None, :] - centres[None], axis=2).min(1) >= min_distance
    xyz = xyz[far]
    picks = []
    for _ in range(200 * n):  # spread them out: at least 20 mm apart
        cand = xyz[rng.integers(len(xyz))]
        if all(np.linalg.norm(cand - p) >= 20 for p in picks):
            picks.append(cand)
        if len(picks) == n:
            break
    return np.asarray(picks)


def make_demo_plan(demo_dir: str | os.PathLike, resolution: int = 4,
                   random_state: int = 0) -> Path:
    """Write synthetic validation, DBS and ALE inputs and a plan using every analysis.

    Parameters
    ----------
    demo_dir : path
        The demo folder (as made by :func:`bids_cnm.demo.data.make_demo_dataset`; the
        inputs do not need the connectome, only its grid).
    resolution : int
        Voxel size of the demo grid in mm.
    random_state : int
        Seed of the random placements.

    Returns
    -------
    Path
        The plan file ``<demo_dir>/plan/plan.yml``.
    """
    rng = np.random.default_rng([random_state, 0x91A4])
    out = Path(demo_dir) / "plan"
    (out / "lesions").mkdir(parents=True, exist_ok=True)
    (out / "vats").mkdir(parents=True, exist_ok=True)
    mask_img = load_grid_mask(resolution)
    mask = np.asarray(mask_img.dataobj) > 0
    affine = mask_img.affine
    fine_shape, fine_affine = _fine_grid(mask_img)
    blobs = _blobs()
    by_name = {name: centre for name, _, centre in blobs}

    # the planted DMN loading, a reference image
    loading = np.zeros(mask.shape, np.float32)
    loading[mask] = loading_maps(mask_img)["dmn"]
    _save(loading, affine, out / "dmn_loading.nii.gz")

    # EEG-fMRI activations: generalized on DMN/thalamus, focal at random cortex
    dmn = [c for _, net, c in blobs if net == "dmn"]
    rows = []
    for i in range(8):
        centre = dmn[i % len(dmn)] + rng.normal(0, 3, 3)
        rows.append((f"gen{i + 1:02d}", *np.round(centre), "generalized"))
    for i, centre in enumerate(_away_from_blobs(rng, mask, affine, 8)):
        rows.append((f"foc{i + 1:02d}", *np.round(centre), "focal"))
    pd.DataFrame(rows, columns=["name", "x", "y", "z", "epilepsy"]).to_csv(
        out / "eeg_fmri.tsv", sep="\t", index=False)

    # lesions on a 2 mm grid: 3 epileptogenic on DMN blobs, 3 elsewhere
    lesion_centres = [by_name["posterior cingulate / precuneus"], by_name["left thalamus"],
                      by_name["medial prefrontal cortex"]]
    lesion_centres += list(_away_from_blobs(rng, mask, affine, 3, cortex=False))
    lesion_rows = []
    for i, centre in enumerate(lesion_centres):
        name = f"lesion{i + 1:02d}.nii.gz"
        diameter = float(rng.uniform(12, 18))
        _save(sphere_mask(centre, diameter, fine_shape, fine_affine).astype(np.uint8),
              fine_affine, out / "lesions" / name)
        lesion_rows.append((name, "yes" if i < 3 else "no", round(diameter, 1)))
    pd.DataFrame(lesion_rows, columns=["file", "epileptogenic", "diameter_mm"]).to_csv(
        out / "lesions.tsv", sep="\t", index=False)

    pd.DataFrame(ELECTRODES, columns=["label", "x", "y", "z"]).to_csv(
        out / "electrodes.tsv", sep="\t", index=False)

    # atlas on the 2 mm grid: blobs (8 mm radius) over Voronoi parcels of the brain
    fine_mask = np.zeros(fine_shape, bool)
    ijk = np.argwhere(np.ones(fine_shape, bool))
    src = np.rint(world_to_voxel(voxel_to_world(ijk, fine_affine), affine)).astype(int)
    inside = np.all((src >= 0) & (src < np.asarray(mask.shape)), axis=1)
    fine_mask[tuple(ijk[inside].T)] = mask[tuple(src[inside].T)]
    brain = np.argwhere(fine_mask)
    brain_xyz = voxel_to_world(brain, fine_affine)
    parcel_centres = brain_xyz[rng.choice(len(brain_xyz), 40, replace=False)]
    nearest = np.argmin(((brain_xyz[:, None, :] - parcel_centres[None]) ** 2).sum(2), axis=1)
    atlas = np.zeros(fine_shape, np.int16)
    atlas[tuple(brain.T)] = nearest + 1
    labels = [(k + 1, f"parcel{k + 1:02d}", "other") for k in range(40)]
    for b, (name, network, centre) in enumerate(blobs):
        index = 100 + b
        atlas[sphere_mask(centre, 16.0, fine_shape, fine_affine) & fine_mask] = index
        labels.append((index, name, network))
    present = set(np.unique(atlas).tolist())
    labels = [row for row in labels if row[0] in present]
    _save(atlas, fine_affine, out / "atlas.nii.gz")
    pd.DataFrame(labels, columns=["index", "name", "network"]).to_csv(
        out / "atlas.tsv", sep="\t", index=False)

    # SCAN-like inter-effector nodes and effector regions
    scan = [("SCAN_thal_L", -10, -18, 6), ("SCAN_thal_R", 10, -18, 6),
            ("SCAN_pre_L", -34, -14, 62), ("SCAN_pre_R", 34, -14, 62)]
    pd.DataFrame(scan, columns=["name", "x", "y", "z"]).to_csv(
        out / "scan_nodes.tsv", sep="\t", index=False)
    motor = [(n, x, y, z, "inter-effector") for n, x, y, z in scan]
    motor += [("hand_L", -38, -22, 56, "effector"), ("hand_R", 38, -22, 56, "effector"),
              ("SMA", 0, -12, 62, "effector"), ("S2_L", -54, -22, 20, "effector"),
              ("S2_R", 54, -22, 20, "effector")]
    pd.DataFrame(motor, columns=["name", "x", "y", "z", "region_type"]).to_csv(
        out / "motor_regions.tsv", sep="\t", index=False)

    pd.DataFrame([(name.replace(" ", "_").replace("/", ""), *c, net)
                  for name, net, c in blobs],
                 columns=["name", "x", "y", "z", "network"]).to_csv(
        out / "nodes.tsv", sep="\t", index=False)

    pd.DataFrame(THALAMUS_REFERENCES, columns=["label", "x", "y", "z"]).to_csv(
        out / "thalamus_nuclei.tsv", sep="\t", index=False)
    thal = sphere_mask((-12, -18, 6), 16, fine_shape, fine_affine) | sphere_mask(
        (12, -18, 6), 16, fine_shape, fine_affine)
    _save(thal.astype(np.uint8), fine_affine, out / "thalamus_mask.nii.gz")

    # DBS: outcome falls with the distance of the contacts from the DMN thalamic blob
    distances = np.array([0.0, 2.0, 4.0, 7.0, 10.0, 13.0])
    order = rng.permutation(6)
    dbs_rows = []
    for p, d in enumerate(distances[order]):
        patient = f"P{p + 1:02d}"
        outcome = round(float(np.clip(95 - 6 * d + rng.normal(0, 4), 0, 100)), 1)
        direction = rng.normal(0, 1, 3)
        direction[0] = abs(direction[0])  # lateral (mirrored on the left)
        direction[2] = -abs(direction[2])  # and downwards
        direction /= np.linalg.norm(direction)
        for side, sx in (("L", -1), ("R", 1)):
            blob = np.array([10.0 * sx, -18.0, 8.0])
            contact = np.round(blob + d * direction * np.array([sx, 1, 1]), 1)
            amplitude = round(float(rng.uniform(2.5, 3.5)), 1)
            row = {"patient": patient, "outcome": outcome, "side": side, "x": contact[0],
                   "y": contact[1], "z": contact[2], "amplitude": amplitude, "unit": "mA",
                   "vat_left": None, "vat_right": None}
            if p >= 4:  # the last two patients come with VAT images instead of contacts
                name = f"vats/{patient}_hemi-{side}_vat.nii.gz"
                _save(sphere_mask(contact, 7.0, fine_shape, fine_affine).astype(np.uint8),
                      fine_affine, out / name)
                row.update(side=None, x=None, y=None, z=None, amplitude=None, unit=None)
                row["vat_left" if side == "L" else "vat_right"] = name
            dbs_rows.append(row)
    dbs = pd.DataFrame(dbs_rows)
    # one row per VAT patient (both images on it)
    vat_patients = dbs[dbs["vat_left"].notna() | dbs["vat_right"].notna()]
    merged = vat_patients.groupby("patient", sort=False).first().reset_index()
    dbs = pd.concat([dbs[~dbs["patient"].isin(merged["patient"])], merged],
                    ignore_index=True)
    dbs.to_csv(out / "dbs.tsv", sep="\t", index=False, na_rep="n/a")

    # the schema beside the plan, so an editor validates and completes it offline
    (out / "plan.schema.json").write_text(schema_text())
    (out / DEMO_PLAN_NAME).write_text(_PLAN_TEXT)
    return out / DEMO_PLAN_NAME


_PLAN_TEXT = """\
# yaml-language-server: $schema=plan.schema.json
# Analysis plan of the bids_cnm demo: every analysis on synthetic inputs.
# Paths are relative to this file's folder.  See docs/plan.md.
primary_sets: [primary]
control_sets: [control]
random_seed: 0

validation:
  controls: true
  roi_overlap:
    - name: EEGfMRI               # activations in generalized vs focal epilepsy
      spheres: {table: eeg_fmri.tsv, diameter: 10, label_column: name}
      compare: {column: epilepsy, a: generalized, b: focal}
    - name: Lesions               # lesions causing vs not causing epilepsy
      masks: {folder: lesions, table: lesions.tsv}
      compare: {column: epileptogenic, a: "yes", b: "no"}   # quote yes/no in YAML
    - name: Electrodes            # 25 mm spheres at EEG electrodes vs random spheres
      spheres: {table: electrodes.tsv, diameter: 25}
      null_model: {kind: spheres, n_draws: 1000, alternative: two-sided}
    - name: Atrophy               # atlas regions vs random atlas regions
      atlas:
        image: atlas.nii.gz
        labels: atlas.tsv
        select: [posterior cingulate / precuneus, left angular gyrus, right angular gyrus,
                 medial prefrontal cortex]
      null_model: {kind: regions, n_draws: 1000}
    - name: Motor                 # inter-effector vs effector motor regions
      network: posoverlap
      spheres: {table: motor_regions.tsv, diameter: 10}
      compare: {column: region_type, a: inter-effector, b: effector}
  spatial_correlation:
    - name: SCAN                  # a seed network computed in the same pass
      seeds: {table: scan_nodes.tsv, diameter: 6}
      network: [overlap, "overlap:control"]
    - name: DMN                   # an image
      image: dmn_loading.nii.gz
      network: [overlap, dbs, convergent]
  roi_to_roi:
    nodes: nodes.tsv
    diameter: 6
  peaks:
    - name: Thalamus
      region:
        atlas: {image: atlas.nii.gz, labels: atlas.tsv, select: [left thalamus, right thalamus]}
      references: thalamus_nuclei.tsv
    - name: ConvergentThalamus
      map: convergent
      region: {mask: thalamus_mask.nii.gz}
      references: thalamus_nuclei.tsv

dbs:
  table: dbs.tsv
  outcome_column: outcome
  n_permutations: 1000
  normalize: n

ale:
  n_iters: 100
  cluster_threshold: 0.05
  voxel_thresh: 0.001
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_cnm.demo.plan DEMO_DIR``: write the demo plan and its inputs."""
    parser = argparse.ArgumentParser(prog="python -m bids_cnm.demo.plan",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--resolution", type=int, default=4)
    args = parser.parse_args(argv)
    print(make_demo_plan(args.demo_dir, args.resolution))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
