"""The BIDS-App command line: parse, check, build the workflow, run, finalize.

The top layer: may import everything below it.  Importing it first makes the process
environment safe for any user (writable caches, no network lookups; see
:mod:`bids_cnm.cli.environment`), before numba, matplotlib or nipype load.
"""

from bids_cnm.cli.environment import prepare_environment

prepare_environment()

__all__ = ["docs", "environment", "parser", "run", "workflow"]
