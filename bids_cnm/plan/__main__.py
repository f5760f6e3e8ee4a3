"""``python -m bids_cnm.plan``: print the JSON Schema of a plan file (to save beside it)."""

from bids_cnm.plan.schema import main

raise SystemExit(main())
