"""The supplement's ablations on Cityscapes (Tables 1 and 2) by its protocol (§3).

1. **Baseline search**: Cityscapes searched in the multi-branch + MixConv space *without* attention down
   to the paper's baseline cost, 1.863 G multiply-adds at 512×1024 in the authors' profiler convention
   (``search.budget_macs`` at ``search.budget_size``), exported as an arch spec (:func:`baseline_arch`;
   or a given one, ``arch=``).
2. **Rows**: the baseline architecture plus the row's module (:data:`MODULES`) in the same blocks,
   retrained from scratch with the same recipe for every row and every seed (:func:`train_rows`).
   Table 1 varies the transformer's projection size s (n = 8, encoder + decoder, channel tokens); Table 2
   compares SE, Non-local and the transformer's variants (n = 8, s = 8). Rows of the two tables with the
   same module are one experiment, trained once (same run folder).
3. **Table**: Params / FLOPs (authors' convention) of each row's network at 512×1024, mIoU/mAcc/aAcc as
   mean ± std over the seeds, the paired difference to the Baseline (mean and 95 % t-interval over
   seeds), the paper's values alongside (:func:`build_table`), and Δ mIoU against the added cost
   (:func:`plot_deltas`).

Where the modules go (docs/design.md, "Ablation modules"): the transformer in the 44 residual blocks
(n tokens each, ``model.placement=res``); SE as the authors' fused retraining block (SE on the kernel
paths' hidden features, bottleneck round(0.5 · block input), every searching block); Non-local in the
11 residual blocks of the 1/8 branch, inner width round(3.5 · C), zero-initialised output BN. The recipes
per preset are in
``hrnas/configs/ablation.yaml``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from hrnas.engine.config import _yaml, load_config
from hrnas.errors import UserError
from hrnas.models import PAPER_SIZES, build_model
from hrnas.profile import profile
from hrnas.viz.tables import paper_table

TASK = "cityscapes"
TABLES = ("table1", "table2")
METRICS = (("mIoU", "mIoU"), ("mACC", "mAcc"), ("aACC", "aAcc"))  # (paper's column, our metric key)
UNITS = {"Params": "M", "FLOPs": "G"}
PLOT_COST = {"table1": "Params", "table2": "FLOPs"}  # the cost each table's rows mainly differ in
CONFIDENCE = 0.95
# Torch threads of every run (the search and each retraining): CPU kernels split their sums by thread (a
# two-thread search found another baseline), so with one thread whatever --jobs and the cores are,
# `hrnas ablation` prints the tables of notebooks 10/11 (one-thread kernels in `make reproduce`).
THREADS = 1


@dataclass(frozen=True)
class Module:
    """What a row adds to the searched baseline. ``kind``: none | transformer | se | nonlocal."""

    kind: str = "none"
    tokens: int = 8
    proj: int = 8
    decoder: bool = True
    token_mode: str = "channel"

    @property
    def key(self) -> str:
        """The experiment's name (its run folder): rows with equal modules share it."""
        if self.kind != "transformer":
            return {"none": "baseline", "se": "se", "nonlocal": NONLOCAL_KEY}[self.kind]
        return f"transformer_n{self.tokens}_s{self.proj}_{'encdec' if self.decoder else 'enc'}_{self.token_mode}"


# The authors' fused SE (their retraining block): on the hidden features, bottleneck round(0.5·inp), every block.
SE_OPTIONS = {"se_ratio": 0.5, "se_on": "hidden", "se_placement": "res+down"}
ATTENTION_PLACEMENT = "res"  # the 44 residual blocks (the transformer); Non-local: those of one branch
# Non-local in the 11 residual blocks of the 1/8 branch with inner width round(3.5·C): the one placement
# whose FLOPs/params ratio is the paper's (2×2-pooled keys at 1/8: 5,120 MACs per weight; paper 1.088 G /
# 0.197 M = 5,523), the width then setting the params (docs/design.md, "Ablation modules").
NONLOCAL_OPTIONS = {"placement": "res", "attention_branches": [1], "nonlocal_ratio": 3.5}
NONLOCAL_KEY = "nonlocal_b1_r3.5"

MODULES = {
    "table1": {"Baseline": Module(), **{f"s={s}x{s}": Module("transformer", proj=s) for s in (2, 4, 8, 16)}},
    "table2": {
        "Baseline": Module(),
        "SE": Module("se"),
        "Non-local": Module("nonlocal"),
        "Enc (spatial)": Module("transformer", decoder=False, token_mode="spatial"),
        "Enc (channel)": Module("transformer", decoder=False, token_mode="channel"),
        "Enc + Dec (spatial)": Module("transformer", decoder=True, token_mode="spatial"),
        "Enc + Dec (channel)": Module("transformer", decoder=True, token_mode="channel"),
    },
}


def rows_of(table: str) -> dict[str, Module]:
    """The paper's row label → module of ``table`` ("table1" | "table2")."""
    if table not in MODULES:
        raise UserError(f"ablation table {table!r}: choose one of {', '.join(TABLES)}")
    rows = MODULES[table]
    paper_rows = list(paper_table(table)["variant"])
    assert list(rows) == paper_rows, f"{table}: rows must follow the paper's table {paper_rows}"
    return rows


# ---- presets ------------------------------------------------------------------------------------
def ablation_presets() -> dict[str, dict]:
    """The presets of ``hrnas/configs/ablation.yaml``: recipe, seeds, seed, search and train overrides."""
    text = resources.files("hrnas.configs").joinpath("ablation.yaml").read_text(encoding="utf-8")
    return _yaml(text, "hrnas/configs/ablation.yaml")


def ablation_preset(name: str) -> dict:
    presets = ablation_presets()
    if name not in presets:
        raise UserError(f"--preset {name!r}: the ablation presets are {', '.join(presets)}")
    return presets[name]


# ---- architectures ------------------------------------------------------------------------------
def check_baseline(spec: dict, source: str = "arch") -> dict:
    """A Cityscapes arch spec without attention (the baseline every row adds its module to)."""
    from hrnas.models import validate_arch

    validate_arch(spec, TASK, source)
    if spec["model"].get("attention", "none") != "none" or any(b.get("tokens", 0) for b in spec["blocks"]):
        raise UserError(f"{source}: the ablation baseline must be searched without attention "
                        f"(model.attention={spec['model'].get('attention')!r}); search with model.attention=none")
    return spec


def row_arch(baseline: dict, module: Module) -> dict:
    """The baseline arch spec with ``module`` added (the transformer in the residual blocks, Non-local in
    those of the 1/8 branch)."""
    spec = copy.deepcopy(baseline)
    if module.kind == "nonlocal":
        spec["model"].update(attention="nonlocal", **NONLOCAL_OPTIONS)
    if module.kind == "transformer":
        spec["model"].update(attention="transformer", placement=ATTENTION_PLACEMENT, tokens=module.tokens,
                             proj=module.proj, decoder=module.decoder, token_mode=module.token_mode)
        for block in spec["blocks"]:  # n tokens in every residual block (stride 1, same width)
            residual = block["stride"] == 1 and block["inp"] == block["oup"]
            block["tokens"] = module.tokens if residual and ATTENTION_PLACEMENT == "res" else 0
    return spec


def row_overrides(module: Module) -> list[str]:
    """Recipe overrides of the row's retraining: SE is a retraining option (hrnas.models.RETRAIN_OPTIONS)."""
    if module.kind != "se":
        return []
    return [f"model.{k}={v}" for k, v in SE_OPTIONS.items()]


def row_model(baseline: dict, module: Module):
    """The network of the row (baseline + module)."""
    options = SE_OPTIONS if module.kind == "se" else {}
    return build_model(TASK, arch=row_arch(baseline, module), **options)


def row_costs(table: str, baseline: dict) -> pd.DataFrame:
    """Params (M) and FLOPs (G multiply-adds, the authors' profiler convention) of every row's network
    (the searched baseline plus the module) at the paper's size, 512×1024."""
    size = PAPER_SIZES[TASK]
    rows = {}
    for label, module in rows_of(table).items():
        p = profile(row_model(baseline, module), size, convention="hrnas")
        rows[label] = {"Params": p.params / 1e6, "FLOPs": p.macs / 1e9}
    return pd.DataFrame(rows).T


# ---- runs ---------------------------------------------------------------------------------------
def _experiment(mode: str, run_dir: Path, recipe: str, root: Path, overrides: list, arch=None,
                progress: bool = False) -> dict:
    """One run (search or retraining) in ``run_dir``; a finished identical run there is reused."""
    from hrnas.experiment import find_identical_run, run_experiment

    cfg = load_config(TASK, recipe, overrides)
    if mode == "train":
        cfg["search"]["enabled"] = False
    same = find_identical_run([run_dir], mode, cfg, root, arch)
    if same is not None:
        return same
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished or different run: start afresh
    return run_experiment(TASK, mode, out=run_dir, data_root=root, preset=recipe, overrides=overrides,
                          arch=arch, progress=progress)


def baseline_arch(preset: str = "tiny", data_root=None, out_dir="runs/ablation", progress: bool = False,
                  seed: int | None = None) -> dict:
    """Search the baseline (no attention, the paper's MACs budget at 512×1024) in
    ``<out_dir>/baseline_search`` (reused when it finished with the same recipe) and return its final
    architecture, also written to ``<out_dir>/baseline_arch.json``."""
    from hrnas.models import save_arch
    from hrnas.experiment import resolve_data_root

    p = ablation_preset(preset)
    root = resolve_data_root(TASK, p["recipe"], data_root)
    run_dir = Path(out_dir) / "baseline_search"
    overrides = [f"train.seed={p['seed'] if seed is None else seed}", "search.export=final", *p["search"]]
    with one_thread():
        _experiment("search", run_dir, p["recipe"], root, overrides, progress=progress)
    spec = check_baseline(json.loads((run_dir / "arch.json").read_text()), str(run_dir / "arch.json"))
    save_arch(spec, Path(out_dir) / "baseline_arch.json")
    return spec


@contextlib.contextmanager
def one_thread():
    """Torch's intra-op threads set to :data:`THREADS` for the enclosed runs, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:  # the caller's setting back (a notebook's kernel, the CLI's process)
        torch.set_num_threads(before)


def _train_one(job: dict) -> dict:
    """Retrain one (row, seed), in a worker of the pool or in the calling process."""
    with one_thread():
        result = _experiment("train", Path(job["run_dir"]), job["recipe"], Path(job["root"]), job["overrides"],
                             arch=job["arch"], progress=job["progress"])
    return {"metrics": result["metrics"], "run_dir": result["run_dir"], "reused": bool(result.get("reused")),
            "wall_time_s": result.get("wall_time_s")}


def train_rows(table: str, baseline: dict, *, preset: str = "tiny", data_root=None, out_dir="runs/ablation",
               seeds: int | None = None, seed: int | None = None, jobs: int = 1,
               progress: bool = False, costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Retrain every row of ``table`` for every seed (``seed``, ``seed + 1``, ...; default: the preset's
    first) in ``<out_dir>/<experiment>/seed<k>``; a finished identical run is reused (Table 2 reuses Table
    1's Baseline and s=8×8). ``jobs`` > 1: the runs start largest first (:func:`longest_first` of the rows'
    ``costs["Params"]``, :func:`row_costs`), which changes no result (one seed and one thread each).
    Returns one line per (row, seed): mIoU/mACC/aACC in %, the run folder and whether it was reused."""
    from hrnas.experiment import resolve_data_root

    p = ablation_preset(preset)
    seeds = p["seeds"] if seeds is None else seeds
    if not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds {seeds}: give an integer >= 1")
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs}: give an integer >= 1")
    root = resolve_data_root(TASK, p["recipe"], data_root)
    jobs_list, keys = [], []
    for label, module in rows_of(table).items():
        for k in range(seeds):
            seed_k = (p["seed"] if seed is None else seed) + k
            keys.append((label, seed_k))
            jobs_list.append({"run_dir": str(Path(out_dir) / module.key / f"seed{seed_k}"), "recipe": p["recipe"],
                              "root": str(root), "arch": row_arch(baseline, module), "progress": progress,
                              "overrides": [f"train.seed={seed_k}", *p["train"], *row_overrides(module)]})
    if jobs == 1:
        results = [_train_one(job) for job in jobs_list]
    else:
        params = (row_costs(table, baseline) if costs is None else costs)["Params"]
        order = longest_first([params[label] for label, _ in keys])
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            done = dict(zip(order, pool.map(_train_one, [jobs_list[i] for i in order])))
        results = [done[i] for i in range(len(jobs_list))]
    lines = []
    for (label, seed), res in zip(keys, results):
        lines.append({"row": label, "seed": seed,
                      **{f"{name}(%)": 100 * res["metrics"][key] for name, key in METRICS},
                      "run_dir": res["run_dir"], "reused": res["reused"], "wall_time_s": res["wall_time_s"]})
    return pd.DataFrame(lines)


def longest_first(weights) -> list[int]:
    """Indices of ``weights`` by decreasing weight, ties kept in order (longest processing time first: a pool
    taking the next job when free then ends near its mean load). A row weighs its parameters (tiny, one
    thread: s = 16's 13.3 M take 78-90 s, the Baseline's 1.7 M 20-40 s, the others 23-55 s)."""
    return sorted(range(len(weights)), key=lambda i: -weights[i])


# ---- statistics ---------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n − 1; NaN for one value) and count."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def paired_difference(values, baseline, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``values − baseline`` (paired by seed) and its two-sided
    ``confidence`` Student-t interval (NaN bounds for one seed)."""
    from scipy import stats

    d = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


# ---- the table ----------------------------------------------------------------------------------
def build_table(table: str, costs: pd.DataFrame, scores: pd.DataFrame, label: str):
    """Ours next to the paper's: ``Input size`` (the paper's row header), Params, FLOPs, the metrics'
    means, then their std, the paired Δ to the Baseline with its 95 % interval, ``seeds``, then the
    paper's columns (prefix ``paper``). Returns (table, caption)."""
    rows = rows_of(table)
    paper = paper_table(table).set_axis(paper_table(table).attrs["paper_columns"], axis=1)
    base = scores[scores["row"] == "Baseline"].sort_values("seed")
    records = []
    for label_ in rows:
        mine = scores[scores["row"] == label_].sort_values("seed")
        if list(mine["seed"]) != list(base["seed"]):
            raise UserError(f"{table} row {label_!r}: seeds {list(mine['seed'])} differ from the Baseline's")
        rec = {"Input size": label_, "Params": costs.loc[label_, "Params"], "FLOPs": costs.loc[label_, "FLOPs"]}
        stats_ = {}
        for name, _ in METRICS:
            col = f"{name}(%)"
            mean, std, n = mean_std(mine[col])
            d, lo, hi = paired_difference(mine[col], base[col])
            rec[col] = mean
            stats_.update({f"{col} std": std, f"Δ {col}": d, f"Δ {col} lo": lo, f"Δ {col} hi": hi})
        records.append({**rec, **stats_, "seeds": n})
    ours = pd.DataFrame(records)
    theirs = paper.add_prefix("paper ").rename(columns={"paper Input size": "Input size"})
    merged = ours.merge(theirs, on="Input size")
    for column in merged.columns[1:]:
        merged[column] = pd.to_numeric(merged[column])
    merged["paper Δ mIoU(%)"] = merged["paper mIoU(%)"] - merged["paper mIoU(%)"].iloc[0]
    paper_cols = [c for c in merged.columns if c.startswith("paper ")]
    merged = merged[[c for c in merged.columns if not c.startswith("paper ")] + paper_cols]
    size = PAPER_SIZES[TASK]
    n = int(ours["seeds"].iloc[0])
    caption = (f"{paper_table(table).attrs['caption']} Ours ({label}): Params (M) / FLOPs (G multiply-adds, "
               f"authors' profiler) of the searched baseline plus each module at {size[0]}x{size[1]}; "
               f"mIoU/mACC/aACC (%) mean over {n} seeds (std: sample standard deviation), Δ: paired "
               f"difference to the Baseline with its {int(CONFIDENCE * 100)} % t-interval (lo, hi). "
               f"Columns 'paper ...': {paper_table(table).attrs['source']} (not ours; one number per row).")
    return merged, caption


def plot_deltas(merged: pd.DataFrame, table: str, label: str, path=None):
    """Δ mIoU to the Baseline against the cost each row adds (log axis): ours (mean with its 95 %
    interval) and the paper's side by side; rows of equal cost are drawn side by side. Rows adding no
    cost (≤ 0) cannot sit on a log axis and are listed in the panel instead, with their cost and Δ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hrnas.viz.plots import dodge_log, label_points, save_figure

    cost = PLOT_COST[table]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    panels = ((axes[0], "", f"ours ({label})", "Δ mIoU(%)"), (axes[1], "paper ", "paper (supplement)",
                                                               "paper Δ mIoU(%)"))
    for ax, prefix, title, dcol in panels:
        ax.set_xscale("log")
        rows = merged.iloc[1:]
        added = rows[f"{prefix}{cost}"] - merged[f"{prefix}{cost}"].iloc[0]
        ok = added > 0
        x, y = dodge_log(added[ok]), rows[dcol][ok]  # rows of equal cost side by side
        if not prefix:
            lo, hi = rows["Δ mIoU(%) lo"][ok], rows["Δ mIoU(%) hi"][ok]
            err = np.vstack([y - lo, hi - y]) if np.isfinite(lo).all() else None
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=4, color="tab:blue")
        else:
            ax.plot(x, y, "s", color="tab:orange")
        label_points(ax, list(x), list(y), list(rows["Input size"][ok]))
        skipped = [f"{name} ({a:+.3f} {UNITS[cost]}, Δ {d:+.2f})"
                   for name, a, d in zip(rows["Input size"][~ok], added[~ok], rows[dcol][~ok])]
        if skipped:
            ax.text(0.02, 0.02, "no added cost, not on the log axis: " + ", ".join(skipped),
                    transform=ax.transAxes, fontsize=7)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"{cost} added to the Baseline ({UNITS[cost]})")
        ax.set_ylabel("Δ mIoU to the Baseline (points)")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{'Table 1' if table == 'table1' else 'Table 2'}: change to the searched Baseline", fontsize=11)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _stem(table: str, preset: str) -> str:
    return f"ablation_{table}_{re.sub(r'[^A-Za-z0-9_-]+', '_', preset)}"


def run_table(table: str, *, preset: str = "tiny", data_root=None, seeds: int | None = None,
              seed: int | None = None, arch=None,
              out_dir="runs/ablation", figures_dir=None, jobs: int = 1, progress: bool = False,
              stem: str | None = None) -> dict:
    """The whole ablation: baseline (searched, or ``arch``), rows × seeds retrained, costs, the table
    (CSV/Markdown/LaTeX in ``figures_dir``, default ``out_dir``) and the Δ plot. Returns
    ``{"table", "caption", "scores", "costs", "baseline", "paths", "figure", "wall_time_s", "label",
    "chance_mIoU", "synthetic"}``."""
    from hrnas.data.synthetic import read_marker
    from hrnas.models import load_arch
    from hrnas.experiment import data_label, resolve_data_root
    from hrnas.viz.tables import save_table

    rows_of(table)
    p = ablation_preset(preset)
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise UserError(f"--seeds {seeds}: give an integer >= 1")
    spec = None  # a given arch is checked before any data is generated or read
    if arch is not None:
        spec = check_baseline(load_arch(arch) if isinstance(arch, (str, Path)) else arch, str(arch))
    root = resolve_data_root(TASK, p["recipe"], data_root)
    start = time.perf_counter()
    if spec is None:
        spec = baseline_arch(preset, root, out_dir, progress=progress, seed=seed)
    costs = row_costs(table, spec)
    scores = train_rows(table, spec, preset=preset, data_root=root, out_dir=out_dir, seeds=seeds, seed=seed,
                        jobs=jobs, progress=progress, costs=costs)
    synthetic = read_marker(root) is not None
    label = data_label(synthetic, preset)
    merged, caption = build_table(table, costs, scores, label)
    chance = chance_miou(root)
    caption += f" Chance level of our mIoU (a prediction ignoring the image, classes drawn from the training labels' frequencies): {chance:.2f} %."
    figures_dir = Path(figures_dir if figures_dir is not None else out_dir)
    stem = stem or _stem(table, preset)
    paths = save_table(merged, stem, figures_dir, caption=caption, float_format=".3f")
    fig = plot_deltas(merged, table, label, figures_dir / f"{stem}.png")
    return {"table": merged, "caption": caption, "scores": scores, "costs": costs, "baseline": spec,
            "paths": paths, "figure": fig, "wall_time_s": time.perf_counter() - start, "label": label,
            "chance_mIoU": chance, "synthetic": synthetic}


def chance_miou(root) -> float:
    """mIoU (%) of a prediction that ignores the image: every pixel's class drawn from the training
    labels' class frequencies q, scored on the validation labels (frequencies p). Its expected IoU per
    class is p·q / (p + q − p·q), averaged over the classes with a non-empty union (as the metric does)."""
    from PIL import Image

    def frequencies(split: str) -> np.ndarray:
        counts = np.zeros(256, np.int64)
        files = sorted((Path(root) / "gtFine" / split).glob("*/*_gtFine_labelTrainIds.png"))
        if not files:
            raise UserError(f"{root}: no gtFine/{split}/*/*_gtFine_labelTrainIds.png label files")
        for f in files:
            counts += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=256)
        counts = counts[:19].astype(float)
        return counts / counts.sum()

    p, q = frequencies("val"), frequencies("train")
    union = p + q - p * q
    present = union > 0
    return float(100 * np.mean(p[present] * q[present] / union[present]))
