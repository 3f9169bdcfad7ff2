"""LR schedules (per iteration) against hand-computed values; rho_at; resume via state_dict."""
import pytest
import torch
from torch import nn

from hrnas.engine.config import load_config
from hrnas.engine.schedule import build_scheduler, build_scheduler_from_config, rho_at
from hrnas.errors import UserError


def _lrs(sched, opt, steps, key="lr"):
    """Value of ``key`` of group 0 at steps 0..steps-1 (the value used by the optimizer step)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0][key])
        opt.step()
        sched.step()
    return out


def _adam(lr):
    return torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)


def test_onecycle_lr_and_beta1():
    opt = _adam(0.04)
    sched = build_scheduler("onecycle", opt, total_steps=10, steps_per_epoch=5, max_lr=0.04)
    betas = []
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    # warm-up phase ends at step 0.3*10-1 = 2: 0.04/25 -> cos midpoint -> 0.04; end 0.0016/1e4
    assert lrs[0] == pytest.approx(0.0016)
    assert lrs[1] == pytest.approx((0.04 + 0.0016) / 2)
    assert lrs[2] == pytest.approx(0.04)
    assert lrs[9] == pytest.approx(1.6e-7)
    assert betas[0] == pytest.approx(0.95) and betas[1] == pytest.approx(0.90) and betas[2] == pytest.approx(0.85)


def test_exp_decay_staircase_with_warmup():
    opt = _adam(0.064)
    sched = build_scheduler("exp_decay", opt, total_steps=60, steps_per_epoch=10, gamma=0.97,
                            decay_epochs=2.4, warmup_epochs=1.0, warmup_lr=0.016)
    lrs = _lrs(sched, opt, 51)
    assert lrs[0] == pytest.approx(0.016)           # warm-up starts at warmup_lr
    assert lrs[5] == pytest.approx(0.04)            # halfway: 0.016 + 0.5*0.048
    assert lrs[10] == pytest.approx(0.064)          # end of warm-up
    assert lrs[23] == pytest.approx(0.064)          # floor(23/24) = 0
    assert lrs[24] == pytest.approx(0.064 * 0.97)   # interval = 2.4 epochs * 10 = 24 steps
    assert lrs[47] == pytest.approx(0.064 * 0.97)
    assert lrs[48] == pytest.approx(0.064 * 0.97 ** 2)


def test_exp_decay_without_warmup_and_missing_warmup_lr():
    opt = _adam(1.0)
    lrs = _lrs(build_scheduler("exp_decay", opt, total_steps=20, steps_per_epoch=5, gamma=0.5,
                               decay_epochs=1.0), opt, 11)
    assert lrs[0] == 1.0 and lrs[4] == 1.0 and lrs[5] == 0.5 and lrs[10] == 0.25
    with pytest.raises(UserError, match="sched.warmup_lr"):
        build_scheduler("exp_decay", _adam(1.0), total_steps=5, steps_per_epoch=5, warmup_epochs=1.0)


def test_multistep_cosine_constant():
    opt = _adam(1e-3)
    lrs = _lrs(build_scheduler("multistep", opt, total_steps=20, steps_per_epoch=5,
                               milestones=[2, 3], gamma=0.1), opt, 16)
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4) and lrs[15] == pytest.approx(1e-5)
    opt = _adam(1.0)
    lrs = _lrs(build_scheduler("cosine", opt, total_steps=10, steps_per_epoch=5), opt, 11)
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    opt = _adam(0.3)
    assert _lrs(build_scheduler("constant", opt, total_steps=10, steps_per_epoch=5), opt, 8)[7] == 0.3


def test_scheduler_errors():
    with pytest.raises(UserError, match="sched.name='poly'"):
        build_scheduler("poly", _adam(1.0), total_steps=10, steps_per_epoch=5)
    with pytest.raises(UserError, match="gamma"):
        build_scheduler("cosine", _adam(1.0), total_steps=10, steps_per_epoch=5, gamma=0.1)
    with pytest.raises(UserError, match="total_steps"):
        build_scheduler("constant", _adam(1.0), total_steps=0, steps_per_epoch=5)


def test_resume_from_state_dict():
    opt = _adam(0.064)
    kw = dict(total_steps=100, steps_per_epoch=10, gamma=0.97, decay_epochs=2.4, warmup_epochs=1.0,
              warmup_lr=0.016)
    sched = build_scheduler("exp_decay", opt, **kw)
    _lrs(sched, opt, 30)
    state = sched.state_dict()
    opt2 = _adam(0.064)
    sched2 = build_scheduler("exp_decay", opt2, **kw)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert _lrs(sched2, opt2, 5) == pytest.approx(_lrs(sched, opt, 5))


def test_from_config():
    cfg = load_config("imagenet", "paper")
    opt = _adam(cfg["optim"]["lr"])
    sched = build_scheduler_from_config(opt, cfg, total_steps=1000, steps_per_epoch=10)
    assert _lrs(sched, opt, 6)[::5] == pytest.approx([0.016, 0.016 + 5 / 50 * 0.048])  # 5-epoch warm-up
    cfg = load_config("cityscapes", "paper", ["sched.warmup_epochs=5"])
    with pytest.raises(UserError, match="sched.warmup_epochs"):
        build_scheduler_from_config(_adam(0.04), cfg, total_steps=100, steps_per_epoch=10)
    cfg = load_config("cityscapes", "paper")
    opt = _adam(0.04)
    build_scheduler_from_config(opt, cfg, total_steps=100, steps_per_epoch=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0016)


def test_rho_at():
    assert rho_at(5, 1e-4, 10, 30) == 0.0
    assert rho_at(10, 1e-4, 10, 30) == 0.0
    assert rho_at(20, 1e-4, 10, 30) == pytest.approx(5e-5)
    assert rho_at(30, 1e-4, 10, 30) == pytest.approx(1e-4)
    assert rho_at(1000, 1e-4, 10, 30) == pytest.approx(1e-4)
    assert rho_at(0, 2e-4, 0, 0) == pytest.approx(2e-4)  # no warm-up: full weight at once
