"""The analysis plan: which sets are primary and control, and which validation, DBS and
ALE analyses run on the group results.

Holds the plan's records, its loader (validation with key paths and fixes) and the
readers of the tables a plan points at.  May import only :mod:`bids_cnm.errors`.
"""

from bids_cnm.plan.loader import *  # noqa: F401,F403
from bids_cnm.plan.loader import __all__  # noqa: F401
