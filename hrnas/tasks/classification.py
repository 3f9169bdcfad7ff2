"""ImageNet classification: label-smoothed cross-entropy, top-1 / top-5 on the single centre crop.

Reference: docs/authors-code.md §4 ("Losses", "Data") and §5 ("ImageNet": crop 0.875 of the short side,
bicubic). The number of classes follows the dataset (1000 on ImageNet, 10 on the embedded shapes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hrnas.engine.distributed import all_reduce_sum
from hrnas.errors import UserError
from hrnas.metrics.classification import ClassificationMeter
from hrnas.tasks.base import Task, eval_bar


class ClassificationTask(Task):
    main_metric = "top1"

    def _crop(self) -> int:
        size = self.cfg["data"]["crop_size"]
        if not isinstance(size, int) or size < 32:
            raise UserError(f"data.crop_size={size!r} must be an integer >= 32")
        return size

    def input_size(self) -> tuple[int, int]:
        return self._crop(), self._crop()

    def train_dataset(self, root, seed: int):
        from hrnas.data import build_dataset

        lo, hi = (float(v) for v in self.cfg["data"]["crop_scale"])
        if not 0 < lo <= hi <= 1:
            raise UserError(f"data.crop_scale={[lo, hi]} must satisfy 0 < min <= max <= 1")
        ra = self.cfg["data"].get("randaugment")
        if ra is not None and not (isinstance(ra, list) and len(ra) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in ra) and ra[0] >= 0 and 0 <= ra[1] <= 30):
            raise UserError(f"data.randaugment={ra!r} must be null or [N, M]: N >= 0 ops, magnitude 0 <= M <= 30")
        ds = build_dataset("imagenet", root, "train", train=True, size=self.input_size(), seed=seed,
                           crop_scale=(lo, hi), randaugment=ra)
        self.num_classes = ds.num_classes
        return ds

    def val_dataset(self, root):
        from hrnas.data.imagenet import ImageNetDataset
        from hrnas.data.transforms import ClsEvalTransform

        fraction = self.cfg["eval"]["crop_fraction"]
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"eval.crop_fraction={fraction} must be in (0, 1]")
        ds = ImageNetDataset(root, "val", ClsEvalTransform(self.input_size(), fraction))
        self.num_classes = ds.num_classes
        return ds

    def loss(self, model, batch):
        images, target = batch
        logits = model(images)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.cfg["loss"]["label_smoothing"])
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, loader, device, channels_last, out_dir=None, progress=False) -> dict:
        meter = ClassificationMeter((1, 5))
        for batch in eval_bar(loader, progress, "eval top-1"):
            images, target = self.to_device(batch, device, channels_last)
            meter.update(model(images).float(), target)
        meter.load_state(all_reduce_sum(meter.state().to(device)).cpu())
        return {**meter.compute(), "images": meter.count, "main": self.main_metric}
