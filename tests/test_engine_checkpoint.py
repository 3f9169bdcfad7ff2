"""Checkpoints: weights_only round trip, RNG restore, atomic writes, errors, find_latest."""
import random

import numpy as np
import pytest
import torch
from torch import nn

import hrnas.engine.checkpoint as ck
from hrnas.engine.checkpoint import (checkpoint_path, find_latest, get_rng_state, load_checkpoint,
                                     save_checkpoint, set_rng_state)
from hrnas.engine.config import load_config
from hrnas.engine.ema import ModelEMA
from hrnas.engine.optim import build_optimizer
from hrnas.engine.schedule import build_scheduler
from hrnas.errors import UserError


def _training_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer("adamw", net.parameters(), 0.04, 1e-5, eps=1e-3)
    sched = build_scheduler("onecycle", opt, total_steps=20, steps_per_epoch=5)
    ema = ModelEMA(net, batch_size=32)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(2, 3, 6, 6)).square().mean().backward()
        opt.step()
        sched.step()
        ema.update(net)
    return net, opt, sched, ema


def test_round_trip_weights_only(tmp_path):
    net, opt, sched, ema = _training_state()
    cfg = load_config("cityscapes", "smoke")
    arch = {"format": "hrnas-arch", "blocks": [{"name": "b0", "kernels": [3, 5], "hidden": [8, 4]}]}
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", model=nn.DataParallel(net), optimizer=opt,
                           scheduler=sched, ema=ema, step=3, epoch=0, arch=arch, config=cfg,
                           search={"penalties": torch.tensor([1.5, 0.5]), "pruned_macs": 12.0})
    raw = torch.load(path, weights_only=True)  # must not need pickled classes
    assert raw["step"] == 3 and raw["arch"] == arch and raw["config"] == cfg
    assert set(raw["model"]) == set(net.state_dict())  # DataParallel unwrapped: no "module." prefix

    ckpt = load_checkpoint(path)
    net2 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt2 = build_optimizer("adamw", net2.parameters(), 0.04, 1e-5, eps=1e-3)
    sched2 = build_scheduler("onecycle", opt2, total_steps=20, steps_per_epoch=5)
    ema2 = ModelEMA(net2, batch_size=32)
    net2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["scheduler"])
    ema2.load_state_dict(ckpt["ema"])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert ema2.num_updates == 3 and torch.equal(ema2.shadow["0.weight"], ema.shadow["0.weight"])
    # the resumed run continues exactly like the original one
    x = torch.randn(2, 3, 6, 6)
    for n, o, s in ((net, opt, sched), (net2, opt2, sched2)):
        o.zero_grad()
        n(x).square().mean().backward()
        o.step()
        s.step()
    assert torch.allclose(net[0].weight, net2[0].weight)
    assert opt.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])


def test_rng_restore_reproduces_random_numbers(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.pt", step=0)
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first
    state = get_rng_state()
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["numpy"][1], torch.Tensor)


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, step=1)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_unsafe_part_is_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match="search.fn"):
        save_checkpoint(tmp_path / "c.pt", search={"fn": object()})
    assert not (tmp_path / "c.pt").exists()


def test_missing_and_corrupt_files_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="bad.pt is corrupt") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an hrnas checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_find_latest(tmp_path):
    assert find_latest(tmp_path / "missing") is None
    assert find_latest(tmp_path) is None
    for step in (2, 10, 7):
        save_checkpoint(checkpoint_path(tmp_path, step), step=step)
    (tmp_path / "ckpt_000000099.pt.tmp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    latest = find_latest(tmp_path)
    assert latest.name == "ckpt_000000010.pt" and load_checkpoint(latest)["step"] == 10
