#!/usr/bin/env python
"""Generate a procedural miniature dataset in the real on-disk format (same as `hrnas data make`).

    python data_prep/make_synthetic.py cityscapes --out data/cityscapes-tiny [--preset tiny|smoke] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time

from hrnas.data import DATASETS, PRESETS, make_dataset
from hrnas.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = make_dataset(args.dataset, args.out, preset=args.preset, seed=args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote synthetic {args.dataset} ({args.preset}, seed {args.seed}) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
