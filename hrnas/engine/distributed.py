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

from hrnas.errors import UserError

__all__ = [
    "DistInfo", "init_distributed", "is_dist", "rank", "world_size", "is_main", "all_reduce_sum",
    "broadcast_object", "all_gather_objects", "barrier", "seed_everything", "cleanup", "unwrap_model",
    "average_buffers", "training_device",
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


@torch.no_grad()
def average_buffers(net: nn.Module, world: int) -> None:
    """Average the floating-point buffers (BN running statistics) over the processes: without SyncBatchNorm
    each process updates them from its own batch; averaged after every step, the EMA, the checkpoint and
    the evaluation are the same on every process (the training forward passes still normalise with each
    process's own batch, as the authors' per-GPU BN)."""
    if world == 1:
        return
    bufs = [b for b in net.buffers() if b.is_floating_point()]
    if bufs:
        flat = torch.cat([b.reshape(-1) for b in bufs])
        all_reduce_sum(flat).div_(world)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def training_device(choice: str, default: torch.device, world: int) -> torch.device:
    """``train.device``: auto = the process's device (CUDA when available), cpu, or cuda."""
    if choice not in ("auto", "cpu", "cuda"):
        raise UserError(f"train.device: unknown value '{choice}'; accepted: auto, cpu, cuda")
    if choice == "cuda" and default.type != "cuda":
        raise UserError(f"train.device=cuda: CUDA is not available (torch {torch.__version__}, CUDA build "
                        f"{torch.version.cuda}, {torch.cuda.device_count()} devices visible); use train.device=auto or cpu")
    if choice == "cpu" and default.type == "cuda":
        if world > 1:
            raise UserError("train.device=cpu under torchrun on a CUDA machine: the process group uses NCCL; "
                            "hide the GPUs (CUDA_VISIBLE_DEVICES=) instead")
        return torch.device("cpu")
    return default
