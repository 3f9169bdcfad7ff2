"""The training loop: name-keyed optimizer state, logs, BN re-calibration, exact resume, the NaN guard."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import hrnas.engine.trainer as trainer_mod
from hrnas.cli import main
from hrnas.engine.checkpoint import find_latest, load_checkpoint
from hrnas.engine.ema import ModelEMA
from hrnas.engine.evaluation import ShardSampler, bn_calibrate
from hrnas.engine.runlog import RunLog
from hrnas.engine.state import load_optimizer_state_by_name, optimizer_state_by_name
from hrnas.search.hook import EMAView


def _net(order):
    layers = {"a": nn.Linear(4, 3), "b": nn.Linear(3, 2)}
    net = nn.Module()
    for name in order:  # same names, different registration (= parameter) order
        setattr(net, name, layers[name])
    net.forward = lambda x: net.b(torch.relu(net.a(x)))
    return net


def test_optimizer_state_reloads_by_name_into_a_reordered_network():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    first = _net("ab")
    opt = torch.optim.Adam(first.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        first(x).pow(2).sum().backward()
        opt.step()
    saved = optimizer_state_by_name(opt, first)
    second = _net("ba")
    second.load_state_dict(first.state_dict())
    opt2 = torch.optim.Adam(second.parameters(), lr=0.5)
    load_optimizer_state_by_name(opt2, second, saved)
    assert opt2.param_groups[0]["lr"] == 0.1
    for net, o in ((first, opt), (second, opt2)):
        o.zero_grad()
        net(x).pow(2).sum().backward()
        o.step()
    for name, p in first.named_parameters():
        assert torch.equal(p, dict(second.named_parameters())[name])


def test_runlog_truncates_rows_after_the_checkpoint_and_rewrites_the_csv(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3, 4):
        log.log_step({"step": step, "loss": 1.0 / step})
    log.log_row({"step": 2, "epoch": 1.0, "train_loss": 0.5})
    log.log_row({"step": 4, "epoch": 2.0, "train_loss": 0.2, "val_mIoU": 0.3, "val_IoU": [0.1, 0.5]})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,epoch,train_loss,val_mIoU", "2,1.0,0.5,", "4,2.0,0.2,0.3"]
    log.truncate(2)
    assert [json.loads(x)["step"] for x in (tmp_path / "steps.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,epoch,train_loss", "2,1.0,0.5"]


class _CalibTask:
    def to_device(self, batch, device, channels_last):
        return batch

    def calib_forward(self, model, batch):
        model(batch)


def test_bn_calibration_is_the_cumulative_average_of_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.fill_(7.0)
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(4)]
    used = bn_calibrate(bn, batches, 3, _CalibTask(), torch.device("cpu"), False)
    assert used == 3 and not bn.training and bn.momentum is None
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches[:3]])
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches[:3]])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_ema_view_follows_a_reloaded_shadow():
    net = nn.Sequential(OrderedDict(backbone=nn.Linear(2, 2), head=nn.Linear(2, 1)))
    ema = ModelEMA(net, 0.9)
    view = EMAView(ema, "backbone.")
    assert sorted(view.shadow) == ["bias", "weight"]
    ema.load_state_dict(ema.state_dict())  # replaces the shadow dict
    view.shadow["weight"] = view.shadow["weight"][:1]
    assert ema.shadow["backbone.weight"].shape == (1, 2)
    del view.shadow["bias"]
    assert "backbone.bias" not in ema.shadow and "head.bias" in ema.shadow


def _rows(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("time_s", None)
    return rows


def test_resume_reproduces_the_uninterrupted_run_exactly(data_dir, tmp_path, monkeypatch, capsys):
    # imagenet smoke: 7 steps per epoch, max_steps 4, a checkpoint (and a shrink) every 2 steps, so the
    # resume starts mid-epoch and replays the loader; the crash comes after step 3 was logged
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    argv = ["search", "imagenet", "--preset", "smoke", "--no-progress", "--out"]
    assert main(argv + [str(whole)]) == 0
    original = trainer_mod.Trainer.train_step

    def crash_after_step_3(self, batch, step):
        logs = original(self, batch, step)
        if step == 3:
            raise KeyboardInterrupt
        return logs

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", crash_after_step_3)
    assert main(argv + [str(broken)]) == 130
    assert find_latest(broken).name == "ckpt_000000002.pt"
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    assert main(argv + [str(broken), "--resume"]) == 0
    capsys.readouterr()
    steps = _rows(whole / "steps.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert _rows(broken / "steps.jsonl") == steps  # every loss, lr and penalty, bit for bit
    assert _rows(broken / "metrics.jsonl") == _rows(whole / "metrics.jsonl")
    assert (broken / "arch.json").read_text() == (whole / "arch.json").read_text()
    resumed = json.loads((broken / "run.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["status"] == "finished"
    # throughput of this session's steps: 4 steps in the whole run, 2 after the resume (smoke batch 2)
    whole_tp = json.loads((whole / "run.json").read_text())["throughput"]
    assert whole_tp["train_steps_timed"] == 4 and resumed["throughput"]["train_steps_timed"] == 2
    assert whole_tp["train_images_per_s"] > 0 and whole_tp["peak_memory_gib"] > 0.1
    a, b = load_checkpoint(find_latest(whole)), load_checkpoint(find_latest(broken))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # resuming with other settings, or starting over in a run directory, is refused in one line
    assert main(["search", "imagenet", "optim.lr=0.5", "--preset", "smoke", "--resume", "--out", str(whole)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr=0.5" in err[0]
    assert main(argv + [str(whole)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    from hrnas.tasks.classification import ClassificationTask

    calls = {"n": 0}
    original = ClassificationTask.loss

    def nan_at_step_3(self, model, batch):
        loss, logs = original(self, model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setattr(ClassificationTask, "loss", nan_at_step_3)
    out = tmp_path / "run"
    assert main(["search", "imagenet", "--preset", "smoke", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 3" in err[0] and "ckpt_000000002.pt" in err[0]
    ckpt = load_checkpoint(out / "ckpt_000000002.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                     if v.is_floating_point())
    run = json.loads((out / "run.json").read_text())
    assert run["status"].startswith("failed: step 3")
