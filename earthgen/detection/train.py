"""Training and evaluation of :class:`earthgen.detection.BoxNet` on detection datasets.

Items are :class:`earthgen.data.DetectionItem` (image path, size, BoxSet in pixels), e.g. from
:func:`earthgen.data.read_detection_dataset`. Training draws random ``crop x crop`` windows
(padded when the image is smaller) with random flips and 90° rotations; batches are a pure
function of ``(seed, step)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from earthgen.boxes import BoxSet
from earthgen.detection.metrics import check_ap_method, evaluate_detections
from earthgen.detection.net import DETECT_TILE, BoxNet
from earthgen.errors import UserInputError


def load_rgb(path) -> np.ndarray:
    """An image file -> ``[H, W, 3]`` uint8 (PIL; any mode converted to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot read image {path}: {e}") from None


def _transform(img: np.ndarray, corners: np.ndarray, flip_x: bool, flip_y: bool, rot: int):
    """Flip / rotate an ``[H, W, 3]`` image and its ``[N, 4, 2]`` pixel corners together."""
    h, w = img.shape[:2]
    c = corners.copy()
    if flip_x:
        img = img[:, ::-1]
        c[..., 0] = w - c[..., 0]
    if flip_y:
        img = img[::-1]
        c[..., 1] = h - c[..., 1]
    for _ in range(rot):  # 90° counter-clockwise on screen: (x, y) -> (y, w - x)
        h, w = img.shape[:2]
        img = np.rot90(img)
        c = np.stack([c[..., 1], w - c[..., 0]], -1)
    return np.ascontiguousarray(img), c


class DetectionSamples:
    """Images (loaded once) and boxes of a dataset, addressable as training batches."""

    weights: np.ndarray | None = None  # per-image draw probabilities; None = uniform

    def __init__(
        self,
        items: Sequence,
        classes: Sequence[str] | None = None,
        progress: bool = False,
        balance: float = 0.0,
    ):
        """``balance`` R > 0: draw images with the probability of the rarest class they hold,
        ``count ** -R`` (:func:`earthgen.augment.layouts.class_weights`); 0 = uniform."""
        from tqdm import tqdm

        items = list(items)
        if not items:
            raise UserInputError("the detection dataset has no images")
        self.images = [
            load_rgb(it[0]) for it in tqdm(items, desc="loading images", disable=not progress)
        ]
        self.boxes = [it[2] for it in items]
        self.classes = (
            list(classes)
            if classes is not None
            else sorted({lab for b in self.boxes for lab in b.labels})
        )
        if not self.classes:
            raise UserInputError("the detection dataset has no boxes")
        if balance > 0:
            from collections import Counter

            from earthgen.augment.layouts import class_weights, image_weights

            counts = Counter(lab for b in self.boxes for lab in b.labels)
            self.weights = image_weights(
                [b.labels for b in self.boxes], class_weights(dict(counts), balance)
            )

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, seed: int, step: int, n: int, crop: int, augment: bool = True):
        """``n`` random crops -> (images ``[n, 3, crop, crop]`` in 0..1, list of BoxSets)."""
        rng = np.random.default_rng([seed, step])
        imgs, sets = [], []
        for _ in range(n):
            i = int(
                rng.integers(len(self.images))
                if self.weights is None
                else rng.choice(len(self.images), p=self.weights)
            )
            img, bs = self.images[i], self.boxes[i]
            h, w = img.shape[:2]
            x0 = int(rng.integers(0, max(w - crop, 0) + 1))
            y0 = int(rng.integers(0, max(h - crop, 0) + 1))
            win = np.zeros((crop, crop, 3), np.uint8)
            part = img[y0 : y0 + crop, x0 : x0 + crop]
            win[: part.shape[0], : part.shape[1]] = part
            c = bs.corners - np.array([x0, y0])
            centre = c.mean(axis=1) if len(c) else np.zeros((0, 2))
            keep = ((centre >= 0) & (centre < [min(crop, w - x0), min(crop, h - y0)])).all(axis=1)
            c, labels = c[keep], [lab for lab, k in zip(bs.labels, keep, strict=True) if k]
            if augment:
                win, c = _transform(
                    win, c, bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(4))
                )
            imgs.append(torch.from_numpy(win).permute(2, 0, 1).float() / 255.0)
            sets.append(BoxSet(c, labels))
        return torch.stack(imgs), sets


def train_detector(
    items: Sequence,
    classes: Sequence[str] | None = None,
    steps: int = 1500,
    batch_size: int = 8,
    crop: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    stride: int = 2,
    rotated: bool = True,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    samples: DetectionSamples | None = None,
) -> BoxNet:
    """Train a fresh :class:`BoxNet` on ``items``; saves it (and ``loss.csv``) under ``out``
    when given. ``crop`` (pixels, multiple of 16) is the training window size."""
    from tqdm import tqdm

    if crop % 16 or crop <= 0:
        raise UserInputError(f"crop must be a positive multiple of 16 pixels, got {crop}")
    if steps <= 0 or batch_size <= 0:
        raise UserInputError("steps and batch size must be > 0")
    data = samples or DetectionSamples(items, classes, progress=progress)
    torch.manual_seed(seed)
    model = BoxNet(
        classes=tuple(classes or data.classes), width=width, stride=stride, rotated=rotated
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    rows = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="train detector", disable=not progress)
    for step in bar:
        x, sets = data.batch(seed, step, batch_size, crop)
        loss = model.loss(x.to(device), sets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        rows.append((step, loss.item()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{rows[-1][1]:.3f}")
    model.eval()
    if out is not None:
        out = Path(out)
        model.save_pretrained(out)
        (out / "loss.csv").write_text("step,loss\n" + "".join(f"{s},{v:.6f}\n" for s, v in rows))
        (out / "train.json").write_text(
            json.dumps(
                {
                    "steps": steps,
                    "batch_size": batch_size,
                    "crop": crop,
                    "seed": seed,
                    "seconds": time.perf_counter() - t0,
                    "first_loss": rows[0][1],
                    "last_loss": rows[-1][1],
                },
                indent=2,
            )
        )
    model.loss_history = rows
    return model


def predict(
    model: BoxNet,
    items: Sequence,
    score_threshold: float = 0.05,
    images: list | None = None,
    progress: bool = False,
    tile: int = DETECT_TILE,
    overlap: int | None = None,
) -> list[BoxSet]:
    """Detections for every item's image -> BoxSets with scores. Images larger than ``tile``
    pixels run window by window (``overlap`` pixels, default a quarter of ``tile``), merged by
    NMS across the seams (:meth:`BoxNet.detect_tiled`); memory is one window's. ``images``:
    the ``[H, W, 3]`` uint8 arrays when already loaded (else read one at a time)."""
    from tqdm import tqdm

    if tile <= 0 or tile % 16:
        raise UserInputError(f"detection tile must be a positive multiple of 16 pixels, got {tile}")
    out = []
    for k, it in enumerate(tqdm(items, desc="detect", disable=not progress)):
        img = images[k] if images is not None else load_rgb(it[0])
        out.append(
            model.detect_tiled(img, tile=tile, overlap=overlap, score_threshold=score_threshold)
        )
    return out


def evaluate_detector(
    model: BoxNet,
    items: Sequence,
    iou_threshold: float = 0.5,
    rotated: bool | None = None,
    images: list | None = None,
    progress: bool = False,
    predictions: list | None = None,
    ap_method: str = "voc07",
    tile: int = DETECT_TILE,
) -> dict:
    """mAP@``iou_threshold`` of ``model`` on ``items`` (see :func:`evaluate_detections`), with
    ``ap_method`` ``"voc07"`` (11-point, DOTA's official; the default) or ``"all"``
    (all-point), named in the result's ``method``; ``predictions`` (from :func:`predict`) skips
    running the model again; large images are detected by ``tile`` px windows."""
    check_ap_method(ap_method)
    preds = predictions
    if preds is None:
        preds = predict(
            model, items, score_threshold=0.01, images=images, progress=progress, tile=tile
        )
    rot = model.config.rotated if rotated is None else rotated
    return evaluate_detections(
        preds,
        [it[2] for it in items],
        model.classes,
        iou_threshold,
        rotated=rot,
        ap_method=ap_method,
    )
