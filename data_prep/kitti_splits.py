#!/usr/bin/env python
"""Write KITTI `ImageSets/{train,val,trainval}.txt`.

Either from id lists (e.g. the standard 3712/3769 split files distributed with OpenPCDet/mmdet3d):
    python data_prep/kitti_splits.py /data/kitti --train train.txt --val val.txt [--expect-standard]
or as a seeded random split of all frames in training/velodyne:
    python data_prep/kitti_splits.py /data/kitti --val-fraction 0.5 [--seed 0]
Every id must be 6 digits with a velodyne file; train and val must be disjoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hrnas.data.kitti import random_split, read_image_set, write_image_sets
from hrnas.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="KITTI root holding training/velodyne")
    parser.add_argument("--train", help="file with one train frame id per line")
    parser.add_argument("--val", help="file with one val frame id per line")
    parser.add_argument("--val-fraction", type=float, help="random split instead of id lists")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--expect-standard", action="store_true",
                        help="require the standard split sizes (3712 train / 3769 val)")
    args = parser.parse_args(argv)
    try:
        if args.val_fraction is not None:
            if args.train or args.val:
                raise UserError("use either --train/--val lists or --val-fraction, not both")
            velo = Path(args.root) / "training" / "velodyne"
            frames = sorted(p.stem for p in velo.glob("*.bin")) if velo.is_dir() else []
            if not frames:
                raise UserError(f"no frames in {velo}; expected ROOT/training/velodyne/*.bin")
            train, val = random_split(frames, args.val_fraction, args.seed)
        elif args.train and args.val:
            lists = []
            for name in (args.train, args.val):
                if not Path(name).is_file():
                    raise UserError(f"id list {name} not found")
                lists.append(read_image_set(Path(name)))
            train, val = lists
        else:
            raise UserError("give --train and --val id lists, or --val-fraction")
        counts = write_image_sets(args.root, train, val, expect_standard=args.expect_standard)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(f"ImageSets/{k}.txt ({v} frames)" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
