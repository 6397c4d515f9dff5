"""`earthgen generate` on a tiny saved pipeline: text, layouts (PNG and real OSM), inpainting."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import fixture_path
from PIL import Image
from tiny_models import get_dummy_components

from earthgen.cli import main
from earthgen.pipelines.image import EarthImagePipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "pipe"
    EarthImagePipeline(**get_dummy_components()).save_pretrained(d)
    return d


def test_text_to_image_seed_is_reproducible(tmp_path, model, capsys):
    args = [
        "generate",
        "--model",
        str(model),
        "--prompt",
        "farmland",
        "--gsd",
        "2",
        "--steps",
        "2",
        "--seed",
        "7",
    ]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert "seed 7" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    # --metadata-guidance equal to --guidance: the same image; another value: a different one
    assert (
        main(
            [*args, "--guidance", "5", "--metadata-guidance", "5", "--out", str(tmp_path / "c.png")]
        )
        == 0
    )
    assert main([*args, "--metadata-guidance", "12", "--out", str(tmp_path / "d.png")]) == 0
    c, d = (np.asarray(Image.open(tmp_path / f"{k}.png")).astype(int) for k in "cd")
    assert np.abs(c - a).max() <= 1 and np.abs(d - a).mean() > 0.1


def test_layout_png_and_inpainting(tmp_path, model):
    from earthgen.classes import PALETTE
    from earthgen.io import write_png

    ids = np.zeros((64, 64), np.uint8)
    ids[:, 20:26] = 4
    write_png(tmp_path / "lay.png", ids, palette=PALETTE)
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--layout",
                str(tmp_path / "lay.png"),
                "--steps",
                "2",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "l.png"),
            ]
        )
        == 0
    )
    Image.fromarray(PALETTE[ids]).save(tmp_path / "colour.png")  # class colours: the same layout
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--layout",
                str(tmp_path / "colour.png"),
                "--steps",
                "2",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    c, p = (np.asarray(Image.open(tmp_path / n)) for n in ("c.png", "l.png"))
    np.testing.assert_array_equal(c, p)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--image",
                str(tmp_path / "l.png"),
                "--mask",
                str(tmp_path / "m.png"),
                "--steps",
                "2",
                "--seed",
                "2",
                "--out",
                str(tmp_path / "e.png"),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "e.png")).shape == (64, 64, 3)


def test_outpainting_extends_the_image(tmp_path, model):
    """--extend grows the image by generated borders (the canvas rounded up to multiples of 8);
    the canvas and mask of outpaint_canvas keep the original where it was."""
    from earthgen.pipelines.image import outpaint_canvas

    src = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    canvas, mask, (r, c) = outpaint_canvas(src, 16, 3, 0, 8, multiple=8)
    assert canvas.shape == (48, 72, 3) and (r, c) == (0, 16)
    np.testing.assert_array_equal(canvas[:40, 16:64], src)
    assert mask[:40, 16:64].max() == 0 and mask[40:].min() == 1 and mask[:, :16].min() == 1
    Image.fromarray(src).save(tmp_path / "src.png")
    argv = [
        "generate",
        "--model",
        str(model),
        "--image",
        str(tmp_path / "src.png"),
        "--extend",
        "16,3,0,8",
        "--steps",
        "2",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "o.png"),
    ]
    assert main(argv) == 0
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (48, 72, 3)


def test_osm_layout_gives_a_geotiff(tmp_path, model):
    import rasterio

    osm = fixture_path("osm/monaco-latest.osm.pbf")
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--layout",
                str(osm),
                "--center",
                "43.7384,7.4246",
                "--size",
                "64",
                "--gsd",
                "4",
                "--steps",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "m.png"),
            ]
        )
        == 0
    )
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform.a == 4.0 and ds.count == 3


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--model", "/nonexistent/model"], "model not found"),
        (["--size", "60"], "multiples of 8"),
        (["--layout", "/nonexistent.png"], "--layout /nonexistent.png: file not found"),
        (["--image", "/nonexistent.jpg"], "--image /nonexistent.jpg: file not found"),
        (["--layout", "/x.bmp"], "unknown file type '.bmp'"),
        (["--metadata-guidance", "3"], "give --gsd too"),
        (["--extend", "8,0,0,0"], "give --image"),
        (["--extend", "8,0,0"], "--extend"),
        (["--extend", "nan,0,0,0"], "whole pixels"),
        (["--extend=-8,0,0,0"], "whole pixels"),
    ],
)
def test_bad_input_exits_cleanly(tmp_path, model, extra, msg):
    argv = [
        "generate",
        "--model",
        str(model),
        "--steps",
        "1",
        "--out",
        str(tmp_path / "x.png"),
        *extra,
    ]
    r = subprocess.run([sys.executable, "-m", "earthgen", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_output_format_follows_the_extension(tmp_path, model):
    """--out x.jpg writes a JPEG, x.tif a TIFF (a GeoTIFF with an OSM layout, with no sidecar);
    a .png or .jpg --out with an OSM layout gets the GeoTIFF beside it."""
    import rasterio

    args = [
        "generate",
        "--model",
        str(model),
        "--prompt",
        "farmland",
        "--gsd",
        "2",
        "--steps",
        "2",
        "--seed",
        "7",
    ]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "a.jpg")]) == 0
    assert main([*args, "--out", str(tmp_path / "a.tiff")]) == 0
    png = np.asarray(Image.open(tmp_path / "a.png")).astype(int)
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)
        assert np.abs(np.asarray(im).astype(int) - png).mean() < 12  # lossy, quality 95
    with Image.open(tmp_path / "a.tiff") as im:
        assert im.format == "TIFF"
        np.testing.assert_array_equal(np.asarray(im), png)
    assert not (tmp_path / "a.tif").exists()  # no layout: no GeoTIFF beside the PNG / JPEG

    osm = fixture_path("osm/monaco-latest.osm.pbf")
    geo = [
        "generate",
        "--model",
        str(model),
        "--layout",
        str(osm),
        "--center",
        "43.7384,7.4246",
        "--size",
        "64",
        "--gsd",
        "4",
        "--steps",
        "2",
        "--seed",
        "3",
    ]
    assert main([*geo, "--out", str(tmp_path / "m.tif")]) == 0
    assert main([*geo, "--out", str(tmp_path / "j.jpg")]) == 0
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform.a == 4.0 and ds.count == 3
        tif = np.moveaxis(ds.read(), 0, -1)
    assert sorted(p.name for p in tmp_path.glob("m.*")) == ["m.tif"]
    with rasterio.open(tmp_path / "j.tif") as ds:  # the sidecar of the JPEG: the exact pixels
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), tif)
        assert ds.crs.to_epsg() == 32632


def test_georeferenced_class_map_and_jpeg_inputs(tmp_path, model):
    """A GeoTIFF class map keeps its georeference through generate; a JPEG --image is read."""
    import rasterio

    from earthgen.classes import PALETTE
    from earthgen.inputs import read_layout

    lay = read_layout(
        fixture_path("osm/monaco-latest.osm.pbf"), center=(43.7384, 7.4246), size=64, gsd=4.0
    )
    from earthgen.io import write_geotiff

    write_geotiff(tmp_path / "cls.tif", lay.semantic, lay.crs, lay.transform, colormap=PALETTE)
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--layout",
                str(tmp_path / "cls.tif"),
                "--steps",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    with rasterio.open(tmp_path / "g.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform == lay.transform
    Image.open(tmp_path / "g.png").convert("RGB").save(tmp_path / "ref.jpg", quality=90)
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--image",
                str(tmp_path / "ref.jpg"),
                "--steps",
                "2",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "i.jpeg"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "i.jpeg").size == (64, 64)


@pytest.mark.parametrize("out", ["x.bmp", "x.xyz", "x"])
def test_unknown_output_format_refused_before_the_model_loads(tmp_path, out, monkeypatch, capsys):
    import earthgen.pipelines.image as pi

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pi, "load_pipeline", boom)
    assert (
        main(
            [
                "generate",
                "--model",
                "/nonexistent/model",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--out" in err and ".png or .jpg or .jpeg or .tif or .tiff" in err
    assert list(tmp_path.iterdir()) == []
