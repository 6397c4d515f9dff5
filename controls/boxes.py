"""Box control: a UNet with GLIGEN gated self-attention fed by EarthGen's own box tokens.

:class:`GroundedUNet2DConditionModel` is diffusers' ``UNet2DConditionModel`` built with
``attention_type="gated"`` (so its transformer blocks own ``GatedSelfAttentionDense`` fusers,
saved and loaded with the UNet, gates starting at 0 = no effect), whose ``position_net`` is a
parameter-free pass-through: the grounding tokens are computed outside, by
:class:`earthgen.conditioning.boxes.BoxTokenEncoder` (rotated boxes as 8 corner numbers, which
diffusers' axis-aligned GLIGEN projection cannot take), and given as
``cross_attention_kwargs={"gligen": {"objs": tokens}}`` with tokens ``[B, N, cross_attention_dim]``.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 - diffusers' loader looks it up here
from torch import nn


class GroundingTokens(nn.Module):
    """The UNet's ``position_net``: returns the precomputed tokens it is given."""

    def forward(self, objs: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, N, D]
        return objs


class GroundedUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` with gated box attention fed by precomputed grounding tokens."""

    def _set_pos_net_if_use_gligen(self, attention_type: str, cross_attention_dim: int):
        if attention_type != "gated":
            raise ValueError(f"GroundedUNet2DConditionModel needs attention_type='gated', got {attention_type!r}")
        self.position_net = GroundingTokens()

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> GroundedUNet2DConditionModel:
        """A grounded copy of ``unet``: same weights, new gated fusers (gates at 0, so its output is
        unchanged until they are trained)."""
        cfg = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        cfg["attention_type"] = "gated"
        model = cls(**cfg)
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        bad = [k for k in missing if ".fuser." not in k] + [k for k in unexpected if not k.startswith("position_net.")]
        if bad:
            raise ValueError(f"cannot ground this UNet: mismatched weights {bad[:5]}")
        return model.to(device=unet.device, dtype=unet.dtype)
