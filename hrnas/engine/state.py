"""Optimizer state keyed by parameter name, so that it survives rebuilding a network from its spec."""
from __future__ import annotations

import copy

import torch
from torch import nn

from hrnas.errors import UserError

__all__ = ["optimizer_state_by_name", "load_optimizer_state_by_name"]


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, net: nn.Module) -> dict:
    """The optimizer state with parameters named instead of numbered, so that it reloads into a
    network rebuilt from its architecture spec (whose parameter order may differ after shrinking)."""
    names = {id(p): n for n, p in net.named_parameters()}
    sd = optimizer.state_dict()
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    return {"groups": groups, "state": {names[id(flat[i])]: s for i, s in sd["state"].items()}}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, net: nn.Module, saved: dict) -> None:
    """Inverse of :func:`optimizer_state_by_name` for a freshly built optimizer over ``net``."""
    params = dict(net.named_parameters())
    if len(saved["groups"]) != len(optimizer.param_groups):
        raise UserError(f"checkpoint optimizer has {len(saved['groups'])} parameter groups, the recipe builds "
                        f"{len(optimizer.param_groups)}")
    missing = [n for g in saved["groups"] for n in g["params"] if n not in params]
    if missing:
        raise UserError(f"checkpoint optimizer names parameter {missing[0]!r}, which the network lacks")
    index, flat = {}, []
    for group, saved_group in zip(optimizer.param_groups, saved["groups"]):
        group["params"] = [params[n] for n in saved_group["params"]]
        for n in saved_group["params"]:
            index[n] = len(flat)
            flat.append(n)
    optimizer.load_state_dict({  # copies: the saved tensors may be another optimizer's live state
        "state": {index[n]: copy.deepcopy(s) for n, s in saved["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in saved["groups"]]})
