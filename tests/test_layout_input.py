"""The layout given at the UNet input: LayoutMapEncoder, widen_input, the pipeline and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import get_dummy_components

from controls import widen_input
from earthgen.classes import NUM_CLASSES
from earthgen.conditioning.dense import LayoutMapEncoder
from earthgen.errors import UserInputError
from earthgen.pipelines.image import EarthImagePipeline
from earthgen.training.image import add_box_conditioning, add_layout_input


def layout(h: int = 64, w: int = 64) -> np.ndarray:
    ids = np.zeros((h, w), dtype=np.int64)
    ids[:, 10:12] = 4  # a 2-pixel road inside the 8-pixel cells of columns 8..15
    ids[40:, 40:] = 7  # water
    return ids


def run(pipe, **kw):
    base = {
        "prompt": "city",
        "num_inference_steps": 3,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
    }
    return pipe(**{**base, **kw}).images


@pytest.fixture(scope="module")
def lpipe():
    comps = add_layout_input(get_dummy_components(control=False))
    p = EarthImagePipeline(**comps)
    p.set_progress_bar_config(disable=True)
    return p


def test_layout_map_is_class_fractions_per_cell():
    enc = LayoutMapEncoder()
    m = enc(torch.from_numpy(layout()), 2, 8)
    assert m.shape == (2, NUM_CLASSES, 8, 8) and enc.channels == NUM_CLASSES
    torch.testing.assert_close(m.sum(1), torch.ones(2, 8, 8))
    assert float(m[0, 4, 3, 1]) == pytest.approx(2 / 8)  # the 2-pixel road in its 8-pixel cell
    assert float(m[0, 7, 7, 7]) == 1.0 and float(m[0, 7, 0, 0]) == 0.0
    dropped = enc(torch.from_numpy(layout()), 2, 8, drop=torch.tensor([True, False]))
    assert float(dropped[0].abs().sum()) == 0.0 and torch.equal(dropped[1], m[1])
    assert float(enc(None, 3, 4, size=(32, 64)).abs().sum()) == 0.0 and enc(
        None, 3, 4, size=(32, 64)
    ).shape == (3, 13, 8, 16)
    with pytest.raises(UserInputError, match="class ids"):
        enc(torch.full((1, 16, 16), 99), 1, 8)
    with pytest.raises(UserInputError, match="latent cells"):
        enc(torch.zeros(1, 12, 16, dtype=torch.long), 1, 8)


def test_layout_encoder_save_load(tmp_path):
    LayoutMapEncoder().save_pretrained(tmp_path / "enc")
    enc = LayoutMapEncoder.from_pretrained(tmp_path / "enc")
    torch.testing.assert_close(
        enc(torch.from_numpy(layout()), 1, 4), LayoutMapEncoder()(torch.from_numpy(layout()), 1, 4)
    )


def test_widen_input_keeps_the_output_until_trained():
    unet = get_dummy_components()["unet"]
    wide = widen_input(unet, 5)
    assert wide.config.in_channels == 9 and type(wide) is type(unet)
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 50]), torch.randn(2, 3, 16)
    emb = torch.randn(2, 64)
    with torch.no_grad():
        a = unet(x, t, text, class_labels=emb).sample
        b = wide(torch.cat([x, torch.rand(2, 5, 8, 8)], 1), t, text, class_labels=emb).sample
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="extra input channels"):
        widen_input(unet, -1)


def test_pipeline_layout_input_zero_init_then_effect(lpipe):
    assert lpipe.unet.config.in_channels == 4 + NUM_CLASSES and lpipe.controlnet is None
    np.testing.assert_array_equal(
        run(lpipe, layout=layout()), run(lpipe)
    )  # zero columns: no effect yet
    with torch.no_grad():
        w = lpipe.unet.conv_in.weight
        old = w[:, 4:].clone()
        w[:, 4:] = torch.randn_like(old)
    try:
        a, b = run(lpipe, layout=layout()), run(lpipe)
        assert np.abs(a - b).mean() > 1e-3
        np.testing.assert_array_equal(a, run(lpipe, layout=layout()))  # deterministic
        tiled = run(lpipe, layout=layout(128, 128), tile_size=8, tile_overlap=4)
        assert tiled.shape == (1, 128, 128, 3) and np.isfinite(tiled).all()
    finally:
        with torch.no_grad():
            w[:, 4:] = old


def test_control_branch_kept_beside_the_layout_input():
    """A model with a control branch fine-tuned with the layout at the UNet input
    (``train image-ldm --layout-input concat`` from the packaged model): the branch still sees
    the latents only, the UNet sees latents + layout map; zero new columns = the old model."""
    comps = get_dummy_components(control=True)
    before = EarthImagePipeline(**comps)
    before.set_progress_bar_config(disable=True)
    ref = run(before, layout=layout())
    wide = EarthImagePipeline(**add_layout_input(dict(comps)))
    wide.set_progress_bar_config(disable=True)
    assert wide.controlnet is not None and wide.unet.config.in_channels == 4 + NUM_CLASSES
    assert wide.controlnet.controlnet.config.in_channels == 4
    np.testing.assert_allclose(run(wide, layout=layout()), ref, atol=1e-6)


def test_cfg_unconditional_branch_gets_a_zero_layout(lpipe):
    seen = []
    hook = lpipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 4:].clone()))
    try:
        run(lpipe, layout=layout(), guidance_scale=3.0)
    finally:
        hook.remove()
    maps = seen[0]
    assert maps.shape == (2, NUM_CLASSES, 8, 8)
    assert float(maps[0].abs().sum()) == 0.0
    torch.testing.assert_close(maps[1].sum(0), torch.ones(8, 8))


def test_layout_pipeline_save_load_and_errors(tmp_path, lpipe):
    lpipe.save_pretrained(tmp_path / "m")
    re = EarthImagePipeline.from_pretrained(tmp_path / "m")
    re.set_progress_bar_config(disable=True)
    assert isinstance(re.layout_encoder, LayoutMapEncoder)
    np.testing.assert_array_equal(run(re, layout=layout()), run(lpipe, layout=layout()))
    with pytest.raises(UserInputError, match="rasterize it at the image size"):
        run(lpipe, layout=layout(32, 32), height=64, width=64)
    with pytest.raises(UserInputError, match="no control branch"):
        run(lpipe, controls={"height": torch.rand(1, 1, 64, 64)})
    plain = EarthImagePipeline(**get_dummy_components(control=False))
    plain.set_progress_bar_config(disable=True)
    with pytest.raises(UserInputError, match="takes none"):
        run(plain, layout=layout())


def test_boxes_and_layout_together():
    comps = add_layout_input(
        add_box_conditioning(get_dummy_components(control=False), hidden_dim=16, raster_dim=2)
    )
    assert comps["unet"].config.in_channels == 4 + 3 + NUM_CLASSES
    p = EarthImagePipeline(**comps)
    p.set_progress_bar_config(disable=True)
    from earthgen.boxes import BoxSet

    boxes = BoxSet(np.array([[[8, 8], [30, 8], [30, 20], [8, 20]]], dtype=np.float64), ["building"])
    out = run(p, layout=layout(), boxes=boxes)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_box_conditioning_added_to_a_layout_input_model_keeps_its_output():
    """Grounding a model that already takes the layout at its input: the box-map channels go
    between the latent and the layout's (the pipeline's order), zero-initialised, so the layout
    still reaches the same weights and, without boxes, the output is the old model's."""
    torch.manual_seed(0)
    comps = add_layout_input(get_dummy_components(control=False))
    with torch.no_grad():  # as if trained: the layout reaches the output
        comps["unet"].conv_in.weight[:, 4:].normal_(0, 0.5)
    old = EarthImagePipeline(**comps)
    old.set_progress_bar_config(disable=True)
    a = run(old, layout=layout())
    w_old = comps["unet"].conv_in.weight.detach().clone()
    grounded = add_box_conditioning(dict(comps), hidden_dim=16, raster_dim=2)
    w = grounded["unet"].conv_in.weight.detach()
    assert (
        grounded["unet"].config.in_channels == 4 + 3 + NUM_CLASSES
        and grounded["unet"].raster_channels == 3 + NUM_CLASSES
    )
    assert (
        torch.equal(w[:, :4], w_old[:, :4])
        and torch.equal(w[:, 7:], w_old[:, 4:])
        and w[:, 4:7].abs().max() == 0
    )
    new = EarthImagePipeline(**grounded)
    new.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(new, layout=layout()), a, atol=1e-5)
    assert (
        np.abs(run(new, layout=np.zeros((64, 64), np.int64)) - a).max() > 1e-3
    )  # the layout still acts


def test_train_layout_concat(tmp_path):
    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import TrainConfig, train

    s = train(
        TrainConfig(
            task="image-ldm",
            out=str(tmp_path / "r"),
            test_run=True,
            steps=4,
            layout_input="concat",
            log_every=100,
        )
    )
    pipe = load_pipeline(s["pipeline"])
    assert isinstance(pipe.layout_encoder, LayoutMapEncoder) and pipe.controlnet is None
    assert float(pipe.unet.conv_in.weight[:, 4:].abs().max()) > 0  # the layout columns learned
    with pytest.raises(UserInputError, match="no control branch to train"):
        train(
            TrainConfig(
                task="image-control",
                model=s["pipeline"],
                out=str(tmp_path / "c"),
                test_run=True,
                steps=2,
            )
        )
    with pytest.raises(UserInputError, match="--layout-input"):
        TrainConfig(layout_input="side").validate()
    with pytest.raises(UserInputError, match="--layout-dropout"):
        TrainConfig(layout_dropout=1.0).validate()
    # the layout's own dropout: a map (almost) always dropped leaves its input columns untouched
    s2 = train(
        TrainConfig(
            task="image-ldm",
            out=str(tmp_path / "d"),
            test_run=True,
            steps=4,
            layout_input="concat",
            layout_dropout=0.999,
            log_every=100,
        )
    )
    assert float(load_pipeline(s2["pipeline"]).unet.conv_in.weight[:, 4:].abs().max()) == 0.0
