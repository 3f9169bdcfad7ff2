"""The supplement's transformer ablations on Cityscapes (Tables 1 and 2): one short training run of the
super network per table row, its cost at the paper's input size, and our table next to the paper's.

Table 1 varies the projection size s of the lightweight transformer (n = 8 queries, encoder + decoder,
channel tokens); Table 2 compares no attention, SE, Non-local and the transformer as encoder or
encoder + decoder with spatial or channel tokens (n = 8, s = 8). Each row is a set of recipe
overrides; the rows train the whole super network without the search (``search.enabled=false``).

Two rows with the same resolved recipe are the same experiment (Table 1's Baseline and s=8×8 are
Table 2's Baseline and Enc + Dec (channel)): :func:`run_rows` reuses a finished run with an identical
configuration and dataset from ``reuse_from`` instead of training it again.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hrnas.engine.config import load_config
from hrnas.errors import UserError
from hrnas.models import PAPER_SIZES, build_model
from hrnas.profile import profile
from hrnas.viz.tables import paper_table

TASK = "cityscapes"
METRICS = (("mIoU", "mIoU"), ("mACC", "mAcc"), ("aACC", "aAcc"))  # (paper's column, our metric key)
UNITS = {"Params": "M", "FLOPs": "G"}


@dataclass(frozen=True)
class Ablation:
    """One of the supplement's ablation tables: the recipe overrides of every row."""

    table: str                     # "table1" | "table2" (hrnas.viz.tables.paper_table)
    common: tuple[str, ...]        # overrides of every row
    rows: dict[str, tuple[str, ...]]  # the paper's row label -> its own overrides

    def overrides(self, row: str) -> list[str]:
        return [*self.common, *self.rows[row]]


ABLATIONS = {
    "table1": Ablation("table1", ("model.tokens=8", "model.decoder=true", "model.token_mode=channel"), {
        "Baseline": ("model.attention=none", "model.proj=8"),  # proj unused; = Table 2's Baseline recipe
        "s=2x2": ("model.attention=transformer", "model.proj=2"),
        "s=4x4": ("model.attention=transformer", "model.proj=4"),
        "s=8x8": ("model.attention=transformer", "model.proj=8"),
        "s=16x16": ("model.attention=transformer", "model.proj=16"),
    }),
    "table2": Ablation("table2", ("model.tokens=8", "model.proj=8"), {
        "Baseline": ("model.attention=none", "model.decoder=true", "model.token_mode=channel"),
        "SE": ("model.attention=none", "model.se_ratio=0.25", "model.se_on=output", "model.se_placement=res"),
        "Non-local": ("model.attention=nonlocal",),
        "Enc (spatial)": ("model.attention=transformer", "model.decoder=false", "model.token_mode=spatial"),
        "Enc (channel)": ("model.attention=transformer", "model.decoder=false", "model.token_mode=channel"),
        "Enc + Dec (spatial)": ("model.attention=transformer", "model.decoder=true", "model.token_mode=spatial"),
        "Enc + Dec (channel)": ("model.attention=transformer", "model.decoder=true", "model.token_mode=channel"),
    }),
}


def get_ablation(table: str) -> Ablation:
    if table not in ABLATIONS:
        raise UserError(f"ablation table {table!r}: choose one of {', '.join(ABLATIONS)}")
    ablation = ABLATIONS[table]
    paper_rows = list(paper_table(table)["variant"])
    assert list(ablation.rows) == paper_rows, f"{table}: rows must follow the paper's table {paper_rows}"
    return ablation


def row_costs(table: str, preset: str = "tiny") -> pd.DataFrame:
    """Params (M) and FLOPs (G multiply-adds, the authors' profiler convention) of every row's full super
    network at the paper's Cityscapes input size, with the paper's expansion ratio 4."""
    ablation = get_ablation(table)
    size = PAPER_SIZES[TASK]
    rows = {}
    for row in ablation.rows:
        options = {**load_config(TASK, preset, ablation.overrides(row))["model"], "expand_ratio": 4}
        p = profile(build_model(TASK, **options), size, convention="hrnas")
        rows[row] = {"Params": p.params / 1e6, "FLOPs": p.macs / 1e9}
    return pd.DataFrame(rows).T


def _run_dir_name(row: str) -> str:
    return re.sub(r"\W+", "_", row).strip("_")


def run_rows(table: str, *, preset: str = "tiny", data_root=None, out_dir="runs", seed: int = 1995,
             overrides=(), progress: bool = True, reuse_from=()) -> pd.DataFrame:
    """Train every row of ``table`` (fresh runs in ``<out_dir>/<row>``) and return mIoU/mACC/aACC (%).

    ``reuse_from``: folders of earlier ablation runs (e.g. Table 1's); a finished run there whose
    resolved recipe and dataset equal a row's is reused instead of retrained. The ``reused_from``
    column names it.
    """
    from hrnas.tasks.runner import resolve_data_root, run_experiment

    ablation = get_ablation(table)
    root = resolve_data_root(TASK, preset, data_root)
    scores = {}
    for row in ablation.rows:
        run_dir = Path(out_dir) / _run_dir_name(row)
        shutil.rmtree(run_dir, ignore_errors=True)  # a table run starts fresh
        result = run_experiment(TASK, "search", out=run_dir, data_root=root, preset=preset, progress=progress,
                                overrides=[f"train.seed={seed}", "search.enabled=false", *ablation.overrides(row),
                                           *overrides], reuse=reuse_from)
        scores[row] = {**{f"{name}(%)": 100 * result["metrics"][key] for name, key in METRICS},
                       "reused_from": result["run_dir"] if result.get("reused") else None}
    return pd.DataFrame(scores).T


def compare_with_paper(table: str, costs: pd.DataFrame, scores: pd.DataFrame, label: str):
    """Our rows next to the paper's (``paper ...`` columns) and a caption saying which is whose."""
    paper = paper_table(table)
    ours = pd.DataFrame([{"Input size": row, **costs.loc[row], **scores.loc[row].drop("reused_from")}
                         for row in get_ablation(table).rows])
    theirs = paper.set_axis(paper.attrs["paper_columns"], axis=1)
    merged = ours.merge(theirs.add_prefix("paper ").rename(columns={"paper Input size": "Input size"}),
                        on="Input size")
    for column in merged.columns[1:]:
        merged[column] = pd.to_numeric(merged[column])
    size = PAPER_SIZES[TASK]
    caption = (f"{paper.attrs['caption']} Ours ({label}): Params (M) / FLOPs (G multiply-adds, authors' "
               f"profiler) of the full super network at {size[0]}x{size[1]}; mIoU/mACC/aACC from short runs. "
               f"Columns 'paper ...': {paper.attrs['source']} (not ours).")
    return merged, caption


def cost_vs_miou(merged: pd.DataFrame, cost: str, label: str) -> pd.DataFrame:
    """Long table for :func:`hrnas.viz.metric_vs_cost`: cost added to the Baseline vs. mIoU, ours and
    the paper's."""
    added = f"{cost} added to the Baseline ({UNITS[cost]})"
    return pd.concat([
        pd.DataFrame({"variant": merged["Input size"], added: merged[col] - merged[col].iloc[0],
                      "mIoU (%)": merged[miou], "source": source})
        for col, miou, source in ((cost, "mIoU(%)", f"ours ({label})"),
                                  (f"paper {cost}", "paper mIoU(%)", "paper (supplement)"))
    ], ignore_index=True)
