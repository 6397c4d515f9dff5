"""TAEF2: a tiny convolutional autoencoder for the FLUX.2 latent space, as a diffusers model.

The weights are TAEF2 by Ollin Boer Bohan (``madebyollin/taesd``, MIT; the licence is in
``earthgen/assets/NOTICE.md``), converted to safetensors key for key. The layers follow the
layout read from its state dicts (``shared/weights/taef2/SOURCES.md``): 3x3 convolutions and
residual blocks, 8x downsampling, 32 latent channels, about 1.3 M parameters per half. diffusers'
``AutoencoderTiny`` has the same outer shape but lacks the ``pool`` branch (1x1 conv -> GroupNorm
-> ReLU -> 1x1 conv) of the blocks nearest the latent, so it cannot load these weights.

Call shape as ``AutoencoderTiny``: ``encode(x).latents`` and ``decode(z).sample`` with images in
[-1, 1] at this class's boundary (TAEF2 itself works in [0, 1]; the conversion is inside).
``encode`` returns raw latents (roughly in [-3, 3]); :meth:`TAEF2.normalize_latents` applies the
per-channel mean/std in the config (measured on our training data) for a diffusion model, and
:meth:`TAEF2.denormalize_latents` undoes it. Images larger than ``tile_size`` pixels are encoded
and decoded by overlapping tiles whose margins are cut away, so memory stays bounded (a
2048 x 2048 image runs on CPU). Tiling is close to, not equal to, one pass: the ``pool`` branch's
GroupNorm normalises over the whole input it sees (0.05 dB lower PSNR on a 512 px Landsat crop
with 256 px tiles and 64 px margins).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class TAEF2EncoderOutput(BaseOutput):
    """``latents``: raw latents ``[B, C, H/8, W/8]``."""

    latents: torch.Tensor


@dataclass
class TAEF2DecoderOutput(BaseOutput):
    """``sample``: images ``[B, 3, H, W]`` in [-1, 1]."""

    sample: torch.Tensor


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class _Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): ``3 tanh(x / 3)`` (no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


class _Block(nn.Module):
    """Residual block ``ReLU(conv(x) + x)``; with ``pool``, ``x = x + pool(x)`` first."""

    def __init__(self, channels: int, pool: bool = False, pool_groups: int = 4):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.pool = None
        if pool:
            self.pool = nn.Sequential(
                nn.Conv2d(c, 4 * c, 1, bias=False),
                nn.GroupNorm(pool_groups, 4 * c),
                nn.ReLU(),
                nn.Conv2d(4 * c, c, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _encoder(width: int, latent: int, stages: int) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, width), _Block(width)]
    for s in range(stages):
        pool = s == stages - 1  # the blocks nearest the latent carry the pool branch
        layers += [nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)]
        layers += [_Block(width, pool) for _ in range(3)]
    layers.append(_conv(width, latent))
    return nn.Sequential(*layers)


def _decoder(width: int, latent: int, stages: int) -> nn.Sequential:
    layers: list[nn.Module] = [_Clamp(), _conv(latent, width), nn.ReLU()]
    layers += [_Block(width, pool=True) for _ in range(3)]
    for s in range(stages):
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
        layers += [_Block(width) for _ in range(1 if s == stages - 1 else 3)]
    layers.append(_conv(width, 3))
    return nn.Sequential(*layers)


def _tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of non-overlapping ``tile`` cores covering ``[0, size)``."""
    return list(range(0, size, tile))


class TAEF2(ModelMixin, ConfigMixin):
    """Tiny autoencoder for the FLUX.2 latent space (see the module docstring).

    Args:
        block_out_channels: widths per level; ``len - 1`` stride-2 stages (so diffusers'
            ``2 ** (len(block_out_channels) - 1)`` gives the downscale, 8). All equal here.
        latent_channels: 32 for TAEF2.
        latents_mean / latents_std: per-channel statistics of raw latents on the training data
            (:meth:`normalize_latents`); None = 0 and 1.
        tile_size: images (pixels) larger than this are encoded/decoded by tiles of this core
            size with ``tile_margin`` pixels of context cut away on each side.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        latent_channels: int = 32,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        tile_size: int = 512,
        tile_margin: int = 64,
    ):
        super().__init__()
        if len(set(block_out_channels)) != 1:
            raise ValueError(f"TAEF2 uses one width at every level, got {block_out_channels}")
        stages = len(block_out_channels) - 1
        width = int(block_out_channels[0])
        self.encoder = _encoder(width, latent_channels, stages)
        self.decoder = _decoder(width, latent_channels, stages)

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side (8)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    # --- conversion from the upstream state dicts ----------------------------------------------

    @classmethod
    def from_taesd_weights(
        cls, encoder_path: str | Path, decoder_path: str | Path, **config
    ) -> TAEF2:
        """Build from upstream ``taef2_encoder.pth`` / ``taef2_decoder.pth`` (``nn.Sequential``
        state dicts), loaded strictly: every key must match, none may be left over."""
        model = cls(**config)
        for part, path in (("encoder", encoder_path), ("decoder", decoder_path)):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            getattr(model, part).load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        return model

    # --- latents ---------------------------------------------------------------------------------

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean and std ``[1, C, 1, 1]`` from the config (0 and 1 if unset)."""
        n = int(self.config.latent_channels)
        mean = self.config.latents_mean if self.config.latents_mean is not None else [0.0] * n
        std = self.config.latents_std if self.config.latents_std is not None else [1.0] * n
        as_t = lambda v: torch.tensor(v, dtype=z.dtype, device=z.device).view(1, n, 1, 1)  # noqa: E731
        return as_t(mean), as_t(std)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[B, C, h, w]`` -> per-channel standardised latents (for the diffusion
        model)."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`."""
        mean, std = self._stats(z)
        return z * std + mean

    # --- encode / decode -------------------------------------------------------------------------

    def _run_tiled(
        self, net: nn.Sequential, x: torch.Tensor, scale: float, tile: int, margin: int
    ) -> torch.Tensor:
        """Apply ``net`` (output size = input size x ``scale``) by tiles of ``tile`` input pixels
        with ``margin`` pixels of context each side, cut away from the output."""
        b, _, h, w = x.shape
        out = None
        for y0 in _tile_starts(h, tile):
            for x0 in _tile_starts(w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ya, xa = max(y0 - margin, 0), max(x0 - margin, 0)
                yb, xb = min(y1 + margin, h), min(x1 + margin, w)
                piece = net(x[:, :, ya:yb, xa:xb])
                if out is None:
                    out = piece.new_zeros(b, piece.shape[1], round(h * scale), round(w * scale))
                cy, cx = round((y0 - ya) * scale), round((x0 - xa) * scale)
                hh, ww = round((y1 - y0) * scale), round((x1 - x0) * scale)
                out[
                    :,
                    :,
                    round(y0 * scale) : round(y0 * scale) + hh,
                    round(x0 * scale) : round(x0 * scale) + ww,
                ] = piece[:, :, cy : cy + hh, cx : cx + ww]
        return out

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``[B, 3, H, W]`` in [-1, 1] (H, W multiples of 8) -> raw latents
        ``[B, 32, H/8, W/8]``."""
        f = self.downscale
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"TAEF2.encode takes [B, 3, H, W] with H, W multiples of {f}, got {tuple(x.shape)}"
            )
        x = (x.to(self.dtype) + 1.0) / 2.0  # TAEF2 works in [0, 1]
        tile, margin = int(self.config.tile_size), int(self.config.tile_margin)
        if max(x.shape[-2:]) <= tile:
            z = self.encoder(x)
        else:
            z = self._run_tiled(self.encoder, x, 1.0 / f, tile, margin)
        return TAEF2EncoderOutput(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Raw latents ``[B, 32, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [-1, 1] (clamped)."""
        f = self.downscale
        tile, margin = int(self.config.tile_size) // f, max(int(self.config.tile_margin) // f, 1)
        z = z.to(self.dtype)
        if max(z.shape[-2:]) <= tile:
            img = self.decoder(z)
        else:
            img = self._run_tiled(self.decoder, z, float(f), tile, margin)
        img = img.clamp(0.0, 1.0) * 2.0 - 1.0
        return TAEF2DecoderOutput(sample=img) if return_dict else (img,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Round trip: images in [-1, 1] -> reconstructions in [-1, 1]."""
        rec = self.decode(self.encode(sample).latents).sample
        return TAEF2DecoderOutput(sample=rec) if return_dict else (rec,)
