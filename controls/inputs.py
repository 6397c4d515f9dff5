"""Dense maps given to the UNet by concatenation: wider input convolutions.

A map that says what belongs where, pixel by pixel (a layout's class fractions, a box map), is
most directly learned when the UNet sees it next to the noisy latent: ``conv_in`` takes
``latent + map`` channels, ``out_channels`` stays the latent's. :func:`widen_input` turns a
(trained) UNet into one that takes ``extra`` more input channels, their weights zero, so its
output is exactly what it was until they are trained.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def widen_input(unet: UNet2DConditionModel, extra: int) -> UNet2DConditionModel:
    """A copy of ``unet`` (same class and weights) whose ``conv_in`` takes ``extra`` more
    channels, appended after the existing ones and zero-initialised."""
    if extra < 0:
        raise ValueError(f"extra input channels must be >= 0, got {extra}")
    cfg = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    cfg["in_channels"] = int(unet.config.in_channels) + extra
    model = type(unet)(**cfg)
    state = dict(unet.state_dict())
    w = state.pop("conv_in.weight")  # [C_out, C_in, k, k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing != ["conv_in.weight"] or unexpected:
        raise ValueError(
            f"cannot widen this UNet's input: mismatched weights {(missing + unexpected)[:5]}"
        )
    place_input_weights(model.conv_in.weight, w)
    model.to(unet.device)
    return model if unet.dtype == model.dtype else model.to(unet.dtype)


def place_input_weights(dst: torch.Tensor, src: torch.Tensor, insert_at: int | None = None) -> None:
    """Fill a widened ``conv_in`` weight ``dst`` ``[C_out, C_in + extra, k, k]`` from the old one
    ``src`` ``[C_out, C_in, k, k]`` in place: the ``extra`` new input channels are zero and sit at
    ``insert_at`` (default: after the old ones), the old channels keep their weights."""
    k = src.shape[1] if insert_at is None else insert_at
    extra = dst.shape[1] - src.shape[1]
    with torch.no_grad():
        dst.zero_()
        dst[:, :k] = src[:, :k]
        dst[:, k + extra :] = src[:, k:]
