"""Activation likelihood estimation (ALE) of the input coordinates with NiMARE.

A conventional coordinate-based meta-analysis to set beside the coordinate
network map: NiMARE's ALE (Eickhoff et al. 2009, 2012; Turkeltaub et al. 2012)
with Monte-Carlo family-wise error correction (Eickhoff et al. 2016 recommend a
cluster-forming threshold of p < 0.001 and cluster-level FWE p < 0.05).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_cnm.analyses.frozen_heap import frozen_heap
from bids_cnm.errors import InputDataError

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_SAMPLE_SIZE", "MAPS_RECORD", "ALEMaps", "coordinates_to_nimare_source",
           "load_maps", "run_ale", "save_maps"]

# ALE kernels widen with smaller samples, so a sample size is required; 20 is a
# typical size of the small imaging studies pooled in epilepsy meta-analyses.
DEFAULT_SAMPLE_SIZE = 20

THRESHOLDED_MAP = "z_desc-sizeClusterFWE_thresh"


def coordinates_to_nimare_source(
    coordinates: pd.DataFrame,
    default_sample_size: int = DEFAULT_SAMPLE_SIZE,
    source: str = "coordinates table",
) -> dict:
    """Convert a coordinate table to a NiMARE dataset dictionary.

    Parameters
    ----------
    coordinates : DataFrame
        Columns ``study, x, y, z`` (MNI mm) and optionally ``set`` and
        ``sample_size`` (or ``n``) per study.  One study of one set is one
        experiment (contrast ``"1"``): experiments are keyed by (set, study),
        ``"<set>:<study>"`` when there is a ``set`` column, so equal study names
        in two sets stay two experiments.
    default_sample_size : int
        Used (with a logged warning) when there is no sample-size column; rows
        with an empty sample size get it too.
    source : str
        File name for error messages.

    Returns
    -------
    dict
        NiMARE's JSON-like dataset source (space "MNI").

    Raises
    ------
    InputDataError
        On missing columns, non-numeric values or a study with conflicting
        sample sizes (message names file, row, column).
    """
    missing = [c for c in ("study", "x", "y", "z") if c not in coordinates.columns]
    if missing:
        raise InputDataError(f"{source}: missing column(s) {missing}; required: study, x, y, z")
    if len(coordinates) == 0:
        raise InputDataError(f"{source}: the table has no coordinate rows")
    table = coordinates.reset_index(drop=True).copy()
    for column in ("x", "y", "z"):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputDataError(
                f"{source}, row {bad[0] + 2}, column '{column}': "
                f"{table[column].iloc[bad[0]]!r} is not a number; give MNI mm"
            )
        table[column] = values
    n_column = "sample_size" if "sample_size" in table.columns else (
        "n" if "n" in table.columns else None
    )
    if n_column is None:
        LOGGER.warning(
            "%s: no 'sample_size' column; ALE kernels use the default sample size %d for "
            "every study", source, default_sample_size,
        )
        table["_n"] = float(default_sample_size)
    else:
        values = pd.to_numeric(table[n_column], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isnan(values) & ~(values > 0))
        if bad.size:
            raise InputDataError(
                f"{source}, row {bad[0] + 2}, column '{n_column}': sample size must be a "
                "positive number"
            )
        if np.isnan(values).any():
            LOGGER.warning(
                "%s: %d row(s) without sample size; using %d", source,
                int(np.isnan(values).sum()), default_sample_size,
            )
        table["_n"] = np.where(np.isnan(values), float(default_sample_size), values)

    src: dict = {}
    table["study"] = table["study"].astype(str)
    keys = ["set", "study"] if "set" in table.columns else ["study"]
    if "set" in table.columns:
        table["set"] = table["set"].astype(str)
    for key, rows in table.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        experiment = ":".join(str(k) for k in key)
        study = key[-1]
        sizes = np.unique(rows["_n"])
        if sizes.size > 1:
            raise InputDataError(
                f"{source}, row {rows.index[0] + 2}, column '{n_column}': study '{study}' has "
                f"different sample sizes {sizes.tolist()}; give one per study"
            )
        src[experiment] = {
            "contrasts": {
                "1": {
                    "coords": {
                        "space": "MNI",
                        "x": rows["x"].tolist(),
                        "y": rows["y"].tolist(),
                        "z": rows["z"].tolist(),
                    },
                    "metadata": {"sample_sizes": [int(round(sizes[0]))]},
                }
            }
        }
    return src


class ALEMaps(dict):
    """NiMARE's maps by name, with NiMARE's ``description_`` and ``bibtex_`` of the run."""

    description: str = ""
    bibtex: str = ""


#: what :func:`save_maps` writes beside the maps
MAPS_RECORD = "ale_maps.json"


def save_maps(maps: ALEMaps, folder: str | Path, names: Iterable[str]) -> Path:
    """Save the named maps (uncompressed NIfTI, their arrays' data type) and the texts.

    For a step that computes the ALE to hand it to another (the workflow's
    ``plan_ale`` to ``plan_analyses``): a map's array is read back with the same
    values, data type and affine.

    Parameters
    ----------
    maps : ALEMaps
        :func:`run_ale`'s maps and NiMARE's texts.
    folder : path
        An existing folder (a node's); the files are ``<i>.nii`` and :data:`MAPS_RECORD`.
    names : iterable of str
        The maps to keep (the others, NiMARE's intermediate maps, are not saved).

    Returns
    -------
    Path
        The record (``MAPS_RECORD``), for :func:`load_maps`.
    """
    folder = Path(folder)
    files = {}
    for i, name in enumerate(names):  # NiMARE's names hold '-' and '_': not file names
        # NiMARE's maps carry its mask's header (uint8): saved as they are, their
        # floats would be scaled to bytes.  The array's own type is kept instead.
        data = np.asarray(maps[name].dataobj)
        nib.save(nib.Nifti1Image(data, maps[name].affine), folder / f"{i}.nii")
        files[name] = f"{i}.nii"
    record = folder / MAPS_RECORD
    record.write_text(json.dumps({"maps": files, "description": maps.description,
                                  "bibtex": maps.bibtex}))
    return record


def load_maps(record: str | Path) -> ALEMaps:
    """The maps :func:`save_maps` saved (data read on use).

    Parameters
    ----------
    record : path
        The record :func:`save_maps` returned.

    Returns
    -------
    ALEMaps
        The saved maps by NiMARE's names, with NiMARE's texts.
    """
    record = Path(record)
    saved = json.loads(record.read_text())
    maps = ALEMaps({name: nib.load(record.parent / file) for name, file in saved["maps"].items()})
    maps.description, maps.bibtex = saved["description"], saved["bibtex"]
    return maps


def run_ale(
    coordinates: pd.DataFrame,
    n_iters: int = 10000,
    voxel_thresh: float = 0.001,
    cluster_threshold: float = 0.05,
    target: str = "mni152_2mm",
    n_cores: int = 1,
    random_state: int | None = None,
    default_sample_size: int = DEFAULT_SAMPLE_SIZE,
    source: str = "coordinates table",
) -> dict[str, nib.Nifti1Image]:
    """ALE meta-analysis of coordinates with Monte-Carlo FWE correction (NiMARE).

    Builds a :class:`nimare.dataset.Dataset` (one experiment per (set, study)),
    fits :class:`nimare.meta.cbma.ale.ALE` (ALE kernel with sample-size
    dependent FWHM, approximate null) and corrects with
    ``nimare.correct.FWECorrector(method='montecarlo', n_iters, voxel_thresh,
    n_cores)``.

    Parameters
    ----------
    coordinates : DataFrame
        ``study, x, y, z`` (MNI mm) and optional ``sample_size``/``n``; see
        :func:`coordinates_to_nimare_source`.  Talairach coordinates must be
        converted to MNI beforehand.
    n_iters : int
        Monte-Carlo iterations of the FWE correction (10000 in published ALE
        practice; small values only for tests).
    voxel_thresh : float
        Cluster-forming voxel-level (uncorrected) p threshold.
    cluster_threshold : float
        Cluster-level FWE alpha for the thresholded map.
    target : str
        NiMARE template space (``'mni152_2mm'``, ``'mni152_1mm'``, ``'ale_2mm'``).
    n_cores : int
        Cores for the Monte-Carlo correction.
    random_state : int, optional
        Seed of the Monte-Carlo null.
    default_sample_size : int
        Sample size when the table has none.
    source : str
        File name for error messages.

    Returns
    -------
    dict of str to Nifti1Image
        NiMARE's maps under NiMARE's names:

        - ``stat`` (ALE values), ``p``, ``z``, ``logp``: uncorrected;
        - ``z_level-voxel_corr-FWE_method-montecarlo`` and
          ``logp_level-voxel_corr-FWE_method-montecarlo``: voxel-level FWE;
        - ``z_desc-size_level-cluster_corr-FWE_method-montecarlo``,
          ``logp_desc-size_level-cluster_corr-FWE_method-montecarlo``: cluster
          size FWE (clusters formed at ``voxel_thresh``);
        - ``z_desc-mass_level-cluster_corr-FWE_method-montecarlo``,
          ``logp_desc-mass_level-cluster_corr-FWE_method-montecarlo``: cluster
          mass FWE;

        plus ``z_desc-sizeClusterFWE_thresh``: the uncorrected z map kept in
        clusters whose cluster-size FWE p < ``cluster_threshold`` (0 elsewhere).
    """
    from nimare.correct import FWECorrector
    from nimare.dataset import Dataset
    from nimare.meta.cbma.ale import ALE

    if not 0 < voxel_thresh < 1 or not 0 < cluster_threshold < 1:
        raise ValueError("voxel_thresh and cluster_threshold must be in (0, 1)")
    src = coordinates_to_nimare_source(coordinates, default_sample_size, source)
    if len(src) < 17:
        # Eickhoff et al. 2016 (NeuroImage 137:70-85): ALE needs ~17-20 experiments.
        LOGGER.warning(
            "ALE of only %d studies: results are driven by single experiments "
            "(>= 17 recommended, Eickhoff et al. 2016)", len(src),
        )
    # nilearn collects garbage at every image it reads (NiMARE's masker: ~20 times)
    with frozen_heap(), warnings.catch_warnings():
        # NiMARE 0.2x deprecates Dataset in favour of Studyset; Dataset still works.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"nimare")
        warnings.filterwarnings("ignore", message=r".*Dataset is deprecated.*")
        dset = Dataset(src, target=target)
        result = ALE(null_method="approximate", random_state=random_state).fit(dset)
        corrector = FWECorrector(
            method="montecarlo", n_iters=int(n_iters), voxel_thresh=voxel_thresh,
            n_cores=n_cores,
        )
        corrected = corrector.transform(result)
        maps = ALEMaps({name: corrected.get_map(name) for name in corrected.maps})
        logp_cluster = corrected.get_map(
            "logp_desc-size_level-cluster_corr-FWE_method-montecarlo", return_type="array"
        )
        z = corrected.get_map("z", return_type="array")
        keep = logp_cluster > -np.log10(cluster_threshold)
        maps[THRESHOLDED_MAP] = corrected.masker.inverse_transform(np.where(keep, z, 0.0))
    # NiMARE's own methods text and references, for the run's citation boilerplate
    maps.description = str(getattr(corrected, "description_", "") or "")
    maps.bibtex = str(getattr(corrected, "bibtex_", "") or "")
    return maps
