"""Top-down pose decoding, OKS-NMS and COCO keypoint AP (hrnas.metrics.coco_keypoints)."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hrnas.errors import UserError
from hrnas.metrics.coco_keypoints import (COCO_SIGMAS, evaluate_keypoints, flip_back,
                                          get_final_preds, get_max_preds, merge_flip, oks_iou,
                                          oks_nms, refine_quarter_pixel, rescore, transform_preds,
                                          write_results_json)


def _peak(h, w, x, y, right, down):
    """Heatmap with a peak 1.0 at (x, y); right/down neighbours set to 0.6 or 0.4."""
    hm = np.zeros((1, 1, h, w))
    hm[0, 0, y, x] = 1.0
    hm[0, 0, y, x + 1], hm[0, 0, y, x - 1] = (0.6, 0.4) if right else (0.4, 0.6)
    hm[0, 0, y + 1, x], hm[0, 0, y - 1, x] = (0.6, 0.4) if down else (0.4, 0.6)
    return hm


def test_argmax_and_quarter_pixel_refinement():
    hm = _peak(8, 10, 4, 3, right=True, down=False)
    coords, maxv = get_max_preds(hm)
    assert coords[0, 0].tolist() == [4, 3] and maxv[0, 0, 0] == 1.0
    assert refine_quarter_pixel(coords, hm)[0, 0].tolist() == [4.25, 2.75]
    hm = _peak(8, 10, 4, 3, right=False, down=True)
    assert refine_quarter_pixel(get_max_preds(hm)[0], hm)[0, 0].tolist() == [3.75, 3.25]
    hm = _peak(8, 10, 1, 3, right=True, down=True)  # px = 1 is not refined (HRNet: 1 < px)
    assert refine_quarter_pixel(get_max_preds(hm)[0], hm)[0, 0].tolist() == [1.0, 3.0]
    assert get_max_preds(-np.ones((1, 1, 4, 4)))[0][0, 0].tolist() == [0, 0]  # max <= 0 -> (0, 0)


def test_flip_back_and_shift():
    hm = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(1, 3, 2, 4)
    back = flip_back(hm, flip_pairs=((1, 2),))
    assert torch.equal(back[0, 0], hm[0, 0].flip(-1))
    assert torch.equal(back[0, 1], hm[0, 2].flip(-1)) and torch.equal(back[0, 2], hm[0, 1].flip(-1))
    np.testing.assert_array_equal(flip_back(hm.numpy(), ((1, 2),)), back.numpy())
    merged = merge_flip(torch.zeros_like(hm), hm, flip_pairs=((1, 2),))
    # joint 0 row 0 of hm is [0 1 2 3]; flipped [3 2 1 0]; shifted right [3 3 2 1]; halved
    assert merged[0, 0, 0].tolist() == [1.5, 1.5, 1.0, 0.5]
    assert merge_flip(torch.zeros_like(hm), hm, ((1, 2),), shift=False)[0, 0, 0].tolist() == \
        [1.5, 1.0, 0.5, 0.0]


def test_transform_preds_box_convention():
    # 48 x 64 heatmap over a crop of 96 x 128 px centred at (100, 200): 2 px per heatmap pixel
    pts = np.array([[[24, 32], [0, 0], [12, 16]]], float)
    out = transform_preds(pts, np.array([100, 200]), np.array([96, 128]), (48, 64))
    np.testing.assert_allclose(out[0], [[100, 200], [52, 136], [76, 168]])
    hm = _peak(64, 48, 24, 32, right=True, down=True)
    preds, maxv = get_final_preds(hm, [[100, 200]], [[96, 128]])
    np.testing.assert_allclose(preds[0, 0], [100.5, 200.5])  # (24.25, 32.25) -> image


def test_rescore():
    s = rescore([1.0, 0.5], np.array([[[0.9], [0.1], [0.5]], [[0.1], [0.2], [0.1]]]))
    np.testing.assert_allclose(s, [0.7, 0.0])  # mean(0.9, 0.5); 0.2 is not above 0.2


def _instance(x0, y0, score, area=10000.0):
    kp = np.c_[x0 + 5 * np.arange(17), y0 + 3 * np.arange(17), np.ones(17)]
    return {"keypoints": kp, "score": score, "area": area}


def test_oks_iou_hand_value_and_nms():
    a = _instance(100, 100, 0.9)
    b = _instance(101, 100, 0.8)  # every joint 1 px to the right
    c = _instance(300, 300, 0.7)
    oks = oks_iou(a["keypoints"], np.stack([b["keypoints"], a["keypoints"]]), 10000.0,
                  np.array([10000.0, 10000.0]))
    var = (2 * COCO_SIGMAS) ** 2
    expected = np.mean(np.exp(-1.0 / var / (10000.0 + np.spacing(1)) / 2))
    assert oks[0] == pytest.approx(expected) and oks[1] == pytest.approx(1.0)
    assert 0.9 < expected < 1.0
    assert oks_nms([a, b, c], thr=0.9) == [0, 2]        # duplicate b removed, distinct c kept
    assert oks_nms([c, b, a], thr=0.9) == [2, 0]        # highest score first
    assert oks_nms([a, b, c], thr=0.999) == [0, 1, 2]   # nothing is that similar
    assert oks_nms([]) == []


def _coco_gt():
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2)]
    anns = []
    for aid, (img, x0, y0, w, h) in enumerate([(1, 50, 40, 60, 120), (1, 300, 60, 150, 300),
                                               (2, 100, 80, 90, 200)], 1):
        kp = np.c_[x0 + rng.uniform(0, w, 17), y0 + rng.uniform(0, h, 17), np.full(17, 2)]
        kp[3, 2] = 0
        kp[3, :2] = 0
        anns.append({"id": aid, "image_id": img, "category_id": 1, "iscrowd": 0,
                     "bbox": [x0, y0, w, h], "area": float(w * h * 0.6),
                     "num_keypoints": 16, "keypoints": kp.reshape(-1).tolist()})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def test_ap_equals_pycocotools_and_gt_gives_one(tmp_path):
    coco = _coco_gt()
    gt_results = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0,
                   "keypoints": a["keypoints"]} for a in coco.dataset["annotations"]]
    perfect = evaluate_keypoints(coco, gt_results)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR"] == pytest.approx(1.0)

    rng = np.random.default_rng(1)
    noisy = []
    for r, s in zip(gt_results, (0.9, 0.6, 0.8)):
        kp = np.asarray(r["keypoints"], float).reshape(17, 3)
        kp[:, :2] += rng.normal(0, 6, (17, 2))
        noisy.append({**r, "keypoints": kp, "score": s})
    noisy.append({"image_id": 2, "category_id": 1, "score": 0.95,       # a false positive
                  "keypoints": np.c_[np.full(17, 500.0), np.full(17, 400.0), np.ones(17)]})
    ours = evaluate_keypoints(coco, noisy)
    path = tmp_path / "res.json"
    write_results_json(path, noisy)
    assert json.loads(path.read_text())[0]["score"] == 0.9
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(str(path)), iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"]
    assert [ours[n] for n in names] == pytest.approx(list(ev.stats))
    assert 0.0 < ours["AP"] < 1.0


def test_bad_results_raise_user_error():
    coco = _coco_gt()
    with pytest.raises(UserError, match="result 0 lacks the field 'score'"):
        evaluate_keypoints(coco, [{"image_id": 1, "category_id": 1, "keypoints": [0] * 51}])
    with pytest.raises(UserError, match="image_id 99"):
        evaluate_keypoints(coco, [{"image_id": 99, "category_id": 1, "keypoints": [0] * 51,
                                   "score": 1}])
    with pytest.raises(UserError, match="3 values a joint"):
        evaluate_keypoints(coco, [{"image_id": 1, "category_id": 1, "keypoints": [0] * 50,
                                   "score": 1}])
