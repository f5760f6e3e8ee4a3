"""The analyses on group results: sensitivity variants, specificity, validation, DBS and
ALE (NiMARE), and the plan runner that chains them.

Pure functions on arrays and tables; may import :mod:`bids_cnm.engine`,
:mod:`bids_cnm.stats`, :mod:`bids_cnm.plan`, :mod:`bids_cnm.config` and
:mod:`bids_cnm.errors`, never the nipype shell or the CLI.
"""

__all__ = ["ale", "dbs", "degree", "grey_matter", "plan_seeds", "relocation", "roi", "run_plan",
           "sensitivity", "specificity", "validation"]
