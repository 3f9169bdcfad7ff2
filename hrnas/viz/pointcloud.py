"""3-D detections on LiDAR point clouds (supplement Fig. 4): ground truth green, predictions red.

Boxes are LiDAR boxes (x, y, z_centre, l, w, h, yaw), yaw counter-clockwise from the x axis, l along the
heading (as in `hrnas.metrics.box_ops`/`hrnas.data.kitti`). Two renderers:

- `render_open3d`: open3d's legacy `Visualizer` with a hidden window, which falls back to EGL offscreen
  rendering without a display (reference/ecosystem.md §2a). Returns False, without raising, when open3d
  cannot be imported or no window can be created. open3d is imported lazily (it costs ~0.6 s).
- `render_matplotlib`: a bird's-eye-view panel and a 3-D scatter panel.

`render_detections(..., backend="auto")` tries open3d first and falls back to matplotlib.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hrnas.errors import UserError
from hrnas.io import atomic_path

log = logging.getLogger(__name__)

GT_COLOR = (0.0, 0.7, 0.0)
PRED_COLOR = (0.9, 0.0, 0.0)
BACKENDS = ("auto", "open3d", "matplotlib")
# Corner order as `hrnas.data.kitti.boxes_to_corners`: bottom face (z - h/2) (+l,+w), (+l,-w), (-l,-w), (-l,+w),
# then the top face likewise; corners 0, 1, 4, 5 form the front face (the heading side).
_CORNER_SIGNS = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                          [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=np.float64) * 0.5
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_MAX_SCATTER_3D = 20000


def _array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{name}: cannot be read as a numeric array ({err})") from None


def _boxes(boxes, name: str) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 7))
    b = _array(boxes, name)
    if b.size == 0:
        return np.zeros((0, 7))
    if b.ndim == 1 and b.shape[0] == 7:
        b = b[None]
    if b.ndim != 2 or b.shape[1] < 7:
        raise UserError(f"{name}: expected (N, 7) LiDAR boxes (x, y, z, l, w, h, yaw), got shape {b.shape}")
    b = b[:, :7]
    if not np.all(np.isfinite(b)):
        raise UserError(f"{name}: boxes contain NaN or infinite values")
    return b


def _points(points) -> np.ndarray:
    p = _array(points, "points")
    if p.ndim != 2 or p.shape[1] < 3:
        raise UserError(f"points: expected an (N, 3+) array of x, y, z (+ intensity), got shape {p.shape}")
    return p[np.all(np.isfinite(p[:, :3]), axis=1)]


def box_corners(boxes) -> np.ndarray:
    """(N, 8, 3) corners of (N, 7) LiDAR boxes: the bottom face, then the top face."""
    b = _boxes(boxes, "boxes")
    local = _CORNER_SIGNS[None] * b[:, None, 3:6]
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size: expected (width, height) in pixels, got {size!r}") from None
    if w < 16 or h < 16 or w > 8192 or h > 8192:
        raise UserError(f"size: width and height must be in 16..8192 pixels, got {size!r}")
    return w, h


def _point_grey(points: np.ndarray) -> np.ndarray:
    """Per-point grey (N, 3) in 0..1: darker for higher points (height-shaded)."""
    z = points[:, 2]
    lo, hi = (np.percentile(z, [2, 98]) if len(z) else (0.0, 1.0))
    t = np.clip((z - lo) / max(hi - lo, 1e-6), 0, 1)
    g = 0.65 - 0.5 * t
    return np.repeat(g[:, None], 3, axis=1)


def _write_rgb_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def render_open3d(points, pred_boxes=None, gt_boxes=None, path="detections.png", size=(800, 600),
                  point_size: float = 2.0) -> bool:
    """Render points + boxes offscreen with open3d's legacy Visualizer (EGL) to a PNG of ``size``.

    Returns True when the PNG was written; False (and writes nothing) when open3d is missing or cannot
    open a (hidden) window, or renders a blank image.
    """
    pts, pred, gt = _points(points), _boxes(pred_boxes, "pred_boxes"), _boxes(gt_boxes, "gt_boxes")
    width, height = _check_size(size)
    path = Path(path)
    try:
        import open3d as o3d
    except (ImportError, OSError) as err:  # not installed, or a missing shared library (libusb, libGL)
        log.warning("open3d is unavailable (%s)", err)
        return False
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    vis = o3d.visualization.Visualizer()
    try:
        if not vis.create_window(window_name="hrnas", width=width, height=height, visible=False):
            log.warning("open3d could not create an offscreen window")
            return False
        if len(pts):
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[:, :3]))
            pcd.colors = o3d.utility.Vector3dVector(_point_grey(pts))
            vis.add_geometry(pcd)
        for boxes, color in ((gt, GT_COLOR), (pred, PRED_COLOR)):
            for corners in box_corners(boxes):
                lines = o3d.geometry.LineSet(o3d.utility.Vector3dVector(corners),
                                             o3d.utility.Vector2iVector(np.array(BOX_EDGES + ((0, 5), (1, 4)))))
                lines.paint_uniform_color(color)  # the extra diagonals mark the front face
                vis.add_geometry(lines)
        opt = vis.get_render_option()
        opt.point_size = float(point_size)
        opt.line_width = 3.0
        opt.background_color = np.array([1.0, 1.0, 1.0])
        everything = np.concatenate([pts[:, :3], box_corners(gt).reshape(-1, 3), box_corners(pred).reshape(-1, 3)])
        if len(everything):
            lookat = 0.5 * (np.percentile(everything, 5, axis=0) + np.percentile(everything, 95, axis=0))
            ctrl = vis.get_view_control()
            ctrl.set_lookat(lookat)
            ctrl.set_front([-0.75, -0.15, 0.65])  # from behind the sensor (x forward), above
            ctrl.set_up([0.0, 0.0, 1.0])
            ctrl.set_zoom(0.4)
        vis.poll_events()
        vis.update_renderer()
        buf = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    except RuntimeError as err:
        log.warning("open3d rendering failed (%s)", err)
        return False
    finally:
        vis.destroy_window()
    if buf.ndim != 3 or buf.shape[:2] != (height, width) or float(buf.std()) < 1e-3:
        log.warning("open3d returned a blank or mis-sized image %s", buf.shape)
        return False
    _write_rgb_png((np.clip(buf[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8), path)
    return True


def _bev_outline(box: np.ndarray) -> np.ndarray:
    return box_corners(box[None])[0, [0, 1, 2, 3, 0], :2]


def render_matplotlib(points, pred_boxes=None, gt_boxes=None, path="detections.png", size=(1400, 600),
                      title: str | None = None) -> Path:
    """A bird's-eye-view panel and a 3-D scatter panel with the boxes' edges; PNG of ``size`` pixels."""
    from matplotlib.figure import Figure  # matplotlib is imported lazily, like open3d
    from matplotlib.ticker import MaxNLocator

    from hrnas.viz.plots import save_figure

    pts, pred, gt = _points(points), _boxes(pred_boxes, "pred_boxes"), _boxes(gt_boxes, "gt_boxes")
    width, height = _check_size(size)
    fig = Figure(figsize=(width / 120, height / 120))
    ax_bev = fig.add_subplot(1, 2, 1)
    ax_3d = fig.add_subplot(1, 2, 2, projection="3d")
    grey = _point_grey(pts)
    ax_bev.scatter(pts[:, 0], pts[:, 1], s=0.6, c=grey, linewidths=0, rasterized=True)
    for boxes, color, label in ((gt, GT_COLOR, "ground truth"), (pred, PRED_COLOR, "prediction")):
        for i, box in enumerate(boxes):
            outline = _bev_outline(box)
            ax_bev.plot(outline[:, 0], outline[:, 1], "-", color=color, lw=1.5, label=label if i == 0 else None)
            front = 0.5 * (outline[0] + outline[1])  # heading tick: centre → middle of the front edge
            ax_bev.plot([box[0], front[0]], [box[1], front[1]], "-", color=color, lw=1.2)
    ax_bev.set_aspect("equal", adjustable="datalim")
    ax_bev.set_xlabel("x (m, forward)")
    ax_bev.set_ylabel("y (m, left)")
    ax_bev.set_title("bird's-eye view", fontsize=10)
    if len(gt) or len(pred):
        ax_bev.legend(loc="upper right", fontsize=8)
    sub = pts
    if len(sub) > _MAX_SCATTER_3D:
        sub = sub[np.random.default_rng(0).choice(len(sub), _MAX_SCATTER_3D, replace=False)]
    ax_3d.scatter(sub[:, 0], sub[:, 1], sub[:, 2], s=0.4, c=_point_grey(sub), linewidths=0, depthshade=False,
                  rasterized=True)
    for boxes, color in ((gt, GT_COLOR), (pred, PRED_COLOR)):
        for corners in box_corners(boxes):
            for a, b in BOX_EDGES:
                ax_3d.plot(*corners[[a, b]].T, "-", color=color, lw=1.3)
    everything = np.concatenate([pts[:, :3], box_corners(gt).reshape(-1, 3), box_corners(pred).reshape(-1, 3)])
    if len(everything):
        lo, hi = everything.min(axis=0), everything.max(axis=0)
        extent = np.maximum(hi - lo, 1e-3)
        extent[2] = max(2.0 * extent[2], 0.15 * extent[:2].max())  # exaggerate the (thin) height
        ax_3d.set_box_aspect(extent)
    ax_3d.zaxis.set_major_locator(MaxNLocator(3))
    ax_3d.view_init(elev=25, azim=-150)
    ax_3d.set_xlabel("x")
    ax_3d.set_ylabel("y")
    ax_3d.set_zlabel("z")
    ax_3d.set_title("3-D view", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.9, wspace=0.1)
    return save_figure(fig, path)


def render_detections(points, pred_boxes=None, gt_boxes=None, path="detections.png", backend: str = "auto",
                      size=(800, 600)) -> tuple[Path, str]:
    """Render with ``backend`` ("auto": open3d, else matplotlib). Returns (PNG path, backend used)."""
    if backend not in BACKENDS:
        raise UserError(f"backend: unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    path = Path(path)
    if backend in ("auto", "open3d"):
        if render_open3d(points, pred_boxes, gt_boxes, path, size):
            return path, "open3d"
        if backend == "open3d":
            raise UserError("backend: open3d cannot render here (not installed or no EGL/GL context); "
                            "use backend='matplotlib' or 'auto'")
    w, h = _check_size(size)
    return render_matplotlib(points, pred_boxes, gt_boxes, path, size=(max(w, 2 * h), h)), "matplotlib"


__all__ = ["BOX_EDGES", "GT_COLOR", "PRED_COLOR", "box_corners", "render_open3d", "render_matplotlib",
           "render_detections"]
