"""Box-layout conditioning (AeroGen / GLIGEN ideas): object boxes -> grounding tokens.

Every box, horizontal or rotated, is its 4 corners normalised by the image size (8 numbers in
0..1, :meth:`earthgen.boxes.BoxSet.normalized`) plus its class name embedded by the pipeline's
text encoder. :class:`BoxTokenEncoder` Fourier-embeds the 8 numbers, concatenates the class
embedding and maps both through an MLP to one token per box, of the UNet's cross-attention
width; the UNet's gated self-attention layers (``attention_type="gated"``) read the tokens.
Padding slots and dropped boxes use learned *null* features (one for the geometry, one for the
class), so a batch may mix images with any number of boxes and the unconditional branch of
classifier-free guidance is "all boxes null". There is no cap on the number of boxes.

With ``raster_dim > 0`` the encoder also paints the boxes as a dense map at the latent size
(:meth:`BoxTokenEncoder.raster`): channel 0 is each cell's covered fraction (rotated boxes
supersampled), channels 1.. the covered fraction times a learned projection of the class
embedding. The grounded UNet takes this map concatenated to its latent input (extra ``conv_in``
channels, zero-initialised): a spatial signal that a small model learns in far fewer steps than
the attention path alone, while the class projection lets a rare class borrow from a similar
frequent one (``large vehicle`` next to ``small vehicle``).
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
    def __init__(
        self,
        text_dim: int = 384,
        out_dim: int = 768,
        num_freqs: int = 8,
        hidden_dim: int = 512,
        raster_dim: int = 0,
    ):
        super().__init__()
        if raster_dim < 0:
            raise ValueError(f"raster_dim must be >= 0, got {raster_dim}")
        pos_dim = 8 * 2 * num_freqs
        self.text_norm = nn.LayerNorm(text_dim)
        self.mlp = nn.Sequential(
            nn.Linear(pos_dim + text_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.null_position = nn.Parameter(torch.zeros(pos_dim))
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.raster_proj = nn.Linear(text_dim, raster_dim) if raster_dim > 0 else None

    @property
    def raster_channels(self) -> int:
        """Channels of :meth:`raster` (0 when the encoder paints no map)."""
        return 1 + self.config.raster_dim if self.config.raster_dim > 0 else 0

    def raster(
        self,
        corners: torch.Tensor,
        class_embeds: torch.Tensor,
        mask: torch.Tensor,
        height: int,
        width: int,
    ) -> torch.Tensor:
        """Dense box map ``[B, 1 + raster_dim, height, width]`` (see the module docstring) of
        ``corners [B, N, 8]`` (normalised), ``class_embeds [B, N, text_dim]``, ``mask [B, N]``;
        null boxes paint nothing, so the unconditional map is all zero."""
        if self.raster_proj is None:
            raise ValueError("this BoxTokenEncoder has raster_dim = 0")
        dt = self.null_position.dtype
        cover = (
            box_coverage(corners.float(), height, width).to(dt) * mask.to(dt)[..., None, None]
        )  # [B, N, h, w]
        feats = torch.cat(
            [
                torch.ones_like(mask, dtype=dt)[..., None],
                self.raster_proj(self.text_norm(class_embeds.to(dt))),
            ],
            dim=-1,
        )  # [B, N, 1 + k]
        return torch.einsum("bnhw,bnc->bchw", cover, feats)

    def forward(
        self,
        corners: torch.Tensor,
        class_embeds: torch.Tensor,
        mask: torch.Tensor,
        raster_size: tuple[int, int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, out_dim]``; with ``raster_size=(h, w)`` also the box map
        ``[B, C, h, w]``."""
        tokens = self._tokens(corners, class_embeds, mask)
        if raster_size is None:
            return tokens
        return tokens, self.raster(corners, class_embeds, mask, *raster_size)

    def _tokens(
        self, corners: torch.Tensor, class_embeds: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        m = mask.to(self.null_position.dtype)[..., None]
        pos = fourier_embed(corners, self.config.num_freqs).to(m.dtype)
        txt = self.text_norm(class_embeds.to(m.dtype))
        pos = m * pos + (1 - m) * self.null_position
        txt = m * txt + (1 - m) * self.null_text
        return self.mlp(torch.cat([pos, txt], dim=-1))


def check_box_map(unet, box_encoder, layout_channels: int = 0) -> None:
    """Raise :class:`UserInputError` unless ``box_encoder`` paints as many box-map channels as the
    (grounded) ``unet`` takes (its extra input channels less the ``layout_channels`` of a layout
    map concatenated after the box map); a UNet without box-map channels needs none."""
    from earthgen.errors import UserInputError

    want = int(getattr(unet, "raster_channels", 0)) - layout_channels
    have = 0 if box_encoder is None else box_encoder.raster_channels
    if want and have != want:
        raise UserInputError(
            f"the UNet takes a {want}-channel box map but the box encoder paints {have}"
        )


def box_coverage(
    corners: torch.Tensor, height: int, width: int, supersample: int = 4
) -> torch.Tensor:
    """Fraction of each cell of a ``height x width`` grid over the unit square covered by each box:
    ``corners [B, N, 8]`` (x0, y0, ..., x3, y3 normalised to 0..1, any winding) -> ``[B, N, h, w]``
    in 0..1, from ``supersample**2`` points per cell (a point is inside when it is on the same side
    of all four edges)."""
    b, n, _ = corners.shape
    s = supersample
    ys = (torch.arange(height * s, device=corners.device, dtype=torch.float32) + 0.5) / (height * s)
    xs = (torch.arange(width * s, device=corners.device, dtype=torch.float32) + 0.5) / (width * s)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([px.reshape(-1), py.reshape(-1)], -1)  # [P, 2]
    c = corners.float().reshape(b, n, 4, 2)
    pos = torch.ones(b, n, pts.shape[0], dtype=torch.bool, device=corners.device)
    neg = torch.ones_like(pos)
    for k in range(4):  # one edge at a time: memory [B, N, P]
        a, e = c[:, :, k], c[:, :, (k + 1) % 4] - c[:, :, k]  # [B, N, 2]
        cross = e[..., 0:1] * (pts[:, 1] - a[..., 1:2]) - e[..., 1:2] * (
            pts[:, 0] - a[..., 0:1]
        )  # [B, N, P]
        pos &= cross >= 0
        neg &= cross <= 0
    inside = pos | neg
    area2 = (
        c[..., 0] * torch.roll(c[..., 1], -1, 2) - torch.roll(c[..., 0], -1, 2) * c[..., 1]
    ).sum(-1)
    inside &= (area2.abs() > 1e-12)[..., None]  # degenerate boxes cover nothing
    grid = inside.float().reshape(b * n, 1, height * s, width * s)
    return torch.nn.functional.avg_pool2d(grid, s).reshape(b, n, height, width)


def pack_boxes(
    boxsets: Sequence, width: int, height: int, min_slots: int = 1
) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """BoxSets (one per image; pixel corners) -> normalised corners ``[B, N, 8]``, class names
    per image (padded with ""), mask ``[B, N]``; N = the largest box count (at least
    ``min_slots``)."""
    n = max([min_slots] + [len(b) for b in boxsets])
    corners = torch.zeros(len(boxsets), n, 8)
    mask = torch.zeros(len(boxsets), n)
    names: list[list[str]] = []
    for i, b in enumerate(boxsets):
        k = len(b)
        if k:
            corners[i, :k] = torch.from_numpy(
                np.asarray(b.normalized(width, height), dtype=np.float32)
            )
            mask[i, :k] = 1
        names.append(list(b.labels) + [""] * (n - k))
    return corners, names, mask


def class_name_text(name: str) -> str:
    """A class name as text for the encoder: ``small_vehicle`` -> ``small vehicle``."""
    return str(name).replace("_", " ").replace("-", " ").strip()


def pooled_text_embedding(text_encoder, tokenizer, texts: list[str], device=None) -> torch.Tensor:
    """Mean of the token embeddings over the attention mask: ``[len(texts), hidden]``."""
    tok = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=min(int(tokenizer.model_max_length), 77),
        return_tensors="pt",
    )
    device = device or text_encoder.device
    with torch.no_grad():
        h = text_encoder(
            input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
        ).last_hidden_state
    m = tok["attention_mask"].to(device)[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def class_embeddings(
    names: list[list[str]], text_encoder, tokenizer, cache: dict[str, torch.Tensor], device=None
) -> torch.Tensor:
    """Class-name embeddings ``[B, N, D_text]`` of padded name lists (``""`` -> zeros): names not
    in ``cache`` are embedded (:func:`pooled_text_embedding` of :func:`class_name_text`) and added
    to it."""
    device = device or text_encoder.device
    new = sorted({n for row in names for n in row} - set(cache) - {""})
    if new:
        cache.update(
            zip(
                new,
                pooled_text_embedding(
                    text_encoder, tokenizer, [class_name_text(n) for n in new], device
                ),
                strict=True,
            )
        )
    zero = torch.zeros(int(text_encoder.config.hidden_size), device=device)
    return torch.stack([torch.stack([cache.get(n, zero).to(device) for n in row]) for row in names])


def drop_boxes(mask: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """``mask [B, N]`` with every box of the images where ``drop [B]`` is true set to null."""
    if drop is None:
        return mask
    return mask * (~drop.bool()).to(mask.dtype)[:, None].to(mask.device)


__all__ = [
    "BoxTokenEncoder",
    "box_coverage",
    "check_box_map",
    "class_embeddings",
    "class_name_text",
    "drop_boxes",
    "fourier_embed",
    "pack_boxes",
    "pooled_text_embedding",
]
