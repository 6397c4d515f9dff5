"""The compact detector (BoxNet) and VOC mAP for rotated and horizontal boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from earthgen.boxes import BoxSet, box_iou, hbb_to_corners, obb_to_corners
from earthgen.detection import (
    BoxNet,
    average_precision,
    canonical_obb,
    evaluate_detections,
    nms_rotated,
)
from earthgen.detection.net import sparse_iou


def _hbb(*boxes):
    return hbb_to_corners(np.array(boxes, dtype=float))


def test_average_precision_hand_computed():
    # recall 0.5, 0.5, 1.0; precision 1, 1/2, 2/3 -> envelope 1 on (0, .5], 2/3 on (.5, 1]
    assert average_precision([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], ap_method="all") == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )
    assert average_precision([1.0], [1.0]) == pytest.approx(1.0)
    assert average_precision([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_map_matches_a_hand_computed_case():
    gt = [
        BoxSet(_hbb([0, 0, 10, 10], [20, 20, 30, 30]), ["car", "car"]),
        BoxSet(_hbb([0, 0, 10, 10]), ["tank"], difficult=np.array([True])),
    ]
    pred = [
        BoxSet(
            _hbb([0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31], [0, 0, 10, 10]),
            ["car", "car", "car", "car"],
            scores=np.array([0.9, 0.8, 0.7, 0.6]),
        ),
        BoxSet(_hbb([0, 0, 10, 10]), ["tank"], scores=np.array([0.9])),
    ]
    m = evaluate_detections(pred, gt, ["car", "tank"], ap_method="all")
    # car: TP, FP, TP, FP(duplicate) -> recall .5 .5 1 1, precision 1 .5 .667 .5
    assert m["AP"]["car"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert math.isnan(m["AP"]["tank"])  # only a difficult box: no AP, not in the mean
    assert m["mAP"] == pytest.approx(m["AP"]["car"])
    assert m["num_gt"] == {"car": 2, "tank": 0}


def test_rotated_vs_horizontal_iou_in_map():
    diamond = obb_to_corners(np.array([[50, 50, 20, 20, math.pi / 4]]))  # a square turned 45°
    square = _hbb(
        [
            50 - 10 * math.sqrt(2),
            50 - 10 * math.sqrt(2),
            50 + 10 * math.sqrt(2),
            50 + 10 * math.sqrt(2),
        ]
    )
    gt = [BoxSet(diamond, ["x"])]
    pred = [BoxSet(square, ["x"], scores=np.array([1.0]))]
    assert box_iou(square, diamond)[0, 0] == pytest.approx(0.5)
    assert evaluate_detections(pred, gt, iou_threshold=0.6, rotated=True)["mAP"] == 0.0
    assert evaluate_detections(pred, gt, iou_threshold=0.6, rotated=False)["mAP"] == pytest.approx(
        1.0
    )


def test_canonical_obb_and_sparse_iou_nms():
    rng = np.random.default_rng(0)
    obb = np.c_[rng.uniform(0, 100, (40, 2)), rng.uniform(2, 20, (40, 2)), rng.uniform(-4, 4, 40)]
    c = obb_to_corners(obb)
    can = canonical_obb(c)
    assert (can[:, 2] >= can[:, 3]).all() and (can[:, 4] >= 0).all() and (can[:, 4] < math.pi).all()
    assert np.allclose(np.diag(box_iou(obb_to_corners(can), c)), 1.0)  # the same rectangles
    assert np.allclose(sparse_iou(c), box_iou(c, c))
    dup = np.concatenate([c[:1], c[:1] + 0.5, c[1:2]])
    keep = nms_rotated(dup, np.array([0.5, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [1, 2]


def test_decoding_perfect_maps_recovers_rotated_boxes():
    model = BoxNet(classes=("car", "tank"), width=8, stride=2)
    boxes = BoxSet(
        obb_to_corners(np.array([[20.3, 30.7, 16, 6, 0.5], [44, 12, 9, 9, 0.0]])), ["car", "tank"]
    )
    t = model.targets([boxes], 64, 64)
    logits = torch.where(t["heatmap"] == 1, torch.tensor(8.0), torch.tensor(-8.0))
    reg = t["reg"]
    model.forward = lambda images: {
        "heatmap": logits,
        "size": reg[:, 0:2],
        "angle": reg[:, 2:4],
        "offset": reg[:, 4:6],
    }
    out = model.detect(torch.zeros(1, 3, 64, 64), score_threshold=0.5)[0]
    assert sorted(out.labels) == ["car", "tank"]
    for lab in ("car", "tank"):
        i, j = out.labels.index(lab), boxes.labels.index(lab)
        assert box_iou(out.corners[i : i + 1], boxes.corners[j : j + 1])[0, 0] > 0.99


def _rect_dataset(n: int, size: int = 64, seed: int = 0):
    """Images with bright rotated rectangles ("car") and dark squares ("tank") on grey."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    imgs, sets = [], []
    for _ in range(n):
        im = Image.new("RGB", (size, size), (120, 120, 120))
        d = ImageDraw.Draw(im)
        corners, labels = [], []
        for k in range(3):
            cx, cy = rng.uniform(10, size - 10, 2)
            if k % 2 == 0:
                c = obb_to_corners(np.array([[cx, cy, 14, 6, rng.uniform(0, math.pi)]]))[0]
                d.polygon([tuple(p) for p in c], fill=(240, 240, 60))
                labels.append("car")
            else:
                c = _hbb([cx - 4, cy - 4, cx + 4, cy + 4])[0]
                d.polygon([tuple(p) for p in c], fill=(20, 20, 20))
                labels.append("tank")
            corners.append(c)
        imgs.append(np.asarray(im))
        sets.append(BoxSet(np.array(corners), labels))
    return imgs, sets


class _Samples:
    def __init__(self, imgs, sets):
        from earthgen.detection.train import DetectionSamples

        self.s = DetectionSamples.__new__(DetectionSamples)
        self.s.images, self.s.boxes, self.s.classes = imgs, sets, ["car", "tank"]


def test_training_lowers_the_loss_and_save_load(tmp_path):
    from earthgen.detection import train_detector

    imgs, sets = _rect_dataset(8)
    torch.manual_seed(0)
    m = train_detector(
        [],
        ["car", "tank"],
        steps=40,
        batch_size=4,
        crop=64,
        width=8,
        lr=3e-3,
        out=tmp_path / "det",
        progress=False,
        samples=_Samples(imgs, sets).s,
    )
    losses = [v for _, v in m.loss_history]
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4])
    m2 = BoxNet.from_pretrained(tmp_path / "det")
    x = torch.from_numpy(imgs[0]).permute(2, 0, 1).float()[None] / 255
    a, b = m.detect(x)[0], m2.detect(x)[0]
    assert (
        a.labels == b.labels
        and np.allclose(a.corners, b.corners)
        and np.allclose(a.scores, b.scores)
    )


@pytest.mark.slow
def test_detector_learns_rotated_rectangles():
    from earthgen.detection import train_detector
    from earthgen.detection.train import predict

    imgs, sets = _rect_dataset(64)
    m = train_detector(
        [],
        ["car", "tank"],
        steps=400,
        batch_size=8,
        crop=64,
        width=16,
        lr=3e-3,
        progress=False,
        samples=_Samples(imgs, sets).s,
    )
    timgs, tsets = _rect_dataset(16, seed=1)
    preds = predict(m, [(None, None, s) for s in tsets], images=timgs, score_threshold=0.01)
    res = evaluate_detections(preds, tsets, ["car", "tank"])
    assert res["mAP"] > 0.6, res


def test_evaluate_detector_takes_the_ap_method():
    """``evaluate_detector`` computes 11-point (VOC07, the default) or all-point AP and names it."""
    from earthgen.detection import evaluate_detector
    from earthgen.errors import UserInputError

    gt = [BoxSet(_hbb([0, 0, 10, 10], [20, 20, 30, 30]), ["car", "car"])]
    pred = [
        BoxSet(
            _hbb([0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]),
            ["car"] * 3,
            scores=np.array([0.9, 0.8, 0.7]),
        )
    ]
    model = BoxNet(classes=("car",), width=8)
    items = [(None, None, g) for g in gt]
    v07 = evaluate_detector(model, items, predictions=pred)
    alls = evaluate_detector(model, items, predictions=pred, ap_method="all")
    # recall .5 .5 1, precision 1 .5 .667: all-point .5 + .5 * 2/3; 11-point (6 + 5 * 2/3) / 11
    assert v07["method"] == "voc07" and alls["method"] == "all"
    assert alls["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert v07["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    with pytest.raises(UserInputError, match="ap_method"):
        evaluate_detector(model, items, predictions=pred, ap_method="coco")
