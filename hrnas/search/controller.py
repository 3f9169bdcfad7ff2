"""The resource-aware search: L1 penalty on BN scales weighted by cost, and progressive shrinking
(paper §3.3; docs/authors-code.md §3).

Loss term per step: ``λ(t) · [Σ_paths w_p Σ_c |γ_{p,c}| + Σ_transformers w_T Σ_i |γ_{T,i}|]`` with
``w = cost / mean cost over all searchable units`` (costs: :mod:`hrnas.search.costs`; the token weight
w_T follows ``search.token_cost``). λ is 0 during an optional free period, then ramps linearly to its
value (the authors: 25 epochs), then stays.

Every ``shrink_every`` epochs (and at the end) dead channels and tokens are removed physically
(:mod:`hrnas.search.shrink`). As in the authors' code the EMA decides: at an intermediate shrink a unit is
removed when |γ| is at most ``threshold`` in the live weights *and* in the EMA's; at the last shrink the
EMA alone decides (the EMA network is the one evaluated and exported). Whether to shrink at all is
decided, like the authors', on the EMA's units alone: at least ``min_removable_macs`` MACs must be
removable (always at the end), counted at ``search.cost_size`` (``removable_size: cost``, the authors'
224×224) or at the task's input size (``task``). Without an EMA the live weights decide everything.
Every shrink also reports the output change it caused on a probe batch (:mod:`hrnas.search.probe`).

Optional MACs budget (ours; the supplement notes λ cannot set the size precisely), absolute
(``budget_macs``) or as a fraction of the super network (``budget_ratio``), measured at the task's input
size or at ``budget_size`` [H, W] (the accounting then uses the per-unit costs at that size: conv MACs
scale with the area, transformer MACs do not): λ is scaled up while the network is above the budget;
every shrink removes the dead units and then the least important live ones down to a target that falls
linearly from the super network's MACs at step 0 to the budget at the last shrink before the end
(progressive shrinking: the network trains between cuts and after the last one), and never goes below
the budget. A unit's importance is its |γ| per MAC, with |γ| = max(|γ_live|, |γ_EMA|) at intermediate
shrinks and |γ_EMA| at the last one — the same rule as the threshold's.
"""
from __future__ import annotations

import math

import torch

from hrnas.engine.config import CHOICES
from hrnas.engine.schedule import rho_at
from hrnas.errors import UserError, check_choice
from hrnas.profile import profile
from hrnas.search.costs import block_geometry, hrnas_token_base, transformer_hrnas_macs, transformer_true_macs
from hrnas.search.probe import ProbeBatch, measure_shrink
from hrnas.search.shrink import ShrinkLog, apply_to_ema, apply_to_optimizer, shrink_block, shrink_tokens

BUDGET_TOLERANCE = 0.05
TOKEN_COSTS = CHOICES["search.token_cost"]
REMOVABLE_SIZES = CHOICES["search.removable_size"]


def budget_input_size(cfg: dict, input_size: tuple[int, int]) -> tuple[int, int]:
    """The input (H, W) at which ``search.budget_macs`` / ``budget_ratio`` are measured: ``budget_size``,
    or the task's ``input_size`` when it is null."""
    size = cfg.get("budget_size")
    if size is None or size == "task":
        return tuple(input_size)
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise UserError(f"search.budget_size must be null (the task's input size) or [H, W] of positive "
                        f"integers, got {size!r}")
    return int(size[0]), int(size[1])


class SearchController:
    """Penalty and shrinking for one network (the HR-NAS part of the task model).

    Args:
        model: the network (an ``HRNet``; DDP-wrapped is fine). A forward pre-hook on it keeps the input
            of the last training step as the probe batch of the shrink reports.
        cfg: the ``search`` section of a recipe (rho, rho_free_epochs, rho_warmup_epochs, threshold,
            shrink_every, min_removable_macs, removable_size, token_cost, budget_macs or budget_ratio,
            budget_size, cost_size, enabled).
        input_size: the task's input (H, W): MACs are accounted at this size.
        steps_per_epoch, total_steps: to convert epochs to steps.
        supernet_macs: MACs of the super network at the budget size (the task's input size unless
            ``budget_size``): the start of the budget schedule and the base of ``budget_ratio``; default:
            the given network's (pass it when resuming a shrunk one).
    """

    def __init__(self, model, cfg: dict, input_size: tuple[int, int], steps_per_epoch: int, total_steps: int,
                 supernet_macs: int | None = None):
        self.enabled = bool(cfg.get("enabled", True))
        self.rho = float(cfg.get("rho") or 0.0)
        self.threshold = float(cfg.get("threshold", 1e-3))
        for name, value in (("search.rho", self.rho), ("search.threshold", self.threshold)):
            if value < 0 or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number >= 0, got {value}")
        self.token_cost = cfg.get("token_cost", "hrnas")
        self.removable_size = cfg.get("removable_size", "cost")
        check_choice("search.token_cost", self.token_cost, TOKEN_COSTS)
        check_choice("search.removable_size", self.removable_size, REMOVABLE_SIZES)
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
        self.budget_size = budget_input_size(cfg, self.input_size)
        self.rho_scale = 1.0
        self.history: list[dict] = []
        net = self._net(model)
        self._blocks = dict(net.searching_blocks())
        self._geo_task = block_geometry(net, self.input_size)
        self._geo_cost = self._geometry(net, self.cost_size)
        self._geo_removable = self._geo_cost if self.removable_size == "cost" else self._geo_task
        self._geo_budget = self._geometry(net, self.budget_size)
        self._token_base = {name: hrnas_token_base(b.transformer, b.transformer.num_tokens)
                            for name, b in self._blocks.items()
                            if b.transformer is not None and b.transformer.token_mode == "channel"}
        self._normaliser = self._mean_unit_cost()
        self._fixed_macs = profile(net, self.input_size, on_meta=False).macs - self._variable_macs(self._geo_task)
        self._fixed_budget = self._fixed_macs if self.budget_size == self.input_size else \
            profile(net, self.budget_size, on_meta=False).macs - self._variable_macs(self._geo_budget)
        self.supernet_macs = float(supernet_macs if supernet_macs is not None else self.macs_at_budget_size())
        self.budget = (float(budget) if budget is not None else
                       float(ratio) * self.supernet_macs if ratio is not None else None)
        self._probe = ProbeBatch(net)

    @staticmethod
    def _net(model):
        return getattr(model, "module", model)

    def _geometry(self, net, size):
        return self._geo_task if tuple(size) == self.input_size else block_geometry(net, size)

    # ---- costs -------------------------------------------------------------------------------------
    def _units(self, geo):
        """(block name, kind, kernel index or None, channels, cost per unit) for every searchable group;
        a token's cost is its true marginal MACs."""
        for name, block in self._blocks.items():
            g = geo[name]
            for k, (kernel, h) in enumerate(zip(block.kernels, block.hidden)):
                yield name, "path", k, h, g.channel_cost(kernel)
            t = block.transformer
            if t is not None and t.token_mode == "channel":
                n = t.num_tokens
                yield name, "tokens", None, n, transformer_true_macs(t, n) - transformer_true_macs(t, n - 1)

    def _mean_unit_cost(self) -> float:
        """The penalty's normaliser: the mean cost of a unit (channel or token) of the network; with
        ``token_cost: hrnas`` a transformer counts its authors'-profiler MACs, as their code does."""
        total = count = 0
        for name, kind, _, n, cost in self._units(self._geo_cost):
            if kind == "tokens" and self.token_cost == "hrnas":
                total += transformer_hrnas_macs(self._blocks[name].transformer, n)
            else:
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

    def macs_at_budget_size(self) -> int:
        """MACs of the current network at ``budget_size`` (equals ``hrnas.profile`` at that size)."""
        return self._fixed_budget + self._variable_macs(self._geo_budget)

    # ---- penalty -----------------------------------------------------------------------------------
    def rho_at(self, step: int) -> float:
        return rho_at(step, self.rho, self.free_steps, self.free_steps + self.warmup_steps) * self.rho_scale

    def _token_weight(self, name: str, gamma: torch.Tensor, true_cost: int):
        """Penalty weight of each token of transformer ``name`` (see :mod:`hrnas.search.costs`): ``hrnas``
        = the authors' formula with n = the tokens whose |γ| is above the threshold now (a tensor, no
        host sync), ``true`` = the true marginal MACs."""
        if self.token_cost == "true":
            return true_cost / self._normaliser
        d = self._blocks[name].transformer.proj_size ** 2
        n = (gamma.detach().abs() > self.threshold).sum().to(gamma.dtype)
        marginal = 2 * d * (n * n - (n - 1).clamp(min=0) ** 2)
        return (self._token_base[name] + marginal) / self._normaliser

    def penalty(self, model, step: int) -> torch.Tensor:
        """λ(step) · Σ w |γ| over every kernel path and transformer (a scalar tensor)."""
        rho = self.rho_at(step) if self.enabled else 0.0
        if rho == 0.0:
            return torch.zeros((), device=next(self._net(model).parameters()).device)
        terms = []
        for name, kind, k, _, cost in self._units(self._geo_cost):
            block = self._blocks[name]
            if kind == "path":
                terms.append(block.dw_bn[k].weight.abs().sum() * (cost / self._normaliser))
            else:
                gamma = block.transformer.input_norm.weight
                terms.append(gamma.abs().sum() * self._token_weight(name, gamma, cost))
        return rho * torch.stack(terms).sum()

    # ---- shrinking ---------------------------------------------------------------------------------
    def _scores(self, ema, rule: str) -> dict:
        """Per block: |γ| per channel of each path and per token (CPU tensors) of the live weights
        (``rule="live"`` or no EMA), of the EMA (``"ema"``) or the larger of the two (``"union"``)."""
        def score(name_param, tensor):
            live = tensor.detach().abs()
            if ema is None or rule == "live":
                return live.cpu()
            avg = ema.shadow[name_param].detach().abs().to(live.device)
            return (avg if rule == "ema" else torch.maximum(live, avg)).cpu()

        scores = {}
        for name, block in self._blocks.items():
            prefix = self._prefix[name]
            paths = [score(f"{prefix}dw_bn.{k}.weight", bn.weight) for k, bn in enumerate(block.dw_bn or [])]
            tokens = None
            if block.transformer is not None and block.transformer.token_mode == "channel":
                tokens = score(f"{prefix}transformer.input_norm.weight", block.transformer.input_norm.weight)
            scores[name] = (paths, tokens)
        return scores

    def _alive(self, scores: dict) -> dict:
        """Per block: bool masks of live channels per path and of live tokens (score above the threshold)."""
        return {name: ([s > self.threshold for s in paths], None if tokens is None else tokens > self.threshold)
                for name, (paths, tokens) in scores.items()}

    def _removable_macs(self, masks, geo) -> int:
        """MACs the masks remove: channels at the geometry's input size, tokens by their true MACs."""
        macs = 0
        for name, (paths, tokens) in masks.items():
            block, g = self._blocks[name], geo[name]
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

    def _fit_budget(self, scores, masks, step: int, final: bool):
        """Budget mode: revive units so as not to go below the budget; kill the least important live
        units (smallest score per MAC at the budget size) while the network is above the scheduled
        target (the budget itself at the end)."""
        current = self.macs_at_budget_size()
        target = self.budget if final else self.budget_target(step)
        units = []  # (importance, name, k or None, index, cost)
        for name, (paths, tokens) in scores.items():
            block, g = self._blocks[name], self._geo_budget[name]
            for k, score in enumerate(paths):
                cost = g.channel_cost(block.kernels[k])
                units.extend((v / cost, name, k, i, cost) for i, v in enumerate(score.tolist()))
            if tokens is not None:
                t, n = block.transformer, block.transformer.num_tokens
                cost = transformer_true_macs(t, n) - transformer_true_macs(t, n - 1)
                units.extend((v / cost, name, None, i, cost) for i, v in enumerate(tokens.tolist()))
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
    def maybe_shrink(self, model, step: int, optimizer=None, ema=None, final: bool = False,
                     probe: torch.Tensor | None = None) -> dict | None:
        """Remove dead channels/tokens if it is time and worth it. Returns a report or None.

        ``ema``: the EMA (its ``.shadow`` by the network's state-dict names) — it takes part in the
        decision and is shrunk and folded with the network. ``probe``: the input batch on which the
        output change is measured (default: the first samples of the last training batch).
        """
        if not self.should_shrink(step, final):
            return None
        net = self._net(model)
        self._prefix = {name: f"{qual}." for qual, m in net.named_modules()
                        for name in [getattr(m, "block_name", None)] if name in self._blocks}
        scores = self._scores(ema, "ema" if final else "union")
        masks = self._alive(scores)
        decision = masks if final or ema is None else self._alive(self._scores(ema, "ema"))
        if self.budget is not None:
            live = self.macs_at_budget_size() - self._removable_macs(masks, self._geo_budget)
            self.rho_scale = self.rho_scale * 1.5 if live > self.budget * (1 + BUDGET_TOLERANCE / 2) else \
                max(self.rho_scale / 1.5, 1e-3)
            masks = decision = self._fit_budget(scores, masks, step, final)
        removable = self._removable_macs(decision, self._geo_removable)
        if removable == 0 or (removable < self.min_removable and not final):
            return None
        if all(bool(m.all()) for paths, tokens in masks.values()
               for m in [*paths, *([] if tokens is None else [tokens])]):
            return None  # the EMA's dead units are alive in the live weights
        before, before_budget = self.macs(), self.macs_at_budget_size()
        shadow = None if ema is None else ema.shadow
        token_blocks = {name: self._blocks[name].transformer for name, (_, tokens) in masks.items()
                        if tokens is not None and not bool(tokens.all())}
        with measure_shrink(net, probe if probe is not None else self._probe.x, token_blocks, shadow) as change:
            log = ShrinkLog()
            for name, block in self._blocks.items():
                paths, tokens = masks[name]
                if block.expand is not None:
                    shrink_block(block, [m.to(block.expand.weight.device) for m in paths], self._prefix[name],
                                 log, shadow)
                if tokens is not None:
                    shrink_tokens(block, tokens.to(block.transformer.input_norm.weight.device),
                                  self._prefix[name], log)
            apply_to_optimizer(optimizer, log)
            apply_to_ema(ema, log)
        report = {"step": step, "final": final, "macs_before": before, "macs": self.macs(),
                  "params": sum(p.numel() for p in net.parameters()),
                  "removed_channels": log.removed_channels, "removed_tokens": log.removed_tokens,
                  "rho_scale": self.rho_scale}
        if self.budget_size != self.input_size:
            report.update(budget_size=list(self.budget_size), macs_before_at_budget_size=before_budget,
                          macs_at_budget_size=self.macs_at_budget_size())
        if change:
            report["output_change"] = change
        self.history.append(report)
        return report

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rho_scale": self.rho_scale, "normaliser": self._normaliser, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.rho_scale = float(state.get("rho_scale", 1.0))
        self._normaliser = float(state.get("normaliser", self._normaliser))
        self.history = list(state.get("history", []))
