"""The HR-NAS search as a plug-in of the training loop (§3.3: resource-aware L1 penalty on the BN γ and
the token γ, progressive shrinking, an optional MACs budget).

:class:`SearchHook` builds a :class:`~hrnas.search.controller.SearchController` for the trainer's
searchable network and, at the loop's fixed points (:class:`hrnas.engine.hooks.Hook`), adds the penalty
to the loss, shrinks the network (and the optimizer state and EMA shadow with it) after a step,
keeps a network over the budget from being the run's "best", and checkpoints the controller's state.
"""
from __future__ import annotations

from collections.abc import MutableMapping

from torch import nn
from tqdm.auto import tqdm

from hrnas.engine.hooks import Hook
from hrnas.search.controller import BUDGET_TOLERANCE, SearchController, budget_input_size

__all__ = ["SearchHook", "EMAView", "search_hooks"]


def search_hooks(cfg: dict) -> list:
    """The hooks of a search run with recipe ``cfg``: the search, unless ``search.enabled`` is false. A
    recipe the search cannot shrink exactly is refused here, before any data or network is built."""
    from hrnas.models.factory import check_searchable

    if not cfg["search"]["enabled"]:
        return []
    check_searchable(cfg["model"])
    return [SearchHook()]


class _PrefixedShadow(MutableMapping):
    """A view of an EMA's shadow dict whose keys carry ``prefix`` (the searched backbone of a detector).
    It looks the dict up on every access: ``ModelEMA.load_state_dict`` replaces it."""

    def __init__(self, ema, prefix: str):
        self.ema, self.prefix = ema, prefix

    def __getitem__(self, key):
        return self.ema.shadow[self.prefix + key]

    def __setitem__(self, key, value):
        self.ema.shadow[self.prefix + key] = value

    def __delitem__(self, key):
        del self.ema.shadow[self.prefix + key]

    def __iter__(self):
        n = len(self.prefix)
        return (k[n:] for k in list(self.ema.shadow) if k.startswith(self.prefix))

    def __len__(self):
        return sum(1 for k in self.ema.shadow if k.startswith(self.prefix))


class EMAView:
    """What the search controller needs of the EMA (``.shadow``), with names relative to a submodule."""

    def __init__(self, ema, prefix: str):
        self.shadow = _PrefixedShadow(ema, prefix)


def module_prefix(root: nn.Module, sub: nn.Module) -> str:
    """The state-dict prefix of submodule ``sub`` in ``root`` (``""`` when it is ``root``)."""
    if sub is root:
        return ""
    for name, module in root.named_modules():
        if module is sub:
            return name + "."
    raise ValueError("the searchable network is not a submodule of the model")


class SearchHook(Hook):
    """The search of ``hrnas search``: penalty, shrinking, budget-aware "best", controller state."""

    name = "search"

    def setup(self, trainer) -> None:
        from hrnas.models import spec_of
        from hrnas.profile import profile_arch

        super().setup(trainer)
        cfg, task = trainer.cfg["search"], trainer.task
        self.net = trainer.searchable
        supernet = None  # budget mode only: a resumed run's network may be shrunk, budgets refer to its supernet
        if cfg["budget_macs"] is not None or cfg["budget_ratio"] is not None:
            spec = spec_of(self.net)
            supernet = profile_arch({"task": spec["task"], "model": spec["model"]},
                                    budget_input_size(cfg, task.input_size())).macs
        self.controller = SearchController(self.net, cfg, input_size=task.input_size(),
                                           steps_per_epoch=trainer.steps_per_epoch, total_steps=trainer.total_steps,
                                           supernet_macs=supernet)
        self.ema = None if trainer.ema is None else EMAView(trainer.ema, module_prefix(trainer.net, self.net))

    def loss_terms(self, step: int):
        penalty = self.controller.penalty(self.net, step)
        return penalty, {"penalty": float(penalty.detach()), "rho": self.controller.rho_at(step)}

    def after_step(self, step: int, final: bool) -> dict | None:
        t = self.trainer
        report = self.controller.maybe_shrink(self.net, step, optimizer=t.optimizer, ema=self.ema, final=final)
        if report and t.progress:
            tqdm.write(f"[step {report['step']}] shrink: -{report['removed_channels']} channels, "
                       f"-{report['removed_tokens']} tokens -> {report['macs'] / 1e6:.1f} MMACs "
                       f"(at {'x'.join(map(str, t.task.input_size()))})")
        return report

    def row(self, step: int) -> dict:
        return {"rho": self.controller.rho_at(step), "macs": self.controller.macs()}

    def eligible_for_best(self) -> bool:
        """Budget mode: only a network within the budget (+ the tolerance) may be the best one."""
        c = self.controller
        return c.budget is None or c.macs() <= c.budget * (1 + BUDGET_TOLERANCE)

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)

    def export(self, best: dict | None) -> dict | None:
        """``search.export: best_val``: the best-validation network (the authors' ``best_model.json``)."""
        if self.trainer.cfg["search"]["export"] == "best_val" and best is not None:
            return best["arch"]
        return None

    def record(self) -> dict:
        return {"shrink_history": self.controller.history}
