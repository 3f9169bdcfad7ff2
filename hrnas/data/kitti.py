"""KITTI 3D object detection for PointPillars (docs/datasets.md §3.5, docs/metrics-and-peers.md §4.1).

Layout: `ROOT/ImageSets/{train,val,trainval,test}.txt`, `ROOT/training/{velodyne,label_2,calib,image_2}/`
(`ROOT/testing/` for the test split, without labels). Coordinate conventions follow OpenPCDet:
LiDAR box = (x, y, z centre, l, w, h, yaw); label = camera bottom centre (x, y, z), (h, w, l), rotation_y,
with yaw = -(rotation_y + pi/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrnas.io import atomic_write_text
from hrnas.data.common import AugmentationRNG, image_size, require_dir, require_file
from hrnas.data.transforms import PointPillarsAugment
from hrnas.errors import UserError

LAYOUT = ("ROOT/ImageSets/<split>.txt + ROOT/training/{velodyne/*.bin, label_2/*.txt, calib/*.txt, "
          "image_2/*.png}")
CLASSES = ("Car", "Pedestrian", "Cyclist")  # label 1, 2, 3 (0 = padding)
REAL_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
# Smaller range used by the synthetic KITTI miniature (0.32 m pillars -> 160 x 160 BEV grid).
SYNTHETIC_RANGE = (0.0, -25.6, -3.0, 51.2, 25.6, 1.0)
_CALIB_KEYS = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}


class Calibration:
    """KITTI calib file: P2 (3x4), R0_rect (3x3), Tr_velo_to_cam (3x4) and the frame transforms."""

    def __init__(self, P2: np.ndarray, R0: np.ndarray, V2C: np.ndarray):
        self.P2 = np.asarray(P2, dtype=np.float64).reshape(3, 4)
        self.R0 = np.asarray(R0, dtype=np.float64).reshape(3, 3)
        self.V2C = np.asarray(V2C, dtype=np.float64).reshape(3, 4)
        # 4x4 LiDAR -> rectified camera and its inverse
        self._l2r = np.eye(4)
        self._l2r[:3, :] = self.R0 @ self.V2C
        self._r2l = np.linalg.inv(self._l2r)

    @classmethod
    def from_file(cls, path) -> "Calibration":
        path = require_file(path, "KITTI calib")
        values = {}
        for line in path.read_text().splitlines():
            key, sep, rest = line.partition(":")
            if not sep:
                continue
            try:
                values[key.strip()] = np.array([float(v) for v in rest.split()])
            except ValueError:
                raise UserError(f"KITTI calib {path}: line {key.strip()!r} has non-numeric values") from None
        for key, n in _CALIB_KEYS.items():
            if key not in values or values[key].size != n:
                raise UserError(f"KITTI calib {path}: needs {key} with {n} numbers")
        return cls(values["P2"], values["R0_rect"], values["Tr_velo_to_cam"])

    def lidar_to_rect(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) LiDAR points -> rectified camera frame: R0_rect . Tr_velo_to_cam . [x; 1]."""
        pts = np.asarray(pts, dtype=np.float64)[:, :3]
        return pts @ self._l2r[:3, :3].T + self._l2r[:3, 3]

    def rect_to_lidar(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)[:, :3]
        return pts @ self._r2l[:3, :3].T + self._r2l[:3, 3]

    def rect_to_img(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) rectified points -> image_2 pixels (N, 2) and depth (N,) in the camera frame."""
        pts = np.asarray(pts, dtype=np.float64)[:, :3]
        hom = np.hstack([pts, np.ones((len(pts), 1))]) @ self.P2.T
        depth = hom[:, 2] - self.P2[2, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = hom[:, :2] / hom[:, 2:3]
        return uv, depth

    def __repr__(self) -> str:
        return f"Calibration(P2[0,0]={self.P2[0, 0]:.2f})"


@dataclass
class KittiObject:
    """One line of a label_2 file (15 fields, plus a score in result files)."""
    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    h: float
    w: float
    l: float
    loc: tuple[float, float, float]
    ry: float
    score: float | None = None

    def to_line(self) -> str:
        fields = [self.type, f"{self.truncated:.2f}", str(int(self.occluded)), f"{self.alpha:.2f}",
                  *(f"{v:.2f}" for v in self.bbox), f"{self.h:.2f}", f"{self.w:.2f}", f"{self.l:.2f}",
                  *(f"{v:.2f}" for v in self.loc), f"{self.ry:.2f}"]
        if self.score is not None:
            fields.append(f"{self.score:.4f}")
        return " ".join(fields)


def parse_label_file(path) -> list[KittiObject]:
    """Parse a KITTI label_2 file; a line without 15 (or 16) numeric fields names the file and line."""
    path = require_file(path, "KITTI label")
    objects = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) not in (15, 16):
            raise UserError(f"KITTI label {path} line {n}: {len(f)} fields, expected 15 "
                            "(type truncated occluded alpha bbox(4) h w l x y z rotation_y)")
        try:
            v = [float(x) for x in f[1:]]
        except ValueError:
            raise UserError(f"KITTI label {path} line {n}: non-numeric field in {line!r}") from None
        objects.append(KittiObject(f[0], v[0], int(v[1]), v[2], tuple(v[3:7]), v[7], v[8], v[9],
                                   tuple(v[10:13]), v[13], v[14] if len(v) == 15 else None))
    return objects


def read_points(path) -> np.ndarray:
    """Read a velodyne .bin (little-endian float32 x, y, z, reflectance) as (N, 4)."""
    path = require_file(path, "KITTI velodyne")
    nbytes = path.stat().st_size
    if nbytes == 0 or nbytes % 16:
        raise UserError(f"KITTI velodyne file {path} is truncated or corrupt: {nbytes} bytes is not a "
                        "positive multiple of 16 (4 float32 per point)")
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)


# ---------------------------------------------------------------------------- box conversions

def camera_boxes_to_lidar(boxes_cam: np.ndarray, calib: Calibration) -> np.ndarray:
    """(N, 7) label boxes (x, y, z bottom centre in rect camera, h, w, l, rotation_y) ->
    (N, 7) LiDAR boxes (x, y, z centre, l, w, h, yaw)."""
    boxes_cam = np.asarray(boxes_cam, dtype=np.float64).reshape(-1, 7)
    xyz = calib.rect_to_lidar(boxes_cam[:, :3])
    h, w, l, ry = boxes_cam[:, 3], boxes_cam[:, 4], boxes_cam[:, 5], boxes_cam[:, 6]
    xyz[:, 2] += h / 2
    return np.column_stack([xyz, l, w, h, -(ry + np.pi / 2)])


def lidar_boxes_to_camera(boxes: np.ndarray, calib: Calibration) -> np.ndarray:
    """Inverse of `camera_boxes_to_lidar`; rotation_y wrapped to [-pi, pi)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2
    loc = calib.lidar_to_rect(bottom)
    ry = (-boxes[:, 6] - np.pi / 2 + np.pi) % (2 * np.pi) - np.pi
    return np.column_stack([loc, boxes[:, 5], boxes[:, 4], boxes[:, 3], ry])


def boxes_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) LiDAR boxes -> (N, 8, 3) corners (bottom four, then top four)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    signs = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                      [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=np.float64) * 0.5
    local = signs[None] * boxes[:, None, 3:6]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[:, None, :3]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M) bool: point n lies inside (or on) LiDAR box m."""
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    d = pts[:, None, :] - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return ((np.abs(lx) <= boxes[:, 3] / 2) & (np.abs(ly) <= boxes[:, 4] / 2)
            & (np.abs(d[..., 2]) <= boxes[:, 5] / 2))


def mask_points_in_range(points: np.ndarray, pc_range) -> np.ndarray:
    lo, hi = np.asarray(pc_range[:3]), np.asarray(pc_range[3:])
    return np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)


def mask_boxes_in_range(boxes: np.ndarray, pc_range) -> np.ndarray:
    """OpenPCDet `mask_boxes_outside_range_numpy` (min_num_corners=1): keep a box if a corner is inside."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    corners = boxes_to_corners(boxes)
    lo, hi = np.asarray(pc_range[:3]), np.asarray(pc_range[3:])
    return np.any(np.all((corners >= lo) & (corners <= hi), axis=2), axis=1)


def fov_mask(points: np.ndarray, calib: Calibration, width: int, height: int) -> np.ndarray:
    """Points that project into image_2 with positive depth (OpenPCDet FOV_POINTS_ONLY)."""
    uv, depth = calib.rect_to_img(calib.lidar_to_rect(points))
    return (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height) & (depth >= 0)


# ---------------------------------------------------------------------------- dataset

def read_image_set(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [i for i in ids if not (len(i) == 6 and i.isdigit())]
    if bad:
        raise UserError(f"KITTI image set {path}: ids must be 6 digits, got {bad[0]!r}")
    return ids


class KittiDataset(torch.utils.data.Dataset):
    """Samples: dict points (N, 4) float32, gt_boxes (M, 7) float32 LiDAR, gt_labels (M,) int64
    (1 Car, 2 Pedestrian, 3 Cyclist), frame_id str, calib `Calibration`."""

    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(self, root, split: str, *, train: bool, point_cloud_range=REAL_RANGE,
                 fov_only: bool = True, augment: PointPillarsAugment | None = None, seed: int = 0):
        root = require_dir(Path(root), "KITTI", LAYOUT)
        set_file = root / "ImageSets" / f"{split}.txt"
        if not set_file.is_file():
            raise UserError(f"KITTI: split file {set_file} not found; expected layout {LAYOUT}")
        self.frame_ids = read_image_set(set_file)
        if not self.frame_ids:
            raise UserError(f"KITTI: split file {set_file} lists no frames")
        self.has_labels = split != "test"
        self.base = require_dir(root / ("testing" if split == "test" else "training"), "KITTI", LAYOUT)
        for sub in ("velodyne", "calib", "image_2") + (("label_2",) if self.has_labels else ()):
            require_dir(self.base / sub, "KITTI", LAYOUT)
        if len(point_cloud_range) != 6:
            raise UserError(f"KITTI: point_cloud_range needs 6 numbers, got {list(point_cloud_range)}")
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.train, self.fov_only = train, fov_only
        self.augment = augment if augment is not None else (PointPillarsAugment() if train else None)
        self.rng = AugmentationRNG(seed)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def calib(self, frame_id: str) -> Calibration:
        return Calibration.from_file(self.base / "calib" / f"{frame_id}.txt")

    def lidar_boxes(self, frame_id: str, calib: Calibration) -> tuple[np.ndarray, np.ndarray]:
        """Car/Pedestrian/Cyclist label boxes of a frame in the LiDAR frame, with labels 1..3."""
        objs = [o for o in parse_label_file(self.base / "label_2" / f"{frame_id}.txt") if o.type in CLASSES]
        cam = np.array([[*o.loc, o.h, o.w, o.l, o.ry] for o in objs], dtype=np.float64).reshape(-1, 7)
        labels = np.array([CLASSES.index(o.type) + 1 for o in objs], dtype=np.int64)
        return camera_boxes_to_lidar(cam, calib), labels

    def __getitem__(self, index: int) -> dict:
        fid = self.frame_ids[index]
        calib = self.calib(fid)
        points = read_points(self.base / "velodyne" / f"{fid}.bin")
        if self.fov_only:
            w, h = image_size(self.base / "image_2" / f"{fid}.png")
            points = points[fov_mask(points, calib, w, h)]
        boxes, labels = (self.lidar_boxes(fid, calib) if self.has_labels
                         else (np.zeros((0, 7)), np.zeros(0, np.int64)))
        if self.augment is not None:
            g = self.rng.get()
            points, boxes = self.augment(points, boxes, g)
        points = points[mask_points_in_range(points, self.point_cloud_range)]
        keep = mask_boxes_in_range(boxes, self.point_cloud_range)
        boxes, labels = boxes[keep], labels[keep]
        if self.train:
            points = points[torch.randperm(len(points), generator=self.rng.get()).numpy()]
        return {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
                "gt_boxes": torch.from_numpy(boxes.astype(np.float32)),
                "gt_labels": torch.from_numpy(labels.astype(np.int64)),
                "frame_id": fid, "calib": calib}


def collate_kitti(batch: list[dict]) -> dict:
    """Points concatenated with a leading batch-index column -> (sum N, 5); boxes padded to
    (B, max(1, Mmax), 7) with zeros and labels (B, max(1, Mmax)) with 0 (= padding)."""
    points = torch.cat([torch.cat([torch.full((len(s["points"]), 1), float(i)), s["points"]], dim=1)
                        for i, s in enumerate(batch)])
    m = max(1, max(len(s["gt_boxes"]) for s in batch))
    boxes = torch.zeros(len(batch), m, 7)
    labels = torch.zeros(len(batch), m, dtype=torch.int64)
    for i, s in enumerate(batch):
        boxes[i, :len(s["gt_boxes"])] = s["gt_boxes"]
        labels[i, :len(s["gt_labels"])] = s["gt_labels"]
    return {"points": points, "gt_boxes": boxes, "gt_labels": labels,
            "frame_id": [s["frame_id"] for s in batch], "calib": [s["calib"] for s in batch]}


# ---------------------------------------------------------------------------- ImageSets

STANDARD_COUNTS = {"train": 3712, "val": 3769}


def write_image_sets(root, train_ids, val_ids, *, expect_standard: bool = False) -> dict[str, int]:
    """Write ImageSets/{train,val,trainval}.txt after checking the ids (6 digits, disjoint, and a
    velodyne file for each). `expect_standard` also requires the standard 3712/3769 split sizes."""
    root = require_dir(Path(root), "KITTI", LAYOUT)
    velo = require_dir(root / "training" / "velodyne", "KITTI", LAYOUT)
    splits = {"train": sorted(set(train_ids)), "val": sorted(set(val_ids))}
    for name, ids in splits.items():
        bad = [i for i in ids if not (len(i) == 6 and i.isdigit())]
        if bad:
            raise UserError(f"KITTI {name} ids must be 6 digits, got {bad[0]!r}")
        missing = [i for i in ids if not (velo / f"{i}.bin").is_file()]
        if missing:
            raise UserError(f"KITTI {name} frame {missing[0]} has no {velo / (missing[0] + '.bin')} "
                            f"({len(missing)} missing)")
        if expect_standard and len(ids) != STANDARD_COUNTS[name]:
            raise UserError(f"KITTI {name} split has {len(ids)} frames, the standard split has "
                            f"{STANDARD_COUNTS[name]}")
    overlap = set(splits["train"]) & set(splits["val"])
    if overlap:
        raise UserError(f"KITTI train and val splits share {len(overlap)} frames, e.g. {min(overlap)}")
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    (root / "ImageSets").mkdir(exist_ok=True)
    for name, ids in splits.items():
        atomic_write_text(root / "ImageSets" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    return {k: len(v) for k, v in splits.items()}


def random_split(frame_ids, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split frame ids at random (seeded) into train and val."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = sorted(frame_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(math.floor(len(ids) * val_fraction + 0.5)))
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], sorted(val)
