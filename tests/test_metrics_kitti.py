"""KITTI protocol on crafted label/result sets with hand-computed AP (hrnas.metrics.kitti).

AP arithmetic used below (official semantics): the scores of the true positives, sorted, are
sampled at recall positions k/40 (k = 0..40); with n valid GT boxes and every TP ranked first,
the k-th sample is TP number i_k = first i >= i_{k-1}+1 with (2i+3)/n >= 2k/40, and the last TP is
always sampled. Precision p_k is made monotone (max over k' >= k); AP_R11 = sum(p_0, p_4, .., p_40)
/ 11, AP_R40 = sum(p_1..p_40) / 40. (n below is a multiple of 40, so no sample is an exact tie.)
"""
import math

import numpy as np
import pytest

from hrnas.errors import UserError
from hrnas.metrics import kitti

DIMS = {"Car": (1.5, 1.6, 3.9), "Van": (2.2, 1.9, 5.0), "Pedestrian": (1.7, 0.6, 0.8),
        "Cyclist": (1.7, 0.6, 1.8), "DontCare": (-1, -1, -1)}


def obj(name, slot, h2d=50.0, occ=0, trunc=0.0, far=False, alpha=0.3):
    """An object in grid slot 0..9 of a frame: 2D boxes and BEV footprints never overlap."""
    top = 300.0 if far else 100.0
    return {"name": name, "bbox": [10 + 60 * slot, top, 50 + 60 * slot, top + h2d],
            "dims": DIMS[name], "loc": [-25 + 5 * slot, 1.6, 60 if far else 20], "ry": 0.2,
            "occ": occ, "trunc": trunc, "alpha": alpha}


def anno(objs, scores=None):
    return kitti.make_anno([o["name"] for o in objs], [o["bbox"] for o in objs],
                           [o["dims"] for o in objs], [o["loc"] for o in objs],
                           [o["ry"] for o in objs], score=scores,
                           truncated=[o["trunc"] for o in objs],
                           occluded=[o["occ"] for o in objs], alpha=[o["alpha"] for o in objs])


def frames_of(name, n, per_frame=10, **kw):
    return [[obj(name, s, **kw) for s in range(min(per_frame, n - f))]
            for f in range(0, n, per_frame)]


def scored(frames, start=0.99, step=0.001):
    """Detections identical to the objects, scores decreasing in order."""
    out, s = [], start
    for objs in frames:
        out.append(anno(objs, [s - step * i for i in range(len(objs))]))
        s -= step * len(objs)
    return out


def o_slot(o):
    return int(round((o["bbox"][0] - 10) / 60))


def check_all(res, metrics, value):
    for m in metrics:
        for d in kitti.DIFFICULTIES:
            assert res[m][d] == pytest.approx(value), (m, d)


ALL = ("bbox_R11", "bbox_R40", "bev_R11", "bev_R40", "3d_R11", "3d_R40", "aos_R11", "aos_R40")


def test_perfect_detections_give_100_everywhere():
    frames = frames_of("Car", 80) + frames_of("Pedestrian", 80) + frames_of("Cyclist", 80)
    res = kitti.evaluate([anno(f) for f in frames], scored(frames))
    for cls in ("Car", "Pedestrian", "Cyclist"):
        assert sorted(res[cls]) == sorted(ALL)
        check_all(res[cls], ALL, 100.0)
    lines = kitti.format_table(res).splitlines()
    assert len(lines) == 3 * 8 and lines[0].split() == ["Car", "bbox_R11", "100.00", "/", "100.00",
                                                        "/", "100.00"]


def test_fewer_than_41_gt_cannot_reach_100():
    # n = 20 perfect: every TP is sampled (i_k = k), p_0..p_19 = 1, p_20..p_40 = 0
    frames = frames_of("Car", 20)
    res = kitti.evaluate([anno(f) for f in frames], scored(frames), classes=("Car",))
    check_all(res["Car"], ("bbox_R40", "bev_R40", "3d_R40"), 19 / 40 * 100)   # p_1..p_19
    check_all(res["Car"], ("bbox_R11", "bev_R11", "3d_R11"), 5 / 11 * 100)    # p_0,4,8,12,16


def test_misses_and_false_positives_hand_computed():
    # n = 80 GT; the first 5 of every frame of 10 are found (40 TP), 40 GT are missed.
    frames = frames_of("Car", 80)
    gts = [anno(f) for f in frames]
    found = [f[:5] for f in frames]
    # i_0 = 0, i_k = 2k - 1 (k >= 1) while i <= 39: k = 0..20 sampled -> p_0..p_20 = 1
    res = kitti.evaluate(gts, scored(found), classes=("Car",))["Car"]
    check_all(res, ("bbox_R40", "bev_R40", "3d_R40", "aos_R40"), 20 / 40 * 100)  # 50.0
    check_all(res, ("bbox_R11", "bev_R11", "3d_R11", "aos_R11"), 6 / 11 * 100)   # k = 0..20

    # add a false positive scored just above every TP: at each sampled threshold TP == FP
    dets = []
    for f, objs in enumerate(found):
        rows, scores = [], []
        for i, o in enumerate(objs):
            s = 0.99 - 0.01 * (5 * f + i)
            rows += [o, obj("Car", o_slot(o), far=True)]
            scores += [s, s + 0.005]
        dets.append(anno(rows, scores))
    res = kitti.evaluate(gts, dets, classes=("Car",))["Car"]
    check_all(res, ("bbox_R40", "bev_R40", "3d_R40"), 0.5 * 20 / 40 * 100)  # 25.0
    check_all(res, ("bbox_R11", "bev_R11", "3d_R11"), 0.5 * 6 / 11 * 100)


def test_difficulty_height_limit_and_neighbour_class():
    easy = frames_of("Car", 80)
    medium = frames_of("Car", 40, h2d=30.0)          # 30 px: moderate/hard only, never detected
    gts, dets = [anno(f) for f in easy], scored(easy)
    gts += [anno(f) for f in medium]
    dets += [anno([], []) for _ in medium]
    # a frame with: a tiny GT car (20 px, ignored everywhere) that is missed, a tiny unmatched
    # high-score detection (ignored), a Van detected as Car (neither TP nor FP), a missed Van
    gts.append(anno([obj("Car", 0, h2d=20.0), obj("Van", 1), obj("Van", 2)]))
    dets.append(anno([obj("Car", 5, h2d=20.0, far=True), obj("Car", 1, far=False) | {
        "dims": DIMS["Van"], "bbox": obj("Van", 1)["bbox"]}], [0.999, 0.998]))
    res = kitti.evaluate(gts, dets, classes=("Car",))["Car"]
    for m in ("bbox", "bev", "3d", "aos"):
        assert res[f"{m}_R40"]["easy"] == pytest.approx(100.0)
        assert res[f"{m}_R11"]["easy"] == pytest.approx(100.0)
        # moderate/hard: n = 120, 80 TP: i_k = 3k - 1 up to k = 26 (i = 77), then the last TP
        # (i = 79) at k = 27 -> p_0..p_27 = 1
        for d in ("moderate", "hard"):
            assert res[f"{m}_R40"][d] == pytest.approx(27 / 40 * 100)
            assert res[f"{m}_R11"][d] == pytest.approx(7 / 11 * 100)


def test_dontcare_region_only_excuses_2d_false_positives():
    frames = frames_of("Car", 80)
    gts, dets = [anno(f) for f in frames], scored(frames)
    dc = obj("DontCare", 0, far=True) | {"bbox": [0.0, 290.0, 100.0, 360.0], "loc": [-1000] * 3}
    gts[0] = anno([o for o in frames[0]] + [dc])
    intruder = obj("Car", 0, far=True)  # 2D box inside the DontCare box, real 3D box far away
    dets[0] = anno(frames[0] + [intruder], list(dets[0]["score"]) + [1.0])
    res = kitti.evaluate(gts, dets, classes=("Car",))["Car"]
    check_all(res, ("bbox_R11", "bbox_R40"), 100.0)
    # BEV / 3D: one FP above all 80 TPs; interpolated precision is 80/81 at every sample
    check_all(res, ("bev_R11", "bev_R40", "3d_R11", "3d_R40"), 80 / 81 * 100)


def test_aos_half_for_orthogonal_alpha():
    frames = frames_of("Car", 80)
    dets = scored(frames)
    for d in dets:
        d["alpha"] = d["alpha"] + math.pi / 2     # similarity (1 + cos 90deg) / 2 = 0.5
    res = kitti.evaluate([anno(f) for f in frames], dets, classes=("Car",))["Car"]
    check_all(res, ("bbox_R40", "bev_R40"), 100.0)
    check_all(res, ("aos_R11", "aos_R40"), 50.0)


def test_detections_without_2d_boxes_skip_bbox_metrics():
    frames = frames_of("Car", 80)
    dets = scored(frames)
    for d in dets:
        d["bbox"][:] = 0.0
    res = kitti.evaluate([anno(f) for f in frames], dets, classes=("Car",))["Car"]
    assert sorted(res) == ["3d_R11", "3d_R40", "bev_R11", "bev_R40"]
    check_all(res, res.keys(), 100.0)


LABEL = ("Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
         "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n")


def test_io_roundtrip_and_errors(tmp_path):
    p = tmp_path / "000001.txt"
    p.write_text(LABEL)
    gt = kitti.read_label_file(p)
    assert list(gt["name"]) == ["Car", "DontCare"]
    np.testing.assert_allclose(gt["dimensions"][0], [1.65, 1.67, 3.64])
    np.testing.assert_allclose(gt["location"][0], [-0.65, 1.71, 46.70])
    assert gt["occluded"].tolist() == [0, -1] and gt["rotation_y"][0] == pytest.approx(-1.59)

    dets = anno([obj("Car", 1), obj("Pedestrian", 2)], [0.75, 0.5])
    out = tmp_path / "res" / "000001.txt"
    kitti.write_result_file(out, dets)
    back = kitti.read_result_file(out)
    for k in ("bbox", "dimensions", "location", "rotation_y", "score", "alpha"):
        np.testing.assert_allclose(back[k], dets[k], atol=1e-4)
    assert [f.name for f in out.parent.iterdir()] == ["000001.txt"]  # no temp file left

    bad = tmp_path / "bad.txt"
    for text, msg in [(LABEL.splitlines()[0] + " 0.9\n" + "Car 0 0\n", r"bad.txt:2: .*16 fields"),
                      ("Bus" + LABEL.splitlines()[0][3:] + " 0.9\n", r"bad.txt:1: unknown object type 'Bus'"),
                      (LABEL.splitlines()[0].replace("46.70", "nan") + " 0.9\n", r"bad.txt:1: non-finite"),
                      (LABEL.splitlines()[0].replace("46.70", "4x") + " 0.9\n", r"bad.txt:1: value '4x'")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=msg):
            kitti.read_result_file(bad)
    with pytest.raises(UserError, match=r"000001.txt:1: .*15 fields"):
        kitti.read_label_file(out)
    with pytest.raises(UserError, match="unknown class 'Bus'"):
        kitti.evaluate([gt], [back], classes=("Bus",))


def label_text(a):
    """15-field label lines of an annotation dict."""
    return "".join(
        f"{n} {a['truncated'][i]} {a['occluded'][i]} {a['alpha'][i]} "
        + " ".join(str(v) for v in [*a["bbox"][i], *a["dimensions"][i], *a["location"][i]])
        + f" {a['rotation_y'][i]}\n" for i, n in enumerate(a["name"]))


def test_evaluate_dirs_matches_in_memory(tmp_path):
    root, res = tmp_path / "kitti", tmp_path / "results"
    frames = frames_of("Car", 30) + frames_of("Pedestrian", 10)
    gts, dets = [anno(f) for f in frames], scored(frames)
    dets[1] = anno([], [])                       # frame 1 has no result file at all
    (root / "training" / "label_2").mkdir(parents=True)
    (root / "ImageSets").mkdir()
    ids = [f"{i:06d}" for i in range(len(frames))]
    (root / "ImageSets" / "val.txt").write_text("\n".join(ids) + "\n")
    for i, (fid, g) in enumerate(zip(ids, gts)):
        (root / "training" / "label_2" / f"{fid}.txt").write_text(label_text(g))
        if i != 1:
            kitti.write_result_file(res / f"{fid}.txt", dets[i])
    got = kitti.evaluate_dirs(res, root, "val")
    want = kitti.evaluate(gts, dets)
    for cls in want:
        for m in want[cls]:
            assert got[cls][m] == pytest.approx(want[cls][m], abs=1e-9)
    assert got["Car"]["bev_R40"]["easy"] < 100.0   # the 10 cars of frame 1 are missed
    with pytest.raises(UserError, match="data root not found"):
        kitti.evaluate_dirs(res, tmp_path / "nope")
    with pytest.raises(UserError, match=r"split file not found: .*test.txt"):
        kitti.evaluate_dirs(res, root, "test")
