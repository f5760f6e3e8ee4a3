"""One command from nothing to an overlap network: ``bids_cnm-demo OUT_DIR``.

Generates the synthetic connectome and demo coordinates
(:mod:`bids_cnm.demo.data`) and the demo analysis plan with its validation and
DBS inputs (:mod:`bids_cnm.demo.plan`) under ``OUT_DIR`` unless they are there
already, then runs the whole group-level chain on them exactly as a user would::

    bids_cnm OUT_DIR/connectome OUT_DIR/derivatives group \\
        --coordinates OUT_DIR/coordinates.tsv -w OUT_DIR/work \\
        --t-thresholds 4.7 5.6 7 9 --sphere-diameters 3 9 --subgroups modality \\
        --specificity --n-permutations 1000 --analysis OUT_DIR/plan/plan.yml
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bids_cnm.cli.run import main as cnm_main
from bids_cnm.demo.data import make_demo_dataset
from bids_cnm.demo.plan import make_demo_plan


def main(argv: list[str] | None = None) -> int:
    """Generate the demo data (once) and run the group level on it."""
    parser = argparse.ArgumentParser(
        prog="bids_cnm-demo",
        description="Generate the synthetic demo connectome, coordinates and analysis plan "
        "(once) under OUT_DIR and run bids_cnm's whole group-level chain on them. Any other "
        "option is passed on to bids_cnm (see bids_cnm --help).",
        epilog="The default demo takes about 0.75 GB of disk (connectome 0.28 GB, work directory "
        "0.42 GB, outputs 0.03 GB) and a few minutes on 2 cores.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="folder for the demo data and results")
    parser.add_argument("--n-subjects", type=int, default=20,
                        help="subjects of the synthetic connectome")
    parser.add_argument("--n-volumes", type=int, default=120,
                        help="BOLD volumes per run")
    parser.add_argument("--resolution", type=int, default=4, choices=[2, 3, 4],
                        help="voxel size of the connectome, in mm")
    parser.add_argument("--nprocs", type=int, default=min(os.cpu_count() or 1, 8),
                        help="processes of the bids_cnm run")
    args, extra = parser.parse_known_args(argv)

    out = args.out_dir.resolve()
    connectome, coordinates = out / "connectome", out / "coordinates.tsv"
    if not (connectome / "dataset_description.json").exists():
        start = time.perf_counter()
        print(f"bids_cnm-demo: generating the synthetic connectome in {connectome}",
              file=sys.stderr)
        demo = make_demo_dataset(
            out, n_subjects=args.n_subjects, n_volumes=args.n_volumes,
            resolution=args.resolution,
        )
        connectome, coordinates = demo.bids_dir, demo.coordinates
        print(f"bids_cnm-demo: generated in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    plan = out / "plan" / "plan.yml"
    if not plan.exists():
        plan = make_demo_plan(out, resolution=args.resolution)
    command = [
        str(connectome), str(out / "derivatives"), "group",
        "--coordinates", str(coordinates), "-w", str(out / "work"),
        "--nprocs", str(args.nprocs),
        # the whole chain: sensitivity variants, specificity, the validation/DBS/ALE plan
        "--t-thresholds", "4.7", "5.6", "7", "9", "--sphere-diameters", "3", "9",
        "--subgroups", "modality", "--specificity", "--n-permutations", "1000",
        "--analysis", str(plan), *extra,
    ]
    print("bids_cnm-demo: bids_cnm " + " ".join(command), file=sys.stderr)
    return cnm_main(command)


if __name__ == "__main__":
    raise SystemExit(main())
