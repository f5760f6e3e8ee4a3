"""Thresholded seed networks and their overlap across studies.

Each seed's t-map is thresholded at ``|t| > T`` and binarized with its sign
(+1 positively, −1 negatively connected, 0 otherwise).  Across the ``n`` studies
of a set:

* signed overlap   = (n_positive − n_negative) / n   (in [−1, 1])
* positive overlap = n_positive / n                  (in [0, 1])
* negative overlap = n_negative / n                  (in [0, 1])

The signed map divides by the number of studies, the convention of the
published IGE network of Ji et al. (2025), whose values are
(n_positive − n_negative)/21.  Some tools report counts or percentages instead:
multiply by ``n`` or 100 to compare.
"""

from __future__ import annotations

import numpy as np


def binarize(t: np.ndarray, threshold: float) -> np.ndarray:
    """Signed binarization: ``sign(t)`` where ``|t| > threshold``, else 0.

    Parameters
    ----------
    t : ndarray
        t-values (any shape); NaN counts as not surviving.
    threshold : float
        Positive threshold on |t|.

    Returns
    -------
    ndarray of int8
    """
    if threshold < 0:
        raise ValueError("the |t| threshold must be non-negative")
    t = np.nan_to_num(np.asarray(t, dtype=float), nan=0.0)
    return (np.sign(t) * (np.abs(t) > threshold)).astype(np.int8)


def overlap_maps(t: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Signed, positive and negative overlap of seed networks.

    Parameters
    ----------
    t : ndarray, shape (V, n_studies)
        t-maps of the studies of one set (columns).
    threshold : float
        |t| threshold.

    Returns
    -------
    dict
        ``overlap``, ``posoverlap``, ``negoverlap`` arrays of float32, shape (V,).
    """
    if threshold < 0:
        raise ValueError("the |t| threshold must be non-negative")
    t = np.asarray(t)
    n = t.shape[1]
    if n == 0:
        raise ValueError("an overlap needs at least one study")
    # the counts of binarize()'s signs, without its float64 copy of every t-map: the
    # float64 loop compares in float64 (as binarize does), casting chunk by chunk, on
    # numpy 1 too (whose value-based casting would compare a float32 map in float32);
    # NaN compares False (not surviving, as in binarize)
    in_float64 = (np.float64, np.float64, np.bool_)
    n_pos = np.count_nonzero(np.greater(t, threshold, signature=in_float64), axis=1)
    n_neg = np.count_nonzero(np.less(t, -threshold, signature=in_float64), axis=1)
    return {
        "overlap": ((n_pos - n_neg) / n).astype(np.float32),
        "posoverlap": (n_pos / n).astype(np.float32),
        "negoverlap": (n_neg / n).astype(np.float32),
    }


def threshold_label(threshold: float) -> str:
    """BIDS label for a threshold: 5.1 -> ``5p1``, 7 -> ``7``."""
    text = f"{threshold:g}"
    return text.replace(".", "p").replace("-", "m")
