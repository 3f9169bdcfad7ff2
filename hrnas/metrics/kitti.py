"""KITTI object evaluation on the CPU: label/result I/O and the official AP protocol.

Semantics follow the official devkit / ``kitti_object_eval_python`` (docs/metrics-and-peers.md
§4.2, §4.6; docs/datasets.md §3.5), re-implemented and vectorised over frames:

* difficulty: a ground truth (GT) box counts for easy / moderate / hard when its 2D height is
  > 40 / 25 / 25 px, occlusion <= 0 / 1 / 2 and truncation <= .15 / .30 / .50; otherwise it is
  "ignored" (a detection matched to it is neither TP nor FP). Van is ignored for Car and
  Person_sitting for Pedestrian. Detections lower than the minimum height are ignored.
* DontCare regions: an unmatched detection whose 2D box lies inside a DontCare box (intersection /
  detection area above the class threshold) is not a false positive. As in the official code this
  applies to the 2D bbox metric; DontCare boxes have no 3D extent, so BEV/3D ignore them.
* matching, per frame and GT in file order: the eligible detection with the largest overlap above
  the (strict) class threshold, preferring non-ignored detections; Car .7, Pedestrian .5,
  Cyclist .5 for bbox, BEV (camera x, z, l, w, ry) and 3D (height along camera y).
* score thresholds: the scores of the true positives are sampled at 41 recall positions
  (``_recall_thresholds``); precision at threshold k is made monotone (max over k' >= k);
  AP_R11 averages k = 0, 4, ..., 40, AP_R40 averages k = 1..40. As in the official code the
  k-th precision belongs to the k-th sampled threshold, so a class/difficulty with fewer than 41
  valid GT boxes cannot reach 100 even with perfect detections.
* AOS (with the bbox metric): orientation similarity (1 + cos(alpha_gt - alpha_det)) / 2 summed
  over TPs, divided by TP + FP, same sweep.

Our extension: when no detection carries a 2D box (all widths/heights <= 0, e.g. a LiDAR-only
detector that does not project its boxes), the bbox/AOS metrics are left out and the detection
height filter is skipped (the official code would silently give 0 AP).

Annotations are dicts of numpy arrays, one dict per frame: ``name`` (N,) str, ``truncated`` (N,),
``occluded`` (N,) int, ``alpha`` (N,), ``bbox`` (N, 4) left top right bottom, ``dimensions``
(N, 3) **h, w, l in file order**, ``location`` (N, 3) camera x y z of the bottom centre,
``rotation_y`` (N,), and ``score`` (N,) for detections.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hrnas.errors import UserError
from hrnas.io import atomic_write_text
from hrnas.metrics.box_ops import paired_bev_intersection, paired_image_overlap, paired_iou_3d

KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc",
               "DontCare")
_CANONICAL = {t.lower(): t for t in KITTI_TYPES}
MIN_OVERLAP = {"Car": 0.7, "Van": 0.7, "Truck": 0.7, "Pedestrian": 0.5, "Person_sitting": 0.5,
               "Cyclist": 0.5}
NEIGHBOUR = {"Car": "Van", "Pedestrian": "Person_sitting"}
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.30, 0.50)
N_SAMPLE_PTS = 41
_NO_DETECTION = -10000000.0
_FIELDS = "type truncated occluded alpha left top right bottom h w l x y z rotation_y"


# ----------------------------------------------------------------------------------------- I/O
def make_anno(name, bbox, dimensions, location, rotation_y, score=None, truncated=None,
              occluded=None, alpha=None) -> dict:
    """Build an annotation dict from array-likes (missing truncated/occluded = 0, alpha = -10)."""
    names = np.array([_CANONICAL.get(str(n).lower(), str(n)) for n in name], dtype=object)
    n = len(names)

    def arr(x, cols, default, dtype=np.float64):
        a = np.full((n,) if cols is None else (n, cols), default, dtype) if x is None \
            else np.asarray(x, dtype=dtype).reshape((n,) if cols is None else (n, cols))
        return a

    anno = {"name": names, "truncated": arr(truncated, None, 0.0),
            "occluded": arr(occluded, None, 0, np.int64), "alpha": arr(alpha, None, -10.0),
            "bbox": arr(bbox, 4, 0.0), "dimensions": arr(dimensions, 3, 0.0),
            "location": arr(location, 3, 0.0), "rotation_y": arr(rotation_y, None, 0.0)}
    if score is not None:
        anno["score"] = arr(score, None, 0.0)
    return anno


def _read_kitti_file(path, with_score: bool) -> dict:
    path = Path(path)
    nfields = 16 if with_score else 15
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read KITTI file {path}: {exc.strerror}") from None
    names, rows, linenos = [], [], []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != nfields:
            kind = "result" if with_score else "label"
            raise UserError(f"{path}:{lineno}: a KITTI {kind} line needs {nfields} fields "
                            f"({_FIELDS}{' score' if with_score else ''}), got {len(fields)}")
        name = _CANONICAL.get(fields[0].lower())
        if name is None:
            raise UserError(f"{path}:{lineno}: unknown object type {fields[0]!r} "
                            f"(expected one of {', '.join(KITTI_TYPES)})")
        try:
            row = [float(v) for v in fields[1:]]
        except ValueError:
            bad = next(v for v in fields[1:] if not _is_float(v))
            raise UserError(f"{path}:{lineno}: value {bad!r} is not a number") from None
        names.append(name)
        rows.append(row)
        linenos.append(lineno)
    v = np.asarray(rows, dtype=np.float64).reshape(-1, nfields - 1)
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad.size:
        lineno = linenos[bad[0]]
        raise UserError(f"{path}:{lineno}: non-finite value in {lines[lineno - 1].strip()!r}")
    return make_anno(names, v[:, 3:7], v[:, 7:10], v[:, 10:13], v[:, 13],
                     score=v[:, 14] if with_score else None, truncated=v[:, 0],
                     occluded=v[:, 1].astype(np.int64), alpha=v[:, 2])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_label_file(path) -> dict:
    """Read a KITTI ``label_2`` file (15 fields a line) into an annotation dict."""
    return _read_kitti_file(path, with_score=False)


def read_result_file(path) -> dict:
    """Read a KITTI result file (16 fields a line, the last is the score)."""
    return _read_kitti_file(path, with_score=True)


def write_result_file(path, dets: dict) -> None:
    """Write detections (an annotation dict with ``score``) as a KITTI result file, atomically."""
    path = Path(path)
    lines = []
    for i, name in enumerate(dets["name"]):
        if str(name) not in _CANONICAL.values():
            raise UserError(f"detection {i} for {path}: unknown object type {name!r}")
        nums = [dets["alpha"][i], *dets["bbox"][i], *dets["dimensions"][i], *dets["location"][i],
                dets["rotation_y"][i]]
        lines.append(f"{name} {float(dets['truncated'][i]):.2f} {int(dets['occluded'][i])} "
                     + " ".join(f"{float(x):.4f}" for x in nums)
                     + f" {float(dets['score'][i]):.6f}\n")
    atomic_write_text(path, "".join(lines))


# ------------------------------------------------------------------------------ evaluation
def _concat(annos, with_score: bool, kind: str) -> dict:
    keys = ["name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location",
            "rotation_y"] + (["score"] if with_score else [])
    for f, anno in enumerate(annos):
        missing = [k for k in keys if k not in anno]
        if missing:
            raise UserError(f"{kind} annotation of frame {f} lacks {', '.join(missing)}")
    counts = np.array([len(a["name"]) for a in annos], dtype=np.int64)
    flat = {"count": counts, "frame": np.repeat(np.arange(len(annos)), counts)}
    for k in keys:
        parts = [np.asarray(a[k]) for a in annos]
        if k == "name":
            flat[k] = np.concatenate([p.astype(object) for p in parts]) if parts \
                else np.zeros(0, object)
        else:
            shape = (0, 4) if k == "bbox" else (0, 3) if k in ("dimensions", "location") else (0,)
            flat[k] = np.concatenate([p.reshape((-1,) + shape[1:]) for p in parts]).astype(
                np.float64) if parts else np.zeros(shape)
    return flat


def _frame_pairs(dt_count, gt_frame_ids, n_frames):
    """All (detection, GT) index pairs that share a frame; GTs given as indices grouped by frame."""
    gt_count = np.bincount(gt_frame_ids[1], minlength=n_frames)
    per = dt_count * gt_count
    total = int(per.sum())
    frame = np.repeat(np.arange(n_frames), per)
    local = np.arange(total) - np.repeat(np.cumsum(per) - per, per)
    gcount = gt_count[frame]
    dt_start = np.cumsum(dt_count) - dt_count
    gt_start = np.cumsum(gt_count) - gt_count
    det = dt_start[frame] + local // np.maximum(gcount, 1)
    gt = gt_frame_ids[0][gt_start[frame] + local % np.maximum(gcount, 1)]
    return det, gt


def _camera_boxes(flat):
    """Camera boxes as LiDAR-like (x, -z, up_centre, l, w, h, ry): a reflection keeps all IoUs."""
    loc, dims = flat["location"], flat["dimensions"]
    h, w, l = dims[:, 0], dims[:, 1], dims[:, 2]
    return np.stack([loc[:, 0], -loc[:, 2], -loc[:, 1] + h / 2, l, w, h, flat["rotation_y"]], 1)


def _overlaps(gt, dt, det, gti, metrics) -> dict:
    """Overlap of every (detection, GT) pair for each metric: 2D IoU, BEV IoU, 3D IoU."""
    out = {}
    if "bbox" in metrics:
        out["bbox"] = paired_image_overlap(dt["bbox"][det], gt["bbox"][gti])
    bd, bg = _camera_boxes(dt)[det], _camera_boxes(gt)[gti]
    cols = [0, 1, 3, 4, 6]
    inter = paired_bev_intersection(bd[:, cols], bg[:, cols])
    union = bd[:, 3] * bd[:, 4] + bg[:, 3] * bg[:, 4] - inter
    out["bev"] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    out["3d"] = paired_iou_3d(bd, bg, bev_inter=inter)
    return out


def _recall_thresholds(tp_scores: np.ndarray, num_gt: int) -> np.ndarray:
    """Scores at which precision is sampled: the official 41-point recall discretisation."""
    scores = np.sort(tp_scores)[::-1]
    m = scores.size
    if m == 0:
        return scores
    i = np.arange(m)
    left = (i + 1) / num_gt
    right = np.where(i < m - 1, (i + 2) / num_gt, left)
    picks, current, start = [], 0.0, 0
    while start < m and len(picks) < N_SAMPLE_PTS:
        take = ~((right[start:] - current) < (current - left[start:]))
        take[-1] = True
        start += int(np.argmax(take))
        picks.append(start)
        start += 1
        current += 1 / (N_SAMPLE_PTS - 1.0)
    return scores[picks]


class _Candidates:
    """Candidate (GT, detection) pairs of one class/difficulty/metric in greedy processing order."""

    def __init__(self, gt_idx, det_idx, ov, gt_frame):
        self.gts, inv = np.unique(gt_idx, return_inverse=True)
        frames = gt_frame[self.gts]
        first = np.r_[0, np.flatnonzero(np.diff(frames)) + 1]
        rank = np.arange(self.gts.size) - np.repeat(first, np.diff(np.r_[first, self.gts.size]))
        order = np.lexsort((det_idx, gt_idx, rank[inv]))  # GT rank within its frame = greedy step
        self.gt, self.det, self.ov, self.u = gt_idx[order], det_idx[order], ov[order], inv[order]
        bounds = np.searchsorted(rank[self.u], np.arange(rank.max() + 2 if rank.size else 1))
        self.steps = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def match(self, pref: np.ndarray, det_ok: np.ndarray):
        """Greedy matching for each row of det_ok (T, D): winner detection per GT (T, U), or -1.

        Each GT takes the eligible, unassigned detection with the highest ``pref`` (ties: lowest
        detection index); frames are independent, so step s handles the s-th GT of every frame.
        """
        n_rows = det_ok.shape[0]
        assigned = np.zeros_like(det_ok)
        winner = np.full((n_rows, self.gts.size), -1, dtype=np.int64)
        for a, b in self.steps:
            d, p = self.det[a:b], pref[a:b]
            seg = np.flatnonzero(np.r_[True, self.gt[a + 1:b] != self.gt[a:b - 1]])
            seg_id = np.cumsum(np.r_[True, self.gt[a + 1:b] != self.gt[a:b - 1]]) - 1
            elig = det_ok[:, d] & ~assigned[:, d]
            key = np.where(elig, p, -np.inf)
            best = np.maximum.reduceat(key, seg, axis=1)
            pos = np.where(elig & (key == best[:, seg_id]), np.arange(b - a), b - a)
            first = np.minimum.reduceat(pos, seg, axis=1)
            win = np.where(first < b - a, d[np.minimum(first, b - a - 1)], -1)
            rows, cols = np.nonzero(win >= 0)
            assigned[rows, win[rows, cols]] = True
            winner[:, self.u[a + seg]] = win
        return winner, assigned


def _class_curves(cand, gt, dt, ig_gt, ig_det, dc_hit, num_valid, compute_aos):
    """Monotone precision and AOS curves (41,) for one class/difficulty/metric."""
    score = dt["score"]
    pass1, _ = cand.match(score[cand.det], (score > _NO_DETECTION)[None])
    w = pass1[0]
    gt_ok = ig_gt[cand.gts] == 0
    tp1 = (w >= 0) & gt_ok & (ig_det[np.maximum(w, 0)] == 0)
    thresholds = _recall_thresholds(score[w[tp1]], num_valid)
    prec, aos = np.zeros(N_SAMPLE_PTS), np.zeros(N_SAMPLE_PTS)
    if thresholds.size == 0:
        return prec, aos
    above = score[None, :] >= thresholds[:, None]
    pref = np.where(ig_det[cand.det] == 0, 2.0 + cand.ov, 1.0)
    winner, assigned = cand.match(pref, above)
    tp_mask = (winner >= 0) & gt_ok[None] & (ig_det[np.maximum(winner, 0)] == 0)
    tp = tp_mask.sum(1)
    fp = ((ig_det == 0)[None] & ~dc_hit[None] & above & ~assigned).sum(1)
    denom = np.maximum(tp + fp, 1)
    k = thresholds.size
    prec[:k] = tp / denom
    if compute_aos:
        delta = gt["alpha"][cand.gts][None] - dt["alpha"][np.maximum(winner, 0)]
        aos[:k] = np.where(tp_mask, (1.0 + np.cos(delta)) / 2.0, 0.0).sum(1) / denom
    return np.maximum.accumulate(prec[::-1])[::-1], np.maximum.accumulate(aos[::-1])[::-1]


def _ap(curve: np.ndarray) -> tuple[float, float]:
    return float(curve[0::4].sum() / 11 * 100), float(curve[1:].sum() / 40 * 100)


def evaluate(gt_annos, dt_annos, classes=("Car", "Pedestrian", "Cyclist")) -> dict:
    """KITTI AP in percent: ``{class: {metric: {difficulty: AP}}}``.

    Metrics ``bev_R11, bev_R40, 3d_R11, 3d_R40`` always, plus ``bbox_R11, bbox_R40`` when the
    detections carry 2D boxes and ``aos_R11, aos_R40`` when they also carry alpha (!= -10).
    """
    if len(gt_annos) != len(dt_annos):
        raise UserError(f"evaluate: {len(gt_annos)} ground-truth frames but {len(dt_annos)} "
                        f"detection frames")
    for c in classes:
        if c not in MIN_OVERLAP:
            raise UserError(f"evaluate: unknown class {c!r} (expected one of "
                            f"{', '.join(MIN_OVERLAP)})")
    gt, dt = _concat(gt_annos, False, "ground-truth"), _concat(dt_annos, True, "detection")
    n_frames = len(gt_annos)
    dt_height = np.abs(dt["bbox"][:, 3] - dt["bbox"][:, 1])
    has_2d = dt_height.size == 0 or bool(
        np.any((dt["bbox"][:, 2] > dt["bbox"][:, 0]) & (dt["bbox"][:, 3] > dt["bbox"][:, 1])))
    compute_aos = has_2d and not np.any(dt["alpha"] == -10)
    metrics = (["bbox"] if has_2d else []) + ["bev", "3d"]

    is_dc = gt["name"] == "DontCare"
    obj = np.flatnonzero(~is_dc)
    det, gti = _frame_pairs(dt["count"], (obj, gt["frame"][obj]), n_frames)
    overlaps = _overlaps(gt, dt, det, gti, metrics)
    dc = np.flatnonzero(is_dc)
    dc_det, dc_gt = _frame_pairs(dt["count"], (dc, gt["frame"][dc]), n_frames)
    dc_ov = paired_image_overlap(dt["bbox"][dc_det], gt["bbox"][dc_gt], criterion="a")
    gt_height = gt["bbox"][:, 3] - gt["bbox"][:, 1]

    results = {}
    for cls in classes:
        thr = MIN_OVERLAP[cls]
        valid_class = np.where(gt["name"] == cls, 1,
                               np.where(gt["name"] == NEIGHBOUR.get(cls, ""), 0, -1))
        dc_hit = np.zeros(dt["name"].size, bool)
        dc_hit[dc_det[dc_ov > thr]] = True
        res = {f"{m}_{r}": {} for m in metrics + (["aos"] if compute_aos else [])
               for r in ("R11", "R40")}
        for d, diff in enumerate(DIFFICULTIES):
            ignore = ((gt["occluded"] > MAX_OCCLUSION[d]) | (gt["truncated"] > MAX_TRUNCATION[d])
                      | (gt_height <= MIN_HEIGHT[d]))
            ig_gt = np.where((valid_class == 1) & ~ignore, 0,
                             np.where((valid_class == 0) | ((valid_class == 1) & ignore), 1, -1))
            ig_det = np.where(dt["name"] == cls, 0, -1)
            if has_2d:
                ig_det = np.where(dt_height < MIN_HEIGHT[d], 1, ig_det)
            num_valid = int((ig_gt == 0).sum())
            for m in metrics:
                keep = (overlaps[m] > thr) & (ig_gt[gti] != -1) & (ig_det[det] != -1)
                cand = _Candidates(gti[keep], det[keep], overlaps[m][keep], gt["frame"])
                no_dc = dc_hit if m == "bbox" else np.zeros_like(dc_hit)
                prec, aos = _class_curves(cand, gt, dt, ig_gt, ig_det, no_dc, num_valid,
                                          compute_aos and m == "bbox")
                res[f"{m}_R11"][diff], res[f"{m}_R40"][diff] = _ap(prec)
                if compute_aos and m == "bbox":
                    res["aos_R11"][diff], res["aos_R40"][diff] = _ap(aos)
        results[cls] = res
    return results


def evaluate_dirs(results_dir, data_root, split: str = "val",
                  classes=("Car", "Pedestrian", "Cyclist")) -> dict:
    """Evaluate KITTI result files ``<results_dir>/<id>.txt`` against ``<data_root>/training/label_2``
    for the frame ids of ``<data_root>/ImageSets/<split>.txt`` (a missing result file = no
    detections)."""
    root, res_dir = Path(data_root), Path(results_dir)
    if not root.is_dir():
        raise UserError(f"KITTI data root not found: {root}")
    if not res_dir.is_dir():
        raise UserError(f"KITTI results folder not found: {res_dir}")
    split_file = root / "ImageSets" / f"{split}.txt"
    if not split_file.is_file():
        raise UserError(f"KITTI split file not found: {split_file}")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    label_dir = root / "training" / "label_2"
    gt_annos, dt_annos = [], []
    for fid in ids:
        label = label_dir / f"{fid}.txt"
        if not label.is_file():
            raise UserError(f"KITTI label file not found: {label} (listed in {split_file})")
        gt_annos.append(read_label_file(label))
        result = res_dir / f"{fid}.txt"
        dt_annos.append(read_result_file(result) if result.is_file()
                        else make_anno([], np.zeros((0, 4)), np.zeros((0, 3)), np.zeros((0, 3)),
                                       np.zeros(0), score=np.zeros(0)))
    return evaluate(gt_annos, dt_annos, classes)


def format_table(results: dict) -> str:
    """Plain-text table of an ``evaluate`` result: one line per class and metric (E / M / H)."""
    lines = []
    for cls, metrics in results.items():
        for metric, by_diff in metrics.items():
            vals = " / ".join(f"{by_diff[d]:6.2f}" for d in DIFFICULTIES)
            lines.append(f"{cls:<14} {metric:<8} {vals}")
    return "\n".join(lines)
