"""Layout sampling, filtering, `earthgen augment` end to end (tiny, CPU) and label round trips."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from earthgen.augment import (
    LayoutConfig,
    augment_dataset,
    class_weights,
    filter_generated,
    sample_layouts,
)
from earthgen.augment.filter import match_requested
from earthgen.boxes import BoxSet, box_iou, hbb_to_corners, obb_to_corners
from earthgen.data import DetectionItem, read_detection_dataset, write_detection_dataset
from earthgen.errors import UserInputError


def _items(n: int = 12, size: int = 64, seed: int = 0, rare_every: int = 6) -> list[DetectionItem]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 3
        obb = np.c_[
            rng.uniform(12, size - 12, (k, 2)), rng.uniform(4, 10, (k, 2)), rng.uniform(0, 3, k)
        ]
        labels = ["car"] * k
        if i % rare_every == 0:
            labels[0] = "tank"
        out.append(
            DetectionItem(
                __import__("pathlib").Path(f"img{i}.png"),
                (size, size),
                BoxSet(obb_to_corners(obb), labels),
            )
        )
    return out


def test_layouts_are_deterministic_inside_and_rebalanced():
    items = _items()
    cfg = LayoutConfig(copy_paste=3, rebalance=1.0)
    a = sample_layouts(items, 40, seed=3, config=cfg)
    b = sample_layouts(items, 40, seed=3, config=cfg)
    assert [x.seed for x in a] == [x.seed for x in b]
    assert all(np.allclose(x.boxes.corners, y.boxes.corners) for x, y in zip(a, b, strict=True))
    for lay in a:
        c = lay.boxes.corners
        assert lay.size == (64, 64)
        assert (c >= -1e-9).all() and (c <= 64 + 1e-9).all()
    pasted = [lay for lay in a if any(op.startswith("paste") for op in lay.ops)]
    assert pasted
    for lay in pasted:  # pasted boxes overlap nothing
        n = int(next(op for op in lay.ops if op.startswith("paste"))[5:])
        new, old = lay.boxes.corners[-n:], lay.boxes.corners[:-n]
        if len(old):
            assert box_iou(new, old).max() == 0
    real = Counter(lab for it in items for lab in it.boxes.labels)
    syn = Counter(lab for lay in a for lab in lay.boxes.labels)
    assert syn["tank"] / sum(syn.values()) > 2 * real["tank"] / sum(real.values())
    w = class_weights({"car": 100, "tank": 1}, 1.0)
    assert w["tank"] == pytest.approx(100 / 101)
    with pytest.raises(UserInputError, match="jitter"):
        sample_layouts(items, 2, config=LayoutConfig(jitter=-1))


def test_upright_classes_stay_axis_aligned_in_rotated_layouts():
    """Round objects labelled with upright squares (storage tanks) are moved and scaled but never
    turned, by jitter or copy-paste; other classes of a rotated dataset still are."""
    from earthgen.augment.layouts import rotation_rules
    from earthgen.data._common import boxes_axis_aligned

    items = _items(n=12, rare_every=3)
    for it in items:  # make every tank box an upright square around its centre
        tank = [j for j, lab in enumerate(it.boxes.labels) if lab == "tank"]
        for j in tank:
            cx, cy = it.boxes.corners[j].reshape(4, 2).mean(0)
            it.boxes.corners[j] = hbb_to_corners(np.array([[cx - 5, cy - 5, cx + 5, cy + 5]]))[
                0
            ].reshape(it.boxes.corners[j].shape)
    rotated, upright = rotation_rules(items)
    assert rotated and upright == {"tank"}
    lays = sample_layouts(items, 60, seed=1, config=LayoutConfig(copy_paste=3, angle_jitter_deg=30))
    tanks = np.concatenate(
        [lay.boxes.corners.reshape(-1, 4, 2)[np.array(lay.boxes.labels) == "tank"] for lay in lays]
    )
    cars = np.concatenate(
        [lay.boxes.corners.reshape(-1, 4, 2)[np.array(lay.boxes.labels) == "car"] for lay in lays]
    )
    assert len(tanks) > 30 and boxes_axis_aligned(tanks).all()
    side = np.linalg.norm(tanks[:, 1] - tanks[:, 0], axis=1)
    assert side.std() > 0.1  # jitter still rescales them
    assert not boxes_axis_aligned(cars).any()
    # turning them anyway, on request; an unknown class is a user error
    turned = sample_layouts(
        items, 60, seed=1, config=LayoutConfig(copy_paste=3, angle_jitter_deg=30, upright=[])
    )
    t2 = np.concatenate(
        [
            lay.boxes.corners.reshape(-1, 4, 2)[np.array(lay.boxes.labels) == "tank"]
            for lay in turned
        ]
    )
    assert not boxes_axis_aligned(t2).all()
    with pytest.raises(UserInputError, match="upright classes not in the dataset: tnk"):
        sample_layouts(items, 2, config=LayoutConfig(upright=["tnk"]))


def test_filter_keeps_and_rejects_constructed_cases():
    req = BoxSet(hbb_to_corners(np.array([[0, 0, 10, 10], [20, 20, 40, 30]])), ["car", "tank"])
    perfect = BoxSet(req.corners, ["car", "tank"], scores=np.array([0.9, 0.8]))
    wrong_class = BoxSet(req.corners, ["tank", "car"], scores=np.array([0.9, 0.8]))
    low_score = BoxSet(req.corners, ["car", "tank"], scores=np.array([0.9, 0.1]))
    shifted = BoxSet(
        req.corners + np.array([6.0, 0.0]), ["car", "tank"], scores=np.array([0.9, 0.9])
    )
    one = BoxSet(req.corners[:1], ["car"], scores=np.array([0.9]))
    dup = BoxSet(
        np.concatenate([req.corners[:1], req.corners[:1]]),
        ["car", "car"],
        scores=np.array([0.9, 0.8]),
    )
    res = filter_generated(
        [req] * 6,
        [perfect, wrong_class, low_score, shifted, one, dup],
        iou_threshold=0.5,
        score_threshold=0.3,
        min_recall=1.0,
    )
    assert res.keep.tolist() == [True, False, False, False, False, False]
    assert res.recall.tolist() == [
        1.0,
        0.0,
        0.5,
        0.5,
        0.5,
        0.5,
    ]  # shifted: the car (IoU .25) is lost
    assert res.kept_fraction == pytest.approx(1 / 6)
    assert filter_generated([req] * 2, [one, dup], min_recall=0.5).keep.tolist() == [True, True]
    assert match_requested(BoxSet(np.zeros((0, 4, 2)), []), perfect).shape == (0,)
    assert filter_generated([BoxSet(np.zeros((0, 4, 2)), [])], [perfect]).keep.tolist() == [True]
    with pytest.raises(UserInputError, match="min recall"):
        filter_generated([req], [perfect], min_recall=2.0)
    # only the last k boxes count (the painted ones of an inpainted image); k = 0: nothing asked
    last = filter_generated([req] * 3, [one, one, low_score], min_recall=1.0, count_last=[1, 0, 1])
    assert last.recall.tolist() == [0.0, 1.0, 0.0] and last.keep.tolist() == [False, True, False]
    assert [f.tolist() for f in last.found] == [[True, False], [True, False], [True, False]]


@pytest.fixture(scope="module")
def world_dataset(tmp_path_factory):
    """A tiny real dataset from the procedural world (DOTA, rotated boxes, with images)."""
    from earthgen.augment.world import world_items

    root = tmp_path_factory.mktemp("world")
    items = world_items(
        6, seed=1, size=64, folder=root / "img", gsd=(0.5, 0.6), extent_m=900.0, progress=False
    )
    write_detection_dataset(items, root / "train", "dota", images="copy")
    return root / "train"


@pytest.fixture(scope="module")
def box_pipe_dir(tmp_path_factory):
    from test_boxes_conditioning import grounded_components

    from earthgen.pipelines.image import EarthImagePipeline

    d = tmp_path_factory.mktemp("pipe") / "p"
    EarthImagePipeline(**grounded_components()).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, world_dataset, box_pipe_dir):
    from earthgen.augment import AugmentConfig
    from earthgen.pipelines.image import load_pipeline

    pipe = load_pipeline(str(box_pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path_factory.mktemp("aug") / "aug"
    cfg = AugmentConfig(
        n=2,
        steps=1,
        seed=5,
        detector_steps=3,
        detector_crop=64,
        score_threshold=0.0,
        iou_threshold=0.0,
        min_recall=0.0,
    )
    s = augment_dataset(world_dataset, out, pipe, cfg, progress=False)
    return out, s, pipe


def test_augment_end_to_end(tmp_path, world_dataset, augmented):
    from PIL import Image

    from earthgen.augment import AugmentConfig, read_manifest

    out, s, pipe = augmented
    assert (
        s["generated"] == 2
        and s["kept"] == 2
        and s["kept_fraction"] == 1.0
        and s["format"] == "dota"
    )
    m = read_manifest(out)
    assert len(m["real"]) == 6 and [e["kept"] for e in m["synthetic"]] == [True] * 2
    assert len({e["seed"] for e in m["synthetic"]}) == 2
    items = read_detection_dataset(out)
    assert len(items) == 8
    assert {e["image"] for e in m["synthetic"]} <= {it.image.name for it in items}
    assert (out / "augment" / "detector" / "config.json").is_file()
    # the recorded seeds regenerate the same images (no filter: every image is written)
    s2 = augment_dataset(
        world_dataset,
        tmp_path / "again",
        pipe,
        AugmentConfig(n=2, steps=1, seed=5, filter=False),
        progress=False,
    )
    assert s2["kept"] == 2 and s2["kept_fraction"] is None
    name = m["synthetic"][0]["image"]
    assert np.array_equal(
        np.asarray(Image.open(out / "images" / name)),
        np.asarray(Image.open(tmp_path / "again" / "images" / name)),
    )


def test_augment_inpaint_keeps_real_pixels_and_boxes(
    tmp_path, world_dataset, box_pipe_dir, augmented
):
    """--inpaint: the source image, turned as its layout was, outside the repainted latent cells of
    the pasted boxes; the real boxes unmoved; only the pasted area changes."""
    from PIL import Image

    from earthgen.augment import AugmentConfig, read_manifest
    from earthgen.augment.core import _cells, _paste_mask, _turned_source
    from earthgen.augment.layouts import sample_layouts
    from earthgen.pipelines.image import load_pipeline

    pipe = load_pipeline(str(box_pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    cfg = AugmentConfig(n=4, steps=2, seed=2, filter=False, inpaint=True)
    augment_dataset(world_dataset, tmp_path / "a", pipe, cfg, progress=False)
    m = read_manifest(tmp_path / "a")
    assert m["summary"]["config"]["inpaint"] and m["summary"]["layout_config"]["jitter"] == 0.0
    real = read_detection_dataset(world_dataset)
    lays = sample_layouts(
        real, 4, 2, LayoutConfig(jitter=0.0, scale_jitter=0.0, angle_jitter_deg=0.0)
    )
    by_name = {it.image.name: it for it in read_detection_dataset(tmp_path / "a")}
    f = pipe.vae_scale_factor
    changed = 0
    for rec, lay in zip(m["synthetic"], lays, strict=True):
        assert rec["source_image"] == real[lay.source].image.name and rec["ops"] == lay.ops
        assert (f"turn{90 * lay.turn}" + ("+mirror" if lay.mirror else "") in lay.ops) == bool(
            lay.turn or lay.mirror
        )
        assert lay.pasted == next((int(op[5:]) for op in lay.ops if op.startswith("paste")), 0)
        src = _turned_source(real[lay.source].image, lay.turn, lay.mirror)
        assert (rec["turn"], rec["mirror"], rec["pasted"]) == (lay.turn, lay.mirror, lay.pasted)
        gen = np.asarray(Image.open(tmp_path / "a" / "images" / rec["image"]).convert("RGB"))
        cells = _cells(_paste_mask(lay, cfg.inpaint_margin), f)
        assert np.array_equal(gen[~cells], src[~cells])  # real pixels, exactly
        changed += int(np.abs(gen[cells].astype(int) - src[cells]).sum() > 0)
        n_real = len(real[lay.source].boxes)
        got = by_name[rec["image"]].boxes.corners.reshape(-1, 4, 2)
        np.testing.assert_allclose(
            got[:n_real], lay.boxes.corners.reshape(-1, 4, 2)[:n_real], atol=1e-3
        )
    assert changed >= 1
    # filtered: the recall is that of the pasted boxes only (the real ones are real pixels)
    det = augmented[0] / "augment" / "detector"
    fcfg = replace(
        cfg, filter=True, detector=str(det), score_threshold=0.0, iou_threshold=0.0, min_recall=0.5
    )
    augment_dataset(world_dataset, tmp_path / "f", pipe, fcfg, progress=False)
    fm = read_manifest(tmp_path / "f")
    assert any(rec["pasted"] for rec in fm["synthetic"])
    for rec in fm["synthetic"]:
        assert len(rec["found"]) == rec["boxes"]
        pasted = rec["found"][len(rec["found"]) - rec["pasted"] :] if rec["pasted"] else []
        assert rec["recall"] == (float(np.mean(pasted)) if pasted else 1.0)
        assert rec["kept"] == (rec["recall"] >= 0.5)
    # the copies control: the same source images turned alike, unchanged, with only the real boxes
    from earthgen.augment.core import write_copies

    copies = write_copies(tmp_path / "a", real, tmp_path / "copies")
    assert len(copies) == 4
    for cp, rec, lay in zip(copies, m["synthetic"], lays, strict=True):
        gen = np.asarray(Image.open(tmp_path / "a" / "images" / rec["image"]).convert("RGB"))
        img = np.asarray(Image.open(cp.image).convert("RGB"))
        cells = _cells(_paste_mask(lay, cfg.inpaint_margin), f)
        assert np.array_equal(img[~cells], gen[~cells])
        n_real = len(real[lay.source].boxes)
        assert (
            len(cp.boxes) == n_real
            and cp.boxes.labels == list(by_name[rec["image"]].boxes.labels)[:n_real]
        )
        np.testing.assert_allclose(
            cp.boxes.corners, by_name[rec["image"]].boxes.corners[:n_real], atol=1e-3
        )
    # the image turns as the boxes do: a lit pixel lands where its box corners went
    from earthgen.augment.layouts import turn_corners

    img = np.zeros((6, 6, 3), np.uint8)
    img[0, 1] = 255  # row 0, column 1: the pixel square (1, 0)-(2, 1)
    Image.fromarray(img).save(tmp_path / "dot.png")
    square = np.array([[[1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0]]])
    for k, mirror in ((1, False), (1, True), (2, False), (3, True), (0, True)):
        op = f"turn{90 * k}" + ("+mirror" if mirror else "")
        turned = _turned_source(tmp_path / "dot.png", k, mirror)
        x0, y0 = turn_corners(square, 6, 6, k, mirror)[0].min(0).astype(int)
        assert turned[y0, x0, 0] == 255 and turned[..., 0].sum() == 255, op


@pytest.mark.filterwarnings("ignore:.*rotated boxes written as their enclosing")
@pytest.mark.parametrize("fmt", ["dota", "coco", "yolo-obb", "yolo"])
def test_augmented_labels_round_trip(tmp_path, augmented, fmt):
    """read -> write -> read of real + synthetic labels is exact in every output format."""
    items = read_detection_dataset(augmented[0])
    write_detection_dataset(items, tmp_path / "a", fmt, images="symlink")
    first = read_detection_dataset(tmp_path / "a")
    write_detection_dataset(first, tmp_path / "b", fmt, images="symlink")
    second = {it.image.name: it.boxes for it in read_detection_dataset(tmp_path / "b")}
    assert len(second) == len(items) == 8
    for it in first:
        b = second[it.image.name]
        assert b.labels == it.boxes.labels
        if fmt == "yolo":  # normalised centre/size: equal to 1e-9 px, not bit for bit
            assert np.allclose(b.corners, it.boxes.corners, rtol=0, atol=1e-9)
        else:
            assert np.array_equal(b.corners, it.boxes.corners)
    if fmt != "yolo":  # rotated formats keep the corners of the source exactly
        src = {it.image.name: it.boxes for it in items}
        for it in first:
            assert np.allclose(src[it.image.name].corners, it.boxes.corners, atol=1e-9)


def test_eval_augment_runs_on_tiny_data(tmp_path, world_dataset):
    from earthgen.augment.evaluate import evaluate_augmentation, format_table

    r = evaluate_augmentation(
        world_dataset,
        world_dataset,
        world_dataset,
        steps=2,
        batch_size=2,
        crop=64,
        width=8,
        progress=False,
        out=tmp_path / "det",
    )
    assert set(r["real"]) == {"rotated", "horizontal"}
    assert 0.0 <= r["real"]["rotated"]["mAP"] <= 1.0 or np.isnan(r["real"]["rotated"]["mAP"])
    assert "mAP" in format_table(r)
    r2 = evaluate_augmentation(
        world_dataset,
        world_dataset,
        world_dataset,
        progress=False,
        real_detector=tmp_path / "det" / "detector-real",
    )
    assert r2["steps"] == 2 and r2["real"]["rotated"]["mAP"] == r["real"]["rotated"]["mAP"]


def test_eval_augment_over_seeds_aggregates_the_runs(tmp_path, world_dataset, capsys):
    from earthgen.augment.evaluate import (
        evaluate_augmentation,
        evaluate_augmentation_seeds,
        format_table,
    )
    from earthgen.cli import main

    kw = dict(steps=2, batch_size=2, crop=64, width=8, progress=False)
    agg = evaluate_augmentation_seeds(
        world_dataset, world_dataset, world_dataset, seeds=[0, 1], out=tmp_path / "d", **kw
    )
    assert agg["seeds"] == [0, 1] and len(agg["runs"]) == 2
    one = evaluate_augmentation(world_dataset, world_dataset, world_dataset, seed=1, **kw)
    assert (
        one["real"]["rotated"]["mAP"] == agg["runs"][1]["real"]["rotated"]["mAP"]
    )  # each run is the single one
    for part in ("real", "augmented", "gain"):
        vals = [r[part]["rotated"]["mAP"] for r in agg["runs"]]
        assert agg["mean"][part]["rotated"]["mAP"] == pytest.approx(np.mean(vals), nan_ok=True)
        assert agg["std"][part]["rotated"]["mAP"] == pytest.approx(np.std(vals), nan_ok=True)
    c = agg["classes"][0]
    assert agg["rises"]["rotated"][c] == sum(r["gain"]["rotated"]["AP"][c] > 0 for r in agg["runs"])
    assert "2 detector seeds [0, 1]" in format_table(agg)
    # baselines given as trained detectors: their seeds are read back; repeated seeds are refused
    again = evaluate_augmentation_seeds(
        world_dataset,
        world_dataset,
        world_dataset,
        progress=False,
        real_detectors=[tmp_path / "d" / f"seed{s}" / "detector-real" for s in (0, 1)],
    )
    assert again["seeds"] == [0, 1]
    assert again["mean"]["real"]["rotated"]["mAP"] == pytest.approx(
        agg["mean"]["real"]["rotated"]["mAP"], nan_ok=True
    )
    args = [
        "eval",
        "augment",
        "--real",
        str(world_dataset),
        "--augmented",
        str(world_dataset),
        "--test",
        str(world_dataset),
    ]
    assert main([*args, "--seed", "0", "0"]) == 2
    assert "repeats" in capsys.readouterr().err
    det0 = str(tmp_path / "d" / "seed0" / "detector-real")
    assert main([*args, "--real-detector", det0, det0]) == 2
    assert "repeat seeds" in capsys.readouterr().err
    # --ap-method: named in the table and the JSON
    g = str(tmp_path / "g.json")
    assert main([*args, "--real-detector", det0, "--ap-method", "all", "--out", g]) == 0
    assert "AP method: all-point AP" in capsys.readouterr().out
    import json

    res = json.loads((tmp_path / "g.json").read_text())
    assert res["method"] == "all" and res["real"]["rotated"]["method"] == "all"
    assert main([*args, "--real-detector", det0, "--out", str(tmp_path / "h.json")]) == 0
    assert "AP method: 11-point AP (VOC07" in capsys.readouterr().out
    assert json.loads((tmp_path / "h.json").read_text())["method"] == "voc07"


def test_copies_control(tmp_path, world_dataset, augmented, capsys):
    """eval augment --control copies: a third detector on real + the synthetic images' sources,
    turned, unchanged; its gain is augmented - copies; a trained one is reused; bad input
    refused."""
    import json

    from earthgen.augment.core import write_copies
    from earthgen.augment.evaluate import (
        evaluate_augmentation,
        evaluate_augmentation_seeds,
        format_table,
    )
    from earthgen.augment.layouts import turn_corners
    from earthgen.cli import main

    out = augmented[0]
    real = read_detection_dataset(world_dataset)
    m = json.loads((out / "augment" / "manifest.json").read_text())
    copies = write_copies(out, real, tmp_path / "c")
    by_name = {it.image.name: it for it in real}
    assert len(copies) == sum(r["kept"] for r in m["synthetic"]) == 2
    for cp, rec in zip(
        copies, m["synthetic"], strict=True
    ):  # jittered layouts: copies keep the exact real boxes
        src = by_name[rec["source_image"]]
        np.testing.assert_allclose(
            cp.boxes.corners, turn_corners(src.boxes.corners, *src.size, rec["turn"], rec["mirror"])
        )
        assert cp.boxes.labels == src.boxes.labels
    kw = dict(steps=2, batch_size=2, crop=64, width=8, progress=False)
    r = evaluate_augmentation(
        world_dataset, out, world_dataset, control="copies", out=tmp_path / "d", **kw
    )
    assert (
        r["sizes"]["copies"] == 6 + 2
        and (tmp_path / "d" / "detector-copies" / "train.json").is_file()
    )
    c = r["classes"][0]
    for geo in r["real"]:
        assert r["gain_over_copies"][geo]["mAP"] == pytest.approx(
            r["augmented"][geo]["mAP"] - r["copies"][geo]["mAP"], nan_ok=True
        )
    assert "syn-copies" in format_table(r)
    again = evaluate_augmentation(
        world_dataset,
        out,
        world_dataset,
        control="copies",
        control_detector=tmp_path / "d" / "detector-copies",
        **kw,
    )
    assert again["copies"]["rotated"]["AP"][c] == pytest.approx(
        r["copies"]["rotated"]["AP"][c], nan_ok=True
    )
    with pytest.raises(UserInputError, match="trained with"):
        evaluate_augmentation(
            world_dataset,
            out,
            world_dataset,
            control="copies",
            seed=3,
            control_detector=tmp_path / "d" / "detector-copies",
            **kw,
        )
    with pytest.raises(UserInputError, match="unknown control"):
        evaluate_augmentation(world_dataset, out, world_dataset, control="oversample", **kw)
    with pytest.raises(
        UserInputError, match="no augmentation manifest"
    ):  # a dataset not written by augment
        evaluate_augmentation(world_dataset, world_dataset, world_dataset, control="copies", **kw)
    agg = evaluate_augmentation_seeds(
        world_dataset, out, world_dataset, seeds=[0, 1], control="copies", out=tmp_path / "s", **kw
    )
    assert len(list((tmp_path / "s" / "copies").glob("*.png"))) == 2  # written once for all seeds
    assert not (tmp_path / "s" / "seed0" / "copies").exists()
    assert agg["rises_over_copies"]["rotated"][c] == sum(
        x["gain_over_copies"]["rotated"]["AP"][c] > 0 for x in agg["runs"]
    )
    assert agg["mean"]["copies"]["rotated"]["mAP"] == pytest.approx(
        np.mean([x["copies"]["rotated"]["mAP"] for x in agg["runs"]]), nan_ok=True
    )
    assert "syn-copies" in format_table(agg)
    # an older manifest without turn/mirror: a clear error
    old = tmp_path / "old"
    __import__("shutil").copytree(out, old)
    for rec in m["synthetic"]:
        del rec["turn"]
    (old / "augment" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserInputError, match="run `earthgen augment` again"):
        write_copies(old, real, tmp_path / "c2")
    args = [
        "eval",
        "augment",
        "--real",
        str(world_dataset),
        "--augmented",
        str(out),
        "--test",
        str(world_dataset),
    ]
    assert main([*args, "--control-detector", str(tmp_path / "d" / "detector-copies")]) == 2
    assert "needs --control copies" in capsys.readouterr().err
    assert (
        main(
            [
                *args,
                "--control",
                "copies",
                "--seed",
                "0",
                "1",
                "--control-detector",
                str(tmp_path / "d" / "detector-copies"),
            ]
        )
        == 2
    )
    assert "control detectors have seeds [0]" in capsys.readouterr().err


def test_cli_errors(tmp_path, world_dataset, capsys):
    from earthgen.cli import main

    assert (
        main(["augment", str(tmp_path / "nope"), "--model", "m", "--out", str(tmp_path / "o")]) == 2
    )
    assert "dataset not found" in capsys.readouterr().err
    assert (
        main(
            [
                "augment",
                str(world_dataset),
                "--model",
                "m",
                "--format",
                "pascal",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "unknown format" in capsys.readouterr().err
    assert (
        main(
            [
                "augment",
                str(world_dataset),
                "--model",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "model not found" in capsys.readouterr().err
    assert main(["eval", "augment", "--real", str(world_dataset)]) == 2
    assert "--augmented, --test required" in capsys.readouterr().err
    assert (
        main(["eval", "augment", "--make-world-data", str(world_dataset), "--rare", "plane"]) == 2
    )
    assert "unknown world class" in capsys.readouterr().err


def test_augment_refuses_a_model_without_boxes(tmp_path, world_dataset):
    from tiny_models import get_dummy_components

    from earthgen.pipelines.image import EarthImagePipeline

    pipe = EarthImagePipeline(**get_dummy_components(control=False))
    with pytest.raises(UserInputError, match="no box conditioning"):
        augment_dataset(world_dataset, tmp_path / "o", pipe)
    with pytest.raises(UserInputError, match="not an empty folder"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("1")
        augment_dataset(world_dataset, tmp_path / "full", pipe)


@pytest.mark.slow
@pytest.mark.parametrize("raster_dim, loss_weight", [(0, 0.0), (4, 3.0)])
def test_train_image_boxes_test_run(tmp_path, world_dataset, raster_dim, loss_weight):
    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import TrainConfig, train

    s = train(
        TrainConfig(
            task="image-boxes",
            data=str(world_dataset),
            out=str(tmp_path / "t"),
            test_run=True,
            steps=6,
            box_raster_dim=raster_dim,
            box_loss_weight=loss_weight,
        )
    )
    assert s["steps"] == 6
    pipe = load_pipeline(s["pipeline"])
    assert (
        pipe.box_encoder is not None and type(pipe.unet).__name__ == "GroundedUNet2DConditionModel"
    )
    assert (
        pipe.unet.raster_channels
        == pipe.box_encoder.raster_channels
        == (1 + raster_dim if raster_dim else 0)
    )
    if raster_dim:  # the map's input weights were trained away from their zero start
        assert pipe.unet.conv_in.weight[:, 4:].abs().max() > 0


def test_freeze_unet_trains_only_gates_box_encoder_and_box_map_inputs(tmp_path, world_dataset):
    """GLIGEN recipe with a dense box map: the gated layers, the box encoder and the map's input
    columns of ``conv_in`` learn; every other UNet weight (the latent's columns too) stays."""
    from tiny_models import get_dummy_components

    from earthgen.pipelines.image import EarthImagePipeline, load_pipeline
    from earthgen.training.image import TrainConfig, add_box_conditioning, train

    c = add_box_conditioning(
        get_dummy_components(control=False, metadata=True), hidden_dim=32, raster_dim=2
    )
    EarthImagePipeline(**c).save_pretrained(tmp_path / "start")
    before = {k: v.clone() for k, v in c["unet"].state_dict().items()}
    enc_before = {k: v.clone() for k, v in c["box_encoder"].state_dict().items()}
    s = train(
        TrainConfig(
            task="image-boxes",
            model=str(tmp_path / "start"),
            data=str(world_dataset),
            out=str(tmp_path / "t"),
            resolution=64,
            batch_size=2,
            steps=3,
            save_every=3,
            lr=1e-2,
            ema_decay=0.0,
            freeze_unet=True,
            box_loss_weight=2.0,
        )
    )
    trained = load_pipeline(s["pipeline"])
    after = trained.unet.state_dict()
    assert any(
        not torch.equal(v, trained.box_encoder.state_dict()[k]) for k, v in enc_before.items()
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".fuser." in k or k == "conv_in.weight" for k in changed)
    w0, w1 = before["conv_in.weight"], after["conv_in.weight"]
    assert torch.equal(w0[:, :4], w1[:, :4]) and not torch.equal(w0[:, 4:], w1[:, 4:])


def test_balanced_sampling_shows_rare_classes_more_often(tmp_path):
    from PIL import Image

    from earthgen.detection.train import DetectionSamples

    items = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
        labels = ["rare"] if i == 0 else ["common"] * 5
        items.append(
            DetectionItem(
                p,
                (32, 32),
                BoxSet(hbb_to_corners(np.tile([[2, 2, 8, 8]], (len(labels), 1))), labels),
            )
        )

    def rare_fraction(balance: float) -> float:
        s = DetectionSamples(items, balance=balance)
        sets = [b for k in range(50) for b in s.batch(0, k, 8, 32, augment=False)[1]]
        return sum("rare" in b.labels for b in sets) / len(sets)

    assert 0.04 < rare_fraction(0.0) < 0.2  # uniform: 1 image in 10
    assert rare_fraction(1.0) > 0.75  # weights 1/1 vs 1/45 per image: 45 / 54 = 0.83
    assert DetectionSamples(items, balance=1.0).weights.sum() == pytest.approx(1.0)


def test_scarcity_levels_nest():
    """``make_scarce`` keeps the first ``keep`` rare images of one seeded permutation, so a larger
    ``keep`` is a superset of a smaller one (a generator trained on the keep-4 split may be
    fine-tuned on the keep-12 split without seeing an image outside it), and images without the
    rare class are always kept."""
    from earthgen.augment.world import make_scarce

    items = _items(n=60, rare_every=3)  # 20 images hold a "tank"
    names = {
        k: [str(it.image) for it in make_scarce(items, "tank", k, seed=0)] for k in (0, 4, 12, 100)
    }
    has_tank = {str(it.image): "tank" in it.boxes.labels for it in items}
    rare = lambda ns: {n for n in ns if has_tank[n]}  # noqa: E731
    assert [len(rare(names[k])) for k in (0, 4, 12, 100)] == [0, 4, 12, 20]
    assert rare(names[4]) < rare(names[12]) < rare(names[100])
    assert set(names[0]) <= set(names[4]) and len(names[0]) == 40
    assert names[4] == [n for n in names[12] if n in set(names[4])]  # order preserved
    assert [str(it.image) for it in make_scarce(items, "tank", 4, seed=1)] != names[4]
