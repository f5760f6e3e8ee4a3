#!/usr/bin/env python
"""GSP1000-shaped scale benchmark (on demand, not in tests; issue 12 item 6).

1000 subjects cannot be generated here, their shape can: FSL's 2 mm MNI152 grid
(91 x 109 x 91), two gzipped float32 runs of 120 volumes per subject, ~230k brain
voxels (the subject of ``bench_prepare.py``, made once).  For N = 5, 10, 20
subjects (``--subjects``) the script

* prepares every subject with :func:`bids_cnm.engine.timeseries.prepare_subject`
  (each subject's runs are links to the one generated subject under its own name:
  the same bytes to decode, a separate prepared copy) in ``--cores`` processes side
  by side, each taking its share of the subjects in turn with one
  :class:`~bids_cnm.engine.bold_reader.Scratch` as the workflow's batch nodes do;
  the wall time of them all per subject is the throughput, set against the
  inflater's own time on the same files (the bound of preparation);
* runs the group pass exactly as the ``accumulate_batch`` steps do
  (``open_prepared``, ``accumulate_subject`` into one ``RunningStats``, then
  ``finalize``) for 21 seeds (the reference study's studies) and 21 + 84 + 21 = 126
  seeds (studies, their 4 random relocations each, and 21 DBS seeds): the reference
  study's whole design in one pass;

and prints per-subject costs, their ratio to the bound, and the extrapolation to
1000 subjects on ``--cores`` cores (subjects are prepared side by side; the group
pass uses every core itself).  The prepared copies (220 MB per subject) go to
``--cache``; the page cache holds them here, as it would not for 1000 subjects
(110-220 GB): the group pass of the real GSP1000 adds their read time at the disk's rate.

Usage::

    python benchmarks/bench_gsp1000_scale.py [--subjects 5 10 20] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import AFFINE, SHAPE, brain_mask, make_subject, time_decoder  # noqa: E402

from bids_cnm.engine import connectivity  # noqa: E402
from bids_cnm.engine.bold_reader import Scratch  # noqa: E402
from bids_cnm.engine.seeds import make_seeds  # noqa: E402
from bids_cnm.engine.timeseries import open_prepared, prepare_subject  # noqa: E402


def seeds_in_brain(n: int, mask: np.ndarray, seed: int):
    """``n`` 6 mm seeds at random in-brain coordinates (one per study)."""
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(mask)[rng.choice(int(mask.sum()), n, replace=False)]
    xyz = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    table = pd.DataFrame({"study": [f"S{i:03d}" for i in range(n)], "x": xyz[:, 0],
                          "y": xyz[:, 1], "z": xyz[:, 2], "set": "primary",
                          "source_row": np.arange(n) + 2})
    return make_seeds(table, SHAPE, AFFINE, mask, diameter=6.0)


def subject_files(source: list[Path], folder: Path, index: int) -> list[str]:
    """Links named as another subject's runs (same content, separate cache entry)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for run, path in enumerate(source, 1):
        link = folder / f"sub-{index:04d}_bld00{run}_rest.nii.gz"
        if not link.exists():
            os.link(path, link)
        paths.append(str(link))
    return paths


def prepare_batch(batch: tuple[list[list[str]], str, list[Path], str]) -> None:
    """One worker's share of the subjects, prepared in turn (a batch node's loop)."""
    bolds, mask_path, outs, dtype = batch
    scratch = Scratch()
    for bold, out in zip(bolds, outs):
        prepare_subject(bold, [mask_path], out, dtype=dtype, scratch=scratch)


def group_pass(prepared: list[Path], seeds, voxels: np.ndarray) -> float:
    """Seconds per subject of the accumulate step (mean over the subjects)."""
    stats = connectivity.RunningStats.zeros(len(voxels), len(seeds))
    start = time.perf_counter()
    for path in prepared:
        subject = open_prepared(path)
        rows = connectivity.rows_of(subject.voxels, voxels)
        connectivity.accumulate_subject(stats, subject, seeds, rows)
    if stats.n > 1:
        stats.finalize()
    return (time.perf_counter() - start) / len(prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "bids_cnm_bench_prepare")
    parser.add_argument("--subjects", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--cache-dtype", choices=["float32", "int16"], default="float32",
                        help="the prepared copies' type (bids_cnm's --cache-dtype)")
    args = parser.parse_args(argv)

    source = make_subject(args.cache)
    mask = brain_mask()
    mask_path = args.cache / "brain_mask.nii.gz"
    if not mask_path.exists():
        import nibabel as nb

        nb.Nifti1Image(mask.astype(np.uint8), AFFINE).to_filename(mask_path)
    seeds = {21: seeds_in_brain(21, mask, 1), 126: seeds_in_brain(126, mask, 2)}
    print(f"GSP1000 shape: {SHAPE}, 2 runs x 120 volumes, {int(mask.sum()):,} brain voxels; "
          f"{args.cores} cores; {args.cache_dtype} copies in {args.cache}; "
          f"load average {os.getloadavg()[0]:.1f}")
    decode = min(time_decoder(source)[0] for _ in range(2))
    print(f"inflater alone: {decode:.2f} s per subject (the bound of preparation)")
    # compile the kernels once, outside the timings
    warm = args.cache / "scale" / "warmup"
    shutil.rmtree(warm, ignore_errors=True)
    prepare_subject([str(p) for p in source], [str(mask_path)], warm, dtype=args.cache_dtype)
    voxels = open_prepared(warm).voxels
    for k in seeds:
        group_pass([warm], seeds[k], voxels)

    print(f"\n   N  prepare/subject  x{args.cores}/decode  group 21 seeds  group 126 seeds   "
          "1000 subjects: prepare + 21 seeds | + 126 seeds")
    for n in args.subjects:
        folder = args.cache / "scale"
        bolds = [subject_files(source, folder / "bold", i) for i in range(n)]
        outs = [folder / f"prepared_{i:04d}" for i in range(n)]
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        # as the workflow's batch nodes run: --cores processes, each preparing its share
        # of the subjects one after another into one Scratch; the wall time of all of
        # them is the throughput (a subject's decode thread only helps on an idle core)
        batches = [(bolds[i::args.cores], str(mask_path), outs[i::args.cores],
                    args.cache_dtype) for i in range(args.cores)]
        with ProcessPoolExecutor(args.cores, mp_context=get_context("fork")) as pool:
            start = time.perf_counter()
            list(pool.map(prepare_batch, batches))
            prep = (time.perf_counter() - start) / n  # wall per subject, every core busy
        group = {k: group_pass(outs, s, voxels) for k, s in seeds.items()}
        total_prep = prep * 1000
        print(f"{n:4d}  {prep:9.2f} s      {prep * args.cores / decode:5.2f}   "
              f"{group[21]:9.3f} s     "
              f"{group[126]:9.3f} s        {(total_prep + group[21] * 1000) / 60:6.1f} min"
              f" | {(total_prep + group[126] * 1000) / 60:6.1f} min"
              f"   (preparation alone {total_prep / 60:.1f} min)")
    shutil.rmtree(args.cache / "scale", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
