"""Procedural scene painter for the segmentation miniatures (docs/datasets.md §4.2–§4.3).

A scene is a list of labelled polygons in drawing order (later on top), using a small vocabulary
(`STREET_CLASSES`, `INDOOR_CLASSES`) that the Cityscapes and ADE20K writers map to their own ids.
Street scenes use a one-point perspective (horizon, vanishing point, ground rows scaled by depth);
objects are depth-sorted. Colours are realistic rather than the label palette, so classes must be told
apart by shape, position and texture as well as colour.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hrnas.data.synthetic.draw import int_polygon, rasterize, regular_polygon, smooth_noise, to_uint8

STREET_CLASSES = ("sky", "building", "vegetation", "terrain", "sidewalk", "road", "wall", "fence", "pole",
                  "traffic sign", "traffic light", "car", "truck", "bus", "person", "rider", "bicycle",
                  "ego vehicle", "static")
INDOOR_CLASSES = ("wall", "floor", "ceiling", "windowpane", "curtain", "door", "painting", "rug", "table",
                  "chair", "bed", "cabinet", "sofa", "lamp", "plant", "person", "other")

# texture amplitude and noise cell size (px) per class
_TEXTURE = {"sky": (0.04, 32), "building": (0.12, 8), "vegetation": (0.35, 3), "terrain": (0.25, 4),
            "sidewalk": (0.08, 6), "road": (0.08, 6), "wall": (0.10, 8), "fence": (0.15, 2),
            "car": (0.12, 8), "truck": (0.12, 8), "bus": (0.12, 8),
            "floor": (0.10, 6), "rug": (0.20, 3), "plant": (0.35, 3), "bed": (0.05, 16)}
# Vehicles are painted like facades (same colours, texture and window grid): whether a box is a car or
# a building is decided by the layout, standing on the road or rising from the sidewalk's outer edge.
_FACADE_COLOURS = ((160, 150, 135), (130, 90, 70), (185, 180, 170), (110, 110, 115))
_FACADE_CLASSES = ("building", "car", "truck", "bus")


@dataclass
class Shape:
    cls: str
    polygon: list  # integer vertices [[x, y], ...]
    colour: tuple


@dataclass
class Scene:
    width: int
    height: int
    kind: str  # "street" or "indoor"
    shapes: list = field(default_factory=list)

    def add(self, cls, polygon, colour):
        poly = int_polygon(polygon)
        if len(poly) >= 3:
            self.shapes.append(Shape(cls, poly, tuple(int(c) for c in np.clip(colour, 0, 255))))


def _jitter(rng, colour, amount=18):
    return np.asarray(colour, dtype=np.float64) + rng.normal(0, amount, 3)


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _person_outline(cx, bottom, height, width):
    """Front-view silhouette (head, arms, legs) as one polygon."""
    unit = [(-0.12, 0), (0.12, 0), (0.14, 0.1), (0.08, 0.15), (0.35, 0.2), (0.42, 0.55), (0.3, 0.55),
            (0.25, 0.35), (0.22, 0.6), (0.25, 1.0), (0.06, 1.0), (0.0, 0.62), (-0.06, 1.0), (-0.25, 1.0),
            (-0.22, 0.6), (-0.25, 0.35), (-0.3, 0.55), (-0.42, 0.55), (-0.35, 0.2), (-0.08, 0.15),
            (-0.14, 0.1)]
    return [(cx + u * width, bottom - height + v * height) for u, v in unit]


# ---------------------------------------------------------------------------- street scenes

def paint_street(rng: np.random.Generator, width: int, height: int) -> Scene:
    W, H = width, height
    sc = Scene(W, H, "street")
    yh = H * rng.uniform(0.36, 0.48)              # horizon row
    xv = W * rng.uniform(0.4, 0.6)                # vanishing point
    ppm = H * rng.uniform(0.18, 0.24)             # pixels per metre at the bottom row

    def row(k):                                   # depth factor k (0 horizon, 1 bottom) -> image row
        return yh + k * (H - yh)

    def along(x_bottom, k):                       # x of a line converging to the vanishing point
        return xv + (x_bottom - xv) * k

    road_l, road_r = W * rng.uniform(0.02, 0.25), W * rng.uniform(0.75, 0.98)
    walk = W * rng.uniform(0.12, 0.3)
    outer_l, outer_r = road_l - walk, road_r + walk

    sky = _jitter(rng, (110, 160, 215), 15)
    sc.add("sky", _rect(-1, -1, W + 1, yh + 2), sky)
    x = -rng.uniform(0, 0.1 * W)                  # distant skyline on the horizon
    while x < W:
        bw = W * rng.uniform(0.05, 0.16)
        top = yh - H * rng.uniform(0.03, 0.25)
        if rng.random() < 0.7:
            sc.add("building", _rect(x, top, x + bw, yh + 2), _jitter(rng, (150, 145, 140), 30))
        else:
            sc.add("vegetation", regular_polygon(x + bw / 2, yh - (yh - top) / 2, bw / 2, (yh - top) / 2 + 2, 14),
                   _jitter(rng, (70, 105, 45), 15))
        x += bw
    sc.add("terrain", _rect(-1, yh, W + 1, H + 1), _jitter(rng, (115, 135, 70), 12))

    for outer in (outer_l, outer_r):              # facades along the street
        k = rng.uniform(0.02, 0.08)
        while k < 1.3:
            k2 = k * rng.uniform(1.4, 2.4)
            kind = rng.choice(["building", "vegetation", "none"], p=[0.65, 0.25, 0.1])
            h_m = rng.uniform(6, 20) if kind == "building" else rng.uniform(2, 6)
            x1, x2 = along(outer, k), along(outer, k2)
            y1, y2 = row(k), row(k2)
            if kind == "building":
                sc.add("building", [(x1, y1), (x2, y2), (x2, y2 - h_m * ppm * k2), (x1, y1 - h_m * ppm * k)],
                       _jitter(rng, _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))], 12))
            elif kind == "vegetation":
                n = 12
                ts = np.linspace(0, 1, n)
                top = [(x1 + (x2 - x1) * t, (y1 + (y2 - y1) * t) - h_m * ppm * (k + (k2 - k) * t)
                        * rng.uniform(0.75, 1.15)) for t in ts]
                sc.add("vegetation", [(x1, y1), (x2, y2)] + top[::-1], _jitter(rng, (65, 100, 40), 14))
            k = k2
    # Road and sidewalks share one paving (colour and texture): only their place in the scene tells them
    # apart, i.e. which side of the curb (a thin light kerb stripe, part of the sidewalk) and how far
    # from the vanishing point a pixel lies; context beyond a few blocks' receptive field.
    paving = _jitter(rng, rng.choice([(95, 95, 100), (120, 115, 110), (140, 135, 130)]), 8)
    sc.add("sidewalk", [(xv - 1, yh), (outer_l, H + 1), (road_l, H + 1)], paving)
    sc.add("sidewalk", [(xv + 1, yh), (road_r, H + 1), (outer_r, H + 1)], paving)
    sc.add("road", [(xv - 1, yh), (xv + 1, yh), (road_r, H + 1), (road_l, H + 1)], paving)
    kerb = 0.004 * W
    for edge in (road_l, road_r):
        sc.add("sidewalk", [(xv, yh), (edge - kerb, H + 1), (edge + kerb, H + 1)], np.clip(paving * 1.35, 0, 255))

    for side, outer, inner in (("left", outer_l, road_l), ("right", outer_r, road_r)):
        if rng.random() < 0.5:                    # wall or fence along the outer sidewalk edge
            cls = "wall" if rng.random() < 0.5 else "fence"
            k, k2 = rng.uniform(0.1, 0.4), rng.uniform(0.6, 1.4)
            h_m = rng.uniform(1.0, 2.0)
            edge = along(outer + (0.15 if side == "left" else -0.15) * walk, 1.0)
            x1, x2 = along(edge, k), along(edge, k2)
            colour = (165, 155, 140) if cls == "wall" else (120, 100, 80)
            sc.add(cls, [(x1, row(k)), (x2, row(k2)), (x2, row(k2) - h_m * ppm * k2),
                         (x1, row(k) - h_m * ppm * k)], _jitter(rng, colour, 12))
        for _ in range(rng.integers(0, 3)):       # poles with a sign or a traffic light
            k = rng.uniform(0.15, 1.0)
            px = along(inner + (-0.12 if side == "left" else 0.12) * walk, k)
            pw, ph = max(1.5, 0.15 * ppm * k), rng.uniform(3.5, 5.0) * ppm * k
            base = row(k)
            sc.add("pole", _rect(px - pw / 2, base - ph, px + pw / 2, base), _jitter(rng, (115, 115, 120), 10))
            s = 0.6 * ppm * k
            if rng.random() < 0.5:
                colour = [(220, 200, 40), (30, 70, 170), (200, 30, 30)][rng.integers(3)]
                poly = (regular_polygon(px, base - ph, s / 2, s / 2, 3, -np.pi / 2) if rng.random() < 0.3
                        else _rect(px - s / 2, base - ph - s / 2, px + s / 2, base - ph + s / 2))
                sc.add("traffic sign", poly, _jitter(rng, colour, 10))
            else:
                sc.add("traffic light", _rect(px - s * 0.3, base - ph - s * 0.8, px + s * 0.3, base - ph + s * 0.4),
                       _jitter(rng, (35, 35, 30), 8))
        if rng.random() < 0.3:                    # unlabelled street furniture (ignored class)
            k = rng.uniform(0.2, 1.0)
            px = along((outer + inner) / 2, k)
            s = rng.uniform(0.5, 1.0) * ppm * k
            sc.add("static", _rect(px - s / 2, row(k) - s, px + s / 2, row(k)), _jitter(rng, (95, 80, 60), 20))

    things = []                                   # (k, kind, lateral position)
    for _ in range(rng.integers(1, 6)):
        things.append((rng.uniform(0.08, 1.1), rng.choice(["car", "truck", "bus"], p=[0.8, 0.1, 0.1]),
                       rng.uniform(0.15, 0.85)))
    for _ in range(rng.integers(0, 5)):
        things.append((rng.uniform(0.1, 1.0), "person", rng.uniform(0.2, 0.8) * (1 if rng.random() < .5 else -1)))
    for _ in range(rng.integers(0, 3)):
        things.append((rng.uniform(0.1, 0.9), "cyclist", rng.uniform(0.05, 0.2)))
    for k, kind, u in sorted(things, key=lambda t: t[0]):
        base = row(k)
        s = ppm * k
        if kind in ("car", "truck", "bus"):
            cx = along(road_l, k) + u * (along(road_r, k) - along(road_l, k))
            if kind == "car":
                w, h = rng.uniform(1.7, 1.9) * s, rng.uniform(1.4, 1.6) * s
                body = 0.55 * h
                poly = [(cx - w / 2, base), (cx + w / 2, base), (cx + w / 2, base - body),
                        (cx + 0.35 * w, base - h), (cx - 0.35 * w, base - h), (cx - w / 2, base - body)]
                colour = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))]
            else:
                w, h = 2.5 * s, rng.uniform(3.0, 3.4) * s
                poly = _rect(cx - w / 2, base - h, cx + w / 2, base)
                if kind == "truck":
                    poly = [(cx - w / 2, base), (cx + w / 2, base), (cx + w / 2, base - h),
                            (cx - w / 2, base - h), (cx - w / 2, base - 0.5 * h)]
                colour = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))]
            sc.add(kind, poly, _jitter(rng, colour, 12))
        elif kind == "person":
            edge_l, edge_r = along(outer_l, k), along(road_l, k)
            if u < 0:
                cx = edge_l + (-u) * (edge_r - edge_l)
            else:
                a, b = along(road_r, k), along(outer_r, k)
                cx = a + u * (b - a)
            sc.add("person", _person_outline(cx, base, rng.uniform(1.6, 1.9) * s, 0.55 * s),
                   _jitter(rng, rng.uniform(20, 230, 3), 5))
        else:                                     # cyclist near the right road edge: bicycle + rider
            cx = along(road_r, k) - u * (along(road_r, k) - along(road_l, k))
            bl, bh = 1.7 * s, 0.9 * s
            wheel = regular_polygon(0, 0, 0.35 * s, 0.35 * s, 10)
            pts = np.vstack([wheel + (cx - bl / 2 + 0.35 * s, base - 0.35 * s),
                             wheel + (cx + bl / 2 - 0.35 * s, base - 0.35 * s)])
            hull = _convex_hull(np.vstack([pts, [(cx, base - bh), (cx + bl / 2 - 0.3 * s, base - bh * 1.05)]]))
            sc.add("bicycle", hull, _jitter(rng, (60, 20, 25), 15))
            body = _person_outline(cx, base - 0.46 * s, 1.1 * s, 0.55 * s)   # hips on the saddle
            sc.add("rider", body[:9] + body[14:], _jitter(rng, rng.uniform(20, 230, 3), 5))  # legs hidden
    if rng.random() < 0.35:                       # ego-vehicle hood (ignored)
        top = H * rng.uniform(0.9, 0.95)
        xs = np.linspace(-1, W + 1, 12)
        hood = [(x, top + (H - top) * 0.6 * ((x - W / 2) / (W / 2)) ** 2) for x in xs]
        sc.add("ego vehicle", hood + [(W + 1, H + 1), (-1, H + 1)], _jitter(rng, (30, 30, 35), 5))
    return sc


def _convex_hull(points: np.ndarray) -> list:
    """Andrew's monotone chain."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


# ---------------------------------------------------------------------------- indoor scenes

def paint_indoor(rng: np.random.Generator, width: int, height: int) -> Scene:
    W, H = width, height
    sc = Scene(W, H, "indoor")
    bx0, bx1 = W * rng.uniform(0.15, 0.35), W * rng.uniform(0.65, 0.85)
    by0, by1 = H * rng.uniform(0.12, 0.25), H * rng.uniform(0.5, 0.62)
    wall = _jitter(rng, rng.choice([(225, 215, 190), (200, 210, 215), (235, 230, 225), (190, 170, 150)]), 10)
    sc.add("ceiling", [(-1, -1), (W + 1, -1), (bx1, by0), (bx0, by0)], _jitter(rng, (240, 240, 235), 6))
    sc.add("floor", [(bx0, by1), (bx1, by1), (W + 1, H + 1), (-1, H + 1)],
           _jitter(rng, rng.choice([(145, 100, 60), (170, 165, 160), (110, 80, 55)]), 12))
    sc.add("wall", [(-1, -1), (bx0, by0), (bx0, by1), (-1, H + 1)], wall * 0.85)
    sc.add("wall", [(W + 1, -1), (bx1, by0), (bx1, by1), (W + 1, H + 1)], wall * 0.9)
    sc.add("wall", _rect(bx0, by0, bx1, by1), wall)
    bw, bh = bx1 - bx0, by1 - by0
    if rng.random() < 0.6:
        wx = bx0 + bw * rng.uniform(0.05, 0.5)
        ww, wy = bw * rng.uniform(0.2, 0.4), by0 + bh * rng.uniform(0.1, 0.25)
        sc.add("windowpane", _rect(wx, wy, wx + ww, wy + bh * rng.uniform(0.35, 0.5)), _jitter(rng, (190, 215, 240), 8))
        if rng.random() < 0.5:
            sc.add("curtain", _rect(wx - ww * 0.15, wy - 3, wx + ww * 0.2, wy + bh * 0.6),
                   _jitter(rng, rng.uniform(60, 220, 3), 5))
    if rng.random() < 0.5:
        dx = bx0 + bw * rng.uniform(0.55, 0.8)
        sc.add("door", _rect(dx, by1 - bh * 0.75, dx + bw * 0.15, by1), _jitter(rng, (120, 80, 45), 12))
    if rng.random() < 0.5:
        px, py = bx0 + bw * rng.uniform(0.1, 0.6), by0 + bh * rng.uniform(0.1, 0.3)
        sc.add("painting", _rect(px, py, px + bw * 0.2, py + bh * 0.25), _jitter(rng, rng.uniform(30, 230, 3), 5))
    if rng.random() < 0.4:
        cx, cy = W * rng.uniform(0.35, 0.65), by1 + (H - by1) * rng.uniform(0.4, 0.7)
        rw, rh = W * rng.uniform(0.15, 0.25), (H - by1) * 0.15
        sc.add("rug", [(cx - rw * 0.8, cy - rh), (cx + rw * 0.8, cy - rh), (cx + rw, cy + rh), (cx - rw, cy + rh)],
               _jitter(rng, rng.uniform(60, 200, 3), 5))
    items = []
    for _ in range(rng.integers(2, 5)):
        items.append((rng.uniform(0.05, 0.9), rng.choice(["table", "chair", "bed", "cabinet", "sofa", "lamp",
                                                           "plant", "person", "other"])))
    for t, kind in sorted(items):
        y = by1 + t * (H - by1)
        s = H * 0.25 * (0.45 + 0.55 * t)          # size of 1 m at that depth
        cx = W * rng.uniform(0.15, 0.85)
        if kind == "table":
            w, h, th, leg = 1.2 * s, 0.75 * s, 0.08 * s, 0.07 * s
            poly = [(cx - w / 2, y - h), (cx + w / 2, y - h), (cx + w / 2, y - h + th), (cx + w / 2 - leg, y - h + th),
                    (cx + w / 2 - leg, y), (cx + w / 2 - 2 * leg, y), (cx + w / 2 - 2 * leg, y - h + th),
                    (cx - w / 2 + 2 * leg, y - h + th), (cx - w / 2 + 2 * leg, y), (cx - w / 2 + leg, y),
                    (cx - w / 2 + leg, y - h + th), (cx - w / 2, y - h + th)]
            colour = (125, 85, 50)
        elif kind == "chair":
            w, h, leg = 0.45 * s, 0.45 * s, 0.05 * s
            poly = [(cx - w / 2, y - 2 * h), (cx - w / 2 + leg * 1.5, y - 2 * h), (cx - w / 2 + leg * 1.5, y - h),
                    (cx + w / 2, y - h), (cx + w / 2, y), (cx + w / 2 - leg, y), (cx + w / 2 - leg, y - h + leg),
                    (cx - w / 2 + leg, y - h + leg), (cx - w / 2 + leg, y), (cx - w / 2, y)]
            colour = rng.uniform(40, 200, 3)
        elif kind == "bed":
            w, h = 2.0 * s, 0.5 * s
            poly = [(cx - w / 2, y - 1.1 * h * 2), (cx - w / 2 + 0.1 * s, y - 1.1 * h * 2), (cx - w / 2 + 0.1 * s, y - h),
                    (cx + w / 2, y - h), (cx + w / 2, y), (cx - w / 2, y)]
            colour = (230, 225, 215)
        elif kind == "cabinet":
            w, h = 0.8 * s, 1.6 * s
            poly = _rect(cx - w / 2, y - h, cx + w / 2, y)
            colour = (150, 110, 70)
        elif kind == "sofa":
            w, h = 1.8 * s, 0.8 * s
            poly = [(cx - w / 2, y - h), (cx - w / 2 + 0.2 * s, y - h), (cx - w / 2 + 0.2 * s, y - h * 0.55),
                    (cx + w / 2 - 0.2 * s, y - h * 0.55), (cx + w / 2 - 0.2 * s, y - h), (cx + w / 2, y - h),
                    (cx + w / 2, y), (cx - w / 2, y)]
            colour = rng.uniform(50, 200, 3)
        elif kind == "lamp":
            h, r = 1.5 * s, 0.2 * s
            poly = [(cx - 0.03 * s, y), (cx + 0.03 * s, y), (cx + 0.03 * s, y - h + r), (cx + r, y - h + r),
                    (cx + r * 0.6, y - h), (cx - r * 0.6, y - h), (cx - r, y - h + r), (cx - 0.03 * s, y - h + r)]
            colour = (235, 210, 140)
        elif kind == "plant":
            poly = np.vstack([[(cx + 0.15 * s, y), (cx - 0.15 * s, y)],
                              regular_polygon(cx, y - 0.7 * s, 0.3 * s, 0.45 * s, 12, 0.2)[[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]]])
            poly = _convex_hull(poly)
            colour = (60, 110, 45)
        elif kind == "person":
            poly = _person_outline(cx, y, 1.7 * s, 0.5 * s)
            colour = rng.uniform(20, 230, 3)
        else:
            w = rng.uniform(0.2, 0.6) * s
            poly = regular_polygon(cx, y - w / 2, w / 2, w / 2, int(rng.integers(3, 7)), rng.uniform(0, 1))
            colour = rng.uniform(20, 230, 3)
        sc.add(kind, poly, _jitter(rng, colour, 12))
    return sc


# ---------------------------------------------------------------------------- rendering

def render(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a scene: object index map (H, W) int32 (k = shape k-1, 0 = none) and RGB uint8."""
    H, W = scene.height, scene.width
    obj = rasterize([s.polygon for s in scene.shapes], H, W, range(1, len(scene.shapes) + 1))
    colours = np.vstack([[0, 0, 0]] + [s.colour for s in scene.shapes]).astype(np.float32)
    rgb = colours[obj]
    classes = ["none"] + [s.cls for s in scene.shapes]
    amp = np.array([_TEXTURE.get(c, (0.06, 8))[0] for c in classes], dtype=np.float32)
    fine, coarse = smooth_noise(rng, H, W, 3), smooth_noise(rng, H, W, 12)
    cells = np.array([_TEXTURE.get(c, (0.06, 8))[1] for c in classes])
    noise = np.where(cells[obj] <= 4, fine, coarse)
    rgb *= (1.0 + amp[obj] * noise)[..., None]
    ys, xs = np.mgrid[0:H, 0:W]
    if scene.kind == "street":                    # window grid on facades (and vehicles), bright sky near the horizon
        is_building = np.array([c in _FACADE_CLASSES for c in classes])[obj]
        period = max(4, H // 24)
        windows = ((xs % period) < period // 2) & ((ys % period) < period // 2)
        rgb[is_building & windows] *= 0.7
        is_sky = np.array([c == "sky" for c in classes])[obj]
        rgb[is_sky] += (ys[is_sky] / H * 60.0)[:, None]
    else:                                         # soft light fall-off from the top
        rgb *= (1.05 - 0.15 * ys / H)[..., None]
    rgb *= rng.uniform(0.85, 1.15)
    rgb += rng.normal(0, 3.0, rgb.shape).astype(np.float32)
    return obj, to_uint8(rgb)
