"""Tiny random models built from the real classes (no download), shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_clip(hidden: int = 16, max_length: int = 16):
    """A random CLIP text model and a character-level CLIP BPE tokenizer."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(
            str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=max_length
        )
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden + 5,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return tok, CLIPTextModel(cfg)


def tiny_clip_checkpoint(root: Path, hidden: int = 32) -> Path:
    """A diffusers-style folder (``tokenizer/`` + ``text_encoder/``) with a tiny random CLIP."""
    tok, model = tiny_clip(hidden)
    tok.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "text_encoder")
    return root


def get_dummy_components(control: bool = True, metadata: bool = True) -> dict:
    """Tiny EarthImagePipeline components: VAE 8x, UNet 8x8 latents, CLIP 16-d, fused control."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from controls import FusedControlNet
    from earthgen.conditioning import MetadataEncoder

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
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
        class_embed_type="identity" if metadata else None,
    )
    tok, text = tiny_clip(hidden=16)
    comps = {
        "vae": vae,
        "unet": unet,
        "scheduler": DDIMScheduler(num_train_timesteps=100),
        "text_encoder": text,
        "tokenizer": tok,
        "metadata_encoder": None,
        "controlnet": None,
    }
    if metadata:
        comps["metadata_encoder"] = MetadataEncoder(out_dim=64, freq_dim=16)
    if control:
        comps["controlnet"] = FusedControlNet.from_unet(
            unet, {"layout": 13, "roads": 1, "height": 1}, fusion_widths=(8, 8, 8, 8)
        )
    for m in (comps["controlnet"], comps["metadata_encoder"]):  # non-trivial branches
        if m is not None:
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
    return comps


def tiny_scene_pipeline():
    """A tiny random :class:`~earthgen.pipelines.scene.EarthScenePipeline`: 32-voxel windows (1 m),
    structure and texture flows with non-zero weights (so scenes are not empty)."""
    from earthgen.classes import NUM_CLASSES
    from earthgen.pipelines.scene import EarthScenePipeline
    from earthgen.world.scene3d import appearance_channels
    from flows.structure import StructureFlowDiT
    from flows.texture import TextureFlowNet
    from vae.structure import StructureVAE
    from vae.texture import TextureVAE

    torch.manual_seed(0)
    svae = StructureVAE(
        channels=(8, 16, 16, 16), latent_channels=4, num_res_blocks=1, backend="torch"
    )
    sflow = StructureFlowDiT(
        grid_size=(4, 4, 4),
        latent_channels=4,
        patch_size=2,
        num_classes=NUM_CLASSES,
        hidden_size=32,
        depth=2,
        num_heads=2,
    )
    tvae = TextureVAE(
        in_channels=appearance_channels(2), channels=16, num_res_blocks=1, backend="torch"
    )
    tflow = TextureFlowNet(
        latent_channels=tvae.config.latent_channels,
        channels=16,
        num_blocks=2,
        num_classes=NUM_CLASSES,
        backend="torch",
    )
    for m in (sflow, tflow):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    pipe = EarthScenePipeline(svae, sflow, tvae, tflow, voxel_size=1.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_box_pipeline():
    """The tiny EarthImagePipeline of :func:`get_dummy_components` with box conditioning (gated
    UNet + box token encoder), as used by detection augmentation."""
    from controls.boxes import GroundedUNet2DConditionModel
    from earthgen.conditioning.boxes import BoxTokenEncoder
    from earthgen.pipelines.image import EarthImagePipeline

    c = get_dummy_components()
    c["unet"] = GroundedUNet2DConditionModel.from_unet(c["unet"])
    c["box_encoder"] = BoxTokenEncoder(text_dim=16, out_dim=16, num_freqs=4, hidden_dim=32)
    pipe = EarthImagePipeline(**c)
    pipe.set_progress_bar_config(disable=True)
    return pipe
