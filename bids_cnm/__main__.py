"""Allow ``python -m bids_cnm``."""

from bids_cnm.cli.run import main

if __name__ == "__main__":
    raise SystemExit(main())
