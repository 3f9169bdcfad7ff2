"""The protocol every task family implements, and helpers they share.

A :class:`Task` turns a loaded recipe (``hrnas.engine.config.load_config``) into the pieces the
trainer (:mod:`hrnas.engine.trainer`) runs: the network (``build_model``), the part of it that the
search penalises and shrinks (``searchable``), datasets and their collate function, the training
loss of one batch (``loss``) and the evaluation of a whole loader (``evaluate``, a dict of metrics
with ``main`` naming the headline one). Metrics are reduced across ``torchrun`` processes inside
``evaluate`` so that every rank returns the same dict.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from hrnas.engine import distributed as D
from hrnas.errors import UserError


INITS = (None, "mnas", "mnas_fanin", "heatmap")  # null = the task's own (hrnas.models.factory.TASK_DEFAULTS)


class Task:
    """Base class of the task families (classification, segmentation, keypoints, detection3d)."""

    #: name of the metric that decides the best validation step (higher is better)
    main_metric: str = ""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.name = cfg["task"]
        self.num_classes: int | None = None  # set by the data (e.g. 10 synthetic ImageNet classes)

    # ---- model ---------------------------------------------------------------------------------
    def model_options(self) -> dict:
        """Options of ``hrnas.models.build_model`` from the recipe's ``model`` section."""
        opts = dict(self.cfg["model"])
        if opts["init"] not in INITS:
            raise UserError(f"model.init={opts['init']!r} is not one of null, {', '.join(INITS[1:])}")
        if self.num_classes is not None:
            opts["num_classes"] = self.num_classes
        return opts

    def build_model(self, arch: dict | None = None) -> nn.Module:
        """The trainable network: the super network (``arch=None``) or a searched one, whose blocks come
        from ``arch`` and whose retraining options (activation, SE, dropout, init, classes:
        ``hrnas.models.factory.RETRAIN_OPTIONS``) from the recipe."""
        from hrnas.models import build_model

        if arch is not None:
            return build_model(self.name, arch=arch, **self.retrain_options())
        return build_model(self.name, **self.model_options())

    def retrain_options(self) -> dict:
        """The recipe's options that apply to a searched architecture (``hrnas train --arch``)."""
        from hrnas.models.factory import RETRAIN_OPTIONS

        return {k: v for k, v in self.model_options().items() if k in RETRAIN_OPTIONS}

    def searchable(self, model: nn.Module) -> nn.Module:
        """The HR-NAS network inside ``model`` (what the search penalises, shrinks and exports)."""
        return model

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the HR-NAS network's input during training (the search's cost size)."""
        raise NotImplementedError

    # ---- data ----------------------------------------------------------------------------------
    def train_dataset(self, root, seed: int):
        raise NotImplementedError

    def val_dataset(self, root):
        raise NotImplementedError

    def collate(self):
        from hrnas.data import collate_fn

        return collate_fn(self.name)

    # ---- steps ---------------------------------------------------------------------------------
    def eval_batch_size(self, train_batch: int) -> int:
        """Per-process evaluation batch size, given the per-process training batch (default: the same)."""
        return train_batch

    def to_device(self, batch, device: torch.device, channels_last: bool):
        """Move a collated batch to ``device``; 4-D float tensors (images) become channels_last."""
        return move_batch(batch, device, channels_last)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        """Training loss of one batch and extra scalars to log."""
        raise NotImplementedError

    def calib_forward(self, model: nn.Module, batch) -> None:
        """A forward pass in train mode that only updates BN statistics (BN re-calibration)."""
        model(batch[0])

    def prepare_eval_model(self, model: nn.Module) -> nn.Module:
        """Hook to adapt an evaluation copy of the model (e.g. test-time pillar caps)."""
        return model

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, channels_last: bool,
                 out_dir=None, progress: bool = False) -> dict:
        raise NotImplementedError


def move_batch(batch, device: torch.device, channels_last: bool):
    """Recursively move tensors to ``device`` (non-blocking); 4-D float tensors -> channels_last."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: move_batch(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(v, device, channels_last) for v in batch)
    return batch


def eval_bar(loader, progress: bool, desc: str):
    """tqdm over an evaluation loader on rank 0 only."""
    return tqdm(loader, desc=desc, leave=False, disable=not (progress and D.is_main()))


def check_positive_size(value, key: str) -> tuple[int, int]:
    """A recipe's (H, W) list as a tuple of positive ints, else UserError naming ``key``."""
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r} must be [H, W]") from None
    if h < 32 or w < 32:
        raise UserError(f"{key}={value!r}: H and W must be >= 32")
    return h, w
