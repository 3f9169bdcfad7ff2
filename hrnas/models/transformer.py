"""The lightweight transformer of HR-NAS (paper §3.2; docs/authors-code.md §2).

A feature map B×C×H×W is projected to a tiny s×s map (bilinear sampling, the *projection size*), two
standardised coordinate channels are appended (the ``points`` position encoding), and a 1×1 convolution
makes ``n`` token maps followed by BatchNorm, whose scales γ measure each token's importance for the
search. With *channel tokens* (the paper's choice) each of the n maps is one token of dimension d = s²;
with *spatial tokens* (supplement Table 2) each of the s² positions is a token of dimension n. One
encoder layer (self-attention + FFN, post-norm) and, optionally, one decoder layer with learned
queries (cross-attention + FFN) process the tokens; a reverse 1×1 projection + BN maps them back to
the output channels and a bilinear resize restores the block's output resolution.

Faithful to the authors' code: one head, attention dropout 0.1, FFN width = d without biases, and the
decoder adds its cross-attention output to the *memory* (not the queries), which their code does and
which only works because there are as many queries as tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TOKEN_MODES = ("channel", "spatial")


def coordinate_channels(size: int, like: torch.Tensor) -> torch.Tensor:
    """The ``points`` position encoding: x and y grid coordinates, each standardised with the population
    standard deviation, as the authors' numpy code (1×2×s×s)."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs, ys])
    if size > 1:
        grid = (grid - grid.mean(dim=(1, 2), keepdim=True)) / grid.std(dim=(1, 2), keepdim=True, correction=0)
    else:
        grid = torch.zeros_like(grid)
    return grid.unsqueeze(0)


class Attention(nn.Module):
    """Single-head attention with bias-free projections, computed by ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def reset_parameters(self) -> None:
        """Xavier-uniform weights; q, k and v as one (3d × d) in-projection, as PyTorch's
        ``MultiheadAttention`` (the authors' attention) initialises it."""
        dim = self.q.in_features
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for weight in (self.q.weight, self.kv.weight):
            nn.init.uniform_(weight, -bound, bound)
        nn.init.xavier_uniform_(self.out.weight)

    def forward(self, query: torch.Tensor, memory: torch.Tensor):
        q = self.q(query)
        if q.dim() == 2:  # learned queries shared by the batch
            q = q.expand(memory.shape[0], -1, -1)
        q = q.unsqueeze(1)
        k, v = self.kv(memory).unsqueeze(1).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.squeeze(1))


class FeedForward(nn.Sequential):
    """Linear d→d, ReLU, dropout, Linear d→d (no biases; the authors' dim_feedforward = d)."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__(nn.Linear(dim, dim, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(dim, dim, bias=False))


class DecoderLayer(nn.Module):
    """Post-norm attention layer with the residual on the memory: x = LN(memory + A(queries, memory));
    x = LN(x + FFN(x)). The decoder's queries are learned; the encoder is the same layer with queries =
    memory (self-attention)."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.attn = Attention(dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm1(memory + self.drop1(self.attn(queries, memory)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class EncoderLayer(DecoderLayer):
    """Post-norm self-attention layer: x = LN(x + SA(x)); x = LN(x + FFN(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, x)


class LightweightTransformer(nn.Module):
    """HR-NAS lightweight transformer, used as an extra parallel path of a searching block.

    Args:
        in_channels / out_channels: the block's input and output widths.
        num_tokens: n, the number of tokens (= decoder queries); searched and shrunk via ``input_norm``.
            Every token, whatever its γ, takes part in the attention in training and in eval alike, so
            removing one (progressive shrinking) changes the output: a token with γ = 0 still feeds its
            constant row β into the softmax. The search measures that change at every shrink
            (:mod:`hrnas.search.probe`).
        proj_size: s, the projection size; tokens have dimension s² (channel tokens).
        decoder: False gives the "encoder only" ablation.
        token_mode: ``channel`` (paper) or ``spatial`` (supplement Table 2 ablation).
        downsample: output at half the input resolution (transformers in stride-2 blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, num_tokens: int = 64, proj_size: int = 8,
                 decoder: bool = True, token_mode: str = "channel", downsample: bool = False):
        super().__init__()
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"token_mode must be one of {TOKEN_MODES}, got {token_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.proj_size, self.token_mode, self.downsample = proj_size, token_mode, downsample
        self.input_proj = nn.Conv2d(in_channels + 2, num_tokens, 1, bias=False)
        self.input_norm = nn.BatchNorm2d(num_tokens)
        dim, length = self.token_shape(num_tokens)
        self.encoder = EncoderLayer(dim)
        self.query_embed = nn.Parameter(torch.empty(length, dim)) if decoder else None
        self.decoder = DecoderLayer(dim) if decoder else None
        self.reverse_proj = nn.Conv2d(num_tokens, out_channels, 1, bias=False)
        self.reverse_norm = nn.BatchNorm2d(out_channels)
        # the position encoding is a constant of s: made once, not in every forward pass
        self.register_buffer("coords", coordinate_channels(proj_size, torch.empty(0)), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' transformer initialisation: Xavier-uniform on every weight matrix (convs,
        linears, the attention in-projection as one q/k/v matrix, the decoder queries). The network's
        initialisation (``hrnas.models.factory.init_weights``) then re-initialises convs and linears."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
        for m in self.modules():
            if isinstance(m, Attention):
                m.reset_parameters()
        if self.query_embed is not None:
            nn.init.xavier_uniform_(self.query_embed)

    @property
    def num_tokens(self) -> int:
        return self.input_proj.out_channels

    def token_shape(self, num_tokens: int) -> tuple[int, int]:
        """(token dimension, sequence length) for the token mode."""
        area = self.proj_size ** 2
        return (area, num_tokens) if self.token_mode == "channel" else (num_tokens, area)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.proj_size
        small = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        small = torch.cat([small, self.coords.to(small.dtype).expand(b, -1, -1, -1)], dim=1)
        maps = self.input_norm(self.input_proj(small))  # B×n×s×s
        tokens = maps.flatten(2)
        if self.token_mode == "spatial":
            tokens = tokens.transpose(1, 2)
        memory = self.encoder(tokens)
        if self.decoder is not None:
            memory = self.decoder(self.query_embed, memory)
        if self.token_mode == "spatial":
            memory = memory.transpose(1, 2)
        out = self.reverse_norm(self.reverse_proj(memory.reshape(b, -1, s, s)))
        return F.interpolate(out, size=self.output_size(h, w), mode="bilinear", align_corners=False)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) of the output for an h×w input: the same, or a stride-2 conv's output when downsampling."""
        return ((h + 1) // 2, (w + 1) // 2) if self.downsample else (h, w)

    def attention_macs(self, num_tokens: int | None = None) -> int:
        """True MACs of the encoder/decoder layers (linears and the QKᵀ, AV matmuls), convs excluded,
        with ``num_tokens`` tokens (default: the current number)."""
        dim, length = self.token_shape(self.num_tokens if num_tokens is None else num_tokens)
        layers = 2 if self.decoder is not None else 1
        return layers * (6 * length * dim * dim + 2 * length * length * dim)

    def hrnas_attention_macs(self, num_tokens: int | None = None) -> int:
        """MACs the authors' profiler adds for the attention layers (docs/authors-code.md §2.3).

        Their hooks see the encoder attention as 2·L·S·E + 4·L·E², miss the decoder attention
        (called with keyword arguments) and count each FFN linear as n MACs; convolutions are counted
        by the ordinary conv rule elsewhere.
        """
        dim, length = self.token_shape(self.num_tokens if num_tokens is None else num_tokens)
        ffn_linears = 4 if self.decoder is not None else 2
        return 2 * length * length * dim + 4 * length * dim * dim + ffn_linears * length

    def projection_macs(self, num_tokens: int | None = None) -> int:
        """MACs of the two 1×1 projections at s×s (in: C_in + 2 coordinate channels → n; out: n → C_out)."""
        n = self.num_tokens if num_tokens is None else num_tokens
        return self.proj_size ** 2 * n * (self.in_channels + 2 + self.out_channels)
