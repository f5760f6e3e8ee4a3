"""ROI-to-ROI values: each subject's mean Fisher z of every seed inside every node.

A parcellation's nodes (small spheres or labelled regions) are few voxels, so
their correlations with the seeds come from one small product per subject on
the nodes' rows only, in the same pass as the voxel-wise sums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_cnm.engine.connectivity import subject_zmaps
from bids_cnm.engine.seeds import Seeds
from bids_cnm.engine.timeseries import PreparedSubject


def node_zvalues(
    subject: PreparedSubject,
    seeds: Seeds,
    nodes: list[np.ndarray],
    signal: str = "mean",
    runs: str = "average",
) -> np.ndarray:
    """Mean Fisher z of every seed over the voxels of every node, for one subject.

    The voxels' z are those of the subject's z-maps (:func:`subject_zmaps`, same
    seed signal and run handling), so a node value is the mean of the z-map over
    the node's voxels with data.

    Parameters
    ----------
    subject : PreparedSubject
    seeds : Seeds
    nodes : list of ndarray
        Flat grid indices of each node's voxels.
    signal, runs : str
        See :func:`bids_cnm.engine.connectivity.accumulate_subject`.

    Returns
    -------
    ndarray of float32, shape (K, N)
        NaN for a node with no valid voxel in this subject.
    """
    out = np.full((len(seeds), len(nodes)), np.nan, dtype=np.float32)
    positions = []
    for voxels in nodes:
        pos = np.searchsorted(subject.voxels, voxels)
        pos = pos[pos < len(subject.voxels)]
        positions.append(np.unique(pos[np.isin(subject.voxels[pos], voxels)]))
    sizes = [len(p) for p in positions]
    if sum(sizes) == 0:
        return out
    # one pass over the rows of all nodes (overlapping nodes repeat rows)
    z = subject_zmaps(subject, seeds, np.concatenate(positions), signal, runs)
    start = 0
    for n, size in enumerate(sizes):
        if size:
            out[:, n] = z[start : start + size].mean(axis=0, dtype=np.float64)
        start += size
    return out


def save_nodes(path: Path, voxels: list[np.ndarray], table: list[dict]) -> Path:
    """Write ROI-to-ROI nodes (voxel lists and their table) for the accumulate nodes.

    A file that already holds these nodes is left untouched: nipype's cache of the
    steps that read it hashes its modification time, so rewriting the same nodes on
    every run (npz files carry their write time) made each re-run compute
    connectivity and everything after it again.
    """
    import json
    import os
    import tempfile

    if _holds(path, voxels, json.loads(json.dumps(table, default=float))):
        return path
    # atomic: participant jobs of a cluster array may write it at the same time
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".nodes.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, table=json.dumps(table, default=float),
                 **{f"node_{n}": v for n, v in enumerate(voxels)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _holds(path: Path, voxels: list[np.ndarray], table: list[dict]) -> bool:
    """Whether ``path`` holds exactly these nodes (absent or unreadable: no)."""
    import zipfile

    try:
        old_voxels, old_table = load_nodes(str(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False
    return old_table == table and len(old_voxels) == len(voxels) and all(
        a.dtype == np.asarray(b).dtype and np.array_equal(a, b)
        for a, b in zip(old_voxels, voxels))


def load_nodes(path: str) -> tuple[list[np.ndarray], list[dict]]:
    """Read nodes written by :func:`save_nodes`."""
    import json

    with np.load(path) as f:
        table = json.loads(str(f["table"]))
        return [f[f"node_{n}"] for n in range(len(table))], table
