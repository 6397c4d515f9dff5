"""Inpainting and outpainting keep the input exactly outside the mask and its feather band.

A real image excerpt goes through a tiny random :class:`EarthImagePipeline` (random VAE: its
decode looks nothing like the input, so any leak of the decode outside the band would show).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import get_dummy_components

from earthgen.errors import UserInputError
from earthgen.pipelines.image import (
    MASK_FEATHER_PX,
    EarthImagePipeline,
    feather_mask,
    outpaint_canvas,
)

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (  # a real RGB excerpt in the repo first; the shared fixture copy when present
    REPO / "tests/data/real/neon_tree_crowns_det/images/OSBS_029.png",
    REPO / "tests/data/real/ucmerced_landuse_subset/forest/forest07.jpg",
    Path("/work/shared/fixtures/imagery/rasterio_RGB.byte.tif"),
)


def real_rgb(size: int = 64) -> np.ndarray:
    """A ``[size, size, 3]`` uint8 crop of a real aerial image (skips when none is available)."""
    for p in CANDIDATES:
        if not p.exists():
            continue
        if p.suffix == ".tif":
            import rasterio

            with rasterio.open(p) as ds:
                arr = np.moveaxis(ds.read((1, 2, 3)), 0, -1)
        else:
            from PIL import Image

            arr = np.asarray(Image.open(p).convert("RGB"))
        h, w = arr.shape[:2]
        y, x = (h - size) // 2, (w - size) // 2
        crop = np.ascontiguousarray(arr[y : y + size, x : x + size]).astype(np.uint8)
        if crop.shape == (size, size, 3) and crop.std() > 5:
            return crop
    pytest.skip("no real RGB test image available")


def distance_to_mask(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[H, W]`` of every pixel to the nearest masked (> 0) pixel."""
    ys, xs = np.nonzero(mask > 0)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return np.sqrt(d2.min(-1))


@pytest.fixture(scope="module")
def pipe():
    p = EarthImagePipeline(**get_dummy_components())
    p.set_progress_bar_config(disable=True)
    return p


def edit(pipe, image, mask, output_type: str, **kw):
    return pipe(
        prompt="forest",
        image=image,
        mask=mask,
        num_inference_steps=3,
        output_type=output_type,
        generator=torch.Generator().manual_seed(3),
        **kw,
    ).images


def check_kept(
    out_u8: np.ndarray, out_f: np.ndarray, rgb: np.ndarray, mask: np.ndarray, band: int
) -> None:
    """Outside mask + ``band`` px: the uint8 output is the input bit for bit and the float output
    is the input / 255 exactly; inside the mask the image was repainted."""
    far = distance_to_mask(mask) > band
    assert far.sum() > 0.2 * far.size
    np.testing.assert_array_equal(out_u8[far], rgb[far])
    np.testing.assert_array_equal(out_f[far], (rgb.astype(np.float32) / 255.0)[far])
    hole = mask > 0
    assert np.abs(out_f[hole] - rgb[hole] / 255.0).mean() > 0.02


def test_feather_mask_band():
    m = torch.zeros(1, 1, 40, 40)
    m[..., 10:20, 12:25] = 1.0
    f = feather_mask(m, 8)[0, 0].numpy()
    d = distance_to_mask(m[0, 0].numpy())
    assert np.all(f[d == 0] == 1.0) and np.all(f[d > 8] == 0.0)
    band = (d > 0) & (d <= 8)
    assert np.all((f[band] > 0) & (f[band] < 1))
    assert np.all(np.diff(f[15, 25:34]) < 0)  # falls off with the distance
    torch.testing.assert_close(feather_mask(m, 0), m)
    assert MASK_FEATHER_PX <= 8


@pytest.mark.parametrize("band", [MASK_FEATHER_PX, 0])
def test_inpainting_keeps_pixels_outside_mask_and_band(pipe, band):
    rgb = real_rgb()
    mask = np.zeros((64, 64), np.float32)
    mask[20:41, 13:37] = 1.0  # not aligned with the 8-px latent grid
    kw = {} if band == MASK_FEATHER_PX else {"mask_feather": band}
    out_pil = edit(pipe, rgb, mask, "pil", **kw)[0]
    out_np = edit(pipe, rgb, mask, "np", **kw)[0]
    check_kept(np.asarray(out_pil), out_np, rgb, mask, band)
    if band:  # the seam is soft: the band holds blends of input and decode
        ring = (distance_to_mask(mask) > 0) & (distance_to_mask(mask) <= band)
        assert np.abs(out_np[ring] - rgb[ring] / 255.0).max() > 1e-3
    # a PIL input and several images per prompt: each is pasted into the same input
    from PIL import Image

    outs = edit(pipe, Image.fromarray(rgb), mask, "np", num_images_per_prompt=2, **kw)
    assert outs.shape == (2, 64, 64, 3)
    for o in outs:
        check_kept(np.clip(np.rint(o * 255), 0, 255).astype(np.uint8), o, rgb, mask, band)


def test_outpainting_keeps_the_original(pipe):
    rgb = real_rgb(48)
    canvas, mask, (row, col) = outpaint_canvas(rgb, left=16, right=0, top=8, bottom=8, multiple=8)
    assert canvas.shape == (64, 64, 3) and (row, col) == (8, 16)
    out_pil = np.asarray(edit(pipe, canvas, mask, "pil")[0])
    out_np = edit(pipe, canvas, mask, "np")[0]
    check_kept(out_pil, out_np, canvas, mask, MASK_FEATHER_PX)
    # the original's pixels farther than the band from the new borders are unchanged
    inner = (slice(row + 8, row + 48 - 8), slice(col + 8, col + 48))  # no border on the right
    np.testing.assert_array_equal(out_pil[inner], rgb[8:40, 8:48])
    # with no band, the whole original is kept
    whole = np.asarray(edit(pipe, canvas, mask, "pil", mask_feather=0)[0])
    np.testing.assert_array_equal(whole[row : row + 48, col : col + 48], rgb)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_mask_feather(pipe, bad):
    rgb = real_rgb()
    with pytest.raises(UserInputError, match="mask_feather"):
        edit(pipe, rgb, np.ones((64, 64), np.float32), "np", mask_feather=bad)
