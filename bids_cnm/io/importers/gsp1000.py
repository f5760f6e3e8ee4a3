"""GSP1000 as distributed on Harvard Dataverse (doi:10.7910/DVN/ILXIKS).

Layout: ``sub-XXXX/func/sub-XXXX_bld00N_rest_skip4_stc_mc_bp_0.0001_0.08_resid_FS1mm_
MNI1mm_MNI2mm_sm7_finalmask.nii.gz``, two runs (``bld001``, ``bld002``) per subject
on FSL's 2 mm MNI152 grid (91 x 109 x 91), no sidecars.  The runs are linked
(not copied) into the BIDS dataset; each subject's brain mask is derived from its
data (voxels finite and varying in every run) unless ``--mask`` gives one.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm.engine.bold_reader import valid_mask
from bids_cnm.errors import InputDataError, MissingInputError, NoMatchError
from bids_cnm.io.importers.writer import (
    ImportOptions,
    ImportPlan,
    SourceSubject,
    bids_label,
    check_same_grid,
    load_mask,
    unique_labels,
)

DOI = "doi:10.7910/DVN/ILXIKS"
REPETITION_TIME = 3.0
_RUN = re.compile(r"^(sub-[^_]+)_bld(\d{3})_rest.*\.nii(\.gz)?$")


def _runs_of(folder: Path) -> dict[int, Path]:
    runs: dict[int, Path] = {}
    for path in sorted((folder / "func").glob("*_bld*_rest*.nii*")):
        match = _RUN.match(path.name)
        if match and match.group(1) == folder.name:
            runs[int(match.group(2))] = path
    return runs


def scan(source: Path, options: ImportOptions) -> ImportPlan:
    """Find the subjects and runs, and check every header against the first run's grid."""
    folders = sorted(p for p in source.glob("sub-*") if p.is_dir())
    if not folders:
        raise NoMatchError(
            f"{source} has no sub-*/ folder: a GSP1000 folder holds sub-XXXX/func/"
            "sub-XXXX_bld00N_rest_*.nii.gz."
        )
    given_mask = None
    reference = None
    subjects = []
    for folder in folders:
        runs = _runs_of(folder)
        missing = [n for n in options.runs if n not in runs]
        if missing:
            raise MissingInputError(
                f"{folder}: no run bld{missing[0]:03d} ({folder.name}_bld{missing[0]:03d}_rest"
                f"*.nii.gz); found runs {sorted(runs) or 'none'}; import only complete "
                "subjects with --runs, or remove the folder."
            )
        paths = [runs[n] for n in options.runs]
        for path in paths:
            img = nb.load(path)
            if img.ndim != 4:
                raise InputDataError(f"{path}: a BOLD run must be 4-D, found {img.shape}.")
            if reference is None:
                reference = (path, img.shape[:3], img.affine)
            check_same_grid(img.shape[:3], img.affine, reference[1], reference[2], path,
                            reference[0])
        subjects.append(SourceSubject(folder.name, bids_label(folder.name, folder),
                                      _LinkRuns(paths, options)))
    assert reference is not None
    if options.mask is not None:
        given_mask, _ = load_mask(options.mask, reference[1], reference[2])
        subjects = [SourceSubject(s.name, s.label, _LinkRuns(s.write.paths, options, given_mask))
                    for s in subjects]
    unique_labels(subjects, source)
    return ImportPlan(tuple(int(n) for n in reference[1]), np.asarray(reference[2]),
                      tuple(subjects), [{"DOI": DOI, "URL": source.resolve().as_uri()}],
                      "GSP1000 (Brain Genomics Superstruct Project), imported", REPETITION_TIME)


class _LinkRuns:
    """Link the runs, then write the given or the data-derived brain mask."""

    def __init__(self, paths: list[Path], options: ImportOptions, mask=None) -> None:
        self.paths = paths
        self.options = options
        self.mask = mask

    def __call__(self, stage) -> None:
        for number, path in zip(self.options.runs, self.paths):
            stage.link_bold(path, number)
        if self.mask is not None:
            stage.write_mask(self.mask, [self.options.mask.resolve().as_uri()])
        else:
            stage.write_mask(valid_mask(self.paths), [p.resolve().as_uri() for p in self.paths])
