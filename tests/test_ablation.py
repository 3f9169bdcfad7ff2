"""The ablation tables (hrnas.ablation): rows as the paper's, costs, and reuse of identical runs."""
import json

import pandas as pd
import pytest

from hrnas import ablation as A
from hrnas.engine.config import load_config
from hrnas.errors import UserError
from hrnas.viz.tables import paper_table


def test_rows_follow_the_paper_and_shared_rows_are_the_same_recipe():
    for table in ("table1", "table2"):
        assert list(A.get_ablation(table).rows) == list(paper_table(table)["variant"])
    t1, t2 = A.get_ablation("table1"), A.get_ablation("table2")

    def cfg(ab, row):
        return load_config("cityscapes", "smoke", ab.overrides(row))

    assert cfg(t1, "Baseline") == cfg(t2, "Baseline")
    assert cfg(t1, "s=8x8") == cfg(t2, "Enc + Dec (channel)")
    assert cfg(t1, "s=4x4") != cfg(t1, "s=8x8")
    with pytest.raises(UserError, match="ablation table 'table3'"):
        A.get_ablation("table3")


def test_table1_costs_grow_with_the_projection_size_like_the_paper():
    costs = A.row_costs("table1", "smoke")
    added = costs["Params"] - costs.loc["Baseline", "Params"]
    assert 0 < added.loc["s=2x2"] < added.loc["s=4x4"] < added.loc["s=8x8"] < added.loc["s=16x16"]
    # the projection's coordinate channels and attention grow with s²: s=16 adds far more than s=2
    assert added.loc["s=16x16"] > 3 * added.loc["s=2x2"]
    assert (costs["FLOPs"] >= costs.loc["Baseline", "FLOPs"]).all()


def test_identical_rows_are_reused_not_retrained(tmp_path, monkeypatch):
    from hrnas.engine import trainer

    root = tmp_path / "data"
    root.mkdir()
    earlier = tmp_path / "table1"
    t1 = A.get_ablation("table1")
    for row, miou in (("Baseline", 0.25), ("s=8x8", 0.5)):
        run_dir = earlier / row
        run_dir.mkdir(parents=True)
        cfg = load_config("cityscapes", "smoke", ["train.seed=7", "search.enabled=false", *t1.overrides(row)])
        (run_dir / "run.json").write_text(json.dumps({
            "status": "finished", "mode": "search", "config": cfg, "data_root": str(root), "step": 4,
            "metrics": {"mIoU": miou, "mAcc": 0.6, "aAcc": 0.7}}))
    trained = []

    class FakeTrainer:  # stands in for training: records which rows really ran
        def __init__(self, task, cfg, out, **kw):
            self.out = out

        def fit(self):
            trained.append(self.out.name)
            return {"metrics": {"mIoU": 0.1, "mAcc": 0.2, "aAcc": 0.3}, "run_dir": str(self.out)}

    monkeypatch.setattr(trainer, "Trainer", FakeTrainer)
    scores = A.run_rows("table2", preset="smoke", data_root=root, out_dir=tmp_path / "table2", seed=7,
                        reuse_from=[earlier], progress=False)
    assert "Baseline" not in trained and "Enc_Dec_channel" not in trained and len(trained) == 5
    assert scores.loc["Baseline", "mIoU(%)"] == 25.0 and scores.loc["Enc + Dec (channel)", "mIoU(%)"] == 50.0
    assert scores.loc["SE", "mIoU(%)"] == pytest.approx(10.0)
    assert scores.loc["Baseline", "reused_from"] == str(earlier / "Baseline")
    assert pd.isna(scores.loc["SE", "reused_from"])
    # another seed is another experiment: nothing is reused
    trained.clear()
    A.run_rows("table2", preset="smoke", data_root=root, out_dir=tmp_path / "t2b", seed=8, reuse_from=[earlier],
               progress=False)
    assert len(trained) == 7
