"""The expected range of a `tiny` result: what several seeds of the same recipe gave.

A tiny search is one draw: its metric moves with the seed and with the machine's floating-point
summation order. ``hrnas/configs/tiny_expected.csv`` (written by the multi-seed script, never by hand)
holds, per task and metric, the mean, standard deviation, minimum and maximum over ``n`` seeds, with the
machine, commit and date that produced them. Columns, in this order:
``task,metric,mean,std,min,max,n,seeds,machine,commit,date``; ``task`` is the task name (``cityscapes``),
``metric`` the name a task notebook records with ``record_metrics`` (``mIoU``, ``top-1``, ``AP``,
``BEV AP Car moderate (R40)``) in the same unit (percent).

`expected_range(task, metric)` reads one row (None when the file or the row is missing);
`describe_expected(task, metric, value, preset)` is the line the task notebooks print next to their
own number. Nothing here invents a range: without a row the line says so.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from hrnas.errors import UserError

EXPECTED_FILE = Path(__file__).resolve().parent / "configs" / "tiny_expected.csv"
COLUMNS = ("task", "metric", "mean", "std", "min", "max", "n", "seeds", "machine", "commit", "date")
PRESET = "tiny"  # the only preset the table describes
NO_TABLE = "no multi-seed table for this preset yet"
# The final metrics of a tiny search (``run.json`` key -> (the name the task notebook records, the scale to
# its unit: percent)). The multi-seed script writes the table under these names.
RUN_METRICS = {
    "imagenet": {"top1": ("top-1", 1), "top5": ("top-5", 1)},
    "cityscapes": {"mIoU": ("mIoU", 100), "mAcc": ("mAcc", 100), "aAcc": ("aAcc", 100)},
    "ade20k": {"mIoU": ("mIoU", 100), "mAcc": ("mAcc", 100), "aAcc": ("aAcc", 100)},
    "coco": {"AP": ("AP", 100), "AP50": ("AP50", 100), "AR": ("AR", 100)},
    "kitti": {"Car_bev_R40_moderate": ("BEV AP Car moderate (R40)", 1),
              "Car_3d_R40_moderate": ("3D AP Car moderate", 1)},
}


@dataclass(frozen=True)
class ExpectedRange:
    """One row of the multi-seed table."""

    task: str
    metric: str
    mean: float
    std: float
    min: float
    max: float
    n: int
    seeds: str
    machine: str
    commit: str
    date: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within [min, max]."""
        return self.min <= value <= self.max

    def format(self, unit: str = "", digits: int = 1) -> str:
        """``"expected at tiny: 17.5 ± 2.1 % (min 14.0, max 20.3, 5 seeds, <machine>)"``."""
        u = f" {unit}" if unit else ""
        return (f"expected at {PRESET}: {self.mean:.{digits}f} ± {self.std:.{digits}f}{u} (min {self.min:.{digits}f}, "
                f"max {self.max:.{digits}f}, {self.n} seeds, {self.machine})")


def _number(row: dict, column: str, path: Path, line: int, kind=float):
    text = (row.get(column) or "").strip()
    try:
        value = kind(text)
    except ValueError:
        raise UserError(f"{path} line {line}: column {column} = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{path} line {line}: column {column} = {text!r} is not finite")
    return value


def read_expected(path=None) -> dict[tuple[str, str], ExpectedRange]:
    """Every row of the table, keyed by (task, metric); {} when the file does not exist."""
    path = Path(path) if path is not None else EXPECTED_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise UserError(f"{path}: columns must be exactly {','.join(COLUMNS)} "
                            f"(found {','.join(reader.fieldnames or ())})")
        rows = {}
        for line, row in enumerate(reader, start=2):
            key = (row["task"].strip(), row["metric"].strip())
            if key in rows:
                raise UserError(f"{path} line {line}: a second row for task {key[0]!r}, metric {key[1]!r}")
            n = _number(row, "n", path, line, int)
            if n < 1:
                raise UserError(f"{path} line {line}: column n = {n} must be >= 1")
            values = {c: _number(row, c, path, line) for c in ("mean", "std", "min", "max")}
            if not values["min"] <= values["mean"] <= values["max"] or values["std"] < 0:
                raise UserError(f"{path} line {line}: needs min <= mean <= max and std >= 0, got {values}")
            rows[key] = ExpectedRange(task=key[0], metric=key[1], n=n, seeds=row["seeds"].strip(),
                                      machine=row["machine"].strip(), commit=row["commit"].strip(),
                                      date=row["date"].strip(), **values)
    return rows


def expected_range(task: str, metric: str, path=None) -> ExpectedRange | None:
    """The multi-seed row of ``task`` / ``metric`` at preset tiny, or None when the table or the row is missing."""
    return read_expected(path).get((task, metric))


def describe_expected(task: str, metric: str, value: float, preset: str, unit: str = "", path=None,
                      digits: int = 1) -> str:
    """One line: this run's ``value`` and, at preset tiny, the range several seeds gave (or that there is none)."""
    u = f" {unit}" if unit else ""
    ours = f"{metric} {value:.{digits}f}{u} (this run, one seed)"
    row = expected_range(task, metric, path) if preset == PRESET else None
    if row is None:
        return f"{ours}; {NO_TABLE}"
    where = "inside" if row.contains(value) else "outside"
    return f"{ours}; {row.format(unit, digits)}; this run is {where} the seeds' range"


__all__ = ["COLUMNS", "EXPECTED_FILE", "NO_TABLE", "RUN_METRICS", "ExpectedRange", "read_expected", "expected_range",
           "describe_expected"]
