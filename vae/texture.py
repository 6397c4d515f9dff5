"""Texture VAE: per-voxel appearance <-> a per-voxel latent, decoded to 2D Gaussian surfels.

It works on the active voxels of a known structure, without spatial downsampling (EarthCrafter's
texture VAE): the encoder maps each voxel's appearance features (``[N, D]``, e.g.
:func:`earthgen.world.scene3d.world_scene`'s) through submanifold residual blocks to a diagonal
Gaussian latent ``[N, C]``; the decoder maps a latent back through residual blocks to ``K``
surfels per voxel: an offset from the voxel centre (within ``offset_range`` voxels), two scales
(``[0.02, 1] x`` voxel size), a rotation (quaternion, wxyz), an opacity and an RGB colour.

Surfels follow gsplat's 2DGS parameterisation (:func:`renderers.rasterization.rasterization_2dgs`):
``scales`` ``[M, 3]`` with a third, unused, thin scale. The VAE trains with a rendering loss
(L1 + SSIM of renders from random cameras against renders of the reference scene).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen_base.errors import UserInputError
from vae.sparse import SparseResBlock, SparseTensor, SubMConv3d, set_backend
from vae.structure import SparseGaussian

PARAMS_PER_SURFEL = 3 + 2 + 4 + 1 + 3  # offset, scales, quaternion, opacity, colour


class TextureVAE(ModelMixin, ConfigMixin):
    """Per-voxel appearance VAE decoding 2DGS surfels (see the module docstring).

    Args:
        in_channels: width ``D`` of the appearance features.
        channels: width of the residual trunk.
        latent_channels: ``C`` per voxel.
        num_res_blocks: residual blocks in the encoder and in the decoder.
        gaussians_per_voxel: ``K`` surfels decoded per voxel.
        offset_range: surfel centres stay within ``+- offset_range`` voxel sizes of the centre.
        backend: sparse convolution backend (:mod:`vae.sparse`).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 24,
        channels: int = 64,
        latent_channels: int = 8,
        num_res_blocks: int = 2,
        gaussians_per_voxel: int = 4,
        offset_range: float = 0.75,
        backend: str = "auto",
    ):
        super().__init__()
        self.enc_in = SubMConv3d(in_channels, channels, 3, backend=backend)
        self.enc = nn.ModuleList(
            [SparseResBlock(channels, backend=backend) for _ in range(num_res_blocks)]
        )
        self.enc_out = nn.Sequential(
            nn.LayerNorm(channels), nn.SiLU(), nn.Linear(channels, 2 * latent_channels)
        )
        self.dec_in = nn.Linear(latent_channels, channels)
        self.dec = nn.ModuleList(
            [SparseResBlock(channels, backend=backend) for _ in range(num_res_blocks)]
        )
        K = gaussians_per_voxel
        self.dec_out = nn.Sequential(
            nn.LayerNorm(channels), nn.SiLU(), nn.Linear(channels, K * PARAMS_PER_SURFEL)
        )
        nn.init.zeros_(self.dec_out[-1].weight)
        # initial surfels: a horizontal K-point grid across the voxel, half a voxel wide each
        side = math.ceil(math.sqrt(K))
        grid = (
            torch.arange(K, dtype=torch.float32) % side,
            torch.div(torch.arange(K), side, rounding_mode="floor"),
        )
        off = torch.stack(
            [(grid[0] + 0.5) / side - 0.5, (grid[1] + 0.5) / side - 0.5, torch.zeros(K)], 1
        )
        bias = torch.zeros(K, PARAMS_PER_SURFEL)
        bias[:, 0:3] = torch.atanh(off / offset_range)
        bias[:, 3:5] = _logit((0.5 / side - 0.02) / 0.98)
        bias[:, 5] = 1.0  # identity rotation: normal +z
        bias[:, 9] = 2.0  # opacity ~0.88
        with torch.no_grad():
            self.dec_out[-1].bias.copy_(bias.reshape(-1))

    def set_backend(self, backend: str) -> TextureVAE:
        return set_backend(self, backend)

    def encode(self, x: SparseTensor) -> SparseGaussian:
        """``x``: appearance features ``[N, D]`` on the active voxels -> posterior ``[N, C]``."""
        if x.feats.shape[1] != self.config.in_channels:
            raise UserInputError(
                f"the texture VAE expects {self.config.in_channels} appearance channels, "
                f"got {x.feats.shape[1]}"
            )
        h = self.enc_in(x.replace(x.feats.to(self.dec_in.weight.dtype)))
        for block in self.enc:
            h = block(h)
        mean, logvar = self.enc_out(h.feats).chunk(2, dim=1)
        return SparseGaussian(h.replace(mean), logvar.clamp(-20.0, 10.0))

    def decode(
        self, latent: SparseTensor, voxel_size: float, origin=(0.0, 0.0, 0.0)
    ) -> dict[str, torch.Tensor]:
        """Latent ``[N, C]`` on voxels -> surfels in world metres (``M = N K``):
        ``means [M, 3]``, ``quats [M, 4]`` (wxyz, unit), ``scales [M, 3]`` (third = 1e-3 of the
        smaller), ``opacities [M]``, ``colors [M, 3]`` in [0, 1], ``voxel [M]`` (source row)."""
        h = latent.replace(self.dec_in(latent.feats))
        for block in self.dec:
            h = block(h)
        K = self.config.gaussians_per_voxel
        # positions in float32 whatever autocast does: world coordinates are hundreds of metres
        p = self.dec_out(h.feats).float().reshape(len(h), K, PARAMS_PER_SURFEL)
        s = float(voxel_size)
        org = torch.as_tensor(origin, dtype=p.dtype, device=p.device)
        centre = (latent.coords[:, 1:].to(p.dtype) + 0.5) * s + org  # [N, 3]
        means = centre[:, None] + torch.tanh(p[..., 0:3]) * self.config.offset_range * s
        sc = s * (0.02 + 0.98 * torch.sigmoid(p[..., 3:5]))
        scales = torch.cat([sc, 1e-3 * sc.min(-1, keepdim=True).values], -1)
        quats = F.normalize(p[..., 5:9], dim=-1)
        return {
            "means": means.reshape(-1, 3),
            "quats": quats.reshape(-1, 4),
            "scales": scales.reshape(-1, 3),
            "opacities": torch.sigmoid(p[..., 9]).reshape(-1),
            "colors": torch.sigmoid(p[..., 10:13]).reshape(-1, 3),
            "voxel": torch.arange(len(h), device=p.device).repeat_interleave(K),
        }

    def forward(
        self,
        x: SparseTensor,
        voxel_size: float,
        origin=(0.0, 0.0, 0.0),
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], SparseGaussian]:
        """Encode, sample (or take the mean) and decode: ``(surfels, posterior)``."""
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return self.decode(z, voxel_size, origin), post


def _logit(p: float) -> float:
    return math.log(p / (1 - p))
