"""3-D detections on LiDAR point clouds (supplement Fig. 4): ground truth green, predictions red.

Boxes are LiDAR boxes (x, y, z_centre, l, w, h, yaw), yaw counter-clockwise from the x axis, l along the
heading (as in `hrnas.metrics.box_ops`/`hrnas.data.kitti`). Two renderers:

- `render_open3d`: open3d's legacy `Visualizer` with a hidden window, which falls back to EGL offscreen
  rendering without a display (reference/ecosystem.md §2a). Returns False, without raising, when open3d
  cannot be imported or no window can be created. open3d is imported lazily (it costs ~0.6 s).
- `render_matplotlib`: a bird's-eye-view panel and a 3-D scatter panel.

`render_detections(..., backend="auto")` tries open3d first and falls back to matplotlib.

`show_kitti_frame` is the figure KITTI tools draw: the camera image with the 3-D boxes projected into it
(through the frame's calibration) above a bird's-eye view with the forward axis pointing up (so left
and right match the image), points coloured by height, predictions drawn only above a display
threshold, optionally beside an open3d 3-D view (`render_open3d_image`). Points are coloured by their
height everywhere (`height_colors`).
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


MAX_SCORE_LABELS = 20  # above this many drawn predictions their scores are not written (they would overlap)
HEIGHT_CMAP = "viridis"
HEIGHT_SPAN = 2.5  # metres above the ground that the colour map spans (cars 1.5 m, pedestrians 1.8 m)


def _height_range(z: np.ndarray) -> tuple[float, float]:
    """(ground, ground + HEIGHT_SPAN), the ground being the 2nd percentile of z: most LiDAR returns are
    ground, so a percentile range of z would spend the whole colour map on the road."""
    lo = float(np.percentile(z, 2)) if len(z) else 0.0
    return lo, lo + HEIGHT_SPAN


def height_colors(points, cmap: str = HEIGHT_CMAP) -> np.ndarray:
    """Per-point RGB (N, 3) in 0..1 from the height above the ground (:data:`HEIGHT_SPAN` metres over
    ``cmap``): the road dark blue, a car's roof green, a pedestrian's head and anything higher yellow."""
    from matplotlib import colormaps  # lazily, like every matplotlib import here

    z = _points(points)[:, 2]
    lo, hi = _height_range(z)
    return colormaps[cmap](np.clip((z - lo) / (hi - lo), 0, 1))[:, :3]


def _write_rgb_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def render_open3d(points, pred_boxes=None, gt_boxes=None, path="detections.png", size=(800, 600),
                  point_size: float = 3.0) -> bool:
    """Render points + boxes offscreen with open3d's legacy Visualizer (EGL) to a PNG of ``size``.

    Returns True when the PNG was written; False (and writes nothing) when open3d is missing or cannot
    open a (hidden) window, or renders a blank image.
    """
    rgb = render_open3d_image(points, pred_boxes, gt_boxes, size, point_size)
    if rgb is None:
        return False
    _write_rgb_png(rgb, Path(path))
    return True


def render_open3d_image(points, pred_boxes=None, gt_boxes=None, size=(800, 600),
                        point_size: float = 3.0) -> np.ndarray | None:
    """The open3d rendering of :func:`render_open3d` as an (H, W, 3) uint8 array, or None where open3d
    cannot render (missing, no EGL window, blank image)."""
    pts, pred, gt = _points(points), _boxes(pred_boxes, "pred_boxes"), _boxes(gt_boxes, "gt_boxes")
    width, height = _check_size(size)
    try:
        import open3d as o3d
    except (ImportError, OSError) as err:  # not installed, or a missing shared library (libusb, libGL)
        log.warning("open3d is unavailable (%s)", err)
        return None
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    vis = o3d.visualization.Visualizer()
    try:
        if not vis.create_window(window_name="hrnas", width=width, height=height, visible=False):
            log.warning("open3d could not create an offscreen window")
            return None
        if len(pts):
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[:, :3]))
            pcd.colors = o3d.utility.Vector3dVector(height_colors(pts))
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
        return None
    finally:
        vis.destroy_window()
    if buf.ndim != 3 or buf.shape[:2] != (height, width) or float(buf.std()) < 1e-3:
        log.warning("open3d returned a blank or mis-sized image %s", buf.shape)
        return None
    return (np.clip(buf[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)


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
    ax_bev.scatter(pts[:, 0], pts[:, 1], s=2.0, c=height_colors(pts), linewidths=0, rasterized=True)
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
    ax_3d.scatter(sub[:, 0], sub[:, 1], sub[:, 2], s=1.5, c=height_colors(sub), linewidths=0, depthshade=False,
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


def _scores(scores, n: int) -> np.ndarray:
    if scores is None:
        return np.ones(n)
    sc = _array(scores, "pred_scores").reshape(-1)
    if len(sc) != n:
        raise UserError(f"pred_scores: {len(sc)} scores for {n} predicted boxes")
    return sc


def project_boxes(boxes, calib) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 2) image_2 pixels of the corners of (N, 7) LiDAR boxes, and (N,) whether every corner lies
    in front of the camera (depth > 0.1 m; boxes behind it are not drawn). ``calib``: an object with
    ``lidar_to_rect`` and ``rect_to_img`` (``hrnas.data.kitti.Calibration``)."""
    corners = box_corners(boxes)
    if not len(corners):
        return np.zeros((0, 8, 2)), np.zeros(0, dtype=bool)
    uv, depth = calib.rect_to_img(calib.lidar_to_rect(corners.reshape(-1, 3)))
    return uv.reshape(-1, 8, 2), (depth.reshape(-1, 8) > 0.1).all(axis=1)


def _draw_image_boxes(ax, uv: np.ndarray, visible: np.ndarray, color, label: str) -> int:
    drawn = 0
    for corners, ok in zip(uv, visible):
        if not ok:
            continue
        for a, b in BOX_EDGES:
            ax.plot(corners[[a, b], 0], corners[[a, b], 1], "-", color=color, lw=1.3,
                    label=label if drawn == 0 and (a, b) == BOX_EDGES[0] else None)
        for a, b in ((0, 5), (1, 4)):  # a cross on the front face
            ax.plot(corners[[a, b], 0], corners[[a, b], 1], "-", color=color, lw=0.7)
        drawn += 1
    return drawn


SCORE_LABEL_SPACING = 2.0  # metres: a score is not written closer than this to a higher one already written


def _draw_bev_boxes(ax, boxes: np.ndarray, color, label: str, scores=None) -> None:
    written = []
    order = np.argsort(-scores, kind="stable") if scores is not None else range(len(boxes))
    for rank, i in enumerate(order):
        box = boxes[i]
        outline = _bev_outline(box)
        ax.plot(-outline[:, 1], outline[:, 0], "-", color=color, lw=1.6, label=label if rank == 0 else None)
        front = 0.5 * (outline[0] + outline[1])  # heading tick: centre -> middle of the front edge
        ax.plot([-box[1], -front[1]], [box[0], front[0]], "-", color=color, lw=1.2)
        at = np.array([-outline[:, 1].min(), outline[:, 0].max() + 0.4])
        if scores is not None and all(np.linalg.norm(at - w) >= SCORE_LABEL_SPACING for w in written):
            ax.text(at[0], at[1], f"{scores[i]:.2f}", color=color, fontsize=6, ha="left", va="bottom")
            written.append(at)


def show_kitti_frame(points, gt_boxes=None, pred_boxes=None, pred_scores=None, *, image=None, calib=None,
                     score_thr: float = 0.0, view3d=None, path=None, title: str | None = None,
                     point_size: float = 3.0, width: float = 10.0):
    """A KITTI frame as KITTI tools draw it; returns the figure.

    Top: the camera image (``image``, HxWx3 uint8) with the boxes projected through ``calib`` (when both
    are given); below: the bird's-eye view, x (forward) up and y (left) to the left, points coloured by
    height; beside it ``view3d`` (an RGB array, e.g. from :func:`render_open3d_image`) when given. Ground
    truth is green; predictions (red) are drawn when their score is >= ``score_thr``, and the legend says
    how many of how many that is. The bird's-eye view writes the scores (when at most
    :data:`MAX_SCORE_LABELS` boxes are drawn; of overlapping boxes, the highest score only).
    """
    from matplotlib.figure import Figure

    from hrnas.viz.plots import save_figure

    pts, gt, pred = _points(points), _boxes(gt_boxes, "gt_boxes"), _boxes(pred_boxes, "pred_boxes")
    scores = _scores(pred_scores, len(pred))
    if not np.isfinite(score_thr):
        raise UserError(f"score_thr: expected a finite number, got {score_thr!r}")
    keep = scores >= score_thr
    shown, shown_scores = pred[keep], scores[keep]
    pred_label = (f"ours, score >= {score_thr:.2f}: {len(shown)} of {len(pred)}" if pred_scores is not None
                  else f"ours: {len(pred)}")
    gt_label = f"ground truth: {len(gt)}"
    has_image = image is not None and calib is not None
    img = None
    if has_image:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise UserError(f"image: expected an HxWx3 image, got shape {img.shape}")
    view = None if view3d is None else np.asarray(view3d)
    lo_pt, hi_pt = (pts[:, :2].min(0), pts[:, :2].max(0)) if len(pts) else (np.zeros(2), np.ones(2))
    bev_aspect = (hi_pt[0] - lo_pt[0]) / max(hi_pt[1] - lo_pt[1], 1e-3)  # forward extent / lateral extent
    bev_w = width / 2 if view is not None else width * 0.6
    bev_h = float(np.clip(bev_w * bev_aspect, 2.5, 7.0))
    img_h = width * img.shape[0] / img.shape[1] if has_image else 0.0
    title_h = 0.4 if title else 0.0
    fig = Figure(figsize=(width, img_h + bev_h + title_h + 0.6))
    total = fig.get_size_inches()[1]
    if has_image:
        ax_img = fig.add_axes([0.0, 1 - (title_h + img_h) / total, 1.0, img_h / total])
        ax_img.imshow(img)
        uv_gt, vis_gt = project_boxes(gt, calib)
        uv_pr, vis_pr = project_boxes(shown, calib)
        _draw_image_boxes(ax_img, uv_gt, vis_gt, GT_COLOR, gt_label)
        _draw_image_boxes(ax_img, uv_pr, vis_pr, PRED_COLOR, pred_label)
        ax_img.set_xlim(-0.5, img.shape[1] - 0.5)
        ax_img.set_ylim(img.shape[0] - 0.5, -0.5)
        ax_img.set_axis_off()
    bev_frac = (bev_w - 1.5) / width  # room for the axis labels and the height colour bar
    left = 0.06 if view is not None else 0.5 - bev_frac / 2  # alone, the bird's-eye view is centred
    ax_bev = fig.add_axes([left, 0.5 / total, bev_frac, (bev_h - 0.35) / total])
    ax_bev.scatter(-pts[:, 1], pts[:, 0], s=point_size, c=height_colors(pts) if len(pts) else "k", linewidths=0,
                   rasterized=True)
    _draw_bev_boxes(ax_bev, gt, GT_COLOR, gt_label)
    _draw_bev_boxes(ax_bev, shown, PRED_COLOR, pred_label, shown_scores if len(shown) <= MAX_SCORE_LABELS else None)
    ax_bev.set_aspect("equal", adjustable="datalim")
    ax_bev.set_xlabel("-y (m, right of the sensor)", fontsize=8)
    ax_bev.set_ylabel("x (m, forward)", fontsize=8)
    ax_bev.tick_params(labelsize=7)
    ax_bev.grid(True, alpha=0.25)
    ax_bev.set_title("bird's-eye view", fontsize=9)
    if len(gt) or len(pred):
        ax_bev.legend(loc="lower left", fontsize=7, framealpha=0.85)
    if len(pts):
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cax = fig.add_axes([left + bev_frac + 0.01, 0.5 / total, 0.012, (bev_h - 0.35) / total])
        bar = fig.colorbar(ScalarMappable(Normalize(*_height_range(pts[:, 2])), colormaps[HEIGHT_CMAP]), cax=cax)
        bar.set_label("z (m): ground = lowest", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if view is not None:
        ax_3d = fig.add_axes([0.52, 0.3 / total, 0.47, (bev_h - 0.1) / total])
        ax_3d.imshow(view)
        ax_3d.set_axis_off()
        ax_3d.set_title("3-D view (open3d)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total, va="top")
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["BOX_EDGES", "GT_COLOR", "PRED_COLOR", "box_corners", "height_colors", "project_boxes", "render_open3d",
           "render_open3d_image", "render_matplotlib", "render_detections", "show_kitti_frame"]
