"""Structure flow: the velocity network that generates a scene's coarse structure latent.

What it generates: the structure VAE's latent on the ``(L/8)^3`` grid, made dense (a
:func:`structure_to_grid`): an occupancy channel (+1 active, -1 empty) and the ``C`` latent
channels (0 where empty), ``[B, 1 + C, X, Y, Z]``. Terrain and cities are 2.5D, so the network
works on **columns**: each ``p x p`` patch of ``(x, y)`` columns, with all its ``Z`` cells and
channels, is one token; a transformer (adaLN-Zero DiT blocks, PyTorch SDPA attention, 2D
sinusoidal positions) runs over the ``(X/p) x (Y/p)`` tokens.

Conditions (EarthCrafter's condition-aware training; any may be absent per sample):
- a semantic map ``[B, K, H, W]`` (one-hot classes, north-up rows, covering the scene) and
- an aerial image ``[B, 3, H, W]`` in [0, 1],
each pooled to the token grid and embedded; an absent condition uses a learned null embedding
(so "no condition" is the unconditional model that classifier-free guidance needs).
Rows of the maps are north-first while grid ``y`` grows north: the maps are flipped to grid order
inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen_base.errors import UserInputError


def structure_to_grid(
    coords: torch.Tensor, feats: torch.Tensor, shape: tuple[int, int, int], batch_size: int
) -> torch.Tensor:
    """Sparse latent (``coords`` ``[N, 4]`` (b, x, y, z), ``feats`` ``[N, C]``) on a grid of
    ``shape`` -> dense ``[B, 1 + C, X, Y, Z]``: channel 0 is +1 at active cells and -1 elsewhere."""
    C = feats.shape[1]
    out = feats.new_zeros(batch_size, 1 + C, *shape)
    out[:, 0] = -1.0
    c = coords.long()
    out[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0
    out[c[:, 0], 1:, c[:, 1], c[:, 2], c[:, 3]] = feats
    return out


def grid_to_structure(
    grid: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`structure_to_grid`: cells whose occupancy channel exceeds ``threshold``
    -> ``(coords [N, 4] int32, feats [N, C])``."""
    occ = grid[:, 0] > threshold
    c = occ.nonzero()
    feats = grid[c[:, 0], 1:, c[:, 1], c[:, 2], c[:, 3]]
    return c.int().contiguous(), feats


def rotate_scene(grid: torch.Tensor, maps: list[torch.Tensor], k: int) -> tuple[torch.Tensor, ...]:
    """Turn a scene by ``k`` x 90 degrees counter-clockwise (seen from above): the grid
    ``[B, Ch, X, Y, Z]`` (x east, y north) and its north-up maps ``[B, Ch, H, W]`` together."""
    return (torch.rot90(grid, k, (2, 3)), *(torch.rot90(m, k, (2, 3)) for m in maps))


def _sincos(n: int, dim: int, device) -> torch.Tensor:
    """``[n, dim]`` 1D sinusoidal positions."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=device) / (dim // 2))
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, dim]`` sinusoidal embedding of flow time ``t`` in [0, 1] (scaled by 1000)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    a = 1000.0 * t.float()[:, None] * freq[None]
    return torch.cat([torch.cos(a), torch.sin(a)], 1)


class _Block(nn.Module):
    """DiT block: adaLN-Zero modulated self-attention (SDPA) and MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x [B, T, D], c [B, D]
        s1, b1, g1, s2, b2, g2 = self.ada(c)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        B, T, D = h.shape
        q, k, v = self.qkv(h).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + g1 * self.proj(a)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class StructureFlowDiT(ModelMixin, ConfigMixin):
    """Velocity network ``v(x_t, t, conditions)`` for dense coarse-structure grids.

    Args:
        grid_size: ``(X, Y, Z)`` cells of the coarse grid (``L/8`` each).
        latent_channels: ``C`` of the structure VAE's latent.
        patch_size: ``p`` columns per token side (``X`` and ``Y`` divisible by it).
        num_classes: ``K`` channels of the semantic condition.
        hidden_size, depth, num_heads: transformer size.
        latent_scale: the structure VAE's latents are divided by this in the grid (stored so a
            pipeline can undo it).
    """

    @register_to_config
    def __init__(
        self,
        grid_size: tuple[int, int, int] = (8, 8, 8),
        latent_channels: int = 8,
        patch_size: int = 2,
        num_classes: int = 16,
        hidden_size: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        latent_scale: float = 1.0,
    ):
        super().__init__()
        X, Y, Z = grid_size
        if X % patch_size or Y % patch_size:
            raise UserInputError(
                f"grid {grid_size} is not divisible by the patch size {patch_size}"
            )
        if hidden_size % num_heads or hidden_size % 4:
            raise UserInputError("hidden_size must be divisible by num_heads and by 4")
        self.channels = 1 + latent_channels
        token_in = self.channels * Z * patch_size * patch_size
        self.embed = nn.Linear(token_in, hidden_size)
        self.t_embed = nn.Sequential(
            nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.sem_embed = nn.Sequential(
            nn.Linear(num_classes * patch_size * patch_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.img_embed = nn.Sequential(
            nn.Linear(3 * 4 * patch_size * patch_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.null_sem = nn.Parameter(torch.zeros(hidden_size))
        self.null_img = nn.Parameter(torch.zeros(hidden_size))
        self.blocks = nn.ModuleList([_Block(hidden_size, num_heads) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.out = nn.Linear(hidden_size, token_in)
        for m in (self.ada_out[-1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # --- tokens -----------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:  # [B, Ch, X, Y, Z] -> [B, T, Ch Z p p]
        B, Ch, X, Y, Z = x.shape
        p = self.config.patch_size
        x = x.reshape(B, Ch, X // p, p, Y // p, p, Z).permute(0, 2, 4, 1, 6, 3, 5)
        return x.reshape(B, (X // p) * (Y // p), Ch * Z * p * p)

    def _untokens(self, t: torch.Tensor) -> torch.Tensor:
        X, Y, Z = self.config.grid_size
        p = self.config.patch_size
        B = t.shape[0]
        x = t.reshape(B, X // p, Y // p, self.channels, Z, p, p).permute(0, 3, 1, 5, 2, 6, 4)
        return x.reshape(B, self.channels, X, Y, Z)

    def _map_tokens(self, m: torch.Tensor, factor: int) -> torch.Tensor:
        """A north-up map ``[B, Ch, H, W]`` -> ``[B, T, Ch factor p p]`` aligned with the tokens."""
        X, Y, _ = self.config.grid_size
        p = self.config.patch_size
        side = int(math.isqrt(factor))
        m = F.adaptive_avg_pool2d(
            m.float(), (Y * side, X * side)
        )  # rows = y (north first), cols = x
        m = m.flip(2).transpose(2, 3)  # -> [B, Ch, X*side, Y*side] in grid order (y grows north)
        B, Ch = m.shape[:2]
        m = m.reshape(B, Ch, X // p, p * side, Y // p, p * side).permute(0, 2, 4, 1, 3, 5)
        return m.reshape(B, (X // p) * (Y // p), Ch * (p * side) ** 2)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        semantic: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        drop_semantic: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, 1 + C, X, Y, Z]`` at flow time ``t`` ``[B]`` -> velocity, same shape.
        ``semantic`` ``[B, K, H, W]`` and ``image`` ``[B, 3, H, W]`` (north-up, covering the
        grid) are optional; ``drop_*`` ``[B]`` bool replace a sample's condition by the null."""
        if x.shape[1:] != (self.channels, *self.config.grid_size):
            raise UserInputError(
                f"expected a grid "
                f"[B, {self.channels}, {', '.join(map(str, self.config.grid_size))}], "
                f"got {tuple(x.shape)}"
            )
        B = x.shape[0]
        h = self.embed(self._tokens(x))
        T = h.shape[1]
        X, Y, _ = self.config.grid_size
        p, D = self.config.patch_size, self.config.hidden_size
        pos = torch.cat(
            [
                _sincos(X // p, D // 2, x.device)[:, None].expand(-1, Y // p, -1),
                _sincos(Y // p, D // 2, x.device)[None].expand(X // p, -1, -1),
            ],
            -1,
        ).reshape(T, D)
        h = h + pos.to(h.dtype)
        for cond, drop, embed, null, factor, name in (
            (semantic, drop_semantic, self.sem_embed, self.null_sem, 1, "semantic"),
            (image, drop_image, self.img_embed, self.null_img, 4, "image"),
        ):
            if cond is None:
                h = h + null
                continue
            if cond.ndim != 4 or cond.shape[0] != B:
                raise UserInputError(
                    f"the {name} condition must be [B, channels, H, W] with B = {B}, "
                    f"got {tuple(cond.shape)}"
                )
            e = embed(self._map_tokens(cond, factor).to(h.dtype))
            if drop is not None:
                e = torch.where(drop.to(x.device)[:, None, None], null.expand_as(e), e)
            h = h + e
        c = self.t_embed(timestep_embedding(t.expand(B) if t.ndim == 0 else t, 256).to(h.dtype))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c)[:, None].chunk(2, dim=-1)
        return self._untokens(self.out(self.norm_out(h) * (1 + scale) + shift))


def guided_velocity(
    model: StructureFlowDiT,
    x: torch.Tensor,
    t: torch.Tensor,
    semantic: torch.Tensor | None,
    image: torch.Tensor | None,
    guidance: float,
) -> torch.Tensor:
    """Velocity of grids ``x`` ``[B, 1 + C, X, Y, Z]`` at times ``t`` ``[B]`` with
    classifier-free guidance ``guidance`` (:func:`flows.guidance.cfg_velocity`: conditional and
    unconditional branches in one batched call) against both conditions dropped, when a
    condition (``semantic`` ``[B, K, H, W]``, ``image`` ``[B, 3, H, W]``) is given."""
    from flows.guidance import cfg_velocity

    if semantic is None and image is None:
        return model(x, t)
    keep = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    cond = {"semantic": semantic, "image": image, "drop": keep}

    def fn(x: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
        return model(
            x,
            t,
            semantic=c["semantic"],
            image=c["image"],
            drop_semantic=c["drop"],
            drop_image=c["drop"],
        )

    return cfg_velocity(fn, x, t, cond, {**cond, "drop": ~keep}, guidance)


@torch.no_grad()
def sample_structure(
    model: StructureFlowDiT,
    batch_size: int = 1,
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
    """Generate coarse-structure grids ``[B, 1 + C, X, Y, Z]`` (channel 0 occupancy > 0 where
    active; latents in the structure VAE's units, multiplied back by ``latent_scale``).

    Classifier-free guidance ``guidance`` against the unconditional branch when a condition is
    given. ``known`` (same shape, VAE units) with ``known_mask`` (broadcastable, e.g.
    ``[B, 1, X, Y, 1]`` columns) pins those cells (inpainting). Noise from ``generator`` (CPU).
    """
    from flows.solver import ODESolver, inpaint_callback

    device = next(model.parameters()).device
    scale = float(model.config.latent_scale)
    shape = (batch_size, model.channels, *model.config.grid_size)
    x0 = torch.randn(shape, generator=generator).to(device)
    sem = None if semantic is None else semantic.to(device)
    img = None if image is None else image.to(device)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_velocity(model, x, t, sem, img, guidance)

    k = None
    if known is not None:
        k = known.to(device).clone()
        k[:, 1:] /= scale
    out = ODESolver(method).sample(
        v, x0, steps, callback=inpaint_callback(x0, k, known_mask, callback), progress=progress
    )
    out[:, 1:] *= scale
    return out
