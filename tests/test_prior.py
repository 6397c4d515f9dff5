"""Layout priors (earthgen.prior): measured statistics, rendering, and render-then-refine in the
CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from earthgen.classes import CLASS_ID, CLASS_NAMES, NUM_CLASSES
from earthgen.errors import UserInputError
from earthgen.prior import (
    DEFAULT_STRENGTH,
    check_strength,
    layout_prior_inputs,
    load_stats,
    render_prior,
)


def _stripes(size: int = 96) -> np.ndarray:
    """A layout with every class in a 12-px-or-wider vertical band ``[size, size]``."""
    ids = np.zeros((size, size), np.uint8)
    edges = np.linspace(0, size, NUM_CLASSES + 1).astype(int)
    for c in range(NUM_CLASSES):
        ids[:, edges[c] : edges[c + 1]] = c
    return ids


def _centroid(img: np.ndarray) -> float:
    """Power-weighted mean radial frequency (cycles/pixel) of a luminance image ``[H, W]``."""
    x = img.astype(np.float64) - img.mean()
    p = np.abs(np.fft.rfft2(x)) ** 2
    k = np.hypot(np.fft.fftfreq(x.shape[0])[:, None], np.fft.rfftfreq(x.shape[1])[None, :])
    p[0, 0] = 0
    return float((p * k).sum() / p.sum())


def test_stats_cover_every_class_with_finite_values():
    stats = load_stats()
    assert set(stats["classes"]) == set(CLASS_NAMES)
    for name, st in stats["classes"].items():
        mean, cov = np.asarray(st["mean_rgb"]), np.asarray(st["cov_rgb"])
        assert mean.shape == (3,) and cov.shape == (3, 3), name
        assert np.isfinite(mean).all() and np.isfinite(cov).all(), name
        assert ((mean >= 0) & (mean <= 255)).all(), name
        np.testing.assert_allclose(cov, cov.T, atol=1e-6)
        assert np.linalg.eigvalsh(cov).min() > -1e-6, name  # a covariance
        for k in ("psd_beta", "psd_log_amp", "k_min", "k_max", "ref_gsd"):
            assert math.isfinite(st[k]), (name, k)
        assert 0.5 < st["psd_beta"] < 5 and 0 < st["k_min"] < st["k_max"]
        assert st["sources"], name


def test_rendered_class_means_match_the_stats():
    ids = _stripes(156)
    img = render_prior(ids, gsd=1.0, seed=0)
    assert img.shape == (156, 156, 3) and img.dtype == np.uint8
    stats = load_stats()["classes"]
    for c in range(NUM_CLASSES):
        inner = np.zeros_like(ids, bool)
        inner[:, 1:-1] = (ids[:, 1:-1] == c) & (ids[:, :-2] == c) & (ids[:, 2:] == c)
        inner = inner & np.roll(inner, 3, 1) & np.roll(inner, -3, 1)  # away from the borders
        got = img[inner].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(
            got, stats[CLASS_NAMES[c]]["mean_rgb"], atol=14, err_msg=CLASS_NAMES[c]
        )
    # flat colours without texture: the means exactly (rounded), and no noise
    flat = render_prior(np.full((32, 32), CLASS_ID["water"], np.uint8), 1.0, seed=0, texture=0.0)
    np.testing.assert_allclose(flat.reshape(-1, 3).mean(0), stats["water"]["mean_rgb"], atol=0.6)
    assert flat.reshape(-1, 3).std(0).max() < 0.6


def test_render_is_deterministic_given_a_seed():
    ids = _stripes(64)
    a, b = render_prior(ids, 2.0, seed=5), render_prior(ids, 2.0, seed=5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - render_prior(ids, 2.0, seed=6)).mean() > 1


def test_borders_are_blended():
    ids = np.zeros((32, 64), np.uint8)
    ids[:, 32:] = CLASS_ID["water"]
    img = render_prior(ids, 1.0, seed=0, texture=0.0).astype(float).mean(2)
    row = img[16]
    assert row[29] > row[31] > row[32] > row[34]  # a ramp of a few pixels, not a step
    assert abs(row[0] - row[28]) < 1 and abs(row[40] - row[63]) < 1


def test_gsd_scales_the_texture():
    """A coarser GSD puts the same physical texture into fewer pixels: the luminance spectrum's
    centroid (cycles/pixel) moves up (the power law is self-similar; its scale is the largest
    measured texture wavelength, 1 / k_min, beyond which the spectrum is flat)."""
    ids = np.full((128, 128), CLASS_ID["building"], np.uint8)
    fine = render_prior(ids, 0.1, seed=1).astype(float).mean(2)
    coarse = render_prior(ids, 4.0, seed=1).astype(float).mean(2)
    assert _centroid(coarse) > 1.3 * _centroid(fine)


def test_bad_render_inputs():
    with pytest.raises(UserInputError, match="gsd"):
        render_prior(np.zeros((8, 8), np.uint8), float("nan"))
    with pytest.raises(UserInputError, match="outside the table"):
        render_prior(np.full((8, 8), 40, np.uint8), 1.0)


def test_layout_prior_inputs():
    ids = _stripes(48)
    kw = layout_prior_inputs(ids, 2.0, seed=3, strength=DEFAULT_STRENGTH, size=(64, 32))
    assert kw["strength"] == DEFAULT_STRENGTH == 0.7 and kw["image"].shape == (32, 64, 3)
    assert layout_prior_inputs(ids, None, 3, 1.0) == {"strength": 1.0}  # pure noise: no prior
    for bad in (0, 1.5, float("nan"), "x"):
        with pytest.raises(UserInputError, match="strength"):
            check_strength(bad)


def test_cli_bad_strength_exits_2_before_loading_a_model(tmp_path, capsys):
    from earthgen.cli import main

    def argv(value: str) -> list[str]:  # a missing model: the strength is checked first
        return [
            "generate",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "x",
            f"--strength={value}",
            "--out",
            str(tmp_path / "x.png"),
        ]

    r = subprocess.run(
        [sys.executable, "-m", "earthgen", *argv("nan")], capture_output=True, text=True
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--strength" in lines[0], r.stderr
    for value in ("0", "1.5", "-0.2", "inf"):
        assert main(argv(value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--strength" in err[0] and "model not found" not in err[0]
    assert not (tmp_path / "x.png").exists()


def test_cli_layout_renders_then_refines(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from tiny_models import get_dummy_components

    from earthgen.classes import PALETTE
    from earthgen.cli import main
    from earthgen.io import write_png
    from earthgen.pipelines.image import EarthImagePipeline

    model = tmp_path / "pipe"
    EarthImagePipeline(**get_dummy_components()).save_pretrained(model)
    ids = np.zeros((64, 64), np.uint8)
    ids[:, 20:26] = CLASS_ID["road_minor"]
    ids[40:] = CLASS_ID["water"]
    write_png(tmp_path / "lay.png", ids, palette=PALETTE)
    base = [
        "generate",
        "--model",
        str(model),
        "--layout",
        str(tmp_path / "lay.png"),
        "--gsd",
        "2",
        "--steps",
        "2",
        "--seed",
        "1",
    ]
    assert (
        main([*base, "--prior-out", str(tmp_path / "p.png"), "--out", str(tmp_path / "a.png")]) == 0
    )
    prior = np.asarray(Image.open(tmp_path / "p.png"))
    np.testing.assert_array_equal(prior, render_prior(ids, 2.0, seed=1))
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (64, 64, 3)
    assert main([*base, "--strength", "1", "--out", str(tmp_path / "b.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{k}.png")).astype(int) for k in "ab")
    assert np.abs(a - b).mean() > 0.5  # the prior changes the result
    assert (
        main(
            [
                *base,
                "--image",
                str(tmp_path / "a.png"),
                "--prior-out",
                str(tmp_path / "q.png"),
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 2
    )  # the prior is for layouts without --image


def test_measured_stats_on_real_data():
    """Re-measure on the real train splits (skipped where the data are absent) and compare with
    the packaged JSON."""
    from earthgen.datasets import data_root
    from earthgen.prior import SOURCES, measure_prior_stats

    try:
        root = data_root()
    except UserInputError:
        pytest.skip("real data sets not present")
    from earthgen.datasets import SET_DIRS

    needed = {s for c in ("water", "bare", "grass") for s, _ in SOURCES[c]}
    if not all((root / SET_DIRS[s]).is_dir() for s in needed):
        pytest.skip("some real data sets are missing")
    names = ["water", "bare", "grass"]  # the sets of these: UC Merced and Dubai (fast enough)
    got, packaged = measure_prior_stats(root, classes=names)["classes"], load_stats()["classes"]
    for name in names:
        np.testing.assert_allclose(got[name]["mean_rgb"], packaged[name]["mean_rgb"], atol=0.5)
        assert abs(got[name]["psd_beta"] - packaged[name]["psd_beta"]) < 0.05
    # measured, not hand-picked: water darker than bare ground, grass greener than red
    assert sum(got["water"]["mean_rgb"]) < sum(got["bare"]["mean_rgb"])
    assert got["grass"]["mean_rgb"][1] > got["grass"]["mean_rgb"][0]
