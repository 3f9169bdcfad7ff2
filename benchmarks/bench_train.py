"""Training throughput on the CPU: the trainer's step (forward, loss + L2 + search penalty, backward,
optimizer, EMA) in images/s for the cityscapes ``tiny`` and ``paper`` presets, next to the data loader's
images/s for the same recipe, to show that loading is not the bottleneck.

The paper preset runs 1–2 steps of the full super network (expand ratio 4, transformers with 64 tokens)
at its 512×1024 crop with a batch of 2 (its global batch of 32 is for 8 GPUs). Both presets read the
embedded synthetic street scenes (the paper pipeline upsamples them to the 2048×1024 scale first).

    python benchmarks/bench_train.py [--presets tiny paper] [--steps 4] [--paper-steps 2] [--workers 2]

``--variants fast,plain,fast-ckpt`` instead times the tiny step of one trainer in each variant (``plain``:
the searching blocks' plain computation, one expand tensor sliced per path and stock convolutions,
``HRNet.set_fast_paths(False)``; ``fast``: the fast kernel paths; ``-ckpt``: with
``train.grad_checkpointing``), alternating A B C, C B A, ... over ``--rounds`` on the same batches, and
prints each variant's median step and its speed-up against the first one.

    python benchmarks/bench_train.py --variants fast,plain,fast-ckpt --steps 6 --rounds 3 --threads 2

``--against REF`` times the tiny step of this working tree against the code of git commit ``REF`` (checked
out into a temporary worktree), each in its own process per round, alternating the order, on the same
generated data and seed; it prints each side's median step, the speed-up, and the loss after the timed
steps (the same batches from the same initial weights, so the two losses differ by float rounding only).

    python benchmarks/bench_train.py --against 9eb8406 --task cityscapes --steps 8 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch


def loader_rate(trainer, batches: int) -> float:
    """Images/s of the training loader alone (fresh iterator, ``batches`` batches after the first)."""
    trainer._start_epoch(0)
    it = iter(trainer.train_loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * trainer.batch / (time.perf_counter() - start)


def train_rate(trainer, steps: int) -> tuple[float, float]:
    """(images/s, seconds per step) of ``trainer.train_step`` over ``steps`` steps after one warm-up step."""
    trainer._start_epoch(0)
    batches = iter(trainer.train_loader)
    trainer.train_step(next(batches), 1)
    loaded = [next(batches) for _ in range(steps)]  # loading kept out of the timed loop
    start = time.perf_counter()
    for i, batch in enumerate(loaded):
        trainer.train_step(batch, i + 2)
    elapsed = time.perf_counter() - start
    return steps * trainer.batch / elapsed, elapsed / steps


VARIANT_FLAGS = ("ckpt",)


def parse_variant(variant: str) -> tuple[bool, set[str]]:
    """``plain|fast[-ckpt]`` -> (fast paths?, flags)."""
    kind, *flags = variant.split("-")
    if kind not in ("plain", "fast") or not set(flags) <= set(VARIANT_FLAGS) or len(set(flags)) != len(flags):
        raise ValueError(variant)
    return kind == "fast", set(flags)


def variant_rates(trainer, variants: list[str], steps: int, rounds: int) -> list[dict]:
    """Median seconds per ``trainer.train_step`` of each variant, the variants alternating by round on the
    same ``steps`` batches (one warm-up step per variant first). The step index stays 1, so no search
    schedule (penalty ramp, shrink) moves between the variants."""
    import statistics

    trainer._start_epoch(0)
    it = iter(trainer.train_loader)
    loaded = [next(it) for _ in range(steps)]
    net = trainer.searchable

    def use(variant: str) -> None:
        fast, flags = parse_variant(variant)
        net.set_fast_paths(fast)
        net.set_grad_checkpointing("ckpt" in flags)

    for v in variants:
        use(v)
        trainer.train_step(loaded[0], 1)
    times = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            use(v)
            for batch in loaded:
                start = time.perf_counter()
                trainer.train_step(batch, 1)
                times[v].append(time.perf_counter() - start)
    base = statistics.median(times[variants[0]])
    images = trainer.batch
    return [{"variant": v, "median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4),
             "speedup": round(base / statistics.median(t), 3), "images_per_s": round(images / statistics.median(t), 2),
             "steps": len(t)} for v, t in times.items()]


def make_trainer(preset: str, workers: int, batch: int | None, task: str, run_dir: str):
    """A trainer of ``task``/``preset`` on the embedded tiny data (search hooks as configured)."""
    from hrnas.data import ensure_dataset
    from hrnas.engine.config import load_config
    from hrnas.engine.trainer import Trainer
    from hrnas.search import search_hooks
    from hrnas.tasks import get_task

    overrides = [f"data.num_workers={workers}", "eval.bn_calib_batches=0"]
    if batch is not None:
        overrides.append(f"data.batch_size={batch}")
    cfg = load_config(task, preset, overrides)
    root = ensure_dataset(task, "tiny")
    return Trainer(get_task(cfg), cfg, run_dir, data_root=root, hooks=search_hooks(cfg), progress=False,
                   meta={"mode": "bench"})


def bench(preset: str, steps: int, workers: int, batch: int | None, task: str = "cityscapes") -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(preset, workers, batch, task, run_dir)
        cfg = trainer.cfg
        images_s, step_s = train_rate(trainer, steps)
        load_s = loader_rate(trainer, max(steps, 4))
    size = cfg["data"].get("crop_size") or cfg["data"].get("input_size") or "-"
    crop = "x".join(str(v) for v in size) if isinstance(size, (list, tuple)) else str(size)
    return {"task": task, "preset": preset, "crop": crop, "batch": cfg["data"]["batch_size"], "workers": workers,
            "expand_ratio": cfg["model"]["expand_ratio"], "tokens": cfg["model"]["tokens"],
            "train_images_per_s": round(images_s, 3), "seconds_per_step": round(step_s, 2),
            "loader_images_per_s": round(load_s, 2), "loader_headroom": round(load_s / images_s, 1)}


def step_times(task: str, steps: int, run_dir: str) -> dict:
    """Seconds of each of ``steps`` train steps of a fresh ``task`` tiny trainer (after one warm-up step on
    another batch), and the loss of the last one. Run in a child process by :func:`against`."""
    trainer = make_trainer("tiny", 0, None, task, run_dir)
    trainer._start_epoch(0)
    it = iter(trainer.train_loader)
    warm, loaded = next(it), [next(it) for _ in range(steps)]
    trainer.train_step(warm, 1)
    times, logs = [], {}
    for i, batch in enumerate(loaded):
        start = time.perf_counter()
        logs = trainer.train_step(batch, i + 2)
        times.append(time.perf_counter() - start)
    return {"times": times, "loss": logs["loss"], "task_loss": logs["task_loss"]}


def against(ref: str, task: str, steps: int, rounds: int, threads: int) -> list[dict]:
    """Median tiny step of this tree and of commit ``ref``, each round one child process per side, the
    order alternating by round."""
    import os
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", "--force", str(tree), ref],
                       check=True, capture_output=True)
        try:
            sides = {"this tree": here, f"ref {ref}": tree}
            results = {name: [] for name in sides}
            code = ("import json, sys, tempfile, torch; sys.path.append(sys.argv[1]); "
                    "torch.set_num_threads(int(sys.argv[4])); import hrnas; from bench_train import step_times; "
                    "print(hrnas.__file__, file=sys.stderr); "
                    "d = tempfile.mkdtemp(); print(json.dumps(step_times(sys.argv[2], int(sys.argv[3]), d)))")
            for r in range(rounds):
                for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    env = dict(os.environ, PYTHONPATH=str(sides[name]), OMP_NUM_THREADS=str(threads))
                    out = subprocess.run([sys.executable, "-c", code, str(here / "benchmarks"), task, str(steps),
                                          str(threads)], env=env, cwd=tmp, check=True, capture_output=True, text=True)
                    results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(tree)], capture_output=True)
    rows = []
    for name, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        rows.append({"code": name, "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                     "steps": len(times), "loss": runs[0]["loss"], "task_loss": runs[0]["task_loss"]})
    for row in rows:
        row["speedup"] = round(rows[1]["median_s"] / row["median_s"], 3)
    return rows


def report(args, info: dict, rows: list[dict], title: str, label: tuple, last: tuple) -> None:
    """Print ``rows`` of a tiny-step comparison (or one JSON line with ``--json``): the label column
    ``(key, width)``, median, min, speed-up, and ``last`` = ``(header, width, format, key)``."""
    if args.json:
        print(json.dumps({"machine": info, "task": args.task, "preset": "tiny", "results": rows}))
        return
    (key, width), (header, last_width, last_format, last_key) = label, last
    print(title)
    print(f"{key:<{width}}{'median s':>10}{'min s':>9}{'speed-up':>10}{header:>{last_width}}")
    for r in rows:
        print(f"{r[key]:<{width}}{r['median_s']:>10}{r['min_s']:>9}{r['speedup']:>9}x"
              f"{r[last_key]:>{last_width}{last_format}}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps of the tiny preset")
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps of the paper preset (slow)")
    parser.add_argument("--paper-batch", type=int, default=2, help="batch of the paper preset on the CPU")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--task", default="cityscapes", help="task of the tiny preset (the paper preset: cityscapes)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated plain|fast[-ckpt]: time the tiny step in each (see above)")
    parser.add_argument("--against", default=None, metavar="REF",
                        help="time the tiny step of this tree against git commit REF (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --variants (alternating order)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or "cpu"}
    if args.against:
        if args.steps < 1 or args.rounds < 1:
            parser.error("--steps and --rounds must be >= 1")
        rows = against(args.against, args.task, args.steps, args.rounds, args.threads or 1)
        report(args, info, rows, f"{args.task} tiny step, torch {info['torch']}, {args.threads or 1} thread(s), "
               f"{args.rounds} rounds of {args.steps} steps, one process per side and round; speed-up against "
               f"{rows[1]['code']}", ("code", 22), ("loss after", 12, ".6f", "loss"))
        return
    if args.variants:
        variants = args.variants.split(",")
        unknown = []
        for v in variants:
            try:
                parse_variant(v)
            except ValueError:
                unknown.append(v)
        if unknown or args.steps < 1 or args.rounds < 1:
            parser.error(f"--variants: {', '.join(unknown)} is not plain|fast[-ckpt]" if unknown else
                         "--steps and --rounds must be >= 1")
        with tempfile.TemporaryDirectory() as run_dir:
            rows = variant_rates(make_trainer("tiny", args.workers, None, args.task, run_dir), variants,
                                 args.steps, args.rounds)
        report(args, info, rows, f"{args.task} tiny, torch {info['torch']}, {info['threads']} threads, "
               f"{args.rounds} rounds of {args.steps} steps; ratios against {variants[0]}",
               ("variant", 12), ("img/s", 8, "", "images_per_s"))
        return
    rows = []
    for preset in args.presets:
        paper = preset == "paper"
        rows.append(bench(preset, args.paper_steps if paper else args.steps, args.workers,
                          args.paper_batch if paper else None, "cityscapes" if paper else args.task))
    if args.json:
        print(json.dumps({"machine": info, "results": rows}))
        return
    print(f"torch {info['torch']}, {info['threads']} threads")
    print(f"{'preset':<7}{'crop':>10}{'batch':>6}{'s/step':>8}{'train img/s':>13}{'loader img/s':>14}{'headroom':>10}")
    for r in rows:
        print(f"{r['preset']:<7}{r['crop']:>10}{r['batch']:>6}{r['seconds_per_step']:>8}"
              f"{r['train_images_per_s']:>13}{r['loader_images_per_s']:>14}{r['loader_headroom']:>9}x")


if __name__ == "__main__":
    main()
