"""Benchmark of the CNM specificity permutation test (t + TFCE + FWE/FDR).

Usage::

    python benchmarks/bench_permutation.py [--n-perm N] [--n-maps M] [--n-a A]
        [--nilearn-perm K] [--nilearn-jobs J] [--chunk C] [--skip-nilearn]

``M`` smooth random maps (default 150: 21 study vs 129 control networks) on
the nilearn MNI152 3 mm brain mask (~70k voxels).  Prints permutations/s of
:func:`bids_cnm.stats.permutation.two_sample_permutation_test` with TFCE,
the extrapolated time for 5000 permutations, and the speed-up over
``nilearn.mass_univariate.permuted_ols(tfce=True)`` on the same maps at a
small, equal permutation count.

nilearn is given its best case: its masker calls ``gc.collect()`` once per
permutation, and the objects alive in this process are frozen
(``gc.freeze()``) so that those collections are cheap.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_cnm.stats import permutation as perm_mod  # noqa: E402
from bids_cnm.stats.permutation import two_sample_permutation_test  # noqa: E402
from bids_cnm.stats.tfce import neighbour_table, tfce_masked  # noqa: E402


def make_maps(mask: np.ndarray, n_maps: int, sigma: float, seed: int) -> np.ndarray:
    """Smooth Gaussian random fields (unit variance), masked: (n_maps, V)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.empty((n_maps, int(mask.sum())))
    for i in range(n_maps):
        field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
        out[i] = field[mask] / field[mask].std()
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-perm", type=int, default=500,
                        help="permutations for the throughput run (default 500)")
    parser.add_argument("--n-maps", type=int, default=150, help="total maps (default 150)")
    parser.add_argument("--n-a", type=int, default=21, help="maps in group a (default 21)")
    parser.add_argument("--nilearn-perm", type=int, default=10,
                        help="permutations for the nilearn comparison (default 10)")
    parser.add_argument("--nilearn-jobs", type=int, default=1,
                        help="n_jobs for permuted_ols (default 1)")
    parser.add_argument("--chunk", type=int, default=64, help="permutation chunk (default 64)")
    parser.add_argument("--sigma", type=float, default=2.0,
                        help="smoothing of the random maps, voxels (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-nilearn", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.n_a < args.n_maps:
        parser.error("need 0 < n-a < n-maps")

    import numba
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=3)
    mask = np.asarray(mask_img.get_fdata() > 0)
    print(f"grid {mask.shape}, {int(mask.sum())} voxels in mask; "
          f"{args.n_a} vs {args.n_maps - args.n_a} maps")
    print(f"cpus {os.cpu_count()}, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} (machine may be shared)")
    maps, dt = timed(make_maps, mask, args.n_maps, args.sigma, args.seed)
    print(f"generated maps in {dt:.1f} s")
    a, b = maps[: args.n_a], maps[args.n_a:]

    # Warm-up: loads (or compiles, first time) the numba kernels.
    _, dt = timed(two_sample_permutation_test, a, b, mask, n_permutations=2)
    print(f"warm-up (numba cache load / JIT) {dt:.2f} s")

    # Breakdown on one chunk.
    n = args.n_maps
    rng = np.random.default_rng(1)
    idx = np.stack([rng.permutation(n)[: args.n_a] for _ in range(args.chunk)])
    xc, sst = perm_mod._centre(maps)
    t_maps, dt_t = timed(perm_mod._pooled_t_many, xc, sst, idx, args.n_a, n - args.n_a)
    nbr = neighbour_table(mask, 6)
    _, dt_tfce = timed(tfce_masked, t_maps, nbr)
    print(f"per permutation: t {1e3 * dt_t / args.chunk:.2f} ms, "
          f"TFCE {1e3 * dt_tfce / args.chunk:.2f} ms (wall, all threads)")

    # Throughput.
    res, dt = timed(two_sample_permutation_test, a, b, mask, n_permutations=args.n_perm,
                    chunk=args.chunk, random_state=args.seed)
    rate = args.n_perm / dt
    print(f"bids_cnm: {args.n_perm} permutations with TFCE in {dt:.1f} s "
          f"-> {rate:.1f} permutations/s")
    print(f"bids_cnm: extrapolated 5000 permutations: {5000 / rate:.0f} s "
          f"({5000 / rate / 60:.2f} min)")
    print(f"          min p_fwe {res.p_fwe.min():.3f} (null data: expect most p_fwe large)")

    if args.skip_nilearn:
        return
    import nibabel as nib
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    k = args.nilearn_perm
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine)).fit()
    labels = np.r_[np.ones(args.n_a), np.zeros(n - args.n_a)][:, None]
    gc.collect()
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, dt_nl = timed(permuted_ols, labels, maps, model_intercept=True, n_perm=k,
                               two_sided_test=True, tfce=True, masker=masker,
                               n_jobs=args.nilearn_jobs, random_state=0)
    finally:
        gc.unfreeze()
    ours, dt_ours = timed(two_sample_permutation_test, a, b, mask, n_permutations=k,
                          chunk=args.chunk, tfce_kwargs={"multiply_by_dh": False})
    print(f"nilearn permuted_ols(tfce=True, n_jobs={args.nilearn_jobs}): {k} permutations in "
          f"{dt_nl:.1f} s ({k / dt_nl:.3f} permutations/s; 5000 would take "
          f"{5000 * dt_nl / k / 3600:.1f} h)")
    print(f"bids_cnm same maps, {k} permutations: {dt_ours:.2f} s")
    print(f"speed-up at equal permutation count: {dt_nl / dt_ours:.0f}x "
          f"(throughput ratio: {rate / (k / dt_nl):.0f}x)")
    print(f"agreement: max|t - t_nilearn| = {np.abs(ours.t - out['t'][0]).max():.1e}, "
          f"max|TFCE - TFCE_nilearn| / max = "
          f"{np.abs(ours.tfce - out['tfce'][0]).max() / np.abs(ours.tfce).max():.1e}")


if __name__ == "__main__":
    main()
