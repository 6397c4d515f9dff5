"""TileNet: the offline evaluator network of EarthGen.

No ImageNet/Inception weights can be downloaded here, so image metrics use a small network we
train ourselves on procedural world tiles (or any labelled data), and say so. One backbone, three
heads:

- segmentation into the class table -> control fidelity (mIoU of generated images vs the layout),
- scene classification (:data:`SCENES`) -> zero-shot classification accuracy of generated images
  (Text2Earth's Cls-OA idea: a classifier trained on real data must recognise the scene asked for),
- log10 GSD regression -> resolution fidelity (does the image look like the GSD it was asked for),

and its pooled backbone features give FID/KID ("FID-TileNet"; not comparable with Inception FID).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen.classes import NUM_CLASSES
from earthgen.world.caption import SCENES, scene_label  # noqa: F401  (the classifier's classes)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class TileNet(ModelMixin, ConfigMixin):
    """``forward(images [B, 3, H, W] in 0..1)`` -> dict with ``segmentation`` ``[B, K, H, W]``
    logits, ``scene`` ``[B, S]`` logits, ``log_gsd`` ``[B]`` (log10 m/px), ``features``
    ``[B, C]``."""

    @register_to_config
    def __init__(
        self, width: int = 32, num_classes: int = NUM_CLASSES, num_scenes: int = len(SCENES)
    ):
        super().__init__()
        w = width
        self.stages = nn.ModuleList(
            [_block(3, w, 1), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2)]
        )
        self.lateral = nn.Conv2d(8 * w, 2 * w, 1)
        self.seg = nn.Sequential(
            nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.Conv2d(2 * w, num_classes, 1)
        )
        self.scene = nn.Linear(8 * w, num_scenes)
        self.gsd = nn.Linear(8 * w, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - 0.5) / 0.25
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        h, w = images.shape[-2:]
        top = F.interpolate(
            self.lateral(feats[3]), size=feats[1].shape[-2:], mode="bilinear", align_corners=False
        )
        seg = self.seg(torch.cat([feats[1], top], dim=1))
        pooled = feats[3].mean(dim=(2, 3))
        return {
            "segmentation": F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False),
            "scene": self.scene(pooled),
            "log_gsd": self.gsd(pooled).squeeze(-1),
            "features": pooled,
        }

    def loss(self, batch: dict) -> torch.Tensor:
        out = self(batch["image"])
        return (
            F.cross_entropy(out["segmentation"], batch["semantic"])
            + 0.5 * F.cross_entropy(out["scene"], batch["scene"])
            + F.mse_loss(out["log_gsd"], torch.log10(batch["gsd"]))
        )


def train_tilenet(
    out,
    steps: int = 2000,
    batch_size: int = 16,
    resolution: int = 128,
    lr: float = 2e-3,
    seed: int = 1000,
    width: int = 32,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a TileNet on procedural tiles (world seeds disjoint from the image models' default
    training stream: ``seed`` offsets the sample indices) and save it to ``out``."""
    from pathlib import Path

    from tqdm import tqdm

    from earthgen.datasets import world_batch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    net = TileNet(width=width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for step in tqdm(range(steps), desc="evaluator", disable=not progress):
        b = world_batch(seed, step * batch_size, batch_size, resolution)
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        loss = net.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.save_pretrained(Path(out))
    return {"steps": steps, "first_losses": losses[:5], "last_losses": losses[-5:]}
