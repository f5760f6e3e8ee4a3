"""The BIDS-App command line: parse, check, build the workflow, run, finalize.

The top layer: may import everything below it.
"""

__all__ = ["docs", "parser", "run", "workflow"]
