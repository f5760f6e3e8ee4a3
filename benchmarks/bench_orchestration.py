#!/usr/bin/env python
"""Does a run's orchestration grow with the number of subjects? (on demand; issue 10).

Builds (once, cached under ``--cache``) two synthetic connectomes of the same small
shape with :func:`bids_cnm.demo.data.make_demo_dataset` -- 8 mm grid (3,666 brain
voxels), one run of 50 volumes per subject -- one of ``--small`` (30) subjects and
one of ``--large`` (1000), so the engine's share is small and what is left shows.
For each it runs the default command (``bids_cnm ... group``, MultiProc) cold (new
work folder: indexing, preparation), then ``--repeats`` times warm (prepared copies
and the saved index kept, nipype's node cache and the outputs removed), and prints
each run's breakdown from the last line of its own log and the warm runs'
orchestration per subject beyond the small connectome's::

    (orchestration at large - orchestration at small) / (large - small)

Usage::

    python benchmarks/bench_orchestration.py [--cache DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_end_to_end import run_cli  # noqa: E402 - the same subprocess run and log parsing


def make_data(cache: Path, n_subjects: int) -> tuple[Path, Path]:
    """The connectome and its demo coordinates (generated once: ~14 s for 1000)."""
    from bids_cnm.demo.data import make_demo_dataset

    folder = cache / f"data_{n_subjects}"
    if not (folder / "connectome" / "participants.tsv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        make_demo_dataset(folder, n_subjects=n_subjects, n_volumes=50, resolution=8,
                          n_runs_first_subject=1)
    return folder / "connectome", folder / "coordinates.tsv"


def line(kind: str, n: int, result: dict) -> str:
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["parts"].items())
    return f"{kind:<6} {n:5d}  {result['wall']:6.1f} s   {parts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "bids_cnm_bench_orchestration")
    parser.add_argument("--small", type=int, default=30)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    warm: dict[int, float] = {}
    print("run        N    wall      breakdown (from the run's log)")
    for n in (args.small, args.large):
        bids, coordinates = make_data(args.cache, n)
        work, out = args.cache / f"work_{n}", args.cache / f"out_{n}"
        for folder in (work, out):
            shutil.rmtree(folder, ignore_errors=True)
        print(line("cold", n, run_cli(bids, out, work, coordinates)), flush=True)
        results = []
        for _ in range(args.repeats):
            shutil.rmtree(work / "cnm_wf")
            shutil.rmtree(out)
            results.append(run_cli(bids, out, work, coordinates))
            print(line("warm", n, results[-1]), flush=True)
        warm[n] = min(r["parts"].get("orchestration", float("nan")) for r in results)
    growth = (warm[args.large] - warm[args.small]) / (args.large - args.small)
    print(f"\nwarm orchestration: {warm[args.small]:.1f} s at {args.small} subjects, "
          f"{warm[args.large]:.1f} s at {args.large}: {growth * 1e3:.1f} ms per subject more")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
