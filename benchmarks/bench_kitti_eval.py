"""Speed of the CPU KITTI evaluator (hrnas.metrics.kitti) on a val-sized synthetic set.

Generates 3,769 frames with about 10 ground-truth objects and 20 detections each (noisy copies of
the objects, duplicates and random false positives; every KITTI class incl. Van, Person_sitting and
DontCare), writes them as KITTI label/result files to a temporary folder, and times
``evaluate_dirs`` (reading + evaluation) and ``evaluate`` (evaluation only). Target: < 60 s on
2 CPU cores (docs/metrics-and-peers.md §4.6).

    python benchmarks/bench_kitti_eval.py [--frames 3769] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hrnas.metrics import kitti

_FOCAL, _CU, _CV = 721.5, 609.6, 172.9
_DIMS = {"Car": (1.53, 1.63, 3.88), "Van": (2.2, 1.9, 5.1), "Truck": (3.2, 2.6, 10.0),
         "Pedestrian": (1.76, 0.66, 0.84), "Person_sitting": (1.27, 0.54, 0.80),
         "Cyclist": (1.74, 0.60, 1.76), "Tram": (3.5, 2.5, 15.0), "Misc": (1.9, 1.5, 3.6)}
_GT_TYPES = ("Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "Truck", "Misc", "DontCare")
_GT_PROBS = (0.5, 0.14, 0.08, 0.08, 0.03, 0.03, 0.04, 0.10)


def _image_box(loc, dims):
    """Approximate 2D box of camera boxes by projecting the bottom/top centre (pinhole, P2-like)."""
    x, y, z = loc[:, 0], loc[:, 1], np.maximum(loc[:, 2], 1.0)
    h, half = dims[:, 0], 0.5 * np.maximum(dims[:, 1], dims[:, 2])
    u = _CU + _FOCAL * x / z
    return np.stack([u - _FOCAL * half / z, _CV + _FOCAL * (y - h) / z,
                     u + _FOCAL * half / z, _CV + _FOCAL * y / z], axis=1)


def synthetic_frame(rng: np.random.Generator, n_gt: int = 10, n_det: int = 20):
    """One frame: (label anno, result anno) with realistic KITTI statistics."""
    names = rng.choice(_GT_TYPES, size=n_gt, p=_GT_PROBS)
    obj = names != "DontCare"
    dims = np.array([_DIMS.get(n, (1.0, 1.0, 1.0)) for n in names]) * rng.uniform(0.9, 1.1, (n_gt, 3))
    loc = np.stack([rng.uniform(-15, 15, n_gt), 1.65 + rng.normal(0, 0.1, n_gt),
                    rng.uniform(4, 60, n_gt)], axis=1)
    ry = rng.uniform(-np.pi, np.pi, n_gt)
    bbox = _image_box(loc, dims)
    gt = kitti.make_anno(
        names, bbox, np.where(obj[:, None], dims, -1), np.where(obj[:, None], loc, -1000),
        np.where(obj, ry, -10), truncated=np.where(obj, rng.choice([0, 0, 0, 0.2, 0.4, 0.7], n_gt), -1),
        occluded=np.where(obj, rng.choice([0, 0, 1, 2, 3], n_gt), -1),
        alpha=np.where(obj, ry - np.arctan2(loc[:, 0], loc[:, 2]), -10))
    src = rng.permutation(np.flatnonzero(obj))[: int(0.8 * obj.sum())]
    src = np.r_[src, src[: max(1, src.size // 5)]]  # a few duplicates
    d_names = names[src].copy()
    d_names[d_names == "Van"] = "Car"
    d_names[~np.isin(d_names, ("Car", "Pedestrian", "Cyclist"))] = "Car"
    d_dims = dims[src] * rng.uniform(0.93, 1.07, (src.size, 3))
    d_loc = loc[src] + rng.normal(0, [0.1, 0.03, 0.15], (src.size, 3))
    d_ry = ry[src] + rng.normal(0, 0.15, src.size)
    d_score = rng.uniform(0.3, 1.0, src.size)
    n_fp = max(n_det - src.size, 0)
    fp_names = rng.choice(("Car", "Pedestrian", "Cyclist"), size=n_fp, p=(0.6, 0.25, 0.15))
    fp_dims = np.array([_DIMS[n] for n in fp_names]).reshape(-1, 3)
    fp_loc = np.stack([rng.uniform(-15, 15, n_fp), 1.65 + rng.normal(0, 0.1, n_fp),
                       rng.uniform(4, 60, n_fp)], axis=1)
    all_loc, all_dims = np.r_[d_loc, fp_loc], np.r_[d_dims, fp_dims]
    all_ry = np.r_[d_ry, rng.uniform(-np.pi, np.pi, n_fp)]
    det = kitti.make_anno(
        np.r_[d_names, fp_names], _image_box(all_loc, all_dims), all_dims, all_loc, all_ry,
        score=np.r_[d_score, rng.uniform(0.0, 0.7, n_fp)],
        alpha=all_ry - np.arctan2(all_loc[:, 0], all_loc[:, 2]))
    return gt, det


def synthetic_set(n_frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = [synthetic_frame(rng) for _ in range(n_frames)]
    return [g for g, _ in frames], [d for _, d in frames]


def _write_label(path: Path, gt: dict) -> None:
    rows = []
    for i, n in enumerate(gt["name"]):
        nums = [gt["alpha"][i], *gt["bbox"][i], *gt["dimensions"][i], *gt["location"][i],
                gt["rotation_y"][i]]
        rows.append(f"{n} {gt['truncated'][i]:.2f} {gt['occluded'][i]} "
                    + " ".join(f"{v:.2f}" for v in nums) + "\n")
    path.write_text("".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3769)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gts, dts = synthetic_set(args.frames, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root, res = Path(tmp) / "kitti", Path(tmp) / "results"
        (root / "training" / "label_2").mkdir(parents=True)
        (root / "ImageSets").mkdir()
        res.mkdir()
        ids = [f"{i:06d}" for i in range(args.frames)]
        for fid, gt, dt in zip(ids, gts, dts):
            _write_label(root / "training" / "label_2" / f"{fid}.txt", gt)
            kitti.write_result_file(res / f"{fid}.txt", dt)
        (root / "ImageSets" / "val.txt").write_text("\n".join(ids) + "\n")
        t0 = time.perf_counter()
        result = kitti.evaluate_dirs(res, root, "val")
        t_dirs = time.perf_counter() - t0
    t0 = time.perf_counter()
    kitti.evaluate(gts, dts)
    t_eval = time.perf_counter() - t0
    n_gt = sum(len(g["name"]) for g in gts)
    n_dt = sum(len(d["name"]) for d in dts)
    print(f"frames {args.frames}, GT objects {n_gt}, detections {n_dt}")
    print(kitti.format_table(result))
    print(f"evaluate_dirs (read + evaluate): {t_dirs:.2f} s")
    print(f"evaluate (in memory):            {t_eval:.2f} s")


if __name__ == "__main__":
    main()
