"""A 2-process torchrun (gloo) search of the smoke preset with per-process BN statistics
(``train.sync_bn=false``, the authors'): identical weights and BN buffers on both ranks, and its metric
(evaluated on two shards and reduced) equals a single-process evaluation of the same checkpoint. Run as
a script, this file is the torchrun worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# no BN re-calibration: per-rank calibration batches are averaged, which one process cannot reproduce
OVERRIDES = ["eval.bn_calib_batches=0", "train.sync_bn=false"]


def worker(out: Path) -> None:
    from hrnas.engine import distributed as D
    from hrnas.engine.config import load_config
    from hrnas.engine.trainer import Trainer
    from hrnas.search import search_hooks
    from hrnas.tasks import get_task
    from hrnas.experiment import resolve_data_root

    D.init_distributed()
    cfg = load_config("cityscapes", "smoke", OVERRIDES)
    trainer = Trainer(get_task(cfg), cfg, out / "run", data_root=resolve_data_root("cityscapes", "smoke", None),
                      hooks=search_hooks(cfg), meta={"mode": "search", "overrides": OVERRIDES}, progress=False)
    assert not trainer.sync_bn and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.net.modules())
    result = trainer.fit()
    state = {k: v.detach().clone().contiguous() for k, v in trainer.net.state_dict().items()}
    torch.save({"state": state, "result": result, "world": D.world_size(), "shrinks": len(trainer.hooks[0].controller.history)},
               out / f"rank{D.rank()}.pt")
    D.cleanup()


def test_two_gloo_processes_agree_with_one(tmp_path, monkeypatch):
    from hrnas.data import ensure_dataset
    from hrnas.experiment import evaluate_checkpoint

    monkeypatch.setenv("HRNAS_DATA_DIR", str(tmp_path / "data"))
    ensure_dataset("cityscapes", "smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["shrinks"] >= 1
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():  # DDP gradients + averaged BN buffers: bit-identical ranks
        assert torch.equal(value, ranks[1]["state"][key]), key
    reported = ranks[0]["result"]["metrics"]
    assert json.dumps(ranks[1]["result"]["metrics"], sort_keys=True) == json.dumps(reported, sort_keys=True)  # NaN-safe
    single = evaluate_checkpoint("cityscapes", tmp_path / "run")
    assert single["mIoU"] == pytest.approx(reported["mIoU"], abs=1e-9)
    assert single["aAcc"] == pytest.approx(reported["aAcc"], abs=1e-9)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))


def test_sync_bn_on_the_cpu_is_refused(monkeypatch):
    """SyncBatchNorm has no CPU kernel: with more than one process the trainer says so before any work."""
    from hrnas.engine import distributed as D
    from hrnas.engine.config import load_config
    from hrnas.engine.trainer import Trainer
    from hrnas.errors import UserError
    from hrnas.tasks import get_task

    monkeypatch.setattr(D, "init_distributed", lambda: D.DistInfo(0, 2, 0, torch.device("cpu")))
    cfg = load_config("cityscapes", "smoke", ["train.sync_bn=true"])
    with pytest.raises(UserError, match=r"^train.sync_bn=true needs CUDA"):
        Trainer(get_task(cfg), cfg, "unused", data_root="unused")
