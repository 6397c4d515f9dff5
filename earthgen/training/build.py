"""Build steps of the packaged default image models (``docs/models.md``): fresh pipelines, VAE
calibration and decoder fine-tuning, a fresh control branch, and packaging (fp16, the MiniLM text
encoder as a reference). Run from the command line as ``python -m earthgen.models <step>``
(:mod:`earthgen.commands.models`).

Above :mod:`earthgen.pipelines` (it builds pipelines) and :mod:`earthgen.models` (the packaged
folders and the text-encoder reference); torch and diffusers load in the functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from earthgen.errors import UserInputError
from earthgen.models import _reference_class, is_minilm

IMAGE_ARCH = {
    "vae_channels": (32, 64, 64, 64),  # 4 levels: 8x downsampling, 4 latent channels
    "unet_channels": (64, 128, 128),  # attention at 1/8 and 1/16 of the image
    "unet_heads": 4,
    "fusion_widths": (16, 32, 64, 128),
    "sample_size": 16,  # latent pixels: 128 px images
}


def init_image_model(out: str | Path, seed: int = 0) -> Path:
    """A fresh, randomly initialised default-size image pipeline (offline MiniLM text encoder)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from controls import FusedControlNet
    from earthgen.classes import NUM_CLASSES
    from earthgen.conditioning import MetadataEncoder
    from earthgen.conditioning.text import SentenceTextEncoder
    from earthgen.pipelines.image import EarthImagePipeline

    torch.manual_seed(seed)
    a = IMAGE_ARCH
    minilm = SentenceTextEncoder()
    n = len(a["unet_channels"])
    vae = AutoencoderKL(
        block_out_channels=a["vae_channels"],
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=a["sample_size"],
        in_channels=4,
        out_channels=4,
        block_out_channels=a["unet_channels"],
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=1,
        cross_attention_dim=minilm.model.config.hidden_size,
        attention_head_dim=a["unet_heads"],
        norm_num_groups=32,
        class_embed_type="identity",
    )
    meta = MetadataEncoder(out_dim=a["unet_channels"][0] * 4, freq_dim=32)
    control = FusedControlNet.from_unet(
        unet, {"layout": NUM_CLASSES, "roads": 1}, fusion_widths=a["fusion_widths"]
    )
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    pipe = EarthImagePipeline(
        vae=vae,
        unet=unet,
        scheduler=sched,
        text_encoder=minilm.model,
        tokenizer=minilm.tokenizer,
        metadata_encoder=meta,
        controlnet=control,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def init_box_model(
    out: str | Path, size: str = "compact", raster_dim: int = 8, seed: int = 0
) -> Path:
    """A fresh, randomly initialised box-conditioned image pipeline of ``size`` (see
    :data:`earthgen.training.image.IMAGE_SIZES`) with a ``raster_dim`` dense box map, no control
    branch, the offline MiniLM text encoder."""
    import torch

    from earthgen.pipelines.image import EarthImagePipeline
    from earthgen.training.image import IMAGE_SIZES, fresh_components

    if size not in IMAGE_SIZES:
        raise UserInputError(f"--size must be one of {', '.join(IMAGE_SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    EarthImagePipeline(**fresh_components(size, boxes=True, raster_dim=raster_dim)).save_pretrained(
        out, safe_serialization=True
    )
    return Path(out)


def init_layout_model(
    out: str | Path, size: str = "compact", vae: str | Path | None = None, seed: int = 0
) -> Path:
    """A fresh image pipeline of ``size`` (:data:`earthgen.training.image.IMAGE_SIZES`) that takes
    the layout at the UNet input (:class:`earthgen.conditioning.dense.LayoutMapEncoder`, no control
    branch), the offline MiniLM text encoder; ``vae``: take the (trained) VAE of this pipeline or
    ``AutoencoderKL`` folder instead of a fresh one."""
    import torch
    from diffusers import AutoencoderKL

    from earthgen.pipelines.image import EarthImagePipeline
    from earthgen.training.image import IMAGE_SIZES, fresh_components

    if size not in IMAGE_SIZES:
        raise UserInputError(f"--size must be one of {', '.join(IMAGE_SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    comps = fresh_components(size, layout_input="concat")
    if vae is not None:
        folder = Path(vae) / "vae" if (Path(vae) / "vae").is_dir() else Path(vae)
        if not (folder / "config.json").is_file():
            raise UserInputError(
                f"no VAE in {vae} (give a pipeline folder or an AutoencoderKL folder)"
            )
        comps["vae"] = AutoencoderKL.from_pretrained(str(folder))
    EarthImagePipeline(**comps).save_pretrained(out, safe_serialization=True)
    return Path(out)


def calibrate_vae(
    src: str | Path,
    out: str | Path,
    n: int = 64,
    resolution: int = 128,
    seed: int = 123,
    data: str | None = None,
) -> float:
    """Copy pipeline ``src`` to ``out`` with the VAE's ``scaling_factor`` set to 1 / std of the
    latents of ``n`` images (unit-variance latents for the diffusion model): procedural tiles, or
    crops of the dataset ``data`` (detection, image-caption or semantic-mask, docs/training.md)."""
    import torch

    from earthgen.datasets import world_batch
    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import open_image_dataset

    pipe = load_pipeline(str(src))
    x = (
        world_batch(seed, 0, n, resolution)
        if data is None
        else open_image_dataset(data, resolution).batch(seed, 0, n)
    )["image"]
    with torch.no_grad():
        z = torch.cat(
            [pipe.vae.encode(x[i : i + 16] * 2 - 1).latent_dist.mean for i in range(0, n, 16)]
        )
    factor = float(1.0 / z.std())
    pipe.vae.register_to_config(scaling_factor=factor)
    pipe.save_pretrained(out, safe_serialization=True)
    return factor


def finetune_vae_decoder(
    src: str | Path,
    out: str | Path,
    steps: int = 1000,
    batch_size: int = 8,
    resolution: int = 64,
    lr: float = 3e-4,
    seed: int = 2,
    max_minutes: float | None = None,
    edge_weight: float = 0.5,
    data: str | None = None,
) -> dict:
    """Fine-tune only the VAE *decoder* of pipeline ``src`` on procedural tiles, or on random crops
    of the dataset ``data`` (detection, image-caption or semantic-mask), (the encoder, hence
    the latent space the diffusion model was trained in, stays fixed; Stable Diffusion's ft-MSE
    idea) and write the VAE (an ``AutoencoderKL`` folder) to ``out``. Loss: L1 on pixels +
    ``edge_weight`` x L1 on image gradients (sharper edges). Stops after ``steps`` or
    ``max_minutes``; returns a summary."""
    import time

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from earthgen.datasets import world_batch
    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import open_image_dataset

    pipe = load_pipeline(str(src))
    source = None if data is None else open_image_dataset(data, resolution)
    vae = pipe.vae.float().train()
    vae.requires_grad_(False)
    dec = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in dec:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(dec, lr=lr, weight_decay=1e-4)

    def grads(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    t0, losses, done = time.perf_counter(), [], 0
    for step in tqdm(range(steps), desc="vae decoder"):
        if max_minutes is not None and time.perf_counter() - t0 > max_minutes * 60:
            break
        b = (
            world_batch(seed, step * batch_size, batch_size, resolution)
            if source is None
            else source.batch(seed, step * batch_size, batch_size)
        )
        x = b["image"] * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + edge_weight * sum(
            F.l1_loss(a, b) for a, b in zip(grads(rec), grads(x), strict=True)
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
    vae.eval().requires_grad_(False)
    vae.save_pretrained(out, safe_serialization=True)
    summary = {
        "steps": done,
        "seconds": round(time.perf_counter() - t0, 1),
        "batch_size": batch_size,
        "resolution": resolution,
        "lr": lr,
        "seed": seed,
        "edge_weight": edge_weight,
        "data": data,
        "first_losses": losses[:5],
        "last_losses": losses[-5:],
    }
    (Path(out) / "decoder_finetune.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def attach_control(src: str | Path, out: str | Path) -> Path:
    """Copy pipeline ``src`` to ``out`` with a fresh control branch initialised from its (trained)
    UNet, the ControlNet recipe."""
    from controls import FusedControlNet
    from earthgen.pipelines.image import load_pipeline

    pipe = load_pipeline(str(src))
    old = pipe.controlnet
    conditions = dict(zip(old.condition_names, old.condition_channels, strict=True))
    pipe.controlnet = None
    pipe.register_modules(
        controlnet=FusedControlNet.from_unet(
            pipe.unet, conditions, fusion_widths=tuple(old.config.fusion_widths)
        )
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def package_image_model(
    src: str | Path,
    out: str | Path | None = None,
    fp16: bool = True,
    vae: str | Path | None = None,
    control_end: float | None = None,
) -> Path:
    """Write pipeline ``src`` as the packaged default (``out``, default the package folder):
    weights in fp16 safetensors, the MiniLM text encoder as a reference (not copied). ``vae``: an
    ``AutoencoderKL`` folder with a fine-tuned decoder to use instead (same encoder required).
    ``control_end``: the model's default ``control_guidance_end`` (fraction of the sampling steps
    that run the control branch; default: keep the source's)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.utils import logging as dlogging

    from earthgen.models import MODELS_DIR
    from earthgen.pipelines.image import load_pipeline

    out = Path(out) if out is not None else MODELS_DIR / "image"
    pipe = load_pipeline(str(src))
    if control_end is not None:
        if not 0.0 < control_end <= 1.0:
            raise UserInputError(f"--control-end must be in (0, 1], got {control_end}")
        pipe.register_to_config(control_guidance_end=float(control_end))
    if vae is not None:
        from diffusers import AutoencoderKL

        new = AutoencoderKL.from_pretrained(str(vae))
        old_enc, new_enc = pipe.vae.encoder.state_dict(), new.encoder.state_dict()
        if old_enc.keys() != new_enc.keys() or not all(
            torch.equal(old_enc[k], new_enc[k]) for k in old_enc
        ):
            raise UserInputError(
                f"{vae}: its encoder differs from the pipeline's, so its latent space does too"
            )
        new.register_to_config(scaling_factor=pipe.vae.config.scaling_factor)
        pipe.register_modules(vae=new)
    if is_minilm(pipe.text_encoder):  # referenced, not copied; any other text encoder is stored
        pipe.register_modules(text_encoder=_reference_class().from_pretrained(None))
    # sampling: DPM-Solver++ on the training noise schedule (good images in ~20 steps)
    pipe.register_modules(scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    if fp16:
        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # the fp16 cast is wanted: no module needs float32
        try:
            for name in (
                "vae",
                "unet",
                "controlnet",
                "metadata_encoder",
                "box_encoder",
                "layout_encoder",
            ):
                m = getattr(pipe, name, None)
                if m is not None:
                    m.to(torch.float16)
        finally:
            dlogging.set_verbosity(level)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
