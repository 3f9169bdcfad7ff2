"""Transforms matching the authors' pipelines (docs/authors-code.md §4).

* Segmentation (mmseg style, `mmseg/seg_dataflow.py`): keep-ratio resize to `img_scale` x U[0.5, 2],
  random crop with `cat_max_ratio` 0.75, flip 0.5, photometric distortion, normalise, pad (mask 255).
  Evaluation (mmseg's test pipeline): keep-ratio resize of the image to `img_scale`, no crop, no padding;
  the label stays at its original size (predictions are resized back to it).
* ImageNet (`imagenet1k_mnas_bicubic`): TF-style random-resized crop (area 0.08-1, ratio 3/4-4/3,
  min_object_covered 0.1, bicubic, centre-crop fallback) + flip, optionally after RandAugment (HR-NAS†‡,
  supplement §1; not in the authors' retraining pipeline); eval: centre crop 0.875 + bicubic resize.
* PointPillars global augmentation (OpenPCDet order): flip y -> -y, rotation U(-pi/4, pi/4) about z,
  scaling U(0.95, 1.05), translation N(0, 0.2) per axis, applied to points and boxes alike.

Random draws come from an explicit `torch.Generator` (see `common.AugmentationRNG`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as F

from hrnas.data.common import IMAGENET_MEAN, IMAGENET_STD, randint, uniform

IGNORE_INDEX = 255


def pil_to_image(img: Image.Image) -> tv_tensors.Image:
    """PIL RGB -> uint8 tv_tensors.Image (3, H, W)."""
    return tv_tensors.Image(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous())


def normalize(img: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 normalised with ImageNet mean/std (RGB)."""
    x = img.as_subclass(torch.Tensor).float().div_(255.0)
    return F.normalize(x, list(mean), list(std))


# ---------------------------------------------------------------------------- segmentation

def keep_ratio_scale(h: int, w: int, img_scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg `rescale`: largest (h', w') with long edge <= img_scale[0] and short edge <= img_scale[1]."""
    long_edge, short_edge = max(img_scale), min(img_scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _resize_pair(img, mask, hw):
    img = F.resize(img, list(hw), interpolation=InterpolationMode.BILINEAR, antialias=True)
    mask = F.resize(mask, list(hw), interpolation=InterpolationMode.NEAREST)
    return img, mask


def _pad_pair(img, mask, hw, ignore_index):
    ph, pw = hw[0] - img.shape[-2], hw[1] - img.shape[-1]
    if ph > 0 or pw > 0:
        padding = [0, 0, max(pw, 0), max(ph, 0)]  # left, top, right, bottom
        img = F.pad(img, padding, fill=0)
        mask = F.pad(mask, padding, fill=ignore_index)
    return img, mask


def photometric_distortion(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """mmseg PhotoMetricDistortion on a uint8 image: brightness +-32, contrast 0.5-1.5 (before or
    after the colour ops), saturation 0.5-1.5, hue +-18/180; each applied with probability 0.5."""
    def clip(x):
        return x.clamp_(0, 255).round_().to(torch.uint8)

    plain = img.as_subclass(torch.Tensor)
    if uniform(g) < 0.5:
        plain = clip(plain.float() + uniform(g, -32, 32))
    contrast_first = randint(g, 0, 2) == 1

    def contrast(x):
        return clip(x.float() * uniform(g, 0.5, 1.5)) if uniform(g) < 0.5 else x

    if contrast_first:
        plain = contrast(plain)
    if uniform(g) < 0.5:
        plain = F.adjust_saturation(plain, uniform(g, 0.5, 1.5))
    if uniform(g) < 0.5:
        plain = F.adjust_hue(plain, uniform(g, -18, 18) / 180.0)
    if not contrast_first:
        plain = contrast(plain)
    return tv_tensors.Image(plain)


class SegTrainTransform:
    """Training pipeline of the authors' segmentation configs (mmseg `seg_dataflow.py`)."""

    def __init__(self, size, img_scale, ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                 flip_prob=0.5, photometric=True, ignore_index=IGNORE_INDEX):
        self.size = tuple(size)
        self.img_scale = tuple(img_scale)
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.ignore_index = ignore_index

    def _crop_box(self, mask: torch.Tensor, g) -> tuple[int, int]:
        h, w = mask.shape[-2:]
        ch, cw = self.size
        labels = mask.as_subclass(torch.Tensor).numpy()
        for _ in range(10):
            top, left = randint(g, 0, max(h - ch, 0) + 1), randint(g, 0, max(w - cw, 0) + 1)
            if self.cat_max_ratio >= 1.0:
                break
            patch = labels[top:top + ch, left:left + cw]
            cnt = np.bincount(patch[patch != self.ignore_index].ravel(), minlength=1)
            cnt = cnt[cnt > 0]
            if cnt.size > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                break
        return top, left

    def __call__(self, img: Image.Image, mask: np.ndarray, g: torch.Generator):
        image = pil_to_image(img)
        target = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        ratio = uniform(g, *self.ratio_range)
        scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        image, target = _resize_pair(image, target, keep_ratio_scale(*image.shape[-2:], scale))
        top, left = self._crop_box(target, g)
        ch, cw = min(self.size[0], target.shape[-2]), min(self.size[1], target.shape[-1])
        image, target = F.crop(image, top, left, ch, cw), F.crop(target, top, left, ch, cw)
        if uniform(g) < self.flip_prob:
            image, target = F.horizontal_flip(image), F.horizontal_flip(target)
        if self.photometric:
            image = photometric_distortion(image, g)
        image, target = _pad_pair(image, target, self.size, self.ignore_index)
        return normalize(image), target.as_subclass(torch.Tensor).long()


class SegEvalTransform:
    """Deterministic evaluation as mmseg's test pipeline: the image resized (bilinear without
    antialiasing, as OpenCV's, keeping the ratio) to `img_scale`, not padded (any size: the network
    handles sizes that are not multiples of 32); the label untouched at the original size, where the
    metrics are computed."""

    def __init__(self, img_scale):
        self.img_scale = tuple(img_scale)

    def __call__(self, img: Image.Image, mask: np.ndarray, g=None):
        image = pil_to_image(img)
        hw = keep_ratio_scale(*image.shape[-2:], self.img_scale)
        if tuple(hw) != tuple(image.shape[-2:]):
            image = F.resize(image, list(hw), interpolation=InterpolationMode.BILINEAR, antialias=False)
        return normalize(image), torch.from_numpy(mask.astype(np.int64))


# ---------------------------------------------------------------------------- ImageNet

def centre_crop_box(h: int, w: int, out_hw, fraction=0.875) -> tuple[int, int, int, int]:
    """TF `_decode_and_center_crop`: centred box with the output's aspect, `fraction` of the largest fit."""
    aspect = out_hw[1] / out_hw[0]
    ch = min(h, w / aspect) * fraction
    cw = ch * aspect
    ch, cw = max(1, int(round(ch))), max(1, int(round(cw)))
    return (h - ch + 1) // 2, (w - cw + 1) // 2, ch, cw


class ClsTrainTransform:
    """TF-style random-resized crop (sample_distorted_bounding_box, 10 attempts) + bicubic + flip.

    ``randaugment=(N, M)``: first torchvision's RandAugment, N random ops of magnitude M on a 0-30
    scale (the scale of the authors' own implementation), drawn from ``g`` like every other choice.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), min_covered=0.1, flip_prob=0.5,
                 randaugment=None):
        self.size = tuple(size)
        self.scale, self.ratio, self.min_covered, self.flip_prob = scale, ratio, min_covered, flip_prob
        self.randaugment = None if randaugment is None else RandAugment(*(int(v) for v in randaugment))

    def crop_box(self, h: int, w: int, g) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * uniform(g, *self.scale)
            r = math.exp(uniform(g, *log_r))
            cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < cw <= w and 0 < ch <= h and cw * ch >= self.min_covered * area:
                return randint(g, 0, h - ch + 1), randint(g, 0, w - cw + 1), ch, cw
        return centre_crop_box(h, w, self.size)

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        image = pil_to_image(img)
        if self.randaugment is not None:
            seed = randint(g, 0, 2 ** 31 - 1)
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG
                torch.manual_seed(seed)
                image = self.randaugment(image)
        top, left, ch, cw = self.crop_box(image.shape[-2], image.shape[-1], g)
        image = F.resized_crop(image, top, left, ch, cw, list(self.size),
                               interpolation=InterpolationMode.BICUBIC, antialias=True)
        if uniform(g) < self.flip_prob:
            image = F.horizontal_flip(image)
        return normalize(image)


class ClsEvalTransform:
    """TF-style evaluation: centre crop of 0.875 of the short side, bicubic resize to `size`."""

    def __init__(self, size, fraction=0.875):
        self.size, self.fraction = tuple(size), fraction

    def __call__(self, img: Image.Image, g=None) -> torch.Tensor:
        image = pil_to_image(img)
        top, left, ch, cw = centre_crop_box(image.shape[-2], image.shape[-1], self.size, self.fraction)
        image = F.resized_crop(image, top, left, ch, cw, list(self.size),
                               interpolation=InterpolationMode.BICUBIC, antialias=True)
        return normalize(image)


# ---------------------------------------------------------------------------- point clouds

def rotate_z(xy: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 2) points counter-clockwise by `angle` about the z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([xy[:, 0] * c - xy[:, 1] * s, xy[:, 0] * s + xy[:, 1] * c], axis=1)


def global_transform(points: np.ndarray, boxes: np.ndarray, *, flip: bool, angle: float,
                     scale: float, shift) -> tuple[np.ndarray, np.ndarray]:
    """Apply flip (y -> -y), rotation about z, uniform scaling and translation to points (N, >=3)
    and LiDAR boxes (M, 7: x, y, z, l, w, h, yaw) consistently. Inputs are not modified."""
    pts, bxs = points.copy(), boxes.copy()
    if flip:
        pts[:, 1] *= -1
        bxs[:, 1] *= -1
        bxs[:, 6] *= -1
    pts[:, :2] = rotate_z(pts[:, :2], angle)
    bxs[:, :2] = rotate_z(bxs[:, :2], angle)
    bxs[:, 6] += angle
    pts[:, :3] *= scale
    bxs[:, :6] *= scale
    pts[:, :3] += np.asarray(shift, dtype=pts.dtype)
    bxs[:, :3] += np.asarray(shift, dtype=bxs.dtype)
    bxs[:, 6] = (bxs[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return pts, bxs


class PointPillarsAugment:
    """Random global augmentation of PointPillars (flip p=0.5, rotation, scaling, translation)."""

    def __init__(self, flip_prob=0.5, rot_range=(-math.pi / 4, math.pi / 4),
                 scale_range=(0.95, 1.05), translate_std=0.2):
        self.flip_prob, self.rot_range = flip_prob, rot_range
        self.scale_range, self.translate_std = scale_range, translate_std

    def __call__(self, points: np.ndarray, boxes: np.ndarray, g: torch.Generator):
        flip = uniform(g) < self.flip_prob
        angle = uniform(g, *self.rot_range)
        scale = uniform(g, *self.scale_range)
        shift = (torch.randn(3, generator=g) * self.translate_std).numpy()
        return global_transform(points, boxes, flip=flip, angle=angle, scale=scale, shift=shift)
