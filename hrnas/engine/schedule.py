"""Learning-rate schedules (stepped once per ITERATION) and the L1 penalty weight schedule.

References: docs/authors-code.md §4 "LR schedules" (``get_lr_scheduler``) and §3.3 (``get_rho_scheduler``);
docs/metrics-and-peers.md §5.4. All schedules are torch ``lr_scheduler`` objects, so ``state_dict()``
/ ``load_state_dict()`` resume them.
"""
from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler as lrs

from hrnas.errors import UserError, check_choice, check_keywords

__all__ = ["SCHEDULERS", "build_scheduler", "build_scheduler_from_config", "rho_at"]

# keyword arguments (besides total_steps / steps_per_epoch) each schedule accepts
_KW = {
    "onecycle": ("max_lr", "div_factor", "pct_start", "final_div_factor", "cycle_momentum",
                 "base_momentum", "max_momentum"),
    "exp_decay": ("gamma", "decay_epochs", "warmup_epochs", "warmup_lr"),
    "multistep": ("milestones", "gamma"),
    "cosine": ("min_lr",),
    "constant": (),
}
SCHEDULERS = tuple(_KW)


def _exp_decay(optimizer, total_steps, steps_per_epoch, gamma=0.97, decay_epochs=2.4,
               warmup_epochs=0.0, warmup_lr=None):
    """lr · gamma^floor(step / (decay_epochs · steps_per_epoch)) (staircase, as ``lr_stepwise:
    False``), preceded by a linear ramp from ``warmup_lr`` to lr over ``warmup_epochs`` (the
    authors' implicit 5-epoch ImageNet warm-up, docs/authors-code.md §8.2 (item 10)). As in the
    authors' code, the decay counts from step 0, not from the end of the warm-up."""
    interval = decay_epochs * steps_per_epoch
    if interval <= 0:
        raise UserError(f"sched.decay_epochs must be > 0, got {decay_epochs}")
    warm = warmup_epochs * steps_per_epoch
    if warm > 0:
        if warmup_lr is None:
            raise UserError("sched.warmup_lr must be set when sched.warmup_epochs > 0")
        start = warmup_lr / optimizer.param_groups[0]["lr"]
    else:
        start = 1.0

    def factor(step: int) -> float:
        if warm > 0 and step <= warm:
            return start + step / warm * (1.0 - start)
        return gamma ** math.floor(step / interval + 1e-9)

    return lrs.LambdaLR(optimizer, factor)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int,
                    steps_per_epoch: int, **kw) -> lrs.LRScheduler:
    """Build ``onecycle | exp_decay | multistep | cosine | constant``; call ``.step()`` after every
    optimizer step.

    * ``onecycle``: ``OneCycleLR(max_lr, total_steps, div_factor=25, pct_start=0.3,
      final_div_factor=1e4, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95)``; with
      Adam the cycled momentum is beta1 (0.95 -> 0.85 -> 0.95). ``max_lr`` defaults to the groups'
      lr. The initial lr is max_lr/div_factor (the supplement's "minimum lr 0.0016").
    * ``exp_decay``: see :func:`_exp_decay` (gamma 0.97 every 2.4 epochs).
    * ``multistep``: ``MultiStepLR`` with ``milestones`` given in EPOCHS, gamma 0.1.
    * ``cosine``: ``CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)``; ``constant``.
    """
    check_choice("sched.name", name, SCHEDULERS)
    check_keywords(f"schedule {name!r}", kw, _KW[name])
    if int(total_steps) <= 0:
        raise UserError(f"total_steps must be > 0, got {total_steps}")
    if int(steps_per_epoch) <= 0:
        raise UserError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    if name == "onecycle":
        max_lr = kw.pop("max_lr", [g["lr"] for g in optimizer.param_groups])
        return lrs.OneCycleLR(optimizer, max_lr=max_lr, total_steps=int(total_steps),
                              **{"div_factor": 25.0, "pct_start": 0.3, "final_div_factor": 1e4,
                                 "cycle_momentum": True, **kw})
    if name == "exp_decay":
        return _exp_decay(optimizer, total_steps, steps_per_epoch, **kw)
    if name == "multistep":
        milestones = [int(round(m * steps_per_epoch)) for m in kw.get("milestones", ())]
        return lrs.MultiStepLR(optimizer, milestones=milestones, gamma=kw.get("gamma", 0.1))
    if name == "cosine":
        return lrs.CosineAnnealingLR(optimizer, T_max=int(total_steps), eta_min=kw.get("min_lr", 0.0))
    return lrs.LambdaLR(optimizer, lambda step: 1.0)


def build_scheduler_from_config(optimizer: torch.optim.Optimizer, cfg: dict, *, total_steps: int,
                                steps_per_epoch: int) -> lrs.LRScheduler:
    """:func:`build_scheduler` from a loaded config (``cfg["sched"]``; onecycle's max_lr = ``optim.lr``)."""
    sched = cfg["sched"]
    name = sched["name"]
    if name != "exp_decay" and sched.get("warmup_epochs"):
        raise UserError(f"sched.warmup_epochs={sched['warmup_epochs']} is only used by "
                        f"sched.name=exp_decay, not {name!r}")
    kw = {k: sched[k] for k in _KW.get(name, ()) if k in sched}
    if name == "onecycle":
        kw["max_lr"] = cfg["optim"]["lr"]
    return build_scheduler(name, optimizer, total_steps=total_steps,
                           steps_per_epoch=steps_per_epoch, **kw)


def rho_at(step: int, rho: float, free_steps: int, warmup_steps: int) -> float:
    """Weight of the L1 penalty at iteration ``step`` (docs/authors-code.md §3.3, ``linear``, stepwise):
    0 for step < free_steps, linear ramp to ``rho`` until step ``warmup_steps`` (an absolute
    step, like the authors' ``epoch_warmup``), then ``rho``."""
    if step < free_steps:
        return 0.0
    if step >= warmup_steps:
        return float(rho)
    return (step - free_steps) / (warmup_steps - free_steps) * float(rho)
