"""Semantic segmentation (Cityscapes, ADE20K): cross-entropy and mIoU / mAcc / aAcc.

Reference: docs/authors-code.md §4 ("Losses": CE with ignore 255 on logits bilinearly upsampled to the
label size, no OHEM or auxiliary heads) and §5 ("Segmentation": whole-image, single-scale, no-flip
test; dataset-level histograms); docs/metrics-and-peers.md §2.2, §2.4 (the sliding-window mode).

Evaluation follows mmseg's test protocol (the authors' ``SegVal``): each image, resized keeping its
ratio to the test scale and not padded, goes through the network; the logits are upsampled bilinearly
to the input size, then to the label's original size, and the prediction is their argmax there (with
flip test: the argmax of the mean of the two softmaxes). Labels are never resized. One image per
process and step, as the images differ in size. The histogram is summed over ranks before the metrics
are computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hrnas.data.transforms import IGNORE_INDEX
from hrnas.engine.distributed import all_reduce_sum
from hrnas.errors import UserError
from hrnas.metrics.segmentation import SegmentationMeter
from hrnas.tasks.base import Task, check_positive_size, eval_bar


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of logits to ``size`` (align_corners False, as mmseg)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def whole_logits(model, images: torch.Tensor) -> torch.Tensor:
    """Logits of the whole (resized) image at the input resolution."""
    return upsample(model(images).float(), images.shape[-2:])


def slide_logits(model, images: torch.Tensor, crop, stride) -> torch.Tensor:
    """mmseg ``slide_inference``: overlapping crops, logits summed and divided by the per-pixel count."""
    (ch, cw), (sh, sw) = crop, stride
    b, _, h, w = images.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    total = count = None
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out = whole_logits(model, images[:, :, y1:y2, x1:x2])
            if total is None:
                total = out.new_zeros(b, out.shape[1], h, w)
                count = out.new_zeros(1, 1, h, w)
            total[:, :, y1:y2, x1:x2] += out
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


class SegmentationTask(Task):
    main_metric = "mIoU"

    def input_size(self) -> tuple[int, int]:
        return check_positive_size(self.cfg["data"]["crop_size"], "data.crop_size")

    def eval_batch_size(self, train_batch: int) -> int:
        """1: whole images of any size, one at a time, as the authors evaluate."""
        return 1

    def train_dataset(self, root, seed: int):
        from hrnas.data import build_dataset

        d = self.cfg["data"]
        return build_dataset(self.name, root, "train", train=True, size=self.input_size(), seed=seed,
                             img_scale=tuple(d["img_scale"]), ratio_range=tuple(d["ratio_range"]),
                             photometric=d["photometric"])

    def val_dataset(self, root):
        from hrnas.data import build_dataset

        e = self.cfg["eval"]
        if e["mode"] == "slide":
            check_positive_size(e["slide_crop"], "eval.slide_crop")
            sh, sw = (int(v) for v in e["slide_stride"])
            if sh < 1 or sw < 1:
                raise UserError(f"eval.slide_stride={e['slide_stride']!r} must be positive")
        ds = build_dataset(self.name, root, "val", train=False, size=self.input_size(),
                           img_scale=tuple(e["img_scale"]))
        self.num_classes = _num_classes(self.name)
        return ds

    def loss(self, model, batch):
        images, labels = batch
        logits = upsample(model(images).float(), labels.shape[-2:])
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX), {}

    def predict(self, model, images: torch.Tensor, size=None) -> torch.Tensor:
        """Per-pixel class scores of a batch at ``size`` (default: the input size) under the recipe's test
        mode: the logits (whole image or sliding window) upsampled to the input, then to ``size``; with
        ``eval.flip_test`` the mean of the softmax of the image's and of its mirror image's. The argmax
        is the prediction."""
        e = self.cfg["eval"]
        size = images.shape[-2:] if size is None else size

        def infer(x):
            if e["mode"] == "slide":
                logits = slide_logits(model, x, e["slide_crop"], e["slide_stride"])
            else:
                logits = whole_logits(model, x)
            return upsample(logits, size)

        if not e["flip_test"]:
            return infer(images)
        return 0.5 * (infer(images).softmax(1) + infer(images.flip(-1)).flip(-1).softmax(1))

    @torch.no_grad()
    def evaluate(self, model, loader, device, channels_last, out_dir=None, progress=False) -> dict:
        meter = SegmentationMeter(_num_classes(self.name), IGNORE_INDEX, device=device)
        for batch in eval_bar(loader, progress, "eval mIoU"):
            images, labels = self.to_device(batch, device, channels_last)
            if images.shape[0] != 1:
                raise UserError(f"segmentation evaluation takes one image per process and step (images of "
                                f"different sizes, labels at their original size), got a batch of "
                                f"{images.shape[0]}")
            meter.update(self.predict(model, images, labels.shape[-2:]).argmax(1), labels)
        all_reduce_sum(meter.hist)
        res = meter.compute()
        return {"mIoU": res["mIoU"], "mAcc": res["mAcc"], "aAcc": res["aAcc"], "IoU": res["IoU"],
                "main": self.main_metric}


def _num_classes(task: str) -> int:
    from hrnas.data import NUM_CLASSES

    return NUM_CLASSES[task]
