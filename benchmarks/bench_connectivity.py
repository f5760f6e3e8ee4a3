#!/usr/bin/env python
"""Benchmark of the group-level connectivity engine (run on demand, never in the tests).

Builds a synthetic resting-state connectome (one gzipped NIfTI per subject on
nilearn's MNI152 grid), prepares it once with :func:`bids_cnm.engine.timeseries.prepare_subject`,
then runs exactly what ``AccumulateConnectivity`` runs (``open_prepared``, ``rows_of``,
``accumulate_subject`` per subject into ``RunningStats``, then ``finalize``) for each
seed count, and puts the measured time next to what this machine can do:

* each stage's best rate measured in isolation here (float32 GEMM of the same shapes,
  memory bandwidth, the element-wise pass), their sum as a bound, and actual / bound;
* peak memory in a subprocess for two subject counts;
* a naive per-seed nilearn loop on the same files;
* an extrapolation to a GSP1000-sized job.

Usage::

    python benchmarks/bench_connectivity.py [--n-subjects 50] [--n-volumes 240]
        [--resolution 3] [--seeds 20 200] [--dtype float32] [--workdir DIR]

The data (about 60 MB of gzipped NIfTI and 67 MB of prepared copy per subject at
3 mm) stay in ``--workdir`` (default: a folder in the temporary directory) and are
reused by the next run with the same settings.  See ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys

# OpenBLAS reads these when it is loaded: check them before numpy is imported.
_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_CHILD_FLAG = "BIDS_CNM_BENCH_CHILD"
_PROBE = r"""
import json, time, numpy as np
from threadpoolctl import threadpool_info
x = np.random.default_rng(0).standard_normal((40000, 240), dtype=np.float32)
seconds = 0.0
for k in (20, 200):  # the benchmark's two GEMM shapes, equal weight in time
    s = np.random.default_rng(1).standard_normal((240, k), dtype=np.float32)
    seconds += min((lambda t: (x @ s, time.perf_counter() - t)[1])(time.perf_counter())
                   for _ in range(9))
arch = [i.get("architecture") for i in threadpool_info() if i.get("user_api") == "blas"]
print(json.dumps({"gflops": 2 * x.size * 220 / seconds / 1e9, "kernel": arch}))
"""


def _probe(env: dict) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def _maybe_reexec() -> None:
    """Re-run without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE when they slow numpy's GEMM.

    Only the benchmark's own (child) environment changes; a note says so in the output.
    """
    if os.environ.get(_CHILD_FLAG) or "--_memory-child" in sys.argv:
        return
    present = {k: os.environ[k] for k in _OPENBLAS_VARS if k in os.environ}
    env = dict(os.environ, **{_CHILD_FLAG: "1"})
    if present:
        clean = {k: v for k, v in env.items() if k not in _OPENBLAS_VARS}
        with_vars, without = _probe(env), _probe(clean)
        msg = (f"note: {present} set: BLAS kernel {with_vars['kernel']} "
               f"{with_vars['gflops']:.0f} GFLOP/s; unset: {without['kernel']} "
               f"{without['gflops']:.0f} GFLOP/s")
        if without["gflops"] > 1.05 * with_vars["gflops"]:
            env = clean
            env["BIDS_CNM_BENCH_NOTE"] = msg + " -> benchmark re-run with them UNSET"
        else:
            env["BIDS_CNM_BENCH_NOTE"] = msg + " -> kept"
    else:
        env["BIDS_CNM_BENCH_NOTE"] = "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE not set"
    raise SystemExit(subprocess.call([sys.executable] + sys.argv, env=env))


if __name__ == "__main__":
    _maybe_reexec()

# ruff: noqa: E402
import argparse
import json
import resource
import shutil
import tempfile
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from numba import njit
from threadpoolctl import threadpool_info, threadpool_limits

from bids_cnm.engine import connectivity
from bids_cnm.engine.seeds import make_seeds
from bids_cnm.engine.timeseries import open_prepared, prepare_subject

GSP = {"subjects": 1000, "voxels": 228_000, "volumes": 240, "seeds": 200}
SPHERE_DIAMETER = 6.0


# ----------------------------------------------------------------------------- helpers


def best_of(fn, repeat: int = 3, min_time: float = 1.0, max_repeat: int = 50) -> float:
    """Best wall time of at least ``repeat`` calls (after a warm-up call), repeating
    short ones until ``min_time`` s have been spent: the best of many is robust to
    bursts of other processes on a shared machine."""
    fn()
    best, spent, done = float("inf"), 0.0, 0
    while done < repeat or (spent < min_time and done < max_repeat):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, done = min(best, elapsed), spent + elapsed, done + 1
    return best


def run_threads(fn, parts: list) -> None:
    """Run ``fn(part)`` for every part in its own thread (the first in this one)."""
    errors = []

    def wrap(p):
        try:
            fn(p)
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(p,)) for p in parts[1:]]
    for t in threads:
        t.start()
    wrap(parts[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def blas_info() -> str:
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel "
                     f"{i.get('architecture')} {i.get('num_threads')} threads" for i in info)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return "unknown CPU"


def busy_other_processes(interval: float = 0.5) -> float:
    """Cores' worth of CPU used by other processes over ``interval`` s (0 = idle machine)."""
    def snap() -> dict:
        ticks = {}
        me = os.getpid()
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != me:
                try:
                    f = (d / "stat").read_text().rsplit(")", 1)[1].split()
                    ticks[d.name] = int(f[11]) + int(f[12])
                except (OSError, IndexError, ValueError):
                    pass
        return ticks
    try:
        a = snap()
        time.sleep(interval)
        b = snap()
    except Exception:  # pragma: no cover - no /proc
        return float("nan")
    used = sum(max(0, b[p] - a.get(p, 0)) for p in b)  # new processes count from 0
    return used / os.sysconf("SC_CLK_TCK") / interval


def wait_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores.

    Returns the last reading.  Timings on a shared machine are only comparable when
    nothing else runs; the output reports the reading next to each measurement.
    """
    deadline = time.monotonic() + max_wait
    busy = busy_other_processes()
    while busy >= threshold and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = busy_other_processes()
    return busy


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


# ----------------------------------------------------------------------------- data


def grid(resolution: int):
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=resolution)
    return np.asarray(img.dataobj) > 0, img.affine


def synthetic_subject(index: int, mask: np.ndarray, affine: np.ndarray, n_volumes: int
                      ) -> np.ndarray:
    """(V, T) float32 BOLD-like data: smooth networks + noise, raw scale (mean ~ 500)."""
    rng = np.random.default_rng([20250, index])
    ijk = np.argwhere(mask)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centres = np.random.default_rng(7).uniform(-50, 50, (8, 3))  # same networks for all
    load = np.exp(-((xyz[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 12.0**2))
    latent = rng.standard_normal((8, n_volumes)).astype(np.float32)
    data = rng.standard_normal((len(xyz), n_volumes), dtype=np.float32)
    data += (load.astype(np.float32) * 2.0) @ latent
    data *= rng.uniform(5, 20, (len(xyz), 1)).astype(np.float32)
    data += rng.uniform(100, 1000, (len(xyz), 1)).astype(np.float32)
    return data


def write_bold(path: Path, data: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    vol = np.zeros(mask.shape + (data.shape[1],), dtype=np.float32, order="F")
    vol[mask] = data
    tmp = path.with_name("tmp-" + path.name)
    nb.Nifti1Image(vol, affine).to_filename(tmp)  # .nii.gz: nibabel's default gzip level
    os.replace(tmp, path)


def build_dataset(args, root: Path, mask, affine) -> tuple[list[Path], list[Path], Path]:
    """Write the subjects' prepared copies (skipping what already exists).

    The first ``n_gz`` subjects are kept as gzipped NIfTI (the preparation cost and
    the naive loop are timed on them); the others go through an uncompressed NIfTI
    that is deleted once prepared (same prepared copy, a fraction of the build time).
    """
    nifti = root / "nifti"
    prepared = root / f"prepared-{args.dtype}"
    nifti.mkdir(parents=True, exist_ok=True)
    prepared.mkdir(parents=True, exist_ok=True)
    mask_path = nifti / "brain_mask.nii.gz"
    if not mask_path.exists():
        nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(mask_path)
    n_gz = min(args.n_subjects, max(args.prep_subjects, args.naive_subjects, 1))
    bolds = [nifti / f"sub-{i:04d}_bold.nii.gz" for i in range(n_gz)]
    preps = [prepared / f"sub-{i:04d}" for i in range(args.n_subjects)]
    todo = [i for i in range(args.n_subjects)
            if not (preps[i] / "meta.json").exists() or (i < n_gz and not bolds[i].exists())]
    if todo:
        start = time.perf_counter()

        def one(i):
            if i < n_gz:
                bold = bolds[i]
                if not bold.exists():
                    write_bold(bold, synthetic_subject(i, mask, affine, args.n_volumes),
                               mask, affine)
                shutil.rmtree(preps[i], ignore_errors=True)
                prepare_subject([str(bold)], [str(mask_path)], preps[i], dtype=args.dtype)
                return
            bold = nifti / f"tmp-sub-{i:04d}_bold.nii"
            write_bold(bold, synthetic_subject(i, mask, affine, args.n_volumes), mask, affine)
            try:
                prepare_subject([str(bold)], [str(mask_path)], preps[i], dtype=args.dtype)
            finally:
                bold.unlink(missing_ok=True)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, n_cores())) as pool:
            list(pool.map(one, todo))
        print(f"  built {len(todo)} subject(s) in {time.perf_counter() - start:.0f} s "
              f"(kept in {root} for the next run)", flush=True)
    return bolds, preps, mask_path


def random_seeds(k: int, mask: np.ndarray, affine: np.ndarray, seed: int = 0):
    """``k`` random 6 mm spheres whose centre and 6 face neighbours are in the mask."""
    inner = mask.copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(mask, shift, axis=axis)
    centres = np.argwhere(inner)
    pick = centres[np.random.default_rng(seed).choice(len(centres), k, replace=False)]
    xyz = pick @ affine[:3, :3].T + affine[:3, 3]
    table = pd.DataFrame({"study": [f"s{i:03d}" for i in range(k)], "x": xyz[:, 0],
                          "y": xyz[:, 1], "z": xyz[:, 2], "set": "primary",
                          "source_row": np.arange(k) + 2})
    return make_seeds(table, mask.shape, affine, support=mask, diameter=SPHERE_DIAMETER), xyz


# ----------------------------------------------------------------------------- engine


def accumulate_all(paths, seeds, voxels) -> tuple[float, float, np.ndarray]:
    """What AccumulateConnectivity + GroupOutputs' finalize run.

    Returns (mean s/subject, finalize s, each subject's seconds).
    """
    stats = connectivity.RunningStats.zeros(len(voxels), len(seeds))
    times = []
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        subject = open_prepared(path)
        rows = connectivity.rows_of(subject.voxels, voxels)
        connectivity.accumulate_subject(stats, subject, seeds, rows)
        times.append(time.perf_counter() - t0)
    per_subject = (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    stats.finalize()
    return per_subject, time.perf_counter() - start, np.asarray(times)


def memory_child(root: str, n: int, k: int, dtype: str, resolution: int) -> None:
    """Peak memory of accumulating ``n`` subjects with ``k`` seeds (run in a subprocess)."""
    tracemalloc.start()
    mask, affine = grid(resolution)
    seeds, _ = random_seeds(k, mask, affine)
    paths = sorted((Path(root) / f"prepared-{dtype}").glob("sub-*"))[:n]
    voxels = open_prepared(paths[0]).voxels
    per_subject = accumulate_all(paths, seeds, voxels)[0]
    peak = tracemalloc.get_traced_memory()[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"tracemalloc": peak, "maxrss": rss, "per_subject": per_subject}))


def measure_memory(script: Path, root: Path, n: int, k: int, dtype: str, resolution: int
                   ) -> dict:
    out = subprocess.run(
        [sys.executable, str(script), "--_memory-child", str(root), str(n), str(k), dtype,
         str(resolution)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- stages


@njit(nogil=True, fastmath=True, cache=True)
def _read_sum(a):
    """Sum of a float32 array read once (vectorized, several accumulators)."""
    flat = a.reshape(-1)
    acc = np.zeros(16, np.float32)
    n = flat.size // 16 * 16
    for i in range(0, n, 16):
        for j in range(16):
            acc[j] += flat[i + j]
    return acc.sum()


@njit(nogil=True, cache=True)
def _stream_sums(r, a, b, c, row0):
    """The accumulators' traffic alone: a, b, c (float64) += r, per element."""
    n, k = r.shape
    for i in range(n):
        for j in range(k):
            x = np.float64(r[i, j])
            a[row0 + i, j] += x
            b[row0 + i, j] += x
            c[row0 + i, j] += x


def split(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def gemm_peak(x: np.ndarray, k: int, workers: int) -> dict:
    """Best float32 GEMM rate for (V, T) @ (T, K) on this machine, two ways."""
    s = np.random.default_rng(3).standard_normal((x.shape[1], k), dtype=np.float32)
    flops = 2.0 * x.shape[0] * x.shape[1] * k
    whole = flops / best_of(lambda: np.dot(x, s)) / 1e9
    step = connectivity._worker_step(x.shape[1], k)

    def part(bounds):
        out = np.empty((step, k), np.float32)
        for a in range(bounds[0], bounds[1], step):
            b = min(a + step, bounds[1])
            np.matmul(x[a:b], s, out=out[: b - a])

    with threadpool_limits(1):
        threaded = flops / best_of(lambda: run_threads(part, split(len(x), workers))) / 1e9
    return {"whole": whole, "threaded": threaded, "peak": max(whole, threaded)}


def element_rates(v: int, k: int, workers: int) -> dict:
    """Elements/s of the per-element stage in isolation (no GEMM, r already in memory)."""
    rng = np.random.default_rng(4)
    r = rng.uniform(-1.2, 1.2, (v, k)).astype(np.float32)
    factor = np.full(v, 0.9, np.float32)
    sums = [np.zeros((v, k)) for _ in range(3)]
    step = connectivity._worker_step(240, k)

    def blocked(kernel):
        def part(bounds):
            for a in range(bounds[0], bounds[1], step):
                b = min(a + step, bounds[1])
                kernel(a, b)
        return lambda: run_threads(part, split(v, workers))

    def fused_kernel(a: int, b: int) -> None:
        connectivity._accumulate_block(r[a:b], factor[a:b], *sums, a, 0.5)  # a 2nd subject

    fused = blocked(fused_kernel)
    stream = blocked(lambda a, b: _stream_sums(r[a:b], *sums, a))
    out = {"fused": v * k / best_of(fused), "stream": v * k / best_of(stream)}

    stats = connectivity.RunningStats(0, *sums)  # the numpy formulation, one thread

    def numpy_pass():
        nb_ = max(64, connectivity._BLOCK_ELEMENTS // k)
        z = np.empty((nb_, k), np.float32)
        rb = np.empty((nb_, k), np.float32)
        for a in range(0, v, nb_):
            b = min(a + nb_, v)
            np.multiply(r[a:b], factor[a:b, None], out=rb[: b - a])
            np.clip(rb[: b - a], -connectivity.R_MAX, connectivity.R_MAX, out=rb[: b - a])
            connectivity.fisher_z(rb[: b - a], out=z[: b - a])
            stats.add_block(slice(a, b), rb[: b - a], z[: b - a])

    out["numpy"] = v * k / best_of(numpy_pass, repeat=2)
    return out


def read_rates(paths: list[Path], workers: int) -> dict:
    """GB/s: RAM, prepared files from the page cache (copy and mmap), and cold (evicted)."""
    files = [p / "data.npy" for p in paths]
    big = np.ones(64 * 2**20, np.float32)  # 256 MB, beyond the caches
    ram = big.nbytes / best_of(lambda: run_threads(
        lambda b: _read_sum(big[b[0]:b[1]]), split(big.size, workers)))
    del big
    nbytes = sum(f.stat().st_size for f in files)
    bufs = [np.ones(max(f.stat().st_size for f in files), np.uint8) for _ in range(workers)]

    def copy_files(chunk):
        index, names = chunk
        for f in names:
            with open(f, "rb", buffering=0) as fh:
                fh.readinto(bufs[index])

    def chunks():
        return [(i, files[i::workers]) for i in range(workers)]

    warm_copy = nbytes / best_of(lambda: run_threads(copy_files, chunks()), repeat=2)

    def mmap_files(chunk):
        for f in chunk[1]:
            a = np.load(f, mmap_mode="r")
            _read_sum(np.asarray(a))
            del a

    warm_mmap = nbytes / best_of(lambda: run_threads(mmap_files, chunks()), repeat=2)
    cold = float("nan")
    sample = files[: min(4, len(files))]
    try:  # evict these files' pages (no root needed); real disk reads follow
        for f in sample:
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        start = time.perf_counter()
        copy_files((0, sample))
        cold = sum(f.stat().st_size for f in sample) / (time.perf_counter() - start)
    except (AttributeError, OSError):  # pragma: no cover - no posix_fadvise
        pass
    return {"ram": ram, "warm_copy": warm_copy, "warm_mmap": warm_mmap, "cold": cold}


# ----------------------------------------------------------------------------- naive


def naive_nilearn(bolds: list[Path], mask_path: Path, coords: np.ndarray) -> dict:
    """A per-seed loop as a nilearn user would write it; seconds per subject and t-test."""
    from nilearn.maskers import NiftiMasker, NiftiSpheresMasker
    from scipy import stats

    brain = NiftiMasker(mask_img=str(mask_path), standardize="zscore_sample")
    spheres = NiftiSpheresMasker([tuple(c) for c in coords], radius=SPHERE_DIAMETER / 2,
                                 mask_img=str(mask_path), standardize="zscore_sample",
                                 allow_overlap=True)
    zmaps = [[] for _ in coords]
    start = time.perf_counter()
    for bold in bolds:
        img = nb.load(bold)
        voxel_ts = brain.fit_transform(img)  # (T, V)
        seed_ts = spheres.fit_transform(img)  # (T, K)
        n = voxel_ts.shape[0]
        for k in range(len(coords)):  # one seed at a time
            r = voxel_ts.T @ seed_ts[:, k] / (n - 1)
            zmaps[k].append(np.arctanh(np.clip(r, -1 + 1e-6, 1 - 1e-6)))
    per_subject = (time.perf_counter() - start) / len(bolds)
    start = time.perf_counter()
    for k in range(len(coords)):
        stats.ttest_1samp(np.stack(zmaps[k]), 0.0, axis=0)
    ttest_per_subject = (time.perf_counter() - start) / len(bolds)
    return {"per_subject": per_subject, "ttest_per_subject": ttest_per_subject,
            "mean_z_seed0": np.mean(zmaps[0], axis=0)}


# ----------------------------------------------------------------------------- main


def prep_cost(bolds: list[Path], mask_path: Path, dtype: str, tmp: Path) -> dict:
    """One-off preparation cost per subject, serial, from the gzipped NIfTI."""
    decode, total = [], []
    for bold in bolds:
        start = time.perf_counter()
        np.asarray(nb.load(bold).dataobj, dtype=np.float32)
        decode.append(time.perf_counter() - start)
        out = tmp / bold.name.split("_")[0]
        start = time.perf_counter()
        prepare_subject([str(bold)], [str(mask_path)], out, dtype=dtype)
        total.append(time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
    return {"decode": float(np.median(decode)), "total": float(np.median(total))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=50)
    parser.add_argument("--n-volumes", type=int, default=240)
    parser.add_argument("--resolution", type=int, default=3, help="voxel size in mm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--dtype", choices=["float32", "int16"], default="float32",
                        help="storage type of the prepared copies")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "bids_cnm_bench")
    parser.add_argument("--memory-subjects", type=int, nargs=2, default=None,
                        metavar=("N1", "N2"), help="subject counts of the memory runs "
                        "(default: 10 and --n-subjects)")
    parser.add_argument("--naive-subjects", type=int, default=2,
                        help="subjects timed with the naive nilearn loop")
    parser.add_argument("--prep-subjects", type=int, default=3,
                        help="subjects whose preparation is timed serially")
    parser.add_argument("--rows-subjects", type=int, default=10,
                        help="subjects timed on the fancy-indexing (rows) path")
    parser.add_argument("--passes", type=int, default=2,
                        help="timed passes over all subjects per seed count")
    parser.add_argument("--wait-idle", type=float, default=60.0, metavar="SECONDS",
                        help="before each timed part, wait up to this long for other "
                        "processes to go quiet (0: do not wait)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    workers = connectivity._n_workers()

    print("== machine", flush=True)
    line("CPU", f"{cpu_name()}, {n_cores()} cores usable")
    line("BLAS", blas_info())
    line("numpy / engine workers", f"{np.__version__} / {workers} thread(s)")
    line("OpenBLAS environment", os.environ.get("BIDS_CNM_BENCH_NOTE", "not checked"))
    line("other processes' CPU use (cores busy)", f"{busy_other_processes():.2f}")

    mask, affine = grid(args.resolution)
    root = args.workdir / f"res{args.resolution}-t{args.n_volumes}"
    print(f"== data: {args.n_subjects} subjects, {int(mask.sum())} voxels "
          f"({args.resolution} mm), {args.n_volumes} volumes, {args.dtype}", flush=True)
    bolds, preps, mask_path = build_dataset(args, root, mask, affine)
    first = open_prepared(preps[0])
    v, t = first.data.shape
    data_bytes = first.data.nbytes

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        prep = prep_cost(bolds[: args.prep_subjects], mask_path, args.dtype, Path(tmp))
    line("one-off preparation per subject (decode+standardize+write)",
         f"{prep['total']:.2f} s  (gzip NIfTI decode alone {prep['decode']:.2f} s)")

    print("== stage rates measured in isolation on this machine", flush=True)
    line("other processes' CPU use (cores busy)", f"{wait_idle(args.wait_idle):.2f}")
    reads = read_rates(preps, workers)
    line("memory read bandwidth (RAM, all threads)", f"{reads['ram'] / 1e9:.1f} GB/s")
    line("prepared files, warm page cache, read() (engine: pread)",
         f"{reads['warm_copy'] / 1e9:.1f} GB/s")
    line("prepared files, warm page cache, mmap", f"{reads['warm_mmap'] / 1e9:.1f} GB/s")
    line("prepared files, cold (evicted with posix_fadvise)", f"{reads['cold'] / 1e9:.2f} GB/s")
    x = np.array(first.data, dtype=np.float32)

    voxels = first.voxels
    rng = np.random.default_rng(5)
    subset = np.sort(rng.choice(voxels, int(len(voxels) * 0.99), replace=False))
    results = {}
    script = Path(__file__).resolve()
    for k in args.seeds:
        seeds, coords = random_seeds(k, mask, affine)
        print(f"== {k} seeds ({SPHERE_DIAMETER:g} mm spheres, "
              f"{np.mean([len(s) for s in seeds.voxels]):.1f} voxels each)", flush=True)
        line("other processes' CPU use (cores busy)", f"{wait_idle(args.wait_idle):.2f}")
        gemm = gemm_peak(x, k, workers)
        elem = element_rates(v, k, workers)
        accumulate_all(preps[:2], seeds, voxels)  # compile (or load) the kernels
        passes = [accumulate_all(preps, seeds, voxels) for _ in range(args.passes)]
        best_pass = min(p[0] for p in passes)
        # the median subject of all passes: robust to other processes' bursts
        per_subject = float(np.median(np.concatenate([p[2] for p in passes])))
        finalize = passes[-1][1]
        rows_time = float(np.median(accumulate_all(preps[: args.rows_subjects], seeds,
                                                   subset)[2]))

        flops = 2.0 * k * t * v
        t_read = data_bytes / reads["ram"]
        t_gemm = flops / (gemm["peak"] * 1e9)
        t_elem = v * k / elem["fused"]
        bound = t_read + t_gemm + t_elem
        results[k] = {"per_subject": per_subject, "bound": bound}

        line("seconds per subject (prepared data), median subject",
             f"{per_subject * 1e3:.1f} ms  (best pass mean {best_pass * 1e3:.1f} ms, "
             f"{args.passes} passes)")
        line("  on the rows (fancy indexing) path, 99% of voxels",
             f"{rows_time * 1e3:.1f} ms  ({rows_time / per_subject:.2f}x)")
        line(f"finalize (t-maps of {v} voxels x {k} seeds), once", f"{finalize:.2f} s")
        line("achieved GEMM rate (2KTV per subject / time)", f"{flops / per_subject / 1e9:.1f} "
             f"GFLOP/s  vs peak {gemm['peak']:.1f} (np.dot whole {gemm['whole']:.1f}, "
             f"{workers} x 1-thread blocks {gemm['threaded']:.1f})")
        line("achieved read rate (data bytes / time)", f"{data_bytes / per_subject / 1e9:.2f} GB/s"
             f"  vs RAM {reads['ram'] / 1e9:.1f}, warm files {reads['warm_copy'] / 1e9:.1f}")
        line("achieved per-element rate (V*K / time)", f"{v * k / per_subject / 1e6:.0f} "
             f"Melem/s  vs fused pass alone {elem['fused'] / 1e6:.0f}, accumulator "
             f"streaming alone {elem['stream'] / 1e6:.0f}, numpy formulation "
             f"{elem['numpy'] / 1e6:.0f}")
        line("bound = read + GEMM + per-element", f"{bound * 1e3:.1f} ms = {t_read * 1e3:.1f} + "
             f"{t_gemm * 1e3:.1f} + {t_elem * 1e3:.1f}")
        line("RATIO actual / bound (target <= 2)", f"{per_subject / bound:.2f}")

        n1, n2 = args.memory_subjects or (min(10, args.n_subjects), args.n_subjects)
        mem = [measure_memory(script, root, n, k, args.dtype, args.resolution) for n in (n1, n2)]
        sums = 3 * v * k * 8
        for n, m in zip((n1, n2), mem):
            line(f"peak memory, {n} subjects (subprocess)", f"maxrss {m['maxrss'] / 2**20:.0f} MB,"
                 f" tracemalloc {m['tracemalloc'] / 2**20:.0f} MB (running sums "
                 f"{sums / 2**20:.0f} MB)")
        line(f"peak memory ratio {n2} / {n1} subjects (target ~1)",
             f"{mem[1]['maxrss'] / mem[0]['maxrss']:.2f}")

        naive = naive_nilearn(bolds[: args.naive_subjects], mask_path, coords)
        naive_total = args.n_subjects * (naive["per_subject"] + naive["ttest_per_subject"])
        ours_total = args.n_subjects * per_subject + finalize
        ours_first = ours_total + args.n_subjects * prep["total"]
        line(f"naive nilearn per-seed loop ({args.naive_subjects} subjects timed)",
             f"{naive['per_subject']:.2f} s/subject, extrapolated {naive_total:.0f} s "
             f"for {args.n_subjects}")
        line("SPEED-UP vs naive, prepared data (target >= 20 at 20 seeds)",
             f"{naive_total / ours_total:.0f}x  ({ours_total:.1f} s vs {naive_total:.0f} s)")
        line("SPEED-UP vs naive, incl. one-off preparation",
             f"{naive_total / ours_first:.1f}x  ({ours_first:.0f} s)")
        stats = connectivity.RunningStats.zeros(v, k)
        for p in preps[: args.naive_subjects]:
            connectivity.accumulate_subject(stats, open_prepared(p), seeds)
        agree = np.corrcoef(stats.mean_z[:, 0], naive["mean_z_seed0"])[0, 1]
        line("sanity: corr(engine, naive) of seed 1's mean z map", f"{agree:.4f} (both: mean "
             "BOLD of the seed's voxels)")

    if len(results) > 1:
        ks = sorted(results)
        lo, hi = results[ks[0]], results[ks[-1]]
        print("== scaling with seeds", flush=True)
        line(f"COST RATIO {ks[-1]} / {ks[0]} seeds (target < 3)",
             f"{hi['per_subject'] / lo['per_subject']:.2f}  (bound ratio "
             f"{hi['bound'] / lo['bound']:.2f}, seeds ratio {ks[-1] / ks[0]:.0f})")

    k = GSP["seeds"]
    if k in results:
        print(f"== extrapolation to a GSP1000-sized job ({GSP['subjects']} subjects, "
              f"{GSP['voxels']} voxels, {GSP['volumes']} volumes, {k} seeds)", flush=True)
        n, vg, tg = GSP["subjects"], GSP["voxels"], GSP["volumes"]
        flops = 2.0 * k * tg * vg * n
        int16_bytes, f32_bytes = 2.0 * vg * tg * n, 4.0 * vg * tg * n
        gemm = gemm_peak(x, k, workers)["peak"] * 1e9
        elem = element_rates(v, k, workers)["fused"]
        t_gemm, t_elem = flops / gemm, vg * k * n / elem
        disk = reads["cold"] if np.isfinite(reads["cold"]) else reads["ram"]
        bound_ram = t_gemm + t_elem + int16_bytes / reads["ram"]
        bound_disk = t_gemm + t_elem + int16_bytes / disk
        tool = results[k]["per_subject"] * (vg / v) * (tg / t) * n
        line("GEMM", f"{flops / 1e12:.1f} TFLOP -> {t_gemm / 60:.1f} min at {gemm / 1e9:.0f} "
             "GFLOP/s")
        line("data read", f"{int16_bytes / 1e9:.0f} GB int16 / {f32_bytes / 1e9:.0f} GB float32"
             f" -> {int16_bytes / reads['ram'] / 60:.1f} min (int16, RAM) or "
             f"{int16_bytes / disk / 60:.1f} min (int16, disk at {disk / 1e9:.2f} GB/s)")
        line("per-element", f"{vg * k * n / 1e9:.1f} G elements -> {t_elem / 60:.1f} min")
        line("running sums in memory", f"{3 * vg * k * 8 / 2**30:.2f} GiB")
        line("bound (read from RAM / from disk)",
             f"{bound_ram / 60:.1f} min / {bound_disk / 60:.1f} min")
        line(f"tool, extrapolated from {v} voxels ({args.dtype}, data cached)",
             f"{tool / 60:.1f} min = {tool / bound_ram:.2f}x the RAM bound; "
             f"+{(f32_bytes if args.dtype == 'float32' else int16_bytes) / disk / 60:.1f} "
             "min if every byte comes cold from disk")
        line("one-off preparation (decode) of 1000 subjects, extrapolated",
             f"{prep['total'] * (vg / v) * (tg / t) * n / 3600:.1f} h serially")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory-child":
        memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                     int(sys.argv[6]))
    else:
        raise SystemExit(main())
