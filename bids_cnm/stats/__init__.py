"""Statistics on maps: thresholds and overlaps, peaks, permutation tests and TFCE.

Pure numerical code; may import :mod:`bids_cnm.errors` only.
"""

__all__ = ["overlap", "peaks", "permutation", "tfce"]
