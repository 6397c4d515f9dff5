"""Real-data readers, crops / resampling and the weighted mix (earthgen.datasets).

Most tests read the tiny excerpts in tests/data/real/ (see its README for licences); tests
marked as needing the full copies skip when ../shared/data is absent."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from earthgen.classes import CLASS_ID
from earthgen.datasets import (
    DUBAI_TO_CLASS,
    IGNORE,
    REAL_SETS,
    SPACENET_WATERMARK_ROWS,
    UCM_CLASSES,
    MixedDataset,
    Sample,
    caption_from_classes,
    data_root,
    flip_rotate,
    random_crop,
    read_set,
    resample,
)
from earthgen.errors import UserInputError

EXCERPT = Path(__file__).resolve().parent / "data" / "real"
FULL = Path(__file__).resolve().parents[2] / "shared" / "data"

# Dubai mask colours (SOURCES.md table) -> expected earthgen class.
DUBAI_RGB_TO_CLASS = {
    (60, 16, 152): CLASS_ID["building"],
    (132, 41, 246): CLASS_ID["bare"],
    (110, 193, 228): CLASS_ID["road_minor"],
    (254, 221, 58): CLASS_ID["grass"],
    (226, 169, 41): CLASS_ID["water"],
    (155, 155, 155): IGNORE,
    (0, 0, 0): IGNORE,
}


def full_root() -> Path:
    if not (FULL / "ucmerced_landuse_subset").is_dir() or not (FULL / "dubai_aerial_seg").is_dir():
        pytest.skip(f"full training data not available at {FULL}")
    return FULL


def synthetic(h: int = 64, w: int = 96, gsd: float = 0.3, seed: int = 0) -> Sample:
    """Random image whose semantic is a function of the pixel (red % 13)."""
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Sample(img, "x", (img[..., 0] % 13).astype(np.uint8), gsd, "world", "synthetic")


def test_user_errors_are_one_line():
    cases = [
        lambda: read_set("landsat", root=EXCERPT),
        lambda: read_set("ucmerced", root=EXCERPT, split="val"),
        lambda: read_set("ucmerced", root=EXCERPT / "nowhere"),
        lambda: data_root("/nonexistent/earthgen-data"),
        lambda: MixedDataset({"ucmerced": 1, "imagenet": 1}, root=EXCERPT),
        lambda: MixedDataset({"ucmerced": 0}, root=EXCERPT),
        lambda: MixedDataset({"ucmerced": -1}, root=EXCERPT),
        lambda: MixedDataset({"naip": 1}, root=EXCERPT, split="test"),
        lambda: random_crop(synthetic(), 65, np.random.default_rng(0)),
    ]
    for make in cases:
        with pytest.raises(UserInputError) as e:
            make()
        assert "\n" not in str(e.value) and str(e.value)
    with pytest.raises(UserInputError, match="EARTHGEN_DATA"):
        data_root("/nonexistent/earthgen-data")


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("EARTHGEN_DATA", str(EXCERPT))
    assert data_root() == EXCERPT
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("EARTHGEN_DATA", str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="EARTHGEN_DATA"):
        data_root()


def test_excerpt_sets():
    ucm = read_set("ucmerced", root=EXCERPT)
    assert [s.name for s in ucm] == ["ucmerced/beach/beach16", "ucmerced/forest/forest07"]
    assert [s.label for s in ucm] == ["beach", "forest"]
    assert ucm[1].caption == "a satellite image of a forest"
    assert all(s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8 for s in ucm)
    assert all(s.semantic is None and s.gsd == 0.3 and s.source == "ucmerced" for s in ucm)

    (naip,) = read_set("naip", root=EXCERPT)
    import rasterio

    with rasterio.open(EXCERPT / "naip_clips" / "m_4709963_se_14_1_20090818.tif") as ds:
        raw = ds.read()
    assert raw.shape[0] == 4 and naip.image.shape == (80, 96, 3)
    assert np.array_equal(naip.image, np.moveaxis(raw[:3], 0, -1))  # RGB kept, NIR dropped
    assert naip.gsd == 5.0 and "2009" in naip.caption and "farmland" in naip.caption

    (neon,) = read_set("neon", root=EXCERPT)
    assert neon.image.shape == (128, 128, 3) and neon.gsd == 0.1 and "tree canopy" in neon.caption

    (sn,) = read_set("spacenet", root=EXCERPT)
    keep = 300 - SPACENET_WATERMARK_ROWS
    assert sn.image.shape == (keep, 192, 3) and sn.semantic.shape == (keep, 192)
    mask = np.asarray(
        Image.open(EXCERPT / "spacenet_vegas_road_sample" / "AOI_2_Vegas_img0_road_mask.png")
    )[:keep]
    expect = np.where(mask == 255, CLASS_ID["road_minor"], IGNORE)
    assert np.array_equal(sn.semantic, expect) and (mask == 255).any()
    assert sn.caption == "a satellite image of a city with roads" and sn.gsd == 0.3

    for name in ("naip", "neon", "spacenet"):
        assert read_set(name, root=EXCERPT, split="test") == []
    assert read_set("dubai", root=EXCERPT, split="test") == []  # tile_3 is train
    assert len(read_set("dubai", root=EXCERPT, split="all")) == 1


def test_dubai_mask_pixel_exact_against_colour_table():
    (s,) = read_set("dubai", root=EXCERPT)
    assert s.name == "dubai/tile_3/image_part_006" and s.source == "dubai" and s.label is None
    rgb = np.asarray(
        Image.open(
            EXCERPT / "dubai_aerial_seg" / "tile_3" / "masks" / "image_part_006.png"
        ).convert("RGB")
    )
    expect = np.full(rgb.shape[:2], 77, np.uint8)
    for colour, cid in DUBAI_RGB_TO_CLASS.items():
        expect[np.all(rgb == colour, axis=-1)] = cid
    assert (expect != 77).all()  # every pixel has a table colour
    assert np.array_equal(s.semantic, expect)
    assert set(np.unique(s.semantic)) == {1, 4, 7, 9, 11, IGNORE}  # all 7 palette indices present
    assert s.image.shape[:2] == s.semantic.shape and s.caption.startswith("a satellite image of")
    assert DUBAI_TO_CLASS == {0: 1, 1: 11, 2: 4, 3: 9, 4: 7, 5: IGNORE, 6: IGNORE}


def test_caption_from_classes():
    sem = np.full((10, 10), IGNORE, np.uint8)
    sem[:4] = CLASS_ID["building"]
    sem[4:7] = CLASS_ID["road_major"]
    sem[7, :5] = CLASS_ID["road_minor"]
    sem[8] = CLASS_ID["bare"]
    sem[9, 0] = CLASS_ID["water"]  # 1 % of labelled pixels: not named
    assert caption_from_classes(sem) == "a satellite image of buildings, roads and bare land"
    assert caption_from_classes(np.full((4, 4), IGNORE, np.uint8)) == "a satellite image"
    assert caption_from_classes(np.full((4, 4), 7, np.uint8)) == "a satellite image of water"


def test_crop_keeps_image_and_semantic_aligned():
    s = synthetic()
    rng = np.random.default_rng(1)
    origins = set()
    for _ in range(20):
        c = random_crop(s, 24, rng)
        assert c.image.shape == (24, 24, 3) and c.semantic.shape == (24, 24) and c.gsd == 0.3
        assert np.array_equal(c.semantic, c.image[..., 0] % 13)
        ys, xs = np.nonzero(np.all(s.image == c.image[0, 0], axis=-1))
        origins.add((int(ys[0]), int(xs[0])))
        f = flip_rotate(c, rng)
        assert np.array_equal(f.semantic, f.image[..., 0] % 13)
    assert len(origins) > 5  # crops are random
    whole = random_crop(synthetic(h=40, w=40), 40, rng)
    assert np.array_equal(whole.image, synthetic(h=40, w=40).image)


def test_gsd_resampling_scales_size():
    s = synthetic(h=64, w=96, gsd=0.3)
    half = resample(s, 0.6)
    assert half.image.shape == (32, 48, 3) and half.semantic.shape == (32, 48)
    assert half.gsd == 0.6
    double = resample(s, 0.15)
    assert double.image.shape == (128, 192, 3) and double.gsd == 0.15
    assert set(np.unique(double.semantic)) <= set(np.unique(s.semantic))  # nearest: no new ids
    # crops at another gsd: limited by the resampled size, equal to crops of the full resample
    rng = np.random.default_rng(3)
    c = random_crop(s, 32, rng, gsd=0.6)
    assert c.image.shape == (32, 32, 3) and c.gsd == 0.6
    with pytest.raises(UserInputError, match="larger than the image"):
        random_crop(s, 33, rng, gsd=0.6)
    assert random_crop(s, 128, rng, gsd=0.15).image.shape == (128, 128, 3)
    for seed in range(5):
        a = random_crop(s, 16, np.random.default_rng(seed), gsd=0.6)
        r = np.random.default_rng(seed)
        y, x = int(r.integers(0, 32 - 16 + 1)), int(r.integers(0, 48 - 16 + 1))
        assert np.array_equal(a.image, half.image[y : y + 16, x : x + 16])
        assert np.array_equal(a.semantic, half.semantic[y : y + 16, x : x + 16])
    # a uniform field stays uniform and labels are carried by nearest neighbour
    flat = Sample(
        np.full((40, 40, 3), 90, np.uint8), "", np.full((40, 40), 8, np.uint8), 1.0, "world", "flat"
    )
    up = random_crop(flat, 100, np.random.default_rng(0), gsd=0.25)
    assert (up.image == 90).all() and (up.semantic == 8).all()


def test_mixed_weights_and_proportions():
    mix = MixedDataset({"ucmerced": 3, "neon": 1, "naip": 0}, root=EXCERPT, resolution=64)
    assert len(mix) == 3
    rng = np.random.default_rng(0)
    draws = [mix.sample(rng) for _ in range(400)]
    sources = [d.source for d in draws]
    assert "naip" not in sources and set(sources) == {"ucmerced", "neon"}
    assert abs(sources.count("ucmerced") / 400 - 0.75) < 0.07
    assert all(d.image.shape == (64, 64, 3) and d.image.dtype == np.uint8 for d in draws)
    dub = MixedDataset({"dubai": 1}, root=EXCERPT, resolution=48)
    for _ in range(10):
        d = dub.sample(rng)
        assert d.semantic.shape == (48, 48)
        assert set(np.unique(d.semantic)) <= {1, 4, 7, 9, 11, IGNORE}


def test_mixed_upsamples_small_images():
    mix = MixedDataset({"ucmerced": 1}, root=EXCERPT, resolution=512)
    s = mix.sample(np.random.default_rng(0))
    assert s.image.shape == (512, 512, 3) and s.gsd == pytest.approx(0.15)


def test_mixed_is_deterministic_with_seeded_rng():
    mix = MixedDataset(
        {"ucmerced": 1, "spacenet": 1, "dubai": 1, "world": 1},
        root=EXCERPT,
        resolution=64,
        world_gsd=(0.5, 1.0),
    )
    a = [mix.sample(np.random.default_rng(7)) for _ in range(2)]
    r1, r2 = np.random.default_rng(11), np.random.default_rng(11)
    seq1 = [mix.sample(r1) for _ in range(12)]
    seq2 = [mix.sample(r2) for _ in range(12)]
    assert np.array_equal(a[0].image, a[1].image) and a[0].name == a[1].name
    for x, y in zip(seq1, seq2, strict=True):
        assert x.name == y.name and np.array_equal(x.image, y.image) and x.gsd == y.gsd
        assert (x.semantic is None) == (y.semantic is None)
        if x.semantic is not None:
            assert np.array_equal(x.semantic, y.semantic)
    worlds = [s for s in seq1 if s.source == "world"]
    assert worlds and all(0.5 <= s.gsd <= 1.0 and s.semantic.shape == (64, 64) for s in worlds)


def test_full_splits_sizes_and_disjointness():
    root = full_root()
    t0 = time.perf_counter()
    train = read_set("ucmerced", root=root)
    dt = time.perf_counter() - t0
    assert dt < 20, f"reading ucmerced train took {dt:.1f} s"
    test = read_set("ucmerced", root=root, split="test")
    assert len(train) == 768 and len(test) == 192
    tr, te = {s.name for s in train}, {s.name for s in test}
    assert not tr & te and len(tr) == 768 and len(te) == 192
    assert {s.label for s in train} == set(UCM_CLASSES) and len(UCM_CLASSES) == 16
    for cls in UCM_CLASSES:
        names = sorted(n for n in tr | te if n.split("/")[1] == cls)
        assert len(names) == 60 and set(names[48:]) == {n for n in te if n.split("/")[1] == cls}
    assert all(s.caption.startswith("a satellite image of") for s in train[:50])
    d_train, d_test = read_set("dubai", root=root), read_set("dubai", root=root, split="test")
    assert len(d_train) == 45 and len(d_test) == 9
    assert all(s.name.startswith("dubai/tile_8/") for s in d_test)
    assert not any("tile_8" in s.name for s in d_train)
    for name in ("naip", "neon", "spacenet"):
        assert read_set(name, root=root, split="test") == []
    assert sorted(REAL_SETS) == sorted(("ucmerced", "dubai", "naip", "neon", "spacenet"))
