"""What a shrink does to the network's output, measured on a probe batch (paper §3.3, ours).

Removing a dead channel is exact (its constant output is folded, :mod:`hrnas.search.shrink`); removing a
transformer token is not, and no fold can make it so: a token's γ only scales its *input* row, and with
γ = 0 the row is the constant β; that row still takes part in the encoder's softmax (as a key and value
of every other token) and, after the first attention layer, its own row depends on the input. A
bound on the change would have to run through two post-norm LayerNorms whose input spread can be
arbitrarily small, so we measure instead: every shrink runs the network (eval mode, no gradients) on a
probe batch — the first samples of the last training batch — before and after, and reports the exact
change of

* each shrunk transformer's output (the block's transformer path, on the block input it had before
  the shrink): ``max_abs`` and ``rel`` = ‖Δ‖₂ / ‖y‖₂;
* the whole network's output, with the live weights and with the EMA weights (when there is an EMA).

Cost per shrink: four forward passes of the probe (two without an EMA), two in-place copies of the
network's weights (to evaluate the EMA weights) and one pass of each shrunk transformer.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import torch
import torch.nn as nn

PROBE_SAMPLES = 4  # samples of the last training batch kept as the probe


class ProbeBatch:
    """Keeps a reference to (the first ``samples`` of) the input of ``net``'s last training forward.

    A forward pre-hook on ``net`` itself: copies of the network (evaluation copies, the profiler's meta
    copy) and evaluation passes do not replace it. It holds the batch, so memory grows by one input batch.
    """

    def __init__(self, net: nn.Module, samples: int = PROBE_SAMPLES):
        self.x: torch.Tensor | None = None
        holder = self

        # a plain function: deep copies of ``net`` share it (instead of copying this object), and the
        # identity check ignores their forwards
        def keep(module, args):
            if module is net and module.training and args and torch.is_tensor(args[0]):
                holder.x = args[0].detach()[:samples]

        self._handle = net.register_forward_pre_hook(keep)


def _flat(y) -> torch.Tensor:
    if torch.is_tensor(y):
        return y.detach().flatten().double()
    if isinstance(y, Mapping):
        y = list(y.values())
    return torch.cat([_flat(v) for v in y])


def _change(before: torch.Tensor, after: torch.Tensor) -> dict:
    delta = after - before
    norm = float(before.norm())
    return {"max_abs": float(delta.abs().max()) if delta.numel() else 0.0,
            "rel": float(delta.norm()) / norm if norm > 0 else float(delta.norm())}


@contextlib.contextmanager
def _ema_weights(net: nn.Module, shadow: Mapping):
    """Temporarily load the EMA shadow into ``net`` (in place; restored bit for bit)."""
    tensors = net.state_dict(keep_vars=True)
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    try:
        for name, t in tensors.items():
            t.detach().copy_(shadow[name])
        yield
    finally:
        for name, t in tensors.items():
            t.detach().copy_(saved[name])


def _network_outputs(net: nn.Module, x: torch.Tensor, shadow: Mapping | None) -> dict:
    out = {"network": _flat(net(x))}
    if shadow is not None:
        with _ema_weights(net, shadow):
            out["ema_network"] = _flat(net(x))
    return out


@contextlib.contextmanager
def measure_shrink(net: nn.Module, x: torch.Tensor | None, transformers: dict[str, nn.Module],
                   shadow: Mapping | None = None):
    """Measure the output change of what is done inside the ``with`` block (a shrink of ``net``).

    ``transformers``: name → the transformers whose tokens the shrink removes. ``shadow``: the EMA's
    shadow (by ``net``'s state-dict names), read before and after. Yields a dict that is filled on exit
    (left empty when ``x`` is None): ``samples``, ``seconds``, ``network`` / ``ema_network`` and
    ``tokens`` (per transformer) changes, each ``{"max_abs", "rel"}``.
    """
    report: dict = {}
    if x is None:
        yield report
        return
    t0 = time.perf_counter()
    was_training = net.training
    inputs, outputs, hooks = {}, {}, []
    for name, t in transformers.items():
        def keep(module, args, out, name=name):
            inputs[name], outputs[name] = args[0], out.detach().double()
        hooks.append(t.register_forward_hook(keep))
    net.eval()
    try:
        with torch.no_grad():
            before = _network_outputs(net, x, shadow)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    spent = time.perf_counter() - t0
    yield report
    t0 = time.perf_counter()
    net.eval()
    try:
        with torch.no_grad():
            after = _network_outputs(net, x, shadow)
            tokens = {}
            for name, t in transformers.items():
                if name in inputs:
                    tokens[name] = _change(outputs[name], t(inputs[name]).double())
    finally:
        net.train(was_training)
    report.update({"samples": int(x.shape[0]), **{k: _change(before[k], after[k]) for k in after},
                   "tokens": tokens, "seconds": round(spent + time.perf_counter() - t0, 4)})
