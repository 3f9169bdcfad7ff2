"""Batching: per-task collate functions and a seeded DataLoader whose worker errors stay one line."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from hrnas.data.kitti import collate_kitti
from hrnas.data.transforms import IGNORE_INDEX
from hrnas.errors import UserError


def collate_segmentation(batch):
    """Stack (image, mask) pairs, padding images (with 0) and masks (with 255) each to the largest size
    in the batch. Training crops all have one size; evaluation masks keep their original size (not the
    resized image's) and are evaluated one image per batch."""
    def largest(tensors):
        return max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors)

    (h, w), (mh, mw) = largest([img for img, _ in batch]), largest([mask for _, mask in batch])
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), mh, mw), IGNORE_INDEX, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        images[i, :, :img.shape[-2], :img.shape[-1]] = img
        masks[i, :mask.shape[-2], :mask.shape[-1]] = mask
    return images, masks


def collate_fn(task: str):
    """Collate function for a task: default for imagenet and coco (all fields are tensors),
    padding for segmentation, `collate_kitti` for kitti."""
    if task in ("imagenet", "coco"):
        return default_collate
    if task in ("cityscapes", "ade20k"):
        return collate_segmentation
    if task == "kitti":
        return collate_kitti
    raise UserError(f"unknown task {task!r}; expected imagenet, cityscapes, ade20k, coco or kitti")


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy and `random` from the worker's torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _worker_message(err: UserError) -> str:
    """The original one-line message of a UserError re-raised by a DataLoader worker."""
    text = str(err)
    if not text.startswith("Caught UserError"):
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    _, _, msg = last.partition("UserError: ")
    return msg or last


class DataLoaderWithUserErrors(DataLoader):
    """A DataLoader that re-raises a worker's UserError as a one-line UserError (no worker traceback)."""

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except UserError as e:
                raise UserError(_worker_message(e)) from None
            yield batch


def build_loader(dataset, task: str, *, batch_size: int, shuffle: bool, num_workers: int = 0,
                 seed: int = 0, drop_last: bool = False, **kwargs) -> DataLoader:
    """A DataLoader with the task's collate, a generator seeded with `seed` (shuffling and worker
    seeds, hence augmentation) and `seed_worker`: the same seed gives the same batches."""
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoaderWithUserErrors(dataset, batch_size=batch_size, shuffle=shuffle,
                                    num_workers=num_workers, collate_fn=collate_fn(task),
                                    generator=generator, worker_init_fn=seed_worker,
                                    drop_last=drop_last, **kwargs)
