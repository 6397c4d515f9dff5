"""New box layouts sampled from a detection dataset (AeroGen-style layout augmentation).

Each new layout starts from a real image's boxes (sources drawn with weights that favour images
holding rare classes) and is changed by, in order:

- **rotation**: the whole layout turned by 90°, 180° or 270° and/or mirrored (square images),
- **jitter**: every box moved by a fraction of its size, rescaled a little and, for rotated
  datasets, turned by a small angle,
- **copy-paste**: object boxes taken from other images, rare classes first (class weights
  ``count ** -rebalance``), placed at random free spots (no overlap with the boxes already
  there), turned to a random angle for rotated datasets.

*Upright* classes are never turned by jitter or copy-paste: by default, in a rotated dataset,
the classes whose every box is axis-aligned (round objects such as storage tanks are labelled
with upright squares; a turned square would teach a detector angles that no real label has).
Whole-layout 90° turns and mirrors keep such boxes axis-aligned.

Boxes stay inside the image; pasted boxes never overlap the others. Layouts are pure functions of
``(seed, index)``, recorded in the manifest so every synthetic image can be regenerated.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from earthgen.boxes import BoxSet, box_iou, corners_to_obb, obb_to_corners
from earthgen.data._common import boxes_axis_aligned, is_axis_aligned
from earthgen.errors import UserInputError


@dataclass
class LayoutConfig:
    """Knobs of :func:`sample_layouts` (fractions are of a box's own size)."""

    jitter: float = 0.15  # centre shift, fraction of the box size (std)
    scale_jitter: float = 0.1  # log-scale std
    angle_jitter_deg: float = 10.0  # rotated datasets only
    rotate: bool = True  # whole-layout 90° turns and mirrors (square images)
    copy_paste: int = 3  # boxes pasted per layout (at most; 0 = off)
    rebalance: float = 1.0  # class weights count ** -rebalance (0 = natural frequencies)
    rotated: bool | None = None  # None: True when the dataset has rotated boxes
    upright: Sequence[str] | None = None  # classes never turned; None: those always axis-aligned

    def validate(self) -> None:
        for name in ("jitter", "scale_jitter", "angle_jitter_deg", "rebalance"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UserInputError(
                    f"{name.replace('_', '-')} must be a finite number >= 0, got {v}"
                )
        if self.copy_paste < 0:
            raise UserInputError(f"copy-paste must be >= 0, got {self.copy_paste}")


@dataclass
class Layout:
    """A layout to generate: image ``size`` (width, height) pixels, ``boxes`` (pixel corners),
    the index of the real ``source`` image, the ``seed`` that made it and the ``ops`` applied;
    ``turn`` (quarter turns clockwise) and ``mirror``: how the source was turned (mirror first),
    ``pasted``: how many boxes, the last ones, were pasted."""

    size: tuple[int, int]
    boxes: BoxSet
    source: int
    seed: int
    ops: list[str] = field(default_factory=list)
    turn: int = 0
    mirror: bool = False
    pasted: int = 0


def class_weights(counts: dict[str, int], rebalance: float) -> dict[str, float]:
    """Sampling weight per class ``count ** -rebalance``, normalised to sum 1."""
    w = {c: float(n) ** -rebalance for c, n in counts.items() if n > 0}
    s = sum(w.values())
    return {c: v / s for c, v in w.items()}


def image_weights(label_lists: Sequence[Sequence[str]], cw: dict[str, float]) -> np.ndarray:
    """Sampling probability of each image: the weight of the rarest class it holds (``cw``:
    :func:`class_weights`); images without boxes get half the smallest class weight."""
    floor = min(cw.values()) * 0.5 if cw else 1.0
    w = np.array([max([cw.get(lab, 0.0) for lab in labels] + [floor]) for labels in label_lists])
    return w / w.sum()


def _inside(corners: np.ndarray, w: int, h: int) -> np.ndarray:
    c = corners.reshape(-1, 4, 2)
    return (
        (c[..., 0] >= 0).all(1)
        & (c[..., 0] <= w).all(1)
        & (c[..., 1] >= 0).all(1)
        & (c[..., 1] <= h).all(1)
    )


def turn_corners(corners: np.ndarray, w: int, h: int, k: int, mirror: bool) -> np.ndarray:
    """Box corners ``[N, 4, 2]`` (pixels) of a ``w x h`` image mirrored left-right (if ``mirror``),
    then turned ``k`` quarter turns clockwise on screen (square images when ``k`` is odd)."""
    c = np.array(corners, dtype=np.float64)
    if mirror:
        c[..., 0] = w - c[..., 0]
        c = c[:, ::-1]  # keep the walking direction (clockwise on screen)
    for _ in range(k):  # 90° clockwise on screen of a square image: (x, y) -> (h - y, x)
        c = np.stack([h - c[..., 1], c[..., 0]], -1)
    return c


def sample_layouts(
    items: Sequence,
    n: int,
    seed: int = 0,
    config: LayoutConfig | None = None,
    classes: Sequence[str] | None = None,
) -> list[Layout]:
    """``n`` new layouts from the boxes of ``items`` (DetectionItems with sizes)."""
    cfg = config or LayoutConfig()
    cfg.validate()
    items = [it for it in items if it[1] is not None]
    if not items:
        raise UserInputError("no image with a known size in the dataset (images missing?)")
    counts = Counter(lab for it in items for lab in it[2].labels)
    if classes is not None:
        counts = Counter({c: counts.get(c, 0) for c in classes})
    if not sum(counts.values()):
        raise UserInputError("the dataset has no boxes to sample layouts from")
    rotated, upright = rotation_rules(items, cfg)
    unknown = sorted(upright - set(counts))
    if unknown:
        raise UserInputError(
            f"upright classes not in the dataset: {', '.join(unknown)}; "
            f"classes: {', '.join(sorted(counts))}"
        )
    cw = class_weights(counts, cfg.rebalance)
    src_w = image_weights(
        [it[2].labels for it in items], cw
    )  # source images: by their rarest class
    # the pool of instances to paste: (item index, box index) by class
    pool: dict[str, list[tuple[int, int]]] = {}
    for i, it in enumerate(items):
        for j, lab in enumerate(it[2].labels):
            pool.setdefault(lab, []).append((i, j))
    pool_classes = [c for c in cw if c in pool]
    pool_p = np.array([cw[c] for c in pool_classes])
    pool_p = pool_p / pool_p.sum()
    out = []
    for k in range(n):
        s = int(np.random.default_rng([seed, k]).integers(2**31))
        rng = np.random.default_rng(s)
        src = int(rng.choice(len(items), p=src_w))
        w, h = (int(v) for v in items[src][1])
        bs = items[src][2]
        corners = np.asarray(bs.corners, dtype=np.float64).reshape(-1, 4, 2).copy()
        labels = list(bs.labels)
        ops = []
        t, mirror = 0, False
        if cfg.rotate and w == h:
            t, mirror = int(rng.integers(4)), bool(rng.integers(2))
            if t or mirror:
                corners = turn_corners(corners, w, h, t, mirror)
                ops.append(f"turn{90 * t}" + ("+mirror" if mirror else ""))
        if len(corners) and (cfg.jitter or cfg.scale_jitter or (rotated and cfg.angle_jitter_deg)):
            obb = corners_to_obb(corners)
            size = np.sqrt(np.maximum(obb[:, 2] * obb[:, 3], 1e-6))
            moved = obb.copy()
            moved[:, :2] += rng.normal(0, cfg.jitter, (len(obb), 2)) * size[:, None]
            moved[:, 2:4] *= np.exp(rng.normal(0, cfg.scale_jitter, (len(obb), 1)))
            up = np.array([lab in upright for lab in labels])
            if rotated:
                moved[:, 4] += np.deg2rad(rng.normal(0, cfg.angle_jitter_deg, len(obb))) * ~up
            new = obb_to_corners(moved)
            if up.any():  # an upright box keeps exactly axis-aligned corners
                new[up] = _upright_corners(moved[up], obb[up], corners[up])
            ok = _inside(new, w, h)
            corners[ok] = new[ok]  # a box jittered out of the image keeps its place
            ops.append("jitter")
        pasted = 0
        for _ in range(cfg.copy_paste * 10):
            if pasted >= cfg.copy_paste or not pool_classes:
                break
            c = pool_classes[int(rng.choice(len(pool_classes), p=pool_p))]
            i, j = pool[c][int(rng.integers(len(pool[c])))]
            src_c = np.asarray(items[i][2].corners[j : j + 1], dtype=np.float64).reshape(1, 4, 2)
            o = corners_to_obb(src_c)[0]
            if rotated and c not in upright:
                o[4] = rng.uniform(-math.pi, math.pi)
            half = 0.5 * math.hypot(o[2], o[3])
            if 2 * half >= min(w, h):
                continue
            o[0], o[1] = rng.uniform(half, w - half), rng.uniform(half, h - half)
            if c in upright:  # moved, not turned: the source's own axis-aligned corners
                cand = src_c - src_c.mean(1, keepdims=True) + o[None, None, :2]
            else:
                cand = obb_to_corners(o[None])
            if len(corners) and box_iou(cand, corners).max() > 0:
                continue
            corners = np.concatenate([corners, cand])
            labels.append(c)
            pasted += 1
        if pasted:
            ops.append(f"paste{pasted}")
        out.append(
            Layout(
                (w, h),
                BoxSet(
                    corners,
                    labels,
                    rotated=rotated,
                    extra={k: v for k, v in bs.extra.items() if k in ("gsd",)},
                ),
                src,
                s,
                ops,
                t,
                mirror,
                pasted,
            )
        )
    return out


def rotation_rules(items: Sequence, config: LayoutConfig | None = None) -> tuple[bool, set[str]]:
    """Whether layouts from ``items`` get rotated boxes, and the upright classes (never turned)."""
    cfg = config or LayoutConfig()
    rotated = (
        cfg.rotated
        if cfg.rotated is not None
        else any(
            getattr(it[2], "rotated", True) and len(it[2]) and not is_axis_aligned(it[2].corners)
            for it in items
        )
    )
    upright = (
        set(cfg.upright)
        if cfg.upright is not None
        else (upright_classes(items) if rotated else set())
    )
    return rotated, upright


def upright_classes(items: Sequence) -> set[str]:
    """Classes whose every box in ``items`` is axis-aligned."""
    seen: dict[str, bool] = {}
    for it in items:
        bs = it[2]
        if not len(bs):
            continue
        flat = boxes_axis_aligned(bs.corners, tol=1e-6)
        for lab, a in zip(bs.labels, flat, strict=True):
            seen[lab] = seen.get(lab, True) and bool(a)
    return {c for c, a in seen.items() if a}


def _upright_corners(moved: np.ndarray, obb: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Corners ``[M, 4, 2]`` of axis-aligned boxes ``corners`` moved and scaled as ``moved``
    (``[M, 5]`` OBBs) says, from ``obb``, without turning them."""
    if not len(moved):
        return corners
    centre = obb[:, None, :2]
    scale = np.sqrt(
        np.maximum(moved[:, 2] * moved[:, 3], 1e-12) / np.maximum(obb[:, 2] * obb[:, 3], 1e-12)
    )
    return (corners - centre) * scale[:, None, None] + moved[:, None, :2]
