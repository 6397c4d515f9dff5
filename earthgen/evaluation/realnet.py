"""RealNet: evaluators trained on REAL aerial images only (never on generated ones).

TileNet (:mod:`earthgen.evaluation.tilenet`) learns from procedural world tiles; these two small
CNNs learn from real data, so their scores on generated images say how "real" they look:

- :class:`SceneClassifier`: 16 UC Merced land-use scenes (``UCM_CLASSES``) from a 256x256 image at
  about 0.3 m/px (resized to 128x128 inside). Its pooled penultimate features ``[N, D]`` give
  FID/KID ("FID-RealNet"; not comparable with Inception FID).
- :class:`Segmenter`: per-pixel logits over :data:`SEG_CLASSES` (building, bare, road, grass,
  water as :mod:`earthgen.classes` ids), trained on the Dubai aerial masks (train tiles) plus the
  SpaceNet Las Vegas road mask (road pixels only, see :func:`train_segmenter`).
  :func:`to_seg_classes` maps an earthgen layout (OSM or world) onto the same 5 classes so that
  generated images can be scored against the layout they were made from.

Ceilings (:func:`real_ceiling`): the classifier's accuracy on held-apart real UC Merced images,
the segmenter's mIoU on the held-apart Dubai tile, and the FID/KID between real UC Merced train
and test features (the real-vs-real floor). Train with
``python -m earthgen.evaluation.realnet train --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen.classes import NUM_CLASSES
from earthgen.datasets import UCM_CLASSES
from earthgen.errors import UserInputError

IGNORE = 255  # same value as earthgen.datasets.IGNORE (unknown / not scored)

# segmenter classes, as earthgen class ids: building, bare, road (road_minor), grass, water
SEG_CLASSES: tuple[int, ...] = (1, 11, 4, 9, 7)
SEG_NAMES: tuple[str, ...] = ("building", "bare", "road", "vegetation", "water")

# earthgen id -> SEG_CLASSES id (or IGNORE). Roads and paths of every kind -> road. Parking lots
# -> road: the Dubai annotators paint paved open areas (parking, forecourts) as road, and both
# are grey asphalt from above. Forest, grass and farmland -> grass (Dubai's "vegetation" class).
# Background (unmapped land: anything) and railway (no such class in the training data) -> IGNORE.
_TO_SEG = np.full(256, IGNORE, dtype=np.uint8)
_TO_SEG[[1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]] = [1, 4, 4, 4, 4, 7, 9, 9, 9, 11, 4]


PACKAGED = "realnet"  # earthgen/assets/models/realnet/{classifier,segmenter}


def to_seg_classes(layout: np.ndarray) -> np.ndarray:
    """Map an earthgen class-id map ``[..., H, W]`` (uint8, ids of :mod:`earthgen.classes`) to
    :data:`SEG_CLASSES` ids, ``IGNORE`` (255) where the class has no counterpart (background 0,
    railway 6, ids already ``IGNORE``)."""
    lay = np.asarray(layout)
    if lay.size and (lay.min() < 0 or (lay.max() >= NUM_CLASSES and lay.max() != IGNORE)):
        raise UserInputError(
            f"layout ids must be earthgen class ids 0..{NUM_CLASSES - 1} or "
            f"{IGNORE}, got {int(lay.min())}..{int(lay.max())}"
        )
    return _TO_SEG[lay.astype(np.int64)]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, stride), _conv(cout, cout))


def _normalize(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserInputError(f"images must be [B, 3, H, W] RGB in 0..1, got {tuple(images.shape)}")
    return (images - 0.45) / 0.25


class SceneClassifier(ModelMixin, ConfigMixin):
    """UC Merced scene classifier. ``forward(images [B, 3, H, W] in 0..1)`` -> dict with ``logits``
    ``[B, K]`` and ``features`` ``[B, D]`` (pooled, D = ``widths[-1]``). Any input size is
    resized to ``input_size`` (the training view: 256 px at ~0.3 m/px, i.e. ~77 m across)."""

    @register_to_config
    def __init__(
        self,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        input_size: int = 128,
        class_names: tuple[str, ...] = UCM_CLASSES,
        dropout: float = 0.2,
    ):
        super().__init__()
        w = list(widths)
        self.stem = _conv(3, w[0], 2)
        self.stages = nn.Sequential(
            _block(w[0], w[0], 1), *[_block(w[i], w[i + 1], 2) for i in range(len(w) - 1)]
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(w[-1], len(class_names))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _normalize(images)
        s = int(self.config.input_size)
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        feats = self.stages(self.stem(x)).mean(dim=(2, 3))
        return {"logits": self.head(self.drop(feats)), "features": feats}


class Segmenter(ModelMixin, ConfigMixin):
    """Small U-Net. ``forward(images [B, 3, H, W] in 0..1)`` -> logits
    ``[B, len(SEG_CLASSES), H, W]`` (H, W any size: padded to a multiple of 16 inside). Channel k
    is earthgen id
    ``config.seg_classes[k]``."""

    @register_to_config
    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64, 96), seg_classes: tuple[int, ...] = SEG_CLASSES
    ):
        super().__init__()
        w = list(widths)
        self.stem = _conv(3, w[0], 2)  # H/2
        self.down = nn.ModuleList([_block(w[i], w[i + 1], 2) for i in range(len(w) - 1)])
        self.up = nn.ModuleList(
            [_block(w[i + 1] + w[i], w[i], 1) for i in reversed(range(len(w) - 1))]
        )
        self.out = nn.Conv2d(w[0], len(seg_classes), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        m = 2 ** len(self.down) * 2
        ph, pw = (-h) % m, (-w) % m
        x = _normalize(images)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        x = self.stem(x)
        skips = []
        for d in self.down:
            skips.append(x)
            x = d(x)
        for u, s in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = u(torch.cat([x, s], dim=1))
        x = F.interpolate(self.out(x), scale_factor=2, mode="bilinear", align_corners=False)
        return x[..., :h, :w]


# ---------------------------------------------------------------------------------------------
# evaluation API


def _packaged_dir() -> Path:
    return Path(str(resources.files("earthgen") / "assets" / "models" / PACKAGED))


def load_realnet(path: str | Path | None = None) -> tuple[SceneClassifier, Segmenter]:
    """Load ``(classifier, segmenter)`` in eval mode, float32, on CPU, from ``path`` (a folder with
    ``classifier/`` and ``segmenter/``; default: the packaged weights)."""
    root = Path(path) if path is not None else _packaged_dir()
    for sub in ("classifier", "segmenter"):
        if not (root / sub / "config.json").exists():
            raise UserInputError(
                f"no RealNet {sub} in {root} (expected {root / sub}/config.json); "
                "train one with: python -m earthgen.evaluation.realnet train --out DIR"
            )
    clf = SceneClassifier.from_pretrained(root / "classifier").float().eval()
    seg = Segmenter.from_pretrained(root / "segmenter").float().eval()
    return clf, seg


def _check_images(images: torch.Tensor) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserInputError(f"images must be [N, 3, H, W] RGB in 0..1, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        raise UserInputError("images must be float RGB in 0..1, got uint8 (divide by 255)")
    return images.float()


@torch.no_grad()
def classify(
    clf: SceneClassifier, images: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scene of each image ``[N, 3, H, W]`` in 0..1 (~0.3 m/px, ideally 256x256) -> ``([N]`` index
    into ``clf.config.class_names`` (= ``UCM_CLASSES``), ``[N, D]`` float32 features)."""
    from tqdm import tqdm

    images = _check_images(images)
    clf.eval()
    dev = next(clf.parameters()).device
    preds, feats = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="classify", disable=not progress):
        out = clf(images[i : i + batch_size].to(dev, torch.float32))
        preds.append(out["logits"].argmax(1).cpu().numpy())
        feats.append(out["features"].float().cpu().numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros((0, clf.head.in_features), np.float32)
    return np.concatenate(preds), np.concatenate(feats).astype(np.float32)


@torch.no_grad()
def segment(
    seg: Segmenter, images: torch.Tensor, batch_size: int = 4, progress: bool = False
) -> np.ndarray:
    """Per-pixel class of images ``[N, 3, H, W]`` in 0..1 -> ``[N, H, W]`` uint8 earthgen class ids
    from ``seg.config.seg_classes`` (= :data:`SEG_CLASSES`)."""
    from tqdm import tqdm

    images = _check_images(images)
    seg.eval()
    dev = next(seg.parameters()).device
    lut = torch.tensor(list(seg.config.seg_classes), dtype=torch.uint8)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="segment", disable=not progress):
        logits = seg(images[i : i + batch_size].to(dev, torch.float32))
        out.append(lut[logits.argmax(1).cpu()].numpy())
    if not out:
        return np.zeros((0, *images.shape[-2:]), np.uint8)
    return np.concatenate(out)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float in 0..1."""
    return torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).float() / 255.0


def _ucm(root, split: str):
    from earthgen.datasets import read_set

    samples = read_set("ucmerced", root=root, split=split)
    if not samples:
        raise UserInputError(f"no UC Merced images for split {split!r} under {root}")
    return samples


def _ucm_tensors(samples, classes: tuple[str, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """``([N, 3, 256, 256]`` float images, ``[N]`` class indices)."""
    imgs = torch.stack([_to_tensor(s.image) for s in samples])
    labels = np.array([classes.index(s.label) for s in samples], np.int64)
    return imgs, labels


def score_classifier(
    clf: SceneClassifier, root=None, split: str = "test", progress: bool = True
) -> dict:
    """Accuracy (overall and per class) of ``clf`` on UC Merced ``split``, and its features."""
    classes = tuple(clf.config.class_names)
    imgs, labels = _ucm_tensors(_ucm(root, split), classes)
    pred, feats = classify(clf, imgs, progress=progress)
    per = {
        c: float((pred[labels == k] == k).mean())
        for k, c in enumerate(classes)
        if (labels == k).any()
    }
    return {
        "accuracy": float((pred == labels).mean()),
        "n": len(labels),
        "per_class_accuracy": per,
        "features": feats,
    }


def _dubai_eval_samples(root, split: str = "test"):
    from earthgen.datasets import read_set

    samples = read_set("dubai", root=root, split=split)
    if not samples:
        raise UserInputError(f"no Dubai image+mask pairs for split {split!r} under {root}")
    return samples


def _dubai_majority(root, split: str) -> int:
    """The most frequent labelled class of the Dubai masks of ``split`` (masks only, no images)."""
    from earthgen.datasets import DUBAI_TEST_TILES, SET_DIRS, data_root, dubai_semantic

    counts = np.zeros(256, np.int64)
    for tile in sorted((data_root(root) / SET_DIRS["dubai"]).glob("tile_*")):
        is_test = tile.name in DUBAI_TEST_TILES
        if (split == "train" and is_test) or (split == "test" and not is_test):
            continue
        for m in sorted((tile / "masks").glob("*.png")):
            counts += np.bincount(dubai_semantic(m).ravel(), minlength=256)
    counts[IGNORE] = 0
    return int(counts.argmax())


def score_segmenter(
    seg: Segmenter,
    root=None,
    split: str = "test",
    progress: bool = True,
    train_split: str = "train",
    samples: list | None = None,
) -> dict:
    """mIoU (+ per-class IoU, pixel accuracy) of ``seg`` on the Dubai ``split`` (or the given
    ``samples`` of it), and the mIoU of predicting the most frequent class of the ``train_split``
    masks everywhere (the majority baseline)."""
    from tqdm import tqdm

    from earthgen.metrics import confusion_matrix

    samples = _dubai_eval_samples(root, split) if samples is None else samples
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for s in tqdm(samples, desc=f"segment dubai/{split}", disable=not progress):
        pred = segment(seg, _to_tensor(s.image)[None])[0]
        cm += confusion_matrix(pred, s.semantic, NUM_CLASSES, ignore_index=IGNORE)
    res = _miou_from_cm(cm)
    major = _dubai_majority(root, train_split)
    base = np.zeros_like(cm)
    base[:, major] = cm.sum(1)
    res["majority_class"] = major
    res["majority_baseline_miou"] = _miou_from_cm(base)["miou"]
    return res


def _miou_from_cm(cm: np.ndarray) -> dict:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    per = {
        name: (float(tp[c] / union[c]) if union[c] > 0 else float("nan"))
        for c, name in zip(SEG_CLASSES, SEG_NAMES, strict=True)
    }
    vals = [v for v in per.values() if v == v]
    return {
        "miou": float(np.mean(vals)) if vals else float("nan"),
        "per_class_iou": per,
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1.0)),
    }


def real_references(
    clf: SceneClassifier,
    seg: Segmenter,
    root=None,
    test_split: str = "test",
    train_split: str = "train",
    progress: bool = True,
) -> tuple[dict, np.ndarray, list]:
    """The evaluators' scores on held-apart REAL data, computed once: ``(ceiling, UC Merced test
    features [N, D], Dubai test samples)`` so that an evaluation reuses the features and samples
    (:func:`earthgen.evaluation.real.evaluate_real`). ``ceiling``: the classifier's accuracy on
    UC Merced ``test_split``, the segmenter's mIoU (+ per class) on the Dubai ``test_split``, and
    FID/KID between UC Merced train and test features (the real-vs-real floor)."""
    from earthgen.metrics import fid_from_features, kid_from_features

    test = score_classifier(clf, root, test_split, progress)
    train_feats = classify(
        clf,
        _ucm_tensors(_ucm(root, train_split), tuple(clf.config.class_names))[0],
        progress=progress,
    )[1]
    kid = kid_from_features(train_feats, test["features"], subsets=50, subset_size=100)
    dubai = _dubai_eval_samples(root, test_split)
    segres = score_segmenter(
        seg, root, test_split, progress, train_split=train_split, samples=dubai
    )
    ceiling = {
        "classifier_accuracy": test["accuracy"],
        "classifier_per_class_accuracy": test["per_class_accuracy"],
        "classifier_n": test["n"],
        "segmenter_miou": segres["miou"],
        "segmenter_per_class_iou": segres["per_class_iou"],
        "segmenter_pixel_accuracy": segres["pixel_accuracy"],
        "segmenter_majority_baseline_miou": segres["majority_baseline_miou"],
        "fid_realnet_train_vs_test": fid_from_features(train_feats, test["features"]),
        "kid_realnet_train_vs_test": kid[0],
        "kid_realnet_train_vs_test_std": kid[1],
        "feature_dim": int(train_feats.shape[1]),
        "n_train_features": int(len(train_feats)),
        "n_test_features": int(len(test["features"])),
    }
    return ceiling, test["features"], dubai


def real_ceiling(
    root=None,
    clf: SceneClassifier | None = None,
    seg: Segmenter | None = None,
    progress: bool = True,
) -> dict:
    """The ``ceiling`` of :func:`real_references` (``root``: the data folder, default that of
    :func:`earthgen.datasets.read_set`; evaluators: the packaged ones unless given)."""
    if clf is None or seg is None:
        c0, s0 = load_realnet()
        clf, seg = clf or c0, seg or s0
    return real_references(clf, seg, root, progress=progress)[0]


# ---------------------------------------------------------------------------------------------
# training


def _jitter(x: torch.Tensor, g: torch.Generator, amount: float = 0.1) -> torch.Tensor:
    """Small colour jitter of a batch ``[B, 3, H, W]`` in 0..1: brightness, contrast, saturation,
    per-channel gain (each about +-``amount``)."""
    b = x.shape[0]

    def u(*shape):
        return 1.0 + amount * (2 * torch.rand(*shape, generator=g) - 1)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(b, 1, 1, 1) + mean * u(b, 1, 1, 1)
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * u(b, 1, 1, 1) + gray
    x = x * u(b, 3, 1, 1) ** 0.5
    return x.clamp(0, 1)


def _warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 10% of ``steps``, then cosine decay to 0."""
    warm = max(1, steps // 10)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _step(
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    run: float,
    step: int,
) -> float:
    """One optimizer and schedule step on ``loss``; returns the running loss (EMA 0.98)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return 0.98 * run + 0.02 * loss.item() if step else loss.item()


def _flip_rot(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _classifier_batch(
    imgs: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, size: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random square crops (40-100% of the side, i.e. up to 2.5x zoom), resized to ``size``,
    flips, rot90 and colour jitter."""
    out = []
    side = imgs.shape[-1]
    for i in idx.tolist():
        c = int(side * (0.63 + 0.37 * torch.rand(1, generator=g).item()))
        y0, x0 = (int(torch.randint(0, side - c + 1, (1,), generator=g)) for _ in range(2))
        crop = imgs[i : i + 1, :, y0 : y0 + c, x0 : x0 + c].float() / 255.0
        crop = F.interpolate(
            crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        k, f = (
            int(torch.randint(0, 4, (1,), generator=g)),
            bool(torch.randint(0, 2, (1,), generator=g)),
        )
        out.append(_flip_rot(crop, k, f))
    return _jitter(torch.cat(out), g), labels[idx]


def train_classifier(
    out: Path,
    root=None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train :class:`SceneClassifier` on UC Merced train (768 images), AdamW + one-cycle schedule,
    label smoothing 0.1; save fp16 safetensors to ``out`` and return the recipe + held-out
    scores."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clf = SceneClassifier(class_names=tuple(UCM_CLASSES))
    samples = _ucm(root, "train")
    imgs = torch.stack(
        [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1) for s in samples]
    )
    labels = torch.tensor([list(UCM_CLASSES).index(s.label) for s in samples])
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=0.05)
    sched = _warmup_cosine(opt, steps)
    size = int(clf.config.input_size)
    t0 = time.time()
    clf.train()
    perm = torch.randperm(len(imgs), generator=g)
    pos, run = 0, 0.0
    bar = tqdm(range(steps), desc="train classifier", disable=not progress)
    for step in bar:
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(imgs), generator=g), 0
        x, y = _classifier_batch(imgs, labels, perm[pos : pos + batch_size], size, g)
        pos += batch_size
        loss = F.cross_entropy(clf(x)["logits"], y, label_smoothing=0.1)
        run = _step(opt, sched, loss, run, step)
        bar.set_postfix(loss=f"{run:.3f}")
    train_s = time.time() - t0
    clf.eval()
    acc32 = score_classifier(clf, root, "test", progress=False)["accuracy"]
    clf.half().save_pretrained(out)
    clf = SceneClassifier.from_pretrained(out).float().eval()
    acc16 = score_classifier(clf, root, "test", progress=False)["accuracy"]
    n_params = sum(p.numel() for p in clf.parameters())
    return {
        "model": "SceneClassifier",
        "params": n_params,
        "config": dict(clf.config),
        "data": "UC Merced train split (48 per class x 16 = 768 images)",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "AdamW wd 0.05, linear warm-up 10% then cosine, label smoothing 0.1",
        "augmentation": "random square crop 63-100% of side -> 128 px, "
        "rot90, flip, colour jitter +-10%",
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_s, 1),
        "test_accuracy_fp32": acc32,
        "test_accuracy_fp16": acc16,
        "weights_dtype": "float16",
    }


def _seg_pool(root) -> list:
    """Training samples of the segmenter: Dubai train tiles + SpaceNet (road pixels only)."""
    from earthgen.datasets import read_set

    dubai = read_set("dubai", root=root, split="train")
    try:
        space = read_set("spacenet", root=root, split="all")
    except (FileNotFoundError, UserInputError):
        space = []
    return dubai, space


def _seg_crop(
    img: np.ndarray, sem: np.ndarray, size: int, g: torch.Generator, scale: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop of ``size`` px after a random rescale in ``scale`` (nearest for labels)."""
    h, w = sem.shape
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
    c = min(int(round(size / s)), h, w)
    y0 = int(torch.randint(0, h - c + 1, (1,), generator=g))
    x0 = int(torch.randint(0, w - c + 1, (1,), generator=g))
    x = _to_tensor(img[y0 : y0 + c, x0 : x0 + c])[None]
    y = torch.from_numpy(np.ascontiguousarray(sem[y0 : y0 + c, x0 : x0 + c]))[None, None].float()
    if c != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=c > size
        )
        y = F.interpolate(y, size=(size, size), mode="nearest")
    k, f = int(torch.randint(0, 4, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
    return _flip_rot(x, k, f), _flip_rot(y, k, f).long()[:, 0]


def train_segmenter(
    out: Path,
    root=None,
    steps: int = 1600,
    batch_size: int = 12,
    size: int = 160,
    lr: float = 3e-3,
    seed: int = 0,
    spacenet_share: float = 0.15,
    progress: bool = True,
) -> dict:
    """Train :class:`Segmenter` on the Dubai train tiles (+ SpaceNet road mask: of each SpaceNet
    crop only the road pixels are scored, the rest is IGNORE since it mixes all classes) with a
    class-balanced (inverse square-root frequency) cross-entropy; save fp16 weights to ``out``."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    seg = Segmenter()
    lut = np.full(256, IGNORE, np.int64)
    lut[list(SEG_CLASSES)] = np.arange(len(SEG_CLASSES))
    dubai, space = _seg_pool(root)
    d_img = [s.image for s in dubai]
    d_sem = [lut[s.semantic].astype(np.uint8) for s in dubai]
    s_img = [s.image for s in space]
    s_sem = [lut[s.semantic].astype(np.uint8) for s in space]
    counts = sum(np.bincount(m.ravel(), minlength=256)[: len(SEG_CLASSES)] for m in d_sem).astype(
        np.float64
    )
    freq = counts / counts.sum()
    weights = torch.tensor((freq + 1e-3) ** -0.5, dtype=torch.float32)
    weights = weights / (weights * torch.tensor(freq, dtype=torch.float32)).sum()
    # choose Dubai images by area, so each pixel is equally likely
    area = np.array([m.size for m in d_sem], np.float64)
    p_img = torch.tensor(area / area.sum())
    opt = torch.optim.AdamW(seg.parameters(), lr=lr, weight_decay=1e-4)
    sched = _warmup_cosine(opt, steps)
    t0 = time.time()
    seg.train()
    run = 0.0
    bar = tqdm(range(steps), desc="train segmenter", disable=not progress)
    for step in bar:
        xs, ys = [], []
        for _ in range(batch_size):
            if s_img and torch.rand(1, generator=g).item() < spacenet_share:
                i = int(torch.randint(0, len(s_img), (1,), generator=g))
                x, y = _seg_crop(s_img[i], s_sem[i], size, g, (0.22, 0.45))
            else:
                i = int(torch.multinomial(p_img, 1, generator=g))
                x, y = _seg_crop(d_img[i], d_sem[i], size, g, (0.5, 1.5))
            xs.append(x)
            ys.append(y)
        x, y = _jitter(torch.cat(xs), g), torch.cat(ys)
        loss = F.cross_entropy(seg(x), y, weight=weights, ignore_index=IGNORE)
        run = _step(opt, sched, loss, run, step)
        bar.set_postfix(loss=f"{run:.3f}")
    train_s = time.time() - t0
    seg.eval()
    r32 = score_segmenter(seg, root, "test", progress=False)
    seg.half().save_pretrained(out)
    seg = Segmenter.from_pretrained(out).float().eval()
    r16 = score_segmenter(seg, root, "test", progress=False)
    return {
        "model": "Segmenter",
        "params": sum(p.numel() for p in seg.parameters()),
        "config": dict(seg.config),
        "classes": dict(zip(SEG_NAMES, SEG_CLASSES, strict=True)),
        "data": f"Dubai train tiles ({len(dubai)} pairs) + SpaceNet Vegas ({len(space)} tile, "
        "road pixels only)",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "crop": size,
        "lr": lr,
        "spacenet_share": spacenet_share,
        "optimizer": "AdamW wd 1e-4, linear warm-up 10% then cosine, "
        "CE with inverse-sqrt-frequency weights",
        "class_weights": dict(zip(SEG_NAMES, [round(float(w), 3) for w in weights], strict=True)),
        "augmentation": "random rescale 0.5-1.5 "
        "(SpaceNet 0.3 m/px: 0.22-0.45, i.e. to ~0.7-1.4 m/px), "
        "crop, rot90, flip, colour jitter +-10%",
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_s, 1),
        "test_miou_fp32": r32["miou"],
        "test_miou_fp16": r16["miou"],
        "test_per_class_iou": r16["per_class_iou"],
        "test_pixel_accuracy": r16["pixel_accuracy"],
        "majority_baseline_miou": r16["majority_baseline_miou"],
        "weights_dtype": "float16",
    }


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(obj, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m earthgen.evaluation.realnet {train,ceiling} ...``"""
    ap = argparse.ArgumentParser(
        prog="python -m earthgen.evaluation.realnet", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the classifier and/or the segmenter on real data")
    tr.add_argument("--out", required=True, help="output folder (gets classifier/ and segmenter/)")
    tr.add_argument("--root", default=None, help="data folder (default: that of earthgen.datasets)")
    tr.add_argument("--only", choices=["classifier", "segmenter"], default=None)
    tr.add_argument("--clf-steps", type=int, default=1000)
    tr.add_argument("--seg-steps", type=int, default=1600)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--ceiling-json", default=None, help="also write real_ceiling() here")
    ce = sub.add_parser("ceiling", help="print real_ceiling() of a trained RealNet as JSON")
    ce.add_argument("--path", default=None, help="RealNet folder (default: the packaged weights)")
    ce.add_argument("--root", default=None)
    ce.add_argument("--json", default=None, help="also write it to this file")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        torch.set_num_threads(a.threads)
        out = Path(a.out)
        if a.only in (None, "classifier"):
            card = train_classifier(out / "classifier", a.root, steps=a.clf_steps, seed=a.seed)
            _write_json(out / "classifier" / "card.json", card)
            print(json.dumps({k: v for k, v in card.items() if k != "config"}, default=str))
        if a.only in (None, "segmenter"):
            card = train_segmenter(out / "segmenter", a.root, steps=a.seg_steps, seed=a.seed)
            _write_json(out / "segmenter" / "card.json", card)
            print(json.dumps({k: v for k, v in card.items() if k != "config"}, default=str))
        if a.ceiling_json:
            clf, seg = load_realnet(out)
            _write_json(Path(a.ceiling_json), real_ceiling(a.root, clf, seg))
    else:
        clf, seg = load_realnet(a.path)
        res = real_ceiling(a.root, clf, seg)
        if a.json:
            _write_json(Path(a.json), res)
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
