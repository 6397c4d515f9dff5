"""Large images by tiles: the window grid, box ownership, blended merging, tiled generation in
`earthgen augment` and tiled detection (NMS across seams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from earthgen.augment.tiles import (
    TileMerger,
    overlap_pixels,
    plan_tiles,
    polygon_mask,
    run_tiled,
    tile_starts,
)
from earthgen.boxes import BoxSet, box_iou, hbb_to_corners, obb_to_corners
from earthgen.errors import UserInputError


def _texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """``[h, w, 3]`` uint8 smooth random texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).copy()


def _boxes(w: int, h: int, n: int, seed: int = 0) -> np.ndarray:
    """``[n, 4, 2]`` rotated and horizontal boxes, some cut by the image border."""
    rng = np.random.default_rng(seed)
    obb = np.c_[
        rng.uniform(-5, w + 5, n),
        rng.uniform(-5, h + 5, n),
        rng.uniform(4, 40, (n, 2)),
        rng.uniform(0, np.pi, n) * (rng.random(n) < 0.6),
    ]
    return obb_to_corners(obb)


@pytest.mark.parametrize(
    "w,h,tile,overlap,m",
    [(1500, 1300, 128, 32, 4), (200, 130, 64, 16, 8), (64, 48, 64, 16, 8), (1000, 999, 256, 0, 1)],
)
def test_tiles_cover_the_image_and_cores_partition_it(w, h, tile, overlap, m):
    grid = plan_tiles(w, h, tile, overlap, m)
    cover = np.zeros((h, w), int)
    owned = np.zeros((h, w), int)
    wsum = np.zeros((h, w))
    for t in grid:
        assert 0 <= t.x0 < t.x1 <= w and 0 <= t.y0 < t.y1 <= h
        assert t.width == min(tile, w) and t.height == min(tile, h)
        assert t.x0 <= t.cx0 < t.cx1 <= t.x1 and t.y0 <= t.cy0 < t.cy1 <= t.y1
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
        owned[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
        wsum[t.y0 : t.y1, t.x0 : t.x1] += grid.weight(t)
        assert (grid.weight(t) > 0).all()
    assert (cover >= 1).all() and (owned == 1).all()  # windows cover, cores partition
    np.testing.assert_allclose(wsum, 1.0, atol=1e-5)  # the blend weights sum to one everywhere
    for starts, size in ((grid.xs, w), (grid.ys, h)):
        if size % m == 0 and tile % m == 0:
            assert all(s % m == 0 for s in starts)
        assert all(
            b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False)
        )  # overlap kept
    if w > tile:
        assert len(grid.xs) == -(-(w - tile) // (tile - overlap)) + 1  # no more windows than needed


def test_tile_parameters_are_checked():
    with pytest.raises(UserInputError, match="overlap"):
        tile_starts(100, 32, 32)
    with pytest.raises(UserInputError, match="fraction"):
        overlap_pixels(128, 0.5)
    assert overlap_pixels(128, 0.25, 8) == 32 and overlap_pixels(16, 0.49, 8) == 0
    assert tile_starts(50, 64, 16) == [0]


def test_every_box_assigned_once_and_identity_merge_is_exact():
    """An identity "generator" (each window returns its crop of a known image): the merged image
    is the image, every box has exactly one owner (the window whose core holds its centre), and
    the labels gathered from the owners are the input boxes, exactly."""
    w, h = 700, 530
    img = _texture(w, h)
    corners = _boxes(w, h, 150)
    calls = []

    def identity(t, local, touch, owned):
        assert (owned <= touch).all()  # a window sees every box it owns
        np.testing.assert_allclose(local + t.offset, corners[touch])
        calls.append((t, np.nonzero(owned)[0]))
        return img[t.y0 : t.y1, t.x0 : t.x1]

    out, owner = run_tiled((w, h), corners, identity, tile=128, overlap=32)
    assert np.array_equal(out, img)
    grid = plan_tiles(w, h, 128, 32)
    assert len(calls) == len(grid) > 20
    gathered = np.concatenate([idx for _, idx in calls])
    assert sorted(gathered.tolist()) == list(range(len(corners)))  # each box exactly once
    centre = corners.mean(axis=1).clip([0, 0], [w - 1e-9, h - 1e-9])
    for t, idx in calls:
        c = centre[idx]
        assert (
            (c[:, 0] >= t.cx0) & (c[:, 0] < t.cx1) & (c[:, 1] >= t.cy0) & (c[:, 1] < t.cy1)
        ).all()
        assert (owner[idx] == t.index).all()
    labels = [f"c{i % 3}" for i in range(len(corners))]
    merged = BoxSet(corners[np.sort(gathered)], [labels[i] for i in np.sort(gathered)])
    assert np.array_equal(merged.corners, corners) and merged.labels == labels


def test_seams_are_blended_and_owned_boxes_keep_their_window():
    """Windows returning constants: across an overlap the merged value ramps from one to the
    other; a box cut by the seam takes its owner's pixels."""
    w, h, tile, ov = 224, 64, 128, 32
    grid = plan_tiles(w, h, tile, ov)
    assert grid.xs == [0, 96] and grid.xb == [0, 112, 224]
    box = hbb_to_corners(np.array([[100.0, 20.0, 120.0, 40.0]]))  # centre x 110: left window's core
    value = {0: 0.0, 1: 200.0}
    out, owner = run_tiled(
        (w, h),
        box,
        lambda t, *_: np.full((t.height, t.width, 3), value[t.index]),
        tile=tile,
        overlap=ov,
    )
    assert owner.tolist() == [0]
    row = out[5, :, 0].astype(int)  # a row the box does not cross
    assert (row[:96] == 0).all() and (row[128:] == 200).all()
    seam = row[96:128]
    assert (np.diff(seam) >= 0).all() and 0 < seam[0] < 10 and 190 < seam[-1] < 200  # a linear ramp
    assert abs(int(seam[15]) - 100) <= 7
    inside = polygon_mask(box, h, w)
    assert (out[inside] == 0).all()  # the owner (left, 0) drew the box, though it spans the seam
    # a TileMerger without owned pixels is a plain blend
    m = TileMerger(grid)
    for t in grid:
        m.add(t, np.full((t.height, t.width, 3), value[t.index], np.float32))
    assert np.array_equal(m.result()[5, :, 0], row)


def test_nms_across_seams_removes_duplicates():
    from earthgen.detection.net import merge_detections, nms_rotated

    rng = np.random.default_rng(0)
    obb = np.c_[
        rng.uniform(0, 3000, (400, 2)), rng.uniform(6, 30, (400, 2)), rng.uniform(0, 3, 400)
    ]
    objects = obb_to_corners(obb)
    objects = objects[nms_rotated(objects, np.arange(len(objects), 0, -1.0), 0.0)]  # no two overlap
    n = len(objects)
    labels = [["car", "tank"][i % 2] for i in range(n)]
    # every third object found by two windows: the second copy moved by 0.5 px, a lower score
    dup = np.arange(0, n, 3)
    corners = np.concatenate([objects, objects[dup] + 0.5])
    scores = np.concatenate([np.full(n, 0.9), np.full(len(dup), 0.6)])
    lab = labels + [labels[i] for i in dup]
    merged = merge_detections(corners, lab, scores, nms_iou=0.5)
    assert len(merged) == n and (merged.scores == np.float32(0.9)).all()
    assert sorted(map(tuple, merged.corners.reshape(n, -1).round(6))) == sorted(
        map(tuple, objects.reshape(n, -1).round(6))
    )
    # a duplicate of another class is another object
    other = merge_detections(
        np.concatenate([objects[:1], objects[:1] + 0.5]), ["car", "tank"], [0.9, 0.8]
    )
    assert len(other) == 2


class _SquareFinder:
    """A BoxNet whose maps find bright 14 px squares exactly (a 7 x 7 cell mean at stride 2)."""

    def __init__(self):
        from earthgen.detection import BoxNet

        self.net = BoxNet(classes=("sq",), width=8, stride=2, rotated=True)

        def forward(images):
            a = F.avg_pool2d(images[:, :1], 2)
            m = F.avg_pool2d(a, 7, stride=1, padding=3, count_include_pad=True)
            b, _, hh, ww = m.shape
            size = torch.full((b, 2, hh, ww), float(np.log(7.0)))
            ang = torch.cat([torch.zeros(b, 1, hh, ww), torch.ones(b, 1, hh, ww)], 1)
            return {
                "heatmap": 30 * (m - 0.6),
                "size": size,
                "angle": ang,
                "offset": torch.zeros(b, 2, hh, ww),
            }

        self.net.forward = forward


def test_tiled_detection_equals_whole_image_detection():
    """A large image detected by 256 px windows finds every square once, as the whole image
    does (squares on the seams included), and stays within the image."""
    w, h = 700, 610
    img = np.zeros((h, w, 3), np.uint8)
    truth = []
    rng = np.random.default_rng(1)
    xs = [
        104,
        190,
        220,
        330,
        440,
        560,
        650,
    ]  # seams of 256 px windows, 64 px overlap: ~200 and ~400
    for x in xs:
        for y in (20, 150, 196, 300, 420, 560):
            x0, y0 = 2 * ((x + int(rng.integers(-3, 3))) // 2), 2 * (y // 2)
            img[y0 : y0 + 14, x0 : x0 + 14] = 255
            truth.append([x0, y0, x0 + 14, y0 + 14])
    truth = hbb_to_corners(np.array(truth, float))
    finder = _SquareFinder().net
    whole = finder.detect(
        torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255,
        score_threshold=0.5,
        max_detections=1000,
    )[0]
    tiled = finder.detect_tiled(img, tile=256, overlap=64, score_threshold=0.5)
    assert len(whole) == len(truth) == len(tiled)
    iou = box_iou(tiled.corners, truth)
    assert (iou.max(axis=1) > 0.99).all() and (iou.max(axis=0) > 0.99).all()  # one each, exact
    assert (
        (tiled.corners >= 0).all()
        and (tiled.corners[..., 0] <= w).all()
        and (tiled.corners[..., 1] <= h).all()
    )
    # a small image is one window: detect() itself
    small = img[:200, :200]
    a = finder.detect_tiled(small, tile=256)
    b = finder.detect(torch.from_numpy(small.copy()).permute(2, 0, 1).float()[None] / 255)[0]
    assert np.array_equal(a.corners, b.corners) and a.labels == b.labels


@pytest.fixture(scope="module")
def large_dataset(tmp_path_factory):
    """One 1500 x 1300 image with 80 boxes (rotated and upright, some across window seams)."""
    from PIL import Image

    from earthgen.data import DetectionItem, write_detection_dataset

    root = tmp_path_factory.mktemp("large")
    w, h = 1500, 1300
    rng = np.random.default_rng(3)
    n = 80
    obb = np.c_[
        rng.uniform(40, w - 40, n),
        rng.uniform(40, h - 40, n),
        rng.uniform(8, 30, (n, 2)),
        rng.uniform(0, np.pi, n) * (np.arange(n) % 2),
    ]
    img = _texture(w, h, 1)
    Image.fromarray(img).save(root / "big.png")
    labels = [["car", "tank"][i % 2] for i in range(n)]
    write_detection_dataset(
        [DetectionItem(root / "big.png", (w, h), BoxSet(obb_to_corners(obb), labels))],
        root / "ds",
        "dota",
        images="copy",
    )
    return root / "ds"


def test_augment_large_image_by_tiles_with_tiny_models(tmp_path, large_dataset):
    """`augment_dataset` on a 1500 x 1300 image with a tiny model: generated window by window,
    filtered by a tiled detector, written atomically; labels inside the image, one per box."""
    from test_boxes_conditioning import grounded_components

    from earthgen.augment import AugmentConfig, LayoutConfig, augment_dataset, read_manifest
    from earthgen.augment.core import generation_grid
    from earthgen.data import read_detection_dataset
    from earthgen.pipelines.image import EarthImagePipeline

    pipe = EarthImagePipeline(**grounded_components())
    pipe.set_progress_bar_config(disable=True)
    cfg = AugmentConfig(
        n=1,
        steps=1,
        seed=0,
        tile=256,
        tile_overlap=0.25,
        detector_steps=2,
        detector_crop=64,
        score_threshold=0.0,
        iou_threshold=0.0,
        min_recall=0.0,
        detect_tile=512,
        layout=LayoutConfig(copy_paste=2),
    )
    out = tmp_path / "aug"
    s = augment_dataset(large_dataset, out, pipe, cfg, progress=False)
    grid = generation_grid((1500, 1300), 256, 0.25, pipe.size_multiple)
    assert s["generated"] == 1 and s["tiling"]["windows"] == len(grid) > 20
    m = read_manifest(out)
    rec = m["synthetic"][0]
    assert rec["tiles"] == len(grid)
    items = {it.image.name: it for it in read_detection_dataset(out)}
    syn = items[rec["image"]]
    from PIL import Image

    arr = np.asarray(Image.open(out / "images" / rec["image"]))
    assert arr.shape == (1300, 1500, 3) and arr.std() > 1
    c = syn.boxes.corners
    assert len(syn.boxes) == rec["boxes"] >= 80 and syn.boxes.labels == rec["labels"]
    assert (
        (c >= -1e-6).all() and (c[..., 0] <= 1500 + 1e-6).all() and (c[..., 1] <= 1300 + 1e-6).all()
    )
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no scratch folder left
    assert [p.name for p in tmp_path.iterdir()] == ["aug"]  # no partial folder beside it


def test_augment_cli_refuses_bad_tiles(tmp_path, large_dataset, capsys):
    from earthgen.augment import AugmentConfig

    with pytest.raises(UserInputError, match="tile-overlap"):
        AugmentConfig(tile_overlap=0.5).validate()
    with pytest.raises(UserInputError, match="detect-tile"):
        AugmentConfig(detect_tile=100).validate()
    from earthgen.cli import main

    with pytest.raises(SystemExit) as e:  # argparse: exit status 2, one line
        main(["augment", str(large_dataset), "--out", str(tmp_path / "o"), "--tile-overlap", "0.7"])
    assert e.value.code == 2
    assert "--tile-overlap" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
