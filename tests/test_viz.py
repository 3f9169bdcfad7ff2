"""hrnas.viz: architecture report, segmentation maps, pose skeletons, point clouds + 3-D boxes, plots."""
import copy
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from PIL import Image  # noqa: E402

from hrnas.errors import UserError  # noqa: E402
from hrnas.viz import arch, plots, pointcloud, pose, seg  # noqa: E402


def _png(path, fig=None, size=None, min_std=5.0):
    """Load a PNG as HxWx3 uint8; check it is non-blank and has the figure's (or the given) size."""
    assert os.path.isfile(path)
    img = np.asarray(Image.open(path).convert("RGB"))
    if fig is not None:
        w, h = fig.get_size_inches() * plots.DPI
        assert abs(img.shape[1] - w) <= 1 and abs(img.shape[0] - h) <= 1, (img.shape, w, h)
    if size is not None:
        assert img.shape[:2] == (size[1], size[0])
    assert img.std() > min_std
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp") or f.startswith(".")]
    return img


def _count(img, rgb, tol=0):
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


# --------------------------------------------------------------------------------------------
# architecture
@pytest.fixture(scope="module")
def supernet():
    from hrnas.models import build_model, spec_of

    return spec_of(build_model("cityscapes", expand_ratio=1))


@pytest.fixture(scope="module")
def searched(supernet):
    """A searched spec: one block reduced to its shortcut, one without its 5x5 path, one 7x7-dominant."""
    spec = copy.deepcopy(supernet)
    blocks = {b["name"]: b for b in spec["blocks"]}
    blocks["parallel1.0_1"]["hidden"] = [0, 0, 0]
    blocks["fuse2.1_0"]["kernels"], blocks["fuse2.1_0"]["hidden"] = [3, 7], [5, 2]
    blocks["parallel3.2_1"]["hidden"] = [10, 20, 40]
    return spec


def test_arch_table_supernet(supernet):
    df = arch.arch_table(supernet)
    assert len(df) == 61
    assert list(df.columns) == list(arch.TABLE_COLUMNS)
    assert (df.c3 == df.inp).all() and (df.c5 == df.inp).all() and (df.c7 == df.inp).all()
    assert (df.hidden == 3 * df.inp).all() and (df.tokens == 0).all()
    row = df.set_index("name").loc["fuse2.1_0"]
    assert (row.module, row.inp, row.oup, row.stride) == ("fuse2", 18, 36, 2)
    assert df.set_index("name").loc["head.transform", "module"] == "head"
    assert set(df.module) == {f"fuse{k}" for k in range(5)} | {f"parallel{k}" for k in range(5)} | {"head"}


def test_arch_table_searched_vs_supernet(supernet, searched):
    from hrnas.models import build_model, spec_of

    df = arch.arch_table(searched, supernet).set_index("name")
    assert df.loc["parallel1.0_1", ["c3", "c5", "c7", "hidden"]].tolist() == [0, 0, 0, 0]
    assert df.loc["parallel1.0_1", "kept_%"] == 0.0
    assert df.loc["fuse2.1_0", ["c3", "c5", "c7", "hidden"]].tolist() == [5, 0, 2, 7]
    assert df.loc["fuse2.1_0", "kept_%"] == pytest.approx(100 * 7 / 54, abs=0.01)
    assert df.loc["fuse0.0_0", "kept_%"] == 100.0
    # the spec of the network actually built from it (zero-width paths dropped) gives the same table
    rebuilt = spec_of(build_model("cityscapes", arch=searched))
    assert rebuilt["blocks"][5]["kernels"] == [] and rebuilt["blocks"][5]["name"] == "parallel1.0_1"
    pd.testing.assert_frame_equal(arch.arch_table(rebuilt, supernet), arch.arch_table(searched, supernet))

    s = arch.arch_summary(searched, supernet)
    assert (s["blocks"], s["blocks_removed"], s["removed"]) == (61, 1, ["parallel1.0_1"])
    assert (s["paths_3"], s["paths_5"], s["paths_7"]) == (60, 59, 60)
    sup_total = 3 * sum(b["inp"] for b in supernet["blocks"])
    assert s["supernet_hidden_total"] == sup_total
    assert s["hidden_total"] == sup_total - 3 * 18 - (54 - 7) - (216 - 70)
    assert s["hidden_kept_%"] == pytest.approx(100 * s["hidden_total"] / sup_total, abs=0.01)
    assert s["tokens_total"] == 0


def test_arch_bad_input(supernet):
    with pytest.raises(UserError, match="^spec:"):
        arch.arch_table({"blocks": []})
    bad = copy.deepcopy(supernet)
    bad["blocks"][0]["hidden"] = [24, -1, 24]
    with pytest.raises(UserError, match="fuse0.0_0"):
        arch.arch_table(bad)
    other = copy.deepcopy(supernet)
    other["blocks"] = other["blocks"][1:]
    with pytest.raises(UserError, match="^supernet: has no block 'fuse0.0_0'"):
        arch.arch_summary(supernet, other)
    odd = copy.deepcopy(supernet)
    odd["blocks"][0]["name"] = "mystery.block"
    with pytest.raises(UserError, match="mystery.block"):
        arch.draw_architecture(odd)


def test_draw_architecture_classification_head(tmp_path):
    """The classification head: an incre block per branch, down blocks carrying the running sum to 1/32."""
    from hrnas.models import build_model, spec_of

    spec = spec_of(build_model("imagenet", expand_ratio=1))
    fig = arch.draw_architecture(spec, tmp_path / "imagenet.png")
    try:
        _png(str(tmp_path / "imagenet.png"), fig)
        arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == 67  # 26 fusion + 34 parallel + 4 incre + 3 down blocks, no concat links
        labels = {t.get_text() for t in fig.axes[0].texts}
        assert {"36", "72", "144", "320"} <= labels  # the head's widths
    finally:
        plt.close(fig)
    assert list(arch.arch_table(spec)["module"].iloc[-7:]) == ["head"] * 7


def test_draw_architecture(tmp_path, supernet, searched):
    fig = arch.draw_architecture(supernet, tmp_path / "supernet.png")
    try:
        img = _png(str(tmp_path / "supernet.png"), fig)
        assert img.shape[1] > 1500  # 22 columns of cubes, left to right
        arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == 61 + 4  # one per block + the 4 upsample/concat links of the dense head
        # every supernet block has equal kernel widths: all drawn in the "tied" colour
        assert sum(p.get_edgecolor() == to_rgba(arch.KERNEL_COLORS["mixed"]) for p in arrows) == 61
        labels = {t.get_text() for t in fig.axes[0].texts}
        assert {"24", "18", "36", "72", "144", "270", "90", "1/4", "1/32"} <= labels
    finally:
        plt.close(fig)
    fig = arch.draw_architecture(searched, tmp_path / "searched.png", title="searched", supernet=supernet)
    try:
        _png(str(tmp_path / "searched.png"), fig)
        arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == 2 * 61 + 4  # supernet widths underneath
        dashed = [p for p in arrows if p.get_linestyle() not in ("-", "solid")
                  and p.get_edgecolor() == to_rgba(arch.SHORTCUT_COLOR)]
        assert len(dashed) == 1
        assert sum(p.get_edgecolor() == to_rgba(arch.KERNEL_COLORS[3]) for p in arrows) == 1  # fuse2.1_0
        assert sum(p.get_edgecolor() == to_rgba(arch.KERNEL_COLORS[7]) for p in arrows) == 1  # parallel3.2_1
        assert "searched" in {t.get_text() for t in fig.texts}
    finally:
        plt.close(fig)


def test_draw_architecture_classification_head_with_tokens():
    from hrnas.models import build_model, spec_of

    spec = spec_of(build_model("imagenet", expand_ratio=1, attention="transformer", tokens=8))
    fig = arch.draw_architecture(spec)
    try:
        arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == len(spec["blocks"]) == 67
        n_tok = sum(1 for b in spec["blocks"] if b["tokens"])
        diamonds = [ln for ln in fig.axes[0].lines if ln.get_marker() == "D"]
        assert n_tok == 44 and len(diamonds) == n_tok
        assert "320" in {t.get_text() for t in fig.axes[0].texts}
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# segmentation
def test_palettes_match_the_label_tables():
    from hrnas.data.common import IMAGENET_MEAN, IMAGENET_STD
    from hrnas.data.labels import CITYSCAPES_LABELS

    official = [lab.color for lab in sorted((lab for lab in CITYSCAPES_LABELS if lab.train_id != 255),
                                            key=lambda lab: lab.train_id)]
    assert seg.CITYSCAPES_PALETTE.shape == (19, 3) and seg.CITYSCAPES_PALETTE.tolist() == [list(c) for c in official]
    ade = seg.ade20k_palette()
    assert ade.shape == (150, 3) and ade.dtype == np.uint8 and len({tuple(c) for c in ade}) >= 140
    assert ade[0].tolist() == [120, 120, 120] and ade[149].tolist() == [92, 0, 255]
    assert (seg.IMAGENET_MEAN, seg.IMAGENET_STD) == (IMAGENET_MEAN, IMAGENET_STD)


def test_colorize():
    mask = np.array([[0, 13, 255], [10, 18, 2]])
    rgb = seg.colorize(mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 64, 128]  # road
    assert rgb[0, 1].tolist() == [0, 0, 142]  # car
    assert rgb[0, 2].tolist() == [0, 0, 0]  # ignore
    assert rgb[1, 0].tolist() == [70, 130, 180]  # sky
    assert rgb[1, 1].tolist() == [119, 11, 32]  # bicycle
    assert seg.colorize(np.array([[0, 149]]), "ade20k").tolist() == [[[120, 120, 120], [92, 0, 255]]]
    with pytest.raises(UserError, match="^mask:.*19"):
        seg.colorize(np.array([[19]]))
    with pytest.raises(UserError, match="^mask:"):
        seg.colorize(np.zeros((2, 2, 2), int))
    with pytest.raises(UserError, match="^palette:"):
        seg.colorize(mask, "voc")


def test_denormalize_round_trip():
    import torch

    from hrnas.data.transforms import normalize

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    x = normalize(torch.from_numpy(img).permute(2, 0, 1))
    back = seg.denormalize(x)
    assert back.shape == (8, 12, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img).max() <= 1
    with pytest.raises(UserError, match="^tensor:"):
        seg.denormalize(np.zeros((4, 8, 8)))


def test_show_segmentation(tmp_path):
    rng = np.random.default_rng(1)
    h, w = 64, 128
    gt = np.zeros((h, w), np.int64)
    gt[:20] = 10
    gt[30:50, 70:110] = 13
    gt[:4, :4] = 255
    pred = gt.copy()
    pred[30:50, 70:90] = 11
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    chw = ((img / 255.0 - np.array(seg.IMAGENET_MEAN)) / np.array(seg.IMAGENET_STD)).transpose(2, 0, 1)
    path = tmp_path / "seg.png"
    fig = seg.show_segmentation([img, chw], [pred, pred], [gt, gt], path=path)
    try:
        assert np.array_equal(fig.axes[3].images[0].get_array(), img)  # the CHW input, denormalised
        assert len(fig.axes) == 6
        png = _png(str(path), fig)
        for rgb in ([128, 64, 128], [70, 130, 180], [0, 0, 142], [220, 20, 60]):  # road, sky, car, person
            assert _count(png, rgb) > 500, rgb
    finally:
        plt.close(fig)
    fig = seg.show_segmentation(np.stack([chw, chw]), np.stack([pred, pred]), palette="ade20k")  # batches, no GT
    try:
        assert len(fig.axes) == 4
        assert np.array_equal(fig.axes[2].images[0].get_array(), img)
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^preds:"):
        seg.show_segmentation([img, img], [pred])


# --------------------------------------------------------------------------------------------
# pose
KP = np.array([[64, 20, 1], [68, 17, 1], [60, 17, 1], [72, 19, 1], [56, 19, 1], [76, 32, 1], [52, 32, 1],
               [80, 46, 1], [48, 46, 1], [82, 58, 1], [46, 58, 1], [71, 60, 1], [57, 60, 1], [72, 78, 1],
               [56, 78, 1], [72, 96, 1], [56, 96, 1]], dtype=float)


def test_skeleton_limbs_and_sides():
    assert len(pose.COCO_SKELETON) == 19 and len(set(pose.COCO_SKELETON)) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in pose.COCO_SKELETON)
    from hrnas.metrics.coco_keypoints import COCO_KEYPOINT_NAMES

    assert {COCO_KEYPOINT_NAMES[i] for i in pose.LEFT_KEYPOINTS} == {n for n in COCO_KEYPOINT_NAMES if "left" in n}
    fig, ax = plt.subplots()
    try:
        lines = pose.draw_skeleton(ax, KP)
        assert len(lines) == 19
        color = {ln.get_gid(): ln.get_color() for ln in lines}
        assert color["limb15-13"] == pose.SIDE_COLORS["left"]  # left ankle - left knee
        assert color["limb16-14"] == pose.SIDE_COLORS["right"]
        assert color["limb5-6"] == pose.SIDE_COLORS["centre"]  # shoulders
        low = KP.copy()
        low[0, 2] = 0.1  # nose below the threshold: its two limbs go
        assert len(pose.draw_skeleton(ax, low, score_thr=0.2)) == 17
        with pytest.raises(UserError, match="^keypoints:"):
            pose.draw_skeleton(ax, KP[:10])
    finally:
        plt.close(fig)


def test_show_pose(tmp_path):
    img = np.full((110, 128, 3), 40, np.uint8)
    path = tmp_path / "pose.png"
    fig = pose.show_pose([img, img], [KP[None], [KP + [20, 0, 0], KP - [20, 0, 0]]], path=path)
    try:
        png = _png(str(path), fig)
        left = tuple(int(pose.SIDE_COLORS["left"][i:i + 2], 16) for i in (1, 3, 5))
        right = tuple(int(pose.SIDE_COLORS["right"][i:i + 2], 16) for i in (1, 3, 5))
        assert _count(png, left, tol=8) > 100 and _count(png, right, tol=8) > 100
        assert len(fig.axes[1].lines) > len(fig.axes[0].lines)  # two people in the second image
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^keypoints_per_image:"):
        pose.show_pose([img], [KP[None], KP[None]])


# --------------------------------------------------------------------------------------------
# point clouds
def test_box_corners():
    c = pointcloud.box_corners(np.array([[0, 0, 0, 1, 1, 1, 0]]))
    assert c.shape == (1, 8, 3)
    cube = {(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)}
    assert {tuple(p) for p in np.round(c[0], 9)} == cube
    assert np.allclose(c[0, :4, 2], -0.5) and np.allclose(c[0, 4:, 2], 0.5)  # bottom face, then top
    turned = pointcloud.box_corners([[1, 2, 3, 4, 2, 1, np.pi / 2]])[0]  # l along y after a quarter turn
    assert np.allclose(turned.min(0), [0, 0, 2.5]) and np.allclose(turned.max(0), [2, 4, 3.5])
    from hrnas.data.kitti import boxes_to_corners

    boxes = np.random.default_rng(0).uniform([-20, -20, -2, 1, 1, 1, -3], [20, 20, 1, 5, 3, 2, 3], (6, 7))
    assert np.allclose(pointcloud.box_corners(boxes), boxes_to_corners(boxes))
    assert pointcloud.box_corners(None).shape == (0, 8, 3)
    with pytest.raises(UserError, match="^boxes:"):
        pointcloud.box_corners(np.zeros((2, 5)))


def _scene():
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(0, 40, 8000), rng.uniform(-15, 15, 8000), rng.normal(-1.7, 0.03, 8000)])
    gt = np.array([[12, 2, -0.9, 4.0, 1.7, 1.6, 0.3], [25, -5, -0.9, 4.2, 1.8, 1.5, -0.2]])
    pred = gt + np.array([0.6, -0.4, 0, 0.1, 0, 0, 0.15])
    objects = [rng.uniform(-0.5, 0.5, (600, 3)) * b[3:6] + b[:3] for b in gt]
    return np.concatenate([ground] + objects), pred, gt


def _has_red_and_green(img):
    r, g, b = (img[..., i].astype(int) for i in range(3))
    red = ((r > 150) & (g < 90) & (b < 90)).sum()
    green = ((g > 120) & (r < 90) & (b < 90)).sum()
    return red > 30 and green > 30


def test_render_detections_auto(tmp_path):
    pts, pred, gt = _scene()
    path, used = pointcloud.render_detections(pts, pred, gt, tmp_path / "det.png", backend="auto", size=(640, 480))
    assert used in ("open3d", "matplotlib") and path == tmp_path / "det.png"
    img = _png(str(path), size=(640, 480) if used == "open3d" else (960, 480))
    assert (img.min(-1) < 250).sum() > 1000
    assert _has_red_and_green(img)


def test_render_matplotlib(tmp_path):
    pts, pred, gt = _scene()
    before = plt.get_fignums()
    path = pointcloud.render_matplotlib(pts, pred, gt, tmp_path / "bev.png", size=(1000, 500))
    img = _png(str(path), size=(1000, 500))
    assert (img.min(-1) < 250).sum() > 1000 and _has_red_and_green(img)
    assert plt.get_fignums() == before  # file renderer: no pyplot figure left open
    with pytest.raises(UserError, match="^backend:"):
        pointcloud.render_detections(pts, pred, gt, tmp_path / "x.png", backend="vulkan")
    with pytest.raises(UserError, match="^points:"):
        pointcloud.render_matplotlib(np.zeros((10, 2)), None, None, tmp_path / "y.png")


def test_render_open3d_without_egl_returns_false(tmp_path):
    """With EGL unavailable no window can be created: False and no file (in a fresh process)."""
    code = ("import numpy as np; from hrnas.viz.pointcloud import render_open3d;"
            "p = np.random.default_rng(0).uniform(-5, 5, (500, 3)); b = [[0, 0, 0, 2, 1, 1, 0]];"
            f"print(render_open3d(p, b, b, {str(tmp_path / 'o3d.png')!r}))")
    env = {**os.environ, "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]
    assert not (tmp_path / "o3d.png").exists()


def test_render_detections_falls_back(tmp_path, monkeypatch):
    pts, pred, gt = _scene()
    monkeypatch.setattr(pointcloud, "render_open3d", lambda *a, **k: False)
    path, used = pointcloud.render_detections(pts[::4], pred, gt, tmp_path / "fb.png", size=(400, 300))
    assert used == "matplotlib"
    _png(str(path), size=(600, 300))
    with pytest.raises(UserError, match="^backend: open3d cannot render"):
        pointcloud.render_detections(pts, pred, gt, tmp_path / "o3d.png", backend="open3d")


# --------------------------------------------------------------------------------------------
# plots
def test_metric_vs_cost(tmp_path):
    df = pd.DataFrame({"method": ["HR-NAS-A", "HR-NAS-B", "HR-NAS-A", "HR-NAS-B", "HRNet-W18-S"],
                       "FLOPs (G)": [1.91, 2.2, 1.8, 2.4, 1.9], "mIoU": [74.2, 75.9, 70.1, 71.3, None],
                       "source": ["paper", "paper", "ours", "ours", "paper"]})
    fig = plots.metric_vs_cost(df, path=tmp_path / "mvc.png")
    try:
        _png(str(tmp_path / "mvc.png"), fig)
        ax = fig.axes[0]
        assert sorted(t.get_text() for t in ax.texts) == ["HR-NAS-A", "HR-NAS-A", "HR-NAS-B", "HR-NAS-B"]
        offsets = np.concatenate([c.get_offsets() for c in ax.collections])
        assert len(offsets) == 4 and {tuple(np.round(o, 2)) for o in offsets} >= {(1.91, 74.2), (2.4, 71.3)}
        assert len([ln for ln in ax.lines if ln.get_linestyle() == ":"]) == 2  # ours <-> paper per method
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^x: column 'GMACs'"):
        plots.metric_vs_cost(df, x="GMACs")
    with pytest.raises(UserError, match="^hue:"):
        plots.metric_vs_cost(df, hue="who")


def test_dodge_log_spreads_near_ties_only():
    x = [0.00645632, 0.1, 0.006450688, 0.0031, 0.0064]
    out = plots.dodge_log(x, width=0.05)
    # 0.0064, 0.006450688, 0.00645632 lie within 0.05 decades of each other: -0.05, 0, +0.05 decades, in order
    moved = np.log10(out) - np.log10(x)
    assert np.allclose(moved[[4, 2, 0]], [-0.05, 0.0, 0.05])
    assert out[1] == 0.1 and out[3] == 0.0031  # far from the others: unchanged
    assert np.allclose(plots.dodge_log([2.0, 2.0]), [2.0 * 10 ** -0.025, 2.0 * 10 ** 0.025])
    assert plots.dodge_log([]).size == 0


def test_training_curves(tmp_path):
    history = [{"step": 10 * i, "epoch": i / 2, "train_loss": 2 / (1 + i), "macs": 2e9 - i * 5e7,
                **({"val_mIoU": 30.0 + i} if i % 2 else {})} for i in range(12)]
    fig = plots.training_curves(history, ["train_loss", "val_mIoU"], path=tmp_path / "curves.png")
    try:
        _png(str(tmp_path / "curves.png"), fig)
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["train_loss", "val_mIoU", "MACs"]
        loss, miou, macs = (ax.lines[0] for ax in fig.axes)
        assert len(loss.get_xdata()) == 12 and len(miou.get_xdata()) == 6
        assert miou.get_xdata()[0] == 0.5 and miou.get_ydata()[-1] == 41.0
        assert macs.get_ydata()[0] == pytest.approx(2000.0)  # in millions
    finally:
        plt.close(fig)
    fig = plots.training_curves([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}])
    try:
        assert [ax.get_title() for ax in fig.axes if ax.axison] == ["train_loss"]
    finally:
        plt.close(fig)
    with pytest.raises(UserError, match="^keys: 'val_AP'"):
        plots.training_curves(history, ["val_AP"])
    with pytest.raises(UserError, match="^history:"):
        plots.training_curves([], ["train_loss"])


def test_save_figure_is_atomic_and_keeps_the_size(tmp_path):
    before = plt.get_fignums()
    fig, ax = plt.subplots(figsize=(3, 2))
    try:
        ax.plot([0, 1], [0, 1])
        path = plots.save_figure(fig, tmp_path / "sub" / "line.png")
        img = _png(str(path), size=(360, 240), min_std=1.0)
        assert img.shape == (240, 360, 3)
    finally:
        plt.close(fig)
    assert plt.get_fignums() == before
