"""`python -m earthgen.models finetune-vae-decoder`: only the decoder moves, on procedural tiles or
on a detection dataset's own images, and the reconstruction error of those images falls."""

from __future__ import annotations

import json

import numpy as np
import torch
from tiny_models import get_dummy_components

from earthgen.data import write_detection_dataset


def test_decoder_finetune_on_a_dataset_keeps_the_encoder_and_lowers_the_error(tmp_path):
    from diffusers import AutoencoderKL

    from earthgen.augment.world import world_items
    from earthgen.pipelines.image import EarthImagePipeline
    from earthgen.training.build import finetune_vae_decoder
    from earthgen.training.image import DetectionData

    items = world_items(
        4, seed=1, size=64, folder=tmp_path / "img", gsd=(0.5, 0.6), extent_m=900.0, progress=False
    )
    write_detection_dataset(items, tmp_path / "data", "dota", images="copy")
    torch.manual_seed(0)
    EarthImagePipeline(**get_dummy_components(control=False)).save_pretrained(tmp_path / "p")
    before = AutoencoderKL.from_pretrained(tmp_path / "p" / "vae")
    x = DetectionData(str(tmp_path / "data"), 64).batch(7, 0, 4)["image"] * 2 - 1  # [4, 3, 64, 64]

    def err(vae) -> float:
        with torch.no_grad():
            return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())

    s = finetune_vae_decoder(
        tmp_path / "p",
        tmp_path / "v",
        steps=40,
        batch_size=4,
        resolution=64,
        lr=3e-3,
        data=str(tmp_path / "data"),
    )
    after = AutoencoderKL.from_pretrained(tmp_path / "v")
    assert s["steps"] == 40 and s["data"] == str(tmp_path / "data")
    assert json.loads((tmp_path / "v" / "decoder_finetune.json").read_text())["steps"] == 40
    a, b = before.state_dict(), after.state_dict()
    enc = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in a if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)  # the latent space is unchanged
    assert any(not torch.equal(a[k], b[k]) for k in dec)
    assert err(after) < 0.8 * err(before)
    assert np.isfinite(s["last_losses"]).all()
