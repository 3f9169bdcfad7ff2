"""Exponential moving average of a model's parameters and buffers, keyed by name.

Reference: docs/authors-code.md §4 "EMA" and §3.4 (EMA shadows are sliced when channels are removed);
docs/metrics-and-peers.md §5.3. The authors' ExponentialMovingAverage averages every parameter and
the BN running mean/var with decay ``min(decay ** (batch / base_batch), (1 + t) / (10 + t))``
where ``t`` is the global step counted AFTER the optimizer step (1 at the first update).
"""
from __future__ import annotations


import torch
from torch import nn

from hrnas.engine.distributed import unwrap_model

__all__ = ["ModelEMA", "Shadow"]


class Shadow(dict):
    """The EMA's tensors by name: a dict that counts its changes (``version``), so that the tensor lists
    :meth:`ModelEMA.update` keeps are rebuilt after a shrink slices, drops, renames or adds entries."""

    version = 0

    def _changed(self) -> None:
        self.version += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._changed()

    def clear(self):
        super().clear()
        self._changed()


class ModelEMA:
    """Name-keyed shadow copy of all parameters and buffers of ``model``.

    Float tensors are averaged; integer buffers (``num_batches_tracked``) are copied.
    ``decay`` is the nominal decay; with ``batch_size`` given it is rescaled to
    ``decay ** (batch_size / base_batch)`` (the authors' ``moving_average_decay_adjust``: the
    paper's 0.9999 refers to a batch of 4096); with ``warmup_cap`` each update uses at most
    ``(1 + t) / (10 + t)``, t = number of updates including the current one. The shadow lives on
    the model's device. DDP/DataParallel wrappers are unwrapped.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, base_batch: int = 4096,
                 batch_size: int | None = None, warmup_cap: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if batch_size is not None and (batch_size <= 0 or base_batch <= 0):
            raise ValueError(f"EMA batch_size and base_batch must be > 0, got {batch_size}, {base_batch}")
        self.nominal_decay = float(decay)
        self.decay = float(decay) ** (batch_size / base_batch) if batch_size else float(decay)
        self.warmup_cap = bool(warmup_cap)
        self.num_updates = 0
        self.shadow = Shadow((name, t.detach().clone()) for name, t in self._tensors(model).items())
        self._cache = None

    @classmethod
    def from_config(cls, model: nn.Module, cfg: dict) -> "ModelEMA":
        """The EMA of a loaded config (``ema`` section; batch = ``data.batch_size``)."""
        e = cfg["ema"]
        return cls(model, e["decay"], base_batch=e["base_batch"], warmup_cap=e["warmup_cap"],
                   batch_size=cfg["data"]["batch_size"] if e["batch_adjust"] else None)

    @staticmethod
    def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
        return unwrap_model(model).state_dict(keep_vars=True)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        t = self.num_updates + 1
        if self.warmup_cap:
            return min(self.decay, (1.0 + t) / (10.0 + t))
        return self.decay

    def _check_keys(self, tensors: dict) -> None:
        if tensors.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - tensors.keys())[:3]
            extra = sorted(tensors.keys() - self.shadow.keys())[:3]
            raise KeyError(f"EMA shadow and model differ: only in EMA {missing}, only in model "
                           f"{extra} (slice/drop/rename the shadow after changing the model)")

    def refresh(self) -> None:
        """Forget the cached tensor lists of :meth:`update` (call it after replacing tensors of the model
        by other tensor objects without a matching change of the shadow; shadow changes are seen)."""
        self._cache = None

    def _pairs(self, model: nn.Module):
        """(shadow floats, model floats, shadow others, model others), built once and kept until the
        shadow changes or :meth:`refresh`: collecting the tensors by name takes longer than averaging them
        (6.4 ms against 6.5 ms a step for the tiny Cityscapes super network)."""
        key = (id(unwrap_model(model)), self.shadow.version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        tensors = self._tensors(model)
        self._check_keys(tensors)
        floats, currents, others, other_currents = [], [], [], []
        for name, cur in tensors.items():
            avg = self.shadow[name]
            if avg.shape != cur.shape:
                raise ValueError(f"EMA shadow {name!r} has shape {tuple(avg.shape)}, model has "
                                 f"{tuple(cur.shape)}")
            if avg.is_floating_point():
                floats.append(avg)
                currents.append(cur.detach() if cur.dtype == avg.dtype else cur.detach().to(avg.dtype))
            else:
                others.append(avg)
                other_currents.append(cur.detach())
        pairs = (floats, currents, others, other_currents)
        if all(c.dtype == a.dtype for c, a in zip(currents, floats)):  # (a converted copy is stale next step)
            self._cache = (key, pairs)
        return pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Average the model's current values into the shadow; returns the decay used."""
        floats, currents, others, other_currents = self._pairs(model)
        d = self.current_decay()
        if floats:  # avg = d·avg + (1 - d)·cur for all at once (the same arithmetic as one by one)
            torch._foreach_mul_(floats, d)
            torch._foreach_add_(floats, currents, alpha=1.0 - d)
        if others:
            torch._foreach_copy_(others, other_currents)
        self.num_updates += 1
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the shadow values into ``model`` (in place)."""
        tensors = self._tensors(model)
        self._check_keys(tensors)
        for name, cur in tensors.items():
            cur.copy_(self.shadow[name])

    # --- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"decay": self.decay, "nominal_decay": self.nominal_decay,
                "warmup_cap": self.warmup_cap, "num_updates": self.num_updates,
                "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.nominal_decay = float(state["nominal_decay"])
        self.warmup_cap = bool(state["warmup_cap"])
        self.num_updates = int(state["num_updates"])
        device = next(iter(self.shadow.values())).device if self.shadow else None
        self.shadow = Shadow((k, v.detach().clone().to(device) if device is not None else v.detach().clone())
                             for k, v in state["shadow"].items())
        self._cache = None
