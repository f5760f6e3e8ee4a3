"""The demo: a synthetic connectome with planted networks, demo coordinates, the demo
analysis plan and the ``bids_cnm-demo`` command that runs the whole chain on them.

May import anything in :mod:`bids_cnm` (it is a user of the app, like the CLI).
"""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bids_cnm-demo`` (see :mod:`bids_cnm.demo.__main__`)."""
    from bids_cnm.demo.__main__ import main as _main

    return _main(argv)
