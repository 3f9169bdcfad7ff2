"""Residual box coding of PointPillars/SECOND anchors and the BEV box conventions around it.

Boxes are LiDAR-frame (x, y, z_centre, l, w, h, yaw), yaw around +z, l along the heading
(the convention of OpenPCDet and of `hrnas.data` KITTI loading). The coding is the one of
PointPillars §2.3 / SECOND: centre offsets scaled by the anchor's BEV diagonal (x, y) or height (z),
log size ratios and a plain angle difference (peers-and-metrics §4.1).
"""
from __future__ import annotations

import math

import torch


def limit_period(val: torch.Tensor, offset: float = 0.5, period: float = math.pi) -> torch.Tensor:
    """Map ``val`` into ``[-offset * period, (1 - offset) * period)``."""
    return val - torch.floor(val / period + offset) * period


def nearest_bev_rect(boxes: torch.Tensor) -> torch.Tensor:
    """Axis-aligned BEV rectangle (x1, y1, x2, y2) that best approximates each rotated box.

    A box whose yaw is closer to ±π/2 than to 0/π lies across the axes, so its length runs
    along y: l and w are swapped (the "nearest BEV" boxes of SECOND/OpenPCDet).
    """
    across = limit_period(boxes[:, 6], 0.5, math.pi).abs() >= math.pi / 4
    dims = torch.where(across[:, None], boxes[:, [4, 3]], boxes[:, [3, 4]])
    centre = boxes[:, :2]
    return torch.cat([centre - dims / 2, centre + dims / 2], dim=1)


class ResidualCoder:
    """Encode ground-truth boxes as residuals w.r.t. anchors, and decode them back (PointPillars §2.3).

    dx = (x_g - x_a) / d, dy = (y_g - y_a) / d with d = sqrt(l_a² + w_a²), dz = (z_g - z_a) / h_a,
    dl = log(l_g / l_a) (w, h alike), dθ = θ_g - θ_a.
    """

    code_size = 7

    @staticmethod
    def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``boxes`` and ``anchors`` (..., 7) → residuals (..., 7)."""
        xa, ya, za, la, wa, ha, ra = anchors.unbind(-1)
        xg, yg, zg, lg, wg, hg, rg = boxes.unbind(-1)
        la, wa, ha = la.clamp(min=1e-5), wa.clamp(min=1e-5), ha.clamp(min=1e-5)
        lg, wg, hg = lg.clamp(min=1e-5), wg.clamp(min=1e-5), hg.clamp(min=1e-5)
        diagonal = torch.sqrt(la ** 2 + wa ** 2)
        return torch.stack([
            (xg - xa) / diagonal, (yg - ya) / diagonal, (zg - za) / ha,
            torch.log(lg / la), torch.log(wg / wa), torch.log(hg / ha), rg - ra,
        ], dim=-1)

    @staticmethod
    def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Residuals and anchors (..., 7) → boxes (..., 7); the inverse of :meth:`encode`."""
        xa, ya, za, la, wa, ha, ra = anchors.unbind(-1)
        dx, dy, dz, dl, dw, dh, dr = deltas.unbind(-1)
        la, wa, ha = la.clamp(min=1e-5), wa.clamp(min=1e-5), ha.clamp(min=1e-5)
        diagonal = torch.sqrt(la ** 2 + wa ** 2)
        return torch.stack([
            dx * diagonal + xa, dy * diagonal + ya, dz * ha + za,
            torch.exp(dl) * la, torch.exp(dw) * wa, torch.exp(dh) * ha, dr + ra,
        ], dim=-1)
