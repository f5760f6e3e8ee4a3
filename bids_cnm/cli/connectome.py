"""``bids_cnm-connectome import FORMAT SOURCE DEST``: make a connectome usable by bids_cnm.

A thin command line over :func:`bids_cnm.io.importers.import_connectome`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from bids_cnm import __version__
from bids_cnm.errors import EX_USAGE, CNMError
from bids_cnm.io.importers import FORMATS, ImportOptions, import_connectome

LOGGER = logging.getLogger("bids_cnm")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the documentation)."""
    parser = argparse.ArgumentParser(
        prog="bids_cnm-connectome",
        description="Write a connectome held in another layout as the BIDS derivatives "
        "dataset bids_cnm reads (see docs/inputs.md).",
    )
    parser.add_argument("--version", action="version", version=f"bids_cnm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import a connectome (re-running skips finished "
                         "subjects)")
    imp.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT",
                     help="one of: " + ", ".join(FORMATS))
    imp.add_argument("source", type=Path, metavar="SOURCE",
                     help="the connectome as held (folder or HDF5 file); never written to")
    imp.add_argument("dest", type=Path, metavar="DEST",
                     help="the BIDS derivatives dataset to write (outside SOURCE)")
    imp.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink",
                     help="how NIfTI sources (gsp1000) enter DEST (default: symlink)")
    imp.add_argument("--repetition-time", type=float, metavar="SECONDS",
                     help="TR for the sidecars (default: gsp1000 3.0; leaddbs from "
                     "dataset_info.json when recorded; else required)")
    imp.add_argument("--mask", type=Path, metavar="MASK",
                     help="brain mask NIfTI: required for npy (the arrays' voxels); for "
                     "gsp1000 used instead of the mask derived from the data")
    imp.add_argument("--participants", type=Path, metavar="TABLE",
                     help="demographics (TSV or CSV with participant_id) for participants.tsv")
    imp.add_argument("--space", default="MNI152NLin6Asym",
                     help="BIDS space entity of the written files (default: MNI152NLin6Asym)")
    imp.add_argument("--res", default="2",
                     help="BIDS res entity of the written files (default: 2); '' for none")
    imp.add_argument("--task", default="rest",
                     help="BIDS task entity of the written files (default: rest)")
    imp.add_argument("--runs", type=int, nargs="+", default=[1, 2], metavar="N",
                     help="the bld runs every gsp1000 subject must have (default: 1 2)")
    imp.add_argument("-v", "--verbose", action="count", default=0,
                     help="report every subject as it is imported")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (errors: one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage; BIDS Apps use 64
        return EX_USAGE if exc.code else 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    options = ImportOptions(
        link=args.link, repetition_time=args.repetition_time, mask=args.mask,
        participants=args.participants, space=args.space, res=args.res or None,
        task=args.task, runs=tuple(args.runs),
    )
    try:
        counts = import_connectome(args.format, args.source, args.dest, options,
                                   command="bids_cnm-connectome " + shlex.join(argv))
    except CNMError as exc:
        print(f"bids_cnm-connectome: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.dest}: {counts['imported']} subject(s) imported, {counts['skipped']} "
          "already there; run: bids_cnm " + f"{args.dest} OUTPUT_DIR group --coordinates FILE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
