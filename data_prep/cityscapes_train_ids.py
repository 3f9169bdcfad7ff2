#!/usr/bin/env python
"""Write `*_gtFine_labelTrainIds.png` next to every `*_gtFine_labelIds.png` of a Cityscapes root
(19 train ids, 255 = ignore; the file HR-NAS/mmseg train on, which the official zip lacks).

    python data_prep/cityscapes_train_ids.py /data/cityscapes [--overwrite]
"""
from __future__ import annotations

import argparse
import sys

from hrnas.data.cityscapes import write_train_id_files
from hrnas.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="Cityscapes root holding gtFine/")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing labelTrainIds files")
    args = parser.parse_args(argv)
    try:
        n = write_train_id_files(args.root, overwrite=args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} *_gtFine_labelTrainIds.png files under {args.root}/gtFine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
