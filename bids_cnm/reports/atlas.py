"""Anatomical labels of peak coordinates, from an atlas available offline.

The Harvard-Oxford cortical atlas (maximum probability, 25% threshold, 2 mm)
ships with NiMARE, a dependency of bids_cnm, so it is on disk wherever bids_cnm
is installed; its region names are in ``data/harvard_oxford_cortical.tsv``.  It
covers the cortex only.  Subcortical names come from the connectome template's
own Harvard-Oxford subcortical atlas when TemplateFlow has it on disk
(:func:`bids_cnm.io.templates.anatomical_atlas`; the container image fetches it).
No other subcortical atlas is installed with bids_cnm's dependencies (nilearn
downloads its Harvard-Oxford copy, NiMARE ships the cortical one only), so without
TemplateFlow a point in the thalamus or the basal ganglia gets no name and the
report says which file would give it.  An atlas of the user's analysis plan names
the peaks too (:func:`plan_atlas`), in a column of its own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["ATLAS_NAME", "cortical_labels", "plan_atlas"]

ATLAS_NAME = "Harvard-Oxford cortical atlas (max. probability, 25%; bundled with NiMARE)"
_IMAGE = "resources/atlases/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz"
#: a point outside every region takes the label of the nearest one within this distance
NEAREST_MM = 4.0


@lru_cache(maxsize=1)
def _atlas() -> tuple[np.ndarray, np.ndarray, dict[int, str]] | None:
    import nibabel as nb

    # find NiMARE's folder without importing it (importing NiMARE takes seconds)
    spec = importlib.util.find_spec("nimare")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        img = nb.load(str(Path(list(spec.submodule_search_locations)[0]) / _IMAGE))
    except (FileNotFoundError, OSError):
        return None
    names = pd.read_csv(resources.files("bids_cnm.reports").joinpath(
        "data/harvard_oxford_cortical.tsv"), sep="\t")
    return (np.asarray(img.dataobj).astype(np.int16), img.affine,
            dict(zip(names["index"].astype(int), names["name"])))


def cortical_labels(xyz: Sequence[Sequence[float]]) -> list[str] | None:
    """The Harvard-Oxford cortical region at each point (MNI mm).

    Returns
    -------
    list of str or None
        One label per point: the region containing it, else ``"near <region>"``
        for the nearest region within :data:`NEAREST_MM`, else ``"not cortical"``.
        ``None`` when the atlas is not installed.
    """
    atlas = _atlas()
    if atlas is None:
        return None
    data, affine, names = atlas
    points = np.asarray(xyz, float).reshape(-1, 3)
    ijk = np.rint(np.c_[points, np.ones(len(points))] @ np.linalg.inv(affine).T)[:, :3]
    reach = int(np.ceil(NEAREST_MM / abs(affine[0, 0])))
    out = []
    for i, j, k in ijk.astype(int):
        lo = np.maximum([i - reach, j - reach, k - reach], 0)
        hi = np.minimum([i + reach + 1, j + reach + 1, k + reach + 1], data.shape)
        if np.any(lo >= hi):
            out.append("outside the atlas")
            continue
        if 0 <= i < data.shape[0] and 0 <= j < data.shape[1] and 0 <= k < data.shape[2] \
                and data[i, j, k] > 0:
            out.append(names.get(int(data[i, j, k]), str(data[i, j, k])))
            continue
        box = data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        found = np.argwhere(box > 0)
        if not len(found):
            out.append("not cortical")
            continue
        dist = np.linalg.norm((found + lo - [i, j, k]) * abs(affine[0, 0]), axis=1)
        best = found[np.argmin(dist)]
        if dist.min() > NEAREST_MM:
            out.append("not cortical")
        else:
            out.append("near " + names.get(int(box[tuple(best)]), "?"))
    return out



def plan_atlas(plan: dict | None):
    """The first labelled atlas of the analysis plan (image and label table on disk).

    Returns
    -------
    bids_cnm.io.templates.Atlas or None
    """
    import nibabel as nb

    from bids_cnm.io.templates import Atlas

    def found(node):
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and isinstance(node.get("labels"), str):
                yield node["image"], node["labels"]
            for value in node.values():
                yield from found(value)
        elif isinstance(node, list):
            for value in node:
                yield from found(value)

    for image, labels in found(plan or {}):
        try:
            img = nb.load(image)
            table = pd.read_csv(labels, sep="\t")
            names = {int(i): str(n) for i, n in zip(table["index"], table["name"])}
        except (OSError, ValueError, KeyError):
            continue
        return Atlas((np.asarray(img.dataobj).astype(np.int32),), (names,), img.affine,
                     f"the analysis plan's atlas {Path(image).name}")
    return None
