"""Dense control maps from layouts, images and heights (torch, any device).

All maps are ``[B, C, H, W]`` float tensors; class maps are ``[B, H, W]`` integer ids of
:mod:`earthgen.classes`. The null of a dense map is all zeros (the control branch sees nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        raise UserInputError(f"class ids must be in 0..{NUM_CLASSES - 1}, found {int(s.min())}..{int(s.max())}")
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
        raise UserInputError(f"image must be [B, 3, H, W] or [B, 1, H, W], got {tuple(image.shape)}")
    x = image.float()
    if x.shape[1] == 3:
        x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
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
