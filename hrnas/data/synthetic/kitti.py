"""Synthetic KITTI object: ray-cast LiDAR scenes in the KITTI training layout (§3.5, §4.5)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hrnas.data.kitti import (SYNTHETIC_RANGE, Calibration, KittiObject, boxes_to_corners,
                              lidar_boxes_to_camera)
from hrnas.data.synthetic.draw import sample_rng, save_png

DESCRIPTION = f"""
Ray-cast LiDAR scenes: a sensor 1.73 m above a flat ground plane, beams from +2 deg to -24.9 deg,
azimuth over the front 90 deg, exact ray/plane and ray/oriented-box intersections (true occlusion),
range noise sigma 1 cm, 5 % dropout, reflectance per surface. Labelled objects are built from part boxes
(Car: body + cabin; Pedestrian: legs, torso, head; Cyclist: bicycle + rider); unlabelled clutter
(walls, poles, bushes) stands between them. Labels use the real KITTI 15-field format computed from
the real calibration of training frame 000000 (written for every frame): box = object extent plus
3 cm per side (so the 2-decimal label still contains the object's points), 2D box from the projected
corners clipped to 1242x375, truncation from the clipped fraction, occlusion from the fraction of
the object's rays that reach it (0: >= 80 %, 1: >= 40 %, 2: less). Objects hit by no ray are written
as DontCare. `image_2/*.png` is a sparse depth rendering of the points (a placeholder, not a photo).
Objects are placed inside the smaller point-cloud range used for CPU training,
hrnas.data.kitti.SYNTHETIC_RANGE = {list(SYNTHETIC_RANGE)} (x, y, z min then max, metres); pass it to
the loader as `point_cloud_range`. ImageSets holds train, val and trainval (no testing/ split).
"""
VERSION = 1  # bump when the generated data changes: cached copies are regenerated

PRESETS = {"smoke": {"beams": 32, "azimuth_step": 0.4, "train": 4, "val": 2},
           "tiny": {"beams": 32, "azimuth_step": 0.2, "train": 200, "val": 50}}
SENSOR_HEIGHT = 1.73
IMAGE_SIZE = (1242, 375)
MARGIN = 0.03
# real training/calib/000000.txt
CALIB_000000 = """P0: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P1: 7.215377e+02 0.000000e+00 6.095593e+02 -3.875744e+02 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P2: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
P3: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
R0_rect: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
Tr_velo_to_cam: 7.533745e-03 -9.999714e-01 -6.166020e-04 -4.069766e-03 1.480249e-02 7.280733e-04 -9.998902e-01 -7.631618e-02 9.998621e-01 7.523790e-03 1.480755e-02 -2.717806e-01
Tr_imu_to_velo: 9.999976e-01 7.553071e-04 -2.035826e-03 -8.086759e-01 -7.854027e-04 9.998898e-01 -1.482298e-02 3.195559e-01 2.024406e-03 1.482454e-02 9.998881e-01 -7.997231e-01
"""


def _calibration() -> Calibration:
    v = {k: np.array(rest.split(), float) for k, _, rest in
         (line.partition(":") for line in CALIB_000000.splitlines())}
    return Calibration(v["P2"], v["R0_rect"], v["Tr_velo_to_cam"])


def _object(rng, cls):
    """Label dims (l, w, h) and part boxes in object coordinates (x forward, z up from the bottom)."""
    if cls == "Car":
        l, w, h = rng.normal(3.9, 0.35), rng.normal(1.62, 0.08), rng.normal(1.53, 0.08)
        parts = [(0, 0, 0.15 * h, l, w, 0.45 * h), (-0.1 * l, 0, 0.6 * h, 0.55 * l, 0.88 * w, 0.4 * h),
                 (0.3 * l, 0, 0.0, 0.15 * l, w * 0.95, 0.2 * h), (-0.3 * l, 0, 0.0, 0.15 * l, w * 0.95, 0.2 * h)]
    elif cls == "Pedestrian":
        l, w, h = rng.normal(0.8, 0.08), rng.normal(0.62, 0.06), rng.normal(1.74, 0.08)
        parts = [(0, 0, 0, 0.35 * l, 0.55 * w, 0.5 * h), (0, 0, 0.5 * h, 0.4 * l, 0.9 * w, 0.35 * h),
                 (0, 0, 0.86 * h, 0.3 * l, 0.35 * w, 0.14 * h)]
    else:  # Cyclist
        l, w, h = rng.normal(1.76, 0.08), rng.normal(0.6, 0.05), rng.normal(1.73, 0.06)
        parts = [(0, 0, 0, 0.98 * l, 0.15 * w, 0.55 * h), (-0.1 * l, 0, 0.5 * h, 0.3 * l, 0.8 * w, 0.38 * h),
                 (-0.05 * l, 0, 0.88 * h, 0.17 * l, 0.4 * w, 0.12 * h)]
    return (l, w, h), parts


def sample_scene(rng: np.random.Generator):
    """Objects (class, LiDAR box, part boxes, reflectance) and clutter boxes, non-overlapping in BEV."""
    xmax, ymax = SYNTHETIC_RANGE[3] - 3.0, SYNTHETIC_RANGE[4] - 2.0
    placed: list[tuple[float, float, float]] = []  # (x, y, radius)

    def place(radius, along_road):
        for _ in range(50):
            x = rng.uniform(5.0, xmax)
            y = rng.uniform(-1, 1) * min(0.7 * x, ymax)
            if all(math.hypot(x - px, y - py) > radius + pr + 0.4 for px, py, pr in placed):
                placed.append((x, y, radius))
                yaw = (rng.choice([0.0, math.pi]) + rng.normal(0, 0.15)) if along_road else rng.uniform(-math.pi, math.pi)
                return x, y, yaw
        return None

    objects = []
    counts = {"Car": rng.integers(2, 7), "Pedestrian": rng.integers(0, 4), "Cyclist": rng.integers(0, 3)}
    for cls, n in counts.items():
        for _ in range(n):
            (l, w, h), parts = _object(rng, cls)
            pos = place(math.hypot(l, w) / 2, cls != "Pedestrian" and rng.random() < 0.75)
            if pos is None:
                continue
            x, y, yaw = pos
            bottom = -SENSOR_HEIGHT
            box = np.array([x, y, bottom + h / 2, l, w, h, yaw])
            c, s = math.cos(yaw), math.sin(yaw)
            prims = np.array([[x + px * c - py * s, y + px * s + py * c, bottom + pz + ph / 2, pl, pw, ph, yaw]
                              for px, py, pz, pl, pw, ph in parts])
            refl = {"Car": rng.uniform(0.2, 0.9), "Pedestrian": rng.uniform(0.1, 0.4),
                    "Cyclist": rng.uniform(0.3, 0.6)}[cls]
            objects.append({"cls": cls, "box": box, "prims": prims, "refl": refl})
    clutter = []
    for _ in range(rng.integers(2, 7)):
        kind = rng.choice(["wall", "pole", "bush"])
        dims = {"wall": (rng.uniform(4, 12), rng.uniform(0.2, 0.4), rng.uniform(1, 3)),
                "pole": (0.2, 0.2, rng.uniform(3, 6)),
                "bush": (rng.uniform(0.8, 2.5), rng.uniform(0.8, 2.5), rng.uniform(0.5, 1.3))}[kind]
        pos = place(math.hypot(dims[0], dims[1]) / 2, kind == "wall")
        if pos is not None:
            clutter.append(np.array([pos[0], pos[1], -SENSOR_HEIGHT + dims[2] / 2, *dims, pos[2]]))
    return objects, clutter


def ray_box_t(dirs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(B, R) distance along unit rays from the origin to each oriented box (inf where missed)."""
    if len(boxes) == 0:
        return np.full((0, len(dirs)), np.inf)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    o = -boxes[:, :3]                                    # origin relative to box centres
    ox, oy = o[:, 0:1] * c + o[:, 1:2] * s, -o[:, 0:1] * s + o[:, 1:2] * c
    dx, dy = dirs[None, :, 0] * c + dirs[None, :, 1] * s, -dirs[None, :, 0] * s + dirs[None, :, 1] * c
    dz = np.broadcast_to(dirs[None, :, 2], dx.shape)
    tmin, tmax = np.zeros(dx.shape), np.full(dx.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for org, d, half in ((ox, dx, boxes[:, 3:4] / 2), (oy, dy, boxes[:, 4:5] / 2),
                             (np.broadcast_to(o[:, 2:3], dx.shape), dz, boxes[:, 5:6] / 2)):
            t1, t2 = (-half - org) / d, (half - org) / d
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            inside = np.abs(org) <= half                  # parallel rays: inside the slab or never
            lo = np.where(d == 0, np.where(inside, -np.inf, np.inf), lo)
            hi = np.where(d == 0, np.where(inside, np.inf, -np.inf), hi)
            tmin, tmax = np.maximum(tmin, lo), np.minimum(tmax, hi)
    return np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)


def scan(rng, objects, clutter, beams: int, azimuth_step: float, max_range: float = 80.0):
    """Cast the rays; returns points (N, 4) float32 and the owning object index (-1 ground/clutter),
    plus per object the number of rays that would hit it if it were alone."""
    elev = np.radians(np.linspace(2.0, -24.9, beams))
    azim = np.radians(np.arange(-45.0, 45.0 + 1e-9, azimuth_step))
    e, a = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    prims = [p for o in objects for p in o["prims"]]
    owner_of_prim = [i for i, o in enumerate(objects) for _ in o["prims"]]
    t_obj = ray_box_t(dirs, np.array(prims).reshape(-1, 7))
    t_clu = ray_box_t(dirs, np.array(clutter).reshape(-1, 7))
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -SENSOR_HEIGHT / dirs[:, 2], np.inf)
    candidates = np.vstack([t_ground[None], t_clu, t_obj])
    best = candidates.argmin(axis=0)
    t = candidates[best, np.arange(len(dirs))]
    n_fixed = 1 + len(t_clu)
    owner = np.array([-1] * n_fixed + owner_of_prim)[best]
    alone = np.zeros(len(objects), np.int64)
    for i in range(len(objects)):
        rows = [k for k, o in enumerate(owner_of_prim) if o == i]
        alone[i] = np.isfinite(t_obj[rows].min(axis=0)).sum()
    keep = np.isfinite(t) & (t < max_range) & (rng.random(len(t)) > 0.05)
    t = t[keep] + rng.normal(0, 0.01, keep.sum())
    owner, best = owner[keep], best[keep]
    xyz = dirs[keep] * t[:, None]
    refl = np.where(best == 0, rng.uniform(0.15, 0.35, len(t)), 0.3)
    for i, o in enumerate(objects):
        sel = owner == i
        refl[sel] = np.clip(o["refl"] + rng.normal(0, 0.05, sel.sum()), 0, 1)
    refl[(best > 0) & (best < n_fixed)] = np.clip(rng.normal(0.45, 0.1, ((best > 0) & (best < n_fixed)).sum()), 0, 1)
    points = np.column_stack([xyz, refl]).astype(np.float32)
    return points, owner, alone


def _label(obj, calib, visible: int, alone: int) -> KittiObject:
    box = obj["box"].copy()
    box[3:6] += 2 * MARGIN
    corners = boxes_to_corners(box[None])[0]
    uv, _ = calib.rect_to_img(calib.lidar_to_rect(corners))
    x0, y0 = uv.min(axis=0)
    x1, y1 = uv.max(axis=0)
    cx0, cy0 = np.clip([x0, y0], 0, [IMAGE_SIZE[0] - 1, IMAGE_SIZE[1] - 1])
    cx1, cy1 = np.clip([x1, y1], 0, [IMAGE_SIZE[0] - 1, IMAGE_SIZE[1] - 1])
    full = max((x1 - x0) * (y1 - y0), 1e-6)
    truncated = float(np.clip(1 - (cx1 - cx0) * (cy1 - cy0) / full, 0, 1))
    cam = lidar_boxes_to_camera(box[None], calib)[0]
    if visible == 0:
        return KittiObject("DontCare", -1, -1, -10, (cx0, cy0, cx1, cy1), -1, -1, -1, (-1000, -1000, -1000), -10)
    frac = visible / max(alone, 1)
    occluded = 0 if frac >= 0.8 else (1 if frac >= 0.4 else 2)
    alpha = (-math.atan2(-box[1], box[0]) + cam[6] + math.pi) % (2 * math.pi) - math.pi
    return KittiObject(obj["cls"], truncated, occluded, alpha, (cx0, cy0, cx1, cy1),
                       cam[3], cam[4], cam[5], tuple(cam[:3]), cam[6])


def depth_image(points: np.ndarray, calib: Calibration) -> np.ndarray:
    uv, depth = calib.rect_to_img(calib.lidar_to_rect(points[:, :3]))
    img = np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), np.uint8)
    u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    ok = (depth > 0) & (u >= 0) & (u < IMAGE_SIZE[0]) & (v >= 0) & (v < IMAGE_SIZE[1])
    d = np.clip(depth[ok] / 60.0, 0, 1)
    img[v[ok], u[ok]] = np.stack([255 * (1 - d), 80 + 100 * points[ok, 3], 255 * d], axis=1).astype(np.uint8)
    return img


def num_samples(preset: str) -> int:
    return PRESETS[preset]["train"] + PRESETS[preset]["val"]


def generate(out: Path, preset: str, seed: int, tick=lambda: None) -> dict:
    """Write the dataset into `out`; `tick()` is called once per sample (progress)."""
    cfg = PRESETS[preset]
    calib = _calibration()
    base = out / "training"
    for sub in ("velodyne", "label_2", "calib", "image_2"):
        (base / sub).mkdir(parents=True)
    ids = {"train": [], "val": []}
    n_points, n_objects, n_dontcare = [], {c: 0 for c in ("Car", "Pedestrian", "Cyclist")}, 0
    frame = 0
    for split in ("train", "val"):
        for i in range(cfg[split]):
            tick()
            rng = sample_rng(seed, f"kitti-{split}", i)
            objects, clutter = sample_scene(rng)
            points, owner, alone = scan(rng, objects, clutter, cfg["beams"], cfg["azimuth_step"])
            fid = f"{frame:06d}"
            points.astype("<f4").tofile(base / "velodyne" / f"{fid}.bin")
            labels = [_label(o, calib, int((owner == k).sum()), int(alone[k])) for k, o in enumerate(objects)]
            (base / "label_2" / f"{fid}.txt").write_text("".join(lab.to_line() + "\n" for lab in labels))
            (base / "calib" / f"{fid}.txt").write_text(CALIB_000000)
            save_png(depth_image(points, calib), base / "image_2" / f"{fid}.png")
            ids[split].append(fid)
            n_points.append(len(points))
            for lab in labels:
                if lab.type == "DontCare":
                    n_dontcare += 1
                else:
                    n_objects[lab.type] += 1
            frame += 1
    (out / "ImageSets").mkdir()
    for name, lst in (("train", ids["train"]), ("val", ids["val"]), ("trainval", ids["train"] + ids["val"])):
        (out / "ImageSets" / f"{name}.txt").write_text("".join(f"{i}\n" for i in lst))
    return {"frames": f"train {cfg['train']}, val {cfg['val']}",
            "beams": f"{cfg['beams']} (+2 to -24.9 deg), azimuth step {cfg['azimuth_step']} deg over +-45 deg",
            "points per frame": f"mean {np.mean(n_points):.0f}",
            "objects": ", ".join(f"{k} {v}" for k, v in n_objects.items()) + f", DontCare {n_dontcare}",
            "point_cloud_range": str(list(SYNTHETIC_RANGE))}
