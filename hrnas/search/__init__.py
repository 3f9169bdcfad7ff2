"""Resource-aware search with progressive shrinking (paper §3.3): penalty, exact shrinking, budget mode."""
from hrnas.search.controller import SearchController
from hrnas.search.costs import block_geometry, transformer_true_macs
from hrnas.search.shrink import ShrinkLog, shrink_block, shrink_tokens

__all__ = ["SearchController", "block_geometry", "transformer_true_macs", "ShrinkLog", "shrink_block",
           "shrink_tokens"]
