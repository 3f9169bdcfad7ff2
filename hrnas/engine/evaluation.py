"""Evaluation as a run does it: BN re-calibration on training batches, then the task's metrics.

The trainer evaluates with these functions during a run, and ``hrnas eval`` (``hrnas.experiment``)
with the same ones on a checkpoint, so that both give the same numbers: the same loaders
(:func:`build_val_loader`, :func:`build_calib_loader`), the same calibration seed
(:func:`calibration_seed`) and the same weights (:func:`checkpoint_weights`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DistributedSampler, Sampler

from hrnas.data.common import AugmentationRNG
from hrnas.engine import distributed as D
from hrnas.engine.checkpoint import get_rng_state, set_rng_state
from hrnas.errors import UserError

__all__ = ["ShardSampler", "reseed_augmentation", "bn_calibrate", "evaluate_model", "calibration_seed",
           "build_val_loader", "build_calib_loader", "checkpoint_weights"]


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` of a dataset: every sample exactly once over all ranks
    (evaluation must not see DistributedSampler's padding duplicates)."""

    def __init__(self, length: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def reseed_augmentation(dataset, seed: int) -> None:
    """Give ``dataset`` a fresh augmentation RNG seeded with ``seed`` (the data module's datasets keep
    theirs in ``.rng``, an :class:`~hrnas.data.common.AugmentationRNG` that otherwise runs on across
    epochs in the main process, so an epoch could not be replayed after a resume)."""
    if isinstance(getattr(dataset, "rng", None), AugmentationRNG):
        dataset.rng = AugmentationRNG(seed)


@torch.no_grad()
def bn_calibrate(model: nn.Module, loader, batches: int, task, device, channels_last: bool) -> int:
    """Re-estimate every BatchNorm's running statistics (the authors' ``bn_calibration``): reset them, use a cumulative average (momentum None) over ``batches`` training batches in train
    mode, then average the statistics over ranks. Returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    used = 0
    for batch in loader:
        if used >= batches:
            break
        task.calib_forward(model, task.to_device(batch, device, channels_last))
        used += 1
    if D.is_dist():
        for bn in bns:
            for t in (bn.running_mean, bn.running_var):
                D.all_reduce_sum(t).div_(D.world_size())
    model.eval()
    return used


def evaluate_model(task, model: nn.Module, cfg: dict, *, val_loader, calib_loader, device, channels_last: bool,
                   calib_seed: int = 0, out_dir=None, progress: bool = False, copy_model: bool = True,
                   metrics: bool = True) -> dict:
    """Evaluate ``model`` (BN re-calibration when ``eval.bn_calib_batches`` > 0, on batches drawn with
    ``calib_seed``, then ``task.evaluate``). The caller's RNG state is left untouched, and so is the
    model unless ``copy_model=False`` (then its BN statistics are re-estimated in place).
    ``metrics=False``: stop after the re-calibration (returns ``{}``; ``val_loader`` is not read)."""
    rng = get_rng_state()
    try:
        model = task.prepare_eval_model(copy.deepcopy(model) if copy_model else model)
        calib = cfg["eval"]["bn_calib_batches"]
        if calib > 0 and calib_loader is not None:
            torch.manual_seed(calib_seed)  # dropout / pillar shuffling in the train-mode passes
            calib_loader.sampler.set_epoch(calib_seed)
            calib_loader.generator.manual_seed(calib_seed)
            reseed_augmentation(calib_loader.dataset, calib_seed)
            bn_calibrate(model, calib_loader, calib, task, device, channels_last)
        model.eval()
        if not metrics:
            return {}
        return task.evaluate(model, val_loader, device, channels_last, out_dir=out_dir, progress=progress)
    finally:
        set_rng_state(rng)


def calibration_seed(cfg: dict, step: int) -> int:
    """Seed of the BN re-calibration batches of the evaluation at ``step`` (so that ``hrnas eval`` of a
    checkpoint reproduces the run's own evaluation)."""
    return int(cfg["train"]["seed"]) * 1_000_003 + int(step)


def build_val_loader(task, cfg: dict, root, train_batch: int, rank: int = 0, world: int = 1, cuda: bool = False):
    """Loader of this process's shard of the val split, each sample exactly once over all processes, in
    batches of ``task.eval_batch_size(train_batch)``."""
    from hrnas.data import build_loader

    ds = task.val_dataset(root)
    return build_loader(ds, task.name, batch_size=task.eval_batch_size(train_batch), shuffle=False,
                        sampler=ShardSampler(len(ds), rank, world), num_workers=cfg["data"]["num_workers"],
                        seed=int(cfg["train"]["seed"]), pin_memory=cuda)


def build_calib_loader(task, cfg: dict, root, seed: int, rank: int, world: int, cuda: bool):
    """Loader of training batches for BN re-calibration (its own dataset and seeds, so calibrating
    never disturbs the training data stream); ``None`` when ``eval.bn_calib_batches`` is 0."""
    from hrnas.data import build_loader

    e = cfg["eval"]
    if e["bn_calib_batches"] < 0:
        raise UserError(f"eval.bn_calib_batches={e['bn_calib_batches']} must be >= 0")
    if e["bn_calib_batches"] == 0:
        return None
    if e["bn_calib_batch_size"] < world:
        raise UserError(f"eval.bn_calib_batch_size={e['bn_calib_batch_size']} must be >= the number of processes")
    ds = task.train_dataset(root, seed=seed + 7919)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed + 7919, drop_last=False)
    return build_loader(ds, task.name, batch_size=e["bn_calib_batch_size"] // world, shuffle=False, sampler=sampler,
                        num_workers=cfg["data"]["num_workers"], seed=seed + 7919, pin_memory=cuda)


def checkpoint_weights(ckpt: dict, ema: bool | None = None, *, config: dict | None = None,
                       where: str = "checkpoint") -> dict:
    """The state dict to evaluate from a checkpoint: the EMA's shadow or the live weights. ``ema=None``
    decides by ``eval.use_ema`` of ``config`` (default: the run's own recipe), when the run kept an EMA."""
    has_ema = bool(ckpt.get("ema"))
    if ema is None:
        ema = bool((config or ckpt["config"])["eval"]["use_ema"]) and has_ema
    if ema and not has_ema:
        raise UserError(f"{where}: ema=True but the checkpoint holds no EMA weights")
    return ckpt["ema"]["shadow"] if ema else ckpt["model"]
