"""The bids_cnm command line (BIDS-App specification)."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path

from bids_cnm import __version__
from bids_cnm.config import DEFAULT_BOLD_DESC, DOCS, Config
from bids_cnm.errors import EX_USAGE, UsageError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that exits with the BIDS-Apps usage code (64), writes its usage
    errors to stderr and suggests the closest option for a misspelt one."""

    _argv: tuple[str, ...] = ()

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = tuple(str(a) for a in (sys.argv[1:] if args is None else args))
        return super().parse_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}{self._suggestion()}\n")

    def _suggestion(self) -> str:
        """``did you mean --x?`` for every misspelt option of the command line (Python
        3.11 has no ``suggest_on_error``; difflib gives the same kind of hint).  A
        misspelt option often shows as a missing required one, so the command line is
        checked whatever the error."""
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for word in self._argv:
            option = word.split("=", 1)[0]
            if not option.startswith("--") or any(k.startswith(option) for k in known):
                continue  # not an option, or one argparse accepts (also abbreviated)
            close = difflib.get_close_matches(option, known, n=1)
            if close:
                hints.append(f"{option}: did you mean {close[0]}?")
        return ("; " + "; ".join(hints)) if hints else ""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once: not when the help already says it, nor an empty one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    # nan passes every comparison test and inf makes empty maps: both are refused
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _filter(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE (e.g. group=IGE), got {text!r}")
    column, value = text.split("=", 1)
    if not column.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE (e.g. group=IGE), got {text!r}")
    return column.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (also used to generate docs and boutiques.json)."""
    parser = _Parser(
        prog="bids_cnm",
        description="Coordinate network mapping: seeds at reported MNI coordinates, their "
        "connectivity in a normative resting-state connectome, and the overlap network.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path,
                        help="the connectome: a BIDS derivatives dataset of preprocessed "
                        "resting-state BOLD in MNI space (e.g. fMRIPrep or XCP-D outputs)")
    parser.add_argument("output_dir", type=Path,
                        help="where the derivatives are written (not inside bids_dir)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: each subject's z-map of every seed; group: t-maps, "
                        "thresholded networks and their overlap (computes connectivity on the "
                        "fly when no matching participant outputs exist)")
    parser.add_argument("--version", action="version", version=f"bids_cnm {__version__}")

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--coordinates", type=Path, required=True, metavar="FILE",
                        help="coordinate table: TSV (study, x, y, z [, set, space, subtype, "
                        "modality, ...]), GingerALE/Sleuth text, or NiMARE dataset JSON")
    inputs.add_argument("--analysis", type=Path, default=None, metavar="PLAN",
                        help="analysis plan (JSON or YAML): primary/control sets, validation, "
                        "DBS and ALE analyses (see docs/plan.md); default: the controls "
                        "summary only")
    inputs.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                        metavar="LABEL", dest="participant_label",
                        help="connectome subjects to use (with or without 'sub-'); default all")
    inputs.add_argument("--participant-filter", "--participant_filter", nargs="+", default=[],
                        type=_filter, metavar="COLUMN=VALUE", dest="participant_filter",
                        help="select a cohort from participants.tsv, e.g. group=IGE")
    inputs.add_argument("--bids-filter-file", type=Path, default=None, metavar="FILE",
                        help="JSON of pybids filters (BIDS entities) added to the BOLD "
                        "query, NiPreps style: {\"bold\": {\"session\": \"1\"}}")
    inputs.add_argument("--task", default=None, help="task label of the BOLD runs")
    inputs.add_argument("--space", default=None,
                        help="space label of the BOLD runs (default: the only one present)")
    inputs.add_argument("--res", default=None,
                        help="res label of the BOLD runs (default: the only one present)")
    inputs.add_argument("--bold-desc", nargs="+", default=list(DEFAULT_BOLD_DESC),
                        metavar="DESC",
                        help="accepted desc labels of BOLD files (fMRIPrep: preproc, "
                        "XCP-D: denoised)")

    science = parser.add_argument_group("seeds and statistics")
    science.add_argument("--sphere-diameter", type=_positive_float, default=6.0, metavar="MM",
                         help=DOCS["sphere_diameter"])
    science.add_argument("--t-threshold", type=_positive_float, default=5.1, metavar="T",
                         help=DOCS["t_threshold"])
    science.add_argument("--seed-signal", choices=["mean", "standardized"], default="mean",
                         help=DOCS["seed_signal"])
    science.add_argument("--run-combination", choices=["average", "concatenate"],
                         default="average",
                         help=DOCS["run_combination"])

    sens = parser.add_argument_group(
        "sensitivity", "variants computed from the same single pass over the connectome")
    sens.add_argument("--t-thresholds", nargs="+", type=_positive_float, default=[],
                      metavar="T", help="further |t| thresholds, e.g. 4.7 5.6 7 9")
    sens.add_argument("--sphere-diameters", nargs="+", type=_positive_float, default=[],
                      metavar="MM", help="further sphere diameters, e.g. 3 9")
    sens.add_argument("--per-coordinate", action="store_true",
                      help="also one seed per coordinate instead of per study")
    sens.add_argument("--subgroups", nargs="+", default=[], metavar="COLUMN",
                      help="coordinate-table columns (e.g. modality subtype): the network of "
                      "each level and leaving each level out")
    sens.add_argument("--compare-connectome", type=Path, default=None, metavar="DIR",
                      help="a second connectome (BIDS derivatives) on which the main network "
                      "is computed too")
    sens.add_argument("--compare-participant-filter", nargs="+", default=[], type=_filter,
                      metavar="COLUMN=VALUE",
                      help="cohort of the second pass (of --compare-connectome, or of "
                      "bids_dir when only this is given), e.g. group=IGE")
    sens.add_argument("--compare-label", default=None,
                      help="name of the second pass in file names (default: from the "
                      "folder or the filter)")
    sens.add_argument("--primary-sets", nargs="+", default=["primary"], metavar="SET",
                      help="coordinate sets of the disease's studies")

    spec = parser.add_argument_group(
        "specificity", "permutation tests of the study networks against control networks")
    spec.add_argument("--specificity", action="store_true",
                      help="run the specificity tests")
    spec.add_argument("--control-sets", nargs="+", default=None, metavar="SET",
                      help="control coordinate sets (default: every non-primary set)")
    spec.add_argument("--random-relocations", type=_non_negative_int, default=4, metavar="K",
                      help="randomly relocated copies of every primary study (0: none)")
    spec.add_argument("--relocation-mask", type=Path, default=None, metavar="NIFTI",
                      help=DOCS["relocation_mask"])
    spec.add_argument("--relocation-mode", choices=["independent", "rigid"],
                      default="independent",
                      help=DOCS["relocation_mode"])
    spec.add_argument("--n-permutations", type=_positive_int, default=5000, metavar="N",
                      help=DOCS["n_permutations"])
    spec.add_argument("--specificity-maps", choices=["t", "binarized", "liebermeister"],
                      default="t", help=DOCS["specificity_maps"])
    spec.add_argument("--no-tfce", action="store_true", help="voxel-wise t without TFCE")
    spec.add_argument("--random-seed", type=_non_negative_int, default=0,
                      help=DOCS["random_seed"])

    hubs = parser.add_argument_group(
        "degree check", "is the network more than the connectome's hubs? (on by default)")
    hubs.add_argument("--no-degree-check", action="store_true",
                      help="do not compute the degree map nor compare the networks with it")
    hubs.add_argument("--degree-samples", type=_positive_int, default=300, metavar="N",
                      help=DOCS["degree_samples"])

    perf = parser.add_argument_group("performance and execution")
    perf.add_argument("-w", "--work-dir", type=Path, default=None,
                      help="nipype working directory (caches; a re-run resumes from it); "
                      "default: $BIDS_CNM_WORK_DIR when set (the container sets /work), "
                      "else <output_dir>/../bids_cnm_work")
    perf.add_argument("--nprocs", "--n-cpus", type=_positive_int,
                      default=min(os.cpu_count() or 1, 8), dest="nprocs",
                      help="processes for nipype's MultiProc plugin")
    perf.add_argument("--batch-size", type=_positive_int, default=100,
                      help=DOCS["batch_size"])
    perf.add_argument("--cache-dtype", choices=["float32", "int16"], default="float32",
                      help=DOCS["cache_dtype"])
    perf.add_argument("--no-cache", action="store_true",
                      help="keep no prepared copy of the time series in the work directory "
                      "(it takes about 4 bytes per voxel and volume): each subject is decoded "
                      "once from its files, straight into the connectivity sums; for a "
                      "one-off run on a connectome too large to copy (a run with other seeds "
                      "decodes it all again)")
    perf.add_argument("--nipype-plugin", default="MultiProc",
                      choices=["MultiProc", "Linear", "SLURM", "SLURMGraph", "SGE", "PBS"],
                      help="nipype execution plugin (cluster plugins submit one job per node)")
    perf.add_argument("--plugin-config", type=Path, default=None, metavar="FILE",
                      help="JSON or YAML file of nipype plugin_args (e.g. sbatch_args)")
    perf.add_argument("--overwrite", action="store_true",
                      help="OUTPUT_DIR holds outputs of another connectome or other settings: "
                      "remove the files that earlier run recorded, and only those, instead of "
                      "refusing (see docs/guarantees.md)")
    perf.add_argument("--min-volumes", type=_non_negative_int, default=50, metavar="N",
                      help="warn (once, listing them) about subjects with fewer BOLD volumes")
    perf.add_argument("--omp-nthreads", type=_positive_int, default=None, metavar="N",
                      help="threads of each process (BLAS, OpenMP, numba); default: the "
                      "libraries' own")
    memory = perf.add_mutually_exclusive_group()
    memory.add_argument("--mem-mb", "--mem_mb", "--mem", type=_positive_float, default=None,
                        dest="mem_mb", metavar="MB",
                        help="memory available to MultiProc, in MB")
    memory.add_argument("--mem-gb", type=_positive_float, default=None, metavar="GB",
                        help="the same in GB (alias of --mem-mb)")
    perf.add_argument("--clean-workdir", action="store_true",
                      help="empty the work directory before running (nothing is reused)")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop at the first failing step instead of finishing the "
                      "independent ones")
    perf.add_argument("--notrack", action="store_true",
                      help="accepted for NiPreps compatibility: bids_cnm sends no usage data "
                      "and never reaches the network (nipype's version check is off, "
                      "NIPYPE_NO_ET=1)")
    perf.add_argument("--skip-participant-maps", action="store_true",
                      help="participant level: prepare the time series only, write no maps "
                      "(not with --no-cache, which keeps no prepared copy)")
    perf.add_argument("-v", "--verbose", action="count", default=0, dest="verbosity",
                      help="more messages (-vv for nipype's own)")

    record = parser.add_argument_group("configuration and record")
    record.add_argument("--config-file", type=Path, default=None, metavar="FILE",
                        help="TOML or JSON of options (long names, e.g. t-threshold = 4.7); "
                        "the command line wins. Every run writes its own to "
                        "OUTPUT_DIR/logs/bids_cnm.toml")
    record.add_argument("--boilerplate-only", "--boilerplate_only", action="store_true",
                        dest="boilerplate_only",
                        help="write the methods boilerplate (OUTPUT_DIR/logs/CITATION.md, "
                        ".html, .bib) and stop")
    return parser


def _default_work_dir(output_dir: Path) -> Path:
    """``$BIDS_CNM_WORK_DIR`` (set in the container image) or a folder beside the outputs."""
    env = os.environ.get("BIDS_CNM_WORK_DIR")
    return Path(env) if env else output_dir.parent / "bids_cnm_work"


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse the command line into a :class:`Config`.

    Raises
    ------
    UsageError
        When the paths are inconsistent (OUTPUT_DIR or the work folder equal to or
        inside an input dataset: BIDS_DIR or --compare-connectome), or the options ask
        for nothing (participant ``--skip-participant-maps --no-cache``).
    """
    parser = build_parser()
    # --config-file first: its options become defaults, so the command line still wins
    # (and a required option such as --coordinates may come from the file)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-file", type=Path, default=None)
    config_file = pre.parse_known_args(argv)[0].config_file
    if config_file is not None:
        from bids_cnm.cli.config_file import file_defaults

        defaults = file_defaults(parser, config_file.expanduser().resolve())
        parser.set_defaults(**defaults)
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    args = parser.parse_args(argv)
    bids_filters = {}
    if args.bids_filter_file is not None:
        from bids_cnm.cli.config_file import load_bids_filters

        bids_filters = load_bids_filters(args.bids_filter_file.expanduser().resolve())
    mem_gb = args.mem_gb if args.mem_mb is None else args.mem_mb / 1024
    if args.analysis_level == "participant" and args.skip_participant_maps and args.no_cache:
        # the step would decode every subject and keep nothing a later run could use
        raise UsageError(
            "participant --skip-participant-maps --no-cache has nothing to do: "
            "--skip-participant-maps only prepares the time series, and --no-cache keeps no "
            "prepared copy; drop --no-cache to prepare for a later group run, or run "
            "'group --no-cache' directly."
        )
    bids_dir = args.bids_dir.expanduser().resolve()
    output_dir = args.output_dir.expanduser().resolve()
    work_dir = (args.work_dir or _default_work_dir(output_dir)).expanduser().resolve()
    datasets = [("BIDS_DIR", bids_dir)]
    if args.compare_connectome:
        datasets.append(("--compare-connectome", args.compare_connectome.expanduser().resolve()))
    for name, path in (("OUTPUT_DIR", output_dir), ("--work-dir", work_dir)):
        for flag, dataset in datasets:
            if path == dataset or dataset in path.parents:
                raise UsageError(
                    f"{name} {path} is inside {flag} {dataset}: bids_cnm never writes into "
                    "the input datasets; choose a folder outside them."
                )
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        coordinates=args.coordinates.expanduser().resolve(),
        analysis_plan=args.analysis.expanduser().resolve() if args.analysis else None,
        work_dir=work_dir,
        participant_label=tuple(args.participant_label),
        participant_filter=tuple(args.participant_filter),
        sphere_diameter=args.sphere_diameter,
        t_threshold=args.t_threshold,
        seed_signal=args.seed_signal,
        run_combination=args.run_combination,
        task=args.task,
        space=args.space,
        res=args.res,
        bold_desc=tuple(args.bold_desc),
        cache_dtype=args.cache_dtype,
        batch_size=args.batch_size,
        nprocs=args.nprocs,
        nipype_plugin=args.nipype_plugin,
        plugin_config=args.plugin_config.expanduser().resolve() if args.plugin_config else None,
        mem_gb=mem_gb,
        bids_filters=bids_filters,
        omp_nthreads=args.omp_nthreads,
        clean_workdir=args.clean_workdir,
        stop_on_first_crash=args.stop_on_first_crash,
        boilerplate_only=args.boilerplate_only,
        verbosity=args.verbosity,
        write_participant_maps=not args.skip_participant_maps,
        no_cache=args.no_cache,
        # repeated values would only write the same variant twice
        t_thresholds=tuple(dict.fromkeys(args.t_thresholds)),
        sphere_diameters=tuple(dict.fromkeys(args.sphere_diameters)),
        per_coordinate=args.per_coordinate,
        subgroups=tuple(args.subgroups),
        primary_sets=tuple(args.primary_sets),
        specificity=args.specificity,
        control_sets=tuple(args.control_sets) if args.control_sets else None,
        random_relocations=args.random_relocations,
        relocation_mask=(args.relocation_mask.expanduser().resolve()
                         if args.relocation_mask else None),
        relocation_mode=args.relocation_mode,
        degree_check=not args.no_degree_check,
        degree_samples=args.degree_samples,
        n_permutations=args.n_permutations,
        specificity_maps=args.specificity_maps,
        tfce=not args.no_tfce,
        random_seed=args.random_seed,
        compare_connectome=(args.compare_connectome.expanduser().resolve()
                            if args.compare_connectome else None),
        compare_participant_filter=tuple(args.compare_participant_filter),
        compare_label=args.compare_label,
        overwrite=args.overwrite,
        min_volumes=args.min_volumes,
        # every option as given, for OUTPUT_DIR/logs/bids_cnm.toml
        extra={"options": {k: (str(v.expanduser().resolve()) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}},
    )
