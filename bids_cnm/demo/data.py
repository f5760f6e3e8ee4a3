"""Synthetic normative connectome with planted networks, for demos and tests.

The generator writes a small BIDS-derivatives dataset that looks like fMRIPrep
output (preprocessed resting-state BOLD in MNI space plus brain masks), a demo
coordinates table, and ground-truth maps of the networks planted in the data,
so that a full coordinate-network-mapping run can be checked against a known
answer without downloading anything.

Data model
----------
Every in-mask voxel ``v`` of subject ``s`` follows a latent-factor model::

    y_s(v, t) = mu_s(v) + scale_s(v) * (sum_k g_sk * L_k(v) * f_sk(t) + e_s(v, t) / snr)

* ``L_k`` are fixed spatial loadings made of Gaussian blobs (FWHM 14 mm) at
  MNI coordinates in real anatomy, peak value 1 (0.8 in the thalamus and
  -0.9 on the task-positive blobs).  They are identical for all subjects.
* ``f_sk`` are the latent time courses (AR(1) Gaussian noise, standardised to
  zero mean and unit variance), drawn anew for every subject and run.
* There are three latent factors but four networks: the default-mode-like
  network (with the bilateral thalamus) and the task-positive /
  dorsal-attention-like network share ONE latent with opposite loading signs,
  so they are anticorrelated.  The other two are sensorimotor and visual.
* ``g_sk`` is a small per-subject amplitude jitter (log-normal, sd 0.15).
* ``e_s`` is white Gaussian noise with unit variance, so ``snr`` is the ratio
  of the signal amplitude at a blob peak to the noise standard deviation.
* ``mu_s`` (100-1000) and ``scale_s`` (temporal SD 0.5-3 % of the mean) vary by
  voxel and subject, so the data are deliberately neither demeaned nor
  standardised.  Voxels outside the brain mask are 0.

Group labels in ``participants.tsv`` are metadata only: ``HC`` and ``IGE``
subjects are generated identically.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.signal import lfilter

from bids_cnm import __version__

__all__ = ["DemoDataset", "make_demo_dataset", "main", "load_grid_mask", "loading_maps",
           "NETWORK_BLOBS", "NETWORKS", "DEMO_COORDINATES", "SPACE"]

#: Space label of the grid: nilearn's MNI152 mask is the ICBM152 2009a asymmetric template.
SPACE = "MNI152NLin2009aAsym"
TASK = "rest"
TR = 2.0
BLOB_FWHM_MM = 14.0
DEFAULT_SNR = 0.5
#: Temporal autocorrelation of the latent time courses (slow BOLD fluctuations at TR 2 s).
LATENT_AR1 = 0.6
#: Log-normal sd of the per-subject amplitude of each latent factor.
AMPLITUDE_JITTER = 0.15

# Blobs per latent factor: (label, (x, y, z) MNI mm, peak loading).  The "dmn" factor
# carries both the default-mode-like network (+) and its anticorrelated task-positive
# partner (-), which is what makes the pair anticorrelated.
NETWORK_BLOBS: dict[str, list[tuple[str, tuple[float, float, float], float]]] = {
    "dmn": [
        ("posterior cingulate / precuneus", (0.0, -54.0, 28.0), 1.0),
        ("medial prefrontal cortex", (0.0, 52.0, 8.0), 1.0),
        ("left angular gyrus", (-46.0, -66.0, 32.0), 1.0),
        ("right angular gyrus", (48.0, -62.0, 32.0), 1.0),
        ("left thalamus", (-10.0, -18.0, 8.0), 0.8),
        ("right thalamus", (10.0, -18.0, 8.0), 0.8),
        ("left intraparietal sulcus", (-30.0, -58.0, 50.0), -0.9),
        ("right intraparietal sulcus", (30.0, -58.0, 50.0), -0.9),
        ("left frontal eye field", (-26.0, -6.0, 54.0), -0.9),
        ("right frontal eye field", (28.0, -6.0, 54.0), -0.9),
        ("left anterior insula", (-36.0, 16.0, 2.0), -0.9),
        ("right anterior insula", (38.0, 18.0, 2.0), -0.9),
    ],
    "sensorimotor": [
        ("left precentral gyrus (hand)", (-38.0, -22.0, 56.0), 1.0),
        ("right precentral gyrus (hand)", (38.0, -22.0, 56.0), 1.0),
        ("supplementary motor area", (0.0, -12.0, 62.0), 1.0),
        ("left secondary somatosensory", (-54.0, -22.0, 20.0), 1.0),
        ("right secondary somatosensory", (54.0, -22.0, 20.0), 1.0),
    ],
    "visual": [
        ("left calcarine", (-8.0, -88.0, 4.0), 1.0),
        ("right calcarine", (10.0, -86.0, 4.0), 1.0),
        ("left lateral occipital", (-40.0, -80.0, 0.0), 1.0),
        ("right lateral occipital", (42.0, -78.0, 0.0), 1.0),
    ],
}

#: Networks written as truth maps: name -> (latent factor, sign).  "dan" is the task-positive
#: partner of "dmn"; its map is the DMN map with the sign flipped.
NETWORKS: dict[str, tuple[str, float]] = {
    "dmn": ("dmn", 1.0),
    "dan": ("dmn", -1.0),
    "sensorimotor": ("sensorimotor", 1.0),
    "visual": ("visual", 1.0),
}

# Demo coordinates: (study, set, subtype, modality, [(x, y, z), ...]).  Primary studies sit on
# the DMN + thalamus blobs (reported peaks jittered by a few mm, as in real papers); one
# coordinate of primary03, (6, -60, 32), is ~9 mm off the precuneus centre and primary07 has
# one peak in the caudate, outside every planted network.  Control studies sit on the
# sensorimotor/visual blobs.
DEMO_COORDINATES: list[tuple[str, str, str, str, list[tuple[int, int, int]]]] = [
    ("primary01", "primary", "JME", "fMRI",
     [(2, -52, 30), (-2, 50, 10), (-44, -68, 30)]),
    ("primary02", "primary", "CAE", "fMRI",
     [(-10, -16, 8), (12, -20, 6), (0, -56, 26), (2, 54, 6)]),
    ("primary03", "primary", "GTCS", "PET",
     [(6, -60, 32), (48, -60, 34)]),
    ("primary04", "primary", "JME", "VBM",
     [(-8, -18, 10), (10, -16, 8), (-2, 48, 12), (46, -64, 30), (-48, -64, 34)]),
    ("primary05", "primary", "CAE", "fMRI",
     [(0, -50, 24), (-12, -20, 6), (8, -18, 10), (-2, 56, 4), (-46, -66, 32), (50, -62, 28)]),
    ("primary06", "primary", "GTCS", "fMRI",
     [(-2, -54, 30), (2, 50, 8)]),
    ("primary07", "primary", "JME", "PET",
     [(10, -18, 6), (-10, -20, 8), (-14, 12, 10), (2, -52, 28)]),
    ("primary08", "primary", "CAE", "VBM",
     [(-44, -64, 30), (46, -66, 32), (0, 54, 10)]),
    ("control01", "control", "JME", "fMRI",
     [(-36, -22, 58), (36, -24, 54), (2, -12, 60)]),
    ("control02", "control", "CAE", "PET",
     [(-8, -86, 4), (10, -88, 2)]),
    ("control03", "control", "GTCS", "VBM",
     [(-52, -22, 20), (54, -20, 18), (-38, -20, 54)]),
    ("control04", "control", "JME", "fMRI",
     [(-40, -80, 2), (42, -78, -2), (8, -86, 6)]),
]


@dataclass(frozen=True)
class DemoDataset:
    """Paths of a generated demo dataset.

    Attributes
    ----------
    bids_dir : pathlib.Path
        Root of the BIDS-derivatives connectome (``<out_dir>/connectome``).
    coordinates : pathlib.Path
        Demo coordinates table (``<out_dir>/coordinates.tsv``).
    truth : dict of str to pathlib.Path
        Network name -> signed ground-truth loading map (NIfTI, same grid as the BOLD data).
    network_names : tuple of str
        Names of the planted networks, in the order of ``truth``.
    """

    bids_dir: Path
    coordinates: Path
    truth: dict[str, Path] = field(default_factory=dict)
    network_names: tuple[str, ...] = ()


def load_grid_mask(resolution: int = 4) -> nib.Nifti1Image:
    """Return nilearn's MNI152 (2009a asymmetric) brain mask at ``resolution`` mm.

    Parameters
    ----------
    resolution : int
        Isotropic voxel size in mm (nilearn ships the template, nothing is downloaded).

    Returns
    -------
    nibabel.Nifti1Image
        Binary uint8 mask defining the grid of all demo images.
    """
    from nilearn.datasets import load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=resolution)


def loading_maps(mask_img: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """Compute the loading of every in-mask voxel on each latent factor.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        Binary brain mask defining the grid.

    Returns
    -------
    dict of str to numpy.ndarray
        Factor name -> 1-D float32 array of loadings over the in-mask voxels (C order).
    """
    mask = np.asarray(mask_img.dataobj) > 0
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(mask_img.affine, ijk)
    sigma = BLOB_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    maps = {}
    for factor, blobs in NETWORK_BLOBS.items():
        load = np.zeros(len(xyz))
        for _, centre, peak in blobs:
            d2 = np.sum((xyz - np.asarray(centre)) ** 2, axis=1)
            load += peak * np.exp(-d2 / (2.0 * sigma**2))
        # Truncate the far tails so truth maps have a clear support (< 0.5 % of peak).
        load[np.abs(load) < 5e-3] = 0.0
        maps[factor] = load.astype(np.float32)
    return maps


def _subject_labels(n_subjects: int) -> list[str]:
    width = max(2, len(str(n_subjects)))
    return [f"{i:0{width}d}" for i in range(1, n_subjects + 1)]


def _write_nifti(img: nib.Nifti1Image, path: Path) -> None:
    # Stream through level-1 gzip (fast, no in-memory copy of the serialised image) with
    # an empty name and fixed mtime in the gzip header so identical data give identical files.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                 compresslevel=1, mtime=0) as gz:
        img.to_file_map({"image": nib.FileHolder(fileobj=gz)})


def _make_img(data: np.ndarray, mask_img: nib.Nifti1Image, tr: float | None = None
              ) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, mask_img.affine)
    img.header.set_sform(mask_img.affine, code=4)  # 4 = MNI152
    img.header.set_qform(mask_img.affine, code=4)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
    return img


def _latents(rng: np.random.Generator, n_factors: int, n_volumes: int) -> np.ndarray:
    """AR(1)-filtered Gaussian noise, each row standardised to mean 0, variance 1."""
    burn = 20  # discard the filter's start-up transient
    e = rng.standard_normal((n_factors, n_volumes + burn))
    f = lfilter([1.0], [1.0, -LATENT_AR1], e, axis=1)[:, burn:]
    f -= f.mean(axis=1, keepdims=True)
    f /= f.std(axis=1, keepdims=True)
    return f


def _simulate_run(rng: np.random.Generator, loadings: np.ndarray, gains: np.ndarray,
                  mu: np.ndarray, scale: np.ndarray, n_volumes: int, snr: float) -> np.ndarray:
    """Return (n_voxels, n_volumes) float32 BOLD-like data for one run."""
    f = _latents(rng, loadings.shape[1], n_volumes).astype(np.float32)
    x = rng.standard_normal((loadings.shape[0], n_volumes), dtype=np.float32)
    x *= np.float32(1.0 / snr)
    x += (loadings * gains.astype(np.float32)) @ f
    x *= scale[:, None]
    x += mu[:, None]
    return x


def _write_subject(index: int, label: str, run_ids: Sequence[int | None], desc: str,
                   func_dir: Path, mask_img: nib.Nifti1Image, mask: np.ndarray,
                   loadings: np.ndarray, base_mean: np.ndarray, n_volumes: int,
                   resolution: int, snr: float, random_state: int) -> list[Path]:
    # One RNG per subject, keyed by (seed, subject index): a subject's data do not depend on
    # how many subjects are generated or on thread scheduling.
    rng = np.random.default_rng([random_state, index])
    n_vox = loadings.shape[0]
    gains = np.exp(AMPLITUDE_JITTER * rng.standard_normal(loadings.shape[1]))
    # Subject-specific intensity (scanner gain) and voxel-wise temporal SD of 0.5-3 % of
    # the mean, so the app has to centre and scale each voxel itself.
    mu = (base_mean * rng.uniform(0.8, 1.2)).astype(np.float32)
    cv = rng.uniform(0.005, 0.03, n_vox)
    total_sd = np.sqrt((loadings**2).sum(axis=1) + 1.0 / snr**2)
    scale = (mu * cv / total_sd).astype(np.float32)

    mask_u8 = _make_img(mask.astype(np.uint8), mask_img)
    written = []
    for run in run_ids:
        data = _simulate_run(rng, loadings, gains, mu, scale, n_volumes, snr)
        # Fortran order is NIfTI's on-disk order, so writing needs no transposed copy.
        vol = np.zeros(mask.shape + (n_volumes,), dtype=np.float32, order="F")
        vol[mask] = data
        del data
        run_ent = f"_run-{run}" if run is not None else ""
        stem = f"sub-{label}_task-{TASK}{run_ent}_space-{SPACE}_res-{resolution}"
        bold = func_dir / f"{stem}_desc-{desc}_bold.nii.gz"
        _write_nifti(_make_img(vol, mask_img, tr=TR), bold)
        del vol
        # BIDS requires Resolution where a file name has a res entity
        resolution_text = f"{resolution} mm isotropic voxels in {SPACE}"
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(json.dumps(
            {"RepetitionTime": TR, "TaskName": TASK, "SkullStripped": False,
             "Resolution": resolution_text}, indent=2) + "\n")
        mask_path = func_dir / f"{stem}_desc-brain_mask.nii.gz"
        _write_nifti(mask_u8, mask_path)
        mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")).write_text(json.dumps(
            {"Type": "Brain", "Resolution": resolution_text}, indent=2) + "\n")
        written += [bold, mask_path]
    return written


def make_demo_dataset(out_dir: str | os.PathLike, n_subjects: int = 20, n_volumes: int = 120,
                      resolution: int = 4, n_runs_first_subject: int = 2, random_state: int = 0,
                      snr: float = DEFAULT_SNR) -> DemoDataset:
    """Write a synthetic normative connectome with planted networks.

    Layout under ``out_dir`` (``<ent>`` = ``space-MNI152NLin2009aAsym_res-<resolution>``)::

        connectome/                           BIDS derivatives, fMRIPrep-like
          dataset_description.json
          participants.tsv, participants.json
          sub-01/func/sub-01_task-rest_run-1_<ent>_desc-preproc_bold.nii.gz (+ .json)
          sub-01/func/sub-01_task-rest_run-1_<ent>_desc-brain_mask.nii.gz
          sub-01/func/sub-01_task-rest_run-2_<ent>_desc-preproc_bold.nii.gz ...
          sub-02/func/sub-02_task-rest_<ent>_desc-preproc_bold.nii.gz ...
          ...
          sub-NN/func/sub-NN_task-rest_<ent>_desc-denoised_bold.nii.gz ...
        coordinates.tsv                       study, x, y, z, set, subtype, modality
        truth/network-<name>_loading.nii.gz   signed loading maps, one per network
        truth/README.md

    The first subject has ``n_runs_first_subject`` runs (``run-1``, ``run-2``, ...) to
    exercise multi-run concatenation.  The LAST subject (when ``n_subjects > 1``) uses
    XCP-D naming, ``desc-denoised_bold`` instead of ``desc-preproc_bold``, with no other
    difference, so that both conventions are exercised.  Every fourth subject is in group
    ``IGE``, the others ``HC``; the group does not change the simulated data.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory (created if needed; existing demo files are overwritten).
    n_subjects : int
        Number of connectome subjects.
    n_volumes : int
        Volumes per run (TR = 2 s).
    resolution : int
        Isotropic voxel size in mm of nilearn's MNI152 mask grid (2, 3 or 4 are typical).
    n_runs_first_subject : int
        Number of runs of subject 01; 1 omits the ``run`` entity.
    random_state : int
        Non-negative seed; the files are a deterministic (byte-identical) function of all
        arguments; adding subjects does not change the data of the existing ones.
    snr : float
        Signal amplitude at a blob peak (loading 1) divided by the noise SD.  The default
        0.5 gives a single voxel at a blob peak a correlation of 1/sqrt(1 + 1/snr**2) = 0.45
        with its network latent (0.37 in the thalamus), i.e. seed-to-target correlations of
        about 0.3-0.45 in one subject, like real resting-state data.

    Returns
    -------
    DemoDataset
        Paths of the connectome, coordinates table and truth maps.

    Examples
    --------
    >>> ds = make_demo_dataset("/tmp/cnm_demo", n_subjects=4, n_volumes=40)  # doctest: +SKIP
    >>> sorted(ds.truth)  # doctest: +SKIP
    ['dan', 'dmn', 'sensorimotor', 'visual']
    """
    if n_subjects < 1 or n_volumes < 3 or n_runs_first_subject < 1:
        raise ValueError("n_subjects, n_runs_first_subject must be >= 1 and n_volumes >= 3")
    if not snr > 0:
        raise ValueError("snr must be positive")
    if random_state < 0:
        raise ValueError("random_state must be a non-negative integer")
    out = Path(out_dir)
    bids_dir = out / "connectome"
    truth_dir = out / "truth"
    bids_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)

    mask_img = load_grid_mask(resolution)
    mask = np.asarray(mask_img.dataobj) > 0
    maps = loading_maps(mask_img)
    factor_names = list(NETWORK_BLOBS)
    loadings = np.stack([maps[k] for k in factor_names], axis=1)  # (n_vox, n_factors)

    rng = np.random.default_rng([random_state, 0xC0FFEE])  # dataset-level draws
    # Shared voxel-wise mean intensity in 100-1000 (BOLD-like, never zero-mean).
    base_mean = rng.uniform(100.0, 1000.0, loadings.shape[0])
    labels = _subject_labels(n_subjects)
    ages = rng.integers(18, 46, n_subjects)
    sexes = rng.choice(["F", "M"], n_subjects)
    groups = ["IGE" if (i + 1) % 4 == 0 else "HC" for i in range(n_subjects)]

    (bids_dir / "dataset_description.json").write_text(json.dumps({
        "Name": "bids_cnm synthetic normative connectome",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_cnm demo generator", "Version": __version__}],
    }, indent=2) + "\n")
    pd.DataFrame({"participant_id": [f"sub-{lab}" for lab in labels], "age": ages,
                  "sex": sexes, "group": groups}).to_csv(
        bids_dir / "participants.tsv", sep="\t", index=False)
    (bids_dir / "participants.json").write_text(json.dumps({
        "age": {"Description": "Age", "Units": "years"},
        "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "Diagnostic group (metadata only; data are generated "
                                 "identically)",
                  "Levels": {"HC": "healthy control", "IGE": "idiopathic generalized epilepsy"}},
    }, indent=2) + "\n")

    jobs = []
    for i, label in enumerate(labels):
        runs: list[int | None] = (list(range(1, n_runs_first_subject + 1))
                                  if i == 0 and n_runs_first_subject > 1 else [None])
        desc = "denoised" if (n_subjects > 1 and i == n_subjects - 1) else "preproc"
        func_dir = bids_dir / f"sub-{label}" / "func"
        func_dir.mkdir(parents=True, exist_ok=True)
        jobs.append((i + 1, label, runs, desc, func_dir))

    # Two workers: gzip and most numpy work release the GIL, and each worker holds one
    # subject's volume at a time, so memory stays bounded.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_write_subject, idx, label, runs, desc, func_dir, mask_img,
                               mask, loadings, base_mean, n_volumes, resolution, snr,
                               random_state)
                   for idx, label, runs, desc, func_dir in jobs]
        for fut in futures:
            fut.result()

    truth: dict[str, Path] = {}
    for name, (factor, sign) in NETWORKS.items():
        vol = np.zeros(mask.shape, dtype=np.float32)
        vol[mask] = sign * maps[factor]
        path = truth_dir / f"network-{name}_loading.nii.gz"
        _write_nifti(_make_img(vol, mask_img), path)
        truth[name] = path
    (truth_dir / "README.md").write_text(
        "Signed loadings of each planted network on its latent time course (peak 1; the "
        "anticorrelated partner appears with negative sign; noise SD = 1/snr = "
        f"{1.0 / snr:g}).\n")

    rows = [(study, x, y, z, cset, subtype, modality)
            for study, cset, subtype, modality, xyz in DEMO_COORDINATES for x, y, z in xyz]
    coords = out / "coordinates.tsv"
    pd.DataFrame(rows, columns=["study", "x", "y", "z", "set", "subtype", "modality"]).to_csv(
        coords, sep="\t", index=False)

    return DemoDataset(bids_dir=bids_dir, coordinates=coords, truth=truth,
                       network_names=tuple(truth))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m bids_cnm.demo.data OUT_DIR [options]``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m bids_cnm.demo.data",
        description="Write a synthetic fMRIPrep-like connectome with planted networks, demo "
                    "coordinates and ground-truth maps.")
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("--n-subjects", type=int, default=20)
    parser.add_argument("--n-volumes", type=int, default=120)
    parser.add_argument("--resolution", type=int, default=4, help="voxel size in mm")
    parser.add_argument("--n-runs-first-subject", type=int, default=2)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ds = make_demo_dataset(args.out_dir, n_subjects=args.n_subjects, n_volumes=args.n_volumes,
                           resolution=args.resolution,
                           n_runs_first_subject=args.n_runs_first_subject,
                           random_state=args.random_state, snr=args.snr)
    n_bold = len(list(ds.bids_dir.glob("sub-*/func/*_bold.nii.gz")))
    print(f"connectome:  {ds.bids_dir} ({args.n_subjects} subjects, {n_bold} BOLD runs)")
    print(f"coordinates: {ds.coordinates}")
    for name, path in ds.truth.items():
        print(f"truth:       {path} ({name})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
