"""Train the image models: ``earthgen train image-vae | image-ldm | image-control | image-boxes``.

One loss object per task (the loop is :func:`earthgen.training.loop.fit`, on Hugging Face
accelerate: mixed precision, gradient accumulation, multi-GPU / multi-node through ``accelerate
launch``):

- :class:`ImageVAELoss` (``image-vae``): the AutoencoderKL (L1 reconstruction + a small KL term);
- :class:`ImageLDMLoss` (``image-ldm``): the UNet and the metadata encoder (VAE and text encoder
  frozen), epsilon prediction, with per-condition dropout (text -> empty prompt, metadata ->
  null, layout map -> zeros for a model with a layout encoder: ``--layout-input concat``);
- :class:`ImageControlLoss` (``image-control``): the fused control branch with the UNet frozen,
  each control map dropped on its own ("dynamic condition adaptation");
- :class:`ImageBoxesLoss` (``image-boxes``): box-layout conditioning (AeroGen / GLIGEN): the
  box-token encoder, the UNet's gated attention layers and (unless ``freeze_unet``, the GLIGEN
  recipe for a good base model) the rest of the UNet and the metadata encoder. Boxes are dropped
  (null tokens) per sample with ``--cond-dropout``.

Prompts are encoded by the pipeline's own :meth:`~earthgen.pipelines.image.EarthImagePipeline.
encode_prompt`. Data: procedural world tiles (default; random seeds, places and GSDs, with their
captions and layouts) or an image-caption dataset (any format :func:`earthgen.data.read_captions`
reads); for ``image-boxes`` (and optionally the others) a detection dataset (DOTA, COCO, YOLO,
...: :func:`earthgen.data.read_detection_dataset`), captioned from its class counts.
Batches are a pure function of (seed, step, rank), so a resumed run sees the data it would have
seen. Checkpoints are written to a temporary folder and renamed (atomic); ``--resume`` continues
from the latest one. EMA weights are kept and are what the final pipeline folder holds.
Rank 0 writes ``loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from earthgen.datasets import (  # noqa: F401  (procedural samples; re-exported here)
    detection_caption,
    world_batch,
    world_box_batch,
)
from earthgen.errors import UserInputError
from earthgen.training.loop import TaskLoss, ema_parameters, fit, save_model_atomic, track_ema

TASKS = ("image-vae", "image-ldm", "image-control", "image-boxes")
# fresh image model sizes: (VAE channels, VAE layers per block, UNet channels, UNet layers,
# norm groups); the VAE downsamples 2**(len(channels) - 1): "compact" keeps 4x so that 4-pixel
# objects survive
IMAGE_SIZES = {
    "tiny": ((16, 16, 32, 32), 1, (32, 64), 1, 8),
    "compact": ((32, 64, 64), 1, (64, 128, 128), 1, 32),
    "small": ((64, 128, 256, 256), 2, (128, 256, 384), 2, 32),
}


LAYOUT_INPUTS = ("control", "concat")


@dataclass
class TrainConfig:
    task: str = "image-ldm"
    out: str = "outputs/train"
    model: str | None = None  # a pipeline folder to start from; None = a fresh model
    size: str = "tiny"  # fresh model size: tiny | small
    data: str = "world"  # "world" or a caption dataset path
    resolution: int = 64  # pixels
    batch_size: int = 4
    steps: int = 1000  # total optimisation steps (a --test-run uses 20 by default)
    lr: float = 1e-4
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    grad_checkpointing: bool = False
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # per condition
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    test_run: bool = False
    freeze_unet: bool = False  # image-boxes: train only the gated layers + box encoder (GLIGEN)
    box_raster_dim: int = (
        0  # image-boxes on a model without boxes: class dims of the dense box map (0 = tokens only)
    )
    box_loss_weight: float = (
        0.0  # image-boxes: extra loss weight inside boxes (1 + w * covered fraction)
    )
    balance: float = (
        0.0  # detection data: draw images by their rarest class, count^-balance (0 = uniform)
    )
    layout_input: str = (
        "control"  # how the layout reaches the UNet: control (branch) | concat (input channels)
    )
    layout_dropout: float | None = (
        None  # concat layout map: its own drop probability (None: cond_dropout)
    )
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UserInputError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.size not in IMAGE_SIZES:
            raise UserInputError(
                f"--size must be one of {', '.join(IMAGE_SIZES)}, got {self.size!r}"
            )
        if self.layout_input not in LAYOUT_INPUTS:
            raise UserInputError(
                f"--layout-input must be one of {', '.join(LAYOUT_INPUTS)}, got "
                f"{self.layout_input!r}"
            )
        if self.box_raster_dim < 0 or self.box_loss_weight < 0 or self.balance < 0:
            raise UserInputError("--box-raster-dim, --box-loss-weight and --balance must be >= 0")
        if self.resolution % 64:
            raise UserInputError(
                f"--resolution must be a multiple of 64 pixels, got {self.resolution}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(
                f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        if not 0.0 <= self.cond_dropout < 1.0:
            raise UserInputError(f"--cond-dropout must be in [0, 1), got {self.cond_dropout}")
        if self.layout_dropout is not None and not 0.0 <= self.layout_dropout < 1.0:
            raise UserInputError(f"--layout-dropout must be in [0, 1), got {self.layout_dropout}")
        for name in ("batch_size", "steps", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be > 0")
        if self.data != "world" and not Path(self.data).exists():
            raise UserInputError(f"training data not found: {self.data}")


# --- models ---------------------------------------------------------------------------------------


def fresh_components(
    size: str = "tiny", boxes: bool = False, raster_dim: int = 0, layout_input: str = "control"
) -> dict:
    """New, randomly initialised components sized for CPU tests (tiny) or a first GPU model
    (small); the text encoder is the offline MiniLM (384-d), frozen. ``boxes``: a grounded UNet
    (gated attention) and a box-token encoder instead of the control branch. ``layout_input``
    "concat": a layout encoder whose map is concatenated to the UNet input, no control branch."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from controls import FusedControlNet
    from earthgen.classes import NUM_CLASSES
    from earthgen.conditioning import MetadataEncoder
    from earthgen.conditioning.text import SentenceTextEncoder

    minilm = SentenceTextEncoder()
    tok, text = minilm.tokenizer, minilm.model
    vae_ch, vae_layers, unet_ch, unet_layers, groups = IMAGE_SIZES[size]
    vae = AutoencoderKL(
        block_out_channels=vae_ch,
        down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
        up_block_types=("UpDecoderBlock2D",) * len(vae_ch),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=vae_layers,
    )
    n = len(unet_ch)
    unet = UNet2DConditionModel(
        sample_size=8 if size == "tiny" else 32,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_ch,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=unet_layers,
        cross_attention_dim=text.config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=groups,
        class_embed_type="identity",
    )
    meta = MetadataEncoder(out_dim=unet_ch[0] * 4, freq_dim=32)
    control = FusedControlNet.from_unet(
        unet,
        {"layout": NUM_CLASSES, "roads": 1},
        fusion_widths=(8, 16, 32, 64) if size == "tiny" else (16, 32, 96, 256),
    )
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    comps = {
        "vae": vae,
        "unet": unet,
        "scheduler": sched,
        "text_encoder": text,
        "tokenizer": tok,
        "metadata_encoder": meta,
        "controlnet": control,
    }
    if boxes:
        add_box_conditioning(
            comps, hidden_dim=256 if size == "tiny" else 512, raster_dim=raster_dim
        )
        comps["controlnet"] = None
    if layout_input == "concat":
        add_layout_input(comps)
        comps["controlnet"] = None
    return comps


def add_layout_input(comps: dict) -> dict:
    """Give pipeline components a layout map at the UNet input (in place): a
    :class:`earthgen.conditioning.dense.LayoutMapEncoder` and a UNet whose ``conv_in`` takes its
    channels after the existing ones, zero-initialised (:func:`controls.widen_input`), so the
    output is unchanged until trained. A model that already has a layout encoder is left as it is;
    a control branch, if any, is kept."""
    from controls import widen_input
    from earthgen.conditioning.dense import LayoutMapEncoder

    if comps.get("layout_encoder") is None:
        enc = LayoutMapEncoder()
        comps["unet"] = widen_input(comps["unet"], enc.channels)
        comps["layout_encoder"] = enc
    return comps


def add_box_conditioning(comps: dict, hidden_dim: int = 512, raster_dim: int = 0) -> dict:
    """Give pipeline components box conditioning (in place): the UNet becomes a
    :class:`controls.boxes.GroundedUNet2DConditionModel` (same weights, new gated layers, and
    ``1 + raster_dim`` zero-initialised input channels for the dense box map when ``raster_dim``)
    and a :class:`earthgen.conditioning.boxes.BoxTokenEncoder` is added if there is none. On a
    model with a layout map at its input the box-map channels go before the layout's (the
    pipeline's order). A model that already has box conditioning is left as it is."""
    from controls.boxes import GroundedUNet2DConditionModel
    from earthgen.conditioning.boxes import BoxTokenEncoder, check_box_map

    lay = comps.get("layout_encoder")
    lay_c = 0 if lay is None else lay.channels
    if not isinstance(comps["unet"], GroundedUNet2DConditionModel):
        # the box map goes between the latent and a layout map the UNet already takes
        at = None if lay is None else int(comps["unet"].config.out_channels)
        comps["unet"] = GroundedUNet2DConditionModel.from_unet(
            comps["unet"], 1 + raster_dim if raster_dim else 0, insert_at=at
        )
        if (
            comps.get("box_encoder") is not None
            and comps["box_encoder"].config.raster_dim != raster_dim
        ):
            comps["box_encoder"] = None
    if (
        comps.get("box_encoder") is None
    ):  # as many map channels as the UNet takes (1 + class dims, or none)
        comps["box_encoder"] = BoxTokenEncoder(
            text_dim=int(comps["text_encoder"].config.hidden_size),
            out_dim=int(comps["unet"].config.cross_attention_dim),
            hidden_dim=hidden_dim,
            raster_dim=max(comps["unet"].raster_channels - lay_c - 1, 0),
        )
    check_box_map(comps["unet"], comps["box_encoder"], lay_c)
    return comps


def load_components(cfg: TrainConfig) -> dict:
    boxes = cfg.task == "image-boxes"
    if cfg.model is None:
        return fresh_components(
            "tiny" if cfg.test_run else cfg.size,
            boxes=boxes,
            raster_dim=cfg.box_raster_dim,
            layout_input=cfg.layout_input,
        )
    from earthgen.models import resolve_model
    from earthgen.pipelines.image import load_pipeline

    # "default": the packaged model of the task (docs/models.md)
    comps = dict(load_pipeline(resolve_model(cfg.model, "boxes" if boxes else "image")).components)
    if boxes:
        add_box_conditioning(comps, raster_dim=cfg.box_raster_dim)
    if cfg.layout_input == "concat":
        add_layout_input(comps)
    return comps


# --- data -----------------------------------------------------------------------------------------


class CaptionData:
    """Index-addressable batches from an image-caption dataset (center crop + resize)."""

    def __init__(self, path: str, resolution: int):
        from earthgen.data import read_captions

        self.records = read_captions(path)
        if not self.records:
            raise UserInputError(f"no records in {path}")
        self.resolution = resolution

    def batch(self, seed: int, index0: int, n: int) -> dict:
        from PIL import Image

        imgs, caps, gsds = [], [], []
        for k in range(index0, index0 + n):
            rec = self.records[(k * 2654435761 + seed) % len(self.records)]
            img = Image.fromarray(rec.load_image())
            s = min(img.size)
            img = img.crop(
                (
                    (img.width - s) // 2,
                    (img.height - s) // 2,
                    (img.width + s) // 2,
                    (img.height + s) // 2,
                )
            )
            img = img.resize((self.resolution, self.resolution), Image.BICUBIC)
            imgs.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255.0)
            caps.append(rec.caption)
            gsds.append(
                float("nan") if rec.gsd is None else rec.gsd * s / self.resolution
            )  # of the resized crop
        return {
            "image": torch.stack(imgs),
            "semantic": None,
            "caption": caps,
            "gsd": torch.tensor(gsds),
        }


class MaskData:
    """Index-addressable batches from a semantic-segmentation folder (``images/`` + ``masks/``
    paired by stem, :func:`earthgen.data.masks.read_mask_folder`; masks in EarthGen class ids or
    palette colours, docs/classes.md): one random square crop of each image and its mask
    (side = the shorter edge), resized to ``resolution`` (bicubic / nearest), with flips and 90°
    rotations. Captions and GSD (metres/pixel, of the file; scaled with the resize) come from a
    caption index in the folder (``captions.jsonl``, ``metadata.csv``, ... as
    :mod:`earthgen.data.captions`, matched by image file stem) or, without one, the caption is
    made from the mask's class fractions and the GSD is unknown."""

    def __init__(self, path: str, resolution: int):
        from earthgen.data.captions import INDEX_FILES, read_captions
        from earthgen.data.masks import read_mask_folder

        self.samples = read_mask_folder(path)
        self.resolution = resolution
        self.index: dict[str, object] = {}
        root = Path(path)
        for name in INDEX_FILES:
            if (root / name).is_file():
                self.index = {
                    Path(r.image).stem: r
                    for r in read_captions(root / name, image_root=self.samples[0].image.parent)
                }
                break

    def __len__(self) -> int:
        return len(self.samples)

    def item(
        self, k: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, str, float]:
        """Sample ``k`` with the augmentation drawn from ``rng``: ``[3, R, R]`` in 0..1,
        ``[R, R]`` int64 class ids, caption, GSD (m/px, NaN when unknown)."""
        from PIL import Image

        from earthgen.classes import class_fractions
        from earthgen.data._common import fail
        from earthgen.world.caption import SCENE_PHRASES, scene_of

        smp = self.samples[k]
        with Image.open(smp.image) as im:
            img = np.asarray(im.convert("RGB"))
        ids = smp.read()
        if ids.shape != img.shape[:2]:
            raise fail(
                smp.mask,
                None,
                f"mask is {ids.shape[1]}x{ids.shape[0]} but its image {smp.image.name} is "
                f"{img.shape[1]}x{img.shape[0]}",
            )
        h, w = ids.shape
        side = min(h, w)
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        img, ids = img[y0 : y0 + side, x0 : x0 + side], ids[y0 : y0 + side, x0 : x0 + side]
        r = self.resolution
        img = np.asarray(Image.fromarray(img).resize((r, r), Image.BICUBIC))
        ids = np.asarray(Image.fromarray(ids).resize((r, r), Image.NEAREST))
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        img, ids = np.rot90(img, rot), np.rot90(ids, rot)
        if flip:
            img, ids = img[:, ::-1], ids[:, ::-1]
        rec = self.index.get(smp.image.stem)
        gsd = float("nan")
        if rec is not None and rec.gsd is not None:
            gsd = rec.gsd * side / r
        if rec is not None:
            caption = rec.caption
        else:
            scene = SCENE_PHRASES[scene_of({"class_fractions": class_fractions(ids)})]
            caption = f"Satellite image of {scene}."
        return (
            torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0,
            torch.from_numpy(ids.astype(np.int64)),
            caption,
            gsd,
        )

    def batch(self, seed: int, index0: int, n: int) -> dict:
        imgs, sems, caps, gsds = [], [], [], []
        for k in range(index0, index0 + n):
            rng = np.random.default_rng([seed, k])
            img, ids, cap, gsd = self.item(int(rng.integers(len(self.samples))), rng)
            imgs.append(img)
            sems.append(ids)
            caps.append(cap)
            gsds.append(gsd)
        return {
            "image": torch.stack(imgs),
            "semantic": torch.stack(sems),
            "caption": caps,
            "gsd": torch.tensor(gsds, dtype=torch.float32),
        }


def is_mask_dataset(path: str) -> bool:
    """True when ``path`` is a folder with an image directory and a mask directory of image
    files (``images/`` + ``masks/``, the names of :mod:`earthgen.data.masks`)."""
    from earthgen.data._common import IMAGE_EXTS
    from earthgen.data.masks import IMAGE_DIR_NAMES, MASK_DIR_NAMES

    p = Path(path)
    if not p.is_dir() or not any((p / d).is_dir() for d in IMAGE_DIR_NAMES):
        return False
    return any(
        (p / d).is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in (p / d).iterdir())
        for d in MASK_DIR_NAMES
    )


def open_image_dataset(
    path: str, resolution: int, boxes: bool = False, balance: float = 0.0
) -> MaskData | DetectionData | CaptionData:
    """The batch source for a dataset path, by what the path holds: a semantic-mask folder
    (:class:`MaskData`), a detection dataset (:class:`DetectionData`; always with ``boxes``) or
    an image-caption dataset (:class:`CaptionData`)."""
    if not boxes and is_mask_dataset(path):
        return MaskData(path, resolution)
    if boxes or is_detection_dataset(path):
        return DetectionData(path, resolution, balance)
    return CaptionData(path, resolution)


def is_detection_dataset(path: str) -> bool:
    """True when ``path`` looks like a detection dataset (labelTxt/, labels/, a COCO JSON, ...)."""
    from earthgen.data import detect_format

    try:
        detect_format(path)
    except UserInputError:
        return False
    return True


class DetectionData:
    """Index-addressable batches from a detection dataset: random ``resolution`` crops (padded
    when smaller) with flips and 90° rotations, their boxes (pixel corners), captions from the
    class counts and the GSD when the labels carry one (DOTA ``gsd:``)."""

    def __init__(self, path: str, resolution: int, balance: float = 0.0):
        from earthgen.data import read_detection_dataset
        from earthgen.detection.train import DetectionSamples

        items = read_detection_dataset(path)
        self.samples = DetectionSamples(items, balance=balance)
        self.gsd = [float(it.boxes.extra.get("gsd") or float("nan")) for it in items]
        self.resolution = resolution

    def batch(self, seed: int, index0: int, n: int) -> dict:
        imgs, sets = self.samples.batch(seed, index0, n, self.resolution)
        rng = np.random.default_rng([seed, index0])
        idx = rng.integers(len(self.samples), size=n)  # GSD of a random item: labels rarely have it
        gsds = [self.gsd[int(i)] for i in idx]
        return {
            "image": imgs,
            "semantic": None,
            "caption": [detection_caption(b.labels) for b in sets],
            "gsd": torch.tensor(gsds, dtype=torch.float32),
            "boxes": sets,
        }


# --- losses -------------------------------------------------------------------------------------


def freeze_except(pipe, trained: list) -> None:
    """Freeze every model of the pipeline that is not in ``trained``."""
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module) and not any(m is t for t in trained):
            m.requires_grad_(False)


class ImageVAELoss(TaskLoss):
    """``image-vae``: the autoencoder's L1 reconstruction of the image (in -1..1) + 1e-6 KL."""

    trains = ("vae",)

    def __init__(self, pipe, cfg: TrainConfig):
        self.vae = pipe.vae
        freeze_except(pipe, [self.vae])

    def __call__(self, batch, generator):
        x = batch["image"] * 2 - 1
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample(generator=None)).sample  # global RNG: resume restores it
        return F.l1_loss(rec, x) + 1e-6 * post.kl().mean()


class LatentDiffusionLoss(TaskLoss):
    """Epsilon prediction on the frozen VAE's latents (posterior mean) at uniform DDPM timesteps,
    the text (empty prompt, encoded by the pipeline's own ``encode_prompt``) and the metadata
    (its learned null) dropped per sample with ``cond_dropout``, and every condition at once with
    the same probability. Subclasses add their conditions in :meth:`predict`."""

    def __init__(self, pipe, cfg: TrainConfig):
        from diffusers import DDPMScheduler

        self.pipe, self.vae, self.unet, self.meta = pipe, pipe.vae, pipe.unet, pipe.metadata_encoder
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.p_drop = cfg.cond_dropout
        self.p_layout = cfg.cond_dropout if cfg.layout_dropout is None else cfg.layout_dropout

    def __call__(self, batch, generator):
        g, x = generator, batch["image"]
        b = x.shape[0]
        with torch.no_grad():
            z = self.vae.encode(x * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor
        noise = torch.randn(z.shape, generator=g).to(x.device)
        n_t = self.noise_sched.config.num_train_timesteps
        ts = torch.randint(0, n_t, (b,), generator=g).to(x.device)
        zt = self.noise_sched.add_noise(z, noise, ts)
        drop = torch.rand(3, b, generator=g) < self.p_drop  # text, metadata, all conditions
        captions = ["" if d else c for c, d in zip(batch["caption"], drop[0], strict=True)]
        emb = self.pipe.encode_prompt(captions)  # no_grad: the text encoder is frozen
        labels = None
        if self.meta is not None:  # called directly: when it trains, through accelerate's wrapper
            labels = self.meta({"gsd": batch["gsd"]}, batch_size=b, drop=drop[1] | drop[2])
        pred, weight = self.predict(batch, g, zt, ts, emb, labels, drop[2])
        if weight is None:
            return F.mse_loss(pred.float(), noise.float())
        return ((pred.float() - noise.float()) ** 2 * weight).mean() / weight.mean()

    def with_layout(self, zt, batch, g, drop_all):
        """``zt`` with the layout map concatenated (a model with a layout encoder: ``--layout-input
        concat``), dropped per sample with ``layout_dropout``."""
        enc = self.pipe.layout_encoder
        if enc is None:
            return zt
        b, size = zt.shape[0], tuple(batch["image"].shape[-2:])
        drop = (torch.rand(b, generator=g) < self.p_layout) | drop_all
        lmap = enc(batch["semantic"], b, self.pipe.vae_scale_factor, drop=drop, size=size)
        return torch.cat([zt, lmap.to(zt.device, zt.dtype)], dim=1)

    def predict(self, batch, g, zt, ts, emb, labels, drop_all):
        """The UNet's noise prediction and a per-pixel loss weight (None: uniform)."""
        raise NotImplementedError


class ImageLDMLoss(LatentDiffusionLoss):
    """``image-ldm``: the UNet and the metadata encoder (VAE and text encoder frozen), with the
    layout map at the UNet input for a model with a layout encoder."""

    def __init__(self, pipe, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.trains = ("unet",) + (("meta",) if self.meta is not None else ())
        freeze_except(pipe, self.modules)

    def predict(self, batch, g, zt, ts, emb, labels, drop_all):
        zt = self.with_layout(zt, batch, g, drop_all)
        return self.unet(zt, ts, encoder_hidden_states=emb, class_labels=labels).sample, None


class ImageControlLoss(LatentDiffusionLoss):
    """``image-control``: the fused control branch on the layout and its road map, the UNet
    frozen; each control map dropped on its own ("dynamic condition adaptation")."""

    trains = ("control",)

    def __init__(self, pipe, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        if pipe.controlnet is None:
            raise UserInputError("the model has no control branch to train")
        if pipe.layout_encoder is not None:
            raise UserInputError(
                "this model takes its layout at the UNet input (a layout encoder): train it with "
                "image-ldm, not image-control"
            )
        self.control, self.pack = pipe.controlnet, pipe.controlnet.pack
        freeze_except(pipe, [self.control])

    def predict(self, batch, g, zt, ts, emb, labels, drop_all):
        sem = batch["semantic"]
        if sem is None:
            raise UserInputError(
                "image-control training needs layouts: use --data world or a semantic-mask "
                "folder (images/ + masks/, docs/training.md)"
            )
        b, (h, w) = zt.shape[0], batch["image"].shape[-2:]
        # the maps the pipeline builds from a layout at sampling time (one-hot classes, roads)
        maps = {k: v.to(zt.device) for k, v in self.pipe.dense_controls(sem, None, b, h, w).items()}
        drop = {k: (torch.rand(b, generator=g) < self.p_drop) | drop_all for k in maps}
        down, mid = self.control(zt, ts, emb, self.pack(maps, drop=drop), class_labels=labels)
        pred = self.unet(
            zt,
            ts,
            encoder_hidden_states=emb,
            class_labels=labels,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return pred, None


class ImageBoxesLoss(LatentDiffusionLoss):
    """``image-boxes``: box-layout conditioning (AeroGen / GLIGEN): the box-token encoder, the
    UNet's gated attention layers and (unless ``freeze_unet``) the rest of the UNet and the
    metadata encoder. Boxes are dropped (null tokens) per sample with ``cond_dropout``; with
    ``box_loss_weight`` pixels inside boxes weigh ``1 + w * covered fraction``."""

    def __init__(self, pipe, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.boxes = pipe.box_encoder
        self.raster = bool(self.boxes.raster_channels)
        self.box_weight, self.class_emb = cfg.box_loss_weight, {}
        with_meta = self.meta is not None and not cfg.freeze_unet
        self.trains = ("unet", "boxes") + (("meta",) if with_meta else ())
        freeze_except(pipe, self.modules)
        self.part_frozen = None  # conv_in.weight when only its box-map columns learn
        if cfg.freeze_unet:  # GLIGEN: only the gated layers learn ...
            unet = self.unet
            for name, p in unet.named_parameters():
                p.requires_grad_(".fuser." in name)
            if getattr(unet, "raster_channels", 0):  # ... and the box map's input weights
                n_lat = int(unet.config.out_channels)
                unet.conv_in.weight.requires_grad_(True)
                unet.conv_in.weight.register_hook(
                    lambda g: torch.cat([torch.zeros_like(g[:, :n_lat]), g[:, n_lat:]], 1)
                )
                self.part_frozen = unet.conv_in.weight

    def param_groups(self) -> list[dict]:
        params = [p for p in self.parameters() if p is not self.part_frozen]
        if self.part_frozen is None:
            return [{"params": params}]
        # no weight decay on conv_in: it would shrink its frozen latent columns too
        return [{"params": params}, {"params": [self.part_frozen], "weight_decay": 0.0}]

    def predict(self, batch, g, zt, ts, emb, labels, drop_all):
        from earthgen.conditioning.boxes import (
            box_coverage,
            class_embeddings,
            drop_boxes,
            pack_boxes,
        )

        x, dev = batch["image"], zt.device
        corners, names, mask = pack_boxes(batch["boxes"], x.shape[-1], x.shape[-2])
        cls = class_embeddings(
            names, self.pipe.text_encoder, self.pipe.tokenizer, self.class_emb, dev
        )
        mask = drop_boxes(mask, (torch.rand(zt.shape[0], generator=g) < self.p_drop) | drop_all)
        corners, mask = corners.to(dev), mask.to(dev)
        if self.raster:
            tokens, raster = self.boxes(corners, cls, mask, raster_size=tuple(zt.shape[-2:]))
            zt = torch.cat([zt, raster.to(zt.dtype)], dim=1)
        else:
            tokens = self.boxes(corners, cls, mask)
        weight = None
        if self.box_weight > 0:  # every box, dropped or not
            cover = box_coverage(corners, *zt.shape[-2:]).sum(1, keepdim=True)
            weight = 1.0 + self.box_weight * cover.clamp(max=1.0)
        zt = self.with_layout(zt, batch, g, drop_all)  # after the box map (the pipeline's order)
        pred = self.unet(
            zt,
            ts,
            encoder_hidden_states=emb,
            class_labels=labels,
            cross_attention_kwargs={"gligen": {"objs": tokens}},
        ).sample
        return pred, weight


LOSSES = {
    "image-vae": ImageVAELoss,
    "image-ldm": ImageLDMLoss,
    "image-control": ImageControlLoss,
    "image-boxes": ImageBoxesLoss,
}


# --- training -------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary (steps, first/last losses, output paths)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from earthgen.pipelines.image import EarthImagePipeline, sampling_scheduler

    if cfg.test_run:
        cfg.batch_size, cfg.resolution = 2, 64
        cfg.save_every, cfg.log_every = min(cfg.save_every, 10), 1
    cfg.validate()
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    set_seed(cfg.seed)
    pipe = EarthImagePipeline(**load_components(cfg))
    task_loss = LOSSES[cfg.task](pipe, cfg)
    if cfg.grad_checkpointing:
        for m in task_loss.modules:
            if getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(task_loss.param_groups(), lr=cfg.lr, weight_decay=1e-2)
    opt = task_loss.prepare(acc, opt)
    ema = track_ema(acc, task_loss, cfg.ema_decay)
    pipe.to(acc.device)
    data = None
    if cfg.data != "world":
        boxes = cfg.task == "image-boxes"
        data = open_image_dataset(cfg.data, cfg.resolution, boxes=boxes, balance=cfg.balance)

    def next_batch(step: int) -> tuple[dict, torch.Generator]:
        index0 = (step * acc.num_processes + acc.process_index) * cfg.batch_size
        if data is not None:
            batch = data.batch(cfg.seed, index0, cfg.batch_size)
        elif cfg.task == "image-boxes":
            batch = world_box_batch(cfg.seed, index0, cfg.batch_size, cfg.resolution)
        else:
            batch = world_batch(cfg.seed, index0, cfg.batch_size, cfg.resolution)
        batch["image"] = batch["image"].to(acc.device)
        return batch, torch.Generator().manual_seed(cfg.seed * 1_000_003 + index0)

    summary = fit(acc, cfg, task_loss, next_batch, opt, ema)
    if acc.is_main_process:
        # the final model holds the EMA weights (one flat parameter list over the trained modules);
        # it samples with DPM-Solver++ on the training noise schedule (DDPM needs hundreds of steps)
        ema.copy_to(ema_parameters(acc, task_loss))
        pipe.scheduler = sampling_scheduler(pipe.scheduler)
        out = Path(cfg.out)
        save_model_atomic(pipe, out / "pipeline")
        summary["pipeline"] = str(out / "pipeline")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
