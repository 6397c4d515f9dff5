"""Dense control maps from layouts, images and heights (torch, any device).

All maps are ``[B, C, H, W]`` float tensors; class maps are ``[B, H, W]`` integer ids of
:mod:`earthgen.classes`. The null of a dense map is all zeros (the control branch sees nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from earthgen.classes import CLASS_ID, NUM_CLASSES
from earthgen.errors import UserInputError

ROAD_CLASSES = ("road_major", "road_secondary", "road_minor", "path", "railway")


def _ids(semantic: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(semantic)
    if s.dim() == 2:
        s = s[None]
    if s.dim() != 3:
        raise UserInputError(f"a class map must be [H, W] or [B, H, W], got shape {tuple(s.shape)}")
    if s.dtype.is_floating_point:
        raise UserInputError("a class map must hold integer class ids, got floats")
    s = s.long()
    if s.numel() and (int(s.min()) < 0 or int(s.max()) >= NUM_CLASSES):
        raise UserInputError(
            f"class ids must be in 0..{NUM_CLASSES - 1}, found {int(s.min())}..{int(s.max())}"
        )
    return s


def one_hot(semantic: torch.Tensor) -> torch.Tensor:
    """Class ids ``[B, H, W]`` -> one-hot ``[B, K, H, W]`` (K = number of classes)."""
    return F.one_hot(_ids(semantic), NUM_CLASSES).permute(0, 3, 1, 2).float()


def road_map(semantic: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 on roads, paths and railways, 0 elsewhere."""
    s = _ids(semantic)
    ids = torch.tensor([CLASS_ID[c] for c in ROAD_CLASSES], device=s.device)
    return torch.isin(s, ids)[:, None].float()


def class_boundaries(semantic: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 where a pixel's 4-neighbour has another class (layout edges)."""
    s = _ids(semantic)
    e = torch.zeros_like(s, dtype=torch.bool)
    e[:, 1:] |= s[:, 1:] != s[:, :-1]
    e[:, :-1] |= s[:, 1:] != s[:, :-1]
    e[:, :, 1:] |= s[:, :, 1:] != s[:, :, :-1]
    e[:, :, :-1] |= s[:, :, 1:] != s[:, :, :-1]
    return e[:, None].float()


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Image ``[B, 3, H, W]`` in 0..1 -> gradient magnitude of its luminance ``[B, 1, H, W]``,
    scaled to 0..1 per image (an offline stand-in for HED/Canny edge maps)."""
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise UserInputError(
            f"image must be [B, 3, H, W] or [B, 1, H, W], got {tuple(image.shape)}"
        )
    x = image.float()
    if x.shape[1] == 3:
        x = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=x.device) / 8
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    mag = torch.sqrt((g**2).sum(1, keepdim=True) + 1e-12) - 1e-6  # differentiable at 0, flat -> 0
    return mag / mag.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)


def normalise_height(height: torch.Tensor, scale_m: float = 50.0) -> torch.Tensor:
    """Height ``[B, 1, H, W]`` (m) -> ``(h - median) / scale_m`` clipped to [-1, 1]: relative
    relief, invariant to the absolute elevation of the tile."""
    if height.dim() != 4 or height.shape[1] != 1:
        raise UserInputError(f"height must be [B, 1, H, W], got {tuple(height.shape)}")
    med = height.flatten(1).median(dim=1).values[:, None, None, None]
    return ((height - med) / scale_m).clamp(-1.0, 1.0)


class LayoutMapEncoder(ModelMixin, ConfigMixin):
    """A class map -> the layout input of a UNet that takes it concatenated to its latent.

    ``forward(semantic [B, H, W] ids | None, batch_size, downscale, drop [B] bool)`` ->
    ``[B, num_classes, H / downscale, W / downscale]``: the fraction of each latent cell's pixels
    in each class (an area-averaged one-hot, so a 2-pixel street in an 8-pixel cell reads 0.25).
    Each cell sums to 1 where a layout is given and to 0 where it is absent or dropped (the null
    layout: classifier-free guidance's unconditional branch and training-time dropout). There are
    no weights: the UNet's first convolution, whose layout columns start at zero, learns the rest.
    """

    @register_to_config
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        if num_classes != NUM_CLASSES:
            raise UserInputError(
                f"this layout encoder was made for {num_classes} classes; "
                f"EarthGen has {NUM_CLASSES}"
            )
        # the ids the map's channels stand for (also gives the component the weights file
        # diffusers loads)
        self.register_buffer("class_ids", torch.arange(num_classes))

    @property
    def channels(self) -> int:
        """Channels of the map it makes (the UNet input channels it needs)."""
        return int(self.config.num_classes)

    def forward(
        self,
        semantic: torch.Tensor | None,
        batch_size: int,
        downscale: int,  # [B, H, W] int
        drop: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Class fractions per latent cell ``[B, K, H/f, W/f]``; ``semantic`` None gives zeros of
        ``size`` (pixels ``(H, W)``)."""
        dev = self.class_ids.device
        if semantic is None:
            if size is None:
                raise ValueError("give a class map or the image size")
            h, w = size
            return torch.zeros(
                batch_size, self.channels, h // downscale, w // downscale, device=dev
            )
        s = _ids(semantic).to(dev)
        if s.shape[0] == 1 and batch_size > 1:
            s = s.expand(batch_size, -1, -1)
        if s.shape[0] != batch_size:
            raise UserInputError(f"got {s.shape[0]} layouts for {batch_size} images")
        h, w = s.shape[-2:]
        if h % downscale or w % downscale:
            raise UserInputError(
                f"a {w}x{h} layout does not divide into {downscale}-pixel latent cells"
            )
        m = F.avg_pool2d((s[:, None] == self.class_ids[None, :, None, None]).float(), downscale)
        if drop is not None:
            m = m * (~drop.to(dev).bool()).float()[:, None, None, None]
        return m
