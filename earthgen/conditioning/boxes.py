"""Box-layout conditioning (AeroGen / GLIGEN ideas): object boxes -> grounding tokens.

Every box, horizontal or rotated, is its 4 corners normalised by the image size (8 numbers in
0..1, :meth:`earthgen.boxes.BoxSet.normalized`) plus its class name embedded by the pipeline's
text encoder. :class:`BoxTokenEncoder` Fourier-embeds the 8 numbers, concatenates the class
embedding and maps both through an MLP to one token per box, of the UNet's cross-attention
width; the UNet's gated self-attention layers (``attention_type="gated"``) read the tokens.
Padding slots and dropped boxes use learned *null* features (one for the geometry, one for the
class), so a batch may mix images with any number of boxes and the unconditional branch of
classifier-free guidance is "all boxes null". There is no cap on the number of boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def fourier_embed(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``[..., D]`` values in about 0..1 -> ``[..., D * 2 * num_freqs]`` sines and cosines at
    frequencies ``100 ** (k / num_freqs)`` (GLIGEN's box embedding)."""
    freqs = 100.0 ** (torch.arange(num_freqs, device=x.device, dtype=torch.float32) / num_freqs)
    a = x.float()[..., None] * freqs  # [..., D, F]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=-1).flatten(-2)


class BoxTokenEncoder(ModelMixin, ConfigMixin):
    """``forward(corners [B, N, 8] in 0..1, class_embeds [B, N, text_dim], mask [B, N])`` ->
    grounding tokens ``[B, N, out_dim]``; ``mask`` 0 marks padding or dropped boxes (null)."""

    @register_to_config
    def __init__(self, text_dim: int = 384, out_dim: int = 768, num_freqs: int = 8, hidden_dim: int = 512):
        super().__init__()
        pos_dim = 8 * 2 * num_freqs
        self.text_norm = nn.LayerNorm(text_dim)
        self.mlp = nn.Sequential(nn.Linear(pos_dim + text_dim, hidden_dim), nn.SiLU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))
        self.null_position = nn.Parameter(torch.zeros(pos_dim))
        self.null_text = nn.Parameter(torch.zeros(text_dim))

    def forward(self, corners: torch.Tensor, class_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(self.null_position.dtype)[..., None]
        pos = fourier_embed(corners, self.config.num_freqs).to(m.dtype)
        txt = self.text_norm(class_embeds.to(m.dtype))
        pos = m * pos + (1 - m) * self.null_position
        txt = m * txt + (1 - m) * self.null_text
        return self.mlp(torch.cat([pos, txt], dim=-1))


def pack_boxes(boxsets: Sequence, width: int, height: int, min_slots: int = 1) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """BoxSets (one per image; pixel corners) -> normalised corners ``[B, N, 8]``, class names
    per image (padded with ""), mask ``[B, N]``; N = the largest box count (at least ``min_slots``)."""
    n = max([min_slots] + [len(b) for b in boxsets])
    corners = torch.zeros(len(boxsets), n, 8)
    mask = torch.zeros(len(boxsets), n)
    names: list[list[str]] = []
    for i, b in enumerate(boxsets):
        k = len(b)
        if k:
            corners[i, :k] = torch.from_numpy(np.asarray(b.normalized(width, height), dtype=np.float32))
            mask[i, :k] = 1
        names.append(list(b.labels) + [""] * (n - k))
    return corners, names, mask


def class_name_text(name: str) -> str:
    """A class name as text for the encoder: ``small_vehicle`` -> ``small vehicle``."""
    return str(name).replace("_", " ").replace("-", " ").strip()


def pooled_text_embedding(text_encoder, tokenizer, texts: list[str], device=None) -> torch.Tensor:
    """Mean of the token embeddings over the attention mask: ``[len(texts), hidden]``."""
    tok = tokenizer(texts, padding=True, truncation=True, max_length=min(int(tokenizer.model_max_length), 77),
                    return_tensors="pt")
    device = device or text_encoder.device
    with torch.no_grad():
        h = text_encoder(input_ids=tok["input_ids"].to(device),
                         attention_mask=tok["attention_mask"].to(device)).last_hidden_state
    m = tok["attention_mask"].to(device)[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def drop_boxes(mask: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """``mask [B, N]`` with every box of the images where ``drop [B]`` is true set to null."""
    if drop is None:
        return mask
    return mask * (~drop.bool()).to(mask.dtype)[:, None].to(mask.device)


__all__ = ["BoxTokenEncoder", "class_name_text", "drop_boxes", "fourier_embed", "pack_boxes",
           "pooled_text_embedding"]

