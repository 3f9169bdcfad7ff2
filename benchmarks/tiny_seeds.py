"""Tiny results over several seeds: mean ± std (sample, ddof 1), min, max per task and metric.

A 150-500-step search on the embedded data is one draw: another CPU takes other oneDNN kernels and
the rounding differences grow over the steps (on a second 2-core EPYC, same code and seed, ImageNet
tiny top-1 came out 15.3 % instead of 23.0 %). This script measures the spread on this machine:

    python benchmarks/tiny_seeds.py [--tasks imagenet cityscapes ade20k coco kitti] [--seeds 1995 1 2 3 4]
                                    [--jobs 2] [--out runs/seeds] [--preset tiny|smoke] [--write-table]
                                    [--set key=value ...]

Each (task, seed) is ``hrnas search TASK --preset P --out OUT/TASK/seedS train.seed=S`` in its own
process with one torch thread (OMP_NUM_THREADS=1), ``--jobs`` at a time. Resumable: a run whose
``run.json`` says finished is not repeated, an interrupted one continues with ``--resume``.
``--set key=value ...`` passes the same config overrides to every run (to measure a candidate recipe,
e.g. ``--set optim.lr=5e-4 sched.warmup_epochs=2``); they are kept in ``OUT/overrides.json`` (a folder
measured with other overrides is refused, so that no summary mixes recipes) and recorded in the summary. From each
run's ``run.json`` it takes the final metrics (``hrnas.expected.RUN_METRICS``: imagenet
top-1/top-5; cityscapes and ade20k mIoU/mAcc/aAcc; coco AP/AP50/AR; kitti Car BEV and 3D AP,
moderate, R40 — under the names the notebooks record),
the MACs ratio (searched / super network) and the wall time, and writes ``OUT/summary.csv`` and
``OUT/summary.md``: per task and metric mean, std, min, max, n, the seeds and the per-seed values,
with the machine (CPU model, cores, torch version, threads), the git commit and the date.
Accuracies are in percent (segmentation and COCO fractions × 100, as the notebooks show them),
``macs_ratio`` is a fraction, ``wall_time_s`` seconds.

``--write-table`` also writes ``hrnas/configs/tiny_expected.csv`` (or ``--table FILE``), the table
the notebooks read to show the expected range next to their number: columns
``task,metric,mean,std,min,max,n,seeds,machine,commit,date`` (seeds space-separated), no comments.
Only a ``tiny`` measurement may write the packaged table.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this tree's hrnas, as in the runs (their PYTHONPATH starts with REPO)
from hrnas import MINIATURE_PRESETS, TASKS  # noqa: E402
DEFAULT_SEEDS = (1995, 1, 2, 3, 4)
from hrnas.errors import UserError  # noqa: E402
from hrnas.expected import RUN_METRICS  # noqa: E402  (metric names and units of the notebooks)

PACKAGED_TABLE = REPO / "hrnas" / "configs" / "tiny_expected.csv"
TABLE_COLUMNS = ("task", "metric", "mean", "std", "min", "max", "n", "seeds", "machine", "commit", "date")


def run_dir(out: Path, task: str, seed: int) -> Path:
    return out / task / f"seed{seed}"


def run_state(folder: Path) -> str:
    """"finished" (run.json says so), "partial" (a checkpoint to resume from) or "new"."""
    try:
        if json.loads((folder / "run.json").read_text()).get("status") == "finished":
            return "finished"
    except (OSError, ValueError):
        pass
    return "partial" if any(folder.glob("ckpt_*.pt")) else "new"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def launch(task: str, seed: int, preset: str, folder: Path, overrides=()) -> subprocess.Popen:
    """Start one search (log: ``<folder>.log``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hrnas", "search", task, "--preset", preset, "--out", str(folder),
           "--no-progress", *overrides, f"train.seed={seed}"]
    if run_state(folder) == "partial":
        cmd.append("--resume")
    log = open(folder.with_suffix(".log"), "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    return proc


def check_overrides(out: Path, overrides: list[str]) -> None:
    """Record ``--set`` in ``OUT/overrides.json``; refuse a folder whose runs had other overrides."""
    from hrnas.io import atomic_write_text

    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. optim.lr=5e-4")
        if key.strip() == "train.seed":
            raise UserError("--set train.seed: the seeds are given by --seeds")
    record = out / "overrides.json"
    if record.exists():
        before = json.loads(record.read_text())
        if before != overrides:
            raise UserError(f"--out {out}: its runs were made with --set {' '.join(before) or '(none)'}, "
                            f"not {' '.join(overrides) or '(none)'}; use another --out")
    elif any(out.glob("*/seed*/run.json")) and overrides:
        raise UserError(f"--out {out}: holds runs made without --set; use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(overrides) + "\n")


def run_all(out: Path, tasks, seeds, preset: str, jobs: int, overrides=()) -> list[tuple[str, int]]:
    """Run every (task, seed) not finished yet, `jobs` at a time; returns the ones that failed."""
    todo = [(t, s) for t in tasks for s in seeds if run_state(run_dir(out, t, s)) != "finished"]
    done = len(tasks) * len(seeds) - len(todo)
    print(f"{done} of {len(tasks) * len(seeds)} runs already finished; {len(todo)} to run, {jobs} at a time",
          flush=True)
    if todo:
        from hrnas.data import ensure_dataset

        for task in dict.fromkeys(t for t, _ in todo):  # generated once, before runs share it
            ensure_dataset(task, preset, progress=False)
    running, failed = {}, []
    while todo or running:
        while todo and len(running) < jobs:
            task, seed = todo.pop(0)
            running[(task, seed)] = (launch(task, seed, preset, run_dir(out, task, seed), overrides),
                                     time.perf_counter())
        for key, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            ok = proc.returncode == 0 and run_state(run_dir(out, *key)) == "finished"
            if not ok:
                failed.append(key)
            print(f"{key[0]} seed {key[1]}: {'ok' if ok else f'FAILED (exit {proc.returncode})'} in "
                  f"{time.perf_counter() - t0:.0f} s  (log: {run_dir(out, *key).with_suffix('.log')})", flush=True)
        time.sleep(0.5)
    return failed


def collect(out: Path, tasks, seeds) -> dict[tuple[str, str], dict[int, float]]:
    """{(task, metric): {seed: value}} from the finished runs' run.json."""
    values: dict[tuple[str, str], dict[int, float]] = {}
    for task in tasks:
        for seed in seeds:
            folder = run_dir(out, task, seed)
            if run_state(folder) != "finished":
                continue
            run = json.loads((folder / "run.json").read_text())
            got = {name: scale * run["metrics"][m] for m, (name, scale) in RUN_METRICS[task].items()
                   if m in run["metrics"]}
            got["macs_ratio"] = run["profile"]["macs_ratio"]
            got["wall_time_s"] = run["wall_time_s"]
            for metric, v in got.items():
                values.setdefault((task, metric), {})[seed] = float(v)
    return values


def summarize(values: dict) -> list[dict]:
    """Per (task, metric): mean, sample std (ddof 1; NaN for one seed), min, max, n, seeds, values."""
    rows = []
    for (task, metric), by_seed in values.items():
        v = list(by_seed.values())
        rows.append({"task": task, "metric": metric, "mean": statistics.fmean(v),
                     "std": statistics.stdev(v) if len(v) > 1 else float("nan"), "min": min(v), "max": max(v),
                     "n": len(v), "seeds": " ".join(map(str, by_seed)),
                     "values": " ".join(f"{s}:{x:.6g}" for s, x in by_seed.items())})
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine(jobs: int) -> str:
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per run, "
            f"{jobs} runs at a time")


def git_commit() -> str:
    from hrnas.provenance import git_info

    info = git_info(REPO)
    return (info["commit"] or "unknown")[:12] + ("-dirty" if info["dirty"] else "")


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    from hrnas.io import atomic_path

    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def write_summary(out: Path, rows: list[dict], stamp: dict, preset: str, failed, overrides=()) -> None:
    _write_csv(out / "summary.csv", [{**r, **stamp, "overrides": " ".join(overrides)} for r in rows],
               (*TABLE_COLUMNS, "values", "overrides"))
    from hrnas.io import atomic_write_text

    lines = [f"# Tiny results over seeds (preset {preset})", "",
             f"machine: {stamp['machine']}  ", f"commit: {stamp['commit']}  ", f"date: {stamp['date']}  ",
             f"overrides: {' '.join(overrides) or '(none: the preset as shipped)'}", "",
             "Accuracies in percent, macs_ratio = searched / super network MACs, wall_time_s in seconds; "
             "std is the sample standard deviation (ddof 1).", "",
             "| task | metric | mean ± std | min | max | n | per seed |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['mean']:.4g} ± {r['std']:.2g} | {r['min']:.4g} | "
                     f"{r['max']:.4g} | {r['n']} | {r['values']} |")
    if failed:
        lines += ["", "Failed runs (not in the table): " + ", ".join(f"{t} seed {s}" for t, s in failed)]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--jobs", type=int, default=2, help="runs at the same time, one torch thread each")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "seeds")
    p.add_argument("--preset", choices=MINIATURE_PRESETS, default="tiny")
    p.add_argument("--write-table", action="store_true", help=f"also write {PACKAGED_TABLE.relative_to(REPO)}")
    p.add_argument("--table", type=Path, default=PACKAGED_TABLE, help="where --write-table writes")
    p.add_argument("--set", nargs="+", default=[], metavar="key=value", dest="overrides",
                   help="config overrides for every run, e.g. optim.lr=5e-4 (recorded in the summary)")
    args = p.parse_args(argv)
    if args.jobs < 1 or len(set(args.seeds)) != len(args.seeds):
        p.error("--jobs must be >= 1 and --seeds distinct")
    if args.write_table and args.preset != "tiny" and args.table.resolve() == PACKAGED_TABLE:
        p.error(f"--write-table: only a tiny measurement goes into {PACKAGED_TABLE.relative_to(REPO)} "
                f"(give --table FILE for a {args.preset} one)")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file")
    if args.write_table and args.overrides and args.table.resolve() == PACKAGED_TABLE:
        p.error("--write-table: the packaged table is for the preset as shipped, not with --set "
                "(give --table FILE)")
    tasks, seeds = list(dict.fromkeys(args.tasks)), args.seeds
    try:
        check_overrides(args.out, args.overrides)
    except UserError as exc:
        p.error(str(exc))
    commit = git_commit()  # the code the runs start with (not what the tree holds when they end)
    failed = run_all(args.out, tasks, seeds, args.preset, args.jobs, args.overrides)
    rows = summarize(collect(args.out, tasks, seeds))
    stamp = {"machine": machine(args.jobs), "commit": commit,
             "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_summary(args.out, rows, stamp, args.preset, failed, args.overrides)
    print(f"wrote {args.out / 'summary.csv'} and {args.out / 'summary.md'}")
    if args.write_table:
        _write_csv(args.table, [{**r, **stamp} for r in rows], TABLE_COLUMNS)
        print(f"wrote {args.table}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
