"""Resource costs of the searchable units (paper §3.3; reference official-code.md §3.2, §3.5).

A hidden channel of kernel path k in a searching block costs its expand row, its depthwise filter
and its projection column: ``inp·H_in·W_in + k²·H_out·W_out + oup·H_out·W_out`` MACs. A transformer
token costs the difference of the transformer's true MACs with n and n−1 tokens. Both are measured at
one input size (the task's by default; the authors used 224×224 for every task).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hrnas.models.searching_block import SearchingBlock
from hrnas.models.transformer import LightweightTransformer


def transformer_true_macs(t: LightweightTransformer, num_tokens: int) -> int:
    """True MACs of a transformer with ``num_tokens`` tokens (official-code.md §2.3, generalised)."""
    s2 = t.proj_size ** 2
    dim, length = t.token_shape(num_tokens)
    projections = s2 * num_tokens * (t.in_channels + 2) + s2 * num_tokens * t.out_channels
    layers = 2 if t.decoder is not None else 1
    return projections + layers * (6 * length * dim * dim + 2 * length * length * dim)


@dataclass
class BlockGeometry:
    inp: int
    oup: int
    in_hw: int   # H_in·W_in
    out_hw: int  # H_out·W_out

    def channel_cost(self, kernel: int) -> int:
        return self.inp * self.in_hw + kernel * kernel * self.out_hw + self.oup * self.out_hw


def block_geometry(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, BlockGeometry]:
    """Input/output areas of every searching block for one input of ``size`` (meta-device pass)."""
    net = copy.deepcopy(getattr(model, "module", model)).to("meta").eval()
    geo: dict[str, BlockGeometry] = {}
    hooks = []
    for module in net.modules():
        if isinstance(module, SearchingBlock):
            def hook(m, inp, out):
                x = inp[0]
                geo[m.block_name] = BlockGeometry(m.inp, m.oup, x.shape[2] * x.shape[3], out.shape[2] * out.shape[3])
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        net(torch.zeros(1, net.stem[0][0].in_channels, *size, device="meta", dtype=next(net.parameters()).dtype))
    for h in hooks:
        h.remove()
    return geo
