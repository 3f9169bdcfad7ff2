"""COCO keypoints, top-down: JointsMSE loss and COCO keypoint AP.

Reference: docs/authors-code.md §4 ("Losses": 0.5·MSE per joint × target weight, averaged over joints)
and §5 ("COCO keypoints"); docs/metrics-and-peers.md §3.2: flip test (flipped heatmaps mapped back with the
joint swap and shifted one pixel right, averaged), argmax + quarter-pixel refinement, inverse affine,
rescoring (box score × mean joint maximum above 0.2), OKS-NMS 0.9 per image, pycocotools COCOeval.
The result's ``boxes`` names the boxes used: ``"gt"`` (``eval.use_gt_boxes``) or
``"detections:<file>, score>=<eval.det_score_thr>"``.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from hrnas.data.pose_transforms import PIXEL_STD
from hrnas.engine.distributed import all_gather_objects, broadcast_object, is_main
from hrnas.errors import UserError
from hrnas.metrics import coco_keypoints as ck
from hrnas.tasks.base import Task, check_positive_size, eval_bar

OKS_NMS_THRESHOLD = 0.9
RESCORE_THRESHOLD = 0.2


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """HRNet ``JointsMSELoss(use_target_weight=True)``: mean over joints of 0.5·MSE(w·pred, w·gt)."""
    w = weight.reshape(weight.shape[0], weight.shape[1], 1, 1)
    return 0.5 * ((pred - target) * w).pow(2).mean()


class KeypointsTask(Task):
    main_metric = "AP"

    def input_size(self) -> tuple[int, int]:
        return check_positive_size(self.cfg["data"]["input_size"], "data.input_size")

    def _options(self) -> dict:
        return {"size": self.input_size(), "sigma": self.cfg["data"]["heatmap_sigma"]}

    def train_dataset(self, root, seed: int):
        from hrnas.data import build_dataset

        d = self.cfg["data"]
        return build_dataset("coco", root, "train", train=True, seed=seed, **self._options(),
                             flip_prob=0.5 if d["flip"] else 0.0, half_body_prob=d["half_body_prob"],
                             scale_factor=d["scale_factor"], rot_factor=d["rot_factor"], rot_prob=d["rot_prob"])

    def val_dataset(self, root):
        from hrnas.data import build_dataset

        e = self.cfg["eval"]
        extra = {}
        if not e["use_gt_boxes"]:
            if not e["detections"]:
                raise UserError("eval.use_gt_boxes=false needs eval.detections=FILE (COCO person detection "
                                "results JSON, e.g. COCO_val2017_detections_AP_H_56_person.json)")
            extra = {"detections": str(Path(e["detections"]).expanduser()), "det_score_thr": e["det_score_thr"]}
        return build_dataset("coco", root, "val", train=False, **self._options(), **extra)

    def loss(self, model, batch):
        heatmaps = model(batch["image"]).float()
        return joints_mse(heatmaps, batch["heatmaps"], batch["target_weight"]), {}

    def calib_forward(self, model, batch):
        model(batch["image"])

    def heatmaps(self, model, images: torch.Tensor) -> torch.Tensor:
        """Heatmaps of a batch, averaged with the flipped image's when ``eval.flip_test``."""
        out = model(images).float()
        if self.cfg["eval"]["flip_test"]:
            out = ck.merge_flip(out, model(images.flip(-1)).float())
        return out

    @torch.no_grad()
    def evaluate(self, model, loader, device, channels_last, out_dir=None, progress=False) -> dict:
        instances = []
        for batch in eval_bar(loader, progress, "eval AP"):
            batch = self.to_device(batch, device, channels_last)
            hm = self.heatmaps(model, batch["image"]).cpu()
            scale = batch["scale"].cpu().numpy() * PIXEL_STD
            preds, maxvals = ck.get_final_preds(hm, batch["center"].cpu().numpy(), scale)
            scores = ck.rescore(batch["score"].cpu().numpy(), maxvals, RESCORE_THRESHOLD)
            for i in range(len(preds)):
                instances.append({"image_id": int(batch["image_id"][i]), "score": float(scores[i]),
                                  "area": float(batch["area"][i]),
                                  "keypoints": np.concatenate([preds[i], maxvals[i]], axis=1)})
        gathered = all_gather_objects(instances)
        metrics = None
        if is_main():
            results = oks_nms_per_image([x for part in gathered for x in part])
            if out_dir is not None:
                ck.write_results_json(Path(out_dir) / "keypoints_val_results.json", results)
            metrics = ck.evaluate_keypoints(loader.dataset.coco, results)
        metrics = broadcast_object(metrics)
        e = self.cfg["eval"]
        boxes = "gt" if e["use_gt_boxes"] else f"detections:{e['detections']}, score>={e['det_score_thr']}"
        return {**metrics, "boxes": boxes, "flip_test": bool(self.cfg["eval"]["flip_test"]),
                "main": self.main_metric}


def oks_nms_per_image(instances: list[dict]) -> list[dict]:
    """COCO result rows after OKS-NMS (threshold 0.9) among the instances of each image."""
    by_image = defaultdict(list)
    for inst in instances:
        by_image[inst["image_id"]].append(inst)
    rows = []
    for image_id in sorted(by_image):
        group = by_image[image_id]
        for k in ck.oks_nms(group, OKS_NMS_THRESHOLD):
            rows.append({"image_id": image_id, "category_id": 1, "keypoints": group[k]["keypoints"].reshape(-1),
                         "score": group[k]["score"]})
    return rows
