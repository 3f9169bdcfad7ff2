"""benchmarks/tiny_seeds.py on the smoke preset: two seeds of one task, the summary's arithmetic checked
against the runs' own run.json, the table's columns, and that a second call repeats nothing."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tiny_seeds", REPO / "benchmarks" / "tiny_seeds.py")
tiny_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_seeds)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_summarize_arithmetic():
    rows = tiny_seeds.summarize({("coco", "AP"): {1: 1.0, 2: 2.0, 3: 4.0}, ("coco", "AR"): {7: 5.0}})
    ap, ar = rows
    assert (ap["task"], ap["metric"], ap["n"], ap["seeds"]) == ("coco", "AP", 3, "1 2 3")
    assert ap["mean"] == pytest.approx(7 / 3) and ap["std"] == pytest.approx(math.sqrt(7 / 3))  # ddof 1
    assert (ap["min"], ap["max"], ap["values"]) == (1.0, 4.0, "1:1 2:2 3:4")
    assert ar["n"] == 1 and math.isnan(ar["std"]) and ar["mean"] == ar["min"] == ar["max"] == 5.0


def test_smoke_seeds_summary_table_and_resume(tmp_path, capsys):
    out, table = tmp_path / "seeds", tmp_path / "expected.csv"
    argv = ["--preset", "smoke", "--tasks", "cityscapes", "--seeds", "1", "2", "--jobs", "2", "--out", str(out),
            "--write-table", "--table", str(table)]
    assert tiny_seeds.main(argv) == 0
    runs = {s: json.loads((out / "cityscapes" / f"seed{s}" / "run.json").read_text()) for s in (1, 2)}
    assert {s: r["config"]["train"]["seed"] for s, r in runs.items()} == {1: 1, 2: 2}
    assert all(r["status"] == "finished" and r["preset"] == "smoke" for r in runs.values())

    summary = {r["metric"]: r for r in _rows(out / "summary.csv")}
    assert set(summary) == {"mIoU", "mAcc", "aAcc", "macs_ratio", "wall_time_s"}
    expected = {m: [100 * r["metrics"][m] for r in runs.values()] for m in ("mIoU", "mAcc", "aAcc")}
    expected["macs_ratio"] = [r["profile"]["macs_ratio"] for r in runs.values()]
    expected["wall_time_s"] = [r["wall_time_s"] for r in runs.values()]
    for metric, values in expected.items():
        row = summary[metric]
        assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-12, abs=1e-12)
        assert float(row["std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12, abs=1e-12)
        assert (float(row["min"]), float(row["max"])) == pytest.approx((min(values), max(values)))
        assert (row["n"], row["seeds"], row["task"]) == ("2", "1 2", "cityscapes")
    assert 0 < float(summary["macs_ratio"]["max"]) < 1

    table_rows = _rows(table)
    assert list(table_rows[0]) == list(tiny_seeds.TABLE_COLUMNS)
    assert [(r["metric"], r["mean"]) for r in table_rows] == [(r["metric"], r["mean"]) for r in summary.values()]
    assert table_rows[0]["machine"].endswith("1 thread per run, 2 runs at a time") and table_rows[0]["commit"]
    md = (out / "summary.md").read_text()
    assert "| cityscapes | mIoU |" in md and "machine: " in md and "commit: " in md

    # resumable: a second call starts nothing and leaves the runs as they were
    stamps = {s: (out / "cityscapes" / f"seed{s}" / "run.json").stat().st_mtime_ns for s in (1, 2)}
    capsys.readouterr()
    assert tiny_seeds.main(argv) == 0
    assert "2 of 2 runs already finished; 0 to run" in capsys.readouterr().out
    assert {s: (out / "cityscapes" / f"seed{s}" / "run.json").stat().st_mtime_ns for s in (1, 2)} == stamps
    assert [r["mean"] for r in _rows(out / "summary.csv")] == [r["mean"] for r in summary.values()]


def test_only_tiny_writes_the_packaged_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tiny_seeds.main(["--preset", "smoke", "--tasks", "coco", "--seeds", "1", "--out", str(tmp_path), "--write-table"])
    assert exc.value.code == 2 and "only a tiny measurement" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_set_overrides_reach_every_run_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "lr"
    argv = ["--preset", "smoke", "--tasks", "coco", "--seeds", "3", "--jobs", "1", "--out", str(out),
            "--set", "optim.lr=0.0007", "sched.milestones=[2]"]
    assert tiny_seeds.main(argv) == 0
    run = json.loads((out / "coco" / "seed3" / "run.json").read_text())
    assert run["config"]["optim"]["lr"] == pytest.approx(7e-4) and run["config"]["sched"]["milestones"] == [2]
    assert run["config"]["train"]["seed"] == 3
    assert json.loads((out / "overrides.json").read_text()) == ["optim.lr=0.0007", "sched.milestones=[2]"]
    rows = _rows(out / "summary.csv")
    assert rows and all(r["overrides"] == "optim.lr=0.0007 sched.milestones=[2]" for r in rows)
    assert "overrides: optim.lr=0.0007 sched.milestones=[2]" in (out / "summary.md").read_text()

    # the same folder with other overrides (or none) is refused: no summary mixes two recipes
    for other in (["--set", "optim.lr=0.001"], []):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            tiny_seeds.main(argv[:argv.index("--set")] + other)
        assert exc.value.code == 2 and "were made with --set optim.lr=0.0007" in capsys.readouterr().err
    for bad, message in ((["lr0.1"], "expected key=value"), (["train.seed=5"], "given by --seeds")):
        with pytest.raises(SystemExit) as exc:
            tiny_seeds.main(["--preset", "smoke", "--tasks", "coco", "--seeds", "1", "--out",
                             str(tmp_path / "bad"), "--set", *bad])
        assert exc.value.code == 2 and message in capsys.readouterr().err
