"""The analysis plan: which sets are primary and control, and which validation, DBS and
ALE analyses run on the group results.

``schema`` holds the plan's records as pydantic models, the one source of the loader's
validation, of the committed JSON Schema (``python -m bids_cnm.plan`` prints it) and of
the key tables of ``docs/plan.md`` (written by ``docs``); ``load`` reads a plan file and
words its errors (key path and fix); ``tables`` reads the tables a plan points at.  May
import only :mod:`bids_cnm.errors`.
"""

from bids_cnm.plan.load import load_plan, plan_from_dict
from bids_cnm.plan.schema import (
    ALE,
    DBS,
    DBS_MAPS,
    NULL_WITHIN,
    OVERLAP_DENOMINATORS,
    OVERLAP_MAPS,
    RESERVED_SETS,
    ROI_TO_ROI_TESTS,
    Atlas,
    Compare,
    Image,
    Masks,
    Null,
    Peak,
    Plan,
    Region,
    ROIOverlap,
    ROIToROI,
    SpatialCorrelation,
    Spheres,
    Validation,
    default_plan,
)
from bids_cnm.plan.tables import (
    DBSPatient,
    atlas_labels,
    coordinate_table,
    mask_roi_files,
    read_dbs_table,
    read_table,
    sphere_labels,
)

__all__ = [
    "ALE", "DBS", "DBSPatient", "Atlas", "Compare", "Image", "Masks", "Null", "Peak", "Plan",
    "Region", "ROIOverlap", "ROIToROI", "SpatialCorrelation", "Spheres", "Validation",
    "default_plan", "load_plan", "plan_from_dict", "read_table", "coordinate_table",
    "mask_roi_files", "atlas_labels", "sphere_labels", "read_dbs_table", "OVERLAP_MAPS",
    "DBS_MAPS", "RESERVED_SETS", "OVERLAP_DENOMINATORS", "NULL_WITHIN", "ROI_TO_ROI_TESTS",
]
