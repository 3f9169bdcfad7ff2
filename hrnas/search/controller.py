"""The resource-aware search: L1 penalty on BN scales weighted by cost, and progressive shrinking
(paper §3.3; reference official-code.md §3).

Loss term per step: ``λ(t) · [Σ_paths w_p Σ_c |γ_{p,c}| + Σ_transformers w_T Σ_i |γ_{T,i}|]`` with
``w = cost / mean cost over all searchable units`` (costs: :mod:`hrnas.search.costs`). λ is 0 during an
optional free period, then ramps linearly to its value (the authors: 25 epochs), then stays.

Every ``shrink_every`` epochs (and at the end) channels and tokens with |γ| ≤ ``threshold`` are removed
physically (:mod:`hrnas.search.shrink`) when that removes at least ``min_removable_macs`` MACs (or at the
end). Optional MACs budget (ours; the supplement notes λ cannot set the size precisely), absolute
(``budget_macs``) or as a fraction of the super network (``budget_ratio``): λ is scaled up while the live
network is above the budget; every shrink removes the dead units and then the least important live ones
(smallest |γ| per unit of cost) down to a target that falls linearly from the super network's MACs at
step 0 to the budget at the last shrink before the end (progressive shrinking: the network trains
between cuts and after the last one), and never goes below the budget.
"""
from __future__ import annotations

import math

import torch

from hrnas.engine.schedule import rho_at
from hrnas.errors import UserError
from hrnas.profile import profile
from hrnas.search.costs import block_geometry, transformer_true_macs
from hrnas.search.shrink import ShrinkLog, apply_to_ema, apply_to_optimizer, shrink_block, shrink_tokens

BUDGET_TOLERANCE = 0.05


class SearchController:
    """Penalty and shrinking for one network (the HR-NAS part of the task model).

    Args:
        model: the network (an ``HRNet``; DDP-wrapped is fine).
        cfg: the ``search`` section of a recipe (rho, rho_free_epochs, rho_warmup_epochs, threshold,
            shrink_every, min_removable_macs, budget_macs or budget_ratio, cost_size, enabled).
        input_size: the task's input (H, W): MACs are accounted at this size.
        steps_per_epoch, total_steps: to convert epochs to steps.
        supernet_macs: MACs of the super network at ``input_size`` (the start of the budget schedule and
            the base of ``budget_ratio``); default: the given network's (pass it when resuming a shrunk one).
    """

    def __init__(self, model, cfg: dict, input_size: tuple[int, int], steps_per_epoch: int, total_steps: int,
                 supernet_macs: int | None = None):
        self.enabled = bool(cfg.get("enabled", True))
        self.rho = float(cfg.get("rho") or 0.0)
        self.threshold = float(cfg.get("threshold", 1e-3))
        for name, value in (("search.rho", self.rho), ("search.threshold", self.threshold)):
            if value < 0 or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number >= 0, got {value}")
        self.free_steps = int(round(float(cfg.get("rho_free_epochs", 0.0)) * steps_per_epoch))
        self.warmup_steps = int(round(float(cfg.get("rho_warmup_epochs", 0.0)) * steps_per_epoch))
        self.shrink_interval = max(1, int(round(float(cfg.get("shrink_every", 1)) * steps_per_epoch)))
        self.min_removable = float(cfg.get("min_removable_macs", 1e6))
        budget, ratio = cfg.get("budget_macs"), cfg.get("budget_ratio")
        if budget is not None and not (math.isfinite(float(budget)) and float(budget) > 0):
            raise UserError(f"search.budget_macs must be > 0, got {budget}")
        if ratio is not None and not 0 < float(ratio) <= 1:
            raise UserError(f"search.budget_ratio must be in (0, 1], got {ratio}")
        if budget is not None and ratio is not None:
            raise UserError("search.budget_macs and search.budget_ratio: give one of them, not both")
        self.total_steps = total_steps
        self.input_size = tuple(input_size)
        cost_size = cfg.get("cost_size", "task")
        self.cost_size = self.input_size if cost_size == "task" else (int(cost_size), int(cost_size))
        self.rho_scale = 1.0
        self.history: list[dict] = []
        net = self._net(model)
        self._blocks = dict(net.searching_blocks())
        self._geo_task = block_geometry(net, self.input_size)
        self._geo_cost = self._geo_task if self.cost_size == self.input_size else block_geometry(net, self.cost_size)
        self._normaliser = self._mean_unit_cost()
        self._fixed_macs = profile(net, self.input_size, on_meta=False).macs - self._variable_macs(self._geo_task)
        self.supernet_macs = float(supernet_macs if supernet_macs is not None else self.macs())
        self.budget = (float(budget) if budget is not None else
                       float(ratio) * self.supernet_macs if ratio is not None else None)

    @staticmethod
    def _net(model):
        return getattr(model, "module", model)

    # ---- costs -------------------------------------------------------------------------------------
    def _units(self, geo):
        """(block name, kind, kernel index or None, channels, cost per unit) for every searchable group."""
        for name, block in self._blocks.items():
            g = geo[name]
            for k, (kernel, h) in enumerate(zip(block.kernels, block.hidden)):
                yield name, "path", k, h, g.channel_cost(kernel)
            t = block.transformer
            if t is not None and t.token_mode == "channel":
                n = t.num_tokens
                yield name, "tokens", None, n, transformer_true_macs(t, n) - transformer_true_macs(t, n - 1)

    def _mean_unit_cost(self) -> float:
        total = count = 0
        for *_, n, cost in self._units(self._geo_cost):
            total += n * cost
            count += n
        return total / max(count, 1)

    def _variable_macs(self, geo) -> int:
        macs = 0
        for name, block in self._blocks.items():
            macs += sum(h * geo[name].channel_cost(k) for k, h in zip(block.kernels, block.hidden))
            if block.transformer is not None:
                macs += transformer_true_macs(block.transformer, block.transformer.num_tokens)
        return macs

    def macs(self) -> int:
        """MACs of the current network at the task's input size (equals ``hrnas.profile``)."""
        return self._fixed_macs + self._variable_macs(self._geo_task)

    # ---- penalty -----------------------------------------------------------------------------------
    def rho_at(self, step: int) -> float:
        return rho_at(step, self.rho, self.free_steps, self.free_steps + self.warmup_steps) * self.rho_scale

    def penalty(self, model, step: int) -> torch.Tensor:
        """λ(step) · Σ w |γ| over every kernel path and transformer (a scalar tensor)."""
        rho = self.rho_at(step) if self.enabled else 0.0
        if rho == 0.0:
            return torch.zeros((), device=next(self._net(model).parameters()).device)
        terms = []
        for name, kind, k, _, cost in self._units(self._geo_cost):
            block = self._blocks[name]
            gamma = block.dw_bn[k].weight if kind == "path" else block.transformer.input_norm.weight
            terms.append(gamma.abs().sum() * (cost / self._normaliser))
        return rho * torch.stack(terms).sum()

    # ---- shrinking ---------------------------------------------------------------------------------
    def _alive(self, ema=None) -> dict:
        """Per block: bool masks of live channels per path and of live tokens."""
        def live(name_param, tensor):
            mask = tensor.detach().abs() > self.threshold
            if ema is not None and name_param in ema.shadow:
                mask |= ema.shadow[name_param].detach().abs() > self.threshold
            return mask.cpu()

        masks = {}
        for name, block in self._blocks.items():
            prefix = self._prefix[name]
            paths = [live(f"{prefix}dw_bn.{k}.weight", bn.weight) for k, bn in enumerate(block.dw_bn or [])]
            tokens = None
            if block.transformer is not None and block.transformer.token_mode == "channel":
                tokens = live(f"{prefix}transformer.input_norm.weight", block.transformer.input_norm.weight)
            masks[name] = (paths, tokens)
        return masks

    def _removable_macs(self, masks) -> int:
        macs = 0
        for name, (paths, tokens) in masks.items():
            block, g = self._blocks[name], self._geo_task[name]
            macs += sum(int((~m).sum()) * g.channel_cost(k) for m, k in zip(paths, block.kernels))
            if tokens is not None:
                t, n = block.transformer, block.transformer.num_tokens
                alive = max(int(tokens.sum()), 1)
                macs += transformer_true_macs(t, n) - transformer_true_macs(t, alive)
        return macs

    def budget_target(self, step: int) -> float:
        """The budget schedule: the super network's MACs at step 0, falling linearly to the budget at the
        last shrink before the end (so the final network still trains for one shrink interval)."""
        end = max(self.total_steps - self.shrink_interval, 1)
        t = min(max(step / end, 0.0), 1.0)
        return max(self.budget, self.supernet_macs - (self.supernet_macs - self.budget) * t)

    def _fit_budget(self, masks, step: int, final: bool):
        """Budget mode: revive units so as not to go below the budget; kill the least important live
        units while the network is above the scheduled target (the budget itself at the end)."""
        current = self.macs()
        target = self.budget if final else self.budget_target(step)
        units = []  # (importance, name, k or None, index, cost)
        for name, (paths, tokens) in masks.items():
            block, g = self._blocks[name], self._geo_task[name]
            for k, bn in enumerate(block.dw_bn or []):
                cost = g.channel_cost(block.kernels[k])
                for i, v in enumerate(bn.weight.detach().abs().cpu().tolist()):
                    units.append((v / cost, name, k, i, cost))
            if tokens is not None:
                t, n = block.transformer, block.transformer.num_tokens
                cost = transformer_true_macs(t, n) - transformer_true_macs(t, n - 1)
                for i, v in enumerate(t.input_norm.weight.detach().abs().cpu().tolist()):
                    units.append((v / cost, name, None, i, cost))
        units.sort(key=lambda u: u[0])
        new = {name: ([torch.ones_like(m) for m in paths], None if tokens is None else torch.ones_like(tokens))
               for name, (paths, tokens) in masks.items()}
        tokens_left = {name: int(tokens.numel()) for name, (_, tokens) in masks.items() if tokens is not None}
        macs, floor = current, self.budget * (1 - BUDGET_TOLERANCE / 2)
        for _, name, k, i, cost in units:
            alive = bool(masks[name][0][k][i]) if k is not None else bool(masks[name][1][i])
            if macs - cost < floor or (alive and macs <= target):
                continue  # never undershoot the budget; live units go only while above the target
            if k is None:
                if tokens_left[name] <= 1:
                    continue
                tokens_left[name] -= 1
                new[name][1][i] = False
            else:
                new[name][0][k][i] = False
            macs -= cost
        return new

    def should_shrink(self, step: int, final: bool = False) -> bool:
        return self.enabled and (final or (step > 0 and step % self.shrink_interval == 0))

    @torch.no_grad()
    def maybe_shrink(self, model, step: int, optimizer=None, ema=None, final: bool = False) -> dict | None:
        """Remove dead channels/tokens if it is time and worth it. Returns a report or None."""
        if not self.should_shrink(step, final):
            return None
        net = self._net(model)
        self._prefix = {name: f"{qual}." for qual, m in net.named_modules()
                        for name in [getattr(m, "block_name", None)] if name in self._blocks}
        masks = self._alive(ema if final else None)
        if self.budget is not None:
            live = self.macs() - self._removable_macs(masks)
            self.rho_scale = self.rho_scale * 1.5 if live > self.budget * (1 + BUDGET_TOLERANCE / 2) else \
                max(self.rho_scale / 1.5, 1e-3)
            masks = self._fit_budget(masks, step, final)
        removable = self._removable_macs(masks)
        if removable == 0 or (removable < self.min_removable and not final):
            return None
        before = self.macs()
        log = ShrinkLog()
        for name, block in self._blocks.items():
            paths, tokens = masks[name]
            if block.expand is not None:
                shrink_block(block, [m.to(block.expand.weight.device) for m in paths], self._prefix[name], log)
            if tokens is not None:
                shrink_tokens(block, tokens.to(block.transformer.input_norm.weight.device), self._prefix[name], log)
        apply_to_optimizer(optimizer, log)
        apply_to_ema(ema, log)
        report = {"step": step, "macs_before": before, "macs": self.macs(),
                  "params": sum(p.numel() for p in net.parameters()),
                  "removed_channels": log.removed_channels, "removed_tokens": log.removed_tokens,
                  "rho_scale": self.rho_scale}
        self.history.append(report)
        return report

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rho_scale": self.rho_scale, "normaliser": self._normaliser, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.rho_scale = float(state.get("rho_scale", 1.0))
        self._normaliser = float(state.get("normaliser", self._normaliser))
        self.history = list(state.get("history", []))
