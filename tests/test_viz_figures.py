"""The figures the task notebooks and 20_visualizations draw: search curves, label overlays, pose
comparisons, classification samples / top-k / confusion matrix, KITTI frames (camera + bird's-eye view)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from PIL import Image  # noqa: E402

from hrnas.errors import UserError  # noqa: E402
from hrnas.viz import classification, grid, plots, pointcloud, pose, seg  # noqa: E402


def _png(path, min_std=5.0):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.std() > min_std, f"{path} looks blank"
    return img


def _no_overlap(fig, upper, lower):
    """The bounding box of text `upper` lies entirely above that of text `lower` (display coordinates)."""
    renderer = fig.canvas.get_renderer()
    a, b = upper.get_window_extent(renderer), lower.get_window_extent(renderer)
    return a.y0 >= b.y1


# --------------------------------------------------------------------------------------------
# the shared grid of image panels
def test_image_grid():
    fig, axes = grid.image_grid(5, 3, 2.0, 1.5, extra_height=0.5)
    try:
        assert len(axes) == 5 and len(fig.axes) == 6  # 2 rows of 3, the last cell hidden
        assert [ax.axison for ax in fig.axes] == [True] * 5 + [False]
        assert list(fig.get_size_inches()) == [6.0, 3.5] and not axes[0].get_xticks().size
    finally:
        plt.close(fig)
    fig, axes = grid.image_grid(2, 4, 1.0, 1.0)  # fewer panels than columns: one row of 2
    try:
        assert len(fig.axes) == 2 and list(fig.get_size_inches()) == [2.0, 1.0]
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^ncols:"):
        grid.image_grid(3, 0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# search curves
def _logs():
    steps = [{"step": s, "loss": 14.0 - s / 50, "task_loss": 1.6 - s / 500, "penalty": 12.0 - s / 60, "l2": 0.3,
              "lr": 1e-3} for s in range(5, 155, 5)]
    epochs = [{"step": s, "epoch": s / 30, "train_task_loss": 1.5, "macs": 8e9 - 1e9 * k, "val_mIoU": 0.05 * k,
               "val_main": "mIoU", **({"removed_channels": 10} if k in (2, 4) else {})}
              for k, s in enumerate(range(30, 180, 30), start=1)]
    return steps, epochs


def test_search_curves_separate_the_terms(tmp_path):
    steps, epochs = _logs()
    fig = plots.search_curves(steps, epochs, path=tmp_path / "curves.png", title="search")
    try:
        _png(tmp_path / "curves.png")
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == ["task loss", "penalty terms", "MACs of the live network",
                                                   "validation mIoU"]
        data = [[ln for ln in ax.lines if len(set(ln.get_xdata())) > 1] for ax in axes]  # without the cut markers
        task, (penalty, l2), (macs,), (miou,) = data[0][0], data[1], data[2], data[3]
        assert list(task.get_xdata()) == [r["step"] for r in steps]  # per step, not per epoch
        assert task.get_ydata().max() < 2 and penalty.get_ydata().min() > 9  # on their own axes
        assert penalty.get_label().startswith("L1 penalty") and l2.get_label().startswith("L2")
        assert list(macs.get_ydata()) == pytest.approx([7000.0, 6000.0, 5000.0, 4000.0, 3000.0])  # millions
        assert list(miou.get_ydata()) == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25])
        cuts = {ln.get_xdata()[0] for ln in axes[0].lines if len(set(ln.get_xdata())) == 1}
        assert cuts == {60, 120}  # the epochs that removed channels
        assert "shrinking steps" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_search_curves_without_step_rows_or_search(tmp_path):
    _, epochs = _logs()
    plain = [{k: v for k, v in r.items() if k not in ("macs", "removed_channels")} for r in epochs]
    fig = plots.search_curves([], plain, metric="mIoU")
    try:
        assert [ax.get_title() for ax in fig.axes] == ["task loss", "validation mIoU"]
        assert list(fig.axes[0].lines[0].get_xdata()) == [30, 60, 90, 120, 150]  # train_task_loss per epoch
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^steps, epochs: both are empty"):
        plots.search_curves([], [])
    with pytest.raises(UserError, match="^steps: expected a list of dicts"):
        plots.search_curves([1, 2], epochs)


# --------------------------------------------------------------------------------------------
# segmentation
def test_overlay_blends_label_colours():
    img = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.int64)  # road (128, 64, 128)
    mask[0, 0] = 255
    mask[1, 1] = 13  # car (0, 0, 142)
    out = seg.overlay(img, mask, "cityscapes", alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]  # ignored: the image
    assert out[2, 2].tolist() == [114, 82, 114]  # (100 + 128) / 2, (100 + 64) / 2, ...
    assert out[1, 1].tolist() == [50, 50, 121]
    assert seg.overlay(img, mask, alpha=0.0)[2, 2].tolist() == [100, 100, 100]
    with pytest.raises(UserError, match="^mask: shape"):
        seg.overlay(img, mask[:3])
    with pytest.raises(UserError, match="^alpha:"):
        seg.overlay(img, mask, alpha=1.5)


def test_show_labels(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    masks = [np.zeros((32, 64), np.int64), np.full((32, 64), 10, np.int64)]
    masks[0][:, 32:] = 13
    fig = seg.show_labels([img, img], masks, path=tmp_path / "labels.png", titles=["a", "b"], title="data")
    try:
        _png(tmp_path / "labels.png")
        assert len(fig.axes) == 2
        assert np.array_equal(fig.axes[1].images[0].get_array(), seg.overlay(img, masks[1]))
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["road", "sky", "car"]
        assert _no_overlap(fig, fig._suptitle, fig.axes[0].title)
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^masks:"):
        seg.show_labels([img, img], masks[:1])


def test_show_segmentation_title_clears_the_column_headers():
    img = np.zeros((64, 128, 3), np.uint8)
    mask = np.zeros((64, 128), np.int64)
    fig = seg.show_segmentation([img] * 3, [mask] * 3, [mask] * 3, title="Cityscapes validation: image | ours | gt")
    try:
        fig.canvas.draw()
        assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "prediction", "ground truth"]
        for ax in fig.axes[:3]:
            assert _no_overlap(fig, fig._suptitle, ax.title)
        assert fig._suptitle.get_window_extent().y1 <= fig.bbox.y1  # and stays inside the figure
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# pose
KP = np.array([[64, 20, 1], [68, 17, 1], [60, 17, 1], [72, 19, 1], [56, 19, 1], [76, 32, 1], [52, 32, 1],
               [80, 46, 1], [48, 46, 1], [82, 58, 1], [46, 58, 1], [71, 60, 1], [57, 60, 1], [72, 78, 1],
               [56, 78, 1], [72, 96, 1], [56, 96, 1]], dtype=float)


def _limbs(ax):
    return [ln for ln in ax.lines if (ln.get_gid() or "").startswith("limb")]


def test_show_pose_comparison_draws_ours_beside_the_ground_truth(tmp_path):
    img = np.full((110, 128, 3), 200, np.uint8)
    gt = KP * [1, 1, 2]  # COCO visibility 2
    low = KP.copy()
    low[:5, 2] = 0.1  # the face keypoints barely found
    fig = pose.show_pose_comparison([img, img], [[low], [KP, KP + [30, 0, 0]]], [[gt], [gt]], score_thr=0.2,
                                    path=tmp_path / "cmp.png", titles=["image 1", "image 2"], title="pose")
    try:
        _png(tmp_path / "cmp.png")
        assert len(fig.axes) == 4
        ours1, gt1, ours2, gt2 = fig.axes
        assert len(_limbs(gt1)) == 19 and len(_limbs(ours1)) == 19 - 7  # 7 limbs touch the face keypoints
        assert len(_limbs(ours2)) == 2 * 19
        assert ours2.get_title() == "image 2 · ours: 2 people, 34 of 34 keypoints >= 0.2"
        assert ours1.get_title() == "image 1 · ours: 1 person, 12 of 17 keypoints >= 0.2"
        assert gt1.get_title() == "image 1 · ground truth: 1 person"
        assert len(ours2.patches) == 2 and [t.get_text() for t in ours2.texts] == ["1", "2"]  # boxed and numbered
        shown = ours1.images[0].get_array()
        assert shown[0, 0].tolist() == [180, 180, 180]  # dimmed halfway to grey 160
        assert _no_overlap(fig, fig._suptitle, ours1.title)
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^preds, gts:"):
        pose.show_pose_comparison([img], [[KP]], [])


def test_match_people_pairs_each_prediction_with_its_closest_person():
    a, b = KP * [1, 1, 2], (KP + [40, 0, 0]) * [1, 1, 2]
    hidden = b.copy()
    hidden[:, 2] = 0  # nothing labelled: cannot be matched
    assert pose.match_people([KP + [38, 1, 0], KP + [1, 0, 0]], [a, b]) == [1, 0]
    assert pose.match_people([KP, KP + [3, 0, 0]], [a]) == [0, None]  # the closer one wins
    assert pose.match_people([KP], [hidden]) == [None]
    assert pose.match_people([], [a]) == []


def test_dim_image():
    img = np.array([[[0, 100, 255]]], np.uint8)
    assert pose.dim_image(img, 0.0).tolist() == img.tolist()
    assert pose.dim_image(img, 1.0).tolist() == [[[160, 160, 160]]]
    assert pose.dim_image(img, 0.5).tolist() == [[[80, 130, 208]]]
    with pytest.raises(UserError, match="^dim:"):
        pose.dim_image(img, -0.1)


# --------------------------------------------------------------------------------------------
# classification
def test_confusion_matrix_counts():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 1, 1, 2, 2, 2, 2, 0]
    cm = classification.confusion_matrix(labels, preds, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    assert cm.dtype == np.int64 and cm.sum() == 9 and np.trace(cm) == 6
    with pytest.raises(UserError, match="^preds: expected 9"):
        classification.confusion_matrix(labels, preds[:5], 4)
    with pytest.raises(UserError, match="^labels: class indices must be in 0..2"):
        classification.confusion_matrix([0, 3], [0, 0], 3)


def test_plot_confusion_matrix(tmp_path):
    cm = np.array([[5, 1, 0], [0, 3, 3], [0, 0, 0]])
    fig = classification.plot_confusion_matrix(cm, ["circle", "square", "star"], path=tmp_path / "cm.png", title="t")
    try:
        _png(tmp_path / "cm.png")
        ax = fig.axes[0]
        assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "3", "5"]  # one text per non-empty cell
        share = ax.images[0].get_array()
        assert share[0].tolist() == pytest.approx([5 / 6, 1 / 6, 0]) and share[2].tolist() == [0, 0, 0]
        assert "12 images, top-1 66.7 %" in ax.get_title()
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^class_names: 2 names for 3 classes"):
        classification.plot_confusion_matrix(cm, ["a", "b"])


def test_show_images_and_topk(tmp_path):
    imgs = [np.full((20, 24, 3), v, np.uint8) for v in (30, 90, 150)]
    names = ["circle", "square", "star", "ring"]
    fig = classification.show_images(imgs, [2, 0, 3], names, path=tmp_path / "imgs.png", title="data")
    try:
        _png(tmp_path / "imgs.png")
        assert [ax.get_title() for ax in fig.axes] == ["star", "circle", "ring"]
    finally:
        plt.close(fig)
    probs = np.array([[0.1, 0.2, 0.6, 0.1], [0.2, 0.5, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    fig = classification.show_topk(imgs, probs, [2, 0, 3], names, k=2, path=tmp_path / "topk.png")
    try:
        _png(tmp_path / "topk.png")
        bars = fig.axes[1::2]
        assert [t.get_text() for t in bars[0].get_yticklabels()] == ["star", "square"]
        assert to_hex(bars[0].patches[0].get_facecolor()) == classification.RIGHT_COLOR  # the true class
        # image 2: top-2 = square (0.5), then circle (0.2, the true class; tied with star, lower index first)
        assert [t.get_text() for t in bars[1].get_yticklabels()] == ["square", "circle"]
        assert [to_hex(p.get_facecolor()) for p in bars[1].patches] == [to_hex(classification.OTHER_COLOR),
                                                                         classification.RIGHT_COLOR]
        assert bars[0].get_title() == "top-2: right" and bars[1].get_title() == "top-2: wrong"
        assert [t.get_text() for t in bars[2].get_yticklabels()] == ["circle", "square"]  # ties: lower index first
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^k:"):
        classification.show_topk(imgs, probs, [2, 0, 3], names, k=5)


# --------------------------------------------------------------------------------------------
# KITTI frames
@pytest.fixture(scope="module")
def calib():
    from hrnas.data.synthetic.kitti import _calibration

    return _calibration()


def test_height_colors_span_the_ground_to_2_5_m():
    z = np.concatenate([np.full(98, -1.7), [-1.7 + pointcloud.HEIGHT_SPAN, 5.0]])
    pts = np.column_stack([np.zeros((100, 2)), z])
    rgb = pointcloud.height_colors(pts)
    from matplotlib import colormaps

    cmap = colormaps[pointcloud.HEIGHT_CMAP]
    assert rgb[0] == pytest.approx(cmap(0.0)[:3]) and rgb[98] == pytest.approx(cmap(1.0)[:3])
    assert rgb[99] == pytest.approx(cmap(1.0)[:3])  # above the span: clipped


def test_project_boxes_encloses_the_points_inside(calib):
    from hrnas.data.kitti import points_in_boxes

    boxes = np.array([[12.0, 3.0, -0.9, 4.0, 1.7, 1.5, 0.4], [25.0, -6.0, -0.8, 0.8, 0.6, 1.8, 0.0],
                      [-5.0, 0.0, -0.9, 4.0, 1.7, 1.5, 0.0]])  # the last one behind the camera
    uv, visible = pointcloud.project_boxes(boxes, calib)
    assert uv.shape == (3, 8, 2) and visible.tolist() == [True, True, False]
    pts = np.random.default_rng(0).uniform([5, -10, -2], [30, 10, 1], (60000, 3))
    inside = points_in_boxes(pts, boxes)
    for k in range(2):
        p = pts[inside[:, k]]
        assert len(p) > 15
        puv, _ = calib.rect_to_img(calib.lidar_to_rect(p))
        lo, hi = uv[k].min(axis=0), uv[k].max(axis=0)
        assert (puv >= lo - 1e-6).all() and (puv <= hi + 1e-6).all()  # inside the projected box
    assert pointcloud.project_boxes(None, calib)[0].shape == (0, 8, 2)


def _red_outlines(ax):
    return [ln for ln in ax.lines if ln.get_color() == pointcloud.PRED_COLOR and len(ln.get_xdata()) == 5]


def test_show_kitti_frame(tmp_path, calib):
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(5, 40, 5000), rng.uniform(-15, 15, 5000), rng.normal(-1.7, 0.02, 5000)])
    gt = np.array([[12.0, 3.0, -0.9, 4.0, 1.7, 1.5, 0.4], [25.0, -6.0, -0.9, 4.2, 1.8, 1.5, -0.2]])
    pred = np.concatenate([gt + [0.3, 0.2, 0, 0, 0, 0, 0.05], rng.uniform([5, -10, -1, 3, 1.5, 1.4, -3],
                                                                      [40, 10, -0.8, 4, 1.8, 1.6, 3], (8, 7))])
    scores = np.array([0.9, 0.6] + [0.05] * 8)
    image = np.zeros((375, 1242, 3), np.uint8)
    fig = pointcloud.show_kitti_frame(ground, gt, pred, scores, image=image, calib=calib, score_thr=0.3,
                                      path=tmp_path / "frame.png", title="frame")
    try:
        img = _png(tmp_path / "frame.png")
        ax_img, ax_bev = fig.axes[0], fig.axes[1]
        assert ax_img.images[0].get_array().shape == (375, 1242, 3)
        assert len(_red_outlines(ax_bev)) == 2  # only the two boxes above the display threshold
        labels = ax_bev.get_legend_handles_labels()[1]
        assert labels == ["ground truth: 2", "ours, score >= 0.30: 2 of 10"]
        red_img = [ln for ln in ax_img.lines if ln.get_color() == pointcloud.PRED_COLOR]
        assert len(red_img) == 2 * (12 + 2)  # 12 edges and the front cross per box
        assert [t.get_text() for t in ax_bev.texts] == ["0.90", "0.60"]
        r, g, b = (img[..., i].astype(int) for i in range(3))
        assert ((r > 150) & (g < 90) & (b < 90)).sum() > 100 and ((g > 120) & (r < 90) & (b < 90)).sum() > 100
    finally:
        plt.close(fig)
    view = np.full((300, 400, 3), 90, np.uint8)
    fig = pointcloud.show_kitti_frame(ground, gt, view3d=view)  # no camera: bird's-eye view, colour bar, 3-D view
    try:
        assert len(fig.axes) == 3 and fig.axes[2].get_title() == "3-D view (open3d)"
        assert fig.axes[0].get_legend_handles_labels()[1] == ["ground truth: 2"]
    finally:
        plt.close(fig)
    twins = np.array([gt[0], gt[0] + [0.3, 0, 0, 0, 0, 0, 0]])  # two overlapping boxes: one score written
    fig = pointcloud.show_kitti_frame(ground, gt, twins, [0.4, 0.7])
    try:
        assert [t.get_text() for t in fig.axes[0].texts] == ["0.70"]
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^pred_scores: 2 scores for 10"):
        pointcloud.show_kitti_frame(ground, gt, pred, scores[:2])


def test_render_open3d_image_matches_the_png(tmp_path):
    pts = np.random.default_rng(0).uniform(-5, 5, (500, 3))
    box = [[0, 0, 0, 2, 1, 1, 0]]
    rgb = pointcloud.render_open3d_image(pts, box, box, size=(320, 240))
    if rgb is None:
        pytest.skip("open3d cannot render here (no EGL)")
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8 and rgb.std() > 1
    assert pointcloud.render_open3d(pts, box, box, tmp_path / "o3d.png", size=(320, 240))
    assert np.asarray(Image.open(tmp_path / "o3d.png").convert("RGB")).shape == (240, 320, 3)
