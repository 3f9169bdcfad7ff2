"""torchrun-style distributed helpers; every function is a no-op in a single process.

Reference: docs/metrics-and-peers.md §7 (torchrun env://, gloo on CPU / nccl on CUDA, rank-0 writes,
per-worker seeds). Launch with ``torchrun --standalone --nproc_per_node=N -m hrnas ...``.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo", "init_distributed", "is_dist", "rank", "world_size", "is_main", "all_reduce_sum",
    "broadcast_object", "all_gather_objects", "barrier", "seed_everything", "cleanup", "unwrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Without those variables (or WORLD_SIZE=1) nothing is initialised and rank 0 of 1 is returned.
    Backend: ``nccl`` when CUDA is available, else ``gloo`` (``backend`` overrides); the CUDA
    device is set to ``LOCAL_RANK``. Rendezvous uses ``MASTER_ADDR``/``MASTER_PORT`` (env://).
    """
    ws = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if ws <= 1:
        return DistInfo(0, 1, local_rank, device)
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), init_method="env://",
                                rank=_env_int("RANK", 0), world_size=ws)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (the process that logs and writes files)."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Return rank ``src``'s (picklable) ``obj`` on every process."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_dist():
        dist.barrier()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python ``random``, numpy and torch (all devices) with ``seed + rank``; returns it."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``model``)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model
