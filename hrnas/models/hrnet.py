"""The HR-NAS super network: a multi-branch high-resolution network of searching blocks
(paper §3.1, Fig. 1; docs/authors-code.md §1).

Stem (two 3×3 stride-2 conv-BN-ReLU, 3→24→24, output at 1/4), then five pairs of a *fusion module*
and a *parallel module*. Branch i runs at 1/2^(i+2) resolution; the parallel modules have 1/2/3/4/4
branches with [1], [2,2], [2,2,3], [2,2,3,4], [2,2,3,4] searching blocks and widths 24 | 18/36 |
18/36/72 | 18/36/72/144 | 18/36/72/144. Fusion modules fuse neighbouring branches only: a same-branch
block, a stride-2 block from the higher-resolution neighbour and a block + nearest ×2 upsampling from the
lower-resolution neighbour, summed and passed through the network's activation (``act``: ReLU, or Swish
for HR-NAS†‡, as the authors' ``active_fn``); a new branch comes from a stride-2 block on the fused
output of the branch above it. Then a task head (``hrnas.models.heads``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrnas.models.layers import ConvBNAct, NormConfig, make_activation
from hrnas.models.searching_block import KERNEL_SIZES, AttentionConfig, SEConfig, SearchingBlock, check_fast_paths

# (blocks per branch, channels per branch) of the five parallel modules; a module has one branch per entry.
STAGES: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((1,), (24,)),
    ((2, 2), (18, 36)),
    ((2, 2, 3), (18, 36, 72)),
    ((2, 2, 3, 4), (18, 36, 72, 144)),
    ((2, 2, 3, 4), (18, 36, 72, 144)),
)
STEM_CHANNELS = 24
EXPAND_RATIO = 4


@dataclass(frozen=True)
class BlockInfo:
    """Where a searching block sits (as timm's ``feature_info``): its module (``fuse2``, ``parallel3``,
    ``head``), the branch it reads, the branch at whose resolution it computes and the branch its output
    joins (branch ``b`` is at 1/2^(b+2) of the input; a fusion up-path computes at the low resolution and
    is upsampled to the branch above after), and how it is wired (``role``):

    * ``fuse``: a fusion path of the module's input branch ``in_branch`` into ``to_branch``;
    * ``new``: a new branch, from this fusion's output of the branch above it;
    * ``chain``: the next block of a parallel module's branch;
    * ``incre``, ``down``, ``transform``: the classification head widening a branch and carrying the
      running sum one branch down, and the dense head mapping all branches, upsampled and concatenated.

    Its widths and stride are the block's own (``inp``, ``oup``, ``stride``)."""

    name: str
    module: str
    in_branch: int
    out_branch: int
    to_branch: int
    role: str


@dataclass
class BlockFactory:
    """Builds every searching block of a network, by name.

    In the supernet each kernel path has ``expand_ratio · inp`` hidden channels (4 in the paper) and
    each transformer ``attention.tokens`` tokens; ``arch`` (block name → {"kernels", "hidden",
    "tokens"}) overrides both for a searched network. ``built`` records each block's :class:`BlockInfo` in
    construction order (the block order of the architecture spec).
    """

    expand_ratio: int = EXPAND_RATIO
    act: str = "relu"
    norm: NormConfig = field(default_factory=NormConfig)
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig(type="none"))
    se: SEConfig = field(default_factory=SEConfig)
    arch: dict | None = None
    built: list[BlockInfo] = field(default_factory=list)

    def __call__(self, name: str, inp: int, oup: int, stride: int, *, module: str, role: str,
                 branches: tuple[int, int, int]) -> SearchingBlock:
        """The block ``name`` of ``module``: reads branch ``branches[0]``, computes at ``branches[1]``, its
        output joins ``branches[2]`` (:class:`BlockInfo`)."""
        if self.arch is not None:
            entry = self.arch[name]
            kernels, hidden, tokens = entry["kernels"], entry["hidden"], entry.get("tokens", 0)
        else:
            kernels, hidden = KERNEL_SIZES, [self.expand_ratio * inp] * len(KERNEL_SIZES)
            tokens = self.attention.tokens
        block = SearchingBlock(inp, oup, stride, hidden, kernels, self.act, self.norm, self.attention, tokens,
                               self.se, branch=branches[1])
        block.block_name = name
        self.built.append(BlockInfo(name, module, *branches, role))
        return block


class FuseModule(nn.Module):
    """Exchanges information between neighbouring branches and adds new lower-resolution branches."""

    def __init__(self, index: int, in_channels: Sequence[int], out_channels: Sequence[int], make: BlockFactory):
        super().__init__()
        self.num_in, self.num_out = len(in_channels), len(out_channels)
        self.paths = nn.ModuleDict()
        for i in range(min(self.num_in, self.num_out)):
            for j in (i - 1, i, i + 1):
                if 0 <= j < self.num_in:
                    stride = 2 if j == i - 1 else 1  # down from branch j to i; up: at j, upsampled after
                    self.paths[f"{i}_{j}"] = make(f"fuse{index}.{i}_{j}", in_channels[j], out_channels[i], stride,
                                                  module=f"fuse{index}", role="fuse",
                                                  branches=(j, i if j == i - 1 else j, i))
        self.new_branches = nn.ModuleList(
            make(f"fuse{index}.new{b}", out_channels[b - 1], out_channels[b], 2, module=f"fuse{index}",
                 role="new", branches=(b - 1, b, b))
            for b in range(self.num_in, self.num_out))
        self.act = make_activation(make.act)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for i in range(min(self.num_in, self.num_out)):
            size = xs[i].shape[-2:]
            y = None
            for j in (i, i - 1, i + 1):
                key = f"{i}_{j}"
                if key not in self.paths:
                    continue
                t = self.paths[key](xs[j])
                if j == i + 1:
                    t = F.interpolate(t, scale_factor=2.0, mode="nearest")
                if t.shape[-2:] != size:  # odd input sizes
                    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                y = t if y is None else y + t
            outs.append(self.act(y))
        for block in self.new_branches:
            outs.append(block(outs[-1]))
        return outs


class ParallelModule(nn.Module):
    """Independent chains of searching blocks, one per branch (no cross-branch exchange)."""

    def __init__(self, index: int, blocks: Sequence[int], channels: Sequence[int], make: BlockFactory):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(make(f"parallel{index}.{b}_{m}", c, c, 1, module=f"parallel{index}",
                                 role="chain", branches=(b, b, b))
                            for m in range(n)))
            for b, (n, c) in enumerate(zip(blocks, channels)))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [branch(x) for branch, x in zip(self.branches, xs)]


class HRNet(nn.Module):
    """Stem + five fusion/parallel module pairs + a task head.

    ``head_factory(make, branch_channels)`` builds the head with the same block factory so that head
    blocks are searched too (docs/authors-code.md §3.1).
    """

    def __init__(self, head_factory: Callable[[BlockFactory, Sequence[int]], nn.Module], make: BlockFactory,
                 in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(in_channels, STEM_CHANNELS, 3, 2, make.norm, make.act),
                                  ConvBNAct(STEM_CHANNELS, STEM_CHANNELS, 3, 2, make.norm, make.act))
        self.fuse = nn.ModuleList()
        self.parallel = nn.ModuleList()
        channels: Sequence[int] = (STEM_CHANNELS,)
        for index, (blocks, widths) in enumerate(STAGES):
            self.fuse.append(FuseModule(index, channels, widths, make))
            self.parallel.append(ParallelModule(index, blocks, widths, make))
            channels = widths
        self.branch_channels = tuple(channels)
        self.head = head_factory(make, self.branch_channels)
        self.feature_info: tuple[BlockInfo, ...] = tuple(make.built)
        self.block_order = tuple(info.name for info in self.feature_info)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = [self.stem(x)]
        for fuse, parallel in zip(self.fuse, self.parallel):
            xs = parallel(fuse(xs))
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each searching block's kernel paths during the backward pass instead of keeping
        their activations: a fraction of the training memory for about one more forward pass of the
        convolutions (the BN running statistics are updated once, as without it)."""
        for _, block in self.searching_blocks():
            block.grad_checkpointing = enable

    def set_fast_paths(self, mode: bool | str = "auto") -> None:
        """Compute the searching blocks' kernel paths the fast way (per-path expand outputs, strip-wise
        depthwise weight gradients; ``hrnas.models.searching_block.PathExpansion``, ``hrnas.models.depthwise``),
        the plain way (one expand tensor sliced per path, stock convolutions), or each block the way that is
        faster for its size (``auto``, the default: ``SearchingBlock.uses_fast_paths``). Same parameters,
        outputs and gradients up to float rounding (tested)."""
        check_fast_paths(mode)
        for _, block in self.searching_blocks():
            block.fast_paths = mode

    def searching_blocks(self) -> Iterator[tuple[str, SearchingBlock]]:
        """(name, block) in the architecture spec's order (construction order)."""
        by_name = {m.block_name: m for m in self.modules() if isinstance(m, SearchingBlock)}
        for name in self.block_order:
            yield name, by_name[name]
