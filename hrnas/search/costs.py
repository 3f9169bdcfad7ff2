"""Resource costs of the searchable units (paper §3.3; docs/authors-code.md §3.2, §3.5).

A hidden channel of kernel path k in a searching block costs its expand row, its depthwise filter
and its projection column: ``inp·H_in·W_in + k²·H_out·W_out + oup·H_out·W_out`` MACs, at one input size
(``search.cost_size``: the authors used 224×224 for every task). A transformer's cost does not depend on
the input size. Its tokens are weighted in the penalty in one of two ways (``search.token_cost``):

* ``hrnas`` (the authors' ``PruneInfoTransformer.update_penalty``): with F the transformer's MACs in the
  authors' profiler convention at its initial n0 tokens, d the token dimension and n the tokens alive
  now, a token costs ``(F − 2·n0²·d)/n0 + 2·(n² − (n−1)²)·d``: the per-token share of everything but
  the encoder's two attention matmuls (QKᵀ, AV: 2·n²·d) plus the marginal cost of those. The authors
  hard-code d = 64, which is s² for their s = 8; we use d = s² (the channel token's dimension).
* ``true`` (ours): the difference of the transformer's true MACs with n and n−1 tokens (about 2.4× the
  ``hrnas`` weight for n = 64, s = 8, C = 18: every projection and both attention layers counted).

Removing a token (budget accounting, removable MACs) always counts its true MACs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hrnas.models.transformer import LightweightTransformer


def transformer_true_macs(t: LightweightTransformer, num_tokens: int) -> int:
    """True MACs of a transformer with ``num_tokens`` tokens (docs/authors-code.md §2.3, generalised)."""
    return t.projection_macs(num_tokens) + t.attention_macs(num_tokens)


def transformer_hrnas_macs(t: LightweightTransformer, num_tokens: int) -> int:
    """MACs the authors' profiler reports for a channel-token transformer with ``num_tokens`` tokens: its
    two 1×1 projections at s×s plus :meth:`LightweightTransformer.hrnas_attention_macs`, i.e.
    ``n·d·(C_in + 2 + C_out) + 4·n·d² + 2·n²·d + 4·n`` with a decoder (``2·n`` without)."""
    return t.projection_macs(num_tokens) + t.hrnas_attention_macs(num_tokens)


def hrnas_token_base(t: LightweightTransformer, initial_tokens: int) -> int:
    """The n-independent part of the authors' per-token cost, ``(F − 2·n0²·d)/n0`` with F =
    :func:`transformer_hrnas_macs` at n0 = ``initial_tokens`` and d = s². F is linear in n0 apart from
    the 2·n0²·d term, so the value is the same for every n0 (a resumed, already shrunk transformer
    gives the super network's value)."""
    d = t.proj_size ** 2
    return (transformer_hrnas_macs(t, initial_tokens) - 2 * initial_tokens ** 2 * d) // initial_tokens


@dataclass
class BlockGeometry:
    inp: int
    oup: int
    in_hw: int   # H_in·W_in
    out_hw: int  # H_out·W_out

    def channel_cost(self, kernel: int) -> int:
        return self.inp * self.in_hw + kernel * kernel * self.out_hw + self.oup * self.out_hw


def branch_sizes(size: tuple[int, int], branches: int = 4) -> list[tuple[int, int]]:
    """Feature-map sizes of the branches: the stem's two stride-2 convs give 1/4, each branch halves."""
    h, w = size
    h, w = -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2)  # ceil(ceil(x/2)/2)
    out = [(h, w)]
    for _ in range(branches - 1):
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def block_geometry(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, BlockGeometry]:
    """Input/output areas of every searching block for one input of ``size`` (from the network's
    ``feature_info``: the branches each block reads and computes at)."""
    net = getattr(model, "module", model)
    sizes = branch_sizes(size)
    blocks = dict(net.searching_blocks())
    geo = {}
    for info in net.feature_info:
        i, o = info.in_branch, info.out_branch
        block = blocks[info.name]
        geo[info.name] = BlockGeometry(block.inp, block.oup, sizes[i][0] * sizes[i][1], sizes[o][0] * sizes[o][1])
    return geo
