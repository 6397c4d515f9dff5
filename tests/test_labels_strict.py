"""Detection labels every trainer accepts (issue 23, section 3): YOLO files that pass
Ultralytics' label check, integer VOC boxes inside the image, ``difficult`` and GSD kept by COCO,
DOTA boxes clipped to the image, and both VOC AP interpolations (11-point and all-point)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from earthgen.boxes import BoxSet, hbb_to_corners, obb_to_corners, polygon_area
from earthgen.data import (
    DetectionItem,
    read_coco,
    read_detection_dataset,
    read_dota,
    read_dota_file,
    read_voc_file,
    read_yolo_file,
    write_coco,
    write_detection_dataset,
    write_dota_file,
    write_yolo_file,
)
from earthgen.data.voc import write_voc_file
from earthgen.detection import average_precision, evaluate_detections
from earthgen.errors import UserInputError
from earthgen.io import write_png

SIZE = (200, 100)  # width, height


def ultralytics_check(text: str, num_classes: int) -> np.ndarray:
    """Ultralytics' label rules (``ultralytics.data.utils.verify_image_label``), stricter: every
    line ``cls x y w h`` (5 columns) or ``cls x1 y1 ... x4 y4`` (9, OBB), one kind per file; class
    ids integers in ``0..num_classes-1``; every coordinate in [0, 1] (Ultralytics allows 1 %
    slack, this none); w, h > 0 with the box inside [0, 1]; OBB of positive area; no repeated
    rows (Ultralytics drops them with a warning). Returns the rows; AssertionError otherwise."""
    rows = [line.split() for line in text.splitlines()]
    assert all(rows), "blank line"
    if not rows:
        return np.zeros((0, 5))
    ncols = {len(r) for r in rows}
    assert ncols in ({5}, {9}), f"labels need 5 or 9 columns, got {sorted(ncols)}"
    lb = np.array(rows, dtype=np.float64)
    cls, xy = lb[:, 0], lb[:, 1:]
    assert (cls == np.round(cls)).all() and cls.min() >= 0, f"bad class ids {cls}"
    assert cls.max() < num_classes, f"class {cls.max()} >= {num_classes} classes"
    assert xy.min() >= 0.0 and xy.max() <= 1.0, f"coordinates outside [0, 1]: {xy}"
    if lb.shape[1] == 5:
        cx, cy, w, h = xy.T
        assert (w > 0).all() and (h > 0).all(), "zero width or height"
        for c, s in ((cx, w), (cy, h)):
            assert (c - s / 2 >= -1e-12).all() and (c + s / 2 <= 1 + 1e-12).all(), "box outside"
    else:
        assert (polygon_area(xy.reshape(-1, 4, 2)) > 0).all(), "OBB without area"
    assert len(np.unique(lb, axis=0)) == len(lb), "duplicate label rows"
    return lb


def awkward_boxes() -> BoxSet:
    """Inside, partly outside (left/top, right/bottom, turned across a corner), entirely outside,
    zero area, and a repeat of the first box."""
    inside = [10, 20, 50, 60]
    c = np.concatenate(
        [
            hbb_to_corners(
                np.array(
                    [
                        inside,
                        [-30, -10, 40, 30],
                        [150, 70, 260, 130],
                        [300, 10, 340, 40],
                        [80, 40, 80, 70],
                        inside,
                    ],
                    dtype=float,
                )
            ),
            obb_to_corners(np.array([[195.0, 95.0, 30.0, 20.0, 0.5]])),
        ]
    )
    return BoxSet(
        c,
        ["car", "ship", "car", "ship", "car", "car", "plane"],
        difficult=np.array([True, False, False, False, False, True, False]),
    )


def caught(fn, *args, **kw):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, [str(w.message) for w in rec]


# ---------------------------------------------------------------------------------- YOLO


@pytest.mark.parametrize("obb", [False, True])
def test_yolo_writer_output_passes_the_ultralytics_check(tmp_path, obb):
    b = awkward_boxes()
    names, msgs = caught(write_yolo_file, tmp_path / "a.txt", b, SIZE, obb=obb)
    text = (tmp_path / "a.txt").read_text()
    lb = ultralytics_check(text, len(names))
    assert lb.shape[1] == (9 if obb else 5)
    # kept: inside, the two partly outside, the turned one; dropped: outside, zero area; the
    # repeat written once
    assert len(lb) == 4
    assert any(
        "3 boxes partly outside the image (200x100 px) clipped to it; 2 boxes with no "
        "area inside the image dropped" in m
        for m in msgs
    ), msgs
    assert any("1 repeated box written once" in m for m in msgs), msgs
    assert any("YOLO has no field for 2 difficult flags" in m for m in msgs), msgs
    back = read_yolo_file(tmp_path / "a.txt", SIZE, names)
    assert (back.corners >= 0).all() and (back.corners <= np.array(SIZE)).all()
    # the inside box is exact; the partly outside ones are their part inside the image
    np.testing.assert_allclose(back.hbb[0], [10, 20, 50, 60], atol=1e-9)
    np.testing.assert_allclose(back.hbb[1], [0, 0, 40, 30], atol=1e-9)
    np.testing.assert_allclose(back.hbb[2], [150, 70, 200, 100], atol=1e-9)


def test_yolo_inside_boxes_unchanged_and_no_warning(tmp_path):
    b = BoxSet(obb_to_corners(np.array([[100.0, 50.0, 40.0, 10.0, 0.3]])), ["x"])
    _, msgs = caught(write_yolo_file, tmp_path / "o.txt", b, SIZE, obb=True)
    assert msgs == []
    np.testing.assert_allclose(
        read_yolo_file(tmp_path / "o.txt", SIZE, ["x"]).corners, b.corners, atol=1e-9
    )
    ultralytics_check((tmp_path / "o.txt").read_text(), 1)
    # a box touching the image edges exactly: 0 and 1, nothing beyond
    edge = BoxSet(hbb_to_corners(np.array([[0.0, 0.0, 200.0, 100.0]])), ["x"], rotated=False)
    _, msgs = caught(write_yolo_file, tmp_path / "e.txt", edge, SIZE)
    assert msgs == [] and (tmp_path / "e.txt").read_text() == "0 0.5 0.5 1 1\n"


def test_yolo_dataset_lost_fields_warned_once_and_every_file_checks(tmp_path):
    imgs = {
        s: write_png(tmp_path / "src" / f"{s}.png", np.zeros((100, 200, 3), np.uint8))
        for s in ("p", "q")
    }
    b = awkward_boxes()
    b.extra["gsd"] = 0.3
    items = [DetectionItem(imgs["p"], SIZE, b), DetectionItem(imgs["q"], SIZE, b)]
    for fmt in ("yolo", "yolo-obb"):
        _, msgs = caught(write_detection_dataset, items, tmp_path / fmt, fmt)
        lost = [m for m in msgs if "YOLO has no field" in m]
        assert len(lost) == 1 and "4 difficult flags or the GSD of 2 images" in lost[0], lost
        assert sum("clipped to it" in m for m in msgs) == 2  # one per file
        ncls = len((tmp_path / fmt / "classes.txt").read_text().split())
        for f in sorted((tmp_path / fmt / "labels").glob("*.txt")):
            assert len(ultralytics_check(f.read_text(), ncls)) == 4


# ---------------------------------------------------------------------------------- VOC


def test_voc_integer_boxes_inside_the_image(tmp_path):
    item = DetectionItem(tmp_path / "a.png", SIZE, awkward_boxes())
    _, msgs = caught(write_voc_file, tmp_path / "a.xml", item)
    assert any("3 boxes partly outside" in m and "2 boxes with no area" in m for m in msgs), msgs
    text = (tmp_path / "a.xml").read_text()
    back = read_voc_file(tmp_path / "a.xml")
    hbb = back.boxes.hbb
    assert len(hbb) == 5  # VOC keeps repeats; drops the outside and zero-area boxes
    assert (hbb == np.round(hbb)).all() and "." not in "".join(
        t.split(">")[1] for t in text.split("<")[1:] if t.startswith(("xm", "ym"))
    )
    assert (hbb[:, :2] >= 1).all() and (hbb[:, 2] <= SIZE[0]).all() and (hbb[:, 3] <= SIZE[1]).all()
    assert (hbb[:, 2:] >= hbb[:, :2]).all()
    np.testing.assert_array_equal(hbb[:3], [[10, 20, 50, 60], [1, 1, 40, 30], [150, 70, 200, 100]])
    np.testing.assert_array_equal(back.boxes.difficult, [True, False, False, True, False])


def test_voc_round_trip_is_exact_for_integer_boxes(tmp_path):
    hbb = np.array([[1, 1, 30, 27], [5, 7, 200, 100], [100, 50, 101, 52]], dtype=float)
    b = BoxSet(
        hbb_to_corners(hbb),
        ["a", "b", "a"],
        difficult=np.array([False, True, False]),
        rotated=False,
    )
    _, msgs = caught(write_voc_file, tmp_path / "x.xml", DetectionItem(tmp_path / "x.png", SIZE, b))
    assert msgs == []
    one = read_voc_file(tmp_path / "x.xml")
    np.testing.assert_array_equal(one.boxes.hbb, hbb)
    np.testing.assert_array_equal(one.boxes.difficult, b.difficult)
    write_voc_file(tmp_path / "y.xml", one, "x.png")
    assert (tmp_path / "y.xml").read_text() == (tmp_path / "x.xml").read_text()
    # fractional boxes are rounded outward (they still cover the object)
    frac = BoxSet(hbb_to_corners(np.array([[10.2, 20.7, 30.5, 40.01]])), ["a"], rotated=False)
    write_voc_file(tmp_path / "f.xml", DetectionItem(tmp_path / "f.png", SIZE, frac))
    np.testing.assert_array_equal(read_voc_file(tmp_path / "f.xml").boxes.hbb, [[10, 20, 31, 41]])


# ---------------------------------------------------------------------------------- COCO


def test_coco_keeps_difficult_and_gsd(tmp_path):
    b = BoxSet(
        obb_to_corners(np.array([[50.0, 40.0, 20.0, 8.0, 0.4], [120, 60, 30, 10, 0]])),
        ["ship", "car"],
        difficult=np.array([True, False]),
        extra={"gsd": 0.146343590398, "imagesource": "GoogleEarth"},
    )
    c = BoxSet(hbb_to_corners(np.array([[1.0, 2, 3, 4]])), ["car"], extra={"gsd": None})
    items = [DetectionItem(tmp_path / "a.png", SIZE, b), DetectionItem(tmp_path / "b.png", SIZE, c)]
    out = write_coco(tmp_path / "x.json", items)
    data = json.loads(out.read_text())
    assert [a["difficult"] for a in data["annotations"]] == [1, 0, 0]
    assert data["images"][0]["gsd"] == 0.146343590398 and data["images"][1]["gsd"] is None
    assert data["images"][0]["imagesource"] == "GoogleEarth"
    back = read_coco(out)
    np.testing.assert_array_equal(back[0].boxes.difficult, [True, False])
    np.testing.assert_array_equal(back[1].boxes.difficult, [False])
    assert back[0].boxes.extra["gsd"] == 0.146343590398 and back[1].boxes.extra["gsd"] is None
    assert back[0].boxes.extra["imagesource"] == "GoogleEarth"
    np.testing.assert_array_equal(back[0].boxes.corners, b.corners)
    # DOTA -> COCO -> DOTA: the label file comes back byte for byte (header and difficult flags)
    write_dota_file(tmp_path / "d" / "labelTxt" / "a.txt", b)
    dota = read_detection_dataset(tmp_path / "d")
    dota = [DetectionItem(dota[0].image, SIZE, dota[0].boxes)]
    write_detection_dataset(dota, tmp_path / "coco", "coco")
    write_detection_dataset(read_detection_dataset(tmp_path / "coco"), tmp_path / "d2", "dota")
    assert (tmp_path / "d2" / "labelTxt" / "a.txt").read_text() == (
        tmp_path / "d" / "labelTxt" / "a.txt"
    ).read_text()
    bad = json.loads(out.read_text())
    bad["images"][0]["gsd"] = "fine"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserInputError, match="'gsd' must be a number"):
        read_coco(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------- DOTA


def dota_text() -> str:
    return (
        "imagesource:GoogleEarth\ngsd:0.5\n"
        "10 10 50 10 50 40 10 40 plane 0\n"  # inside
        "-5 20 30 20 30 60 -5 60 ship 1\n"  # left edge outside
        "180 80 230 80 230 120 180 120 car 0\n"  # right/bottom outside
        "300 300 340 300 340 330 300 330 car 0\n"
    )  # entirely outside


def test_dota_reader_clips_and_warns_once_per_file(tmp_path):
    p = tmp_path / "labelTxt" / "P1.txt"
    p.parent.mkdir()
    p.write_text(dota_text())
    raw, msgs = caught(read_dota_file, p)
    assert msgs == [] and len(raw) == 4 and raw.corners.min() == -5  # no size: as written
    b, msgs = caught(read_dota_file, p, SIZE)
    assert msgs == [
        f"{p}: 2 boxes partly outside the image (200x100 px) clipped to it; 1 box "
        "with no area inside the image dropped"
    ]
    assert b.labels == ["plane", "ship", "car"] and b.difficult.tolist() == [False, True, False]
    assert b.extra == {"imagesource": "GoogleEarth", "gsd": 0.5}
    np.testing.assert_array_equal(b.corners[0], raw.corners[0])
    np.testing.assert_array_equal(b.corners[1], [[0, 20], [30, 20], [30, 60], [0, 60]])
    np.testing.assert_array_equal(b.corners[2], [[180, 80], [200, 80], [200, 100], [180, 100]])
    # read_dota clips with the size of the image it finds
    write_png(tmp_path / "images" / "P1.png", np.zeros((100, 200, 3), np.uint8))
    (item,), msgs = caught(read_dota, tmp_path)
    assert item.size == SIZE and len(msgs) == 1 and "2 boxes partly outside" in msgs[0]
    np.testing.assert_array_equal(item.boxes.corners, b.corners)


# ---------------------------------------------------------------------------------- mAP


def test_ap_methods_hand_computed():
    rec, prec = [0.25, 0.5, 0.75], [1.0, 2 / 3, 0.6]
    # all-point: 0.25 * (1 + 2/3 + 0.6)
    assert average_precision(rec, prec, "all") == pytest.approx(0.25 * (1 + 2 / 3 + 0.6))
    # 11-point: t = 0, .1, .2 -> 1; .3, .4, .5 -> 2/3; .6, .7 -> 0.6; .8, .9, 1 -> 0
    want07 = (3 * 1 + 3 * 2 / 3 + 2 * 0.6) / 11
    assert average_precision(rec, prec, "voc07") == pytest.approx(want07)
    assert average_precision(rec, prec) == pytest.approx(want07)  # the default: DOTA's official
    assert average_precision([1.0], [1.0], "voc07") == average_precision([1.0], [1.0], "all") == 1
    with pytest.raises(UserInputError) as e:
        average_precision(rec, prec, "coco")
    assert "\n" not in str(e.value) and "'voc07'" in str(e.value) and "'all'" in str(e.value)


def test_evaluate_detections_names_its_method():
    gt = [BoxSet(hbb_to_corners(np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]])), ["car", "car"])]
    pred = [
        BoxSet(
            hbb_to_corners(
                np.array([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31], [0, 0, 10, 10]])
            ),
            ["car"] * 4,
            scores=np.array([0.9, 0.8, 0.7, 0.6]),
        )
    ]
    # TP, FP, TP, FP -> recall .5 .5 1 1, precision 1 .5 2/3 .5
    m07 = evaluate_detections(pred, gt)
    mall = evaluate_detections(pred, gt, ap_method="all")
    assert m07["method"] == "voc07" and mall["method"] == "all"
    assert m07["mAP"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert mall["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    with pytest.raises(UserInputError, match="unknown ap_method 'area'"):
        evaluate_detections(pred, gt, ap_method="area")


def test_augment_reports_name_the_method(tmp_path):
    from earthgen.augment.evaluate import aggregate_runs, evaluate_augmentation, format_table

    part = {"horizontal": {"mAP": 0.5, "AP": {"car": 0.5}, "num_gt": {"car": 2}}}
    gain = {"horizontal": {"mAP": 0.0, "AP": {"car": 0.0}}}
    run = {
        "classes": ["car"],
        "rotated_detector": False,
        "steps": 1,
        "seed": 0,
        "sizes": {},
        "method": "voc07",
        "real": part,
        "augmented": part,
        "gain": gain,
    }
    assert "AP method: 11-point AP (VOC07, DOTA official)" in format_table(run)
    agg = aggregate_runs([run, {**run, "seed": 1}])
    assert agg["method"] == "voc07" and "11-point" in format_table(agg)
    assert "all-point" in format_table({**run, "method": "all"})
    with pytest.raises(UserInputError, match="unknown ap_method"):
        evaluate_augmentation(Path(tmp_path), Path(tmp_path), Path(tmp_path), ap_method="x")
