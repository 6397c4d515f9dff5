"""Train the flows: ``earthgen train structure-flow --vae runs/svae/model`` and
``earthgen train texture-flow --vae runs/tvae/model``.

Data: world tiles of ``L`` metres (``L`` = ``--resolution`` voxels of ``--voxel-size``) are
voxelized and encoded by the frozen structure VAE (posterior mean) into dense coarse grids
``[1 + C, L/8, L/8, L/8]`` (:func:`flows.structure.structure_to_grid`; latents divided by their
standard deviation over the pool, saved as the model's ``latent_scale``), with the tile's
semantic map (one-hot) and RGB image as conditions. Condition-aware training (EarthCrafter):
each sample keeps its semantic map and its image independently with probability
``1 - --cond-dropout``, so the model learns semantic-, image-, both- and un-conditioned
generation. Loss: flow matching on the linear path (docs/conventions.md), logit-normal times.
The loss objects are :class:`StructureFlowLoss` and :class:`TextureFlowLoss`; the loop is
:func:`earthgen.training.loop.fit` (accelerate, EMA, atomic checkpoints, resume, ``--test-run``).

The texture flow trains the same way on the frozen texture VAE's per-voxel latents (posterior
mean, divided by their standard deviation) of world scenes of ``L`` voxels across (the image at
``voxel size / p`` metres per pixel, ``p x p`` sub-voxel pixels as the texture VAE was trained),
with the same two conditions and dropout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from earthgen.errors import UserInputError
from earthgen.training.loop import TaskLoss, fit, save_model_atomic, track_ema


@dataclass
class FlowTrainConfig:
    task: str = "structure-flow"
    out: str = "outputs/structure-flow"
    vae: str | None = None  # trained StructureVAE folder (required)
    model: str | None = None  # a StructureFlowDiT folder to continue from
    size: str = "small"  # tiny | small | base
    resolution: int = 64  # voxels per scene side (multiple of 8 x patch size)
    voxel_size: float = 1.0
    batch_size: int = 8
    steps: int = 4000
    lr: float = 3e-4
    cond_dropout: float = 0.3  # per condition
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    pool: int = 64
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    test_run: bool = False


TEXTURE_SIZES = {
    "tiny": {"channels": 16, "num_blocks": 1},
    "small": {"channels": 64, "num_blocks": 4},
    "base": {"channels": 128, "num_blocks": 6},
}

SIZES = {
    "tiny": {"hidden_size": 32, "depth": 2, "num_heads": 2},
    "small": {"hidden_size": 256, "depth": 6, "num_heads": 4},
    "base": {"hidden_size": 512, "depth": 12, "num_heads": 8},
}


def encode_pool(vae, seed: int, n: int, L: int, voxel_size: float, progress: bool = False) -> dict:
    """``n`` scenes: coarse grids ``[n, 1 + C, L/8, L/8, L/8]`` (latents unscaled), semantic
    one-hot ``[n, K, L, L]`` and images ``[n, 3, L, L]`` at one pixel per voxel."""
    from tqdm import tqdm

    from earthgen.classes import NUM_CLASSES
    from earthgen.training.vae3d import batch_of, tile_voxels, world_tile
    from flows.structure import structure_to_grid

    grids, sems, imgs = [], [], []
    for i in tqdm(range(n), desc="encode scenes", disable=not progress):
        tile = world_tile(seed, i, L * voxel_size, voxel_size, voxel_size)
        c = tile_voxels(tile, L, voxel_size)
        with torch.no_grad():
            post = vae.encode(batch_of([c], L, "cpu"))
        grids.append(structure_to_grid(post.mean.coords, post.mean.feats, (L // 8,) * 3, 1)[0])
        sem = torch.from_numpy(tile.semantic.astype(np.int64))
        sems.append(torch.nn.functional.one_hot(sem, NUM_CLASSES).permute(2, 0, 1).float())
        imgs.append(torch.from_numpy(tile.rgb).permute(2, 0, 1).float() / 255)
    return {"grid": torch.stack(grids), "semantic": torch.stack(sems), "image": torch.stack(imgs)}


def _check_config(
    cfg: FlowTrainConfig, kind: str, sizes: dict, multiple: int, test_resolution: int
) -> None:
    """Apply ``--test-run``'s small defaults (only where the user kept the default) and check the
    arguments; ``kind`` is "structure" or "texture"."""
    if cfg.test_run:
        base = FlowTrainConfig()
        for k, v in {
            "size": "tiny",
            "batch_size": 2,
            "pool": 3 if kind == "structure" else 2,
            "resolution": test_resolution,
            "log_every": 1,
            "save_every": 10,
        }.items():
            if getattr(cfg, k) == getattr(base, k):
                setattr(cfg, k, v)
    if not cfg.vae or not Path(cfg.vae).is_dir():
        raise UserInputError(
            f"--vae must name a trained {kind} VAE folder (earthgen train {kind}-vae ... "
            "writes OUT/model)"
        )
    if cfg.size not in sizes:
        raise UserInputError(f"--size must be one of {', '.join(sizes)}, got {cfg.size!r}")
    if cfg.resolution % multiple:
        raise UserInputError(
            f"--resolution must be a multiple of {multiple} voxels, got {cfg.resolution}"
        )
    if not 0 <= cfg.cond_dropout < 1:
        raise UserInputError(f"--cond-dropout must be in [0, 1), got {cfg.cond_dropout}")


def _setup(
    cfg: FlowTrainConfig, kind: str, sizes: dict, multiple: int, test_resolution: int, vae_cls
):
    """What both flow trainers start with: check ``cfg`` (:func:`_check_config`), load the frozen
    ``vae_cls`` from ``--vae``, make the Accelerator and seed everything; returns ``(vae, acc)``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    _check_config(cfg, kind, sizes, multiple, test_resolution)
    try:
        vae = vae_cls.from_pretrained(cfg.vae).eval()
    except (OSError, ValueError) as e:
        raise UserInputError(f"--vae: cannot load a {vae_cls.__name__} from {cfg.vae}: {e}") from e
    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    return vae, acc


class ConditionalFlowLoss(TaskLoss):
    """Flow matching on the linear path (:mod:`flows.path`, :mod:`flows.loss`) at logit-normal
    times, each sample's semantic map and image dropped on their own with ``cond_dropout``
    (condition-aware training, EarthCrafter). Subclasses say what the data ``x1`` is, how the
    per-scene times reach its rows and how the model predicts the velocity."""

    trains = ("model",)

    def __init__(self, model, batch_size: int, cond_dropout: float):
        from flows.loss import FlowMatchingLoss
        from flows.path import LinearPath

        self.model, self.batch_size, self.p_drop = model.train(), batch_size, cond_dropout
        self.path, self.loss = LinearPath(), FlowMatchingLoss()

    def __call__(self, batch, generator):
        from flows.loss import logit_normal_time

        g, b, x1 = generator, self.batch_size, self.data(batch)
        x0 = torch.randn(x1.shape, generator=g).to(x1.device)
        t = logit_normal_time(b, generator=g).to(x1.device)
        drop_s = (torch.rand(b, generator=g) < self.p_drop).to(x1.device)
        drop_i = (torch.rand(b, generator=g) < self.p_drop).to(x1.device)
        ps = self.path.sample(x0, x1, self.times(batch, t))
        v = self.model(
            self.model_input(batch, ps.x_t),
            t,
            semantic=batch["semantic"],
            image=batch["image"],
            drop_semantic=drop_s,
            drop_image=drop_i,
        )
        return self.loss(v.float(), ps.dx_t.float())


class StructureFlowLoss(ConditionalFlowLoss):
    """``structure-flow``: the coarse structure grids ``[B, 1 + C, X, Y, Z]`` (dense)."""

    def data(self, batch):
        return batch["grid"]

    def times(self, batch, t):
        return t

    def model_input(self, batch, x_t):
        return x_t


class TextureFlowLoss(ConditionalFlowLoss):
    """``texture-flow``: the per-voxel texture latents of a sparse batch (rows of all scenes)."""

    def data(self, batch):
        return batch["latent"].feats

    def times(self, batch, t):
        return t[batch["latent"].coords[:, 0].long()]  # each voxel at its scene's time

    def model_input(self, batch, x_t):
        return batch["latent"].replace(x_t)


def _fit_flow(cfg: FlowTrainConfig, acc, task_loss: ConditionalFlowLoss, next_batch):
    """AdamW, EMA and :func:`~earthgen.training.loop.fit`; returns ``(model with the EMA weights,
    summary)`` on the main process (``(None, summary)`` elsewhere), the model saved to
    ``out/model``."""
    opt = torch.optim.AdamW(task_loss.param_groups(), lr=cfg.lr, weight_decay=0.0)
    opt = task_loss.prepare(acc, opt)
    ema = track_ema(acc, task_loss, cfg.ema_decay)
    summary = fit(acc, cfg, task_loss, next_batch, opt, ema)
    final = None
    if acc.is_main_process:
        final = acc.unwrap_model(task_loss.model)
        ema.copy_to(final.parameters())
        save_model_atomic(final, Path(cfg.out) / "model")
        summary["model"] = str(Path(cfg.out) / "model")
        summary["latent_scale"] = float(final.config.latent_scale)
    return final, summary


def _generator(cfg: FlowTrainConfig, acc, step: int) -> torch.Generator:
    """The generator of a step (a pure function of seed, step and rank): batch, noise, times."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97 + acc.process_index)


def train_structure_flow(cfg: FlowTrainConfig) -> dict:
    from earthgen.classes import NUM_CLASSES
    from flows.structure import StructureFlowDiT, rotate_scene
    from vae.structure import StructureVAE

    vae, acc = _setup(cfg, "structure", SIZES, 16, 32, StructureVAE)
    L = cfg.resolution
    data = encode_pool(
        vae, cfg.seed, cfg.pool, L, cfg.voxel_size, progress=acc.is_local_main_process
    )
    lat = data["grid"][:, 1:][data["grid"][:, :1].expand_as(data["grid"][:, 1:]) > 0]
    scale = float(lat.std().clamp_min(1e-3)) if len(lat) else 1.0
    if cfg.model:
        model = StructureFlowDiT.from_pretrained(cfg.model)
        scale = float(model.config.latent_scale)
    else:
        model = StructureFlowDiT(
            grid_size=(L // 8,) * 3,
            latent_channels=vae.config.latent_channels,
            patch_size=2,
            num_classes=NUM_CLASSES,
            latent_scale=scale,
            **SIZES[cfg.size],
        )
    data["grid"][:, 1:] /= scale

    def next_batch(step: int):
        g = _generator(cfg, acc, step)
        idx = torch.randint(0, cfg.pool, (cfg.batch_size,), generator=g)
        k = int(torch.randint(0, 4, (1,), generator=g))  # the same random 90-degree turn for all
        grid, sem, img = rotate_scene(
            data["grid"][idx], [data["semantic"][idx], data["image"][idx]], k
        )
        batch = {"grid": grid, "semantic": sem, "image": img}
        return {k: v.to(acc.device) for k, v in batch.items()}, g

    task_loss = StructureFlowLoss(model, cfg.batch_size, cfg.cond_dropout)
    final, summary = _fit_flow(cfg, acc, task_loss, next_batch)
    if final is not None:
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def evaluate_structure_flow(
    model, data: dict, steps: int = 20, guidance: float = 2.0, seed: int = 0
) -> dict:
    """Coarse-structure agreement of generated scenes with the true ones, per condition mode:
    IoU of the active ``(L/8)^3`` cells and the mean absolute error (cells) of each column's top
    active cell, for samples conditioned on the semantic map, the image, both, or nothing
    (classifier-free guidance ``guidance`` against the unconditional branch; Heun, ``steps``)."""
    from flows.structure import sample_structure

    model.eval()
    x1 = data["grid"]
    B = x1.shape[0]
    truth = x1[:, 0] > 0
    ar = torch.arange(x1.shape[-1], device=truth.device).float()

    def top(occ):  # [B, X, Y, Z] -> highest active cell per column (-1 if none)
        return torch.where(occ, ar, torch.full_like(ar, -1.0)).amax(-1)

    res = {}
    for mode in ("semantic", "image", "both", "none"):
        use_s, use_i = mode in ("semantic", "both"), mode in ("image", "both")
        out = sample_structure(
            model,
            B,
            semantic=data["semantic"] if use_s else None,
            image=data["image"] if use_i else None,
            steps=steps,
            guidance=guidance,
            generator=torch.Generator().manual_seed(seed),
        )
        occ = (out[:, 0] > 0).cpu()
        inter = (occ & truth).sum().item()
        union = (occ | truth).sum().item()
        res[mode] = {
            "coarse_iou": inter / max(union, 1),
            "top_error_cells": float((top(occ) - top(truth)).abs().mean()),
        }
    return res


def image_patch(texture_vae) -> int:
    """Sub-voxel pixels per side ``p`` of a texture VAE (its appearance width is ``8 + 4 p^2``)."""
    from earthgen.world.scene3d import appearance_channels

    D = texture_vae.config.in_channels
    for p in range(1, 17):
        if appearance_channels(p) == D:
            return p
    raise UserInputError(
        f"a texture VAE with {D} appearance channels matches no sub-voxel patch size"
    )


def encode_texture_pool(
    vae, seed: int, n: int, L: int, voxel_size: float, progress: bool = False
) -> list[dict]:
    """``n`` world scenes ``L`` voxels across: voxel coords ``[N, 3]``, texture latents ``[N, C]``
    (posterior mean, unscaled), semantic one-hot ``[K, H, W]`` and image ``[3, H, W]`` at
    ``voxel_size / p`` metres per pixel, and the scene itself (for renders)."""
    from tqdm import tqdm

    from earthgen.classes import NUM_CLASSES
    from earthgen.training.vae3d import texture_input, world_tile
    from earthgen.world.scene3d import world_scene

    p = image_patch(vae)
    out = []
    for i in tqdm(range(n), desc="encode scenes", disable=not progress):
        tile = world_tile(seed, i, L * voxel_size, voxel_size / p, voxel_size)
        scene = world_scene(tile, voxel_size)
        with torch.no_grad():
            post = vae.encode(texture_input([scene], "cpu"))
        sem = torch.from_numpy(tile.semantic.astype(np.int64))
        out.append(
            {
                "coords": torch.from_numpy(scene.coords.astype(np.int32)),
                "latent": post.mean.feats,
                "semantic": torch.nn.functional.one_hot(sem, NUM_CLASSES).permute(2, 0, 1).float(),
                "image": torch.from_numpy(tile.rgb).permute(2, 0, 1).float() / 255,
                "scene": scene,
            }
        )
    return out


def texture_batch(items: list[dict], L: int, device, scale: float = 1.0):
    """Stack scenes into one sparse batch: ``(SparseTensor of latents / scale,
    semantic [B, K, H, W], image [B, 3, H, W])``. The grid is ``L x L`` columns and as high as
    the highest scene."""
    from vae.sparse import SparseTensor, batch_coords

    coords = batch_coords([it["coords"] for it in items])
    feats = torch.cat([it["latent"] for it in items]) / scale
    Z = int(coords[:, 3].max()) + 1
    x = SparseTensor.from_coords(
        coords.to(device), feats.to(device), (L, L, Z), len(items), check=False
    )
    return (
        x,
        torch.stack([it["semantic"] for it in items]).to(device),
        torch.stack([it["image"] for it in items]).to(device),
    )


def train_texture_flow(cfg: FlowTrainConfig) -> dict:
    from earthgen.classes import NUM_CLASSES
    from flows.texture import TextureFlowNet
    from vae.texture import TextureVAE

    vae, acc = _setup(cfg, "texture", TEXTURE_SIZES, 8, 16, TextureVAE)
    L = cfg.resolution
    pool = encode_texture_pool(
        vae, cfg.seed, cfg.pool, L, cfg.voxel_size, progress=acc.is_local_main_process
    )
    if cfg.model:
        model = TextureFlowNet.from_pretrained(cfg.model)
    else:
        model = TextureFlowNet(
            latent_channels=vae.config.latent_channels,
            num_classes=NUM_CLASSES,
            image_patch=image_patch(vae),
            **TEXTURE_SIZES[cfg.size],
            latent_scale=float(torch.cat([it["latent"] for it in pool]).std().clamp_min(1e-3)),
        )
    scale = float(model.config.latent_scale)

    def next_batch(step: int):
        g = _generator(cfg, acc, step)
        idx = torch.randint(0, cfg.pool, (cfg.batch_size,), generator=g).tolist()
        x1, sem, img = texture_batch([pool[i] for i in idx], L, acc.device, scale)
        return {"latent": x1, "semantic": sem, "image": img}, g

    task_loss = TextureFlowLoss(model, cfg.batch_size, cfg.cond_dropout)
    final, summary = _fit_flow(cfg, acc, task_loss, next_batch)
    if final is not None:
        held = encode_texture_pool(
            vae, cfg.seed + 7919, 1 if cfg.test_run else 6, L, cfg.voxel_size
        )
        summary["eval"] = evaluate_texture_flow(
            final,
            vae,
            held,
            steps=2 if cfg.test_run else 20,
            image_size=32 if cfg.test_run else 128,
        )
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def evaluate_texture_flow(
    model,
    vae,
    items: list[dict],
    steps: int = 20,
    guidance: float = 2.0,
    seed: int = 0,
    image_size: int = 128,
) -> dict:
    """Nadir renders of scenes textured by the flow (on their true voxels) against nadir renders of
    the reference scenes: PSNR (dB) per condition mode (semantic map, image, both, none), and for
    reference the texture VAE's own reconstruction (posterior mean)."""
    from flows.texture import sample_texture
    from renderers.cameras import nadir_rig
    from renderers.metrics import psnr
    from renderers.rasterization import render_surfels

    model.eval()
    device = next(model.parameters()).device
    res: dict = {}
    for mode in ("vae", "image", "semantic", "both", "none"):
        vals = []
        for i, it in enumerate(items):
            sc = it["scene"]
            x, sem, img = texture_batch([it], int(sc.extent[0] / sc.voxel_size), device)
            if mode == "vae":
                lat = it["latent"].to(device)
            else:
                lat = sample_texture(
                    model,
                    x,
                    semantic=sem if mode in ("semantic", "both") else None,
                    image=img if mode in ("image", "both") else None,
                    steps=steps,
                    guidance=guidance,
                    generator=torch.Generator().manual_seed(seed + i),
                )
            g = vae.decode(x.replace(lat), sc.voxel_size, tuple(sc.origin))
            g.pop("voxel")
            ctr = torch.tensor(sc.center, dtype=torch.float32)
            vm, Ks = nadir_rig(ctr, 500.0, float(sc.extent[0]), image_size, image_size)
            ref = {k: torch.from_numpy(v).to(device) for k, v in sc.reference.items()}
            a = render_surfels(g, vm.to(device), Ks.to(device), image_size).clamp(0, 1)
            b = render_surfels(ref, vm.to(device), Ks.to(device), image_size).clamp(0, 1)
            vals.append(float(psnr(a, b, channels_last=True).mean()))
        res[mode] = {"psnr_db": float(np.mean(vals))}
    res["scenes"] = len(items)
    return res
