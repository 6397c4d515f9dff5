"""`earthgen.evaluation.real` and `earthgen eval image` (real-data mode): a tiny random pipeline
scored by the packaged RealNet on the excerpts in tests/data/real (no full data needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import find_fixture
from tiny_models import get_dummy_components

from earthgen.cli import main
from earthgen.evaluation.real import evaluate_real, layout_target, osm_fixture_layouts
from earthgen.pipelines.image import EarthImagePipeline

# 2 real + 2 generated features: the FID covariances are singular (expected here)
pytestmark = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")

REAL = Path(__file__).resolve().parent / "data" / "real"


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    p = EarthImagePipeline(**get_dummy_components())
    p.set_progress_bar_config(disable=True)
    assert p.takes_layout
    return p


@pytest.fixture(scope="module")
def osm(tmp_path_factory):
    src = find_fixture("osm/monaco-latest.osm.pbf")
    if src is None:
        return {}
    d = tmp_path_factory.mktemp("fixtures")
    (d / "osm").mkdir()
    (d / "osm" / "monaco-latest.osm.pbf").symlink_to(src)
    lays = osm_fixture_layouts(d, size=64)
    assert set(lays) == {"monaco"} and lays["monaco"].semantic.shape == (64, 64)
    assert lays["monaco"].gsd == 1.0
    return lays


def _run(pipe, osm, seed=0):
    return evaluate_real(
        pipe,
        n_per_class=1,
        steps=2,
        size=64,
        classes=("beach", "forest"),
        dubai_per_image=1,
        seed=seed,
        root=REAL,
        test_split="all",
        train_split="all",
        osm_layouts=osm,
        progress=False,
        batch_size=1,
    )


@pytest.fixture(scope="module")
def result(pipe, osm):
    return _run(pipe, osm)


def test_evaluate_real_keys_ranges_and_ceilings(result, osm):
    r = result
    assert {
        "model",
        "realnet",
        "settings",
        "counts",
        "class_accuracy",
        "class_accuracy_ceiling",
        "class_target",
        "class_target_met",
        "per_class_accuracy",
        "fid_realnet",
        "fid_realnet_ceiling",
        "kid_realnet",
        "kid_realnet_ceiling",
        "layout_dubai",
        "layout_miou",
        "layout_miou_ceiling",
        "layout_target",
        "layout_target_met",
        "ceiling",
    } <= set(r)
    assert r["counts"]["class_images"] == 2 and r["counts"]["dubai_layouts"] == 1
    assert r["settings"]["size"] == 64 and r["settings"]["steps"] == 2
    assert 0 <= r["class_accuracy"] <= 1 and 0 <= r["class_accuracy_ceiling"] <= 1
    assert set(r["per_class_accuracy"]) == {"beach", "forest"}
    assert math.isfinite(r["fid_realnet"]) and r["fid_realnet"] >= 0
    assert math.isfinite(r["fid_realnet_ceiling"])
    lay = r["layout_dubai"]
    assert 0 <= lay["miou"] <= 1 and 0 <= lay["ceiling_miou"] <= 1
    assert r["layout_target"] == pytest.approx(layout_target(lay["ceiling_miou"]))
    assert isinstance(r["layout_target_met"], bool) and isinstance(r["class_target_met"], bool)
    assert r["class_target_met"] == (r["class_accuracy"] >= 0.6)
    for k in ("classifier_accuracy", "segmenter_miou", "fid_realnet_train_vs_test"):
        assert k in r["ceiling"]
    if osm:
        m = r["layout_osm"]["monaco"]
        assert 0 <= m["miou"] <= 1 and m["ceiling_miou"] == r["ceiling"]["segmenter_miou"]
    json.dumps(r, allow_nan=False)  # strict JSON: NaN written as None


def test_evaluate_real_is_deterministic(pipe, osm, result):
    again = _run(pipe, osm)
    strip = ("seconds",)
    assert {k: v for k, v in again.items() if k not in strip} == {
        k: v for k, v in result.items() if k not in strip
    }


def test_layout_target():
    assert layout_target(0.7) == 0.5
    assert layout_target(0.5) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "flags",
    [
        ["--n-per-class", "0"],
        ["--strength", "2"],
        ["--guidance", "nan"],
        ["--steps", "-1"],
        ["--osm", "/nonexistent"],
    ],
)
def test_cli_bad_args_fail_before_loading(flags, capsys, monkeypatch):
    import earthgen.commands.eval_image as ev

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "_load", boom)
    assert main(["eval", "image", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_cli_default_is_real_mode(tmp_path, monkeypatch):
    import earthgen.commands.eval_image as ev
    import earthgen.evaluation.real as real

    seen = {}

    def fake(pipe, **kw):
        seen.update(kw)
        return {"class_accuracy": 0.5}

    monkeypatch.setattr(ev, "_load", lambda args: (object(), "packaged/image"))
    monkeypatch.setattr(real, "evaluate_real", fake)
    out = tmp_path / "m.json"
    assert main(["eval", "image", "--data-root", str(REAL), "--out", str(out)]) == 0
    assert seen["n_per_class"] == 4 and seen["steps"] == 20 and seen["guidance_scale"] == 4.0
    assert seen["strength"] is None and seen["osm_layouts"] is None
    assert seen["model"] == "packaged/image" and out.is_file()
    assert np.isclose(json.loads(out.read_text())["class_accuracy"], 0.5)
