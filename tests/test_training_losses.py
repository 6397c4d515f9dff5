"""The training tasks' loss objects (earthgen.training.*Loss) and the shared loop
(earthgen.training.loop.fit): each loss is a finite scalar whose gradients reach its trainable
parameters only; the loop lowers the loss of a tiny task and resumes exactly."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from earthgen.training.loop import TaskLoss, fit, track_ema

torch.set_num_threads(1)


def check_loss(task_loss: TaskLoss, batch, every_module) -> None:
    """A finite scalar; after backward, grads on trained parameters only (and on some of them)."""
    loss = task_loss(batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trained = {id(p) for p in task_loss.parameters()}
    assert trained, "nothing trains"
    got = {id(p) for m in every_module for p in m.parameters() if p.grad is not None}
    assert got and got <= trained
    assert any(float(p.grad.abs().sum()) > 0 for p in task_loss.parameters() if p.grad is not None)


def _modules(pipe) -> list:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


@pytest.mark.parametrize(
    "task, kw",
    [
        ("image-vae", {}),
        ("image-ldm", {}),
        ("image-ldm", {"layout_input": "concat"}),
        ("image-control", {}),
        ("image-boxes", {}),
        ("image-boxes", {"freeze_unet": True, "box_raster_dim": 4, "box_loss_weight": 1.0}),
    ],
)
def test_image_losses(task, kw):
    from earthgen.datasets import world_batch, world_box_batch
    from earthgen.pipelines.image import EarthImagePipeline
    from earthgen.training.image import LOSSES, TrainConfig, load_components

    cfg = TrainConfig(task=task, test_run=True, **kw)
    torch.manual_seed(0)
    pipe = EarthImagePipeline(**load_components(cfg))
    task_loss = LOSSES[task](pipe, cfg)
    # world_box_batch(1, 10, ...): the first image holds 92 boxes
    batch = world_box_batch(1, 10, 2, 64) if task == "image-boxes" else world_batch(0, 0, 2, 64)
    check_loss(task_loss, batch, _modules(pipe))
    if kw.get("freeze_unet"):  # GLIGEN: the gated layers and conv_in's box-map columns only
        unet = pipe.unet
        names = {n for n, p in unet.named_parameters() if p.grad is not None}
        assert names and all(".fuser." in n or n == "conv_in.weight" for n in names)
        n_lat = int(unet.config.out_channels)
        assert float(unet.conv_in.weight.grad[:, :n_lat].abs().max()) == 0.0
        assert float(unet.conv_in.weight.grad[:, n_lat:].abs().max()) > 0.0


def test_image_latent_loss(tmp_path):
    from earthgen.pipelines.image import load_pipeline
    from earthgen.training.latent import ImageLatentLoss, init_latent_model
    from vae.taef2 import TAEF2

    torch.manual_seed(0)
    TAEF2(block_out_channels=(16, 16, 16, 16), latent_channels=8).save_pretrained(tmp_path / "t")
    init_latent_model(tmp_path / "init", vae=tmp_path / "t", channels=(32, 32), sample_size=8)
    pipe = load_pipeline(str(tmp_path / "init"))
    task_loss = ImageLatentLoss(pipe, snr_gamma=5.0)
    batch = {
        "latents": torch.randn(2, 8, 8, 8),
        "layout": torch.rand(2, pipe.layout_encoder.channels, 8, 8),
        "prompts": ["a satellite image of a forest", ""],
        "gsd": torch.tensor([0.5, 1.0]),
        "drop_meta": torch.tensor([False, True]),
    }
    check_loss(task_loss, batch, _modules(pipe))


def test_structure_vae_loss():
    from earthgen.training.vae3d import (
        SIZES,
        StructureVAELoss,
        batch_of,
        structure_crop,
        structure_pool,
    )
    from vae.structure import StructureVAE

    torch.manual_seed(0)
    model = StructureVAE(**SIZES["structure-vae"]["tiny"])
    pool = structure_pool(0, 1, 32)
    crops = [structure_crop(pool[0], 32, np.random.default_rng(k)) for k in range(2)]
    check_loss(StructureVAELoss(model, 1e-3), batch_of(crops, 32, "cpu"), [model])


def test_texture_vae_loss():
    from earthgen.training.vae3d import (
        SIZES,
        TextureVAELoss,
        random_cameras,
        reference_surfels,
        texture_input,
        texture_pool,
    )
    from vae.texture import TextureVAE

    (scene,) = texture_pool(0, 1, 16.0, 1.0, 0.5)
    torch.manual_seed(0)
    model = TextureVAE(in_channels=scene.appearance.shape[1], **SIZES["texture-vae"]["tiny"])
    rng = np.random.default_rng(0)
    batch = [
        {
            "scene": scene,
            "x": texture_input([scene], "cpu"),
            "reference": reference_surfels(scene, "cpu"),
            "cameras": random_cameras(scene, 1, 32, rng, "cpu"),
        }
    ]
    check_loss(TextureVAELoss(model, 1e-3, 32), batch, [model])


def test_structure_flow_loss():
    from earthgen.training.flow3d import StructureFlowLoss
    from flows.structure import StructureFlowDiT

    torch.manual_seed(0)
    model = StructureFlowDiT(
        grid_size=(8, 8, 4),
        latent_channels=3,
        patch_size=2,
        num_classes=5,
        hidden_size=32,
        depth=2,
        num_heads=2,
    )
    batch = {
        "grid": torch.randn(2, 4, 8, 8, 4),
        "semantic": torch.rand(2, 5, 16, 16),
        "image": torch.rand(2, 3, 32, 32),
    }
    check_loss(StructureFlowLoss(model, 2, 0.3), batch, [model])


def test_texture_flow_loss():
    from earthgen.training.flow3d import TextureFlowLoss, texture_batch
    from flows.texture import TextureFlowNet

    torch.manual_seed(0)
    model = TextureFlowNet(
        latent_channels=8, channels=16, num_blocks=1, num_classes=13, backend="torch"
    )
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(2):
        h = torch.randint(1, 4, (8, 8), generator=g)
        coords = [(x, y, z) for x in range(8) for y in range(8) for z in range(int(h[x, y]))]
        c = torch.tensor(coords, dtype=torch.int32)
        items.append(
            {
                "coords": c,
                "latent": torch.randn(len(c), 8, generator=g),
                "semantic": torch.rand(13, 16, 16, generator=g),
                "image": torch.rand(3, 16, 16, generator=g),
            }
        )
    x, sem, img = texture_batch(items, 8, "cpu")
    batch = {"latent": x, "semantic": sem, "image": img}
    check_loss(TextureFlowLoss(model, 2, 0.3), batch, [model])


# --- the shared loop ------------------------------------------------------------------------------


@dataclass
class TinyConfig:
    out: str
    steps: int = 40
    resume: bool = False
    task: str = "tiny-regression"
    save_every: int = 20
    log_every: int = 5
    keep_checkpoints: int = 2
    seed: int = 0


class RegressionLoss(TaskLoss):
    """Mean squared error of a linear model on noiseless targets of a fixed linear map."""

    trains = ("model",)

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)

    def __call__(self, batch, generator):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y)


def _fit_tiny(cfg: TinyConfig) -> dict:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    task_loss = RegressionLoss()
    opt = task_loss.prepare(acc, torch.optim.SGD(task_loss.param_groups(), lr=0.1))
    ema = track_ema(acc, task_loss, 0.9)
    w = torch.tensor([[0.5, -1.0, 0.25, 1.0]])

    def next_batch(step: int):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + step)
        x = torch.randn(8, 4, generator=g)
        return (x, x @ w.T + 0.1), g

    return fit(acc, cfg, task_loss, next_batch, opt, ema)


def _losses(out) -> list[float]:
    with open(out / "loss.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_fit_lowers_the_loss_and_resumes_exactly(tmp_path):
    s = _fit_tiny(TinyConfig(out=str(tmp_path / "a")))
    assert s["steps"] == 40 and s["started_at"] == 0
    full = _losses(tmp_path / "a")
    assert len(full) == 40 and all(np.isfinite(full))
    assert np.mean(full[-5:]) < 0.05 * np.mean(full[:5])
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == [
        "step_20",
        "step_40",
    ]
    _fit_tiny(TinyConfig(out=str(tmp_path / "b"), steps=20))
    s = _fit_tiny(TinyConfig(out=str(tmp_path / "b"), resume=True))
    assert s["started_at"] == 20
    assert _losses(tmp_path / "b") == full
