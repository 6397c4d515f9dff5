"""Train the 3D VAEs: ``earthgen train structure-vae | texture-vae``.

One loop on Hugging Face accelerate (mixed precision, multi-GPU / multi-node through
``accelerate launch``), EMA weights, atomic checkpoints, exact resume, rank-0 logging:

- ``structure-vae``: random ``L^3`` crops of voxelized world tiles (``L`` = ``--resolution``,
  1 m voxels by default), rotated by multiples of 90 degrees and mirrored; loss = the occupancy
  classifiers' cross-entropy at every level (teacher forcing) + a small KL term.
- ``texture-vae``: world scenes of ``--scene-size`` metres (voxels + appearance features + the
  reference surfel scene, :mod:`earthgen.world.scene3d`); every step renders the decoded surfels
  and the reference from ``--views`` random aerial cameras; loss = L1 + 0.2 (1 - SSIM) + KL.

Data: a pool of ``--pool`` world tiles is generated once at the start (a pure function of the
seed), and batches are drawn from it as a pure function of (seed, step, rank), so a resumed run
sees the data it would have seen. At the end the EMA weights are saved to ``out/model`` and the
model is evaluated on held-out scenes (other world seeds): voxel IoU / precision / recall for the
structure VAE, PSNR / SSIM of renders from held-out views for the texture VAE.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from earthgen.errors import UserInputError
from earthgen.training.loop import TaskLoss, fit, save_model_atomic, track_ema

if TYPE_CHECKING:
    from vae.sparse import SparseTensor

TASKS = ("structure-vae", "texture-vae")
PRESETS = ("mixed", "urban", "suburban", "rural", "mountain")
SIZES = {  # fresh model sizes
    "structure-vae": {
        "tiny": {"channels": (8, 16, 24, 32), "latent_channels": 8, "num_res_blocks": 1},
        "small": {"channels": (16, 32, 48, 64), "latent_channels": 8, "num_res_blocks": 1},
        "base": {"channels": (32, 64, 96, 128), "latent_channels": 8, "num_res_blocks": 2},
    },
    "texture-vae": {
        "tiny": {
            "channels": 16,
            "latent_channels": 8,
            "num_res_blocks": 1,
            "gaussians_per_voxel": 4,
        },
        "small": {
            "channels": 64,
            "latent_channels": 8,
            "num_res_blocks": 2,
            "gaussians_per_voxel": 4,
        },
        "base": {
            "channels": 128,
            "latent_channels": 8,
            "num_res_blocks": 4,
            "gaussians_per_voxel": 8,
        },
    },
}


@dataclass
class Train3DConfig:
    task: str = "structure-vae"
    out: str = "outputs/train3d"
    model: str | None = None  # a model folder to start from; None = fresh
    size: str = "small"  # fresh model size: tiny | small | base
    resolution: int = 64  # structure crops, voxels per side (multiple of 8)
    scene_size: float = 32.0  # texture scenes, metres per side
    voxel_size: float = 1.0  # metres
    gsd: float = 0.5  # metres/pixel of the world tiles (texture detail)
    views: int = 2  # texture: cameras per scene per step
    image_size: int = 64  # texture: render size, pixels
    batch_size: int = 2
    steps: int = 2000
    lr: float = 1e-3
    kl_weight: float = 1e-3
    mixed_precision: str = "no"
    ema_decay: float = 0.995
    pool: int = 32  # world tiles generated up front
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    test_run: bool = False

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UserInputError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.size not in SIZES[self.task]:
            raise UserInputError(
                f"--size must be one of {', '.join(SIZES[self.task])}, got {self.size!r}"
            )
        if self.resolution % 8 or self.resolution < 16:
            raise UserInputError(
                f"--resolution must be a multiple of 8 voxels, at least 16; got {self.resolution}"
            )
        if not (self.voxel_size > 0 and self.gsd > 0):
            raise UserInputError("--voxel-size and --gsd must be > 0 metres")
        ratio = self.voxel_size / self.gsd
        if abs(ratio - round(ratio)) > 1e-6:
            raise UserInputError(
                f"--voxel-size ({self.voxel_size} m) must be a whole multiple of "
                f"--gsd ({self.gsd} m)"
            )
        if self.scene_size < 4 * self.voxel_size:
            raise UserInputError("--scene-size must be at least 4 voxels")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserInputError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.kl_weight < 0:
            raise UserInputError(f"--kl-weight must be >= 0, got {self.kl_weight}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(
                f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        for name in (
            "batch_size",
            "steps",
            "save_every",
            "log_every",
            "pool",
            "views",
            "image_size",
        ):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be > 0")


# --- data -----------------------------------------------------------------------------------------


def world_tile(seed: int, index: int, size_m: float, gsd: float, snap_m: float = 1.0):
    """World tile ``index`` of a data seed: its own world seed, preset and place (deterministic);
    the origin is a multiple of ``snap_m`` (the voxel size), so the tile covers whole voxel
    columns."""
    from earthgen.world.config import preset as world_preset
    from earthgen.world.tile import generate_world

    rng = np.random.default_rng([seed, index])
    name = PRESETS[index % len(PRESETS)]
    origin = tuple(float(np.round(rng.uniform(-3000, 3000) / snap_m) * snap_m) for _ in range(2))
    px = int(round(size_m / gsd))
    return generate_world(
        int(rng.integers(0, 2**31 - 1)), px, gsd, origin=origin, config=world_preset(name)
    )


def tile_voxels(tile, L: int, voxel_size: float = 1.0) -> np.ndarray:
    """Local voxel coords ``[N, 3]`` int32 of a world tile ``L`` voxels across: shifted so the
    minimum is 0, voxels at ``z >= L`` dropped (an ``L^3`` scene)."""
    vox = tile.voxels(voxel_size)
    c = (vox.coords - vox.coords.min(0)).astype(np.int32)
    return c[c[:, 2] < L]


def structure_pool(
    seed: int,
    n: int,
    resolution: int,
    voxel_size: float = 1.0,
    gsd: float = 1.0,
    progress: bool = False,
) -> list[np.ndarray]:
    """``n`` voxel sets (local coords ``[N, 3]`` int32, z from 0) of world tiles twice the crop
    size, so crops can be drawn at random places."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(n), desc="world tiles", disable=not progress):
        vox = world_tile(seed, i, 2 * resolution * voxel_size, gsd, voxel_size).voxels(voxel_size)
        out.append((vox.coords - vox.coords.min(0)).astype(np.int32))
    return out


def structure_crop(coords: np.ndarray, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``L^3`` crop (x, y at random, z from the crop's lowest voxel; voxels above ``L``
    are dropped), rotated by a random multiple of 90 degrees and maybe mirrored."""
    L = resolution
    ext = coords.max(0) + 1
    x0 = int(rng.integers(0, max(ext[0] - L, 0) + 1))
    y0 = int(rng.integers(0, max(ext[1] - L, 0) + 1))
    c = coords[
        (coords[:, 0] >= x0)
        & (coords[:, 0] < x0 + L)
        & (coords[:, 1] >= y0)
        & (coords[:, 1] < y0 + L)
    ]
    c = c - np.array([x0, y0, c[:, 2].min()])
    c = c[c[:, 2] < L]
    for _ in range(int(rng.integers(0, 4))):
        c = np.stack([L - 1 - c[:, 1], c[:, 0], c[:, 2]], 1)
    if rng.random() < 0.5:
        c = c * np.array([-1, 1, 1]) + np.array([L - 1, 0, 0])
    return c.astype(np.int32)


def batch_of(crops: list[np.ndarray], resolution: int, device) -> SparseTensor:
    from vae.sparse import SparseTensor, batch_coords

    return SparseTensor.from_coords(
        batch_coords(crops).to(device), None, (resolution,) * 3, len(crops), check=False
    )


def texture_pool(
    seed: int, n: int, scene_size: float, voxel_size: float, gsd: float, progress: bool = False
) -> list:
    """``n`` :class:`~earthgen.world.scene3d.Scene3D` of ``scene_size`` metres."""
    from tqdm import tqdm

    from earthgen.world.scene3d import world_scene

    return [
        world_scene(world_tile(seed, i, scene_size, gsd, voxel_size), voxel_size)
        for i in tqdm(range(n), desc="world scenes", disable=not progress)
    ]


def random_cameras(
    scene, n: int, size: int, rng: np.random.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` aerial cameras around a scene: elevation 35-90 degrees, any azimuth, 40 degree FOV,
    framing the scene. Returns ``(viewmats [n, 4, 4], Ks [n, 3, 3])``."""
    from renderers.cameras import intrinsics_from_fov, look_at

    ctr = torch.tensor(scene.center, dtype=torch.float32)
    radius = float(np.linalg.norm(scene.extent[:2])) / 2 / math.tan(math.radians(20)) * 0.9
    el = np.radians(rng.uniform(35, 89.5, n))
    az = rng.uniform(0, 2 * np.pi, n)
    jitter = rng.uniform(-0.2, 0.2, (n, 2)) * scene.extent[:2]
    target = ctr[None].repeat(n, 1)
    target[:, :2] += torch.tensor(jitter, dtype=torch.float32)
    eye = target + radius * torch.tensor(
        np.stack([np.cos(el) * np.sin(az), np.cos(el) * np.cos(az), np.sin(el)], 1),
        dtype=torch.float32,
    )
    K = intrinsics_from_fov(size, size, 40.0)
    return look_at(eye, target).to(device), K.expand(n, 3, 3).clone().to(device)


def reference_surfels(scene, device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in scene.reference.items()}


def texture_input(scenes: list, device) -> SparseTensor:
    from vae.sparse import SparseTensor, batch_coords

    coords = batch_coords([s.coords for s in scenes])
    feats = torch.cat([torch.from_numpy(s.appearance) for s in scenes])
    ext = np.max([s.coords.max(0) + 1 for s in scenes], axis=0)
    return SparseTensor.from_coords(
        coords.to(device), feats.to(device), tuple(int(e) for e in ext), len(scenes), check=False
    )


# --- models ---------------------------------------------------------------------------------------


def make_model(cfg: Train3DConfig, in_channels: int | None = None):
    from vae.structure import StructureVAE
    from vae.texture import TextureVAE

    cls = StructureVAE if cfg.task == "structure-vae" else TextureVAE
    if cfg.model:
        if not Path(cfg.model).is_dir():
            raise UserInputError(f"--model: no model folder at {cfg.model}")
        try:
            return cls.from_pretrained(cfg.model)
        except (OSError, ValueError) as e:
            raise UserInputError(
                f"--model: cannot load a {cls.__name__} from {cfg.model}: {e}"
            ) from e
    kw = dict(SIZES[cfg.task][cfg.size])
    if cfg.task == "texture-vae":
        kw["in_channels"] = in_channels
    return cls(**kw)


# --- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_structure(model, crops: list[np.ndarray], resolution: int, device) -> dict:
    """Voxel IoU / precision / recall of reconstructions (posterior mean, no teacher forcing),
    mean over ``crops``."""
    from vae.structure import voxel_metrics

    model.eval()
    rows = []
    for c in crops:
        x = batch_of([c], resolution, device)
        rows.append(voxel_metrics(model.reconstruct(x).coords, x.coords))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("iou", "precision", "recall")} | {
        "scenes": len(rows)
    }


@torch.no_grad()
def evaluate_texture(model, scenes: list, views: int, size: int, seed: int, device) -> dict:
    """PSNR / SSIM of renders of the decoded surfels (posterior mean) against renders of the
    reference scene from ``views`` random held-out cameras per scene."""
    from renderers.metrics import psnr, ssim
    from renderers.rasterization import render_surfels

    model.eval()
    ps, ss = [], []
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, 99991, i])
        vm, Ks = random_cameras(scene, views, size, rng, device)
        x = texture_input([scene], device)
        g, _ = model(x, scene.voxel_size, tuple(scene.origin), sample=False)
        g.pop("voxel")
        pred = render_surfels(g, vm, Ks, size).clamp(0, 1)
        ref = render_surfels(reference_surfels(scene, device), vm, Ks, size).clamp(0, 1)
        ps += psnr(pred, ref, channels_last=True).tolist()
        ss += ssim(pred, ref, channels_last=True).tolist()
    return {"psnr_db": float(np.mean(ps)), "ssim": float(np.mean(ss)), "views": len(ps)}


# --- losses -------------------------------------------------------------------------------------


class StructureVAELoss(TaskLoss):
    """``structure-vae``: the occupancy classifiers' cross-entropy at every level (teacher
    forcing) + ``kl_weight`` KL, on a sparse batch of voxel crops."""

    trains = ("model",)

    def __init__(self, model, kl_weight: float):
        self.model, self.kl_weight = model.train(), kl_weight

    def __call__(self, batch, generator):
        return self.model(batch, kl_weight=self.kl_weight, generator=generator)["loss"]


class TextureVAELoss(TaskLoss):
    """``texture-vae``: renders of the decoded surfels against renders of the reference scene from
    the batch's cameras: L1 + 0.2 (1 - SSIM) + ``kl_weight`` KL, averaged over the scenes."""

    trains = ("model",)

    def __init__(self, model, kl_weight: float, image_size: int):
        self.model, self.kl_weight, self.size = model.train(), kl_weight, image_size

    def __call__(self, batch, generator):
        from renderers.metrics import ssim
        from renderers.rasterization import render_surfels

        loss = 0.0
        for it in batch:  # scenes have their own origins and cameras: one at a time
            sc, (vm, Ks) = it["scene"], it["cameras"]
            gs, post = self.model(it["x"], sc.voxel_size, tuple(sc.origin), generator=generator)
            gs.pop("voxel")
            pred = render_surfels(gs, vm, Ks, self.size)
            with torch.no_grad():
                ref = render_surfels(it["reference"], vm, Ks, self.size)
            rec = (pred - ref).abs().mean() + 0.2 * (1 - ssim(pred, ref, channels_last=True).mean())
            loss = loss + (rec + self.kl_weight * post.kl()) / len(batch)
        return loss


# --- training -------------------------------------------------------------------------------------


def train(cfg: Train3DConfig) -> dict:
    """Run training; returns a summary (steps, losses, evaluation, output paths)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.test_run:  # small everything, but what the user set explicitly
        base = Train3DConfig(task=cfg.task)
        small = {
            "size": "tiny",
            "batch_size": 2,
            "pool": 3,
            "resolution": 32,
            "scene_size": 16.0,
            "image_size": 32,
            "views": 1,
            "log_every": 1,
            "save_every": 10,
        }
        for k, v in small.items():
            if getattr(cfg, k) == getattr(base, k):
                setattr(cfg, k, v)
    cfg.validate()
    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    device = acc.device
    structure = cfg.task == "structure-vae"
    main = acc.is_local_main_process
    n_held = 2 if cfg.test_run else 8
    if structure:
        L, vs = cfg.resolution, cfg.voxel_size
        pool = structure_pool(cfg.seed, cfg.pool, L, vs, vs, progress=main)
        held = structure_pool(cfg.seed + 7919, n_held, L, vs, vs)
        task_loss = StructureVAELoss(make_model(cfg), cfg.kl_weight)
    else:
        pool = texture_pool(
            cfg.seed, cfg.pool, cfg.scene_size, cfg.voxel_size, cfg.gsd, progress=main
        )
        held = texture_pool(cfg.seed + 7919, n_held, cfg.scene_size, cfg.voxel_size, cfg.gsd)
        model = make_model(cfg, pool[0].appearance.shape[1])
        task_loss = TextureVAELoss(model, cfg.kl_weight, cfg.image_size)
    opt = torch.optim.AdamW(task_loss.param_groups(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0))),
    )
    # the scheduler is not prepared: a prepared one steps once per process and would run the
    # schedule N times too fast on N GPUs; it is checkpointed as a custom object
    opt = task_loss.prepare(acc, opt)
    ema = track_ema(acc, task_loss, cfg.ema_decay)
    acc.register_for_checkpointing(sched)

    def next_batch(step: int):
        rng = np.random.default_rng([cfg.seed, step, acc.process_index])
        g = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**63 - 1)))
        if structure:
            crops = [
                structure_crop(pool[int(rng.integers(0, len(pool)))], cfg.resolution, rng)
                for _ in range(cfg.batch_size)
            ]
            return batch_of(crops, cfg.resolution, device), g
        scenes = [pool[int(rng.integers(0, len(pool)))] for _ in range(cfg.batch_size)]
        batch = [
            {
                "scene": sc,
                "x": texture_input([sc], device),
                "reference": reference_surfels(sc, device),
                "cameras": random_cameras(sc, cfg.views, cfg.image_size, rng, device),
            }
            for sc in scenes
        ]
        return batch, g

    summary = fit(acc, cfg, task_loss, next_batch, opt, ema, lr_schedule=sched)
    if acc.is_main_process:
        out = Path(cfg.out)
        final = acc.unwrap_model(task_loss.model)
        ema.copy_to(final.parameters())  # the saved model holds the EMA weights
        save_model_atomic(final, out / "model")
        summary["model"] = str(out / "model")
        if structure:
            rng = np.random.default_rng([cfg.seed, 7919])
            crops = [structure_crop(c, cfg.resolution, rng) for c in held]
            summary["eval"] = evaluate_structure(final, crops, cfg.resolution, device)
        else:
            summary["eval"] = evaluate_texture(
                final, held, 2 if cfg.test_run else 4, cfg.image_size, cfg.seed, device
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
