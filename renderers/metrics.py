"""Image quality metrics for renders: PSNR and SSIM, in torch and differentiable (``1 - ssim``
is a usable loss, as in 3DGS's ``0.8 * L1 + 0.2 * (1 - SSIM)``).

Layout: images are ``[..., C, H, W]`` (torch convention: ``[B, C, H, W]`` or ``[C, H, W]``) or a
single-channel ``[H, W]``. Our rasterizer returns channels-last ``[..., H, W, C]`` images; pass
``channels_last=True`` for those. Both metrics return one value per image: a tensor of the
leading (batch) shape, a 0-d tensor for a single image.

No LPIPS here: it needs pretrained network weights (VGG / AlexNet) that this package does not
ship; use the ``lpips`` package on the same tensors where it is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from earthgen_base.errors import UserInputError

SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_channels_first(
    pred: torch.Tensor, target: torch.Tensor, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as floating ``[..., C, H, W]`` (``[H, W]`` -> ``[1, H, W]``)."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise UserInputError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.ndim < 2:
        raise UserInputError(
            f"images must be [H, W] or [..., C, H, W], got shape {tuple(pred.shape)}"
        )
    if not pred.is_floating_point():
        pred = pred.float()
    if not target.is_floating_point():
        target = target.float()
    target = target.to(pred.dtype)
    if pred.ndim == 2:
        return pred[None], target[None]
    if channels_last:
        return pred.movedim(-1, -3), target.movedim(-1, -3)
    return pred, target


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, channels_last: bool = False
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, the MSE taken over
    each image's ``C, H, W``. ``pred``, ``target``: ``[..., C, H, W]`` (``[..., H, W, C]`` with
    ``channels_last``) or ``[H, W]``; returns ``[...]``. Identical images give ``+inf`` (no cap)."""
    if not data_range > 0:
        raise UserInputError(f"data_range must be > 0, got {data_range}")
    x, y = _as_channels_first(pred, target, channels_last)
    mse = (x - y).square().mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(
    window: int,
    sigma: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalised 1D Gaussian ``[window]`` centred on ``(window - 1) / 2``."""
    t = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    channels_last: bool = False,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004): Gaussian-weighted local means, variances and
    covariance (``window`` x ``window`` taps, std ``sigma`` pixels), constants
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``, per channel; the SSIM map
    is averaged over channels and the "valid" positions only (no padding: the map is
    ``(H - window + 1) x (W - window + 1)``, so H and W must be >= ``window``).

    ``pred``, ``target``: ``[..., C, H, W]`` (``[..., H, W, C]`` with ``channels_last``) or
    ``[H, W]``; returns ``[...]``, 1 for identical images. Differentiable in both arguments.
    """
    if window < 1 or sigma <= 0 or not data_range > 0:
        raise UserInputError(
            f"ssim needs window >= 1, sigma > 0, data_range > 0; got "
            f"{window}, {sigma}, {data_range}"
        )
    x, y = _as_channels_first(pred, target, channels_last)
    *lead, C, H, W = x.shape
    if H < window or W < window:
        raise UserInputError(
            f"images of {H}x{W} pixels are smaller than the {window}-pixel SSIM "
            "window; pass a smaller window (or channels_last=True for [H, W, C])"
        )
    x, y = x.reshape(-1, C, H, W), y.reshape(-1, C, H, W)
    g = gaussian_window(window, sigma, x.dtype, x.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    B = stack.shape[0]
    filt = stack.reshape(-1, 1, H, W)  # every map through the same separable blur
    filt = F.conv2d(F.conv2d(filt, g.view(1, 1, 1, window)), g.view(1, 1, window, 1))
    filt = filt.reshape(B, 5 * C, H - window + 1, W - window + 1)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.split(C, dim=1)  # each [B, C, H', W']
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    smap = num / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return smap.mean(dim=(-3, -2, -1)).reshape(lead)
