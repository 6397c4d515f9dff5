"""Numeric metadata -> an embedding summed into the diffusion timestep embedding.

Fields and how they are normalised before the sinusoidal embedding:

| field | unit | normalised value |
|---|---|---|
| ``gsd`` | metres/pixel | ``log10(gsd)`` (0.1 m -> -1, 10 m -> 1) |
| ``lat`` | degrees | ``lat / 90`` |
| ``lon`` | degrees | ``lon / 180`` |
| ``day_of_year`` | 1..366 | ``(day - 1) / 365.25`` (cyclic: sin/cos of the angle are used) |
| ``year`` | calendar year | ``(year - 2000) / 25`` |
| ``cloud_cover`` | fraction 0..1 | ``cloud_cover`` |

A field that is missing (not passed, or NaN for some samples of the batch) takes a learned null
embedding, so any subset can be given; ``drop`` masks fields out (classifier-free guidance and
per-condition dropout during training use it).
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen.errors import UserInputError

METADATA_FIELDS: tuple[str, ...] = ("gsd", "lat", "lon", "day_of_year", "year", "cloud_cover")
_RANGES = {
    "gsd": (1e-3, 1e4),
    "lat": (-90.0, 90.0),
    "lon": (-180.0, 180.0),
    "day_of_year": (1.0, 366.0),
    "year": (1900.0, 2200.0),
    "cloud_cover": (0.0, 1.0),
}


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """``x`` ``[B]`` (about unit range) -> ``[B, dim]`` sin/cos features at geometric frequencies
    from 1 to ``max_period`` cycles per unit."""
    half = dim // 2
    freqs = torch.exp(
        torch.linspace(0.0, math.log(max_period), half, device=x.device, dtype=torch.float32)
    )
    ang = 2 * math.pi * x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def normalise(field: str, value: torch.Tensor) -> torch.Tensor:
    """Physical value -> the normalised scalar of the table above (NaN stays NaN)."""
    v = value.float()
    if field == "gsd":
        return torch.log10(v)
    if field == "lat":
        return v / 90.0
    if field == "lon":
        return v / 180.0
    if field == "day_of_year":
        return (v - 1.0) / 365.25
    if field == "year":
        return (v - 2000.0) / 25.0
    return v


class MetadataEncoder(ModelMixin, ConfigMixin):
    """Embed metadata fields and sum them: ``forward(metadata) -> [B, out_dim]``.

    Args:
        fields: which fields of :data:`METADATA_FIELDS` the model knows.
        out_dim: output width (the UNet's timestep-embedding width).
        freq_dim: width of each field's sinusoidal features.
    """

    @register_to_config
    def __init__(
        self, fields: tuple[str, ...] = METADATA_FIELDS, out_dim: int = 256, freq_dim: int = 64
    ):
        super().__init__()
        unknown = [f for f in fields if f not in METADATA_FIELDS]
        if unknown:
            raise UserInputError(
                f"unknown metadata field(s) {unknown}; known: {', '.join(METADATA_FIELDS)}"
            )
        self.fields = tuple(fields)
        self.mlps = nn.ModuleDict(
            {
                f: nn.Sequential(
                    nn.Linear(freq_dim * (2 if f == "day_of_year" else 1), out_dim),
                    nn.SiLU(),
                    nn.Linear(out_dim, out_dim),
                )
                for f in self.fields
            }
        )
        # learned nulls start at zero: an untrained model ignores metadata
        self.null = nn.Parameter(torch.zeros(len(self.fields), out_dim))

    def check(self, metadata: dict[str, object] | None, batch_size: int) -> dict[str, torch.Tensor]:
        """Validate user metadata: known fields, numbers, physical ranges; scalars broadcast."""
        out: dict[str, torch.Tensor] = {}
        for k, v in (metadata or {}).items():
            if v is None:
                continue
            if k not in self.fields:
                raise UserInputError(
                    f"metadata field {k!r} is not known to this model "
                    f"(it knows {', '.join(self.fields)})"
                )
            t = torch.as_tensor(v, dtype=torch.float32).flatten()
            if t.numel() == 1:
                t = t.expand(batch_size)
            if t.numel() != batch_size:
                raise UserInputError(
                    f"metadata {k!r}: {t.numel()} values for a batch of {batch_size}"
                )
            lo, hi = _RANGES[k]
            ok = t.isnan() | ((t >= lo) & (t <= hi))
            if not bool(ok.all()):
                bad = t[~ok][0].item()
                unit = {"gsd": " m/px", "lat": " degrees", "lon": " degrees"}.get(k, "")
                raise UserInputError(f"metadata {k!r} = {bad}{unit} is outside {lo}..{hi}")
            out[k] = t
        return out

    def forward(
        self,
        metadata: dict[str, object] | None,
        batch_size: int | None = None,
        drop: dict[str, torch.Tensor] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``metadata``: field -> ``[B]`` values (or a scalar); missing fields and NaN entries use
        the null. ``drop``: a ``[B]`` bool tensor dropping every field of those samples, or a
        dict field -> ``[B]`` bool. Returns ``[B, out_dim]``."""
        if batch_size is None:
            sizes = {torch.as_tensor(v).numel() for v in (metadata or {}).values() if v is not None}
            batch_size = max(sizes) if sizes else 1
        values = self.check(metadata, batch_size)
        device = self.null.device
        total = torch.zeros(batch_size, self.null.shape[1], device=device, dtype=self.null.dtype)
        for i, f in enumerate(self.fields):
            null = self.null[i].expand(batch_size, -1)
            if f not in values:
                total = total + null
                continue
            v = values[f].to(device)
            missing = v.isnan()
            if isinstance(drop, torch.Tensor):
                missing = missing | drop.to(device).bool()
            elif isinstance(drop, dict) and f in drop:
                missing = missing | drop[f].to(device).bool()
            x = normalise(f, torch.nan_to_num(v, nan=1.0 if f == "gsd" else 0.0))
            if f == "day_of_year":  # cyclic: sin and cos of the angle, each embedded
                ang = 2 * math.pi * x
                feats = torch.cat(
                    [
                        sinusoidal_embedding(torch.sin(ang), self.config.freq_dim),
                        sinusoidal_embedding(torch.cos(ang), self.config.freq_dim),
                    ],
                    -1,
                )
            else:
                feats = sinusoidal_embedding(x, self.config.freq_dim)
            emb = self.mlps[f](feats.to(self.null.dtype))
            total = total + torch.where(missing[:, None], null, emb)
        return total
