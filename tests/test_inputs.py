"""earthgen.inputs: one loader per input kind (issue 25 §4) and the output format by extension
(issue 23 §4). Layouts: OSM (.osm, .pbf, .osm.bz2, .osm.gz), GeoJSON, class maps (grey, palette,
class colours; GeoTIFF keeps its georeference); images: PNG / JPEG / GeoTIFF."""

from __future__ import annotations

import bz2
import gzip
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import fixture_path
from PIL import Image

from earthgen.classes import NUM_CLASSES, PALETTE
from earthgen.errors import UserInputError
from earthgen.inputs import (
    IMAGE_SUFFIXES,
    LAYOUT_SUFFIXES,
    check_image_output,
    read_image,
    read_layout,
    write_image,
)
from earthgen.io import write_geotiff, write_png

BAVARIA = "osm/planet_10.068_48.135_10.071_48.137.osm"  # plain XML, 34 buildings
OAKLAND = "osm/West-Oakland.osm.bz2"
SOLARIS = "imagery/solaris_sample_geotiff.tif"  # 900x900 uint16, EPSG:32616, 0.5 m
LANDSAT = "imagery/rasterio_RGB.byte.tif"  # 791x718x3 uint8, EPSG:32618, 300 m


@pytest.fixture(scope="module")
def bavaria():
    """The Bavarian block rasterized at 1 m/px (the reference for the compressed copies)."""
    return read_layout(fixture_path(BAVARIA), gsd=1.0)


def test_suffix_lists():
    for s in (
        ".osm",
        ".osm.pbf",
        ".pbf",
        ".osm.bz2",
        ".osm.gz",
        ".geojson",
        ".json",
        ".png",
        ".tif",
        ".tiff",
    ):
        assert s in LAYOUT_SUFFIXES
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def test_osm_plain_gz_bz2_give_the_same_layout(tmp_path, bavaria):
    raw = fixture_path(BAVARIA).read_bytes()
    (tmp_path / "b.osm.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.osm.bz2").write_bytes(bz2.compress(raw))
    assert bavaria.semantic.dtype == np.uint8 and bavaria.semantic.shape == (227, 227)
    assert bavaria.crs.to_epsg() == 32632 and bavaria.gsd == 1.0
    assert bavaria.description.endswith("rasterized") and bavaria.source is not None
    assert len(bavaria.source.building_corners) > 10  # the Layout keeps the extra fields
    for name in ("b.osm.gz", "b.osm.bz2"):
        lay = read_layout(tmp_path / name, gsd=1.0)
        np.testing.assert_array_equal(lay.semantic, bavaria.semantic)
        assert lay.transform == bavaria.transform
    oak = read_layout(fixture_path(OAKLAND), gsd=2.0)  # a real .osm.bz2 fixture (Osmosis XML)
    assert oak.crs.to_epsg() == 32610 and len(np.unique(oak.semantic)) > 2


def test_geojson_layout(tmp_path, bavaria):
    import json

    gj = bavaria.source.features_geojson()
    (tmp_path / "f.geojson").write_text(json.dumps(gj))
    lay = read_layout(tmp_path / "f.geojson", center=(48.136, 10.0695), size=64, gsd=1.0)
    assert lay.semantic.shape == (64, 64) and lay.crs is not None
    assert len(np.unique(lay.semantic)) > 1


def test_class_maps_grey_palette_colour_and_geotiff(tmp_path, bavaria):
    ids = bavaria.semantic
    assert len(np.unique(ids)) >= 3
    Image.fromarray(ids).save(tmp_path / "grey.png")
    write_png(tmp_path / "pal.png", ids, palette=PALETTE)
    Image.fromarray(PALETTE[ids]).save(tmp_path / "colour.png")
    Image.fromarray(PALETTE[ids]).convert("RGBA").save(tmp_path / "rgba.png")
    for name in ("grey.png", "pal.png", "colour.png", "rgba.png"):
        lay = read_layout(tmp_path / name, gsd=0.5)
        np.testing.assert_array_equal(lay.semantic, ids, err_msg=name)
        assert lay.gsd == 0.5 and lay.crs is None and lay.transform is None and lay.source is None
        assert lay.description == f"class-id map {name} (227x227)"
    assert read_layout(tmp_path / "grey.png").gsd is None  # no gsd given, none in a PNG
    small = read_layout(tmp_path / "colour.png", size=(100, 50))
    assert small.semantic.shape == (50, 100) and set(np.unique(small.semantic)) <= set(
        np.unique(ids)
    )
    write_geotiff(tmp_path / "cls.tif", ids, bavaria.crs, bavaria.transform, colormap=PALETTE)
    geo = read_layout(tmp_path / "cls.tif")
    np.testing.assert_array_equal(geo.semantic, ids)
    assert geo.crs.to_epsg() == 32632 and geo.transform == bavaria.transform and geo.gsd == 1.0
    half = read_layout(tmp_path / "cls.tif", size=(454, 454))  # the grid follows a resize
    assert half.transform.a == pytest.approx(0.5) and half.gsd == pytest.approx(0.5)
    assert half.transform.c == bavaria.transform.c


def test_bad_class_maps(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2, 3] = (1, 2, 250)  # not a class colour
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(UserInputError, match=r"^--layout .*odd\.png: 1 pixels have colours not in"):
        read_layout(tmp_path / "odd.png")
    ids = np.full((4, 4), NUM_CLASSES + 3, np.uint8)
    Image.fromarray(ids).save(tmp_path / "big.png")
    with pytest.raises(UserInputError, match=r"^--semantic .*big\.png: class ids"):
        read_layout(tmp_path / "big.png", flag="--semantic")
    with pytest.raises(UserInputError, match="size must be"):
        read_layout(tmp_path / "big.png", size=(0, 4))


def test_images_png_jpeg_geotiff(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)])).save(tmp_path / "rgba.png")
    smooth = np.repeat(np.linspace(0, 255, 50, dtype=np.uint8)[None, :, None], 40, 0).repeat(3, 2)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").rgb, rgb)
    g = read_image(tmp_path / "grey.png").rgb
    assert g.shape == (40, 50, 3) and (g == rgb[..., :1]).all()
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").rgb, rgb)  # alpha dropped
    j = read_image(tmp_path / "a.jpg")
    assert j.rgb.shape == (40, 50, 3) and np.abs(j.rgb.astype(int) - smooth).max() <= 4
    assert j.gsd is None and j.crs is None and j.transform is None
    land = read_image(fixture_path(LANDSAT))  # uint8 GeoTIFF: values kept
    assert land.rgb.shape == (718, 791, 3) and land.crs.to_epsg() == 32618
    assert land.gsd == pytest.approx(300.04, abs=0.1)
    import rasterio

    with rasterio.open(fixture_path(LANDSAT)) as ds:
        np.testing.assert_array_equal(land.rgb, np.moveaxis(ds.read(), 0, -1))
    pan = read_image(fixture_path(SOLARIS))  # uint16 panchromatic: stretched, grey
    assert pan.rgb.dtype == np.uint8 and pan.rgb.shape == (900, 900, 3) and pan.gsd == 0.5
    assert pan.crs.to_epsg() == 32616 and pan.rgb.max() == 255 and pan.rgb.min() == 0


def test_write_image_formats_round_trip(tmp_path, bavaria):
    rgb = np.random.default_rng(1).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    for ext, fmt in (
        (".png", "PNG"),
        (".jpg", "JPEG"),
        (".jpeg", "JPEG"),
        (".tif", "TIFF"),
        (".TIFF", "TIFF"),
    ):
        p = write_image(tmp_path / f"x{ext}", rgb)
        with Image.open(p) as im:
            assert im.format == fmt and im.size == (20, 30)
            if fmt != "JPEG":
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)
    write_image(tmp_path / "g.tif", rgb, crs=bavaria.crs, transform=bavaria.transform)
    back = read_image(tmp_path / "g.tif")
    np.testing.assert_array_equal(back.rgb, rgb)
    assert back.crs.to_epsg() == 32632 and back.transform == bavaria.transform and back.gsd == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = read_image(tmp_path / "x.tif")
    assert plain.crs is None and plain.gsd is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    with pytest.raises(UserInputError, match="not supported"):
        write_image(tmp_path / "x.bmp", rgb)


def test_check_image_output(tmp_path):
    for name in ("a.png", "a.JPG", "a.jpeg", "a.tif", "a.tiff"):
        check_image_output(tmp_path / name)
    for name, msg in (
        ("a.bmp", "extension '.bmp'"),
        ("a.xyz", "extension '.xyz'"),
        ("a", "no extension"),
        ("a.png.bak", "'.bak'"),
    ):
        with pytest.raises(UserInputError, match=msg) as e:
            check_image_output(tmp_path / name, "--prior-out")
        assert str(e.value).startswith("--prior-out") and ".png or .jpg or .jpeg or .tif" in str(
            e.value
        )
    (tmp_path / "d.png").mkdir()
    with pytest.raises(UserInputError, match="is a folder"):
        check_image_output(tmp_path / "d.png")
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]


UNREADABLE = "cannot read the file as an image (PNG, JPEG or TIFF)"


def test_errors_name_the_flag_and_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00junk")
    (tmp_path / "dir.png").mkdir()
    cases = [
        (
            lambda: read_layout(tmp_path / "junk.png"),
            f"--layout {tmp_path / 'junk.png'}: {UNREADABLE}",
        ),
        (
            lambda: read_layout(tmp_path / "junk.tif"),
            f"--layout {tmp_path / 'junk.tif'}: {UNREADABLE}",
        ),
        (
            lambda: read_image(tmp_path / "junk.png"),
            f"--image {tmp_path / 'junk.png'}: {UNREADABLE}",
        ),
        (
            lambda: read_image(tmp_path / "junk.tif", flag="--mask"),
            f"--mask {tmp_path / 'junk.tif'}: {UNREADABLE}",
        ),
        (
            lambda: read_layout(tmp_path / "none.osm.gz"),
            f"--layout {tmp_path / 'none.osm.gz'}: file not found",
        ),
        (
            lambda: read_image(tmp_path / "dir.png"),
            f"--image {tmp_path / 'dir.png'}: is a folder, not a file",
        ),
        (lambda: read_layout(tmp_path / "x.bmp"), "--layout"),
        (lambda: read_image(tmp_path / "x.gif"), "unknown file type '.gif'"),
    ]
    for fn, msg in cases:
        with pytest.raises(UserInputError) as e:
            fn()
        assert msg in str(e.value) and "\n" not in str(e.value), (msg, str(e.value))
    garbage = tmp_path / "bad.osm.pbf"
    garbage.write_bytes(b"not a pbf")
    with pytest.raises(UserInputError, match=r"^--layout .*bad\.osm\.pbf: cannot read OSM data"):
        read_layout(garbage, gsd=1.0)


@pytest.mark.slow
def test_the_same_error_from_every_cli_caller(tmp_path):
    """An unreadable layout or image file: `generate --layout/--image/--mask` print the loader's
    one line (exit 2, no traceback), and the Python API raises the same text."""
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    for flag in ("--layout", "--image", "--mask"):
        argv = [
            "generate",
            "--prompt",
            "x",
            flag,
            str(junk),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o.png"),
        ]
        if flag == "--mask":
            argv += ["--image", str(tmp_path / "ok.png")]
        want = f"{flag} {junk}: {UNREADABLE}"
        r = subprocess.run(
            [sys.executable, "-m", "earthgen", *argv], capture_output=True, text=True, timeout=300
        )
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].endswith(want), (lines[0], want)
        api = read_image if flag != "--layout" else read_layout
        with pytest.raises(UserInputError) as e:
            api(junk, flag=flag)
        assert str(e.value) == f"{flag} {junk}: {UNREADABLE}"
    assert not (tmp_path / "o.png").exists()
