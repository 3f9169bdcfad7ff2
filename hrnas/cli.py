"""The ``hrnas`` command (also ``python -m hrnas``). See ``hrnas --help`` and DESIGN's CLI contract.

Exit status: 0 on success; 1 when a run fails (e.g. a notebook of ``reproduce``); 2 with a one-line
message naming the bad argument or file on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hrnas import MINIATURE_PRESETS, TASKS
from hrnas.errors import UserError

TRANSFORMER_CHOICES = ("none", "res", "res+down")
PRESET_HELP = "paper | tiny | smoke, or a task's own (imagenet: paper-retrain); see hrnas/configs/TASK.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed size '{text}', expected HxW such as 512x1024") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size '{text}' is too small: H and W must be >= 32")
    return h, w


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="params and MACs of a task's network, per part")
    p.add_argument("task", choices=TASKS + ("all",), metavar="TASK", help=f"one of {', '.join(TASKS)}, or all")
    p.add_argument("--size", type=parse_size, help="input HxW (default: the paper's size for the task)")
    p.add_argument("--arch", type=Path, help="a searched architecture: JSON from `hrnas export`, or the name of a "
                                             "shipped one (hrnas-a-imagenet)")
    p.add_argument("--preset", help="apply this recipe's retraining options (activation, SE, dropout) to the "
                                    "network, as `hrnas train --preset` does; " + PRESET_HELP)
    p.add_argument("--transformer", choices=TRANSFORMER_CHOICES, default="none",
                   help="lightweight transformers in no block, the residual blocks, or every block")
    p.add_argument("--tokens", type=int, default=64, help="transformer tokens n (default 64)")
    p.add_argument("--proj", type=int, default=8, help="transformer projection size s (default 8)")
    p.add_argument("--convention", choices=("true", "hrnas"), default="true",
                   help="true: every conv/linear/attention matmul; hrnas: the authors' profiler (paper tables)")
    p.add_argument("--json", action="store_true", help="print one JSON object per task")


def run_profile(args) -> int:
    from hrnas.models import PAPER_SIZES, build_model
    from hrnas.profile import profile

    tasks = TASKS if args.task == "all" else (args.task,)
    if args.arch is not None and len(tasks) > 1:
        raise UserError("--arch: give one TASK (the architecture's task), not 'all'")
    if args.tokens < 1 or args.proj < 1:
        raise UserError(f"--tokens/--proj must be >= 1 (got {args.tokens}/{args.proj})")
    for task in tasks:
        options = {}
        if args.preset is not None:
            from hrnas.tasks import get_task
            from hrnas.engine.config import load_config

            options = get_task(load_config(task, args.preset)).retrain_options()
            options.pop("num_classes", None)
        if args.transformer != "none":
            options.update(attention="transformer", placement=args.transformer, tokens=args.tokens,
                           proj=args.proj)
        model = build_model(task, arch=args.arch, **options)
        size = args.size or PAPER_SIZES[task]
        prof = profile(model, size, args.convention)
        record = {"task": task, **prof.to_dict(), "transformer": args.transformer,
                  "arch": str(args.arch) if args.arch else None, "preset": args.preset}
        if args.json:
            print(json.dumps(record))
        else:
            _print_profile(record)
    return 0


def _print_profile(rec: dict) -> None:
    preset = f", preset {rec['preset']}" if rec["preset"] else ""
    print(f"{rec['task']} @ {rec['size']} ({rec['convention']} convention, transformer={rec['transformer']}{preset})")
    print(f"  {'part':<12}{'params':>14}{'MACs':>18}")
    for part, v in rec["parts"].items():
        print(f"  {part:<12}{v['params']:>14,}{v['macs']:>18,}")
    print(f"  {'total':<12}{rec['params']:>14,}{rec['macs']:>18,}   ({rec['macs'] / 1e9:.3f} GMACs)")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="embedded miniature datasets in the real on-disk formats")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    make = dsub.add_parser("make", help="write a procedural dataset in the real format")
    make.add_argument("dataset", choices=TASKS, metavar="DATASET", help=f"one of {', '.join(TASKS)}")
    make.add_argument("--out", type=Path, required=True, help="output folder")
    make.add_argument("--preset", choices=MINIATURE_PRESETS, default="tiny")
    make.add_argument("--seed", type=int, default=0)


def run_data(args) -> int:
    from hrnas.data import make_dataset

    path = make_dataset(args.dataset, args.out, preset=args.preset, seed=args.seed)
    print(f"wrote synthetic {args.dataset} ({args.preset}, seed {args.seed}) to {path}")
    return 0


def _add_run_common(p, with_arch: bool) -> None:
    p.add_argument("task", choices=TASKS, metavar="TASK", help=f"one of {', '.join(TASKS)}")
    if with_arch:
        p.add_argument("--arch", type=Path, required=True,
                       help="architecture JSON from `hrnas export`, or a shipped one by name (hrnas-a-imagenet)")
    p.add_argument("--data-root", type=Path, help="dataset root (default: the embedded synthetic data)")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics, run.json)")
    p.add_argument("--preset", default="tiny", help=PRESET_HELP + " (default tiny)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01")


def _add_search_train_eval(sub) -> None:
    _add_run_common(sub.add_parser("search", help="search with progressive shrinking (trains the supernet)"),
                    with_arch=False)
    _add_run_common(sub.add_parser("train", help="retrain a searched architecture from scratch"), with_arch=True)
    p = sub.add_parser("eval", help="evaluate a checkpoint (or score KITTI result files)")
    p.add_argument("task", choices=TASKS, metavar="TASK", help=f"one of {', '.join(TASKS)}")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (.pt) or run directory")
    p.add_argument("--results", type=Path, help="KITTI only: folder of KITTI-format result files to score")
    p.add_argument("--split", default="val", help="KITTI --results: ImageSets split (default val)")
    p.add_argument("--data-root", type=Path, help="dataset root (default: the embedded synthetic data)")
    p.add_argument("--preset", default=None,
                   help="evaluation settings (default: those stored in the checkpoint); " + PRESET_HELP)
    p.add_argument("--detections", type=Path, metavar="FILE",
                   help="coco: score the boxes of this COCO person detection-results JSON (the standard protocol; "
                        "eval.det_score_thr=X drops lower scores) instead of the ground-truth boxes")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.flip_test=false")
    e = sub.add_parser("export", help="write the searched architecture of a run as JSON")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--out", type=Path, required=True, help="output arch.json")


def run_search_or_train(args) -> int:
    from hrnas.experiment import run_experiment

    result = run_experiment(args.task, mode=args.command, out=args.out, data_root=args.data_root,
                            preset=args.preset, overrides=args.overrides, arch=getattr(args, "arch", None),
                            resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"task": args.task, "run_dir": str(args.out), "metrics": result.get("metrics", {})}))
    return 0


def run_eval(args) -> int:
    if args.results is not None:
        if args.detections is not None:
            raise UserError("--detections: not with --results (it replaces the boxes of a --checkpoint evaluation)")
        if args.task != "kitti":
            raise UserError("--results: only for the kitti task")
        if args.data_root is None:
            raise UserError("--results needs --data-root (the KITTI folder with training/label_2 and ImageSets)")
        from hrnas.metrics.kitti import evaluate_dirs, format_table

        metrics = evaluate_dirs(args.results, args.data_root, split=args.split)
        print(json.dumps(metrics) if args.json else format_table(metrics))
        return 0
    if args.checkpoint is None:
        raise UserError("eval: give --checkpoint FILE (or, for kitti, --results DIR)")
    from hrnas.experiment import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.task, args.checkpoint, data_root=args.data_root, preset=args.preset,
                                  overrides=args.overrides, detections=args.detections)
    print(json.dumps(metrics) if args.json else "\n".join(f"{k}: {v}" for k, v in metrics.items()))
    return 0


def run_export(args) -> int:
    from hrnas.experiment import export_arch

    path = export_arch(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0


def _add_ablation(sub) -> None:
    p = sub.add_parser("ablation", help="the supplement's Cityscapes ablation tables 1 and 2: a searched baseline, "
                                        "each module added, retrained over seeds")
    p.add_argument("table", metavar="TABLE", help="table1 (projection size s) or table2 (attention variants)")
    p.add_argument("--data-root", type=Path, help="Cityscapes folder (default: the embedded synthetic miniature)")
    p.add_argument("--preset", default="tiny", help="tiny | smoke | paper: the recipes of hrnas/configs/ablation.yaml "
                                                   "(default tiny)")
    p.add_argument("--seeds", type=int, help="retraining seeds per row (default: the preset's)")
    p.add_argument("--arch", type=Path, help="use this searched Cityscapes network (JSON from `hrnas export`, no "
                                             "attention) as the baseline instead of searching one")
    p.add_argument("--jobs", type=int, default=1,
                   help="retrainings run in parallel, the largest first (default 1; every run takes one thread)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"),
                   help="folder of the runs, the table (CSV, Markdown, LaTeX) and the plot (default runs/ablation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_ablation(args) -> int:
    from hrnas.ablation import run_table

    if args.jobs < 1:  # run_table checks the table, preset and seeds before any work; jobs only after the search
        raise UserError(f"--jobs {args.jobs}: give an integer >= 1")
    if args.arch is not None and not args.arch.is_file():
        raise UserError(f"--arch {args.arch}: no such file")
    result = run_table(args.table, preset=args.preset, data_root=args.data_root, seeds=args.seeds, arch=args.arch,
                       out_dir=args.out, jobs=args.jobs, progress=not args.no_progress)
    print(result["caption"])
    print(result["table"].iloc[:, :13].round(3).to_string(index=False))
    print(json.dumps({"table": args.table, "files": [str(p) for p in result["paths"].values()],
                      "wall_time_s": round(result["wall_time_s"], 1)}))
    return 0


def _add_reproduce(sub) -> None:
    from hrnas.reproduce import add_arguments

    add_arguments(sub.add_parser("reproduce", help="run the notebooks with papermill (the paper's tables/figures)"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hrnas", description="HR-NAS reproduction: profile, data, search, train, eval, "
                                                "export, ablation, reproduce")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_profile(sub)
    _add_data(sub)
    _add_search_train_eval(sub)
    _add_ablation(sub)
    _add_reproduce(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` where ``key=value`` overrides may also follow the options.

    argparse fills a ``nargs="*"`` positional at its first chance, so in ``search TASK --out D k=v``
    the overrides are already taken (empty) when ``k=v`` comes; every leftover argument of a command
    with ``overrides`` that is not an option is appended to them in command-line order (the config
    then checks each), and a leftover option is an error as before.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list):
            bad = [a for a in extra if a.startswith("-")]
            if not bad:
                args.overrides.extend(extra)
                return args
            extra = bad
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def check_out(args: argparse.Namespace) -> None:
    """``--out`` must be creatable: a folder (a file for ``export``) whose existing parts are folders."""
    out = getattr(args, "out", None)
    if out is None:
        return
    out = Path(out).expanduser()
    wants_file = args.command == "export"
    if out.exists() and out.is_dir() == wants_file:
        kind = "a folder" if wants_file else "a file"
        raise UserError(f"--out {out} is {kind}; give {'a file name such as arch.json' if wants_file else 'a folder'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder")
            break


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(build_parser(), argv)
        check_out(args)
        if args.command == "profile":
            return run_profile(args)
        if args.command == "data":
            return run_data(args)
        if args.command in ("search", "train"):
            return run_search_or_train(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "export":
            return run_export(args)
        if args.command == "ablation":
            return run_ablation(args)
        from hrnas.reproduce import run_from_args

        return run_from_args(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
