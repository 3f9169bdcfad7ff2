"""Speed of pillarisation (and the pillar feature net + scatter) on a KITTI-sized LiDAR scan.

A synthetic 64-beam, 360° HDL-64E-like scan (~120k points: ground ring pattern plus walls at random
ranges) is pillarised with the paper and OpenPCDet presets. Target: pillarize < 50 ms on 2 CPU cores.

    python benchmarks/bench_pillars.py [--points 120000] [--repeats 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from hrnas.models.pointpillars import PillarConfig, PillarFeatureNet, PointPillarsScatter, pillarize


def synthetic_scan(num_points: int, seed: int = 0) -> torch.Tensor:
    """(N, 4) x, y, z, r: 64 beams from +2° to -24.8°, sensor 1.73 m above a flat ground, ≤ 80 m range."""
    g = torch.Generator().manual_seed(seed)
    beams = 64
    azimuths = math.ceil(num_points / beams)
    elevation = torch.linspace(math.radians(2.0), math.radians(-24.8), beams)[:, None].expand(beams, azimuths)
    azimuth = torch.linspace(-math.pi, math.pi, azimuths)[None].expand(beams, azimuths)
    ground_range = torch.where(elevation < -1e-3, 1.73 / torch.tan(-elevation).clamp(min=1e-3), torch.tensor(1e3))
    wall_range = 5.0 + 75.0 * torch.rand(beams, azimuths, generator=g)
    rng = torch.minimum(ground_range, wall_range).clamp(max=80.0)
    rng = rng + 0.02 * torch.randn(beams, azimuths, generator=g)
    xyz = torch.stack([rng * torch.cos(elevation) * torch.cos(azimuth), rng * torch.cos(elevation) * torch.sin(azimuth),
                       rng * torch.sin(elevation)], dim=-1).reshape(-1, 3)[:num_points]
    return torch.cat([xyz, torch.rand(num_points, 1, generator=g)], dim=1)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = synthetic_scan(args.points)
    print(f"scan: {len(points)} points, torch {torch.__version__}, {args.threads} threads")
    header = ("preset", "pillars", "points kept", "pillarize ms", "shuffled ms", "PFN+scatter ms")
    print("{:<22}{:>9}{:>13}{:>14}{:>13}{:>16}".format(*header))
    presets = {"paper (12k x 100)": PillarConfig.paper(), "openpcdet train": PillarConfig.openpcdet(train=True),
               "openpcdet test": PillarConfig.openpcdet(train=False)}
    for name, cfg in presets.items():
        features, num_points, coords = pillarize(points, cfg)
        plain = median_ms(lambda: pillarize(points, cfg), args.repeats)
        gen = torch.Generator().manual_seed(0)
        shuffled = median_ms(lambda: pillarize(points, cfg, shuffle=True, generator=gen), args.repeats)
        pfn = PillarFeatureNet(cfg).eval()
        scatter = PointPillarsScatter(64, cfg.grid_size)
        with torch.no_grad():
            encode = median_ms(lambda: scatter(pfn(features, num_points, coords), coords, 1), max(3, args.repeats // 4))
        print(f"{name:<22}{len(coords):>9}{int(num_points.sum()):>13}{plain:>14.1f}{shuffled:>13.1f}{encode:>16.1f}")


if __name__ == "__main__":
    main()
