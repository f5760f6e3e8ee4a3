"""Run an analysis plan on the group results and write its derivatives.

:func:`run_plan` reads everything from one :class:`~bids_cnm.engine.group_results.GroupResults`
(the maps of the study seeds and of the plan's own DBS and reference seeds, and the
per-subject node values for ROI-to-ROI), computes the primary overlap network, runs every
analysis of the plan with the pure functions of :mod:`bids_cnm.analyses.validation`,
:mod:`~bids_cnm.analyses.dbs`, :mod:`~bids_cnm.analyses.roi` and
:mod:`~bids_cnm.analyses.ale`, and writes maps, tables and JSON sidecars atomically.

Networks are taken over the analysis mask: voxels outside it are NaN.  An ROI's % overlap
is by default the sum of the network's values in the ROI over the number of ROI voxels
(outside the mask a voxel counts as 0; Ji et al. 2025), or with ``denominator: mask`` the
mean over the ROI's voxels inside the mask (x 100); random spheres are counted the same way.

File names (``<grid>`` = the run's ``task``/``space``/``res`` entities, ``<net>`` = the
``set``/``thresh`` entities of the network analysed, ``<Name>`` = the entry's name)::

    <grid>_set-<P>_thresh-<T>_desc-controls_summary.tsv
    <grid>_<net>_desc-roioverlap<Name>_{values,summary,null}.tsv
    <grid>_desc-spatialcorr<Name>_summary.tsv
    <grid>_set-<S>_desc-roitoroi_{values,summary,ranking,posthoc}.tsv
    <grid>_<net>_desc-peak<Name>_{peaks,distances}.tsv
    <grid>_set-dbs_desc-dbs_boldmap.nii.gz
    <grid>_set-dbs_desc-dbsrmap_stat-{r,p,pfwe}_boldmap.nii.gz
    <grid>_set-dbs_desc-dbs_summary.tsv, <grid>_set-dbs_desc-dbsloo_values.tsv
    <grid>_<net>_desc-convergent_boldmap.nii.gz (+ _summary.tsv, _peaks.tsv)
    space-MNI152NLin6Asym_res-2_set-<P>_desc-ale..._stat-<s>_statmap.nii.gz
    space-MNI152NLin6Asym_res-2_set-<P>_desc-ale_summary.tsv (+ desc-aleclusterfwe_peaks.tsv)
    plan.json

each with a JSON sidecar (tables: one entry per column, BIDS style).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from bids_cnm.analyses import ale as ale_mod
from bids_cnm.analyses.dbs import (
    convergent_network,
    leave_one_out_prediction,
    outcome_weighted_network,
    rmap_permutation,
)
from bids_cnm.analyses.frozen_heap import frozen_heap
from bids_cnm.analyses.plan_seeds import DBS_SET, REFERENCE_SET, plan_nodes
from bids_cnm.analyses.roi import (
    atlas_label_masks,
    cortex_shell,
    load_mask_images,
    sphere_mask,
    voxel_to_world,
    world_to_voxel,
)
from bids_cnm.analyses.validation import (
    compare_groups,
    distances_mm,
    mean_region_overlap,
    network_anova,
    null_distribution_random_regions,
    null_distribution_random_spheres,
    peak_plateaus,
    permutation_p,
    roi_overlap,
    roi_to_network_connectivity,
    spatial_correlation,
)
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import seed_label
from bids_cnm.errors import CNMError, InputDataError, MissingInputError, ReadError
from bids_cnm.io.derivatives import DerivativesWriter, unmask, write_json
from bids_cnm.plan import (
    DBS_MAPS,
    Atlas,
    Image,
    Plan,
    Region,
    ROIOverlap,
    atlas_labels,
    coordinate_table,
    mask_roi_files,
    read_dbs_table,
    sphere_labels,
)
from bids_cnm.stats.overlap import overlap_maps, threshold_label
from bids_cnm.stats.peaks import PEAK_COLUMNS, find_peaks

LOGGER = logging.getLogger("bids_cnm")

__all__ = ["ALE_MAPS", "ale_foci", "ale_part", "compute_ale", "run_plan"]

#: t values at or beyond this are the engine's stand-in for infinity (zero variance)
_HUGE = float(np.finfo(np.float32).max) / 2

#: NiMARE map -> (desc, stat) of the ALE maps written
ALE_MAPS = {
    "stat": ("ale", "ale"),
    "z": ("ale", "z"),
    "p": ("ale", "p"),
    "logp_level-voxel_corr-FWE_method-montecarlo": ("alevoxelfwe", "logp"),
    "logp_desc-size_level-cluster_corr-FWE_method-montecarlo": ("aleclusterfwe", "logp"),
    ale_mod.THRESHOLDED_MAP: ("aleclusterfwe", "z"),
}
_ALE_SPACE = {"mni152_2mm": ("MNI152NLin6Asym", "2"), "ale_2mm": ("MNI152NLin6Asym", "2"),
              "mni152_1mm": ("MNI152NLin6Asym", "1")}

_COLUMN_DESCRIPTIONS = {
    "roi": "ROI name (sphere label, mask file name or atlas region).",
    # not "set": pybids reads a sidecar key named after an entity of the file name as
    # that entity's value
    "control_set": "Control coordinate set compared with the primary sets.",
    "max_abs_overlap": "Largest |signed overlap| of the control set's network.",
    "n_voxels_in_mask": "ROI voxels inside the analysis mask with a finite network value.",
    "overlap_pct": "% overlap x 100, as the column 'denominator' says: 'roi' = sum of the "
                   "network's values in the ROI / number of ROI voxels (voxels outside the "
                   "analysis mask count as 0; Ji et al. 2025); 'mask' = mean over the ROI's "
                   "voxels inside the analysis mask (n/a, either way: no voxel of the ROI in "
                   "the mask).",
    "denominator": "What the % overlap divides by: 'roi' (all ROI voxels, outside the "
                   "analysis mask counted as 0) or 'mask' (ROI voxels inside the mask).",
    "null_within": "Where the random sphere centres were drawn: 'brain' (the analysis mask), "
                   "'cortex' (its outer shell) or 'mask' (a user mask within the analysis "
                   "mask).",
    "plateau": "Tied extreme plateau (1, 2, ...: largest first); one row each.",
    "n_voxels": "Voxels of the ROI on the connectome grid (peaks: of the plateau).",
    "observed": "Observed statistic: mean of the ROIs' % overlaps (mean_of_regions) or % "
                "overlap of all their voxels pooled (pooled).",
    "null_mean": "Mean of the null distribution.",
    "null_sd": "Standard deviation of the null distribution (ddof=1).",
    "p_null": "Permutation p: (count of null values as or more extreme + 1) / (n_draws + 1) "
              "in the direction 'alternative'; two-sided: min(1, 2 x the smaller one-sided p).",
    "t": "Welch t statistic (a - b).",
    "df": "Welch-Satterthwaite degrees of freedom.",
    "p_welch": "Two-sided p of the Welch t-test.",
    "ci_low": "Lower bound of the CI of the mean difference (a - b).",
    "ci_high": "Upper bound of the CI of the mean difference (a - b).",
    "hedges_g": "Hedges' g (pooled-SD effect size with the exact small-sample correction).",
    "cohens_d": "Cohen's d (pooled SD).",
    "r": "Pearson (or Spearman) spatial correlation over the voxels finite in both maps.",
    "similarity": "Spatial correlation of the patient's network with the outcome-weighted "
                  "network of the other patients.",
    "outcome": "Clinical outcome (e.g. % seizure reduction).",
    "distance_mm": "Euclidean distance from the peak (mm).",
    "null_overlap": "One draw of the null distribution (% overlap).",
    # the map analysed, in every summary and peaks table
    "network": "Map analysed, as the plan names it: '<kind>:<sets>' (the signed overlap, "
               "or its positive-only or negative-only part, of those coordinate sets), "
               "'dbs' (DBS network), 'dbsrmap' (DBS R-map), 'convergent', or an image's path.",
    "analysis": "Name of the analysis in the analysis plan.",
    # ROI overlap summary
    "rois": "Kind of ROIs: spheres, masks or atlas (regions).",
    "n_rois": "ROIs of the analysis.",
    "n_rois_in_mask": "ROIs with at least one voxel inside the analysis mask with a finite "
                      "network value (the others are left out of the statistic).",
    "null_kind": "Null model: 'regions' (random atlas regions) or 'spheres' (random spheres).",
    "n_draws": "Draws of the null distribution.",
    "n_candidate_regions": "Atlas regions with a voxel in the analysis mask, drawn from.",
    "null_diameter_mm": "Diameter of the random spheres (mm).",
    "n_candidate_centres": "Voxels allowed as centres of the random spheres.",
    "alternative": "Direction of the test: 'greater', 'less' or 'two-sided'.",
    "compare_column": "Column of the ROI table that splits the ROIs into the two groups.",
    "group_a": "Value of compare_column of group a.",
    "group_b": "Value of compare_column of group b.",
    "n_a": "ROIs of group a inside the analysis mask.",
    "n_b": "ROIs of group b inside the analysis mask.",
    "mean_a": "Mean % overlap of group a.",
    "mean_b": "Mean % overlap of group b.",
    "sd_a": "Standard deviation of group a's % overlaps (ddof=1).",
    "sd_b": "Standard deviation of group b's % overlaps (ddof=1).",
    "mean_diff": "Difference of the means, a - b.",
    "confidence": "Level of the confidence interval (ci_low, ci_high).",
    # spatial correlation and control sets
    "reference": "The reference map: a seed of the plan (its connectivity map, stat in "
                 "brackets) or an image's path.",
    "method": "Correlation: 'pearson' or 'spearman'.",
    # DBS
    "n_patients": "DBS patients.",
    "patient_map": "Group map of each patient's VAT seed used: 't' (one-sample t over the "
                   "connectome's subjects), 'z' (mean Fisher z) or 'r' (mean r).",
    "normalize": "Denominator of the outcome-weighted DBS network sum_i o_i N_i: 'n' "
                 "(patients; the reference study's), 'sum' (sum of outcomes) or 'abs_sum' "
                 "(sum of |outcomes|).",
    "r_dbs_network": "Pearson r, over the analysis mask, between the DBS network and the "
                     "network.",
    "rmap_max_abs_r": "Largest |r| of the DBS R-map (across patients, VAT connectivity "
                      "against outcome).",
    "rmap_min_p_fwe": "Smallest family-wise corrected permutation p of the R-map (maximum "
                      "|r| over voxels).",
    "loo_r": "Leave-one-patient-out prediction: Pearson r between the outcomes and each "
             "patient's similarity to the others' DBS network (their outcome-weighted sum / "
             "their number, whatever 'normalize' says).",
    "loo_p_parametric": "Two-sided parametric p of loo_r (scipy.stats.pearsonr).",
    "loo_p_permutation": "Permutation p of loo_r (outcomes shuffled, networks rebuilt), in "
                         "the direction 'alternative'.",
    "n_permutations": "Permutations of the outcomes (R-map and leave-one-out).",
    "patient": "Patient label (the DBS table's).",
    "seed": "Seed of the patient's VAT (seed-<id> entity of its files).",
    "vat_voxels": "Voxels of the patient's VAT on the connectome grid.",
    "r_convergent_network": "Pearson r, over the analysis mask, between the convergent "
                            "network and the coordinate network.",
    "r_convergent_dbs": "Pearson r between the convergent network and the DBS network.",
    "r_network_dbs": "Pearson r between the coordinate network and the DBS network.",
    # ROI-to-ROI
    "subject": "Connectome subject label (<label> of sub-<label>).",
    "node": "Node of the parcellation (its name in the nodes table, else node<k>).",
    "mean_z": "Mean Fisher z of the node with the study seeds, over connectome subjects and "
              "seeds.",
    "test": "Test: 'nodes' (one-way ANOVA, nodes as units), 'repeated_measures' (subjects), "
            "'friedman'; post-hoc: 'welch', 'paired_t' or 'wilcoxon'.",
    "unit": "Units of the test: nodes or subjects.",
    "statistic_name": "Name of the test statistic: F or chi2.",
    "df_between": "Degrees of freedom between networks (G - 1).",
    "df_within": "Error degrees of freedom (n/a for Friedman).",
    "effect_size_name": "Effect size: eta_squared, partial_eta_squared or kendall_w.",
    "effect_size": "Value of the effect size named in effect_size_name.",
    "n_units": "Units of the test (nodes, or subjects with a value for every network).",
    "n_seeds": "Study seeds whose connectivity is averaged.",
    "n_nodes": "Nodes of the parcellation.",
    "n_networks": "Networks of the parcellation.",
    "top_network": "Network with the highest mean connectivity.",
    "network_a": "First network of the pair (ranking order).",
    "network_b": "Second network of the pair.",
    "p_holm": "p adjusted (Holm) over the pairs that were tested (a network of one unit is "
              "not).",
    "cohens_dz": "Cohen's d_z: mean / SD (ddof=1) of the paired differences network_a - "
                 "network_b.",
    "median_diff": "Median of the paired differences network_a - network_b.",
    # peaks in a region
    "n_plateaus": "Tied extreme plateaus of the map in the region.",
    "region_voxels": "Voxels of the region inside the analysis mask.",
    "nearest_reference": "Reference coordinate nearest to the plateau's location (x, y, z).",
    "nearest_distance_mm": "Distance from the plateau's location (x, y, z) to "
                           "nearest_reference (mm).",
    # ALE
    "n_foci": "Coordinates (foci) of the ALE.",
    "n_iters": "Monte-Carlo iterations of NiMARE's FWE correction.",
    "voxel_thresh": "Cluster-forming voxel-level p threshold.",
    "cluster_threshold": "Cluster-size FWE level.",
    "n_clusters": "Clusters surviving the cluster-size FWE correction.",
    "n_significant_voxels": "Voxels of the surviving clusters.",
    "max_z": "Largest z of the ALE map.",
    "peak_x": "MNI x of the ALE z map's maximum (mm).",
    "peak_y": "MNI y of the ALE z map's maximum (mm).",
    "peak_z": "MNI z of the ALE z map's maximum (mm).",
    "r_ale_overlap": "Pearson r between the ALE z map (resampled onto the connectome grid) "
                     "and the sets' signed overlap.",
}

#: the meaning a column has in a table of its own (the same name means something else
#: elsewhere)
_ROI_OVERLAP_SUMMARY = {
    "statistic": "Statistic over the ROIs: 'mean_of_regions' (mean of the ROIs' % overlaps) "
                 "or 'pooled' (% overlap of all their voxels pooled).",
}
_ROI_TO_ROI = {
    "n_subjects": "Connectome subjects.",
    "statistic": "Value of the test statistic (statistic_name).",
    "p": "p of the test.",
    "network": "Network of the parcellation (the nodes table's 'network' column).",
    "mean": "Mean connectivity (Fisher z) to the study seeds over the units.",
    "sd": "Standard deviation over the units (ddof=1).",
    "n": "Units of the network (nodes or subjects).",
    "df": "Degrees of freedom of the post-hoc test (n/a for Wilcoxon).",
    "mean_diff": "Difference of the means, network_a - network_b.",
    "hedges_g": "Hedges' g of the Welch post-hoc test.",
}
_PEAKS_IN_REGION = {
    "map": "Map the peak was searched in, as the plan names it: '<kind>:<sets>' (the signed "
           "overlap, or its positive-only or negative-only part, of those coordinate sets), "
           "'dbs', 'dbsrmap', 'convergent', or an image's path.",
    "sign": "Extreme searched: 'positive' (maximum), 'negative' (minimum) or 'abs' (largest "
            "|value|).",
    "x": "MNI x of the plateau's location: its voxel nearest the plateau's centroid (ties: "
         "the smallest x, y, z), mm.",
    "y": "MNI y of the plateau's location (see x), mm.",
    "z": "MNI z of the plateau's location (see x), mm.",
    "value": "Map value at (x, y, z); every voxel of the plateau has it (sign 'abs': it or "
             "its opposite).",
    "n_voxels": "Voxels of the plateau.",
}
_DISTANCES = {
    "plateau": "Plateau of the peaks table; one row per plateau and reference, nearest "
               "first.",
    "label": "Reference coordinate (the references table's label).",
    "x": "MNI x of the reference (mm).",
    "y": "MNI y of the reference (mm).",
    "z": "MNI z of the reference (mm).",
    "distance_mm": "Distance from the plateau's location (its x, y, z in the peaks table) to "
                   "the reference (mm).",
}
#: the DBS and convergent summaries: one coordinate network, several tests
_DBS_SUMMARY = {
    "network": "Coordinate network (dbs.network) the DBS network is correlated with, or "
               "combined with into the convergent network.",
    "alternative": "Direction of loo_p_permutation only ('greater': more similar, better "
                   "outcome); loo_p_parametric and the R-map's p are two-sided.",
}


def _given(table: pd.DataFrame, source: object, computed: Iterable[str]) -> dict[str, str]:
    """Descriptions of the columns an output table copies from one of the plan's tables."""
    name = Path(str(source)).name if source is not None else "the plan's table"
    out = {}
    for column in table.columns:
        if column in computed:
            continue
        if column in ("x", "y", "z"):
            out[column] = f"MNI {column} of the ROI's centre (mm), as given in {name}."
        else:
            out[column] = f"Column '{column}' of {name}, as given."
    return out


#: the columns of an ROI overlap's values that are computed (the others are the ROI table's)
ROI_COLUMNS = ("roi", "n_voxels", "n_voxels_in_mask", "overlap_pct", "denominator")


def _roi_table_file(item: ROIOverlap) -> Path | None:
    """The plan's table an ROI set's own columns come from (none: no such columns)."""
    if item.spheres is not None:
        return item.spheres.table
    if item.masks is not None:
        return item.masks.table
    return item.atlas.labels if item.atlas is not None else None


#: a column no description above covers (a test checks that the plan's tables have none)
UNDESCRIBED = "Column '{column}' of this table (see the table's Description)."


def _column_fallback(column: str) -> str:
    return UNDESCRIBED.format(column=column)


@dataclass(frozen=True)
class _MapInfo:
    name: str
    entities: dict
    description: str


def _finite(values: np.ndarray) -> np.ndarray:
    """Float64 copy with the engine's infinities (|t| ~ float32 max) as NaN."""
    out = np.array(values, dtype=float)
    out[~np.isfinite(out) | (np.abs(out) >= _HUGE)] = np.nan
    return out


def _float(value: float) -> float:
    return float(value) if value is not None else float("nan")


class _Runner:
    """State of one plan run: the grid, computed maps, written files."""

    def __init__(self, plan: Plan, results: GroupResults, writer: DerivativesWriter,
                 entities: dict, threshold: float, coordinates: pd.DataFrame | None,
                 ale_maps: ale_mod.ALEMaps | None = None) -> None:
        self.plan = plan
        self.ale_maps = ale_maps
        self.results = results
        self.writer = writer
        self.base = {k: v for k, v in dict(entities).items() if v not in (None, "")}
        self.threshold = float(threshold)
        self.thresh = threshold_label(threshold)
        self.coordinates = coordinates
        self.shape = tuple(int(s) for s in results.shape)
        self.affine = np.asarray(results.affine, dtype=float)
        self.mask = results.mask
        self.grid = nib.Nifti1Image(np.zeros(self.shape, np.int8), self.affine)
        self.table = results.seeds.table
        self.maps: dict[str, tuple[np.ndarray, _MapInfo]] = {}
        self.paths: list[Path] = []
        self.primary_label = "".join(seed_label(s) for s in plan.primary_sets)
        self.sources = [plan.source] if plan.source else []

    # ------------------------------------------------------------------ helpers

    def error(self, key: str, problem: str) -> InputDataError:
        return _plan_error(self.plan, key, problem)

    def rng(self, name: str) -> np.random.Generator:
        """A random stream of its own for each analysis (stable under plan edits)."""
        return np.random.default_rng([self.plan.random_seed, zlib.crc32(name.encode())])

    def volume(self, values: np.ndarray) -> np.ndarray:
        """Values over the analysis mask on the 3-D grid, NaN elsewhere."""
        out = np.full(int(np.prod(self.shape)), np.nan)
        out[self.results.voxels] = values
        return out.reshape(self.shape)

    def columns(self, sets: tuple[str, ...] | list[str], key: str) -> np.ndarray:
        cols = [self.results.columns(s, "main") for s in sets]
        missing = [s for s, c in zip(sets, cols) if len(c) == 0]
        if missing:
            present = sorted(set(self.table["set"]))
            raise self.error(key, f"no seed of set(s) {missing} in the results (sets: "
                                  f"{', '.join(present)}); use the coordinates' set names")
        return np.concatenate(cols)

    def seed_column(self, set_name: str, study: str, key: str) -> int:
        t = self.table
        hit = np.flatnonzero(((t["set"] == set_name) & (t["study"] == study)
                              & (t["variant"] == "main")).to_numpy())
        if len(hit) != 1:
            raise self.error(
                key, f"the results have {len(hit)} seed(s) of set '{set_name}' for '{study}' "
                "(expected 1); add plan_seeds(plan, ...) to the seeds of the connectivity pass")
        return int(hit[0])

    def overlap(self, sets: tuple[str, ...], kind: str, key: str) -> np.ndarray:
        name = f"{kind}:{'+'.join(sets)}"
        if name not in self.maps:
            cols = self.columns(sets, key)
            maps = overlap_maps(self.results.t[:, cols], self.threshold)
            label = "".join(seed_label(s) for s in sets)
            for k, values in maps.items():
                info = _MapInfo(
                    f"{k}:{'+'.join(sets)}", {"set": label, "thresh": self.thresh},
                    f"{k} of the {len(cols)} studies of set(s) {', '.join(sets)} at |t| > "
                    f"{self.threshold:g}")
                self.maps[f"{k}:{'+'.join(sets)}"] = (values.astype(float), info)
        return self.maps[name][0]

    def map(self, ref: str | Image, key: str) -> tuple[np.ndarray, _MapInfo]:
        """Values over the analysis mask and description of a map reference."""
        if isinstance(ref, Image):
            values = self.image_values(ref.image, key)
            name = self.writer.uri(ref.image)  # as Sources name it: no absolute path
            return values, _MapInfo(name, {}, f"the image {name}")
        if ref in DBS_MAPS:
            if ref not in self.maps:
                raise self.error(key, f"the map '{ref}' was not computed (dbs section)")
            return self.maps[ref]
        kind, _, set_name = ref.partition(":")
        sets = (set_name,) if set_name else tuple(self.plan.primary_sets)
        values = self.overlap(sets, kind, key)
        return values, self.maps[f"{kind}:{'+'.join(sets)}"][1]

    def image_values(self, path: Path, key: str) -> np.ndarray:
        """A NIfTI map's values over the analysis mask (linear resampling, NaN outside)."""
        if not Path(path).is_file():
            raise MissingInputError(f"{self.plan.label}, {key}: file not found: {path}")
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj).astype(np.float32)
        except Exception as exc:  # nibabel raises several types for bad files
            raise ReadError(f"{self.plan.label}, {key}: {path} cannot be read as NIfTI "
                            f"({exc})") from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise self.error(key, f"{path} has shape {list(data.shape)}; give a 3-D map")
        img = nib.Nifti1Image(data, img.affine)
        same = data.shape == self.shape and np.allclose(img.affine, self.affine, atol=1e-3)
        if not same:
            from nilearn.image import resample_to_img

            img = resample_to_img(img, self.grid, interpolation="linear", force_resample=True,
                                  copy_header=True, fill_value=np.nan)
        return np.asarray(img.dataobj, dtype=float).ravel()[self.results.voxels]

    def ents(self, extra: dict, **more: object) -> dict:
        return {**self.base, **extra, **more}

    def write_table(self, entities: dict, suffix: str, table: pd.DataFrame,
                    description: str, sources: list, columns: dict[str, str] | None = None,
                    **extra: object) -> Path:
        """Write a table; ``columns`` describes columns whose meaning is this table's own."""
        path = self.writer.write_table(
            entities, suffix, table, description, [str(s) for s in sources],
            columns={**_COLUMN_DESCRIPTIONS, **(columns or {})}, fallback=_column_fallback,
            **extra,
        )
        self.paths.append(path)
        return path

    def write_map(self, entities: dict, values: np.ndarray, description: str,
                  sources: list, suffix: str = "boldmap", **extra: object) -> Path:
        data = unmask(np.asarray(values, dtype=np.float32), self.results.voxels, self.shape)
        path = self.writer.write_map(entities, data, self.affine, description,
                                     [str(s) for s in sources], suffix=suffix, **extra)
        self.paths.append(path)
        return path

    def region_masks(self, spec: Region | ROIOverlap, key: str
                     ) -> tuple[list[np.ndarray], pd.DataFrame, list]:
        """ROI masks on the grid, their table (``roi`` + metadata) and source files."""
        if getattr(spec, "spheres", None) is not None:
            sph = spec.spheres
            skey = f"{key}.spheres.table"
            table = coordinate_table(sph.table, skey, self.plan.label)
            masks = []
            for i in range(len(table)):
                centre = table[["x", "y", "z"]].iloc[i].to_numpy(dtype=float)
                try:
                    masks.append(sphere_mask(centre, sph.diameter, self.shape, self.affine))
                except InputDataError as exc:
                    raise self.error(f"{skey} (row {i + 2})", exc.message) from exc
            table = table.copy()
            table.insert(0, "roi", sphere_labels(sph, table))
            return masks, table, [sph.table]
        if getattr(spec, "masks", None) is not None:
            files, table = mask_roi_files(spec.masks, f"{key}.masks", self.plan.label)
            try:
                masks = load_mask_images(files, self.grid)
            except CNMError as exc:
                raise type(exc)(f"{self.plan.label}, {key}.masks: {exc.message}") from exc
            return masks, table, [spec.masks.table or spec.masks.folder or files[0].parent]
        if getattr(spec, "mask", None) is not None:
            try:
                masks = load_mask_images([spec.mask], self.grid)
            except CNMError as exc:
                raise type(exc)(f"{self.plan.label}, {key}.mask: {exc.message}") from exc
            return masks, pd.DataFrame({"roi": [Path(spec.mask).name]}), [spec.mask]
        atlas = spec.atlas
        masks_by_name, labels = self.atlas_masks(atlas, f"{key}.atlas")
        table = pd.DataFrame({"roi": list(masks_by_name)})
        if labels is not None:
            extra = labels.drop_duplicates("name").set_index("name")
            table = table.join(extra, on="roi")
        return list(masks_by_name.values()), table, [atlas.image, atlas.labels]

    def atlas_masks(self, atlas: Atlas, key: str, select: bool = True
                    ) -> tuple[dict[str, np.ndarray], pd.DataFrame | None]:
        labels = atlas_labels(atlas, key, self.plan.label)
        try:
            masks = atlas_label_masks(atlas.image, labels,
                                      atlas.select if select else None, self.grid)
        except CNMError as exc:
            raise type(exc)(f"{self.plan.label}, {key}: {exc.message}") from exc
        if not masks:
            raise self.error(key, "the atlas has no region on the connectome grid")
        return masks, labels

    # ------------------------------------------------------------------ analyses

    def controls(self) -> None:
        present = list(dict.fromkeys(self.table["set"]))
        sets = self.plan.controls_in(present)
        for i, name in enumerate(sets):
            if name not in present:
                raise self.error(f"control_sets[{i}]", f"no seed of set '{name}' in the results "
                                 f"(sets: {', '.join(present)}); use the coordinates' set names")
        if not sets:
            return
        primary = self.overlap(tuple(self.plan.primary_sets), "overlap", "primary_sets")
        rows = []
        for name in sets:
            values = self.overlap((name,), "overlap", "control_sets")
            r = spatial_correlation(primary, values) if np.ptp(values) > 0 else float("nan")
            rows.append({"control_set": name, "n_studies": len(self.results.columns(name)),
                         "r": r, "max_abs_overlap": float(np.abs(values).max())})
        LOGGER.info("analysis plan: %d control set(s) compared with the primary overlap",
                    len(rows))
        self.write_table(
            self.ents({"set": self.primary_label, "thresh": self.thresh}, desc="controls"),
            "summary", pd.DataFrame(rows),
            "Spatial correlation of each control set's signed overlap with the primary "
            "sets' signed overlap (analysis mask).", self.sources,
            columns={"n_studies": "Studies (seeds) of the control set."},
            PrimarySets=list(self.plan.primary_sets), Threshold=self.threshold,
        )

    def dbs(self) -> None:
        spec = self.plan.dbs
        LOGGER.info("analysis plan: DBS network, R-map and leave-one-out prediction")
        patients = read_dbs_table(spec, self.plan.label)
        cols = [self.seed_column(DBS_SET, p.patient, "dbs.table") for p in patients]
        names = [p.patient for p in patients]
        outcomes = np.array([p.outcome for p in patients])
        nets = _finite(getattr(self.results, spec.stat)[:, cols]).T
        network, info = self.map(spec.network, "dbs.network")
        src = [spec.table] + self.sources
        try:
            dbs_net = outcome_weighted_network(nets, outcomes, spec.normalize)
            r_map, p_unc, p_fwe = rmap_permutation(nets, outcomes, spec.n_permutations,
                                                   self.rng("dbsrmap"))
            loo = leave_one_out_prediction(nets, outcomes, n_perm=spec.n_permutations,
                                           rng=self.rng("dbsloo"), patients=names,
                                           alternative=spec.alternative)
            r_dbs = spatial_correlation(dbs_net, network)
        except ValueError as exc:
            raise self.error("dbs", str(exc)) from exc
        dbs_ents = {"set": DBS_SET}
        self.maps["dbs"] = (dbs_net, _MapInfo("dbs", dbs_ents, "the DBS network"))
        self.maps["dbsrmap"] = (r_map, _MapInfo("dbsrmap", dbs_ents, "the DBS R-map"))
        common = dict(NumberOfPatients=len(names), Patients=names, Outcomes=outcomes.tolist(),
                      PatientMap=spec.stat)
        self.write_map(
            self.ents(dbs_ents, desc="dbs"), dbs_net,
            f"DBS network: outcome-weighted average of the patients' VAT connectivity "
            f"{spec.stat}-maps (normalize='{spec.normalize}').", src,
            Normalize=spec.normalize, **common)
        for stat, values, text in (
            ("r", r_map, "Pearson r across patients between VAT connectivity and outcome"),
            ("p", p_unc, "two-sided permutation p of the R-map, uncorrected"),
            ("pfwe", p_fwe, "two-sided permutation p of the R-map, family-wise corrected "
                            "(maximum |r|)"),
        ):
            self.write_map(self.ents(dbs_ents, desc="dbsrmap", stat=stat), values,
                           f"DBS R-map: {text}.", src,
                           NumberOfPermutations=spec.n_permutations, **common)
        n_vox = [len(self.results.seeds.voxels[c]) for c in cols]
        self.write_table(
            self.ents(dbs_ents, desc="dbsloo"), "values",
            pd.DataFrame({"patient": names, "seed": list(self.table["id"].iloc[cols]),
                          "outcome": outcomes, "vat_voxels": n_vox,
                          "similarity": loo["table"]["similarity"].to_numpy()}),
            "Leave-one-patient-out prediction: each patient's similarity to the others' "
            "DBS network, against the outcome (scatter).", src)
        summary = {
            "n_patients": len(names), "patient_map": spec.stat, "normalize": spec.normalize,
            "network": info.name, "r_dbs_network": r_dbs,
            "rmap_max_abs_r": float(np.nanmax(np.abs(r_map))),
            "rmap_min_p_fwe": float(np.nanmin(p_fwe)),
            "loo_r": loo["r"], "loo_p_parametric": loo["p_parametric"],
            "loo_p_permutation": loo["p_permutation"], "alternative": spec.alternative,
            "n_permutations": spec.n_permutations,
        }
        self.write_table(
            self.ents(dbs_ents, desc="dbs"), "summary", pd.DataFrame([summary]),
            "DBS analyses: spatial correlation of the DBS network with the coordinate "
            "network (r_dbs_network), R-map extremes, leave-one-out prediction.", src,
            columns=_DBS_SUMMARY)
        if not spec.convergent:
            return
        try:
            conv = convergent_network(network, dbs_net)
        except ValueError as exc:
            raise self.error("dbs.convergent", str(exc)) from exc
        conv_ents = dict(info.entities)
        self.maps["convergent"] = (conv["network"],
                                   _MapInfo("convergent", conv_ents, "the convergent network"))
        path = self.write_map(
            self.ents(conv_ents, desc="convergent"), conv["network"],
            f"Convergent network: mean of the z-scored coordinate network ({info.name}) and "
            "the z-scored DBS network (z over the analysis mask).", src, Network=info.name)
        self.write_table(
            self.ents(conv_ents, desc="convergent"), "summary",
            pd.DataFrame([{"network": info.name, "r_convergent_network": conv["r_overlap"],
                           "r_convergent_dbs": conv["r_dbs"],
                           "r_network_dbs": conv["r_overlap_dbs"]}]),
            "Spatial correlations of the convergent network with its two inputs.", src,
            columns=_DBS_SUMMARY)
        peaks = find_peaks(nib.load(path))
        self.write_table(self.ents(conv_ents, desc="convergent"), "peaks", peaks,
                         "Peaks of the convergent network (clusters at >= 50% of max |value|).",
                         src)

    def roi_overlap(self, i: int, item: ROIOverlap) -> None:
        key = f"validation.roi_overlap[{i}]"
        LOGGER.info("analysis plan: ROI overlap '%s' (%s)", item.name, item.kind)
        values, info = self.map(item.network, f"{key}.network")
        vol = self.volume(values)
        finite = np.isfinite(vol)
        rois, table, sources = self.region_masks(item, key)
        sources = [s for s in sources if s is not None] + self.sources
        overlaps = np.full(len(rois), np.nan)
        n_in = np.array([int((m & finite).sum()) for m in rois])
        for j, mask in enumerate(rois):
            if n_in[j]:
                overlaps[j] = roi_overlap(vol, mask, self.mask, item.denominator)
        valid = np.isfinite(overlaps)
        if not valid.any():
            raise self.error(key, "no ROI has a voxel inside the analysis mask; check the "
                                  "ROIs' space (MNI mm) and size")
        if not valid.all():
            LOGGER.warning("%s: ROI(s) %s have no voxel in the analysis mask; left out",
                           key, ", ".join(table["roi"].astype(str)[~valid]))
        per_roi = table.copy()  # the ROI table's own columns, then ROI_COLUMNS[1:]
        per_roi["n_voxels"] = [int(m.sum()) for m in rois]
        per_roi["n_voxels_in_mask"] = n_in
        per_roi["overlap_pct"] = overlaps
        per_roi["denominator"] = item.denominator
        kept = [m for m, ok in zip(rois, valid) if ok]
        summary: dict = {
            "analysis": item.name, "network": info.name, "rois": item.kind,
            "n_rois": len(rois), "n_rois_in_mask": int(valid.sum()),
            "statistic": item.statistic, "denominator": item.denominator,
            "observed": mean_region_overlap(vol, kept, self.mask, item.statistic,
                                            item.denominator),
        }
        ents = self.ents(info.entities, desc=f"roioverlap{item.name}")
        if item.null_model is not None:
            summary.update(self._null(item, key, vol, kept, summary["observed"], ents,
                                      sources, table))
        if item.compare is not None:
            c = item.compare
            groups = per_roi[c.column].astype(str).str.strip().to_numpy()
            a = overlaps[valid & (groups == c.a)]
            b = overlaps[valid & (groups == c.b)]
            try:
                res = compare_groups(a, b)
            except ValueError as exc:
                raise self.error(f"{key}.compare", f"{exc} (groups '{c.a}': {a.size} ROIs, "
                                 f"'{c.b}': {b.size} ROIs in the analysis mask)") from exc
            summary.update({
                "compare_column": c.column, "group_a": c.a, "group_b": c.b,
                "n_a": res["n_a"], "n_b": res["n_b"], "mean_a": res["mean_a"],
                "mean_b": res["mean_b"], "sd_a": res["sd_a"], "sd_b": res["sd_b"],
                "mean_diff": res["mean_diff"], "t": res["t"], "df": res["df"],
                "p_welch": res["p"], "ci_low": res["ci_low"], "ci_high": res["ci_high"],
                "confidence": res["confidence"], "cohens_d": res["cohens_d"],
                "hedges_g": res["hedges_g"],
            })
        self.write_table(ents, "values", per_roi,
                         f"% overlap of each ROI of '{item.name}' with {info.description}.",
                         sources, columns=_given(table, _roi_table_file(item), ROI_COLUMNS),
                         Network=info.name, OverlapDenominator=item.denominator)
        self.write_table(ents, "summary", pd.DataFrame([summary]),
                         f"ROI overlap '{item.name}' with {info.description}: observed "
                         "statistic, null model and group comparison.", sources,
                         columns=_ROI_OVERLAP_SUMMARY,
                         Network=info.name, OverlapDenominator=item.denominator)

    def _null(self, item: ROIOverlap, key: str, vol: np.ndarray, kept: list,
              observed: float, ents: dict, sources: list, table: pd.DataFrame) -> dict:
        null = item.null_model
        n_select = len(kept)
        rng = self.rng(f"roioverlap{item.name}")
        out: dict = {"null_kind": null.kind, "n_draws": null.n_draws}
        try:
            if null.kind == "regions":
                atlas = null.atlas or Atlas(item.atlas.image, item.atlas.labels, None)
                akey = f"{key}.null_model.atlas" if null.atlas else f"{key}.atlas"
                candidates, _ = self.atlas_masks(atlas, akey, select=null.atlas is not None)
                usable = [m for m in candidates.values() if np.isfinite(vol[m]).any()]
                if len(usable) < len(candidates):
                    LOGGER.info("%s: %d atlas region(s) outside the analysis mask are not "
                                "drawn", key, len(candidates) - len(usable))
                if n_select > len(usable):
                    raise self.error(f"{key}.null_model",
                                     f"{n_select} ROIs but only {len(usable)} atlas regions "
                                     "to draw from; use a finer atlas")
                draws = null_distribution_random_regions(
                    vol, usable, n_select, null.n_draws, rng, self.mask, item.statistic,
                    denominator=item.denominator)
                out["n_candidate_regions"] = len(usable)
            else:
                diameter = null.diameter if null.diameter is not None else item.spheres.diameter
                within, centres = self.null_centres(item, key, table)
                draws = null_distribution_random_spheres(
                    vol, self.mask, self.affine, n_select, diameter, null.n_draws, rng,
                    statistic=item.statistic, denominator=item.denominator, centres=centres)
                out.update({"null_diameter_mm": diameter, "null_within": within,
                            "n_candidate_centres": int(centres.sum())})
        except ValueError as exc:
            raise self.error(f"{key}.null_model", str(exc)) from exc
        out.update({
            "null_mean": float(draws.mean()),
            "null_sd": float(draws.std(ddof=1)) if draws.size > 1 else float("nan"),
            "alternative": null.alternative,
            "p_null": permutation_p(observed, draws, null.alternative),
        })
        what = "atlas regions" if null.kind == "regions" else "spheres"
        self.write_table(ents, "null", pd.DataFrame({"null_overlap": draws}),
                         f"Null distribution of '{item.name}': {null.n_draws} draws of "
                         f"{n_select} random {what}.", sources)
        return out

    def null_centres(self, item: ROIOverlap, key: str, table: pd.DataFrame
                     ) -> tuple[str, np.ndarray]:
        """Where the random spheres' centres may lie: the rule used and its mask."""
        null = item.null_model
        nkey = f"{key}.null_model"
        shell = cortex_shell(self.mask, self.affine, null.shell_mm)
        within = null.within
        if within == "auto":
            # electrode-like ROIs (every centre in the outer shell or outside the mask)
            # get a location-matched null: otherwise the p-value mixes depth with overlap
            within = "brain"
            if item.spheres is not None:
                ijk = np.rint(world_to_voxel(table[["x", "y", "z"]].to_numpy(float),
                                             self.affine)).astype(int)
                on_grid = np.all((ijk >= 0) & (ijk < np.asarray(self.shape)), axis=1)
                where_ok = np.ones(len(ijk), dtype=bool)
                idx = tuple(ijk[on_grid].T)
                where_ok[on_grid] = shell[idx] | ~self.mask[idx]
                if where_ok.all():
                    within = "cortex"
        if within == "brain":
            centres = self.mask
        elif within == "cortex":
            centres = shell
        else:
            try:
                user = load_mask_images([null.within_mask], self.grid)[0]
            except CNMError as exc:
                raise type(exc)(f"{self.plan.label}, {nkey}.within_mask: {exc.message}"
                                ) from exc
            centres = user & self.mask
        if not centres.any():
            raise self.error(f"{nkey}.within", f"no voxel of the analysis mask is allowed as a "
                             f"centre ('{within}'); use a larger mask or shell_mm")
        return within, centres

    def spatial(self, i: int, item) -> None:
        key = f"validation.spatial_correlation[{i}]"
        LOGGER.info("analysis plan: spatial correlation '%s'", item.name)
        if item.seeds is not None:
            col = self.seed_column(REFERENCE_SET, item.name, f"{key}.seeds")
            reference = _finite(getattr(self.results, item.stat)[:, col])
            ref_name = f"seed {self.table['id'].iloc[col]} ({item.stat})"
            sources = [item.seeds.table]
        else:
            reference = self.image_values(item.image, f"{key}.image")
            ref_name, sources = self.writer.uri(item.image), [item.image]
        rows = []
        for j, ref in enumerate(item.network):
            values, info = self.map(ref, f"{key}.network[{j}]")
            both = np.isfinite(values) & np.isfinite(reference)
            try:
                r = spatial_correlation(values, reference, method=item.method)
            except ValueError as exc:
                raise self.error(key, str(exc)) from exc
            rows.append({"analysis": item.name, "network": info.name, "reference": ref_name,
                         "method": item.method, "r": r, "n_voxels": int(both.sum())})
        self.write_table(self.ents({}, desc=f"spatialcorr{item.name}"), "summary",
                         pd.DataFrame(rows),
                         f"Spatial correlation of networks with the reference '{item.name}'.",
                         sources + self.sources,
                         columns={"n_voxels": "Voxels where both maps are finite (the "
                                              "correlation's sample)."})

    def roi_to_roi(self) -> None:
        spec = self.plan.validation.roi_to_roi
        key = "validation.roi_to_roi"
        LOGGER.info("analysis plan: ROI-to-ROI connectivity of the study seeds to networks")
        values = self.results.node_values
        if values is None:
            raise self.error(key, "the group results have no node values; give the nodes of "
                                  "plan_nodes(plan, shape, affine) to the connectivity pass")
        nodes = self.results.node_table or plan_nodes(self.plan, self.shape, self.affine)[1]
        values = np.asarray(values, dtype=float)
        if values.ndim != 3 or values.shape[2] != len(nodes):
            raise self.error(key, f"node values of shape {values.shape} do not match the "
                                  f"{len(nodes)} nodes")
        sets = tuple(spec.sets or self.plan.primary_sets)
        cols = self.columns(sets, f"{key}.sets")
        subjects = getattr(self.results, "subjects", None) or [
            str(s + 1) for s in range(values.shape[0])]
        node_networks = [n["network"] for n in nodes]
        conn = roi_to_network_connectivity(values[:, cols, :], node_networks, subjects)
        try:
            anova = network_anova(values[:, cols, :], node_networks, spec.test)
        except ValueError as exc:
            raise self.error(key, str(exc)) from exc
        ents = self.ents({"set": "".join(seed_label(s) for s in sets)}, desc="roitoroi")
        sources = [spec.nodes] + self.sources
        table = conn.copy()
        table.insert(0, "subject", subjects)
        self.write_table(ents, "values", table,
                         "Per connectome subject, mean Fisher z between the study seeds and "
                         "the nodes of each network.", sources,
                         columns={str(n): f"Mean Fisher z between the study seeds and the "
                                          f"nodes of the network '{n}', for this subject."
                                  for n in conn.columns})
        if spec.test == "nodes":
            node_table = pd.DataFrame({
                "node": [n["name"] if isinstance(n.get("name"), str) and n["name"]
                         else f"node{k + 1}" for k, n in enumerate(nodes)],
                "network": node_networks, "mean_z": anova["node_means"]})
            self.write_table(self.ents(ents, desc="roitoroinodes"), "values", node_table,
                             "Per node, the mean Fisher z over connectome subjects and study "
                             "seeds: the units of the ANOVA.", sources, columns=_ROI_TO_ROI)
        effect = next(k for k in ("eta_squared", "partial_eta_squared", "kendall_w")
                      if k in anova)
        self.write_table(ents, "summary", pd.DataFrame([{
            "test": anova["test"], "unit": anova["unit"],
            "statistic_name": anova["statistic_name"], "statistic": anova["statistic"],
            "df_between": anova["df_between"], "df_within": anova["df_within"],
            "p": anova["p"], "effect_size_name": effect, "effect_size": anova[effect],
            "n_units": anova["n_units"], "n_subjects": values.shape[0],
            "n_seeds": len(cols), "n_nodes": len(nodes), "n_networks": conn.shape[1],
            "top_network": anova["ranking"]["network"].iloc[0],
        }]), f"Comparison of the connectivity across networks ({anova['test']}: units "
             f"are {anova['unit']}).", sources, columns=_ROI_TO_ROI, ANOVATest=anova["test"])
        self.write_table(ents, "ranking", anova["ranking"],
                         f"Networks ranked by mean connectivity to the study seeds (over "
                         f"{anova['unit']}).", sources, columns=_ROI_TO_ROI)
        self.write_table(ents, "posthoc", anova["posthoc"],
                         "Post-hoc tests between networks (Holm-corrected p).", sources,
                         columns={**_ROI_TO_ROI, "statistic": "Statistic of the post-hoc test "
                                  "(t, or Wilcoxon's W).", "p": "Two-sided p of the pair's "
                                  "test, uncorrected."})

    def peak(self, i: int, item) -> None:
        key = f"validation.peaks[{i}]"
        LOGGER.info("analysis plan: peak '%s'", item.name)
        values, info = self.map(item.map, f"{key}.map")
        img = nib.Nifti1Image(self.volume(values), self.affine)
        masks, _, sources = self.region_masks(item.region, f"{key}.region")
        region = np.logical_or.reduce(masks)
        refs = None
        if item.references is not None:
            refs = coordinate_table(item.references, f"{key}.references", self.plan.label,
                                    columns=("label", "x", "y", "z"))
        try:
            plateaus = peak_plateaus(img, region, item.sign, refs)
        except ValueError as exc:
            raise self.error(f"{key}.region", f"{exc} (inside the analysis mask)") from exc
        table = plateaus.drop(columns=["i", "j", "k"])
        table.insert(0, "analysis", item.name)
        table.insert(1, "map", info.name)
        table.insert(2, "sign", item.sign)
        table["n_plateaus"] = len(plateaus)
        table["region_voxels"] = int((region & self.mask).sum())
        ents = self.ents(info.entities, desc=f"peak{item.name}")
        sources = [s for s in sources if s is not None] + self.sources
        if refs is not None:
            dist = pd.concat([distances_mm(row, refs).assign(plateau=row["plateau"])
                              for row in plateaus.to_dict("records")], ignore_index=True)
            dist = dist[["plateau"] + [c for c in dist.columns if c != "plateau"]]
            self.write_table(ents, "distances", dist,
                             f"Distances from each tied peak plateau of {info.description} in "
                             f"the region to the reference coordinates.",
                             [item.references] + sources, columns=_DISTANCES)
        self.write_table(ents, "peaks", table,
                         f"Peak ({item.sign}) of {info.description} inside the region "
                         f"'{item.name}' (MNI mm): one row per plateau of voxels that tie "
                         "at the extreme value.", sources, columns=_PEAKS_IN_REGION)

    def ale(self) -> None:
        spec = self.plan.ale
        coords, sets, n_experiments = ale_foci(self.plan, self.coordinates)
        maps = self.ale_maps
        if maps is None:
            maps = compute_ale(self.plan, self.coordinates)
        space, res = _ALE_SPACE[spec.target]
        base = {k: v for k, v in self.base.items() if k not in ("task", "space", "res")}
        base.update(space=space, res=res, set="".join(seed_label(s) for s in sets))
        common = dict(NumberOfStudies=int(n_experiments),
                      NumberOfFoci=len(coords), Iterations=spec.n_iters,
                      VoxelThreshold=spec.voxel_thresh,
                      ClusterThreshold=spec.cluster_threshold, Template=spec.target,
                      SpatialReference=space)
        for name, (desc, stat) in ALE_MAPS.items():
            img = maps[name]
            path = self.writer.write_map(
                dict(base, desc=desc, stat=stat), np.asarray(img.dataobj, dtype=np.float32),
                img.affine, f"NiMARE ALE map '{name}' (Monte-Carlo FWE).", self.sources,
                suffix="statmap", NiMAREMap=name, **common)
            self.paths.append(path)
        thr = np.asarray(maps[ale_mod.THRESHOLDED_MAP].dataobj, dtype=float)
        z_img = maps["z"]
        z = np.asarray(z_img.dataobj, dtype=float)
        # clusters by faces (6-connectivity), as NiMARE forms them for its FWE correction
        labels, n_clusters = ndimage.label(thr != 0)
        peak_ijk = np.unravel_index(int(np.argmax(z)), z.shape)
        peak = voxel_to_world(np.asarray(peak_ijk), z_img.affine)
        from nilearn.image import resample_to_img

        z_grid = resample_to_img(nib.Nifti1Image(z.astype(np.float32), z_img.affine), self.grid,
                                 interpolation="linear", force_resample=True, copy_header=True,
                                 fill_value=np.nan)
        z_values = np.asarray(z_grid.dataobj, dtype=float).ravel()[self.results.voxels]
        network = self.overlap(sets, "overlap", "ale.sets")
        r = spatial_correlation(z_values, network) if np.ptp(network) > 0 else float("nan")
        summary = {
            "n_studies": common["NumberOfStudies"], "n_foci": len(coords),
            "n_iters": spec.n_iters, "voxel_thresh": spec.voxel_thresh,
            "cluster_threshold": spec.cluster_threshold, "n_clusters": int(n_clusters),
            "n_significant_voxels": int((thr != 0).sum()), "max_z": float(z.max()),
            "peak_x": float(peak[0]), "peak_y": float(peak[1]), "peak_z": float(peak[2]),
            "r_ale_overlap": r,
        }
        self.write_table(dict(base, desc="ale"), "summary", pd.DataFrame([summary]),
                         "ALE of the coordinates: surviving clusters (cluster-size FWE) and "
                         "spatial correlation of the ALE z map (resampled onto the connectome "
                         "grid) with the sets' signed overlap (r_ale_overlap).", self.sources,
                         columns={"n_studies": "Studies (experiments) of the ALE."},
                         NiMAREDescription=getattr(maps, "description", ""),
                         NiMAREBibTeX=getattr(maps, "bibtex", ""), **common)
        if n_clusters:
            peaks = find_peaks(maps[ale_mod.THRESHOLDED_MAP], fraction=1e-6)
        else:
            peaks = pd.DataFrame(columns=PEAK_COLUMNS)
        self.write_table(dict(base, desc="aleclusterfwe"), "peaks", peaks,
                         "Peaks of the clusters surviving cluster-size FWE correction.",
                         self.sources, **common)


def _plan_error(plan: Plan, key: str, problem: str) -> InputDataError:
    return InputDataError(f"{plan.label}, {key}: {problem}")


def ale_foci(plan: Plan, coordinates: pd.DataFrame | None
             ) -> tuple[pd.DataFrame, tuple[str, ...], int]:
    """The foci of the plan's ALE: its sets' coordinates, with their sample sizes.

    Parameters
    ----------
    plan : Plan
        A plan with an ``ale`` section.
    coordinates : DataFrame or None
        The run's coordinates table.

    Returns
    -------
    coords : DataFrame
        The rows of the ALE's sets (``ale.sets``, default the primary sets), the
        plan's ``sample_size_column`` renamed ``sample_size``.
    sets : tuple of str
    n_experiments : int
        Distinct (set, study) pairs: NiMARE's experiments.

    Raises
    ------
    InputDataError
        Without coordinates, without a row of the sets, or naming a missing column.
    """
    spec = plan.ale
    if coordinates is None:
        raise _plan_error(plan, "ale", "the coordinates table was not given to run_plan")
    sets = tuple(spec.sets or plan.primary_sets)
    coords = coordinates
    if "set" in coords.columns:
        coords = coords[coords["set"].astype(str).isin(sets)]
    if len(coords) == 0:
        raise _plan_error(plan, "ale.sets" if spec.sets else "primary_sets",
                          f"no coordinate of set(s) {list(sets)}")
    if spec.sample_size_column is not None:
        if spec.sample_size_column not in coords.columns:
            raise _plan_error(plan, "ale.sample_size_column",
                              f"column '{spec.sample_size_column}' is not in the coordinates "
                              f"(columns: {', '.join(coords.columns)})")
        coords = coords.drop(columns=[c for c in ("sample_size", "n")
                                      if c != spec.sample_size_column and c in coords])
        coords = coords.rename(columns={spec.sample_size_column: "sample_size"})
    keys = [c for c in ("set", "study") if c in coords.columns]
    return coords, sets, len(coords.drop_duplicates(keys))


def ale_part(plan: Plan) -> dict:
    """The part of a plan its ALE depends on, as a plan of its own (:meth:`Plan.to_dict`).

    The workflow's ALE step is given this, not the whole plan: a plan edited elsewhere
    (its ROIs, say) leaves the step's inputs, hence nipype's cached ALE, as they were.

    Parameters
    ----------
    plan : Plan

    Returns
    -------
    dict
        ``primary_sets``, ``random_seed`` and ``ale``, for :func:`plan_from_dict`.
    """
    full = plan.to_dict()
    return {key: full[key] for key in ("primary_sets", "random_seed", "ale") if key in full}


def compute_ale(plan: Plan, coordinates: pd.DataFrame | None) -> ale_mod.ALEMaps:
    """NiMARE's ALE of the plan's foci (:func:`ale_foci`), with its Monte-Carlo FWE.

    It needs no connectivity: the workflow runs it in a step of its own from the
    start (``plan_ale``), beside the connectome's preparation, and hands the maps to
    :func:`run_plan` (``ale_maps``), which writes them.

    Parameters
    ----------
    plan, coordinates
        As :func:`ale_foci`.

    Returns
    -------
    ALEMaps
        :func:`bids_cnm.analyses.ale.run_ale`'s maps.

    Raises
    ------
    InputDataError
        As :func:`ale_foci`, or when NiMARE refuses the foci.
    """
    spec = plan.ale
    coords, _, n_experiments = ale_foci(plan, coordinates)
    LOGGER.info("analysis plan: ALE of %d foci from %d studies (%d Monte-Carlo iterations)",
                len(coords), n_experiments, spec.n_iters)
    try:
        return ale_mod.run_ale(
            coords, n_iters=spec.n_iters, voxel_thresh=spec.voxel_thresh,
            cluster_threshold=spec.cluster_threshold, target=spec.target,
            random_state=plan.random_seed,
            default_sample_size=spec.default_sample_size, source="coordinates")
    except ValueError as exc:
        raise _plan_error(plan, "ale", str(exc)) from exc


def run_plan(
    plan: Plan,
    results: GroupResults,
    writer: DerivativesWriter,
    entities: dict,
    threshold: float,
    coordinates: pd.DataFrame | None = None,
    ale_maps: ale_mod.ALEMaps | None = None,
) -> list[Path]:
    """Run every analysis of a plan on the group results and write the derivatives.

    Parameters
    ----------
    plan : Plan
        From :func:`bids_cnm.plan.load_plan` (or :func:`~bids_cnm.plan.default_plan`).
    results : GroupResults
        Maps of every seed, including the plan's ``dbs`` and ``reference`` seeds
        (:func:`bids_cnm.analyses.plan_seeds.plan_seeds`) and, for ROI-to-ROI, the node
        values of :func:`~bids_cnm.analyses.plan_seeds.plan_nodes`' nodes.
    writer : DerivativesWriter
    entities : dict
        The run's grid entities (``task``, ``space``, ``res``).
    threshold : float
        The main |t| threshold of the overlap networks.
    coordinates : DataFrame, optional
        The coordinates table (``study``, ``x``, ``y``, ``z``, ``set``…); needed by ALE.
    ale_maps : ALEMaps, optional
        The plan's ALE computed already (:func:`compute_ale`); default computed here.

    Returns
    -------
    list of Path
        The written files (maps and tables; their JSON sidecars are written too), and
        ``plan.json`` (the plan as run).
    """
    run = _Runner(plan, results, writer, entities, threshold, coordinates, ale_maps)
    # the masks and maps it reads go through nilearn, which collects garbage at each
    with frozen_heap():
        # the primary overlap first: a plan that names absent primary sets fails early
        run.overlap(tuple(plan.primary_sets), "overlap", "primary_sets")
        val = plan.validation
        if val.controls:
            run.controls()
        if plan.dbs is not None:
            run.dbs()
        for i, item in enumerate(val.roi_overlap):
            run.roi_overlap(i, item)
        for i, item in enumerate(val.spatial_correlation):
            run.spatial(i, item)
        if val.roi_to_roi is not None:
            run.roi_to_roi()
        for i, item in enumerate(val.peaks):
            run.peak(i, item)
        if plan.ale is not None:
            run.ale()
    record = {"Source": writer.uri(plan.source) if plan.source else None,
              "Threshold": float(threshold), **plan.to_dict()}
    # a record of the run, not a data file's sidecar: with the logs
    run.paths.append(write_json(writer.logs_path("plan.json"), record))
    LOGGER.info("analysis plan: wrote %d files", len(run.paths))
    return run.paths
