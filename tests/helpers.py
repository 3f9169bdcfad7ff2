"""Helpers shared by several test modules (fixtures live in conftest.py)."""
import torch


def randomise_bn(model, seed=1, layer_norm=True):
    """Non-trivial BN statistics and BN (and, with ``layer_norm``, LayerNorm) affine parameters whose outputs
    stay O(1) (at initialisation, LN weight 1 and bias 0, a transformer whose output is resized to 1×1 returns
    a constant: the mean over positions of a LayerNorm'd row is its bias). Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.8, 1.2, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.weight.uniform_(0.2, 0.5, generator=g)
            elif layer_norm and isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model
