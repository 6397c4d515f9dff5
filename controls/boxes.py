"""Box control: a UNet with GLIGEN gated self-attention fed by EarthGen's own box tokens.

:class:`GroundedUNet2DConditionModel` is diffusers' ``UNet2DConditionModel`` built with
``attention_type="gated"`` (so its transformer blocks own ``GatedSelfAttentionDense`` fusers,
saved and loaded with the UNet, gates starting at 0 = no effect), whose ``position_net`` is a
parameter-free pass-through: the grounding tokens are computed outside, by
:class:`earthgen.conditioning.boxes.BoxTokenEncoder` (rotated boxes as 8 corner numbers, which
diffusers' axis-aligned GLIGEN projection cannot take), and given as
``cross_attention_kwargs={"gligen": {"objs": tokens}}`` with tokens ``[B, N, cross_attention_dim]``.

A UNet made with ``from_unet(unet, raster_channels=C)`` also takes the encoder's dense box map
(:meth:`earthgen.conditioning.boxes.BoxTokenEncoder.raster`) concatenated after the latent
channels: ``in_channels = latent channels + C``, the new ``conv_in`` weights start at zero (so
the output is unchanged until they are trained); ``out_channels`` stays the latent's.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 - diffusers' loader looks it up here
from torch import nn

from controls.inputs import place_input_weights


class GroundingTokens(nn.Module):
    """The UNet's ``position_net``: returns the precomputed tokens it is given."""

    def forward(self, objs: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, N, D]
        return objs


class GroundedUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` with gated box attention fed by precomputed grounding tokens."""

    def _set_pos_net_if_use_gligen(self, attention_type: str, cross_attention_dim: int):
        if attention_type != "gated":
            raise ValueError(
                f"GroundedUNet2DConditionModel needs attention_type='gated', got {attention_type!r}"
            )
        self.position_net = GroundingTokens()

    @property
    def raster_channels(self) -> int:
        """Input channels of the dense box map (``in_channels - out_channels``; 0 = tokens only)."""
        return int(self.config.in_channels) - int(self.config.out_channels)

    @classmethod
    def from_unet(
        cls, unet: UNet2DConditionModel, raster_channels: int = 0, insert_at: int | None = None
    ) -> GroundedUNet2DConditionModel:
        """A grounded copy of ``unet``: same weights, new gated fusers (gates at 0) and, with
        ``raster_channels``, that many zero-initialised input channels for the box map; its output
        is unchanged until the new weights are trained. ``insert_at``: the input channel where the
        box map's channels go (default: after the existing ones; the latent's channel count for a
        UNet that already takes a layout map after the latent, since the box map comes first)."""
        if raster_channels < 0:
            raise ValueError(f"raster_channels must be >= 0, got {raster_channels}")
        if insert_at is not None and not 0 <= insert_at <= int(unet.config.in_channels):
            raise ValueError(
                f"insert_at must be in [0, {unet.config.in_channels}], got {insert_at}"
            )
        cfg = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        cfg["attention_type"] = "gated"
        cfg["in_channels"] = int(unet.config.in_channels) + raster_channels
        model = cls(**cfg)
        state = dict(unet.state_dict())
        w = state.pop("conv_in.weight")  # [C_out, C_in, k, k]
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if ".fuser." not in k and k != "conv_in.weight"]
        bad += [k for k in unexpected if not k.startswith("position_net.")]
        if bad:
            raise ValueError(f"cannot ground this UNet: mismatched weights {bad[:5]}")
        place_input_weights(model.conv_in.weight, w, insert_at)
        return model.to(device=unet.device, dtype=unet.dtype)
