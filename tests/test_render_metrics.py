"""PSNR and SSIM for renders (renderers.metrics), checked against a plain NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from earthgen.errors import UserInputError
from renderers.metrics import psnr, ssim


def _smooth_image(c: int, h: int, w: int) -> torch.Tensor:
    """``[c, h, w]`` float64 in [0, 1] with structure at several scales."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    chans = [
        0.5 + 0.25 * torch.sin(x / (2 + k)) * torch.cos(y / (3 + k)) + 0.2 * torch.sin((x + y) / 7)
        for k in range(c)
    ]
    return torch.stack(chans).clamp(0, 1)


def _ssim_reference(
    a: np.ndarray, b: np.ndarray, data_range: float, window: int, sigma: float
) -> float:
    """SSIM of ``[C, H, W]`` images: loop over every valid window, weighted moments in float64."""
    t = np.arange(window) - (window - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    w2 = np.outer(g, g)
    w2 /= w2.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    C, H, W = a.shape
    for ch in range(C):
        for i in range(H - window + 1):
            for j in range(W - window + 1):
                pa = a[ch, i : i + window, j : j + window]
                pb = b[ch, i : i + window, j : j + window]
                ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
                va, vb = (w2 * (pa - ma) ** 2).sum(), (w2 * (pb - mb) ** 2).sum()
                cov = (w2 * (pa - ma) * (pb - mb)).sum()
                num = (2 * ma * mb + c1) * (2 * cov + c2)
                vals.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_identical_images():
    img = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(img, img)).all() and psnr(img, img).shape == (2,)
    torch.testing.assert_close(ssim(img, img), torch.ones(2))


def test_psnr_known_mse():
    target = torch.rand(3, 8, 8) * 0.5
    assert psnr(target + 0.1, target).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    a = torch.full((4, 4, 3), 100, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 110  # MSE = 100 / 48 levels^2
    expect = 10 * math.log10(255**2 / (100 / 48))
    assert psnr(a, b, data_range=255).item() == pytest.approx(expect, rel=1e-6)
    assert psnr(a, b, data_range=255, channels_last=True).item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize(
    ("window", "sigma", "data_range"), [(11, 1.5, 1.0), (7, 1.0, 1.0), (5, 2.0, 255.0)]
)
def test_ssim_matches_numpy_reference(window, sigma, data_range):
    gen = torch.Generator().manual_seed(window)
    a = _smooth_image(3, 17, 19) * data_range
    noise = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    b = (a + 0.15 * data_range * noise).clamp(0, data_range)
    ref = _ssim_reference(a.numpy(), b.numpy(), data_range, window, sigma)
    got = ssim(a, b, data_range=data_range, window=window, sigma=sigma)
    assert got.shape == () and abs(got.item() - ref) < 1e-5
    got32 = ssim(a.float(), b.float(), data_range=data_range, window=window, sigma=sigma)
    assert got32.dtype == torch.float32 and abs(got32.item() - ref) < 1e-4


def test_layouts_and_batch_shapes():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 16, 20, generator=gen)
    y = torch.rand(2, 3, 4, 16, 20, generator=gen)
    s = ssim(x, y)
    assert s.shape == (2, 3)
    torch.testing.assert_close(ssim(x.movedim(-3, -1), y.movedim(-3, -1), channels_last=True), s)
    p = psnr(x.movedim(-3, -1), y.movedim(-3, -1), channels_last=True)
    torch.testing.assert_close(p, psnr(x, y))
    # a single-channel [H, W] image
    torch.testing.assert_close(ssim(x[0, 0, :1], y[0, 0, :1]), ssim(x[0, 0, 0], y[0, 0, 0]))
    with pytest.raises(UserInputError, match="channels_last"):
        ssim(x[0, 0].movedim(0, -1), y[0, 0].movedim(0, -1))  # [H, W, 4] read as [C, H, W]
    with pytest.raises(UserInputError):
        ssim(x, y[..., :-1])
    with pytest.raises(UserInputError):
        psnr(x, y, data_range=0)


@pytest.fixture
def one_thread():
    """Tiny float64 convolutions are dominated by thread start-up on busy machines: run on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ssim_gradcheck(one_thread):
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 2, 8, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.rand(1, 2, 8, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t: ssim(p, t, window=5), (a, b), eps=1e-6, atol=1e-6)


def test_ssim_decreases_with_noise_and_works_as_a_loss(one_thread):
    target = _smooth_image(3, 32, 32)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(target.shape, generator=gen, dtype=torch.float64)
    levels = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    vals = [ssim(target + lv * noise, target).item() for lv in levels]
    assert vals[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False)), vals
    p = [psnr(target + lv * noise, target).item() for lv in levels[1:]]
    assert all(a > b for a, b in zip(p, p[1:], strict=False))

    pred = (target + 0.2 * noise).float().requires_grad_(True)
    target = target.float()
    opt = torch.optim.Adam([pred], lr=0.02)
    start = ssim(pred, target).item()
    for _ in range(15):
        opt.zero_grad()
        loss = 1 - ssim(pred, target)
        loss.backward()
        opt.step()
    assert ssim(pred, target).item() > start + 0.1
