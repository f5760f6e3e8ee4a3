"""ROI-to-ROI values: each subject's mean Fisher z of every seed inside every node.

A parcellation's nodes (small spheres or labelled regions) are few voxels, so
their correlations with the seeds come from one small product per subject on
the nodes' rows only, in the same pass as the voxel-wise sums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_cnm.engine.connectivity import R_MAX, fisher_z, seed_timeseries
from bids_cnm.engine.seeds import Seeds
from bids_cnm.engine.timeseries import PreparedSubject


def node_zvalues(
    subject: PreparedSubject,
    seeds: Seeds,
    nodes: list[np.ndarray],
    seed_ts: np.ndarray | None = None,
) -> np.ndarray:
    """Mean Fisher z of every seed over the voxels of every node, for one subject.

    Parameters
    ----------
    subject : PreparedSubject
    seeds : Seeds
    nodes : list of ndarray
        Flat grid indices of each node's voxels.
    seed_ts : ndarray, shape (K, T), optional
        The seeds' centred unit-norm time courses, when already computed.

    Returns
    -------
    ndarray of float32, shape (K, N)
        NaN for a node with no valid voxel in this subject.
    """
    if seed_ts is None:
        seed_ts = seed_timeseries(subject, seeds)
    out = np.full((seed_ts.shape[0], len(nodes)), np.nan, dtype=np.float32)
    for n, voxels in enumerate(nodes):
        pos = np.searchsorted(subject.voxels, voxels)
        pos = pos[pos < len(subject.voxels)]
        pos = pos[np.isin(subject.voxels[pos], voxels)]
        if len(pos) == 0:
            continue
        rows = np.asarray(subject.data[np.sort(pos)], dtype=np.float32)
        factor = subject.scale[np.sort(pos)] / subject.norm[np.sort(pos)]
        r = (rows @ seed_ts.T) * factor[:, None]
        np.clip(r, -R_MAX, R_MAX, out=r)
        out[:, n] = fisher_z(r).mean(axis=0)
    return out


def save_nodes(path: Path, voxels: list[np.ndarray], table: list[dict]) -> Path:
    """Write ROI-to-ROI nodes (voxel lists and their table) for the accumulate nodes."""
    import json
    import os
    import tempfile

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


def load_nodes(path: str) -> tuple[list[np.ndarray], list[dict]]:
    """Read nodes written by :func:`save_nodes`."""
    import json

    with np.load(path) as f:
        table = json.loads(str(f["table"]))
        return [f[f"node_{n}"] for n in range(len(table))], table
