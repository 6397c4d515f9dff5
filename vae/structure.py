"""Structure VAE: sparse voxel occupancy at ``L^3`` <-> a sparse latent at ``(L/8)^3 x C``.

Encoder: a submanifold stem on the active voxels (feature 1), then three stages of residual blocks
each ending in a stride-2 sparse convolution; at ``L/8`` a linear head gives the mean and log
variance of a diagonal Gaussian on every active coarse voxel.

Decoder: from the coarse latent, three levels of *generative* upsampling: residual blocks run on
the kept voxels of a level, an occupancy classifier scores each voxel's 8 children, and the kept
children get features from a 2 x 2 x 2 transposed convolution (the voxels a level drops cost
nothing further). In training the kept children are
the true ones (teacher forcing), so every level learns from the right context; at inference the
classifier decides (``logit > 0`` by default). The loss is the children's binary cross-entropy at
every level plus a small KL term.

The coarse structure (which ``(L/8)^3`` cells are active) is part of the latent: the structure flow
generates it together with the features. Everything is convolutional, so a model trained on
``64^3`` crops decodes ``256^3`` scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen_base.errors import UserInputError
from vae.sparse import (
    SparseDownsample,
    SparseResBlock,
    SparseTensor,
    SparseUpsample,
    SubMConv3d,
    child_coords,
    set_backend,
)


@dataclass
class SparseGaussian:
    """Diagonal Gaussian posterior on a sparse grid: ``mean`` and ``logvar`` ``[N, C]`` on the
    voxels of ``mean.coords``."""

    mean: SparseTensor
    logvar: torch.Tensor  # [N, C]

    def sample(self, generator: torch.Generator | None = None) -> SparseTensor:
        eps = torch.randn(
            self.logvar.shape,
            generator=generator,
            device=self.logvar.device if generator is None else generator.device,
        ).to(self.logvar.device)
        return self.mean.replace(self.mean.feats + torch.exp(0.5 * self.logvar) * eps)

    def mode(self) -> SparseTensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """Mean KL divergence to N(0, I) per latent element (a scalar)."""
        m = self.mean.feats
        return 0.5 * (m.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


def _children(x: SparseTensor) -> SparseTensor:
    """The 8 children of every voxel (parent-major, octant minor, as :class:`SparseUpsample`)."""
    coords = child_coords(x.coords)
    return SparseTensor(
        coords,
        x.feats.new_zeros(len(coords), 0),
        tuple(2 * s for s in x.spatial_shape),
        x.batch_size,
    )


def downsample_coords(coords: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Unique parent voxels ``[M, 4]`` of ``coords`` ``[N, 4]`` (batch, x, y, z) after ``times``
    halvings."""
    c = coords.clone()
    c[:, 1:] = torch.div(c[:, 1:], 2**times, rounding_mode="floor")
    return torch.unique(c, dim=0)


class StructureVAE(ModelMixin, ConfigMixin):
    """Sparse structure VAE (see the module docstring).

    Args:
        channels: widths at ``L, L/2, L/4, L/8``.
        latent_channels: ``C`` of the latent at ``L/8``.
        num_res_blocks: residual blocks per stage (encoder and decoder).
        backend: sparse convolution backend, ``auto | torch | spconv`` (:mod:`vae.sparse`).
    """

    @register_to_config
    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 96, 128),
        latent_channels: int = 8,
        num_res_blocks: int = 1,
        backend: str = "auto",
    ):
        super().__init__()
        if len(channels) != 4:
            raise UserInputError("StructureVAE needs 4 channel widths (levels L, L/2, L/4, L/8)")
        c = list(channels)
        self.stem = SubMConv3d(1, c[0], 3, backend=backend)
        self.enc = nn.ModuleList()
        for i in range(3):
            self.enc.append(
                nn.ModuleList(
                    [
                        *(SparseResBlock(c[i], backend=backend) for _ in range(num_res_blocks)),
                        SparseDownsample(c[i], c[i + 1], backend=backend),
                    ]
                )
            )
        self.enc_out = nn.ModuleList(
            [SparseResBlock(c[3], backend=backend) for _ in range(num_res_blocks)]
        )
        self.enc_norm = nn.LayerNorm(c[3])
        self.to_moments = nn.Linear(c[3], 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, c[3])
        # decoder levels, coarse to fine: residual blocks on the kept voxels of a level, then an
        # occupancy head scoring their 8 children, then (but for the last level) the generative
        # upsampling that makes the children's features
        self.dec = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in (3, 2, 1):
            self.dec.append(
                nn.ModuleList(
                    [SparseResBlock(c[i], backend=backend) for _ in range(num_res_blocks)]
                )
            )
            self.heads.append(nn.Sequential(nn.LayerNorm(c[i]), nn.SiLU(), nn.Linear(c[i], 8)))
            if i > 1:
                self.up.append(SparseUpsample(c[i], c[i - 1], backend=backend))

    @property
    def downsample_factor(self) -> int:
        return 8

    def set_backend(self, backend: str) -> StructureVAE:
        return set_backend(self, backend)

    @staticmethod
    def _check(x: SparseTensor) -> None:
        if any(s % 8 for s in x.spatial_shape):
            raise UserInputError(
                f"the structure VAE needs grid sizes divisible by 8, got {x.spatial_shape}"
            )
        if len(x) == 0:
            raise UserInputError("the voxel grid is empty")

    def encode(self, occupancy: SparseTensor) -> SparseGaussian:
        """``occupancy``: active voxels ``[N, 4]`` (features ignored) on an ``L^3`` grid ->
        posterior on the active ``(L/8)^3`` cells."""
        self._check(occupancy)
        h = self.stem(
            occupancy.replace(
                torch.ones(
                    len(occupancy), 1, device=occupancy.device, dtype=self.to_moments.weight.dtype
                )
            )
        )
        for stage in self.enc:
            for block in stage:
                h = block(h)
        for block in self.enc_out:
            h = block(h)
        mom = self.to_moments(F.silu(self.enc_norm(h.feats)))
        mean, logvar = mom.chunk(2, dim=1)
        return SparseGaussian(h.replace(mean), logvar.clamp(-20.0, 10.0))

    def decode(
        self, latent: SparseTensor, target: SparseTensor | None = None, threshold: float = 0.0
    ) -> dict:
        """Decode a coarse latent. With ``target`` (the true ``L^3`` occupancy) children are kept
        by the truth (training); otherwise by ``logit > threshold``.

        Returns ``{"occupancy": SparseTensor of kept L^3 voxels (feats = logits [N, 1]),
        "logits": [per level, coarse to fine], "labels": [per level, or None]}``.
        """
        h = latent.replace(self.from_latent(latent.feats))
        truth = None
        if target is not None:
            truth = [downsample_coords(target.coords, k) for k in (2, 1, 0)]
        logits_all, labels_all = [], []
        for level, (blocks, head) in enumerate(zip(self.dec, self.heads, strict=True)):
            if len(h) == 0:  # everything pruned (an empty scene): nothing finer to decode
                shape = tuple(s * 2 ** (len(self.dec) - level) for s in h.spatial_shape)
                h = SparseTensor(h.coords, h.feats.new_zeros(0, 1), shape, h.batch_size)
                break
            for block in blocks:
                h = block(h)
            logit = head(h.feats).reshape(-1)  # [8 N]: children parent-major, octant minor
            children = _children(h)
            if truth is not None:
                lab = (
                    SparseTensor(
                        truth[level],
                        truth[level][:, :1].float(),
                        children.spatial_shape,
                        h.batch_size,
                    ).lookup(children.coords)
                    >= 0
                )
                labels_all.append(lab.float())
                keep = lab
            else:
                keep = logit > threshold
            logits_all.append(logit)
            if level < len(self.up):
                h = self.up[level](h).select(keep)
            else:
                h = children.replace(logit[:, None]).select(keep)
        return {
            "occupancy": h,
            "logits": logits_all,
            "labels": labels_all if truth is not None else None,
        }

    def forward(
        self,
        occupancy: SparseTensor,
        sample: bool = True,
        kl_weight: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Training step: encode, sample, decode with teacher forcing; returns the losses."""
        post = self.encode(occupancy)
        z = post.sample(generator) if sample else post.mode()
        out = self.decode(z, target=occupancy)
        bce = [
            F.binary_cross_entropy_with_logits(lg, lb)
            for lg, lb in zip(out["logits"], out["labels"], strict=True)
        ]
        kl = post.kl()
        loss = sum(bce) + kl_weight * kl
        return {"loss": loss, "bce": torch.stack([b.detach() for b in bce]), "kl": kl.detach()}

    @torch.no_grad()
    def reconstruct(self, occupancy: SparseTensor, threshold: float = 0.0) -> SparseTensor:
        """Encode (posterior mean) and decode without teacher forcing."""
        return self.decode(self.encode(occupancy).mode(), threshold=threshold)["occupancy"]


def voxel_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """IoU, precision and recall of two voxel sets given as coords ``[N, 4]`` / ``[M, 4]``."""
    if len(target) == 0 and len(pred) == 0:
        return {"iou": 1.0, "precision": 1.0, "recall": 1.0, "pred": 0, "target": 0}
    big = torch.cat([pred, target]).long()
    lo = big.min(0).values
    ext = big.max(0).values - lo + 1

    def key(c):
        c = c.long() - lo
        return ((c[:, 0] * ext[1] + c[:, 1]) * ext[2] + c[:, 2]) * ext[3] + c[:, 3]

    inter = int(torch.isin(key(pred), key(target)).sum())
    union = len(pred) + len(target) - inter
    return {
        "iou": inter / max(union, 1),
        "precision": inter / max(len(pred), 1),
        "recall": inter / max(len(target), 1),
        "pred": len(pred),
        "target": len(target),
    }
