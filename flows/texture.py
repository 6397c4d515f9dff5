"""Texture flow: the velocity network that generates a scene's per-voxel texture latent.

What it generates: the texture VAE's latent ``[N, C]`` on the active voxels of a known structure
(the fine ``L^3`` voxels decoded by the structure VAE), divided by ``latent_scale``. The network
is sparse (EarthCrafter's texture flow works on the active voxels): a linear stem, ``num_blocks``
residual blocks of submanifold 3x3x3 convolutions modulated by the flow time (adaLN-style scale
and shift per scene), each followed by a **column-context** step that averages the voxel features
over ``s x s`` columns (``s = context_stride``) into a 2D map, mixes it with a 3x3 convolution and
adds it back to every voxel of those columns (a receptive field of the whole window in a few
blocks, at 2D cost).

Each voxel also sees its height in the window (sinusoidal in ``z``) and, when given, the
conditions at its column (north-up maps covering the scene's ``X x Y`` columns, so row 0 is the
northern edge):
- a semantic map ``[B, K, H, W]`` (one-hot classes), read at the voxel's column;
- an aerial image ``[B, 3, H, W]`` in [0, 1], read at ``image_patch x image_patch`` points across
  the voxel's column (the texture latent holds sub-voxel detail).
An absent condition, or a dropped one (``drop_*``), uses a learned null embedding: "no condition"
is the unconditional model classifier-free guidance needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen_base.errors import UserInputError
from flows.structure import timestep_embedding
from vae.sparse import SparseTensor, SubMConv3d, set_backend


def column_sample(
    maps: torch.Tensor,
    coords: torch.Tensor,
    shape: tuple[int, int],
    patch: int = 1,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Read north-up maps ``[B, Ch, H, W]`` covering ``shape = (X, Y)`` columns at the voxels
    ``coords`` ``[N, 4]`` (b, x, y, z): ``patch x patch`` points across each column ->
    ``[N, Ch * patch^2]``."""
    X, Y = shape
    b = coords[:, 0].long()
    x = coords[:, 1].to(maps.dtype)
    y = coords[:, 2].to(maps.dtype)
    sub = (torch.arange(patch, device=maps.device, dtype=maps.dtype) + 0.5) / patch
    gx = (x[:, None, None] + sub[None, None, :]) / X * 2 - 1  # [N, 1, p] east
    gy = 1 - (y[:, None, None] + sub.flip(0)[None, :, None]) / Y * 2  # [N, p, 1] north-up rows
    grid = torch.stack(torch.broadcast_tensors(gx, gy), -1)  # [N, p, p, 2]
    out = maps.new_empty(len(coords), maps.shape[1], patch, patch)
    for i in range(maps.shape[0]):  # one grid_sample per scene
        sel = b == i
        if bool(sel.any()):
            g = grid[sel].reshape(1, -1, patch * patch, 2)
            s = F.grid_sample(
                maps[i : i + 1], g, mode=mode, padding_mode="border", align_corners=False
            )
            out[sel] = s[0].permute(1, 0, 2).reshape(-1, maps.shape[1], patch, patch)
    return out.reshape(len(coords), -1)


def column_pool(
    feats: torch.Tensor, coords: torch.Tensor, batch_size: int, shape: tuple[int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of voxel features ``[N, C]`` per ``stride x stride`` block of columns ->
    ``([B, C, X', Y'] map, [N] flat cell index of each voxel)`` with ``X' = ceil(X / stride)``."""
    X, Y = (math.ceil(s / stride) for s in shape)
    cell = (coords[:, 0].long() * X + coords[:, 1].long() // stride) * Y + coords[
        :, 2
    ].long() // stride
    C = feats.shape[1]
    total = feats.new_zeros(batch_size * X * Y, C).index_add_(0, cell, feats)
    count = feats.new_zeros(batch_size * X * Y).index_add_(0, cell, torch.ones_like(feats[:, 0]))
    mean = total / count.clamp_min(1)[:, None]
    return mean.reshape(batch_size, X, Y, C).permute(0, 3, 1, 2), cell


class _Block(nn.Module):
    """Time-modulated sparse residual block followed by a column-context step."""

    def __init__(self, channels: int, stride: int, backend: str):
        super().__init__()
        self.stride = stride
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False)
        self.conv1 = SubMConv3d(channels, channels, 3, backend=backend)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=False)
        self.conv2 = SubMConv3d(channels, channels, 3, backend=backend)
        self.ada = nn.Linear(channels, 4 * channels)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        nn.init.zeros_(self.conv2.weight)
        self.ctx_norm = nn.LayerNorm(channels)
        self.ctx_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.ctx_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.ctx_out.weight)
        nn.init.zeros_(self.ctx_out.bias)

    def forward(
        self, x: SparseTensor, c: torch.Tensor
    ) -> SparseTensor:  # c [N, channels]: time per voxel
        s1, b1, s2, b2 = self.ada(F.silu(c)).chunk(4, dim=1)
        h = self.conv1(x.replace(F.silu(self.norm1(x.feats) * (1 + s1) + b1)))
        h = self.conv2(h.replace(F.silu(self.norm2(h.feats) * (1 + s2) + b2)))
        f = x.feats + h.feats
        m, cell = column_pool(
            self.ctx_norm(f), x.coords, x.batch_size, x.spatial_shape[:2], self.stride
        )
        m = F.silu(self.ctx_conv(m))
        f = f + self.ctx_out(m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])[cell])
        return x.replace(f)


class TextureFlowNet(ModelMixin, ConfigMixin):
    """Sparse velocity network ``v(x_t, t, conditions)`` for per-voxel texture latents.

    Args:
        latent_channels: ``C`` of the texture VAE's latent.
        channels: width of the residual trunk.
        num_blocks: residual blocks (each with a column-context step).
        num_classes: ``K`` channels of the semantic condition.
        image_patch: image samples per column side (``voxel size / image GSD`` is a good value).
        context_stride: columns per side of a column-context cell.
        latent_scale: the texture VAE's latents are divided by this (stored so a pipeline can
            undo it).
        backend: sparse convolution backend (:mod:`vae.sparse`).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        channels: int = 64,
        num_blocks: int = 4,
        num_classes: int = 16,
        image_patch: int = 2,
        context_stride: int = 4,
        latent_scale: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        self.stem = nn.Linear(latent_channels + 16, channels)
        self.t_embed = nn.Sequential(
            nn.Linear(256, channels), nn.SiLU(), nn.Linear(channels, channels)
        )
        self.sem_embed = nn.Sequential(
            nn.Linear(num_classes, channels), nn.SiLU(), nn.Linear(channels, channels)
        )
        self.img_embed = nn.Sequential(
            nn.Linear(3 * image_patch * image_patch, channels),
            nn.SiLU(),
            nn.Linear(channels, channels),
        )
        self.null_sem = nn.Parameter(torch.zeros(channels))
        self.null_img = nn.Parameter(torch.zeros(channels))
        self.blocks = nn.ModuleList(
            [_Block(channels, context_stride, backend) for _ in range(num_blocks)]
        )
        self.norm_out = nn.LayerNorm(channels, elementwise_affine=False)
        self.ada_out = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, latent_channels)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def set_backend(self, backend: str) -> TextureFlowNet:
        return set_backend(self, backend)

    @staticmethod
    def height_features(z: torch.Tensor) -> torch.Tensor:
        """``[N]`` voxel heights (cells) -> ``[N, 16]`` sinusoids (periods 2 to ~360 cells)."""
        freq = 2 * math.pi / (2.0 * 1.5 ** torch.arange(8, device=z.device, dtype=torch.float32))
        a = z.float()[:, None] * freq
        return torch.cat([torch.sin(a), torch.cos(a)], 1)

    def _condition(
        self,
        cond: torch.Tensor | None,
        drop: torch.Tensor | None,
        x: SparseTensor,
        embed: nn.Module,
        null: torch.Tensor,
        patch: int,
        channels: int,
        name: str,
    ) -> torch.Tensor:
        if cond is None:
            return null.expand(len(x), -1)
        if cond.ndim != 4 or cond.shape[0] != x.batch_size or cond.shape[1] != channels:
            raise UserInputError(
                f"the {name} condition must be [B, {channels}, H, W] with B = {x.batch_size}, "
                f"got {tuple(cond.shape)}"
            )
        e = embed(
            column_sample(
                cond.to(null.dtype),
                x.coords,
                x.spatial_shape[:2],
                patch,
                "nearest" if name == "semantic" else "bilinear",
            )
        )
        if drop is not None:
            e = torch.where(drop.to(e.device)[x.coords[:, 0].long()][:, None], null.expand_as(e), e)
        return e

    def forward(
        self,
        x: SparseTensor,
        t: torch.Tensor,
        semantic: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        drop_semantic: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: noisy latents ``[N, C]`` on the voxels at flow time ``t`` (``[B]``, one per scene,
        or a scalar) -> velocity ``[N, C]``. ``semantic`` ``[B, K, H, W]`` and ``image``
        ``[B, 3, H, W]`` are north-up maps over the scene's columns; ``drop_*`` ``[B]`` bool
        replace a scene's condition by the null."""
        if x.feats.ndim != 2 or x.feats.shape[1] != self.config.latent_channels:
            raise UserInputError(
                f"expected texture latents [N, {self.config.latent_channels}], "
                f"got {tuple(x.feats.shape)}"
            )
        B = x.batch_size
        t = torch.as_tensor(t, device=x.device).float()
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise UserInputError(
                f"t must be a scalar or [B] with B = {B} scenes, got {tuple(t.shape)}"
            )
        w = self.stem.weight.dtype
        h = self.stem(torch.cat([x.feats.to(w), self.height_features(x.coords[:, 3]).to(w)], 1))
        h = h + self._condition(
            semantic,
            drop_semantic,
            x,
            self.sem_embed,
            self.null_sem,
            1,
            self.config.num_classes,
            "semantic",
        )
        h = h + self._condition(
            image, drop_image, x, self.img_embed, self.null_img, self.config.image_patch, 3, "image"
        )
        c = self.t_embed(timestep_embedding(t, 256).to(w))[x.coords[:, 0].long()]  # [N, C]
        s = x.replace(h)
        for block in self.blocks:
            s = block(s, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        return self.out(self.norm_out(s.feats) * (1 + scale) + shift)


@torch.no_grad()
def sample_texture(
    model: TextureFlowNet,
    structure: SparseTensor,
    semantic: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    steps: int = 20,
    guidance: float = 2.0,
    method: str = "heun",
    generator: torch.Generator | None = None,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    callback=None,
    progress: bool = False,
) -> torch.Tensor:
    """Generate texture latents ``[N, C]`` (in the texture VAE's units: multiplied back by
    ``latent_scale``) on the voxels of ``structure`` (features ignored).

    Classifier-free guidance ``guidance`` against the unconditional branch (both conditions
    null) when a condition is given. ``known`` ``[N, C]`` (texture VAE units) with
    ``known_mask`` ``[N]`` bool pins those voxels (inpainting: the borders of neighbouring
    windows). ``callback(step, t, x)`` is the solver's. Noise comes from ``generator`` (CPU).
    """
    from flows.solver import ODESolver, inpaint_callback

    C = model.config.latent_channels
    scale = float(model.config.latent_scale)
    device = next(model.parameters()).device
    x0 = torch.randn(len(structure), C, generator=generator).to(device)
    base = structure.replace(x0)
    conditioned = semantic is not None or image is not None

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = base.replace(x)
        tt = t[:1].expand(structure.batch_size)
        if not conditioned:
            return model(s, tt)
        vc = model(s, tt, semantic=semantic, image=image)
        if guidance == 1.0:
            return vc
        vu = model(s, tt)
        return vu + guidance * (vc - vu)

    k = None if known is None else known.to(device) / scale
    cb = inpaint_callback(x0, k, known_mask, callback)
    out = ODESolver(method).sample(v, x0, steps, callback=cb, progress=progress)
    return out * scale
