"""Optimizers, the authors' coupled L2 penalty and optimizer-state surgery for channel removal.

References: docs/authors-code.md §4 ("Weight decay", "Optimizers") and §3.4 (optimizer state is remapped
when channels are removed); docs/metrics-and-peers.md §5.2 (TF-style RMSprop).
"""
from __future__ import annotations

import torch
from torch import nn

from hrnas.errors import UserError, check_choice, check_keywords

__all__ = [
    "RMSpropTF", "build_optimizer", "build_optimizer_from_config", "optimizer_kwargs", "is_decayed", "l2_penalty",
    "CoupledL2", "decay_param_groups", "slice_optimizer_state", "drop_optimizer_param",
]

DECAY_MODES = ("l2", "decoupled")
# keyword arguments each optimizer accepts besides lr / weight_decay
_EXTRA_KW = {
    "rmsprop_tf": ("alpha", "eps", "momentum"),
    "adam": ("betas", "eps"),
    "adamw": ("betas", "eps"),
    "sgd": ("momentum", "nesterov"),
}
OPTIMIZERS = tuple(_EXTRA_KW)


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as in the authors' (AtomNAS/HR-NAS) code, docs/metrics-and-peers.md §5.2.

    Per step, with g = grad (+ weight_decay * p, coupled):
        square_avg = alpha * square_avg + (1 - alpha) * g²       (square_avg starts at ZERO)
        avg        = sqrt(square_avg + eps)                       (eps INSIDE the sqrt)
        buf        = momentum * buf + g / avg;  p -= lr * buf     (momentum > 0)
        p -= lr * g / avg                                         (momentum == 0)

    Differences to other "TF" variants: TensorFlow and timm initialise square_avg to ONE (first
    steps ~30x smaller with eps 1e-3) and timm folds lr into the momentum buffer; torch's RMSprop
    adds eps outside the sqrt. Per-parameter state: ``square_avg``, ``momentum_buffer`` (when
    momentum > 0), ``step`` — all element-wise tensors have the parameter's shape, so they can be
    sliced when channels are removed (see :func:`slice_optimizer_state`).
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        for name, value in (("lr", lr), ("alpha", alpha), ("eps", eps), ("momentum", momentum),
                            ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"RMSpropTF: {name} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, mom = group["alpha"], group["eps"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("RMSpropTF does not support sparse gradients")
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.zeros_like(p)  # zero init, as the authors' code
                    if mom > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
            if not params:
                continue
            # the update of every parameter at once (torch._foreach_*: the same per-element arithmetic
            # as one tensor at a time, without a Python loop over thousands of small tensors)
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            square_avgs = [self.state[p]["square_avg"] for p in params]
            torch._foreach_mul_(square_avgs, alpha)
            torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - alpha)
            avgs = torch._foreach_add(square_avgs, eps)
            torch._foreach_sqrt_(avgs)
            if mom > 0:
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, mom)
                torch._foreach_addcdiv_(bufs, grads, avgs)
                torch._foreach_add_(params, bufs, alpha=-group["lr"])
            else:
                torch._foreach_addcdiv_(params, grads, avgs, value=-group["lr"])
        return loss


def optimizer_kwargs(name: str, optim_cfg: dict) -> dict:
    """The keyword arguments of optimizer ``name`` taken from a config's ``optim`` section."""
    check_choice("optim.name", name, OPTIMIZERS)
    kw = {k: optim_cfg[k] for k in _EXTRA_KW[name] if k in optim_cfg}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return kw


def build_optimizer(name: str, params_or_groups, lr: float, weight_decay: float, *,
                    decay_mode: str = "l2", **kw) -> torch.optim.Optimizer:
    """Build ``rmsprop_tf | adam | adamw | sgd`` (docs/authors-code.md §4).

    ``decay_mode="l2"`` (the authors' code): the optimizer's own weight decay is 0 and the CALLER
    adds :func:`l2_penalty` to the loss; ``adam`` and ``adamw`` are then both Adam with a coupled
    L2 term. ``decay_mode="decoupled"`` (the paper's "AdamW"): only valid with ``adamw``, which
    becomes ``torch.optim.AdamW`` with ``weight_decay`` on every group that does not set its own
    (use :func:`decay_param_groups` to exempt BN/LayerNorm/bias parameters).
    """
    check_choice("optim.name", name, OPTIMIZERS)
    check_choice("optim.decay_mode", decay_mode, DECAY_MODES)
    check_keywords(f"optimizer {name!r}", kw, _EXTRA_KW[name])
    if lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise UserError(f"optim.weight_decay must be >= 0, got {weight_decay}")
    groups = list(params_or_groups)
    if decay_mode == "l2":
        wd = 0.0
        # groups built by decay_param_groups carry their own weight_decay: zero it, the loss has it
        groups = [dict(g, weight_decay=0.0) if isinstance(g, dict) else g for g in groups]
    else:
        if name != "adamw":
            raise UserError(f"optim.decay_mode='decoupled' needs optim.name='adamw', got {name!r}")
        wd = weight_decay
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, weight_decay=wd, **kw)
    # torch's fused kernels update every tensor in one pass (on the CPU their default is a Python loop over
    # the tensors: Adam over the 2,040 tensors of the tiny Cityscapes super network 49.5 ms a step, fused
    # 13.4 ms, foreach 35.7 ms; one thread, 2-core AMD EPYC)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=wd, fused=True, **kw)
    if decay_mode == "decoupled":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, fused=True, **kw)
    return torch.optim.Adam(groups, lr=lr, weight_decay=0.0, fused=True, **kw)


def build_optimizer_from_config(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """:func:`build_optimizer` from a loaded config's ``optim`` section for ``model``'s trainable
    parameters. With ``decay_mode: l2`` the caller adds the L2 term (``l2_penalty`` to the loss, or its
    gradient with :class:`CoupledL2`); with ``decoupled`` the decay applies to the :func:`is_decayed`
    parameters only."""
    o = cfg["optim"]
    if o["decay_mode"] == "decoupled":
        params = decay_param_groups(model, o["weight_decay"])
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(o["name"], params, o["lr"], o["weight_decay"],
                           decay_mode=o["decay_mode"], **optimizer_kwargs(o["name"], o))


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """The authors' "mnas" weight-decay rule (docs/authors-code.md §4): every parameter with >= 2 dims
    (conv and linear weights, transformer projections, query embeddings) and the classifier bias
    (name ending in ``classifier.bias`` or ``classifier.1.bias``); BN/LayerNorm/other 1-D params
    are exempt."""
    return param.dim() >= 2 or name.endswith(("classifier.bias", "classifier.1.bias"))


def l2_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor:
    """Coupled L2 term ``0.5 * wd * sum ||w||²`` over the parameters selected by :func:`is_decayed`.

    Unlike the authors' ``cal_l2_loss`` there is no assertion that exactly one classifier bias
    exists (docs/authors-code.md §8.2 (item 17)), so heads without one work.
    """
    terms = [p.pow(2).sum() for n, p in model.named_parameters() if is_decayed(n, p)]
    if not terms:
        device = next(iter(model.parameters()), torch.zeros(())).device
        return torch.zeros((), device=device)
    return 0.5 * weight_decay * torch.stack(terms).sum()


class CoupledL2:
    """The coupled L2 term of ``optim.decay_mode: l2``, ``0.5 · weight_decay · Σ ||w||²`` over the
    :func:`is_decayed` parameters of ``model``, as the trainer applies it: :meth:`value` for the loss it logs,
    and :meth:`add_gradient` after the backward pass, which adds ``weight_decay · w`` to every gradient (a
    parameter without one gets this term alone) — the gradient of :func:`l2_penalty` in the loss, in one
    operation over all tensors instead of an autograd graph of two operations per tensor each way (36 of the
    680 ms of a tiny Cityscapes search step). The parameter list is kept until :meth:`refresh` (a shrink)."""

    def __init__(self, model: nn.Module, weight_decay: float):
        self.model, self.weight_decay = model, float(weight_decay)
        self._params: list[torch.Tensor] | None = None

    def params(self) -> list[torch.Tensor]:
        if self._params is None:
            self._params = [p for n, p in self.model.named_parameters() if p.requires_grad and is_decayed(n, p)]
        return self._params

    def refresh(self) -> None:
        self._params = None

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        params = self.params()
        if not params:
            return torch.zeros(())
        return 0.5 * self.weight_decay * torch.stack(torch._foreach_norm(params)).square().sum()

    @torch.no_grad()
    def add_gradient(self) -> None:
        params = self.params()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch._foreach_add_([p.grad for p in params], params, alpha=self.weight_decay)


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: the :func:`is_decayed` parameters with ``weight_decay``, the rest with 0."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if is_decayed(n, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _find_in_groups(optimizer: torch.optim.Optimizer, param: torch.Tensor):
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is param:
                return group, i
    raise ValueError(f"parameter of shape {tuple(param.shape)} is not in the optimizer")


def _is_elementwise(t, new_shape: torch.Size, dim: int, index: torch.Tensor) -> bool:
    """A state tensor that follows the parameter element-wise (exp_avg, square_avg, ...): same rank,
    same sizes as the sliced parameter except along ``dim``, long enough for ``index``."""
    if not torch.is_tensor(t) or t.dim() != len(new_shape):
        return False
    same_other = all(t.shape[d] == new_shape[d] for d in range(t.dim()) if d != dim)
    return same_other and t.shape[dim] > int(index.max())


@torch.no_grad()
def slice_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor,
                          index: torch.Tensor, dim: int) -> None:
    """Keep the entries ``index`` along ``dim`` of ``param``'s optimizer state.

    Contract (docs/authors-code.md §3.4): call it right AFTER the model replaced ``param.data`` by
    ``old[index]`` along ``dim`` (the Parameter object stays the one the optimizer holds). Every
    element-wise state tensor (square_avg, momentum_buffer, exp_avg, exp_avg_sq, ...) becomes its
    ``index_select(dim, index)``; scalar entries (``step``) are kept. To slice along two dims, call it
    twice, exactly once per slicing (the old shape is read from the state tensors). A parameter
    without state yet (never stepped) is left as it is.
    """
    index = torch.as_tensor(index, dtype=torch.long).flatten()
    if index.numel() == 0:
        raise ValueError("empty index: remove the parameter with drop_optimizer_param instead")
    dim = dim % param.dim()
    if param.shape[dim] != index.numel():
        raise ValueError(f"parameter has {param.shape[dim]} entries along dim {dim} "
                         f"but index has {index.numel()}")
    _find_in_groups(optimizer, param)  # raises when the optimizer does not hold ``param``
    state = optimizer.state.get(param, {})
    for key, value in list(state.items()):
        if _is_elementwise(value, param.shape, dim, index):
            state[key] = value.index_select(dim, index.to(value.device)).contiguous()
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
            raise ValueError(f"optimizer state {key!r} of shape {tuple(value.shape)} does not "
                             f"match parameter shape {tuple(param.shape)} along dim {dim}")


def drop_optimizer_param(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
    """Remove a parameter (e.g. of a kernel path whose channels all died) and its state."""
    group, pos = _find_in_groups(optimizer, param)
    del group["params"][pos]
    optimizer.state.pop(param, None)

