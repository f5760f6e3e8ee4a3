"""Thin nipype interfaces around the pure functions of the engine, analyses, io and
reports (heavy imports happen inside ``_run_interface``).

May import everything except :mod:`bids_cnm.workflows` and :mod:`bids_cnm.cli`.
"""

__all__ = ["cnm"]
