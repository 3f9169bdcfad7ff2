"""Training throughput on the CPU: the trainer's step (forward, loss + L2 + search penalty, backward,
optimizer, EMA) in images/s for the cityscapes ``tiny`` and ``paper`` presets, next to the data loader's
images/s for the same recipe, to show that loading is not the bottleneck.

The paper preset runs 1–2 steps of the full super network (expand ratio 4, transformers with 64 tokens)
at its 512×1024 crop with a batch of 2 (its global batch of 32 is for 8 GPUs). Both presets read the
embedded synthetic street scenes (the paper pipeline upsamples them to the 2048×1024 scale first).

    python benchmarks/bench_train.py [--presets tiny paper] [--steps 4] [--paper-steps 2] [--workers 2]
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
    from hrnas.engine.trainer import batch_size_of

    trainer._start_epoch(0)
    it = iter(trainer.train_loader)
    next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += batch_size_of(next(it))
    return images / (time.perf_counter() - start)


def train_rate(trainer, steps: int) -> tuple[float, float]:
    """(images/s, seconds per step) of ``trainer.train_step`` over ``steps`` steps after one warm-up step."""
    from hrnas.engine.trainer import batch_size_of

    trainer._start_epoch(0)
    batches = iter(trainer.train_loader)
    trainer.train_step(next(batches), 1)
    loaded = [next(batches) for _ in range(steps)]  # loading kept out of the timed loop
    start = time.perf_counter()
    for i, batch in enumerate(loaded):
        trainer.train_step(batch, i + 2)
    elapsed = time.perf_counter() - start
    return sum(batch_size_of(b) for b in loaded) / elapsed, elapsed / steps


def bench(preset: str, steps: int, workers: int, batch: int | None, task: str = "cityscapes") -> dict:
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
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(get_task(cfg), cfg, run_dir, data_root=root, hooks=search_hooks(cfg), progress=False,
                          meta={"mode": "bench"})
        images_s, step_s = train_rate(trainer, steps)
        load_s = loader_rate(trainer, max(steps, 4))
    size = cfg["data"].get("crop_size") or cfg["data"].get("input_size") or "-"
    crop = "x".join(str(v) for v in size) if isinstance(size, (list, tuple)) else str(size)
    return {"task": task, "preset": preset, "crop": crop, "batch": cfg["data"]["batch_size"], "workers": workers,
            "expand_ratio": cfg["model"]["expand_ratio"], "tokens": cfg["model"]["tokens"],
            "train_images_per_s": round(images_s, 3), "seconds_per_step": round(step_s, 2),
            "loader_images_per_s": round(load_s, 2), "loader_headroom": round(load_s / images_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps of the tiny preset")
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps of the paper preset (slow)")
    parser.add_argument("--paper-batch", type=int, default=2, help="batch of the paper preset on the CPU")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--task", default="cityscapes", help="task of the tiny preset (the paper preset: cityscapes)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        paper = preset == "paper"
        rows.append(bench(preset, args.paper_steps if paper else args.steps, args.workers,
                          args.paper_batch if paper else None, "cityscapes" if paper else args.task))
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or "cpu"}
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
