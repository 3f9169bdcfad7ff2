"""HR-NAS models: searching block, lightweight transformer, super network, heads, architecture spec."""
from hrnas.models.factory import (PAPER_SIZES, TASK_DEFAULTS, build_model, count_params, load_arch, model_options,
                                  save_arch, spec_of, validate_arch, validate_block)
from hrnas.models.hrnet import HRNet
from hrnas.models.searching_block import AttentionConfig, SEConfig, SearchingBlock
from hrnas.models.transformer import LightweightTransformer

__all__ = ["build_model", "spec_of", "validate_arch", "validate_block", "load_arch", "save_arch", "model_options", "count_params",
           "PAPER_SIZES", "TASK_DEFAULTS", "HRNet", "SearchingBlock", "AttentionConfig", "SEConfig",
           "LightweightTransformer"]
