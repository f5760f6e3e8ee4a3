"""Every file an analysis plan reads, for the re-run check (:mod:`bids_cnm.io.rerun`).

A plan names files in two ways: as paths of its keys (images, tables, mask folders),
and in the tables it points at (the mask files a ``masks.table`` lists, the VAT images
of the DBS table).  A re-run may only be verified when none of them changed, so the
list must be complete: it follows the same two routes as the loader
(:mod:`bids_cnm.plan.schema`'s paths, :func:`~bids_cnm.plan.tables.mask_roi_files`
and :func:`~bids_cnm.plan.tables.read_dbs_table`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from bids_cnm.plan.schema import DBS, Masks, Plan
from bids_cnm.plan.tables import mask_roi_files, read_dbs_table

__all__ = ["plan_input_files"]


def _models(value: object) -> Iterator[object]:
    """``value`` and every model, path and item below it."""
    yield value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _models(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _models(item)


def plan_input_files(plan: Plan) -> list[str]:
    """The files and folders ``plan`` reads (absolute paths, sorted, each once).

    Parameters
    ----------
    plan : Plan
        A loaded plan (its paths resolved).

    Returns
    -------
    list of str
        Paths of its keys (a folder stands for every file in it) and the files its
        tables list.
    """
    found: set[Path] = set()
    for value in _models(plan):
        if isinstance(value, Path):
            found.add(value)
        elif isinstance(value, Masks) and value.table is not None:
            found.update(mask_roi_files(value, "masks", plan.label)[0])
        elif isinstance(value, DBS):
            for patient in read_dbs_table(value, plan.label):
                found.update(patient.vat_files)
    return sorted(str(Path(p).resolve()) for p in found)
