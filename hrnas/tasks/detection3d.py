"""KITTI 3D detection: PointPillars with the HR-NAS network as its BEV backbone.

HR-NAS supplement §1 (KITTI): the super network (64-channel BEV input, output at stride 4) replaces
PointPillars' 2D backbone; a ConvTranspose brings its features to stride 2 for the single-scale anchor
head (OpenPCDet layout). The search penalises and shrinks the backbone only. Evaluation writes KITTI
result files (camera-frame boxes, 2D boxes from the projected corners, alpha) and scores them with the
official protocol (``hrnas.metrics.kitti.evaluate``) on the val split. Pillar caps: ``data.pillars``
``paper`` (12 000 pillars × 100 points) or ``openpcdet`` (16 000 train / 40 000 test × 32).
``model.head_stride`` (1 or 2, default 2) is the anchor head's stride on the pillar grid: the anchor
spacing in metres is ``head_stride × voxel size`` (OpenPCDet: 2 × 0.16 m = 0.32 m).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hrnas.data.common import image_size
from hrnas.data.kitti import CLASSES, boxes_to_corners, lidar_boxes_to_camera
from hrnas.engine.distributed import all_gather_objects, broadcast_object, is_main
from hrnas.io import atomic_write_json
from hrnas.errors import UserError, check_choice
from hrnas.metrics import kitti as K
from hrnas.tasks.base import Task, eval_bar

BACKBONE_STRIDE = 4
HEAD_STRIDE = 2  # default of model.head_stride (OpenPCDet's single-scale head)
HEAD_STRIDES = (1, 2)  # proper divisors of BACKBONE_STRIDE the deconvolution can reach
PILLAR_PRESETS = {"paper": {"train": 12000, "test": 12000, "points": 100},
                  "openpcdet": {"train": 16000, "test": 40000, "points": 32}}


class Detection3DTask(Task):
    main_metric = "mAP_3d_R40_moderate"

    def pillar_config(self, train: bool):
        from hrnas.models.pointpillars import PillarConfig

        d = self.cfg["data"]
        check_choice("data.pillars", d["pillars"], PILLAR_PRESETS)
        caps = PILLAR_PRESETS[d["pillars"]]
        try:
            return PillarConfig(tuple(d["point_cloud_range"]), tuple(d["voxel_size"]),
                                caps["train" if train else "test"], caps["points"])
        except UserError as err:
            raise UserError(f"data.{err}") from None

    def input_size(self) -> tuple[int, int]:
        nx, ny = self.pillar_config(True).grid_size
        if nx % 32 or ny % 32:
            raise UserError(f"data.point_cloud_range / data.voxel_size give a {ny}x{nx} BEV grid; both sides "
                            f"must be multiples of 32 for the HR-NAS backbone")
        return ny, nx

    def head_stride(self) -> int:
        """``model.head_stride``: stride of the anchor head on the pillar grid."""
        stride = self.cfg["model"].get("head_stride", HEAD_STRIDE)
        check_choice("model.head_stride", stride, HEAD_STRIDES)
        return stride

    def model_options(self) -> dict:
        """The backbone's build options: the ``model`` section without the detector's ``head_stride``."""
        opts = super().model_options()
        opts.pop("head_stride", None)
        return opts

    def build_model(self, arch=None):
        from hrnas.models import build_model
        from hrnas.models.pointpillars import PointPillarsDetector

        self.input_size()
        stride = self.head_stride()
        backbone = build_model("kitti", arch=arch, **self.retrain_options()) if arch is not None else \
            build_model("kitti", **self.model_options())
        e = self.cfg["eval"]
        return PointPillarsDetector(backbone, backbone.head.out_channels, BACKBONE_STRIDE, self.pillar_config(True),
                                    CLASSES, upsample_to_stride=stride,
                                    test_cfg={"score_thr": e["score_thr"], "nms": e["nms"], "nms_iou": e["nms_iou"]})

    def searchable(self, model):
        return model.backbone

    def _options(self) -> dict:
        return {"point_cloud_range": tuple(self.cfg["data"]["point_cloud_range"])}

    def train_dataset(self, root, seed: int):
        from hrnas.data import build_dataset

        return build_dataset("kitti", root, "train", train=True, seed=seed, **self._options())

    def val_dataset(self, root):
        from hrnas.data import build_dataset

        return build_dataset("kitti", root, "val", train=False, **self._options())

    def to_device(self, batch, device, channels_last):
        out = dict(batch)
        for key in ("points", "gt_boxes", "gt_labels"):
            out[key] = batch[key].to(device, non_blocking=True)
        return out

    def loss(self, model, batch):
        parts = model(batch)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    def calib_forward(self, model, batch):
        model.head(model.bev_features(batch["points"], batch["gt_boxes"].shape[0]))

    def prepare_eval_model(self, model):
        model.pillar_cfg = self.pillar_config(False)
        return model

    @torch.no_grad()
    def evaluate(self, model, loader, device, channels_last, out_dir=None, progress=False) -> dict:
        base = loader.dataset.base
        frames = []
        for batch in eval_bar(loader, progress, "eval KITTI AP"):
            preds = model(self.to_device(batch, device, channels_last))
            for pred, fid, calib in zip(preds, batch["frame_id"], batch["calib"]):
                width, height = image_size(base / "image_2" / f"{fid}.png")
                dets = detections_to_kitti(pred, calib, (width, height))
                gt = K.read_label_file(base / "label_2" / f"{fid}.txt")
                frames.append((fid, gt, dets))
        gathered = all_gather_objects(frames)
        metrics = None
        if is_main():
            frames = sorted((f for part in gathered for f in part), key=lambda f: f[0])
            if out_dir is not None:
                res_dir = Path(out_dir) / "kitti_results"
                for fid, _, dets in frames:
                    K.write_result_file(res_dir / f"{fid}.txt", dets)
            table = K.evaluate([f[1] for f in frames], [f[2] for f in frames], CLASSES)
            if out_dir is not None:
                atomic_write_json(Path(out_dir) / "kitti_ap.json", table)
            metrics = flatten_kitti(table)
            metrics["frames"] = len(frames)
        metrics = broadcast_object(metrics)
        return {**metrics, "main": self.main_metric}


def detections_to_kitti(pred: dict, calib, image_wh) -> dict:
    """One frame's LiDAR predictions (boxes (K, 7), scores, 1-based labels) as a KITTI annotation dict:
    camera-frame location/dimensions/rotation_y, the 2D box of the projected corners clipped to the
    image, and alpha = rotation_y − viewing angle (OpenPCDet ``generate_prediction_dicts``)."""
    boxes = pred["boxes"].detach().cpu().double().numpy().reshape(-1, 7)
    scores = pred["scores"].detach().cpu().double().numpy().reshape(-1)
    labels = pred["labels"].detach().cpu().numpy().reshape(-1)
    cam = lidar_boxes_to_camera(boxes, calib)
    bbox = np.zeros((len(boxes), 4))
    if len(boxes):
        corners = boxes_to_corners(boxes).reshape(-1, 3)
        uv, _ = calib.rect_to_img(calib.lidar_to_rect(corners))
        uv = uv.reshape(len(boxes), 8, 2)
        w, h = image_wh
        bbox = np.stack([uv[..., 0].min(1), uv[..., 1].min(1), uv[..., 0].max(1), uv[..., 1].max(1)], axis=1)
        bbox = np.clip(bbox, 0.0, [w - 1, h - 1, w - 1, h - 1])
    alpha = -np.arctan2(-boxes[:, 1], boxes[:, 0]) + cam[:, 6]
    names = [CLASSES[int(c) - 1] for c in labels]
    return K.make_anno(names, bbox, cam[:, 3:6], cam[:, :3], cam[:, 6], score=scores, alpha=alpha)


def flatten_kitti(table: dict) -> dict:
    """``{class: {metric: {difficulty: AP}}}`` -> the class means ``mAP_<metric>_<difficulty>`` for every
    metric and difficulty, plus per class ``<class>_3d_R40_moderate`` and ``<class>_bev_R40_moderate``
    (percent)."""
    flat = {}
    metric_names = sorted({m for metrics in table.values() for m in metrics})
    for metric in metric_names:
        for diff in K.DIFFICULTIES:
            vals = [table[c][metric][diff] for c in table if metric in table[c]]
            flat[f"mAP_{metric}_{diff}"] = float(np.mean(vals))
    for cls, metrics in table.items():
        for metric in ("3d_R40", "bev_R40"):
            flat[f"{cls}_{metric}_moderate"] = metrics[metric]["moderate"]
    return flat
