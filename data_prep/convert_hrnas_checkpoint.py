#!/usr/bin/env python
"""Convert a searched architecture of the authors' code (their `checkpoint.json` / `best_model.json`) to
an hrnas architecture spec.

    python data_prep/convert_hrnas_checkpoint.py PATH/checkpoint.json --out hrnas/configs/archs/hrnas-a-imagenet.json

Their file is a list with one entry per searching block, `[output_dim, 1, stride, kernel_sizes, channels,
expand]`, in the order their network builds (and enumerates) its blocks: for each fusion module the
fused paths output-branch-major with the input branches ascending, then the new branches; for each
parallel module branch-major; then the classification head's `incre_modules` and `downsamp_modules` (or
the dense head's `transform`). Our network builds its blocks in the same order; each entry is matched to
our block by name (their module path -> ours, e.g. `features.4.fuse_layers.1.0.0` -> `fuse2.1_0`) and
checked against our super network's output width and stride. Only surviving kernel paths are listed; an
empty list is a block reduced to its shortcut. Their file holds no transformer tokens (tokens = 0) and no
build options: the spec gets the task's default options (ReLU, no SE: the network as searched); the
retraining recipe adds SE and Swish (`hrnas train imagenet --arch NAME --preset paper-retrain`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hrnas.errors import UserError
from hrnas.models.factory import ARCH_FORMAT, ARCH_VERSION, build_model, model_options, save_arch, validate_arch
from hrnas.models.hrnet import STAGES, STEM_CHANNELS
from hrnas.models.searching_block import KERNEL_SIZES

SOURCE = "dingmyu/HR-NAS"
DENSE_TASKS = ("cityscapes", "ade20k", "coco", "kitti")


def block_names(task: str) -> list[tuple[str, str]]:
    """(their module path, our block name) of every searching block, in their block order."""
    names = []
    in_branches = len((STEM_CHANNELS,))
    for k, (blocks, _) in enumerate(STAGES):
        branches = len(blocks)
        fuse, parallel = 2 * k, 2 * k + 1
        for i in range(min(in_branches, branches)):
            for j in (i - 1, i, i + 1):
                if 0 <= j < in_branches:  # the same-branch block is direct, the others sit in a Sequential
                    path = f"features.{fuse}.fuse_layers.{i}.{j}" + ("" if j == i else ".0")
                    names.append((path, f"fuse{k}.{i}_{j}"))
        for b in range(in_branches, branches):
            names.append((f"features.{fuse}.fuse_layers.{b}.0", f"fuse{k}.new{b}"))
        for b, count in enumerate(blocks):
            names += [(f"features.{parallel}.branches.{b}.{m}", f"parallel{k}.{b}_{m}") for m in range(count)]
        in_branches = branches
    if task in DENSE_TASKS:
        return names + [("transform", "head.transform")]
    head = f"features.{2 * len(STAGES)}"
    names += [(f"{head}.incre_modules.{i}", f"head.incre{i}") for i in range(in_branches)]
    return names + [(f"{head}.downsamp_modules.{i}", f"head.down{i}") for i in range(in_branches - 1)]


def convert(entries, task: str = "imagenet", source: str = "checkpoint.json") -> dict:
    """The hrnas architecture spec of the authors' block list ``entries`` (UserError naming the entry)."""
    opts = model_options(task)
    supernet = {name: block for name, block in build_model(task, expand_ratio=1).searching_blocks()}
    names = block_names(task)
    if not isinstance(entries, list) or len(entries) != len(names):
        got = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise UserError(f"{source}: expected a list of {len(names)} block entries for {task}, got {got}")
    blocks = []
    for index, (entry, (theirs, ours)) in enumerate(zip(entries, names)):
        where = f"{source}: entry {index} ({theirs})"
        if not isinstance(entry, list) or len(entry) != 6:
            raise UserError(f"{where}: expected [output_dim, 1, stride, kernel_sizes, channels, expand]")
        oup, _, stride, kernels, channels, expand = entry
        ref = supernet[ours]
        if (oup, stride) != (ref.oup, ref.stride):
            raise UserError(f"{where}: output_dim {oup}, stride {stride}, but our block {ours} has "
                            f"{ref.oup}, {ref.stride} (not a {task} network of the HR-NAS search space)")
        if expand is not True:
            raise UserError(f"{where}: expand={expand!r}; only expanding blocks exist in the search space")
        if (not isinstance(kernels, list) or not isinstance(channels, list) or len(kernels) != len(channels)
                or len(set(kernels)) != len(kernels) or any(k not in KERNEL_SIZES for k in kernels)
                or any(not isinstance(c, int) or c < 1 for c in channels)):
            raise UserError(f"{where}: kernel_sizes {kernels!r} / channels {channels!r} must pair distinct "
                            f"kernels from {list(KERNEL_SIZES)} with positive widths")
        blocks.append({"name": ours, "inp": ref.inp, "oup": ref.oup, "stride": ref.stride,
                       "kernels": list(kernels), "hidden": list(channels), "tokens": 0})
    spec = {"format": ARCH_FORMAT, "version": ARCH_VERSION, "task": task, "model": opts,
            "source": f"{SOURCE} {Path(source).name}, converted by data_prep/convert_hrnas_checkpoint.py",
            "blocks": blocks}
    validate_arch(spec, task, source)
    return spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the authors' checkpoint.json (or best_model.json)")
    parser.add_argument("--out", type=Path, required=True, help="output architecture spec (JSON)")
    parser.add_argument("--task", default="imagenet", help="task of the searched network (default imagenet)")
    args = parser.parse_args(argv)
    try:
        if not args.checkpoint.is_file():
            raise UserError(f"{args.checkpoint}: file not found")
        try:
            entries = json.loads(args.checkpoint.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{args.checkpoint}: not valid JSON ({err})") from None
        spec = convert(entries, args.task, str(args.checkpoint))
        if args.out.is_dir():
            raise UserError(f"--out {args.out} is a directory; give a file name")
        save_arch(spec, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    removed = sum(not b["hidden"] for b in spec["blocks"])
    print(f"wrote {args.out} ({len(spec['blocks'])} blocks, {removed} reduced to their shortcut)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
