"""Resource-aware search with progressive shrinking (paper §3.3): penalty, shrinking (exact for channels,
measured for tokens), budget mode."""
from hrnas.search.controller import SearchController, budget_input_size
from hrnas.search.hook import SearchHook, search_hooks
from hrnas.search.costs import block_geometry, transformer_hrnas_macs, transformer_true_macs
from hrnas.search.probe import measure_shrink
from hrnas.search.shrink import ShrinkLog, se_of_constant, shrink_block, shrink_tokens

__all__ = ["SearchController", "SearchHook", "search_hooks", "budget_input_size", "block_geometry", "transformer_hrnas_macs",
           "transformer_true_macs", "measure_shrink", "ShrinkLog", "se_of_constant", "shrink_block", "shrink_tokens"]
