"""Parameters and multiply-adds (MACs) of HR-NAS networks, per part, in two conventions.

* ``true``: every convolution, linear layer and attention matmul (QKᵀ and AV). This equals PyTorch's
  ``torch.utils.flop_counter.FlopCounterMode`` / 2 (tested), except that the counter does not see the
  stride-1 grouped shortcuts, which the CPU computes as sums of products
  (:class:`~hrnas.models.searching_block.GroupedShortcut`); we count with forward hooks, which is much
  faster. On the CPU, PyTorch's flop counter has no rule for the fused attention kernel
  ``_scaled_dot_product_flash_attention_for_cpu``; importing this module registers the standard one.
* ``hrnas``: the authors' profiler (``utils/model_profiling.py``; docs/authors-code.md §2.3, §5),
  which the paper's tables used: convolutions and linear layers exactly, the encoder attention as
  2·L·S·E + 4·L·E², the decoder attention not at all, each transformer FFN linear as L MACs; an SE gate
  as its two 1×1 convs plus C·H·W for its input; parameters of convolutions and linear layers only (no
  BN, LayerNorm, attention projections or queries). Their fused retraining block (our SE on the hidden
  features) is profiled without its shortcut conv (neither its params nor its MACs), as their rule for
  that block omits it.

The paper's "FLOPs" are these MACs. Parts: stem, fuse0…fuse4, parallel0…parallel4, head, classifier.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.utils import flop_counter

from hrnas.errors import UserError
from hrnas.models.non_local import NonLocal
from hrnas.models.squeeze_excite import SqueezeExcite
from hrnas.models.searching_block import SearchingBlock
from hrnas.models.transformer import Attention, LightweightTransformer

CONVENTIONS = ("true", "hrnas")


def _register_cpu_attention_flops() -> None:
    aten = torch.ops.aten
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op, get_raw=True)
    def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


_register_cpu_attention_flops()


@dataclass
class Profile:
    size: tuple[int, int]
    convention: str
    params: int
    macs: int
    params_all: int
    parts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = f"{self.size[0]}x{self.size[1]}"
        return d


def part_of(name: str) -> str:
    """Map a module's qualified name to its part of the network."""
    bits = name.split(".")
    if bits[0] in ("fuse", "parallel") and len(bits) > 1:
        return f"{bits[0]}{bits[1]}"
    if bits[0] == "head":
        return "classifier" if len(bits) > 1 and bits[1] == "classifier" else "head"
    return bits[0]


def _parts_template(model: nn.Module) -> dict[str, dict[str, int]]:
    parts: dict[str, dict[str, int]] = {}
    for name, _ in model.named_children():
        if name in ("fuse", "parallel"):
            for i, _ in enumerate(getattr(model, name)):
                parts[f"{name}{i}"] = {"params": 0, "macs": 0}
        elif name == "head":
            parts["head"] = {"params": 0, "macs": 0}
            if getattr(model.head, "classifier", None) is not None:
                parts["classifier"] = {"params": 0, "macs": 0}
        else:
            parts[name] = {"params": 0, "macs": 0}
    order = ["stem"] + [f"{k}{i}" for i in range(5) for k in ("fuse", "parallel")] + ["head", "classifier"]
    return {k: parts[k] for k in order if k in parts} | {k: v for k, v in parts.items() if k not in order}


def _inside_transformer(model: nn.Module) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, LightweightTransformer):
            names.update(f"{name}.{sub}" for sub, _ in module.named_modules() if sub)
    return names


def _fused_shortcuts(model: nn.Module) -> set[str]:
    """Names of the shortcut convs of blocks built as the authors' fused block (SE on the hidden features,
    whether or not the block kept any path): the authors' profiler does not see them."""
    from hrnas.models.factory import se_config

    opts = getattr(model, "options", None)
    if opts is None or "se_ratio" not in opts:
        return set()
    se = se_config(opts)
    if se.on != "hidden":
        return set()
    return {f"{name}.shortcut" for name, m in model.named_modules()
            if isinstance(m, SearchingBlock) and not m.residual and se.applies_to(m.inp, m.oup, m.stride)}


def _hrnas_param_modules(model: nn.Module):
    """Modules whose parameters the authors' profiler sees: convs and linears outside attention (and
    outside the fused blocks' shortcuts)."""
    hidden = {f"{n}.{s}" for n, m in model.named_modules() if isinstance(m, Attention)
              for s, _ in m.named_modules() if s} | _fused_shortcuts(model)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in hidden:
            yield name, module


def profile(model: nn.Module, size: tuple[int, int], convention: str = "true", on_meta: bool = True) -> Profile:
    """Params and MACs of ``model`` for one input of ``size`` = (H, W) (batch 1, eval mode).

    ``on_meta`` (default) counts on a copy of the model on the meta device: no memory and no arithmetic,
    but slow per operation (a few seconds). ``on_meta=False`` runs one real forward pass of the model
    itself under ``no_grad`` (eval mode, restored afterwards): fast for small inputs.
    """
    if convention not in CONVENTIONS:
        raise UserError(f"convention: unknown value '{convention}'; accepted: {', '.join(CONVENTIONS)}")
    net = getattr(model, "module", model)
    parts = _parts_template(net)
    for name, p in net.named_parameters():
        parts[part_of(name)]["params"] += p.numel()
    params_all = sum(v["params"] for v in parts.values())
    was_training = net.training
    if on_meta:
        net = _meta_copy(net)
    net.eval()
    first = next(net.parameters())
    x = torch.zeros(1, net.stem[0][0].in_channels, *size, device=first.device, dtype=first.dtype)
    try:
        return _count(net, x, size, convention, parts, params_all)
    finally:
        net.train(was_training)


# normalisations and activations hold no MACs in either convention, and on the meta device their kernels are
# Python decompositions (BN alone: 3.8 s of a 4.8 s meta pass over a searched Cityscapes network at 512x1024)
_SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid,
                     nn.Hardsigmoid, nn.Hardswish, nn.GELU)


class _ShapeOnlyTransformer(LightweightTransformer):
    """A transformer in the meta copy: both conventions count its attention layers by the transformer's
    formula and its two projections by their shapes, so on the meta device it runs just the projections on
    inputs of their shapes and returns an output of the right shape. Computing it there goes through Python
    decompositions (the bilinear resizes above all: 1.2 of 1.4 s for a searched network with 44 transformers
    at 512×1024)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.proj_size
        self.input_proj(x.new_empty(b, self.in_channels + 2, s, s))
        self.reverse_proj(x.new_empty(b, self.num_tokens, s, s))
        return x.new_empty(b, self.out_channels, *self.output_size(h, w))


def _meta_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` on the meta device with its normalisation and activation layers replaced by identities
    and its transformers computing shapes only (:class:`_ShapeOnlyTransformer`)."""
    meta = copy.deepcopy(net).to("meta")
    for parent in list(meta.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _SHAPE_PRESERVING):
                setattr(parent, name, nn.Identity())
            elif type(child) is LightweightTransformer:
                child.__class__ = _ShapeOnlyTransformer
    return meta


_PROFILES: dict[str, Profile] = {}


def profile_arch(arch: dict, size, convention: str = "true") -> Profile:
    """:func:`profile` of an architecture spec (or, without "blocks", of its super network) on the meta
    device; cached per process (a search and its retraining profile the same super network)."""
    from hrnas.models import build_model

    key = json.dumps([arch, list(size), convention], sort_keys=True)
    if key not in _PROFILES:
        net = build_model(arch=arch) if "blocks" in arch else build_model(arch["task"], **arch["model"])
        _PROFILES[key] = profile(net, size, convention)
    return _PROFILES[key]


def profile_export(arch: dict, size) -> dict:
    """Params and MACs (true convention) of a searched network and of its super network at ``size``
    (run.json's ``profile``)."""
    searched = profile_arch(arch, size)
    supernet = profile_arch({"task": arch["task"], "model": arch["model"]}, size)
    return {"size": f"{size[0]}x{size[1]}", "convention": "true", "macs": searched.macs,
            "params": searched.params, "supernet_macs": supernet.macs, "supernet_params": supernet.params,
            "macs_ratio": searched.macs / supernet.macs, "params_ratio": searched.params / supernet.params}


def _count(net, x, size, convention, parts, params_all) -> Profile:
    if convention == "true":
        params = params_all
    else:
        for part in parts.values():
            part["params"] = 0
        for name, module in _hrnas_param_modules(net):
            parts[part_of(name)]["params"] += sum(p.numel() for p in module.parameters(recurse=False))
        params = sum(v["params"] for v in parts.values())
    macs = _hooked_macs(net, x, parts, convention)
    return Profile(size=tuple(size), convention=convention, params=params, macs=macs, params_all=params_all,
                   parts=parts)


def _hooked_macs(net: nn.Module, x: torch.Tensor, parts: dict, convention: str) -> int:
    """One forward pass with hooks: convs and linears by their shapes, attention by its formula."""
    skip = _inside_transformer(net)
    unseen = _fused_shortcuts(net) if convention == "hrnas" else set()
    hooks = []

    def conv_hook(part):
        def hook(m, inp, out):
            k = m.kernel_size[0] * m.kernel_size[1]
            out = out[0] if isinstance(out, list) else out  # PathExpansion: per-path outputs, one size
            parts[part]["macs"] += m.in_channels * m.out_channels * k * out.shape[2] * out.shape[3] // m.groups
        return hook

    def linear_hook(part):
        def hook(m, inp, out):
            rows = 1 if convention == "hrnas" else inp[0].numel() // m.in_features
            parts[part]["macs"] += m.in_features * m.out_features * rows
        return hook

    def transformer_hook(part):
        def hook(m, inp, out):
            parts[part]["macs"] += m.hrnas_attention_macs() if convention == "hrnas" else m.attention_macs()
        return hook

    def se_hook(part):
        def hook(m, inp, out):  # the authors' SE rule: C·H·W for the gated input (+ its convs, hooked)
            if convention == "hrnas":
                x = inp[0]
                parts[part]["macs"] += sum(p[0].numel() for p in ([x] if isinstance(x, torch.Tensor) else x))
        return hook

    def nonlocal_hook(part):
        def hook(m, inp, out):
            if convention == "true":  # the authors' profiler has no rule for attention matmuls
                parts[part]["macs"] += m.attention_macs(*inp[0].shape[-2:])
        return hook

    for name, module in net.named_modules():
        part = part_of(name) if name else None
        if isinstance(module, nn.Conv2d) and name not in unseen:
            hooks.append(module.register_forward_hook(conv_hook(part)))
        elif isinstance(module, nn.Linear) and name not in skip:
            hooks.append(module.register_forward_hook(linear_hook(part)))
        elif isinstance(module, LightweightTransformer):
            hooks.append(module.register_forward_hook(transformer_hook(part)))
        elif isinstance(module, NonLocal):
            hooks.append(module.register_forward_hook(nonlocal_hook(part)))
        elif isinstance(module, SqueezeExcite):
            hooks.append(module.register_forward_hook(se_hook(part)))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(v["macs"] for v in parts.values())
