"""The connectivity engine: seeds on the connectome's grid, prepared time series, the
one-GEMM pass over all seeds with running statistics, ROI/node values and the group
results they reduce to.

Pure numerical code: it may import :mod:`bids_cnm.errors` only (never the nipype shell,
the CLI, the plan or the analyses).
"""

__all__ = ["bold_reader", "connectivity", "degree", "group_results", "nodes", "seeds",
           "timeseries"]
