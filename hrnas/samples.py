"""Samplers: datasets and evaluated runs turned into the arrays the figures of :mod:`hrnas.viz` draw.

The task notebooks and 20_visualizations share them (through :mod:`hrnas.notebook`):
`segmentation_samples` / `segmentation_predictions`, `pose_samples` / `pose_predictions`, `kitti_frame` /
`kitti_detections`, `classification_samples` / `classify` / `class_names`, and `class_iou`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hrnas.errors import UserError

__all__ = ["class_iou", "segmentation_samples", "segmentation_predictions", "pose_samples", "pose_predictions",
           "kitti_frame", "kitti_detections", "class_names", "classification_samples", "classify"]


def class_iou(iou, class_names, scale: float = 100.0):
    """Per-class IoU (``evaluation["IoU"]``, one value per class, NaN for a class absent from both the
    labels and the predictions) as a table sorted from best to worst, absent classes left out."""
    import pandas as pd

    values = np.asarray(iou, dtype=np.float64)
    if values.shape != (len(class_names),):
        raise UserError(f"iou: {values.size} values for {len(class_names)} classes")
    table = pd.DataFrame({"class": [str(c).strip() for c in class_names], "IoU (%)": scale * values})
    return table.dropna().sort_values("IoU (%)", ascending=False, kind="stable").reset_index(drop=True)


def _device(net):
    return next(net.parameters()).device


def _at_label_size(image, label) -> np.ndarray:
    """The de-normalised image (HxWx3 uint8) at the label's size: the evaluation resizes only the image
    to the test scale and keeps the label at its original size (mmseg's protocol)."""
    from PIL import Image

    from hrnas.viz.seg import denormalize

    rgb = denormalize(image)
    h, w = np.asarray(label).shape[-2:]
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return rgb


def segmentation_samples(dataset, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``n`` samples of a segmentation dataset as (HxWx3 uint8 images, HxW train-id labels),
    the image at the label's size."""
    images, labels = [], []
    for i in range(min(n, len(dataset))):
        image, label = dataset[i]
        images.append(_at_label_size(image, label))
        labels.append(np.asarray(label))
    return images, labels


def segmentation_predictions(run, n: int):
    """(images, predictions, ground truths) of the first ``n`` val images: the argmax of ``run.task.predict``
    (the recipe's test mode) at the label's resolution, for ``run`` a LoadedRun."""
    import torch

    val = run.task.val_dataset(run.data_root)
    images, preds, gts = [], [], []
    with torch.no_grad():
        for i in range(min(n, len(val))):
            image, gt = val[i]
            scores = run.task.predict(run.net, image[None].to(_device(run.net)), size=gt.shape[-2:])
            preds.append(scores.argmax(1)[0].cpu().numpy())
            images.append(_at_label_size(image, gt))
            gts.append(np.asarray(gt))
    return images, preds, gts


def _coco_people(coco, image_id: int) -> list[np.ndarray]:
    anns = [a for a in coco.imgToAnns.get(image_id, []) if a.get("num_keypoints", 1) > 0 and max(a["keypoints"]) > 0]
    return [np.reshape(np.asarray(a["keypoints"], dtype=np.float64), (17, 3)) for a in anns]


def _coco_image(dataset, image_id: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]).convert("RGB"))


def pose_samples(dataset, n: int):
    """(images, ground-truth people per image, image ids) of the first ``n`` images with labelled people
    of a COCO keypoints dataset; a person is a (17, 3) array of (x, y, visibility)."""
    ids = [i for i in sorted(dataset.coco.imgs) if _coco_people(dataset.coco, i)][:n]
    return [_coco_image(dataset, i) for i in ids], [_coco_people(dataset.coco, i) for i in ids], ids


def pose_predictions(results_file, dataset, n: int):
    """(images, predicted people, ground-truth people, image ids) of the first ``n`` images of a COCO
    keypoint results file (what the evaluation wrote: (x, y, confidence) per keypoint)."""
    path = Path(results_file)
    if not path.is_file():
        raise UserError(f"{path}: no keypoint results file (the evaluation writes keypoints_val_results.json)")
    results = json.loads(path.read_text())
    ids = sorted({r["image_id"] for r in results})[:n]
    preds = [[np.reshape(np.asarray(r["keypoints"], dtype=np.float64), (17, 3)) for r in results if r["image_id"] == i]
             for i in ids]
    return ([_coco_image(dataset, i) for i in ids], preds, [_coco_people(dataset.coco, i) for i in ids], ids)


def kitti_frame(dataset, index: int = 0) -> dict:
    """Sample ``index`` of a KITTI dataset (points, gt_boxes, gt_labels, frame_id, calib) plus its camera
    image (``image``, HxWx3 uint8 from ``image_2``)."""
    from PIL import Image

    sample = dataset[index]
    image = np.asarray(Image.open(dataset.base / "image_2" / f"{sample['frame_id']}.png").convert("RGB"))
    return {**sample, "image": image}


def kitti_detections(results_dir, frame: dict) -> dict:
    """The detections the evaluation wrote for ``frame`` (``<results_dir>/<frame_id>.txt``: KITTI result
    lines in the camera frame, after the detector's NMS and score threshold), back in the LiDAR frame:
    ``boxes`` (K, 7), ``scores`` (K,), ``labels`` (K,) 1 Car, 2 Pedestrian, 3 Cyclist."""
    from hrnas.data.kitti import CLASSES, camera_boxes_to_lidar
    from hrnas.metrics.kitti import read_result_file

    path = Path(results_dir) / f"{frame['frame_id']}.txt"
    if not path.is_file():
        raise UserError(f"{path}: no KITTI result file for frame {frame['frame_id']} (the evaluation writes "
                        f"kitti_results/<frame>.txt)")
    dets = read_result_file(path)
    keep = np.array([n in CLASSES for n in dets["name"]], dtype=bool)
    cam = np.column_stack([dets["location"], dets["dimensions"], dets["rotation_y"]])[keep]  # x y z h w l ry
    return {"boxes": camera_boxes_to_lidar(cam, frame["calib"]), "scores": dets["score"][keep],
            "labels": np.array([CLASSES.index(n) + 1 for n in dets["name"][keep]], dtype=np.int64)}


def class_names(data_root, classes) -> list[str]:
    """Readable names of ImageNet classes (wnids, e.g. ``dataset.classes``): the first name of each wnid in
    ``<data_root>/LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` -> ``tench``), else the wnid."""
    mapping = Path(data_root) / "LOC_synset_mapping.txt"
    names = {}
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            wnid, _, rest = line.strip().partition(" ")
            if wnid:
                names[wnid] = rest.split(",")[0].strip() or wnid
    return [names.get(c, c) for c in classes]


def classification_samples(dataset, n: int) -> tuple[list[int], list[np.ndarray], list[int]]:
    """(indices, images as stored on disk (HxWx3 uint8), labels) of ``n`` samples, one class after another."""
    from PIL import Image

    by_class: dict[int, list[int]] = {}
    for i, (_, target) in enumerate(dataset.samples):
        by_class.setdefault(target, []).append(i)
    order, depth = [], 0
    while len(order) < min(n, len(dataset.samples)):
        order += [idx[depth] for _, idx in sorted(by_class.items()) if depth < len(idx)][: n - len(order)]
        depth += 1
    images = [np.asarray(Image.open(dataset.samples[i][0]).convert("RGB")) for i in order]
    return order, images, [dataset.samples[i][1] for i in order]


def classify(run, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), labels (N,)) of every sample of ``dataset`` under ``run.net`` (softmax)."""
    import torch

    probs, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for images, target in loader:
            probs.append(run.net(images.to(_device(run.net))).float().softmax(1).cpu().numpy())
            labels.append(np.asarray(target))
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)
