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
Same loop as the VAEs: accelerate, EMA, atomic checkpoints, resume, ``--test-run``.

The texture flow trains the same way on the frozen texture VAE's per-voxel latents (posterior
mean, divided by their standard deviation) of world scenes of ``L`` voxels across (the image at
``voxel size / p`` metres per pixel, ``p x p`` sub-voxel pixels as the texture VAE was trained),
with the same two conditions and dropout.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from earthgen.errors import UserInputError
from earthgen.training.loop import (
    check_fresh_out,
    end_step,
    resume_state,
    run_summary,
    save_model_atomic,
)


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


def _train_loop(cfg: FlowTrainConfig, acc, model, batch):
    """The loop both flows share: AdamW, EMA, atomic checkpoints, resume, logging; flow matching on
    the linear path at logit-normal times with per-condition dropout. ``batch(g, device)`` returns
    ``(x1, t_of, forward)``: the data ``[..., C]``, a map from the per-scene times ``[B]`` to
    ``x1``'s leading dim, and ``forward(x_t, t, drop_semantic, drop_image) -> velocity``.
    Returns ``(model with the EMA weights, summary)`` on the main process."""
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from flows.loss import FlowMatchingLoss, logit_normal_time
    from flows.path import LinearPath

    out = Path(cfg.out)
    device = acc.device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    ema = EMAModel(acc.unwrap_model(model).parameters(), decay=cfg.ema_decay)
    acc.register_for_checkpointing(ema)
    if not cfg.resume:
        check_fresh_out(out)
    start, rows = resume_state(acc, out) if cfg.resume else (0, [])
    ema.to(device)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    path, loss_fn = LinearPath(), FlowMatchingLoss()
    bar = tqdm(
        range(start, cfg.steps),
        desc=cfg.task,
        disable=not acc.is_local_main_process,
        initial=start,
        total=cfg.steps,
    )
    t0 = time.perf_counter()
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97 + acc.process_index)
        x1, t_of, forward = batch(model, g, device)
        x0 = torch.randn(x1.shape, generator=g).to(device)
        t = logit_normal_time(cfg.batch_size, generator=g).to(device)
        drop_s = (torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout).to(device)
        drop_i = (torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout).to(device)
        ps = path.sample(x0, x1, t_of(t))
        model.train()
        with acc.autocast():
            loss = loss_fn(forward(ps.x_t, t, drop_s, drop_i).float(), ps.dx_t.float())
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(acc.unwrap_model(model).parameters())
        end_step(acc, cfg, loss, step, rows, bar, out)
        del loss
    acc.wait_for_everyone()
    summary = run_summary(cfg, start, rows, t0)
    final = None
    if acc.is_main_process:
        final = acc.unwrap_model(model)
        ema.copy_to(final.parameters())
        save_model_atomic(final, out / "model")
        summary["model"] = str(out / "model")
        summary["latent_scale"] = float(final.config.latent_scale)
    return final, summary


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

    def batch(model, g, device):
        idx = torch.randint(0, cfg.pool, (cfg.batch_size,), generator=g)
        k = int(torch.randint(0, 4, (1,), generator=g))  # the same random 90-degree turn for all
        x1, sem, img = rotate_scene(
            data["grid"][idx], [data["semantic"][idx], data["image"][idx]], k
        )
        sem, img = sem.to(device), img.to(device)

        def forward(x_t, t, drop_s, drop_i):
            return model(x_t, t, semantic=sem, image=img, drop_semantic=drop_s, drop_image=drop_i)

        return x1.to(device), (lambda t: t), forward

    final, summary = _train_loop(cfg, acc, model, batch)
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
    """Stack scenes into one sparse batch: ``(SparseTensor of latents / scale, semantic [B, K, H, W],
    image [B, 3, H, W])``. The grid is ``L x L`` columns and as high as the highest scene."""
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

    def batch(model, g, device):
        idx = torch.randint(0, cfg.pool, (cfg.batch_size,), generator=g).tolist()
        x1, sem, img = texture_batch([pool[i] for i in idx], L, device, scale)
        b = x1.coords[:, 0].long()

        def forward(x_t, t, drop_s, drop_i):
            return model(
                x1.replace(x_t), t, semantic=sem, image=img, drop_semantic=drop_s, drop_image=drop_i
            )

        return x1.feats, (lambda t: t[b]), forward

    final, summary = _train_loop(cfg, acc, model, batch)
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
