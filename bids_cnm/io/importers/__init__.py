"""Import connectomes held in other layouts as BIDS derivatives ``bids_cnm`` reads unchanged.

One module per format, each with ``scan(source, options) -> ImportPlan`` that
finds the subjects and checks the grid before anything is written:

* :mod:`~bids_cnm.io.importers.gsp1000` — the GSP1000 Dataverse folder (NIfTI, linked);
* :mod:`~bids_cnm.io.importers.leaddbs` — a Lead-DBS fMRI connectome (``.mat``, converted);
* :mod:`~bids_cnm.io.importers.lacuna` — a lacuna HDF5 connectome (converted);
* :mod:`~bids_cnm.io.importers.npy` — per-subject ``.npy`` arrays and a mask (converted).

:func:`import_connectome` writes the dataset (see :mod:`~bids_cnm.io.importers.writer`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from bids_cnm.errors import MissingInputError, UsageError
from bids_cnm.io.importers import gsp1000, lacuna, leaddbs, npy
from bids_cnm.io.importers.writer import (
    ConnectomeWriter,
    ImportOptions,
    check_destination,
)

LOGGER = logging.getLogger("bids_cnm")

#: format name -> scanner
FORMATS = {
    "gsp1000": gsp1000.scan,
    "leaddbs": leaddbs.scan,
    "lacuna-hdf5": lacuna.scan,
    "npy": npy.scan,
}

__all__ = ["FORMATS", "ImportOptions", "import_connectome"]


def import_connectome(
    fmt: str, source: str | Path, dest: str | Path, options: ImportOptions = ImportOptions(),
    command: str = "",
) -> dict[str, int]:
    """Write ``source`` (in format ``fmt``) as a BIDS derivatives connectome in ``dest``.

    Parameters
    ----------
    fmt : str
        One of :data:`FORMATS`.
    source, dest : path
        The connectome as held, and the dataset to write (outside ``source``).
    options : ImportOptions
    command : str
        Recorded in ``dataset_description.json``.

    Returns
    -------
    dict
        ``{"imported": n, "skipped": m}``: subjects written now and found finished.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    source, dest = Path(source), Path(dest)
    if not source.exists():
        raise MissingInputError(f"SOURCE {source} does not exist.")
    check_destination(source, dest)
    if options.link not in ("symlink", "hardlink", "copy"):
        raise UsageError(f"--link {options.link}: choose symlink, hardlink or copy.")
    plan = FORMATS[fmt](source, options)
    if options.repetition_time is None:
        if plan.repetition_time is None:
            raise UsageError(f"{source} does not record the repetition time: give it with "
                             "--repetition-time SECONDS (BIDS sidecars need it).")
        options = dataclasses.replace(options, repetition_time=plan.repetition_time)
    writer = ConnectomeWriter(dest, options, plan.shape, plan.affine, plan.source_datasets,
                              plan.name)
    writer.write_description(command or f"bids_cnm-connectome import {fmt} {source} {dest}")
    counts = {"imported": 0, "skipped": 0}
    for i, subject in enumerate(plan.subjects, start=1):
        if writer.done(subject.label):
            counts["skipped"] += 1
            continue
        start = time.perf_counter()
        stage = writer.stage(subject.label)
        subject.write(stage)
        stage.commit()
        counts["imported"] += 1
        LOGGER.info("sub-%s (%d/%d) imported in %.1f s", subject.label, i, len(plan.subjects),
                    time.perf_counter() - start)
    writer.write_participants({s.name: s.label for s in plan.subjects})
    return counts
