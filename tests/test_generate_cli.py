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
    args = ["generate", "--model", str(model), "--prompt", "farmland", "--gsd", "2", "--steps", "2", "--seed", "7"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert "seed 7" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    # --metadata-guidance equal to --guidance: the same image; another value: a different one
    assert main([*args, "--guidance", "5", "--metadata-guidance", "5", "--out", str(tmp_path / "c.png")]) == 0
    assert main([*args, "--metadata-guidance", "12", "--out", str(tmp_path / "d.png")]) == 0
    c, d = (np.asarray(Image.open(tmp_path / f"{k}.png")).astype(int) for k in "cd")
    assert np.abs(c - a).max() <= 1 and np.abs(d - a).mean() > 0.1


def test_layout_png_and_inpainting(tmp_path, model):
    from earthgen.classes import PALETTE
    from earthgen.io import write_png

    ids = np.zeros((64, 64), np.uint8)
    ids[:, 20:26] = 4
    write_png(tmp_path / "lay.png", ids, palette=PALETTE)
    assert main(["generate", "--model", str(model), "--layout", str(tmp_path / "lay.png"), "--steps", "2",
                 "--seed", "1", "--out", str(tmp_path / "l.png")]) == 0
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["generate", "--model", str(model), "--image", str(tmp_path / "l.png"), "--mask",
                 str(tmp_path / "m.png"), "--steps", "2", "--seed", "2", "--out", str(tmp_path / "e.png")]) == 0
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
    argv = ["generate", "--model", str(model), "--image", str(tmp_path / "src.png"), "--extend", "16,3,0,8",
            "--steps", "2", "--seed", "1", "--out", str(tmp_path / "o.png")]
    assert main(argv) == 0
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (48, 72, 3)


def test_osm_layout_gives_a_geotiff(tmp_path, model):
    import rasterio

    osm = fixture_path("osm/monaco-latest.osm.pbf")
    assert main(["generate", "--model", str(model), "--layout", str(osm), "--center", "43.7384,7.4246",
                 "--size", "64", "--gsd", "4", "--steps", "2", "--seed", "3", "--out", str(tmp_path / "m.png")]) == 0
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform.a == 4.0 and ds.count == 3


@pytest.mark.parametrize("extra, msg", [
    (["--model", "/nonexistent/model"], "model not found"),
    (["--size", "60"], "multiples of 8"),
    (["--layout", "/nonexistent.png"], "cannot read layout"),
    (["--metadata-guidance", "3"], "give --gsd too"),
    (["--extend", "8,0,0,0"], "give --image"),
    (["--extend", "8,0,0"], "--extend"),
    (["--extend", "nan,0,0,0"], "whole pixels"),
    (["--extend=-8,0,0,0"], "whole pixels"),
])
def test_bad_input_exits_cleanly(tmp_path, model, extra, msg):
    argv = ["generate", "--model", str(model), "--steps", "1", "--out", str(tmp_path / "x.png"), *extra]
    r = subprocess.run([sys.executable, "-m", "earthgen", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()
