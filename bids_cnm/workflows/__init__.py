"""The nipype workflows: :func:`~bids_cnm.workflows.base.init_participant_wf` and
:func:`~bids_cnm.workflows.base.init_group_wf`.

May import the interfaces and everything below them, never the CLI.
"""

__all__ = ["base", "crash", "inputs"]
