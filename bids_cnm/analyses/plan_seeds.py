"""Seeds and ROI nodes an analysis plan adds to the pass over the connectome.

The connectivity engine computes every seed's group maps in one pass, so the plan's own
seeds join the study seeds there:

* set ``dbs``: one seed per DBS patient, the union of the patient's volumes of
  activated tissue (VAT images resampled nearest-neighbour onto the grid, and spherical
  VATs around active contacts from :func:`bids_cnm.analyses.dbs.vat_from_contacts`);
  id ``dbs<patient>``, ``study`` = the patient label;
* set ``reference``: one seed per ``validation.spatial_correlation`` entry given as
  ``seeds`` (e.g. SCAN nodes), the union of spheres at its coordinates; id ``ref<name>``,
  ``study`` = the entry's name.

:func:`plan_nodes` lists the ROI-to-ROI nodes (spheres at a parcellation's node
coordinates); the engine returns each subject's mean Fisher z of every seed in every node
(``GroupResults.node_values``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import nibabel as nib
import numpy as np
import pandas as pd

from bids_cnm.analyses.dbs import vat_from_contacts
from bids_cnm.analyses.roi import load_mask_images, sphere_mask
from bids_cnm.engine.seeds import (
    Seeds,
    concat_seeds,
    make_seeds,
    seed_label,
    seeds_from_masks,
)
from bids_cnm.errors import InputDataError
from bids_cnm.plan import Plan, coordinate_table, read_dbs_table

LOGGER = logging.getLogger("bids_cnm")

__all__ = ["plan_seeds", "plan_nodes", "dbs_masks", "DBS_SET", "REFERENCE_SET"]

DBS_SET = "dbs"
REFERENCE_SET = "reference"


def _grid_img(shape: tuple[int, ...], affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(tuple(int(s) for s in shape[:3]), np.int8),
                           np.asarray(affine, dtype=float))


def dbs_masks(plan: Plan, shape: tuple[int, ...], affine: np.ndarray) -> dict[str, np.ndarray]:
    """Each DBS patient's VAT on the grid (all rows of the patient united).

    Parameters
    ----------
    plan : Plan
        With a ``dbs`` section.
    shape, affine
        The connectome grid.

    Returns
    -------
    dict of str to ndarray of bool
        Patient label to 3-D mask, in the table's order.
    """
    spec = plan.dbs
    patients = read_dbs_table(spec, plan.label)
    target = _grid_img(shape, affine)
    out = {}
    for patient in patients:
        mask = np.zeros(tuple(int(s) for s in shape[:3]), dtype=bool)
        where = f"{plan.label}, dbs.table ({spec.table}), patient '{patient.patient}'"
        try:
            for vat in load_mask_images(list(patient.vat_files), target):
                mask |= vat
            if len(patient.contacts):
                vats = vat_from_contacts(
                    patient.contacts, shape, affine, model=spec.vat_model, unit=spec.unit,
                    source=f"{where}, contacts",
                )
                for vat in vats.values():
                    mask |= vat
        except InputDataError as exc:
            raise InputDataError(f"{where}: {exc.message}") from exc
        out[patient.patient] = mask
    return out


def _unique_ids(ids: list[str], taken: set[str]) -> list[str]:
    out = []
    for seed_id in ids:
        new, n = seed_id, 1
        while new in taken:
            n += 1
            new = f"{seed_id}{n}"
        if new != seed_id:
            LOGGER.warning("seed id '%s' is taken by a study seed; using '%s'", seed_id, new)
        taken.add(new)
        out.append(new)
    return out


def plan_seeds(
    plan: Plan,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    support: np.ndarray | None = None,
    existing_ids: Iterable[str] = (),
) -> Seeds | None:
    """The extra seeds of a plan: DBS VATs and spatial-correlation reference seeds.

    Parameters
    ----------
    plan : Plan
    shape, affine
        The connectome grid.
    support : ndarray of bool, optional
        Voxels where seeds may lie (3-D or flat); VATs and spheres are cut to it.
    existing_ids : iterable of str
        Ids of the study seeds; a plan seed id that collides gets a number appended
        (``concat_seeds`` refuses duplicates).

    Returns
    -------
    Seeds or None
        Sets ``dbs`` and ``reference`` (variant ``main``), or None when the plan needs no
        extra seed.  Concatenate with the study seeds: ``concat_seeds(study, extra)``.

    Raises
    ------
    InputDataError
        A VAT or a reference seed is empty on the grid (outside the support).
    """
    shape = tuple(int(s) for s in shape[:3])
    flat_support = None if support is None else np.asarray(support, dtype=bool).ravel()
    taken = set(existing_ids)
    parts: list[Seeds] = []

    if plan.dbs is not None:
        masks = dbs_masks(plan, shape, affine)
        patients, vats = list(masks), []
        for patient, mask in masks.items():
            if flat_support is not None:
                mask = mask & flat_support.reshape(shape)
            if not mask.any():
                raise InputDataError(
                    f"{plan.label}, dbs.table ({plan.dbs.table}): the VAT of patient "
                    f"'{patient}' has no voxel inside the connectome's brain mask; check its "
                    "space (MNI) and coordinates")
            vats.append(mask)
        ids = _unique_ids([f"dbs{seed_label(p)}" for p in patients], taken)
        parts.append(seeds_from_masks(vats, ids, DBS_SET, shape, affine, studies=patients))
        LOGGER.info("analysis plan: %d DBS seeds (one VAT per patient)", len(ids))

    for i, item in enumerate(plan.validation.spatial_correlation):
        if item.seeds is None:
            continue
        key = f"validation.spatial_correlation[{i}].seeds.table"
        table = coordinate_table(item.seeds.table, key, plan.label)
        coords = pd.DataFrame({
            "study": item.name, "x": table["x"], "y": table["y"], "z": table["z"],
            "set": REFERENCE_SET, "source_row": np.arange(len(table)) + 2,
        })
        try:
            seeds = make_seeds(coords, shape, affine, support=flat_support,
                               diameter=item.seeds.diameter, source=f"{plan.label}, {key}",
                               variant="main")
        except InputDataError as exc:
            raise InputDataError(f"{plan.label}, {key}: {exc.message}") from exc
        table_ = seeds.table.copy()
        table_["id"] = _unique_ids([item.seed_id], taken)
        parts.append(Seeds(table_, seeds.voxels, seeds.shape, seeds.affine, seeds.diameter))
        LOGGER.info("analysis plan: reference seed %s (%d spheres of %g mm)",
                    table_["id"].iloc[0], len(table), item.seeds.diameter)

    if not parts:
        return None
    return concat_seeds(*parts)


def plan_nodes(
    plan: Plan, shape: tuple[int, int, int], affine: np.ndarray
) -> tuple[list[np.ndarray], list[dict]] | None:
    """The ROI-to-ROI nodes of a plan: spheres at a parcellation's node coordinates.

    Parameters
    ----------
    plan : Plan
    shape, affine
        The connectome grid.

    Returns
    -------
    (voxels, table) or None
        ``voxels``: one sorted array of flat (C-order) grid indices per node;
        ``table``: one dict per node with ``name``, ``network``, ``x``, ``y``, ``z``,
        ``n_voxels``.  None when the plan has no ``validation.roi_to_roi``.  The nodes are
        not cut to the brain mask: average each seed's z over a node's voxels that have
        data.
    """
    spec = plan.validation.roi_to_roi
    if spec is None:
        return None
    key = "validation.roi_to_roi.nodes"
    table = coordinate_table(spec.nodes, key, plan.label, columns=("x", "y", "z", "network"))
    names = (table["name"] if "name" in table.columns
             else pd.Series([None] * len(table), index=table.index))
    voxels, rows = [], []
    for i in range(len(table)):
        centre = table[["x", "y", "z"]].iloc[i].to_numpy(dtype=float)
        try:
            mask = sphere_mask(centre, spec.diameter, shape, affine)
        except InputDataError as exc:
            raise InputDataError(f"{plan.label}, {key} (row {i + 2}): {exc.message}") from exc
        vox = np.flatnonzero(mask.ravel()).astype(np.int64)
        name = names.iloc[i]
        voxels.append(vox)
        rows.append({
            "name": f"node{i + 1}" if pd.isna(name) else str(name),
            "network": str(table["network"].iloc[i]).strip(),
            "x": float(centre[0]), "y": float(centre[1]), "z": float(centre[2]),
            "n_voxels": int(len(vox)),
        })
    LOGGER.info("analysis plan: %d ROI-to-ROI nodes in %d networks", len(rows),
                len({r["network"] for r in rows}))
    return voxels, rows
