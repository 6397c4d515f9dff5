"""Real checkpoint formats: Stable-Diffusion-layout folders (plain SD and Text2Earth, whose UNet
takes the resolution as a class label) load and run in ``EarthImagePipeline`` exactly as
diffusers runs them, and an EarthGen pipeline loads with plain diffusers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import LETTERS, get_dummy_components, tiny_clip

import earthgen.pipelines.image as image_module
from earthgen.errors import UserInputError
from earthgen.pipelines.image import EarthImagePipeline, load_pipeline, text2earth_level

torch.set_num_threads(1)

SPECIALS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


def sd_components(class_embed_type: str | None = None, scheduler: str = "DDIMScheduler") -> dict:
    """Tiny random Stable-Diffusion components: VAE 2x, UNet on 8x8 latents, CLIP 16-d."""
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
        class_embed_type=class_embed_type,
    )
    if class_embed_type is not None:  # a class embedding that matters (diffusers may init it small)
        with torch.no_grad():
            for p in unet.class_embedding.parameters():
                p.normal_(0.0, 0.5)
    tok, text = tiny_clip(hidden=16)
    extra = (
        {"skip_prk_steps": True, "steps_offset": 1} if scheduler == "PNDMScheduler" else {}
    )  # SD v1's
    sched = getattr(diffusers, scheduler)(
        num_train_timesteps=100,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        **extra,
    )
    return {"vae": vae, "unet": unet, "scheduler": sched, "text_encoder": text, "tokenizer": tok}


def tiny_safety_parts():
    """A tiny random safety checker and feature extractor, as real SD v1 folders carry."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    small = {
        "hidden_size": 16,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
    }
    ids = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    cfg = CLIPConfig(
        text_config={**small, **ids, "vocab_size": 54},
        vision_config={**small, "image_size": 32, "patch_size": 4},
        projection_dim=16,
    )
    return StableDiffusionSafetyChecker(cfg).eval(), CLIPImageProcessor(crop_size=32, size=32)


def write_sd_folder(root: Path, comps: dict, class_name: str = "StableDiffusionPipeline") -> Path:
    """Save ``comps`` in the Stable-Diffusion layout (``StableDiffusionPipeline.save_pretrained``:
    model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, safety_checker/,
    feature_extractor/), the tokenizer as SD repositories ship it (vocab.json + merges.txt)."""
    from diffusers import StableDiffusionPipeline

    checker, extractor = tiny_safety_parts()
    StableDiffusionPipeline(
        **comps, safety_checker=checker, feature_extractor=extractor, requires_safety_checker=True
    ).save_pretrained(root)
    tok = root / "tokenizer"
    for f in tok.iterdir():
        f.unlink()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "special_tokens_map.json").write_text(json.dumps(SPECIALS))
    (tok / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **SPECIALS,
                "model_max_length": comps["tokenizer"].model_max_length,
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    index = json.loads((root / "model_index.json").read_text())
    index["_class_name"] = class_name
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def spy_class_labels(unet) -> list:
    """Record the ``class_labels`` of every UNet call."""
    seen: list = []
    forward = unet.forward

    def spy(*args, **kw):
        labels = kw.get("class_labels")
        seen.append(None if labels is None else labels.detach().cpu().clone())
        return forward(*args, **kw)

    unet.forward = spy
    return seen


def inject_class_labels(unet, labels: torch.Tensor) -> None:
    """Make a diffusers pipeline's UNet get ``labels`` as class labels: Text2Earth's loop (SD's
    loop plus ``class_labels=cat([zeros, levels])`` under CFG)."""
    forward = unet.forward

    def with_labels(*args, **kw):
        kw["class_labels"] = labels
        return forward(*args, **kw)

    unet.forward = with_labels


# --- 1. Text2Earth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gsd", "level"),
    [
        (0.5, 18),
        (1.0, 17),
        (2.0, 16),
        (4.0, 15),
        (8.0, 14),
        (16.0, 13),
        (32.0, 12),
        (64.0, 11),
        (128.0, 10),
        (1.3, 17),
        (1.5, 16),
        (2.0**0.5, 17),
        (0.6, 18),
        (100.0, 10),
        (float("nan"), 0),
    ],
)
def test_text2earth_level_mapping(gsd, level):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in range: no warning
        assert text2earth_level(gsd).tolist() == [level]


def test_text2earth_level_out_of_range_and_bad_values():
    with pytest.warns(UserWarning, match="outside Text2Earth"):
        assert text2earth_level([0.1, 1000.0]).tolist() == [18, 10]
    assert text2earth_level([1.0, 4.0], 2).tolist() == [17, 15]
    assert text2earth_level(2.0, 3).tolist() == [16, 16, 16]
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(UserInputError, match="gsd"):
            text2earth_level(bad)
    with pytest.raises(UserInputError, match="3 values for a batch of 2"):
        text2earth_level([1.0, 2.0, 4.0], 2)


@pytest.fixture(scope="module")
def text2earth_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("text2earth")
    return write_sd_folder(
        root,
        sd_components("timestep", "EulerDiscreteScheduler"),
        class_name="Text2EarthDiffusionPipeline",
    )


def test_text2earth_folder_loads_and_passes_zoom_levels(text2earth_folder):
    index = json.loads((text2earth_folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and "safety_checker" in index
    pipe = load_pipeline(str(text2earth_folder))
    assert isinstance(pipe, EarthImagePipeline) and pipe.unet.config.class_embed_type == "timestep"
    pipe.set_progress_bar_config(disable=True)
    seen = spy_class_labels(pipe.unet)
    kw = {
        "num_inference_steps": 2,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
    }

    with_gsd = pipe("dense city", gsd=1.0, guidance_scale=4.0, **kw).images
    assert [s.tolist() for s in seen] == [[0, 17]] * 2  # CFG: null branch 0, then level 17 (1 m/px)
    seen.clear()
    without = pipe("dense city", guidance_scale=4.0, **kw).images
    assert [s.tolist() for s in seen] == [[0, 0]] * 2  # no gsd: 0 = unknown
    seen.clear()
    pipe(["dense city", "forest"], gsd=[0.5, 128.0], guidance_scale=4.0, **kw)
    assert [s.tolist() for s in seen] == [[0, 0, 18, 10]] * 2
    seen.clear()
    pipe("dense city", gsd=32.0, guidance_scale=1.0, **kw)  # no CFG: the level alone
    assert [s.tolist() for s in seen] == [[12]] * 2
    assert all(s.dtype == torch.long for s in seen)
    assert with_gsd.shape == without.shape == (1, 16, 16, 3) and np.isfinite(with_gsd).all()
    assert np.abs(with_gsd - without).max() > 1e-4  # the level reaches the image

    with pytest.raises(UserInputError, match="resolution only"):
        pipe("dense city", gsd=1.0, metadata={"lat": 43.7}, **kw)


def test_text2earth_matches_its_reference_loop(text2earth_folder):
    """Ours with ``gsd=2`` equals diffusers' SD loop fed Text2Earth's labels ``[0, 16]``."""
    from diffusers import StableDiffusionPipeline

    ours = load_pipeline(str(text2earth_folder))
    ref = StableDiffusionPipeline.from_pretrained(
        text2earth_folder, safety_checker=None, requires_safety_checker=False
    )
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    inject_class_labels(ref.unet, torch.tensor([0, 16]))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = {"num_inference_steps": 3, "guidance_scale": 4.0, "output_type": "np", "latents": latents}
    a = ours("dense city", gsd=2.0, **kw).images
    b = ref("dense city", **kw).images
    assert np.abs(a - b).max() <= 1e-5


# --- 2. SD folders: the same tensors as diffusers --------------------------------------------


@pytest.mark.parametrize(
    "scheduler",
    [
        "DDIMScheduler",
        "EulerDiscreteScheduler",
        "PNDMScheduler",
    ],
)
def test_sd_folder_matches_diffusers(tmp_path, scheduler):
    from diffusers import StableDiffusionPipeline

    root = write_sd_folder(tmp_path / "sd", sd_components(None, scheduler))
    ours = load_pipeline(str(root))
    ref = StableDiffusionPipeline.from_pretrained(
        root, safety_checker=None, requires_safety_checker=False
    )
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    prompts = ["dense city", "a river"]

    # the prompt embeddings: CLIP gets no attention mask, as in SD
    emb, _ = ref.encode_prompt(prompts, "cpu", 1, False)
    torch.testing.assert_close(ours.encode_prompt(prompts), emb, rtol=0, atol=0)
    tok = ours.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    masked = ours.text_encoder(
        tok["input_ids"], attention_mask=tok["attention_mask"]
    ).last_hidden_state
    assert (masked - emb).abs().max() > 1e-3  # the mask matters: this test would catch it

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"num_inference_steps": 3, "guidance_scale": 5.0, "output_type": "np", "latents": latents}
    a = ours(prompts, **kw).images
    b = ref(prompts, **kw).images
    assert a.shape == b.shape == (2, 16, 16, 3)
    assert np.abs(a - b).max() <= 1e-5


def test_minilm_embeddings_keep_the_attention_mask():
    """The packaged MiniLM/BERT encoder keeps its mask: embeddings as before this change."""
    from diffusers import DDIMScheduler
    from transformers import BertTokenizer

    from earthgen.models import _reference_class, resolve_model

    text = _reference_class().from_pretrained(None)
    tok = BertTokenizer.from_pretrained(Path(resolve_model(None, "image")) / "tokenizer")
    comps = sd_components()
    comps["unet"] = type(comps["unet"])(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=384,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    pipe = EarthImagePipeline(
        vae=comps["vae"],
        unet=comps["unet"],
        scheduler=DDIMScheduler(),
        text_encoder=text,
        tokenizer=tok,
    )
    prompts = ["dense residential area with a river", "forest"]
    ids = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        before = text(
            input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]
        ).last_hidden_state
        unmasked = text(input_ids=ids["input_ids"]).last_hidden_state
    got = pipe.encode_prompt(prompts)
    assert torch.equal(got, before)
    assert (got - unmasked).abs().max() > 1e-3


def test_encoder_config_use_attention_mask_is_honoured():
    """A CLIP config with ``use_attention_mask=True`` gets the mask, as SD's encode_prompt does."""
    pipe = EarthImagePipeline(**get_dummy_components(control=False, metadata=False))
    prompts = ["dense city"]
    plain = pipe.encode_prompt(prompts)
    pipe.text_encoder.config.use_attention_mask = True
    try:
        masked = pipe.encode_prompt(prompts)
    finally:
        del pipe.text_encoder.config.use_attention_mask
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        want = pipe.text_encoder(
            tok["input_ids"], attention_mask=tok["attention_mask"]
        ).last_hidden_state
    assert torch.equal(masked, want) and not torch.equal(masked, plain)


# --- 3. EarthGen pipelines load with plain diffusers -----------------------------------------


def test_saved_pipeline_loads_with_plain_diffusers(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = EarthImagePipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(
        tmp_path / "p", custom_pipeline=image_module.__file__, trust_remote_code=True
    )
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "EarthImagePipeline"
    assert type(loaded.controlnet) is type(pipe.controlnet)
    assert type(loaded.metadata_encoder) is type(pipe.metadata_encoder)
    kw = {
        "num_inference_steps": 2,
        "output_type": "np",
        "gsd": 1.0,
        "generator": torch.Generator().manual_seed(0),
    }
    a = loaded("dense city", **kw).images
    kw["generator"] = torch.Generator().manual_seed(0)
    b = pipe("dense city", **kw).images
    np.testing.assert_array_equal(a, b)
