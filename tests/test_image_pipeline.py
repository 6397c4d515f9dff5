"""EarthImagePipeline with tiny random components (the real classes at tiny size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import get_dummy_components

from controls import FusedControlNet
from earthgen.conditioning import MetadataEncoder
from earthgen.errors import UserInputError
from earthgen.pipelines.image import EarthImagePipeline, save_geotiff


@pytest.fixture(scope="module")
def pipe():
    p = EarthImagePipeline(**get_dummy_components())
    p.set_progress_bar_config(disable=True)
    return p


def layout_map(h: int = 64, w: int = 64) -> np.ndarray:
    ids = np.zeros((h, w), dtype=np.uint8)
    ids[:, w // 3 : w // 3 + 6] = 4  # a road
    ids[8:24, 8:20] = 1  # a building
    ids[40:, 40:] = 7  # water
    return ids


def run(pipe, **kw):
    base = {
        "prompt": "dense city",
        "num_inference_steps": 3,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
    }
    return pipe(**{**base, **kw}).images


def test_text_to_image_shape_range_and_determinism(pipe):
    a = run(pipe)
    b = run(pipe)
    c = run(pipe, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 64, 64, 3) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-4


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"gsd": 0.5},
        {"gsd": 2.0, "metadata": {"lat": 43.7, "lon": 7.4}},
        {"layout": layout_map()},
        {"controls": {"height": torch.rand(1, 1, 64, 64)}},
        {
            "layout": layout_map(),
            "gsd": 1.0,
            "controls": {"height": torch.rand(1, 1, 64, 64)},
            "control_scales": {"layout": 1.5, "height": 0.5},
        },
        {"guidance_scale": 1.0, "layout": layout_map()},
    ],
)
def test_every_condition_subset_runs(pipe, kw):
    out = run(pipe, **kw)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_conditions_change_the_output(pipe):
    base = run(pipe)
    assert np.abs(run(pipe, gsd=0.3) - run(pipe, gsd=10.0)).mean() > 1e-5
    assert np.abs(run(pipe, layout=layout_map()) - base).mean() > 1e-5


def test_cfg_unconditional_branch_drops_every_condition(pipe):
    seen = {}
    cn_forward, meta_forward = pipe.controlnet.forward, pipe.metadata_encoder.forward

    def spy_cn(sample, t, text, packed, **kw):
        seen["packed"] = packed.detach().clone()
        seen["text"] = text.detach().clone()
        return cn_forward(sample, t, text, packed, **kw)

    def spy_meta(meta, batch_size=None, drop=None):
        seen.setdefault("drops", []).append(None if drop is None else drop.clone())
        return meta_forward(meta, batch_size=batch_size, drop=drop)

    pipe.controlnet.forward, pipe.metadata_encoder.forward = spy_cn, spy_meta
    try:
        run(pipe, layout=layout_map(), gsd=0.5, guidance_scale=4.0, control_scales={"layout": 0.7})
    finally:
        pipe.controlnet.forward, pipe.metadata_encoder.forward = cn_forward, meta_forward
    n = len(pipe.controlnet.condition_names)
    w = seen["packed"][:, -n:, 0, 0]  # per-condition weights: [2B, N]
    assert torch.all(w[0] == 0)  # unconditional: every control removed
    names = pipe.controlnet.condition_names
    assert w[1, names.index("layout")] == pytest.approx(0.7) and w[1, names.index("height")] == 0
    assert seen["packed"][0, :-n].abs().sum() == 0  # and its maps are empty
    assert [d is None for d in seen["drops"]] == [True, False] and bool(seen["drops"][1].all())
    empty = pipe.encode_prompt([""])
    torch.testing.assert_close(seen["text"][:1], empty)


def test_metadata_guidance_scale(pipe):
    """A separate guidance weight for the metadata: three branches (null, metadata only, all) per
    step; equal to the text's scale it reproduces the two-branch default, another value changes
    the image, and the metadata-only branch sees the null text and no maps."""
    kw = {
        "layout": layout_map(),
        "gsd": 0.5,
        "guidance_scale": 4.0,
        "metadata": {"lat": 43.7, "lon": 7.4},
    }
    base = run(pipe, **kw)
    np.testing.assert_allclose(run(pipe, metadata_guidance_scale=4.0, **kw), base, atol=1e-5)
    assert np.abs(run(pipe, metadata_guidance_scale=9.0, **kw) - base).mean() > 1e-4
    seen = {}
    cn_forward, unet_forward = pipe.controlnet.forward, pipe.unet.forward

    def spy_cn(sample, t, text, packed, **k):
        seen["packed"] = packed.detach().clone()
        return cn_forward(sample, t, text, packed, **k)

    def spy_unet(sample, t, **k):
        seen["text"], seen["labels"] = k["encoder_hidden_states"].clone(), k["class_labels"].clone()
        return unet_forward(sample, t, **k)

    pipe.controlnet.forward, pipe.unet.forward = spy_cn, spy_unet
    try:
        run(pipe, metadata_guidance_scale=2.0, **kw)
    finally:
        pipe.controlnet.forward, pipe.unet.forward = cn_forward, unet_forward
    assert seen["text"].shape[0] == 3 and seen["packed"].shape[0] == 3
    torch.testing.assert_close(seen["text"][1], seen["text"][0])  # metadata only: the null text
    assert seen["packed"][1].abs().sum() == 0 and seen["packed"][2].abs().sum() > 0  # and no maps
    null, meta, full = seen["labels"]
    assert (meta - null).abs().sum() > 0
    torch.testing.assert_close(meta, full)
    # works with tiled sampling and with text guidance off
    out = run(
        pipe, height=96, width=96, tile_size=8, tile_overlap=4, gsd=1.0, metadata_guidance_scale=3.0
    )
    assert out.shape == (1, 96, 96, 3) and np.isfinite(out).all()
    # text guidance <= 1 means none (the conditional step on top of the metadata branch), as
    # with two branches
    weak = run(pipe, gsd=1.0, guidance_scale=1.0, metadata_guidance_scale=3.0)
    np.testing.assert_allclose(
        run(pipe, gsd=1.0, guidance_scale=0.0, metadata_guidance_scale=3.0), weak, atol=1e-6
    )
    assert np.isfinite(weak).all()
    with pytest.raises(UserInputError, match="give gsd= or metadata="):
        run(pipe, metadata_guidance_scale=3.0)
    with pytest.raises(UserInputError, match=">= 0"):
        run(pipe, gsd=1.0, metadata_guidance_scale=-1.0)
    p = EarthImagePipeline(**get_dummy_components(control=False, metadata=False))
    p.set_progress_bar_config(disable=True)
    with pytest.raises(UserInputError, match="takes metadata"):
        run(p, metadata_guidance_scale=3.0)


def _count_control_calls(pipe, **kw):
    steps = []
    cn_forward = pipe.controlnet.forward
    pipe.controlnet.forward = lambda sample, t, *a, **k: (
        steps.append(float(t)) or cn_forward(sample, t, *a, **k)
    )
    try:
        out = run(pipe, layout=layout_map(), num_inference_steps=4, **kw)
    finally:
        pipe.controlnet.forward = cn_forward
    return steps, out


def test_control_guidance_window(pipe, tmp_path):
    """The control branch runs on the steps in [start, end) of the run; the end's default is the
    model's config, saved with it; outside the window the UNet runs alone."""
    every, full = _count_control_calls(pipe)
    assert len(every) == 4
    first, early = _count_control_calls(pipe, control_guidance_end=0.5)
    assert first == every[:2]  # the first two timesteps (the noisiest)
    last, _ = _count_control_calls(pipe, control_guidance_start=0.5)
    assert last == every[2:]
    assert np.abs(early - full).mean() > 1e-6
    pipe.save_pretrained(tmp_path / "p")
    with open(tmp_path / "p" / "model_index.json") as f:
        assert '"control_guidance_end": 1.0' in f.read()
    saved = EarthImagePipeline(**pipe.components, control_guidance_end=0.5)
    saved.save_pretrained(tmp_path / "q")
    re = EarthImagePipeline.from_pretrained(tmp_path / "q")
    re.set_progress_bar_config(disable=True)
    assert re.config.control_guidance_end == 0.5
    default_steps, out = _count_control_calls(re)
    assert default_steps == every[:2]
    np.testing.assert_allclose(out, early, atol=1e-5)
    # the window is for control maps: without any the branch does not run at all, window or not
    calls = []
    fwd = re.controlnet.forward
    re.controlnet.forward = lambda sample, t, *a, **k: (
        calls.append(float(t)) or fwd(sample, t, *a, **k)
    )
    try:
        run(re, num_inference_steps=4)
        run(re, num_inference_steps=4, control_guidance_end=0.5)
        assert calls == []
    finally:
        re.controlnet.forward = fwd
    for bad in (
        {"control_guidance_end": 0.0},
        {"control_guidance_end": 1.5},
        {"control_guidance_start": 0.6, "control_guidance_end": 0.5},
    ):
        with pytest.raises(UserInputError, match="control_guidance"):
            run(pipe, layout=layout_map(), **bad)
    # a step runs the branch when it starts in the window: a short window from 0 keeps the
    # first step
    one, _ = _count_control_calls(pipe, control_guidance_end=0.1)
    assert one == every[:1]
    three_quarters, _ = _count_control_calls(pipe, control_guidance_end=0.6)
    assert three_quarters == every[:3]  # steps starting at 0, 0.25, 0.5
    with pytest.raises(
        UserInputError, match="none of the 3 sampling steps"
    ):  # the layout would be ignored
        run(pipe, layout=layout_map(), control_guidance_start=0.9)
    run(pipe, control_guidance_start=0.9)  # no control maps given: nothing is ignored


def test_text_only_skips_the_control_branch(pipe):
    """No control maps (text, metadata only): the control branch is not run at all, and the
    pipeline is a plain UNet + scheduler loop; a layout runs it."""
    calls = []
    fwd = pipe.controlnet.forward
    pipe.controlnet.forward = lambda *a, **k: calls.append(1) or fwd(*a, **k)
    try:
        for kw in (
            {},
            {"gsd": 0.5},
            {"guidance_scale": 1.0},
            {"control_guidance_end": 1.0},
            {"height": 96, "width": 96, "tile_size": 8, "tile_overlap": 4},
        ):
            run(pipe, **kw)
        assert len(calls) == 0
        run(pipe, layout=layout_map())
        assert len(calls) == 3
    finally:
        pipe.controlnet.forward = fwd
    assert pipe.default_control_guidance_end(with_maps=False) == pipe.config.control_guidance_end
    # the same images as the components without a control branch
    plain = EarthImagePipeline(**{**pipe.components, "controlnet": None})
    plain.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(pipe, gsd=0.5), run(plain, gsd=0.5))


def test_inpainting_keeps_unmasked_latents(pipe):
    img = run(pipe, generator=torch.Generator().manual_seed(5))[0]
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:48, 8:40] = 1.0
    lat = pipe(
        prompt="dense city",
        image=img,
        mask=mask,
        num_inference_steps=4,
        output_type="latent",
        generator=torch.Generator().manual_seed(2),
    ).images
    init = pipe.encode_image(torch.from_numpy(img).permute(2, 0, 1)[None])
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:6, 1:5] = 0
    torch.testing.assert_close(lat * keep, init * keep)
    assert (lat - init)[..., 2:6, 1:5].abs().mean() > 1e-3  # the hole was repainted


def test_image_to_image_strength(pipe):
    img = run(pipe, generator=torch.Generator().manual_seed(5))[0]
    weak = run(pipe, image=img, strength=0.3, num_inference_steps=10)[0]
    strong = run(pipe, image=img, strength=1.0, num_inference_steps=10)[0]
    assert np.abs(weak - img).mean() < np.abs(strong - img).mean()


def test_tiled_generation_has_no_seams(pipe):
    """A 4x larger area than the UNet's window, sampled with blended windows: the image
    gradient across window borders is like the gradient elsewhere."""
    from earthgen.pipelines.image import _windows

    out = run(
        pipe, height=192, width=192, tile_size=8, tile_overlap=4, layout=layout_map(192, 192)
    )[0]
    assert out.shape == (192, 192, 3)
    gx = np.abs(np.diff(out.mean(-1), axis=1)).mean(
        axis=0
    )  # [W-1] mean horizontal gradient per column
    wins = _windows(24, 8, 4, 2)  # window starts and ends (latents) -> pixel columns
    borders = sorted({s * 8 - 1 for s, _ in wins[1:]} | {(s + n) * 8 - 1 for s, n in wins[:-1]})
    ratio = gx[borders].mean() / gx.mean()
    assert ratio < 1.5, ratio


def test_default_tile_overlap_is_an_eighth_of_the_window(pipe):
    """A large image on a small-window model: windows overlap by an eighth of the window (at
    least 2 latents), not by half (4x the work); windows of one shape share a UNet call."""
    from earthgen.pipelines.image import TILE_BATCH, _windows

    calls = []
    fwd = pipe.unet.forward
    pipe.unet.forward = lambda s, t, **k: calls.append(tuple(s.shape)) or fwd(s, t, **k)
    try:
        out = run(pipe, height=192, width=192, num_inference_steps=1)  # 24 latents
    finally:
        pipe.unet.forward = fwd
    assert pipe.unet.config.sample_size == 8 and out.shape == (1, 192, 192, 3)
    wins = _windows(24, 8, 2, 2)
    assert wins == [(0, 6), (4, 8), (10, 8), (16, 8)]  # overlaps 2, 2, 2
    assert sum(b // 2 for b, *_ in calls) == len(wins) ** 2  # CFG: 2 per window
    assert max(b for b, *_ in calls) == 2 * TILE_BATCH and len(calls) < len(wins) ** 2


def test_save_load_round_trip(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "model")
    re = EarthImagePipeline.from_pretrained(tmp_path / "model")
    re.set_progress_bar_config(disable=True)
    assert isinstance(re.controlnet, FusedControlNet) and isinstance(
        re.metadata_encoder, MetadataEncoder
    )
    np.testing.assert_allclose(
        run(re, layout=layout_map(), gsd=0.5), run(pipe, layout=layout_map(), gsd=0.5), atol=1e-5
    )


def test_minimal_model_without_optional_parts():
    p = EarthImagePipeline(**get_dummy_components(control=False, metadata=False))
    p.set_progress_bar_config(disable=True)
    assert run(p).shape == (1, 64, 64, 3)
    with pytest.raises(UserInputError, match="no control branch"):
        run(p, layout=layout_map())
    with pytest.raises(UserInputError, match="takes no metadata"):
        run(p, gsd=0.5)


def test_callback_and_geotiff(tmp_path, pipe):
    steps = []

    def cb(p, i, t, d):
        steps.append(i)
        return {"latents": d["latents"]}

    img = run(pipe, callback_on_step_end=cb, output_type="pil")[0]
    assert steps == [0, 1, 2]
    import rasterio
    from affine import Affine

    tr = Affine(0.5, 0, 733601.0, 0, -0.5, 3725139.0)
    save_geotiff(tmp_path / "g.tif", img, "EPSG:32616", tr)
    with rasterio.open(tmp_path / "g.tif") as ds:
        assert ds.crs.to_epsg() == 32616 and ds.transform == tr and ds.count == 3
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), np.asarray(img))


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"height": 60}, "multiples of 8"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"strength": 0.0}, "strength"),
        ({"mask": np.ones((64, 64))}, "needs the image"),
        ({"prompt": 3}, "prompt must be"),
        ({"gsd": -1.0}, "outside"),
        (
            {"layout": layout_map(32, 32), "height": 64, "width": 64},
            "rasterize it at the image size",
        ),
        ({"controls": {"depth": torch.rand(1, 1, 64, 64)}}, "unknown control"),
        ({"output_type": "jpeg"}, "output_type"),
    ],
)
def test_bad_inputs(pipe, kw, msg):
    with pytest.raises(UserInputError, match=msg):
        run(pipe, **kw)
