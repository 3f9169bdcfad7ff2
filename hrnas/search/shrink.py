"""Progressive shrinking: physically remove dead channels, kernel paths, blocks and tokens
(paper §3.3; docs/authors-code.md §3.4–§3.5).

Which channels and tokens are dead is decided by :class:`hrnas.search.SearchController` (|γ| of the
depthwise BN / of ``input_norm`` at most the threshold, in the live and the EMA weights). Removing a
channel deletes its expand row, its BN entries, its depthwise filter and its projection column; a path
with no channel left disappears; a block with no path left becomes its shortcut plus a per-channel
``bias``. At least one token of a transformer is kept.

Channel removal is exact for a channel whose γ is 0: it still emits the constant act(β), which the
projection turns into a constant per output channel. We fold it into the running mean of the projection
BN (eval-mode outputs unchanged; in train mode the batch mean absorbs it anyway). When a block loses
every path, the constant its projection BN produced (passed through the block's SE gate, if any: SE of a
constant map is a constant) becomes the block's ``bias``. The EMA shadow is folded with its *own*
tensors (its β, projection weights, BN statistics, SE weights), so the EMA network's output is unchanged
too. The authors disabled this compensation (docs/authors-code.md §8.2 (item 6)).

Token removal is not exact (a dead token's constant row still takes part in the attention softmax, and
after the first attention layer its row depends on the input; no fold can remove it): the controller
measures the change on a probe batch at every shrink (:mod:`hrnas.search.probe`).

Parameters are shrunk in place (the same ``nn.Parameter`` objects keep their identity), so optimizer
state is sliced with :func:`hrnas.engine.optim.slice_optimizer_state`; the EMA shadow is sliced, renamed
and dropped by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from hrnas.engine.optim import drop_optimizer_param, slice_optimizer_state
from hrnas.models.searching_block import SearchingBlock


@dataclass
class ShrinkLog:
    """What a shrink did, by parameter/buffer name (applied to optimizer and EMA afterwards)."""

    sliced: list = field(default_factory=list)     # (name, tensor or None, index, dim)
    dropped: list = field(default_factory=list)    # (name, tensor or None)
    renamed: dict = field(default_factory=dict)    # old name -> new name
    shifted: dict = field(default_factory=dict)    # name -> value subtracted (BN running mean folding)
    added: dict = field(default_factory=dict)      # name -> new parameter (block bias)
    ema_shifted: dict = field(default_factory=dict)  # the same two, computed from the EMA shadow's tensors
    ema_added: dict = field(default_factory=dict)
    removed_channels: int = 0
    removed_tokens: int = 0


def _slice_(module: nn.Module, attr: str, index: torch.Tensor, dim: int, log: ShrinkLog, prefix: str) -> None:
    tensor = getattr(module, attr)
    if tensor is None:
        return
    tensor.data = tensor.data.index_select(dim, index).contiguous()
    if isinstance(tensor, nn.Parameter) and tensor.grad is not None:
        tensor.grad = tensor.grad.index_select(dim, index).contiguous()
    log.sliced.append((f"{prefix}{attr}", tensor if isinstance(tensor, nn.Parameter) else None, index, dim))


def _slice_bn(bn: nn.BatchNorm2d, index: torch.Tensor, log: ShrinkLog, prefix: str) -> None:
    for attr in ("weight", "bias", "running_mean", "running_var"):
        _slice_(bn, attr, index, 0, log, prefix)
    bn.num_features = int(index.numel())


def _drop_module(module: nn.Module, prefix: str, log: ShrinkLog) -> None:
    for name, tensor in module.state_dict(keep_vars=True).items():
        log.dropped.append((f"{prefix}{name}", tensor if isinstance(tensor, nn.Parameter) else None))


def se_of_constant(se: nn.Module, c: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """SE applied to a map that is the constant ``c`` (per channel) everywhere: its average pool is ``c``,
    so SE(c) = c·σ(expand(relu(reduce(c)))), a constant too. ``params``: other weights for ``se`` (EMA)."""
    x = c.view(1, -1, 1, 1)
    y = se(x) if params is None else torch.func.functional_call(se, params, (x,))
    return y.flatten()


def _constant_shift(get, block: SearchingBlock, alive: list[torch.Tensor], offsets: torch.Tensor) -> torch.Tensor:
    """Σ_k W[:, dead_k]·act(β_k[dead_k]): what the dead channels add to the projection's output, from the
    tensors ``get(name)`` (names relative to the block: the live ones or the EMA's)."""
    w = get("project.weight")[:, :, 0, 0]
    delta = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for k, mask in enumerate(alive):
        dead = (~mask).nonzero().flatten().to(w.device)
        if dead.numel():
            delta += w[:, offsets[k] + dead] @ block.act(get(f"dw_bn.{k}.bias")[dead].clone())
    return delta


def _emptied_bias(get, block: SearchingBlock, delta: torch.Tensor) -> torch.Tensor:
    """The constant output of a block whose every path is removed: the projection BN (eval mode) of the
    folded constant ``delta``, then the block's SE gate."""
    bn = block.project_bn
    mean, var = get("project_bn.running_mean"), get("project_bn.running_var")
    value = get("project_bn.weight") * (delta - mean) / torch.sqrt(var + bn.eps) + get("project_bn.bias")
    if block.se is not None:
        value = se_of_constant(block.se, value, {n: get(f"se.{n}") for n, _ in block.se.named_parameters()})
    return value


@torch.no_grad()
def shrink_block(block: SearchingBlock, alive: list[torch.Tensor], prefix: str, log: ShrinkLog,
                 shadow=None) -> None:
    """Keep the channels ``alive[k]`` (bool per hidden channel) of each kernel path of ``block``.

    ``shadow``: the EMA shadow (a mapping by the network's state-dict names, ``prefix`` included); its
    fold is computed from its own tensors and applied by :func:`apply_to_ema`.
    """
    if block.expand is None or all(bool(m.all()) for m in alive):
        return
    offsets = torch.tensor([0, *block.hidden]).cumsum(0)
    live = block.state_dict(keep_vars=True)
    getters = {"live": lambda n: live[n].detach()}
    if shadow is not None:
        getters["ema"] = lambda n: shadow[f"{prefix}{n}"]
    deltas = {which: _constant_shift(get, block, alive, offsets) for which, get in getters.items()}
    log.removed_channels += sum(int((~m).sum()) for m in alive)
    keep = torch.cat([offsets[k] + m.nonzero().flatten() for k, m in enumerate(alive)])
    if keep.numel() == 0:  # the block becomes its shortcut plus the constant its BN (and SE) produced
        values = {which: _emptied_bias(get, block, deltas[which]) for which, get in getters.items()}
        for attr in ("expand", "expand_bn", "dw", "dw_bn", "project", "project_bn", "se"):
            if getattr(block, attr) is not None:
                _drop_module(getattr(block, attr), f"{prefix}{attr}.", log)
                setattr(block, attr, None)
        block.bias = nn.Parameter(values["live"].detach().clone())
        log.added[f"{prefix}bias"] = block.bias
        if "ema" in values:
            log.ema_added[f"{prefix}bias"] = values["ema"]
        block.kernels, block.hidden, block.se_on = (), (), None
        return
    block.project_bn.running_mean -= deltas["live"]
    log.shifted[f"{prefix}project_bn.running_mean"] = deltas["live"]
    if "ema" in deltas:
        log.ema_shifted[f"{prefix}project_bn.running_mean"] = deltas["ema"]
    _slice_(block.expand, "weight", keep, 0, log, f"{prefix}expand.")
    block.expand.out_channels = int(keep.numel())
    _slice_bn(block.expand_bn, keep, log, f"{prefix}expand_bn.")
    _slice_(block.project, "weight", keep, 1, log, f"{prefix}project.")
    block.project.in_channels = int(keep.numel())
    kernels, hidden, dws, bns = [], [], [], []
    for k, mask in enumerate(alive):
        idx = mask.nonzero().flatten()
        new_k = len(kernels)
        if idx.numel() == 0:
            _drop_module(block.dw[k], f"{prefix}dw.{k}.", log)
            _drop_module(block.dw_bn[k], f"{prefix}dw_bn.{k}.", log)
            continue
        dw, bn = block.dw[k], block.dw_bn[k]
        _slice_(dw, "weight", idx, 0, log, f"{prefix}dw.{k}.")
        dw.in_channels = dw.out_channels = dw.groups = int(idx.numel())
        _slice_bn(bn, idx, log, f"{prefix}dw_bn.{k}.")
        if new_k != k:
            for sub, module in (("dw", dw), ("dw_bn", bn)):
                for name in module.state_dict():
                    log.renamed[f"{prefix}{sub}.{k}.{name}"] = f"{prefix}{sub}.{new_k}.{name}"
        kernels.append(block.kernels[k])
        hidden.append(int(idx.numel()))
        dws.append(dw)
        bns.append(bn)
    block.dw, block.dw_bn = nn.ModuleList(dws), nn.ModuleList(bns)
    block.kernels, block.hidden = tuple(kernels), tuple(hidden)


@torch.no_grad()
def shrink_tokens(block: SearchingBlock, alive: torch.Tensor, prefix: str, log: ShrinkLog) -> None:
    """Keep the transformer tokens ``alive`` (bool per token); at least one token survives.

    Not exact, whatever γ is (see the module docstring): the controller reports the measured change."""
    t = block.transformer
    if t is None or t.token_mode != "channel" or bool(alive.all()):
        return
    if not bool(alive.any()):
        alive = alive.clone()
        alive[t.input_norm.weight.abs().argmax()] = True
    keep = alive.nonzero().flatten()
    log.removed_tokens += int((~alive).sum())
    p = f"{prefix}transformer."
    _slice_(t.input_proj, "weight", keep, 0, log, f"{p}input_proj.")
    t.input_proj.out_channels = int(keep.numel())
    _slice_bn(t.input_norm, keep, log, f"{p}input_norm.")
    if t.query_embed is not None:
        _slice_(t, "query_embed", keep, 0, log, p)
    _slice_(t.reverse_proj, "weight", keep, 1, log, f"{p}reverse_proj.")
    t.reverse_proj.in_channels = int(keep.numel())


def apply_to_optimizer(optimizer: torch.optim.Optimizer | None, log: ShrinkLog) -> None:
    """Slice / drop the optimizer state of the changed parameters; register added ones."""
    if optimizer is None:
        return
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for _, param, index, dim in log.sliced:
        if param is not None and id(param) in in_opt:
            slice_optimizer_state(optimizer, param, index, dim)
    for _, param in log.dropped:
        if param is not None and id(param) in in_opt:
            drop_optimizer_param(optimizer, param)
    if log.added:
        # block biases take no weight decay (like BN parameters): the group with the least decay
        group = min(optimizer.param_groups, key=lambda g: g.get("weight_decay", 0.0))
        group["params"].extend(log.added.values())


def apply_to_ema(ema, log: ShrinkLog) -> None:
    """Slice, drop, rename and shift the EMA shadow tensors like the model's; the folds are the EMA's own
    (``shrink_block(..., shadow=ema.shadow)`` computed them)."""
    if ema is None:
        return
    missing = sorted((set(log.shifted) - set(log.ema_shifted)) | (set(log.added) - set(log.ema_added)))
    if missing:
        raise ValueError(f"no EMA fold for {missing[:3]}: pass the EMA shadow to shrink_block")
    shadow = ema.shadow
    for name, _, index, dim in log.sliced:
        if name in shadow:
            shadow[name] = shadow[name].index_select(dim, index.to(shadow[name].device)).contiguous()
    for name, _ in log.dropped:
        shadow.pop(name, None)
    if log.renamed:
        moved = {new: shadow.pop(old) for old, new in log.renamed.items() if old in shadow}
        shadow.update(moved)
    for name, delta in log.ema_shifted.items():
        shadow[name] = shadow[name] - delta.to(shadow[name].device)
    for name, value in log.ema_added.items():
        shadow[name] = value.detach().clone()
