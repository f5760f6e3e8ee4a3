"""Entry point: parse -> check -> build -> run -> finalize.

Everything that can be checked before the heavy work (the connectome's files and
grid, the coordinate table, the seeds) is checked while the inputs are resolved
(:mod:`bids_cnm.workflows.inputs`), so bad input fails in seconds with one line
that says what to fix and a BIDS-Apps exit code.
"""

from __future__ import annotations

import logging
import sys
import time

from bids_cnm.cli.parser import parse_args
from bids_cnm.cli.workflow import build_workflow, execute
from bids_cnm.config import Config
from bids_cnm.errors import CNMError, OutputError
from bids_cnm.workflows.inputs import resolve_inputs

LOGGER = logging.getLogger("bids_cnm")


def setup_logging(verbosity: int) -> None:
    """Progress on stderr; nipype's own chatter only with ``-vv``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [bids_cnm] %(message)s", "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    LOGGER.propagate = False
    nipype_level = logging.INFO if verbosity >= 2 else logging.WARNING
    from nipype import logging as nlogging

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(nipype_level)


def run(config: Config, command: tuple[str, ...] = ()) -> int:
    """Build and run the workflow of ``config.analysis_level``.

    Parameters
    ----------
    config : Config
    command : tuple of str
        The command line, recorded in the report.

    Returns
    -------
    int
        The exit code (0).
    """
    started = time.time()
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create OUTPUT_DIR {config.output_dir}: {exc}") from exc
    inputs = resolve_inputs(config, command)
    workflow = build_workflow(inputs)
    execute(workflow, inputs.config, started)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(argv)
        setup_logging(config.verbosity)
        return run(config, command=("bids_cnm", *map(str, argv)))
    except CNMError as exc:
        print(f"bids_cnm: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bids_cnm: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
