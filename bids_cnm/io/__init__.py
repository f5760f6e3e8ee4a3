"""Inputs and outputs: connectome discovery (pybids), coordinate readers, BIDS derivative
names, sidecars and atomic writes, and the writers of group outputs.

May import :mod:`bids_cnm.engine`, :mod:`bids_cnm.stats`, :mod:`bids_cnm.errors`,
:mod:`bids_cnm.config` (constants) and (for variant names only)
:mod:`bids_cnm.analyses.sensitivity`.
"""

__all__ = ["connectome", "coordinates", "derivatives", "importers", "outputs"]
