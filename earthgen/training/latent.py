"""Train the default image model in a pretrained latent space (TAEF2) on real aerial data.

The VAE is not trained: TAEF2 (:class:`vae.taef2.TAEF2`, pretrained, MIT) encodes 256 px crops
to ``[32, 32, 32]`` latents once, and the UNet + metadata encoder learn in that space. Steps
(each a sub-command of ``python -m earthgen.training.latent``; docs/training.md has the exact runs):

1. ``convert-taef2``: the upstream ``taef2_encoder.pth`` / ``taef2_decoder.pth`` -> a diffusers
   folder (safetensors), loaded key for key.
2. ``init``: a fresh pipeline: TAEF2, a UNet2DConditionModel (text cross-attention, metadata as a
   class embedding, the layout's class fractions concatenated to its input), the offline MiniLM
   text encoder, a v-prediction DDPM schedule (sampled with DPM-Solver++).
3. ``cache``: draw crops from :class:`earthgen.datasets.MixedDataset` (real sets by weight), encode
   them with the pipeline's own :meth:`~earthgen.pipelines.image.EarthImagePipeline.encode_image`
   path and layout encoder, and store latents, layout maps, captions and GSDs; the per-channel
   latent mean/std measured on the cache go into the VAE's config.
4. ``train``: the loss object :class:`ImageLatentLoss` (v-prediction with min-SNR weighting,
   per-condition dropout of text, metadata and layout; prompts and metadata through the
   pipeline's own ``encode_prompt`` and ``class_labels``) in the shared loop
   :func:`earthgen.training.loop.fit` (EMA, atomic checkpoints, ``--resume``, ``--test-run``).

Batches are a pure function of (seed, step), so a resumed run sees the data it would have seen.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earthgen.errors import UserInputError
from earthgen.training.loop import TaskLoss, check_fresh_out, ema_parameters, fit, track_ema

DEFAULT_MIX = {"ucmerced": 0.5, "dubai": 0.25, "naip": 0.1, "neon": 0.08, "spacenet": 0.07}
# UNet of the default model: 3 levels (32, 16, 8 latent pixels), cross-attention at 16 and 8
UNET_CHANNELS = (64, 128, 128)


def convert_taef2(encoder: str | Path, decoder: str | Path, out: str | Path, **config):
    """Upstream TAEF2 state dicts -> a diffusers folder ``out`` (safetensors, fp32). ``config``:
    :class:`~vae.taef2.TAEF2` arguments (default: the upstream shape; tests use smaller ones)."""
    from vae.taef2 import TAEF2

    for p in (encoder, decoder):
        if not Path(p).is_file():
            raise UserInputError(f"TAEF2 weights not found: {p}")
    model = TAEF2.from_taesd_weights(encoder, decoder, **config)
    model.save_pretrained(str(out), safe_serialization=True)
    return model


def init_latent_model(
    out: str | Path,
    vae: str | Path,
    seed: int = 0,
    channels: tuple[int, ...] = UNET_CHANNELS,
    sample_size: int = 32,
) -> Path:
    """A fresh pipeline in the latent space of the TAEF2 folder ``vae`` (the module docstring)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from earthgen.conditioning import MetadataEncoder
    from earthgen.conditioning.dense import LayoutMapEncoder
    from earthgen.conditioning.text import SentenceTextEncoder
    from earthgen.pipelines.image import EarthImagePipeline
    from vae.taef2 import TAEF2

    torch.manual_seed(seed)
    taef2 = TAEF2.from_pretrained(str(vae))
    minilm = SentenceTextEncoder()
    layout = LayoutMapEncoder()
    n = len(channels)
    lat = int(taef2.config.latent_channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=lat + layout.channels,
        out_channels=lat,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        layers_per_block=1,
        cross_attention_dim=minilm.model.config.hidden_size,
        attention_head_dim=32,
        norm_num_groups=32,
        class_embed_type="identity",
    )
    meta = MetadataEncoder(out_dim=channels[0] * 4, freq_dim=32)
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
    )
    pipe = EarthImagePipeline(
        vae=taef2,
        unet=unet,
        scheduler=sched,
        text_encoder=minilm.model,
        tokenizer=minilm.tokenizer,
        metadata_encoder=meta,
        layout_encoder=layout,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return Path(out)


def _layout_ids(semantic: np.ndarray | None, size: int) -> np.ndarray:
    """Class ids for the layout map: IGNORE (unknown) becomes background (0, "other land")."""
    from earthgen.datasets import IGNORE

    if semantic is None:
        return np.zeros((size, size), np.int64)
    s = semantic.astype(np.int64)
    s[s == IGNORE] = 0
    return s


def build_cache(
    model: str | Path,
    out: str | Path,
    n: int = 1600,
    mix: dict | None = None,
    resolution: int = 256,
    seed: int = 0,
    root: str | None = None,
    batch: int = 16,
) -> dict:
    """Encode ``n`` crops drawn from the real-data mix into ``out`` (a ``.pt`` file); write the
    latent mean/std per channel into the pipeline's VAE config (``model`` is updated in place).
    Returns a summary."""
    import torch
    from tqdm import tqdm

    from earthgen.datasets import MixedDataset
    from earthgen.pipelines.image import load_pipeline

    mix = dict(mix or DEFAULT_MIX)
    # the data first: a bad --mix / --data-root fails before the pipeline is loaded
    ds = MixedDataset(mix, root=root, split="train", resolution=resolution)
    pipe = load_pipeline(str(model))
    if not pipe._normalized_vae or pipe.layout_encoder is None:
        raise UserInputError(
            f"{model}: build_cache needs a pipeline with a TAEF2 VAE and a layout encoder (init)"
        )
    rng = np.random.default_rng(seed)
    lat, maps, caps, gsds, srcs, has = [], [], [], [], [], []
    f = pipe.vae_scale_factor
    t0 = time.perf_counter()
    for i0 in tqdm(range(0, n, batch), desc="encoding crops", unit="batch"):
        items = [ds.sample(rng) for _ in range(min(batch, n - i0))]
        x = torch.from_numpy(np.stack([s.image for s in items])).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            z = pipe.vae.encode(x * 2.0 - 1.0).latents  # raw latents [B, 32, h, w]
            ids = torch.from_numpy(np.stack([_layout_ids(s.semantic, resolution) for s in items]))
            m = pipe.layout_encoder(ids, len(items), f)  # [B, K, h, w] class fractions
            # sets without masks (UC Merced, NAIP, NEON) get the null layout (all zeros), not a
            # map of class 0 everywhere: the same input as sampling without a layout
            known = torch.tensor([s.semantic is not None for s in items], dtype=m.dtype)
            m = m * known[:, None, None, None]
        lat.append(z.half())
        maps.append(m.half())
        caps += [s.caption for s in items]
        gsds += [float(s.gsd) for s in items]
        srcs += [s.source for s in items]
        has += [s.semantic is not None for s in items]
    latents = torch.cat(lat)
    data = {
        "latents": latents,
        "layout": torch.cat(maps),
        "captions": caps,
        "gsd": torch.tensor(gsds),
        "source": srcs,
        "has_layout": torch.tensor(has),
        "mix": mix,
        "seed": seed,
        "resolution": resolution,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    torch.save(data, tmp)
    tmp.replace(out)
    zf = latents.float()
    mean = zf.mean(dim=(0, 2, 3))
    std = zf.std(dim=(0, 2, 3))
    _set_latent_stats(model, mean.tolist(), std.tolist())
    counts = {k: srcs.count(k) for k in sorted(set(srcs))}
    return {
        "crops": len(caps),
        "by_source": counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "latent_mean": float(mean.mean()),
        "latent_std": float(std.mean()),
    }


def _set_latent_stats(model: str | Path, mean: list[float], std: list[float]) -> None:
    """Write per-channel latent statistics into the VAE config of the pipeline folder ``model``."""
    cfg_path = Path(model) / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["latents_mean"] = [round(float(v), 6) for v in mean]
    cfg["latents_std"] = [round(float(v), 6) for v in std]
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


@dataclass
class LatentTrainConfig:
    cache: str = ""
    model: str = ""
    out: str = "outputs/train-latent"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-4
    warmup: int = 100
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    meta_dropout: float = 0.1
    layout_dropout: float = 0.3
    snr_gamma: float = 5.0
    save_every: int = 50
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int = 0
    resume: bool = False
    test_run: bool = False
    task: str = "image-latent"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be > 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"--lr must be a positive number, got {self.lr}")
        for name in ("text_dropout", "meta_dropout", "layout_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserInputError(f"--{name.replace('_', '-')} must be in [0, 1)")
        if not 0.0 < self.ema_decay < 1.0:
            raise UserInputError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if not Path(self.cache).is_file():
            raise UserInputError(
                f"latent cache not found: {self.cache} (make one with the cache step)"
            )
        if not (Path(self.model) / "model_index.json").is_file():
            raise UserInputError(
                f"no pipeline folder at {self.model} (make one with the init step)"
            )


def _min_snr_weight(sched, t, gamma: float):
    """min(SNR, gamma) / (SNR + 1): min-SNR weighting for a v-prediction loss."""
    ac = sched.alphas_cumprod.to(t.device)[t]
    snr = ac / (1.0 - ac)
    return snr.clamp(max=gamma) / (snr + 1.0)


class ImageLatentLoss(TaskLoss):
    """``image-latent``: v-prediction on the cached, standardised TAEF2 latents with the layout
    map at the UNet input, under min-SNR weighting; the UNet and the metadata encoder learn.
    Prompts (empty when dropped) go through the pipeline's ``encode_prompt`` (cached per prompt),
    metadata through its ``class_labels``; the dropout masks come with the batch."""

    trains = ("unet", "meta")

    def __init__(self, pipe, snr_gamma: float):
        import torch
        from diffusers import DDPMScheduler

        pipe.text_encoder.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        self.pipe, self.snr_gamma = pipe, snr_gamma
        self.unet, self.meta = pipe.unet.float().train(), pipe.metadata_encoder.float().train()
        sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        if sched.config.prediction_type != "v_prediction":
            sched = DDPMScheduler.from_config(sched.config, prediction_type="v_prediction")
        self.noise_sched = sched
        self.text_cache: dict[str, torch.Tensor] = {}

    def text(self, prompts: list[str]):
        import torch

        new = sorted({p for p in prompts if p not in self.text_cache})
        if new:
            for p, e in zip(new, self.pipe.encode_prompt(new), strict=True):
                self.text_cache[p] = e.float()
        return torch.stack([self.text_cache[p] for p in prompts])

    def __call__(self, batch, generator):
        import torch
        import torch.nn.functional as F

        z = batch["latents"]
        b = z.shape[0]
        emb = self.text(batch["prompts"])
        labels = self.pipe.class_labels(batch["gsd"], None, b, batch["drop_meta"])
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (b,), generator=generator)
        x_t = self.noise_sched.add_noise(z, noise, t)
        target = self.noise_sched.get_velocity(z, noise, t)
        x_in = torch.cat([x_t, batch["layout"]], dim=1)
        pred = self.unet(x_in, t, encoder_hidden_states=emb, class_labels=labels).sample
        w = _min_snr_weight(self.noise_sched, t, self.snr_gamma)
        return (w * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()


def train_latent(cfg: LatentTrainConfig) -> dict:
    """Train the UNet + metadata encoder of ``cfg.model`` on the latent cache; the EMA pipeline is
    written to ``cfg.out/pipeline`` at every checkpoint. Returns a summary (steps, seconds,
    losses)."""
    import torch
    from accelerate import Accelerator

    from earthgen.pipelines.image import load_pipeline, sampling_scheduler

    cfg.validate()
    if not cfg.resume:
        check_fresh_out(Path(cfg.out))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = torch.load(cfg.cache, weights_only=False)
    pipe = load_pipeline(cfg.model)
    task_loss = ImageLatentLoss(pipe, cfg.snr_gamma)
    opt = torch.optim.AdamW(task_loss.param_groups(), lr=cfg.lr, weight_decay=1e-2)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1))
    )
    acc = Accelerator(cpu=True)
    opt, lr_schedule = task_loss.prepare(acc, opt, lr_schedule)
    ema = track_ema(acc, task_loss, cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    latents = pipe.vae.normalize_latents(data["latents"].float())
    layouts, captions, gsd = data["layout"].float(), data["captions"], data["gsd"]

    def next_batch(step: int):
        """Cache indices, dropout masks and the noise generator's seed from (seed, step)."""
        rng = np.random.default_rng([cfg.seed, step])
        idx = torch.from_numpy(rng.integers(0, latents.shape[0], cfg.batch_size))
        b = len(idx)
        drop_text = rng.random(b) < cfg.text_dropout
        drop_meta = torch.from_numpy(rng.random(b) < cfg.meta_dropout)
        keep_layout = torch.from_numpy(rng.random(b) >= cfg.layout_dropout).float()
        batch = {
            "latents": latents[idx],
            "layout": layouts[idx] * keep_layout[:, None, None, None],
            "prompts": [
                "" if d else captions[i] for d, i in zip(drop_text, idx.tolist(), strict=True)
            ],
            "gsd": gsd[idx],
            "drop_meta": drop_meta,
        }
        return batch, torch.Generator().manual_seed(int(rng.integers(0, 2**31)))

    params = ema_parameters(acc, task_loss)

    def export(done: int) -> None:
        export_ema(pipe, ema, params, Path(cfg.out) / "pipeline", sampling_scheduler)

    summary = fit(acc, cfg, task_loss, next_batch, opt, ema, lr_schedule, on_save=export)
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def export_ema(pipe, ema, params, folder: Path, sampling_scheduler) -> None:
    """Save the pipeline with the EMA weights (atomically: a temporary folder, then a rename)."""
    import shutil

    ema.store(params)
    ema.copy_to(params)
    sched = pipe.scheduler
    pipe.scheduler = sampling_scheduler(sched)
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    pipe.scheduler = sched
    ema.restore(params)


def _parse_mix(text: str) -> dict[str, float]:
    """``"ucmerced=2,dubai=1"`` -> ``{"ucmerced": 2.0, "dubai": 1.0}`` (an argparse type)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}; use NAME=WEIGHT") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one NAME=WEIGHT")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m earthgen.training.latent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert-taef2", help="upstream TAEF2 .pth files -> a diffusers folder")
    c.add_argument("--encoder", required=True)
    c.add_argument("--decoder", required=True)
    c.add_argument("--out", required=True)
    i = sub.add_parser("init", help="a fresh pipeline in the TAEF2 latent space")
    i.add_argument("--vae", required=True, help="TAEF2 folder (convert-taef2)")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("cache", help="encode real crops once (latents, layouts, captions, GSDs)")
    k.add_argument(
        "--model",
        required=True,
        help="pipeline folder (init); its VAE config gets the latent stats",
    )
    k.add_argument("--out", required=True, help="cache file (.pt)")
    k.add_argument("--n", type=int, default=1600)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument(
        "--data-root", default=None, help="folder of the real sets (default ../shared/data)"
    )
    default_mix = ",".join(f"{name}={w:g}" for name, w in DEFAULT_MIX.items())
    k.add_argument(
        "--mix",
        default=None,
        type=_parse_mix,
        help="sets and weights, e.g. ucmerced=2,dubai=1 (sets: ucmerced, dubai, naip, "
        f"neon, spacenet, world; default {default_mix})",
    )
    k.add_argument(
        "--resolution", type=int, default=256, help="crop side, pixels (multiple of 8; default 256)"
    )
    t = sub.add_parser("train", help="train the UNet + metadata encoder on a cache")
    for f in ("cache", "model", "out"):
        t.add_argument(f"--{f}", required=True)
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--test-run", action="store_true", help="4 steps at batch 2: a smoke test")
    a = p.parse_args(argv)
    try:
        if a.cmd == "convert-taef2":
            convert_taef2(a.encoder, a.decoder, a.out)
            print(f"wrote {a.out}")
        elif a.cmd == "init":
            print(init_latent_model(a.out, a.vae, seed=a.seed))
        elif a.cmd == "cache":
            if a.n <= 0:
                raise UserInputError(f"--n must be > 0, got {a.n}")
            if a.resolution <= 0 or a.resolution % 8:
                raise UserInputError(
                    f"--resolution must be a positive multiple of 8, got {a.resolution}"
                )
            summary = build_cache(
                a.model,
                a.out,
                n=a.n,
                seed=a.seed,
                root=a.data_root,
                mix=a.mix,
                resolution=a.resolution,
            )
            print(json.dumps(summary, indent=2))
        else:
            cfg = LatentTrainConfig(
                cache=a.cache,
                model=a.model,
                out=a.out,
                steps=a.steps,
                batch_size=a.batch_size,
                lr=a.lr,
                save_every=a.save_every,
                seed=a.seed,
                threads=a.threads,
                resume=a.resume,
                test_run=a.test_run,
            )
            if a.test_run:
                cfg.steps, cfg.batch_size, cfg.save_every, cfg.log_every = 4, 2, 2, 1
            print(json.dumps(train_latent(cfg), indent=2))
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
