#!/usr/bin/env python
"""Benchmark of subject preparation on a GSP1000-shaped subject (run on demand, not in tests).

Generates one synthetic subject of the exact GSP1000 shape (2 mm MNI152 grid,
91 x 109 x 91, two gzipped float32 runs of 120 volumes, ~230k brain voxels) into
a cache folder, then times on the same files:

* **decoder**: inflating the runs into a reused buffer, nothing else (the rate
  no reader of these files can beat);
* **reader**: :func:`bids_cnm.engine.bold_reader.read_concatenated_runs` (inflate on
  a second thread + in-mask copy + scaling into one ``(V, T)`` float32 array) with a
  reused :class:`~bids_cnm.engine.bold_reader.Scratch`, as a batch node reads its
  subjects; **reader, new memory**: the same into new arrays (a batch's first subject);
* **nibabel**: ``np.asarray(img.dataobj, dtype=np.float32)[mask]`` per run (how
  preparation read the data before);
* **prepare**: :func:`bids_cnm.engine.timeseries.prepare_subject` (decode into one
  ``(V, T)`` array, one fused pass of valid voxels + per-run standardization + SD and
  norms on two threads (one per half of the voxels), writing the float32 copy) with the
  same Scratch: what preparation does per subject; its copy replaces the previous
  repeat's, so the page cache reuses memory the VM has just touched (a new subject's
  copy does not: ``bench_gsp1000_scale.py`` pays that),

* **up-front check**: what a run does before its workflow for every BOLD file not seen
  before: :func:`bids_cnm.io.readable.screen_readable` (header and gzip trailer; the
  data are proven by preparation, which reads each run to the end of its stream), next
  to :func:`bids_cnm.io.readable.check_readable` (streaming the file to its end, what
  the check did before: a second decode of every file on a cold run),

and prints MB/s of decompressed data, wall and CPU time (of every thread), reader /
decoder (target <= 1.3) and the extrapolated 1000-subject preparation time on
``--cores`` cores (target < 20 min) from the larger of prepare's wall and CPU time
(``bench_gsp1000_scale.py`` measures subjects prepared side by side).

Usage::

    python benchmarks/bench_prepare.py [--cache DIR] [--repeats 3] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_cnm.engine.bold_reader import (
    BLOCK_VOLUMES,
    Scratch,
    decoder_name,
    open_decompressed,
    read_concatenated_runs,
    read_masked_runs,
)
from bids_cnm.engine.timeseries import prepare_subject
from bids_cnm.io.readable import check_readable, screen_readable

SHAPE = (91, 109, 91)
#: FSL's MNI152 2 mm grid (the GSP1000 files' grid)
AFFINE = np.array(
    [[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]]
)
N_VOLUMES = 120
N_RUNS = 2
TARGET_VOXELS = 230_000


def brain_mask() -> np.ndarray:
    """An ellipsoid 'brain' of about 230k voxels centred in the grid."""
    ii, jj, kk = np.indices(SHAPE, dtype=np.float32)
    c = (np.asarray(SHAPE) - 1) / 2
    d2 = ((ii - c[0]) / 36.5) ** 2 + ((jj - c[1]) / 46.0) ** 2 + ((kk - c[2]) / 33.0) ** 2
    # pick the radius that gives the target count (about 25 % of the grid)
    radius = np.sort(d2.ravel())[TARGET_VOXELS - 1]
    return d2 <= radius


def make_subject(folder: Path) -> list[Path]:
    """Write (once) two GSP-shaped runs: BOLD-like float32, zero outside the brain."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"sub-0001_bld00{r + 1}_rest_bench.nii.gz" for r in range(N_RUNS)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    mask = brain_mask()
    base = rng.uniform(300, 900, SHAPE).astype(np.float32)
    loading = rng.standard_normal(SHAPE).astype(np.float32)
    for path in paths:
        data = np.empty(SHAPE + (N_VOLUMES,), dtype=np.float32)
        for t in range(N_VOLUMES):
            vol = base + 8 * loading * rng.standard_normal() + 10 * rng.standard_normal(
                SHAPE, dtype=np.float32
            )
            data[..., t] = vol * mask
        img = nb.Nifti1Image(data, AFFINE)
        img.header.set_zooms((2.0, 2.0, 2.0, 3.0))
        tmp = path.with_name(path.name + ".part.nii.gz")
        img.to_filename(tmp)
        os.replace(tmp, path)
    return paths


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process, user + system) since ``start``."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def decoded_bytes(paths: list[Path]) -> int:
    """Bytes of decompressed voxel data in the runs."""
    total = 0
    for p in paths:
        img = nb.load(p)
        total += int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    return total


def time_decoder(paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds to inflate the runs into a reused buffer (the decoder's rate)."""
    buf = bytearray(BLOCK_VOLUMES * int(np.prod(SHAPE)) * 4)
    view = memoryview(buf)
    start = _clock()
    for path in paths:
        with open_decompressed(path) as f:
            while f.readinto(view):
                pass
    return _since(start)


#: one batch's buffers: a batch node prepares its subjects in turn into one Scratch, so
#: only its first subject touches new memory (timed apart as "reader, new memory")
SCRATCH = Scratch()


def time_reader(paths: list[Path], mask: np.ndarray) -> tuple[float, float]:
    """The subject's runs decoded side by side into one array, as preparation reads them."""
    start = _clock()
    read_concatenated_runs(paths, mask, SCRATCH)
    return _since(start)


def time_reader_new_memory(paths: list[Path], mask: np.ndarray) -> tuple[float, float]:
    """The same into a new array (the first subject of a batch)."""
    start = _clock()
    data, _ = read_concatenated_runs(paths, mask)
    seconds = _since(start)
    del data
    return seconds


def time_nibabel(paths: list[Path], mask: np.ndarray) -> tuple[float, float]:
    start = _clock()
    for path in paths:
        volume = np.asarray(nb.load(path).dataobj, dtype=np.float32)
        run = volume[mask]
        del volume, run
    return _since(start)


def time_prepare(paths: list[Path], mask: np.ndarray, out: Path) -> tuple[float, float]:
    """:func:`bids_cnm.engine.timeseries.prepare_subject`: what a preparation step does."""
    mask_path = out.parent / "brain_mask.nii.gz"
    if not mask_path.exists():
        nb.Nifti1Image(mask.astype(np.uint8), AFFINE).to_filename(mask_path)
    start = _clock()
    prepare_subject([str(p) for p in paths], [str(mask_path)], out, scratch=SCRATCH)
    seconds = _since(start)
    shutil.rmtree(out)
    return seconds


def time_screen(paths: list[Path]) -> tuple[float, float]:
    """The up-front check of a cold run: headers and gzip trailers only."""
    start = _clock()
    for path in paths:
        screen_readable(path)
    return _since(start)


def time_stream_check(paths: list[Path]) -> tuple[float, float]:
    """Streaming every file to its end (the up-front check before issue 10's fix)."""
    start = _clock()
    for path in paths:
        check_readable(path)
    return _since(start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "bids_cnm_bench_prepare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--skip-nibabel", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    paths = make_subject(args.cache)
    print(f"subject: {len(paths)} runs x {N_VOLUMES} volumes on {SHAPE} "
          f"({time.perf_counter() - t0:.0f} s to make or find) in {args.cache}")
    mask = brain_mask()
    nbytes = decoded_bytes(paths)
    gz = sum(p.stat().st_size for p in paths)
    print(f"brain voxels {int(mask.sum()):,}; decompressed {nbytes / 1e6:.0f} MB, "
          f"gzipped {gz / 1e6:.0f} MB; inflater: {decoder_name()}")
    read_masked_runs(paths[:1], mask)  # compile the numba kernels, warm the page cache

    # interleaved repeats: a burst of another process's load hits every method alike
    steps = {"decoder": (time_decoder, paths), "reader": (time_reader, paths, mask),
             "reader new": (time_reader_new_memory, paths, mask),
             "prepare": (time_prepare, paths, mask, args.cache / "prepared"),
             "screen": (time_screen, paths), "stream check": (time_stream_check, paths)}
    if not args.skip_nibabel:
        steps["nibabel"] = (time_nibabel, paths, mask)
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (fn, *a) in steps.items():
            wall, used = fn(*a)
            times[name].append(wall)
            cpu[name].append(used)
    dec, rea, prep = (min(times[k]) for k in ("decoder", "reader", "prepare"))
    dec_cpu, rea_cpu, prep_cpu = (min(cpu[k]) for k in ("decoder", "reader", "prepare"))
    rate = lambda s: nbytes / s / 1e6  # noqa: E731

    def line(name: str, label: str) -> str:
        best, median = min(times[name]), float(np.median(times[name]))
        return (f"{label:<18} {best:6.2f} s (median {median:5.2f}, CPU {min(cpu[name]):5.2f} s)"
                f"  {rate(best):5.0f} MB/s")

    print(f"load average before timing: {os.getloadavg()[0]:.1f} ({args.repeats} interleaved "
          "repeats; min and median wall, min CPU of every thread)")
    print(line("decoder", "decoder only"))
    print(line("reader", "reader") + f"   reader / decoder = {rea / dec:.2f} wall (target <= 1.3), "
          f"{rea_cpu / dec_cpu:.2f} CPU")
    print(line("reader new", "reader, new memory"))
    if not args.skip_nibabel:
        nib = min(times["nibabel"])
        print(line("nibabel", "nibabel+mask") + f"   {nib / rea:.1f}x the reader")
    print(line("prepare", "prepare") + f"   prepare / decoder = {prep / dec:.2f} wall, "
          f"{prep_cpu / dec_cpu:.2f} CPU (prepare_subject: decode, fused standardize, "
          "write float32)")
    print(f"up-front check per subject: screen {min(times['screen']) * 1e3:.1f} ms; streaming "
          f"the runs {min(times['stream check']):.2f} s (a second decode, before the fix)")
    # the reader overlaps decoding with copying on a second thread, so one subject's wall
    # time is not its cost when every core is busy; CPU time is (bench_gsp1000_scale.py
    # measures subjects prepared side by side)
    total = max(prep, prep_cpu) * args.subjects / args.cores
    print(f"GSP1000 extrapolation: {args.subjects} subjects x {max(prep, prep_cpu):.2f} s "
          f"(the larger of wall and CPU) / {args.cores} cores = {total / 60:.1f} min "
          "(a lower bound: one subject at a time, no contention; bench_gsp1000_scale.py "
          "measures the < 20 min target side by side)")
    if os.environ.get("BIDS_CNM_BENCH_CLEAN"):
        shutil.rmtree(args.cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
