"""One control branch for many dense conditions (CRS-Diff's idea), not one ControlNet each.

Every condition (a layout one-hot, a road map, edges, height, ...) has a thin stem that builds a
feature pyramid at 1, 1/2, 1/4 and 1/8 of the image resolution. At every level the conditions'
features are summed, each times its weight; a shared, wider bottom-up path fuses the levels and
a zero-initialised conv hands the result to one ControlNet encoder (a trainable copy of the UNet's
down and mid blocks, diffusers' ``ControlNetModel``), whose residuals go into the UNet.

A condition's weight is its guidance scale at inference and 0 when it is absent or dropped
(training-time condition dropout, and the unconditional branch of classifier-free guidance),
so a missing condition contributes exactly nothing and the network is trained to work without it.
Inside the ControlNet the conditions travel as one packed tensor: their channels in
``condition_names`` order (sorted names), then one weight channel per condition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen_base.errors import UserInputError

# ControlNet / UNet fields this module passes through (the rest take diffusers' defaults).
_CN_KEYS = (
    "in_channels",
    "down_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "norm_num_groups",
    "class_embed_type",
    "projection_class_embeddings_input_dim",
    "num_class_embeds",
    "use_linear_projection",
    "transformer_layers_per_block",
    "only_cross_attention",
    "upcast_attention",
)


class MultiScaleFusion(nn.Module):
    """Packed conditions ``[B, sum(C_i) + N, H, W]`` -> fused features ``[B, C_out, H/2^L, W/2^L]``.

    Per condition, a thin stem (``stem_widths``) builds a pyramid; at each level the conditions'
    features are summed with their weights, projected (1x1) to ``widths`` and merged into a
    shared bottom-up path. Only the thin stems are paid per condition.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        widths: tuple[int, ...],
        out_channels: int,
        stem_widths: tuple[int, ...] | None = None,
    ):
        super().__init__()
        stem_widths = tuple(stem_widths or widths)
        if len(stem_widths) != len(widths):
            raise UserInputError(
                f"stem_widths {stem_widths} and fusion_widths {widths} need the same length"
            )
        self.channels = tuple(channels)
        self.stems = nn.ModuleList()
        for c in self.channels:
            levels = nn.ModuleList()
            prev = c
            for i, w in enumerate(stem_widths):
                stride = 1 if i == 0 else 2
                levels.append(
                    nn.Sequential(
                        nn.Conv2d(prev, w, 3, stride=stride, padding=1),
                        nn.SiLU(),
                        nn.Conv2d(w, w, 3, padding=1),
                        nn.SiLU(),
                    )
                )
                prev = w
            self.stems.append(levels)
        self.proj = nn.ModuleList(
            [nn.Conv2d(sw, w, 1) for sw, w in zip(stem_widths, widths, strict=True)]
        )
        self.down = nn.ModuleList(
            [
                nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1)
                for i in range(1, len(widths))
            ]
        )
        self.out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # an untrained branch changes nothing
        nn.init.zeros_(self.out.bias)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        n = len(self.channels)
        maps = torch.split(packed[:, :-n], list(self.channels), dim=1)
        weights = packed[:, -n:, 0, 0]  # [B, N] (constant maps)
        fused: list[torch.Tensor | float] = [0.0] * len(self.proj)
        for i, (x, levels) in enumerate(zip(maps, self.stems, strict=True)):
            w = weights[:, i, None, None, None]
            h = x
            for lvl, block in enumerate(levels):
                h = block(h)
                fused[lvl] = fused[lvl] + w * h  # weighted sum over conditions, per level
        g = self.proj[0](fused[0])
        for lvl in range(1, len(fused)):
            g = F.silu(self.down[lvl - 1](g)) + self.proj[lvl](fused[lvl])
        return self.out(g)


class FusedControlNet(ModelMixin, ConfigMixin):
    """A multi-condition ControlNet.

    Args:
        conditions: condition name -> channels, e.g. ``{"layout": 13, "roads": 1, "height": 1}``.
        stem_widths: widths of each condition's own thin stem per level (default: a quarter of
            ``fusion_widths``, at least 4): the only part whose cost grows with the conditions.
        fusion_widths: widths of the shared pyramid levels; level ``i`` is at ``1 / 2**i`` of the
            image resolution, and the last must match the latent resolution (4 levels for a VAE
            that downsamples 8x).
        controlnet_kwargs: keyword arguments of diffusers' ``ControlNetModel`` (UNet-shaped fields).
    """

    @register_to_config
    def __init__(
        self,
        conditions: dict[str, int] | None = None,
        fusion_widths: tuple[int, ...] = (16, 32, 96, 256),
        controlnet_kwargs: dict | None = None,
        stem_widths: tuple[int, ...] | None = None,
    ):
        super().__init__()
        conditions = dict(conditions or {"layout": 13})
        if not conditions or any(int(c) <= 0 for c in conditions.values()):
            raise UserInputError(
                f"conditions must map names to positive channel counts, got {conditions}"
            )
        # sorted: the order is part of the weights and config files store dicts with sorted keys
        self.condition_names = tuple(sorted(conditions))
        self.condition_channels = tuple(int(conditions[k]) for k in self.condition_names)
        kw = dict(controlnet_kwargs or {})
        packed = sum(self.condition_channels) + len(self.condition_names)
        self.controlnet = ControlNetModel(conditioning_channels=packed, **kw)
        width = self.controlnet.config.block_out_channels[0]
        self.downscale = 2 ** (len(fusion_widths) - 1)  # image pixels per latent pixel
        self.controlnet.controlnet_cond_embedding = MultiScaleFusion(
            self.condition_channels,
            tuple(fusion_widths),
            width,
            tuple(stem_widths) if stem_widths else tuple(max(4, w // 4) for w in fusion_widths),
        )

    @classmethod
    def from_unet(
        cls,
        unet,
        conditions: dict[str, int],
        fusion_widths: tuple[int, ...] = (16, 32, 96, 256),
        copy_weights: bool = True,
        stem_widths: tuple[int, ...] | None = None,
    ) -> FusedControlNet:
        """A branch shaped like ``unet`` (a ``UNet2DConditionModel``), its encoder initialised
        from the UNet's weights (the ControlNet recipe)."""
        kw = {k: unet.config[k] for k in _CN_KEYS if k in unet.config}
        model = cls(
            conditions=conditions,
            fusion_widths=fusion_widths,
            controlnet_kwargs=kw,
            stem_widths=stem_widths,
        )
        if copy_weights:
            own = model.controlnet.state_dict()
            src = {
                k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape
            }
            model.controlnet.load_state_dict(src, strict=False)
        return model

    def pack(
        self,
        conditions: dict[str, torch.Tensor | None],
        scales: dict[str, float] | None = None,
        drop: dict[str, torch.Tensor] | torch.Tensor | None = None,
        batch_size: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Pack dense conditions (name -> ``[B, C, H, W]`` or None) into the ControlNet input.

        ``scales``: per-condition weights (default 1). ``drop``: ``[B]`` bool dropping every
        condition of those samples, or name -> ``[B]`` bool. Missing conditions are zeros with
        weight 0. ``batch_size``/``size`` are needed only when no condition is given.
        """
        unknown = [
            k for k, v in conditions.items() if v is not None and k not in self.condition_names
        ]
        if unknown:
            raise UserInputError(
                f"unknown control condition(s) {unknown}; this model takes "
                f"{', '.join(self.condition_names)}"
            )
        given = {k: v for k, v in conditions.items() if v is not None}
        ref = next(iter(given.values()), None)
        b = ref.shape[0] if ref is not None else batch_size
        hw = tuple(ref.shape[-2:]) if ref is not None else size
        if b is None or hw is None:
            raise UserInputError("no control condition given: pass batch_size and size")
        f = self.downscale
        if hw[0] % f or hw[1] % f:
            raise UserInputError(
                f"control maps must have sides divisible by {f}, got {hw[1]}x{hw[0]}"
            )
        device = self.device
        maps, weights = [], []
        for name, c in zip(self.condition_names, self.condition_channels, strict=True):
            x = given.get(name)
            if x is None:
                maps.append(torch.zeros(b, c, *hw, device=device, dtype=self.dtype))
                weights.append(torch.zeros(b, device=device))
                continue
            if x.dim() != 4 or x.shape[0] != b or x.shape[1] != c or tuple(x.shape[-2:]) != hw:
                raise UserInputError(
                    f"control {name!r}: expected [{b}, {c}, {hw[0]}, {hw[1]}], got {list(x.shape)}"
                )
            w = torch.full((b,), float((scales or {}).get(name, 1.0)), device=device)
            if isinstance(drop, torch.Tensor):
                w = torch.where(drop.to(device).bool(), torch.zeros_like(w), w)
            elif isinstance(drop, dict) and name in drop:
                w = torch.where(drop[name].to(device).bool(), torch.zeros_like(w), w)
            keep = (w != 0).to(self.dtype)[:, None, None, None]  # a dropped map is also emptied
            maps.append(x.to(device=device, dtype=self.dtype) * keep)
            weights.append(w)
        wmap = torch.stack(weights, 1).to(self.dtype)[:, :, None, None].expand(-1, -1, *hw)
        return torch.cat([*maps, wmap], dim=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        packed: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        encoder_attention_mask: torch.Tensor | None = None,
    ):
        """Residuals for the UNet: ``(down_block_res_samples, mid_block_res_sample)``."""
        out = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=packed,
            conditioning_scale=conditioning_scale,
            class_labels=class_labels,
            return_dict=False,
        )
        return out[0], out[1]
