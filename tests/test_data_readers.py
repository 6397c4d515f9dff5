"""Dataset readers and label writers of :mod:`earthgen.data` on real fixtures and small files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path

from earthgen.boxes import BoxSet, obb_to_corners
from earthgen.classes import PALETTE
from earthgen.data import (
    DetectionItem,
    detect_format,
    read_box_csv,
    read_caption_csv,
    read_caption_json,
    read_caption_parquet,
    read_captions,
    read_coco,
    read_detection_dataset,
    read_dota_file,
    read_geotiff,
    read_mask,
    read_mask_folder,
    read_voc_file,
    read_yolo_file,
    write_coco,
    write_detection_dataset,
    write_dota_file,
    write_yolo_file,
)
from earthgen.errors import UserInputError
from earthgen.io import write_geotiff, write_png

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "data" / "readers"


def fixture(rel: str) -> Path:
    return fixture_path(rel)


def rotated_boxes() -> BoxSet:
    """Three rotated boxes (corner order starting anywhere) and one axis-aligned box, px."""
    obb = np.array(
        [
            [200.0, 150.0, 80.0, 30.0, 0.4],
            [60.5, 300.25, 40.0, 12.0, -1.1],
            [500.0, 400.0, 33.3, 70.0, 2.5],
        ]
    )
    c = obb_to_corners(obb)
    c[1] = np.roll(c[1], 2, axis=0)  # start at another corner: order must survive
    c = np.concatenate([c, [[[10, 20], [90, 20], [90, 60], [10, 60]]]])
    return BoxSet(
        c, ["plane", "ship", "plane", "harbor"], difficult=np.array([False, True, False, False])
    )


def assert_same_boxes(a: BoxSet, b: BoxSet, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert a.labels == b.labels
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(a.corners, b.corners)
    else:
        np.testing.assert_allclose(a.corners, b.corners, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------- captions


def test_rsicd_jsonl_excerpt():
    path = fixture("captions/rsicd_val_excerpt.jsonl")
    n_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    recs = read_captions(path)
    assert len(recs) == n_lines == 24
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for rec, r in zip(recs, raw, strict=True):
        assert rec.image.name == r["file_name"]
        assert rec.captions and all(c.strip() for c in rec.captions)
        assert rec.captions == [c.strip() for c in r["captions"]]
        assert rec.metadata["class"] == r["class"]
        assert rec.gsd is None


def test_caption_field_variants_and_units(tmp_path):
    lines = [
        {
            "image": "a.png",
            "text": "a harbour",
            "resolution": "50 cm",
            "latitude": 48.1,
            "lng": 11.5,
            "source": "x",
        },
        {
            "image_path": "b.png",
            "sentences": [{"raw": "a field ", "tokens": ["a"]}, {"raw": "  "}, {"raw": "farmland"}],
            "gsd": 0.3,
        },
        {"filename": "c.png", "caption": "roads", "gsd": "2m/px"},
    ]
    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = read_captions(p)
    assert [r.image for r in recs] == [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    assert recs[0].gsd == pytest.approx(0.5) and recs[0].lat == 48.1 and recs[0].lon == 11.5
    assert recs[0].metadata == {"source": "x"}
    assert recs[1].captions == ["a field", "farmland"] and recs[1].gsd == 0.3
    assert recs[2].gsd == 2.0


def test_caption_folder_json_csv_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "tiles"
    folder.mkdir()
    for stem, text in (("t1", "a river\n\nwith a bridge\n"), ("t2", "dense houses")):
        write_png(folder / f"{stem}.png", np.zeros((4, 4, 3), np.uint8))
        (folder / f"{stem}.txt").write_text(text)
    recs = read_captions(folder)
    assert [r.image.name for r in recs] == ["t1.png", "t2.png"]
    assert recs[0].captions == ["a river", "with a bridge"]
    assert recs[1].load_image().shape == (4, 4, 3)

    kp = tmp_path / "dataset_rsicd.json"  # Karpathy split file
    kp.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "filename": "airport_1.jpg",
                        "imgid": 0,
                        "split": "val",
                        "sentences": [{"raw": "many planes ."}],
                    }
                ]
            }
        )
    )
    (rec,) = read_caption_json(kp)
    assert rec.captions == ["many planes ."] and rec.metadata["split"] == "val"

    cp = tmp_path / "caps.csv"
    cp.write_text('file_name,caption,gsd\nx.png,a port,0.6\ny.png,"a, b",\n')
    recs = read_caption_csv(cp)
    assert [r.captions for r in recs] == [["a port"], ["a, b"]] and recs[1].gsd is None

    png = (folder / "t2.png").read_bytes()
    table = pa.table(
        {
            "image": [{"bytes": png, "path": "t2.png"}],
            "text": ["dense houses"],
            "resolution": [0.8],
            "lat": [1.0],
            "lon": [2.0],
        }
    )
    pq.write_table(table, tmp_path / "git.parquet")
    (rec,) = read_caption_parquet(tmp_path / "git.parquet")
    assert rec.caption == "dense houses" and rec.gsd == 0.8 and (rec.lat, rec.lon) == (1.0, 2.0)
    assert rec.load_image().shape == (4, 4, 3)


def test_caption_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"image": "a.png", "caption": "ok"}\n\n{"image": "b.png", "caption": \n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:3: invalid JSON"):
        read_captions(p)
    p.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "label": "x"}\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:2: no caption field"):
        read_captions(p)
    p.write_text('{"image": "a.png", "caption": "   "}\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:1: empty caption"):
        read_captions(p)
    p.write_text('{"image": "a.png", "caption": "x", "gsd": "fast"}\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl:1: cannot read gsd"):
        read_captions(p)
    with pytest.raises(UserInputError, match="not found"):
        read_captions(tmp_path / "missing.jsonl")
    folder = tmp_path / "f"
    folder.mkdir()
    write_png(folder / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(UserInputError, match="without a same-stem .txt"):
        read_captions(folder)


# ---------------------------------------------------------------------------------- DOTA


def test_dota_sample_and_round_trip(tmp_path):
    src = SAMPLES / "dota" / "labelTxt" / "P0001.txt"
    b = read_dota_file(src)
    assert len(b) == 4 and b.labels[:2] == ["plane", "small-vehicle"]
    assert b.extra == {"imagesource": "GoogleEarth", "gsd": 0.146343590398}
    np.testing.assert_array_equal(b.difficult, [False, True, False, False])
    np.testing.assert_array_equal(
        b.corners[1], [[120.5, 40], [160.5, 60], [140.5, 100], [100.5, 80]]
    )
    out = write_dota_file(tmp_path / "P0001.txt", b)
    assert out.read_text() == src.read_text()  # byte-identical for this canonical file
    b2 = read_dota_file(out)
    assert_same_boxes(b, b2)
    np.testing.assert_array_equal(b.difficult, b2.difficult)
    assert b2.extra == b.extra

    r = rotated_boxes()
    write_dota_file(tmp_path / "r.txt", r)
    r2 = read_dota_file(tmp_path / "r.txt")
    assert_same_boxes(r, r2)  # exact floats, corner order kept
    np.testing.assert_array_equal(r.difficult, r2.difficult)
    r3 = read_dota_file(write_dota_file(tmp_path / "r3.txt", r2))
    assert_same_boxes(r2, r3)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("1 2 3 4 5 6", "expected 10 fields (8 coordinates, class, difficult), got 6"),
        ("1 2 3 4 x 6 7 8 car 0", "coordinate 5 is not a number: 'x'"),
        ("1 2 3 4 5 6 7 8 car yes", "difficult flag must be 0 or 1, got 'yes'"),
    ],
)
def test_dota_malformed_names_file_and_line(tmp_path, line, reason):
    lines = (SAMPLES / "dota" / "labelTxt" / "P0001.txt").read_text().splitlines()
    lines.insert(6, line)
    p = tmp_path / "labels" / "P0001.txt"
    p.parent.mkdir()
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError) as e:
        read_dota_file(p)
    assert str(e.value) == f"{p}:7: {reason}"


def test_dota_label_with_space_refused(tmp_path):
    b = BoxSet(np.zeros((1, 4, 2)), ["small vehicle"])
    with pytest.raises(UserInputError, match="no spaces"):
        write_dota_file(tmp_path / "x.txt", b)
    assert not (tmp_path / "x.txt").exists()


# ---------------------------------------------------------------------------------- YOLO


def test_yolo_hbb_and_obb_round_trip(tmp_path):
    size = (640, 512)
    hbb = BoxSet(
        [
            [[10, 20], [90, 20], [90, 60], [10, 60]],
            [[100.5, 200.25], [300, 200.25], [300, 260], [100.5, 260]],
        ],
        ["car", "ship"],
        rotated=False,
    )
    names = write_yolo_file(tmp_path / "h.txt", hbb, size)
    assert names == ["car", "ship"]
    assert (tmp_path / "h.txt").read_text().splitlines()[0].split()[0] == "0"
    h2 = read_yolo_file(tmp_path / "h.txt", size, names)
    assert_same_boxes(hbb, h2, rtol=1e-12, atol=1e-9)
    assert h2.rotated is False

    r = rotated_boxes()
    names = write_yolo_file(tmp_path / "o.txt", r, size, obb=True)
    r2 = read_yolo_file(tmp_path / "o.txt", size, names)
    assert_same_boxes(r, r2, rtol=1e-12, atol=1e-9)  # rotated corners and their order kept
    assert r2.rotated is True
    write_yolo_file(tmp_path / "o2.txt", r2, size, names, obb=True)
    assert_same_boxes(r2, read_yolo_file(tmp_path / "o2.txt", size, names), rtol=1e-12, atol=1e-9)

    with pytest.warns(UserWarning, match="enclosing horizontal"):
        write_yolo_file(tmp_path / "lossy.txt", r, size, names)
    np.testing.assert_allclose(
        read_yolo_file(tmp_path / "lossy.txt", size, names).hbb, r.hbb, atol=1e-9
    )


def test_yolo_real_solaris_labels():
    path = fixture("imagery/solaris_sample_geotiff_yolo.txt")
    b = read_yolo_file(path, (900, 900))
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert len(b) == len(rows) == 43 and set(b.labels) == {"0"}
    cx, cy, w, h = np.array([[float(v) for v in r[1:]] for r in rows]).T * 900
    np.testing.assert_allclose(
        b.hbb, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), atol=1e-9
    )
    assert (b.hbb >= -1e-6).all() and (b.hbb <= 900 + 1e-6).all()


def test_yolo_malformed(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("0 0.5 0.5 0.1 0.1\n\n1 0.5 0.5 0.1\n")
    with pytest.raises(UserInputError, match=re.escape(f"{p}:3: expected 5 fields")):
        read_yolo_file(p, (100, 100))
    p.write_text("0 50 40 10 12\n")
    with pytest.raises(UserInputError, match=re.escape(f"{p}:1: coordinates must be normalised")):
        read_yolo_file(p, (100, 100))
    p.write_text("car 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UserInputError, match=re.escape(f"{p}:1: class must be an integer id")):
        read_yolo_file(p, (100, 100))
    p.write_text("0 0.5 0.5 0.1 0.1\n4 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UserInputError, match=re.escape(f"{p}:2: class id 4 outside")):
        read_yolo_file(p, (100, 100), ["a", "b"])


# ---------------------------------------------------------------------------------- COCO


def coco_dict() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 640, "height": 480},
            {"id": 9, "file_name": "b.png", "width": 300, "height": 200},
            {"id": 11, "file_name": "empty.png", "width": 64, "height": 64},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "bbox": [10.5, 20.25, 30.125, 40.0],
                "area": 1205.0,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 5,
                "bbox": [100, 50, 0.333, 17.7],
                "iscrowd": 1,
            },
            {
                "id": 3,
                "image_id": 9,
                "category_id": 3,
                "bbox": [1e-3, 2.5, 299.999, 197.5],
                "segmentation": {"counts": "xyz", "size": [200, 300]},
            },
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "storage-tank"}],
    }


def test_coco_round_trip_and_ids(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(coco_dict()))
    items = read_coco(src)
    assert [it.size for it in items] == [(640, 480), (300, 200), (64, 64)]
    assert [len(it.boxes) for it in items] == [2, 1, 0]
    a = items[0].boxes
    assert a.labels == ["car", "storage-tank"] and a.rotated is False
    np.testing.assert_allclose(a.hbb[0], [10.5, 20.25, 40.625, 60.25])
    np.testing.assert_array_equal(a.extra["iscrowd"], [False, True])

    out = write_coco(tmp_path / "out.json", items)
    back = read_coco(out)
    data = json.loads(out.read_text())
    assert [c["id"] for c in data["categories"]] == [3, 5]  # ids of the source kept
    assert [im["id"] for im in data["images"]] == [7, 9, 11]
    for x, y in zip(items, back, strict=True):
        assert x.size == y.size and x.image.name == y.image.name
        assert_same_boxes(x.boxes, y.boxes)  # corners via the 4-point polygon: exact
        np.testing.assert_array_equal(x.boxes.extra["iscrowd"], y.boxes.extra["iscrowd"])
    for i, ann in enumerate(data["annotations"]):
        np.testing.assert_allclose(ann["bbox"], coco_dict()["annotations"][i]["bbox"], rtol=1e-12)


def test_coco_rotated_segmentation(tmp_path):
    r = rotated_boxes()
    item = DetectionItem(tmp_path / "r.png", (640, 512), r)
    out = write_coco(tmp_path / "r.json", [item])
    (back,) = read_coco(out)
    assert_same_boxes(r, back.boxes)  # corner order kept through segmentation
    (hb,) = read_coco(out, segmentation="ignore")
    np.testing.assert_allclose(hb.boxes.hbb, r.hbb, atol=1e-9)
    (ob,) = read_coco(out, segmentation="obb")  # min-area rectangle of the same rectangles
    from earthgen.boxes import box_iou

    assert np.diag(box_iou(ob.boxes.corners, r.corners)) == pytest.approx(1.0, abs=1e-9)


def test_coco_to_yolo_to_coco_agree(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(coco_dict()))
    items = read_coco(src)
    write_detection_dataset(items, tmp_path / "yolo", "yolo")
    assert detect_format(tmp_path / "yolo") == "yolo"
    sizes = {it.image.stem: it.size for it in items}
    back_items = []
    for it in items:
        lab = tmp_path / "yolo" / "labels" / f"{it.image.stem}.txt"
        classes = (tmp_path / "yolo" / "classes.txt").read_text().split()
        back_items.append(
            DetectionItem(
                it.image, sizes[it.image.stem], read_yolo_file(lab, sizes[it.image.stem], classes)
            )
        )
    write_coco(tmp_path / "again.json", back_items)
    orig = json.loads(src.read_text())["annotations"]
    again = json.loads((tmp_path / "again.json").read_text())["annotations"]
    assert len(orig) == len(again)
    names = {3: "car", 5: "storage-tank"}
    cats = {
        c["id"]: c["name"] for c in json.loads((tmp_path / "again.json").read_text())["categories"]
    }
    for o, g in zip(orig, again, strict=True):
        np.testing.assert_allclose(g["bbox"], o["bbox"], rtol=1e-6, atol=1e-9)
        assert cats[g["category_id"]] == names[o["category_id"]]


def test_coco_malformed(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [],\n "annotations": [\n  {"id": 1,}\n]}')
    with pytest.raises(UserInputError, match=r"bad\.json:3: invalid JSON"):
        read_coco(p)
    d = coco_dict()
    d["annotations"][1]["category_id"] = 42
    p.write_text(json.dumps(d))
    with pytest.raises(UserInputError, match=r"annotations\[1\] \(id 2\): category_id 42"):
        read_coco(p)
    d = coco_dict()
    d["annotations"][0]["bbox"] = [1, 2, 3]
    p.write_text(json.dumps(d))
    with pytest.raises(UserInputError, match=r"bad\.json: annotations\[0\] \(id 1\): bbox must"):
        read_coco(p)
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(UserInputError, match="not a COCO file"):
        read_coco(p)


# ---------------------------------------------------------------------- unified datasets


def make_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, (w, h) in sizes.items():
        out[stem] = write_png(folder / f"{stem}.png", np.full((h, w, 3), 90, np.uint8))
    return out


@pytest.mark.parametrize("fmt", ["dota", "yolo-obb", "coco", "yolo", "voc", "csv"])
def test_write_read_every_format(tmp_path, fmt):
    imgs = make_images(tmp_path / "src", {"P1": (640, 512), "P2": (320, 240)})
    r = rotated_boxes()
    hb = BoxSet([[[10, 20], [90, 20], [90, 60], [10, 60]]], ["harbor"], rotated=False)
    items = [DetectionItem(imgs["P1"], (640, 512), r), DetectionItem(imgs["P2"], (320, 240), hb)]
    out = tmp_path / fmt
    rotated_kept = fmt in ("dota", "yolo-obb", "coco")
    if rotated_kept:
        write_detection_dataset(items, out, fmt, images="copy")
    else:
        with pytest.warns(UserWarning, match="enclosing horizontal"):
            write_detection_dataset(items, out, fmt, images="copy")
    assert not list(out.glob(".partial-*"))
    assert detect_format(out) == fmt
    back = read_detection_dataset(out)
    assert [b.image for b in back] == [out / "images" / "P1.png", out / "images" / "P2.png"]
    assert [b.size for b in back] == [(640, 512), (320, 240)]
    for it, b in zip(items, back, strict=True):
        if rotated_kept:
            assert_same_boxes(it.boxes, b.boxes, atol=1e-9)
        else:
            assert sorted(it.boxes.labels) == sorted(b.boxes.labels)
            key = np.argsort(it.boxes.hbb[:, 0])
            want = it.boxes.hbb[key]
            if fmt == "voc":  # VOC boxes are integers: rounded outward, inside 1..width/height
                want = np.concatenate([np.floor(want[:, :2]), np.ceil(want[:, 2:])], axis=1)
            np.testing.assert_allclose(b.boxes.hbb[np.argsort(b.boxes.hbb[:, 0])], want, atol=1e-9)
    if fmt == "dota":
        np.testing.assert_array_equal(back[0].boxes.difficult, r.difficult)


def test_yolo_ultralytics_layout_and_symlinks(tmp_path):
    root = tmp_path / "ds"
    imgs = make_images(root / "images" / "train", {"a": (200, 100)})
    make_images(root / "images" / "val", {"b": (50, 40)})
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (root / "labels" / "val" / "b.txt").write_text("0 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2\n")
    (root / "data.yaml").write_text("path: .\nnames:\n  0: ship\n  1: plane\n")
    assert detect_format(root) == "yolo"
    a, b = read_detection_dataset(root)
    assert (a.image, a.size, a.boxes.labels) == (imgs["a"], (200, 100), ["plane"])
    np.testing.assert_allclose(a.boxes.hbb, [[80, 30, 120, 70]])
    assert b.boxes.labels == ["ship"] and b.boxes.rotated
    np.testing.assert_allclose(b.boxes.corners[0], [[5, 4], [15, 4], [15, 8], [5, 8]])
    out = write_detection_dataset([a, b], tmp_path / "out", "yolo-obb", images="symlink")
    assert (out / "images" / "a.png").is_symlink()
    assert (out / "classes.txt").read_text().split() == ["ship", "plane"]  # ids kept
    assert (out / "labels" / "a.txt").read_text().startswith("1 ")
    a2, b2 = read_detection_dataset(out)
    assert_same_boxes(a.boxes, a2.boxes, atol=1e-9)
    assert_same_boxes(b.boxes, b2.boxes, atol=1e-9)


def test_dota_to_coco_to_dota_exact(tmp_path):
    root = SAMPLES / "dota"
    items = read_detection_dataset(root)
    assert detect_format(root) == "dota" and len(items) == 1 and items[0].size is None
    items = [DetectionItem(items[0].image, (3000, 3000), items[0].boxes)]
    write_detection_dataset(items, tmp_path / "coco", "coco")
    back = read_detection_dataset(tmp_path / "coco")
    assert_same_boxes(items[0].boxes, back[0].boxes)
    write_detection_dataset(back, tmp_path / "dota", "dota")
    again = read_dota_file(tmp_path / "dota" / "labelTxt" / "P0001.txt")
    assert_same_boxes(items[0].boxes, again)


def test_detection_dataset_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_detection_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="cannot tell the detection format"):
        read_detection_dataset(tmp_path / "empty")
    with pytest.raises(UserInputError, match="unknown detection format"):
        read_detection_dataset(tmp_path / "empty", "kitti")
    lab = tmp_path / "y" / "labels"
    lab.mkdir(parents=True)
    (lab / "z.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UserInputError, match="pass image_size"):
        read_detection_dataset(tmp_path / "y")
    (b,) = read_detection_dataset(tmp_path / "y", image_size=(200, 100))
    np.testing.assert_allclose(b.boxes.hbb, [[90, 45, 110, 55]])
    items = [
        DetectionItem(tmp_path / "a" / "x.png", (10, 10), BoxSet(np.zeros((0, 4, 2)), [])),
        DetectionItem(tmp_path / "b" / "x.png", (10, 10), BoxSet(np.zeros((0, 4, 2)), [])),
    ]
    with pytest.raises(UserInputError, match="share the name"):
        write_detection_dataset(items, tmp_path / "o", "dota")


# ---------------------------------------------------------------------- NEON / VOC / CSV


def test_neon_voc_xml_matches_csv():
    xml = fixture("detection/OSBS_029.xml")
    csvf = fixture("detection/OSBS_029.csv")
    n_obj = xml.read_text().count("<object>")
    with csvf.open() as f:
        rows = list(csv.DictReader(f))
    item = read_voc_file(xml)
    assert len(item.boxes) == n_obj == len(rows) == 61
    assert item.size == (400, 400) and item.image.name == "OSBS_029.tif" and item.image.is_file()
    assert set(item.boxes.labels) == {"Tree"} and not item.boxes.difficult.any()
    (citem,) = read_box_csv(csvf)
    np.testing.assert_array_equal(citem.boxes.hbb, item.boxes.hbb)
    want = np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows])
    np.testing.assert_array_equal(citem.boxes.hbb, want)
    assert detect_format(xml) == "voc" and detect_format(csvf) == "csv"


def test_neon_sjer_csv_column_order():
    path = fixture("detection/2018_SJER_3_252000_4107000_image_477_truth.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["image_path", "xmin", "xmax", "ymin", "ymax"]
    (item,) = read_box_csv(path)
    assert len(item.boxes) == len(rows) and item.size == (400, 400)
    want = np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows])
    np.testing.assert_array_equal(item.boxes.hbb, want)
    assert (item.boxes.hbb[:, 2] > item.boxes.hbb[:, 0]).all()
    assert set(item.boxes.labels) == {"0"}


def test_voc_and_csv_malformed(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotation>\n<object><name>x</name>\n</annotation>\n")
    with pytest.raises(UserInputError, match=r"a\.xml:3: invalid XML"):
        read_voc_file(p)
    p.write_text(
        "<annotation><object><name>x</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
        "<xmax>5</xmax></bndbox></object></annotation>"
    )
    with pytest.raises(UserInputError, match=r"object 1 \('x'\): missing <bndbox>/<ymax>"):
        read_voc_file(p)
    c = tmp_path / "b.csv"
    c.write_text("image_path,xmin,ymin,xmax,ymax,label\na.tif,1,2,3,4,Tree\na.tif,1,2,x,4,Tree\n")
    with pytest.raises(UserInputError, match=re.escape(f"{c}:3: xmax is not a number: 'x'")):
        read_box_csv(c)
    c.write_text("image,x0,y0\n")
    with pytest.raises(UserInputError, match=r"b\.csv:1: missing column\(s\)"):
        read_box_csv(c)


# ---------------------------------------------------------------------------------- masks


def test_mask_folder_palette_vs_rgb(tmp_path):
    rng = np.random.default_rng(0)
    ids = {f"t{i}": rng.integers(0, len(PALETTE), size=(24, 32)).astype(np.uint8) for i in range(3)}
    for kind in ("pal", "rgb", "grey"):
        make_images(tmp_path / kind / "images", {k: (32, 24) for k in ids})
        for k, m in ids.items():
            dest = tmp_path / kind / "masks" / f"{k}.png"
            if kind == "pal":
                write_png(dest, m, palette=PALETTE)
            elif kind == "rgb":
                write_png(dest, PALETTE[m])
            else:
                write_png(dest, m)
    maps = {
        kind: [s.read() for s in read_mask_folder(tmp_path / kind)]
        for kind in ("pal", "rgb", "grey")
    }
    for kind in ("rgb", "grey"):
        for a, b in zip(maps["pal"], maps[kind], strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(maps["pal"][0], ids["t0"])
    samples = read_mask_folder(tmp_path / "rgb")
    assert [s.image.stem for s in samples] == [s.mask.stem for s in samples] == ["t0", "t1", "t2"]


def test_mask_errors(tmp_path):
    rgb = PALETTE[np.zeros((8, 8), np.uint8)].copy()
    rgb[3, 5] = (1, 2, 3)
    write_png(tmp_path / "m.png", rgb)
    with pytest.raises(
        UserInputError,
        match=r"m\.png: 1 pixels have colours not in the palette.*"
        r"\(1, 2, 3\) x1 \(first at row 3, col 5\)",
    ):
        read_mask(tmp_path / "m.png")
    ids = np.zeros((8, 8), np.uint8)
    ids[2, 2] = 255
    write_png(tmp_path / "g.png", ids)
    with pytest.raises(UserInputError, match=r"class ids \[255\] outside 0\.\.12.*ignore_index"):
        read_mask(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png", ignore_index=255)[2, 2] == 255
    make_images(tmp_path / "ds" / "images", {"a": (8, 8), "b": (8, 8)})
    write_png(tmp_path / "ds" / "masks" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserInputError, match=r"1 image\(s\) without a mask.*\['b'\]"):
        read_mask_folder(tmp_path / "ds")
    assert len(read_mask_folder(tmp_path / "ds", strict=False)) == 1


# ---------------------------------------------------------------------------------- GeoTIFF


def valid_percentiles(img) -> np.ndarray:
    return np.percentile(img.rgb[img.valid], [1, 50, 99], axis=0)


def test_geotiff_landsat_rgb():
    import rasterio

    path = fixture("imagery/rasterio_RGB.byte.tif")
    img = read_geotiff(path)
    with rasterio.open(path) as ds:
        raw = ds.read()
        t = ds.transform
    assert img.rgb.shape == (718, 791, 3) and img.rgb.dtype == np.uint8
    assert img.crs.to_epsg() == 32618 and img.transform == t
    assert img.gsd == pytest.approx((abs(t.a) + abs(t.e)) / 2) and 299 < img.gsd < 301
    nodata_px = (raw == 0).all(axis=0)
    np.testing.assert_array_equal(img.valid, ~nodata_px)
    assert 0.3 < nodata_px.mean() < 0.4 and not img.rgb[~img.valid].any()
    p = valid_percentiles(img)
    assert (p[0] <= 5).all() and (p[2] >= 250).all() and (p[1] > 10).all()
    assert (img.stretch_range[:, 0] > 0).all()  # stretched: nodata excluded from the low end
    small = read_geotiff(path, max_size=200)
    st = small.transform
    assert small.rgb.shape[:2] == (182, 200)  # longer side capped, aspect kept
    assert (st.a, st.e) == pytest.approx((t.a * 791 / 200, t.e * 718 / 182))
    assert small.gsd == pytest.approx((abs(st.a) + abs(st.e)) / 2)
    assert small.gsd == pytest.approx(img.gsd * 791 / 200, rel=3e-3)


def test_geotiff_uint16_pan_and_neon():
    img = read_geotiff(fixture("imagery/solaris_sample_geotiff.tif"))
    assert img.dtype == "uint16" and img.bands == (1, 1, 1) and img.gsd == pytest.approx(0.5)
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all() and (img.rgb[..., 1] == img.rgb[..., 2]).all()
    assert img.rgb.std() > 30 and valid_percentiles(img)[2, 0] == 255
    assert img.crs.to_epsg() == 32616
    for name, gsd in (
        ("detection/OSBS_029.tif", 0.1),
        ("detection/2018_SJER_3_252000_4107000_image_477.tif", 0.1),
    ):
        img = read_geotiff(fixture(name))
        assert img.rgb.shape == (400, 400, 3) and img.gsd == pytest.approx(gsd, rel=2e-3)
        assert img.valid.mean() > 0.99 and img.rgb.mean() > 50


def test_geotiff_multispectral_and_nodata(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1000, 5000, size=(6, 40, 50)).astype(np.uint16)
    data[:, :5, :] = 0  # nodata stripe: must not pull the low percentile down
    data[:, 20, :3] = 65000  # 3 hot pixels (< 2 %): clipped to 255, not stretching the rest
    from affine import Affine

    path = write_geotiff(
        tmp_path / "ms.tif", data, 32633, Affine(10, 0, 500000, 0, -10, 6e6), nodata=0
    )
    with pytest.raises(UserInputError, match=r"6 bands.*bands=\(4, 3, 2\)"):
        read_geotiff(path)
    with pytest.raises(UserInputError, match=r"band\(s\) \[7\] out of range"):
        read_geotiff(path, bands=(7, 3, 2))
    img = read_geotiff(path, bands=(4, 3, 2))
    assert img.bands == (4, 3, 2) and img.gsd == 10.0 and img.valid[:5].sum() == 0
    assert img.valid[5:].all() and (img.stretch_range[:, 0] >= 1000).all()
    assert (img.stretch_range[:, 1] < 5000).all() and (img.rgb[20, :3] == 255).all()
    assert valid_percentiles(img)[1].min() > 60
    for k, b in enumerate((4, 3, 2)):
        lo, hi = np.percentile(data[b - 1, 5:], [2, 98])
        np.testing.assert_allclose(img.stretch_range[k], [lo, hi])
    grey = read_geotiff(path, bands=(5,))
    assert grey.bands == (5, 5, 5)

    f = rng.normal(0.2, 0.05, size=(1, 20, 20)).astype(np.float32)
    f[0, 0, :] = np.nan
    fp = write_geotiff(tmp_path / "f.tif", f, 4326, Affine(1e-4, 0, 10, 0, -1e-4, 50))
    img = read_geotiff(fp)
    assert not img.valid[0].any() and img.valid[1:].all() and img.rgb[1:].std() > 30
    assert img.gsd == pytest.approx(0.5 * (111_230 * 1e-4 + 71_700 * 1e-4), rel=0.01)


def test_geotiff_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_geotiff(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(UserInputError, match=r"bad\.tif: cannot read raster"):
        read_geotiff(bad)
    with pytest.raises(UserInputError, match="stretch percentiles"):
        read_geotiff(fixture("imagery/rasterio_RGB.byte.tif"), stretch=(98, 2))
