"""TAEF2 (vae.taef2): key-for-key load of the upstream weights, shapes, value conventions,
tiling, and reconstruction quality of the packaged copy on real fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from earthgen.models import MODELS_DIR
from vae.taef2 import TAEF2

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT.parent / "shared" / "weights" / "taef2"
FIXTURES = ROOT.parent / "shared" / "fixtures"
PACKAGED = MODELS_DIR / "image" / "vae"
# PSNR (dB) of the upstream TAEF2 on the top-left 384 x 384 crop of each fixture
# (shared/weights/taef2/SOURCES.md); the packaged copy must be within 0.3 dB
REFERENCE_PSNR = {
    "detection/2018_SJER_3_252000_4107000_image_477.tif": 27.3,
    "imagery/rasterio_RGB.byte.tif": 22.3,
    "detection/OSBS_029.tif": 20.3,
}


def _tiny() -> TAEF2:
    torch.manual_seed(0)
    return TAEF2(block_out_channels=(16, 16, 16, 16), latent_channels=8).eval()


def test_shapes_and_value_range():
    m = _tiny()
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = m.encode(x).latents
        y = m.decode(z).sample
    assert z.shape == (2, 8, 8, 6)
    assert y.shape == (2, 3, 64, 48)
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert m.downscale == 8
    with pytest.raises(ValueError):
        m.encode(torch.rand(1, 3, 60, 64))


def test_latent_normalisation_round_trip():
    m = TAEF2(
        block_out_channels=(16,) * 4,
        latent_channels=4,
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[0.5, 2.0, 1.0, 0.8],
    )
    z = torch.randn(3, 4, 5, 5)
    n = m.normalize_latents(z)
    assert torch.allclose(m.denormalize_latents(n), z, atol=1e-6)
    assert torch.allclose(n[:, 1], (z[:, 1] + 0.2) / 2.0)


def test_save_load_round_trip(tmp_path):
    m = _tiny()
    m.register_to_config(latents_mean=[0.5] * 8, latents_std=[2.0] * 8)
    m.save_pretrained(tmp_path)
    r = TAEF2.from_pretrained(tmp_path).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m(x).sample, r(x).sample)
    assert torch.allclose(
        r.normalize_latents(torch.ones(1, 8, 1, 1)), torch.full((1, 8, 1, 1), 0.25)
    )


@pytest.mark.skipif(not (PACKAGED / "config.json").is_file(), reason="packaged TAEF2 absent")
def test_tiled_round_trip_is_as_good_as_one_pass():
    """Tiles with cut-away margins (bounded memory for large images) reconstruct a real image as
    well as one pass, within 0.2 dB. (Not bit-equal: the pool branch's GroupNorm normalises over
    the whole input, so a tile sees slightly different statistics.)"""
    from PIL import Image

    arr = (
        np.asarray(
            Image.open(ROOT / "tests/data/real/neon_tree_crowns_det/images/OSBS_029.png").convert(
                "RGB"
            )
        ).astype(np.float32)
        / 255.0
    )
    h, w = (arr.shape[0] // 8) * 8, (arr.shape[1] // 8) * 8
    arr = arr[:h, :w]
    m = TAEF2.from_pretrained(str(PACKAGED)).float().eval()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1

    def psnr_of(y: torch.Tensor) -> float:
        return _psnr(((y[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), arr)

    with torch.no_grad():
        m.register_to_config(tile_size=4096)
        whole = psnr_of(m(x).sample)
        m.register_to_config(tile_size=48, tile_margin=32)  # several tiles on the excerpt
        z = m.encode(x).latents
        tiled = psnr_of(m.decode(z).sample)
    assert z.shape == (1, 32, h // 8, w // 8) and max(h, w) > 48
    assert tiled >= whole - 0.2


@pytest.mark.skipif(
    not (UPSTREAM / "taef2_encoder.pth").is_file(), reason="upstream TAEF2 weights absent"
)
def test_upstream_weights_load_key_for_key():
    ref = {}
    for part in ("encoder", "decoder"):
        sd = torch.load(UPSTREAM / f"taef2_{part}.pth", weights_only=True)
        ref[part] = sd
    m = TAEF2.from_taesd_weights(UPSTREAM / "taef2_encoder.pth", UPSTREAM / "taef2_decoder.pth")
    for part, sd in ref.items():
        ours = getattr(m, part).state_dict()
        assert set(ours) == set(sd)
        assert all(torch.equal(ours[k].half(), sd[k]) for k in sd)


@pytest.mark.skipif(not (PACKAGED / "config.json").is_file(), reason="packaged TAEF2 absent")
def test_packaged_copy_holds_the_upstream_layout():
    from safetensors.torch import load_file

    sd = load_file(str(PACKAGED / "diffusion_pytorch_model.safetensors"))
    assert sum(k.startswith("encoder.") for k in sd) == 79
    assert sum(k.startswith("decoder.") for k in sd) == 79
    if (UPSTREAM / "taef2_encoder.pth").is_file():
        up = torch.load(UPSTREAM / "taef2_encoder.pth", weights_only=True)
        assert all(torch.equal(sd[f"encoder.{k}"].half(), v) for k, v in up.items())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.skipif(
    not FIXTURES.is_dir() or not (PACKAGED / "config.json").is_file(),
    reason="real fixtures or packaged TAEF2 absent",
)
@pytest.mark.parametrize("name", sorted(REFERENCE_PSNR))
def test_packaged_reconstruction_psnr_on_real_fixtures(name):
    import rasterio

    with rasterio.open(FIXTURES / name) as r:
        arr = np.moveaxis(r.read()[:3], 0, -1)[:384, :384].astype(np.float32) / 255.0
    m = TAEF2.from_pretrained(str(PACKAGED)).float().eval()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        y = m(x).sample[0].permute(1, 2, 0).numpy()
    rec = np.round((y + 1) / 2 * 255).clip(0, 255) / 255.0
    assert _psnr(rec, arr) >= REFERENCE_PSNR[name] - 0.3
