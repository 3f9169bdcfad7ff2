"""Plug-ins of the training loop: what a search (or any other cross-cutting concern) adds to a run.

The loop (:class:`hrnas.engine.trainer.Trainer`) knows nothing of the search; it calls a hook's
methods at fixed points, as mmengine's runner calls its hooks:

``setup(trainer)``            after the network, the optimizer, the EMA and the data exist
``loss_terms(step)``          extra loss terms of iteration ``step`` (0-based): ``(tensor, logs)``
``after_step(step, final)``   after the optimizer/EMA update; may edit the network (e.g. shrink it) and
                              returns a report dict, after which the loop re-wraps the network
``row(step)``                 extra fields of the epoch / evaluation row of ``metrics.jsonl``
``eligible_for_best()``       whether the current network may be the run's "best" (default: yes)
``state_dict()`` / ``load_state_dict(state)``  what a checkpoint keeps of the hook
``export(best)``              the architecture the run exports, given the best-validation record
                              (None: the final network)
``record()``                  extra fields of the finished ``run.json``

:class:`hrnas.search.hook.SearchHook` is the HR-NAS search as such a hook.
"""
from __future__ import annotations

__all__ = ["Hook"]


class Hook:
    """A plug-in of :class:`~hrnas.engine.trainer.Trainer`; every method is a no-op by default."""

    #: the key under which a checkpoint keeps this hook's state
    name = "hook"

    def setup(self, trainer) -> None:
        self.trainer = trainer

    def loss_terms(self, step: int):
        """``(extra loss tensor or None, dict of logged scalars)`` of iteration ``step`` (0-based)."""
        return None, {}

    def after_step(self, step: int, final: bool) -> dict | None:
        return None

    def row(self, step: int) -> dict:
        return {}

    def eligible_for_best(self) -> bool:
        return True

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass

    def export(self, best: dict | None) -> dict | None:
        return None

    def record(self) -> dict:
        return {}
