"""PointPillars (Lang et al., CVPR 2019) around an exchangeable 2D backbone.

HR-NAS supplement §1 (KITTI): the LiDAR points are grouped into 0.16 m pillars, encoded by the
pillar feature net (PFN) and scattered into a 496×432 BEV pseudo-image; the HR-NAS super network
replaces PointPillars' 2D backbone, and a single-scale anchor head predicts the 3D boxes.

Pipeline: :func:`pillarize` → :class:`PillarFeatureNet` → :class:`PointPillarsScatter` →
backbone → (optional deconvolution) → :class:`~hrnas.models.anchor_head.AnchorHeadSingle`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrnas.errors import UserError
from hrnas.models.anchor_head import AnchorHeadSingle

KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)


@dataclass(frozen=True)
class PillarConfig:
    """Pillar grid: point-cloud range (x_min, y_min, z_min, x_max, y_max, z_max) in metres, pillar size
    (vx, vy, vz) with vz spanning the whole z range, and the per-sample caps on pillars and points."""

    point_cloud_range: tuple[float, ...] = KITTI_RANGE
    voxel_size: tuple[float, ...] = (0.16, 0.16, 4.0)
    max_pillars: int = 12000
    max_points_per_pillar: int = 100

    def __post_init__(self):
        rng = tuple(float(v) for v in self.point_cloud_range)
        vox = tuple(float(v) for v in self.voxel_size)
        object.__setattr__(self, "point_cloud_range", rng)
        object.__setattr__(self, "voxel_size", vox)
        if len(rng) != 6 or any(not math.isfinite(v) for v in rng):
            raise UserError(f"point_cloud_range: expected 6 finite numbers (x_min y_min z_min x_max y_max z_max), "
                            f"got {rng}")
        if len(vox) != 3 or any(not (math.isfinite(v) and v > 0) for v in vox):
            raise UserError(f"voxel_size: expected 3 positive numbers (vx vy vz), got {vox}")
        for axis, name in enumerate("xyz"):
            extent = rng[axis + 3] - rng[axis]
            if extent <= 0:
                raise UserError(f"point_cloud_range: {name}_max must exceed {name}_min, got {rng}")
            cells = extent / vox[axis]
            if abs(cells - round(cells)) > 1e-4 * max(1.0, cells):
                raise UserError(f"voxel_size: {name} extent {extent:g} of point_cloud_range is not a multiple of "
                                f"{vox[axis]:g}")
        if round((rng[5] - rng[2]) / vox[2]) != 1:
            raise UserError(f"voxel_size: vz={vox[2]:g} must equal the z extent {rng[5] - rng[2]:g} of "
                            f"point_cloud_range (one pillar per BEV cell)")
        for name in ("max_pillars", "max_points_per_pillar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name}: expected a positive integer, got {value!r}")

    @classmethod
    def paper(cls) -> "PillarConfig":
        """PointPillars paper / HR-NAS supplement: 12,000 pillars of at most 100 points."""
        return cls(KITTI_RANGE, (0.16, 0.16, 4.0), 12000, 100)

    @classmethod
    def openpcdet(cls, train: bool) -> "PillarConfig":
        """OpenPCDet ``pointpillar.yaml``: 16,000 (train) / 40,000 (test) pillars of at most 32 points."""
        return cls(KITTI_RANGE, (0.16, 0.16, 4.0), 16000 if train else 40000, 32)

    @property
    def grid_size(self) -> tuple[int, int]:
        """BEV grid (nx, ny): (432, 496) for the KITTI range."""
        rng, vox = self.point_cloud_range, self.voxel_size
        return (round((rng[3] - rng[0]) / vox[0]), round((rng[4] - rng[1]) / vox[1]))


def pillarize(points: torch.Tensor, cfg: PillarConfig, *, shuffle: bool = False,
              generator: torch.Generator | None = None):
    """Group points into pillars (PointPillars §2.1), vectorised.

    ``points``: (N, 4) x, y, z, r of one scan, or (N, 5) with a leading batch index. Points outside
    ``cfg.point_cloud_range`` (half-open) are dropped. Per sample at most ``cfg.max_pillars`` pillars are
    kept, in order of their first point, and per pillar its first ``cfg.max_points_per_pillar`` points;
    ``shuffle=True`` randomly permutes the points first (random pillar and point selection, reproducible
    with ``generator``), as OpenPCDet and mmdet3d do for training.

    Returns ``features`` (P, max_points, 4) zero-padded, ``num_points`` (P,) and ``coords`` (P, 3) =
    (batch, y_idx, x_idx), long; pillars sorted by (batch, y, x).
    """
    if points.dim() != 2 or points.shape[1] not in (4, 5):
        raise UserError(f"points: expected shape (N, 4) x,y,z,r or (N, 5) batch,x,y,z,r, got {tuple(points.shape)}")
    nx, ny = cfg.grid_size
    max_pts = cfg.max_points_per_pillar
    device = points.device
    if points.shape[1] == 5:
        batch = points[:, 0].long()
        feats = points[:, 1:]
        if batch.numel() and batch.min() < 0:
            raise UserError("points: the batch index column (column 0) has negative values")
    else:
        batch = torch.zeros(points.shape[0], dtype=torch.long, device=device)
        feats = points
    rng = torch.tensor(cfg.point_cloud_range, dtype=feats.dtype, device=device)
    vox = torch.tensor(cfg.voxel_size[:2], dtype=feats.dtype, device=device)
    xyz = feats[:, :3]
    inside = ((xyz >= rng[:3]) & (xyz < rng[3:])).all(dim=1)
    order = inside.nonzero().squeeze(1)  # point indices in processing order
    if shuffle:
        order = order[torch.randperm(order.numel(), generator=generator).to(device)]
    cell = ((xyz[order, :2] - rng[:2]) / vox).floor().long()
    ix = cell[:, 0].clamp_(0, nx - 1)  # clamp guards float rounding at x_max / y_max
    iy = cell[:, 1].clamp_(0, ny - 1)
    key = (batch[order] * ny + iy) * nx + ix

    # Sort by pillar key; the stable sort keeps processing order inside a pillar → rank via cumsum.
    key_sorted, perm = torch.sort(key, stable=True)
    pillar_keys, counts = torch.unique_consecutive(key_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pillar_of_point = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    rank = torch.arange(key_sorted.numel(), device=device) - starts[pillar_of_point]

    # Per-sample pillar cap: rank pillars of a sample by the arrival of their first point.
    pillar_batch = pillar_keys // (ny * nx)
    arrival = perm[starts]
    by_arrival = torch.argsort(pillar_batch * (order.numel() + 1) + arrival)
    batch_sorted = pillar_batch[by_arrival]
    _, per_sample = torch.unique_consecutive(batch_sorted, return_counts=True)
    sample_start = torch.repeat_interleave(torch.cumsum(per_sample, 0) - per_sample, per_sample)
    keep_pillar = torch.empty_like(counts, dtype=torch.bool)
    keep_pillar[by_arrival] = (torch.arange(by_arrival.numel(), device=device) - sample_start) < cfg.max_pillars

    new_id = torch.cumsum(keep_pillar, 0) - 1
    keep_point = keep_pillar[pillar_of_point] & (rank < max_pts)
    features = feats.new_zeros(int(keep_pillar.sum()), max_pts, feats.shape[1])
    src = order[perm[keep_point]]
    features[new_id[pillar_of_point[keep_point]], rank[keep_point]] = feats[src]
    kept_keys = pillar_keys[keep_pillar]
    num_points = counts[keep_pillar].clamp(max=max_pts)
    coords = torch.stack([kept_keys // (ny * nx), (kept_keys // nx) % ny, kept_keys % nx], dim=1)
    return features, num_points, coords


class PillarFeatureNet(nn.Module):
    """Simplified PointNet over the points of each pillar (PointPillars §2.1).

    Point decoration: raw (x, y, z, r, …), offsets to the pillar's point mean (x_c, y_c, z_c) and
    offsets to the pillar centre (x_p, y_p; plus z_p when ``use_z_center_offset``, OpenPCDet's 10-d
    variant; the paper's is 9-d), optionally the point's range ‖xyz‖. Then Linear (no bias) →
    BatchNorm1d → ReLU → max over the pillar's points. Padding slots never enter the BatchNorm
    statistics nor the max (OpenPCDet zeroes them but lets them into both).
    """

    def __init__(self, cfg: PillarConfig, in_features: int = 4, out_channels: int = 64,
                 with_distance: bool = False, use_z_center_offset: bool = True):
        super().__init__()
        if in_features < 3:
            raise UserError(f"in_features: expected >= 3 (x, y, z first), got {in_features}")
        self.in_features = in_features
        self.with_distance = with_distance
        self.use_z_center_offset = use_z_center_offset
        rng, vox = cfg.point_cloud_range, cfg.voxel_size
        self.register_buffer("voxel", torch.tensor(vox), persistent=False)
        self.register_buffer("origin", torch.tensor([rng[0] + vox[0] / 2, rng[1] + vox[1] / 2,
                                                     rng[2] + vox[2] / 2]), persistent=False)
        decorated = in_features + 3 + (3 if use_z_center_offset else 2) + int(with_distance)
        self.linear = nn.Linear(decorated, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, features: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(P, T, in_features), (P,), (P, 3: batch, y, x) → pillar features (P, out_channels)."""
        if features.dim() != 3 or features.shape[2] != self.in_features:
            raise UserError(f"features: expected (P, T, {self.in_features}), got {tuple(features.shape)}")
        num_pillars = features.shape[0]
        mask = torch.arange(features.shape[1], device=features.device) < num_points[:, None]
        pillar, slot = mask.nonzero(as_tuple=True)  # the real points only, packed
        points = features[pillar, slot]
        xyz = points[:, :3]
        count = num_points.clamp(min=1).to(xyz.dtype)[:, None]
        mean = xyz.new_zeros(num_pillars, 3).index_add_(0, pillar, xyz) / count
        centre = torch.stack([coords[:, 2], coords[:, 1], torch.zeros_like(coords[:, 0])], dim=1)
        centre = centre.to(xyz.dtype) * self.voxel + self.origin
        n_centre = 3 if self.use_z_center_offset else 2
        parts = [points, xyz - mean[pillar], xyz[:, :n_centre] - centre[pillar, :n_centre]]
        if self.with_distance:
            parts.append(xyz.norm(dim=1, keepdim=True))
        point_feats = F.relu(self.norm(self.linear(torch.cat(parts, dim=1))))
        # ReLU outputs are >= 0, so a zero-initialised max over each pillar's points is exact.
        index = pillar[:, None].expand_as(point_feats)
        return point_feats.new_zeros(num_pillars, point_feats.shape[1]).scatter_reduce(
            0, index, point_feats, reduce="amax", include_self=True)


class PointPillarsScatter(nn.Module):
    """Scatter pillar features back to their BEV cells → pseudo-image (B, C, ny, nx) (PointPillars §2.1)."""

    def __init__(self, out_channels: int, grid_size: tuple[int, int]):
        super().__init__()
        self.out_channels = out_channels
        self.nx, self.ny = grid_size

    def forward(self, pillar_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        if pillar_features.shape[1] != self.out_channels:
            raise UserError(f"pillar_features: expected {self.out_channels} channels, got "
                            f"{pillar_features.shape[1]}")
        canvas = pillar_features.new_zeros(batch_size, self.out_channels, self.ny * self.nx)
        canvas[coords[:, 0], :, coords[:, 1] * self.nx + coords[:, 2]] = pillar_features
        return canvas.view(batch_size, self.out_channels, self.ny, self.nx)


class PointPillarsDetector(nn.Module):
    """PointPillars with an exchangeable 2D backbone (HR-NAS supplement §1, KITTI).

    ``backbone`` maps the BEV pseudo-image (B, 64, ny, nx) to (B, backbone_out_channels, ny/s, nx/s)
    with s = ``backbone_stride``. With ``upsample_to_stride`` a ConvTranspose2d-BN-ReLU brings the
    features to that stride first (OpenPCDet's head works at stride 2). ``test_cfg`` holds keyword
    arguments of :meth:`AnchorHeadSingle.predict` used in eval mode.

    ``forward(batch)`` with batch = dict(points=(ΣN, 5) with batch index, gt_boxes=(B, M, 7),
    gt_labels=(B, M), 0 = padding) returns the loss dict (``loss`` = total) in train mode and a
    list of per-sample predictions in eval mode.
    """

    def __init__(self, backbone: nn.Module, backbone_out_channels: int, backbone_stride: int,
                 pillar_cfg: PillarConfig, class_names, upsample_to_stride: int | None = None,
                 pfn_channels: int = 64, use_z_center_offset: bool = True, test_cfg: dict | None = None):
        super().__init__()
        if backbone_stride < 1:
            raise UserError(f"backbone_stride: expected a positive integer, got {backbone_stride}")
        self.pillar_cfg = pillar_cfg
        self.backbone_stride = backbone_stride
        self.pfn = PillarFeatureNet(pillar_cfg, 4, pfn_channels, use_z_center_offset=use_z_center_offset)
        self.scatter = PointPillarsScatter(pfn_channels, pillar_cfg.grid_size)
        self.backbone = backbone
        head_stride = backbone_stride
        self.upsample = None
        if upsample_to_stride is not None:
            if upsample_to_stride < 1 or backbone_stride % upsample_to_stride or upsample_to_stride == backbone_stride:
                raise UserError(f"upsample_to_stride: {upsample_to_stride} must be a proper divisor of "
                                f"backbone_stride={backbone_stride}")
            factor = backbone_stride // upsample_to_stride
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(backbone_out_channels, backbone_out_channels, factor, stride=factor, bias=False),
                nn.BatchNorm2d(backbone_out_channels, eps=1e-3, momentum=0.01),
                nn.ReLU(inplace=True),
            )
            head_stride = upsample_to_stride
        self.head = AnchorHeadSingle(backbone_out_channels, head_stride, class_names, pillar_cfg)
        self.test_cfg = dict(test_cfg or {})
        self.head.check_predict_args(**self.test_cfg)

    def bev_features(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Points (ΣN, 5) → head input features (B, C, H, W)."""
        if points.dim() != 2 or points.shape[1] != 5:
            raise UserError(f"points: expected (ΣN, 5) batch,x,y,z,r, got {tuple(points.shape)}")
        features, num_points, coords = pillarize(points, self.pillar_cfg, shuffle=self.training)
        pseudo_image = self.scatter(self.pfn(features, num_points, coords), coords, batch_size)
        x = self.backbone(pseudo_image)
        nx, ny = self.pillar_cfg.grid_size
        s = self.backbone_stride
        if x.dim() != 4 or x.shape[2] * s != ny or x.shape[3] * s != nx:
            raise UserError(f"backbone_stride: backbone mapped the {ny}x{nx} pseudo-image to "
                            f"{tuple(x.shape[-2:])}, not {ny / s:g}x{nx / s:g}")
        return self.upsample(x) if self.upsample is not None else x

    def forward(self, batch: dict):
        points = batch["points"]
        if "gt_boxes" in batch:
            batch_size = batch["gt_boxes"].shape[0]
        else:
            batch_size = int(points[:, 0].max()) + 1 if points.numel() else 1
        preds = self.head(self.bev_features(points, batch_size))
        if self.training:
            total, parts = self.head.loss(preds, batch["gt_boxes"], batch["gt_labels"])
            return {"loss": total, **parts}
        return self.head.predict(preds, **self.test_cfg)
