"""Allow ``python -m bids_cnm``."""

from bids_cnm.cli.run import console

if __name__ == "__main__":
    console()
