"""``BoxNet``: a compact anchor-free detector of ours for horizontal and rotated boxes.

No detection library installs here without torchvision or downloaded weights, so EarthGen ships
its own small CenterNet-style network (trained from scratch on CPU in minutes at small image
sizes). Output maps at ``1 / stride`` of the input:

- ``heatmap`` ``[B, K, h, w]`` logits: one peak per object centre and class,
- ``size`` ``[B, 2, h, w]``: log(width / stride), log(height / stride) of the box (width >= height),
- ``angle`` ``[B, 2, h, w]``: (sin 2θ, cos 2θ) of the width axis (θ modulo π; unused when
  ``rotated=False``),
- ``offset`` ``[B, 2, h, w]``: sub-cell position of the centre.

:meth:`BoxNet.detect` decodes peaks to corners ``[N, 4, 2]`` (pixels) and applies rotated NMS;
:meth:`BoxNet.detect_tiled` runs an image of any size by overlapping windows (bounded memory) and
merges them with NMS across the seams. NMS compares only boxes whose enclosing horizontal boxes
overlap (an STR tree), so thousands of boxes cost about linear time and memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthgen.boxes import BoxSet, corners_to_hbb, corners_to_obb, obb_to_corners

DETECT_TILE = 512  # pixels: BoxNet's window on large images (activations of one: ~0.3 GB)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


def canonical_obb(corners: np.ndarray, rotated: bool = True) -> np.ndarray:
    """``[N, 4, 2]`` corners -> ``[N, 5]`` (cx, cy, w, h, θ) with w >= h and θ in [0, π) (a
    rectangle is the same box under θ + π); axis-aligned enclosing boxes when not ``rotated``."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    if not rotated:
        lo, hi = c.min(axis=1), c.max(axis=1)
        wh = hi - lo
        o = np.concatenate([(lo + hi) / 2, wh, np.zeros((len(c), 1))], axis=1)
    else:
        o = corners_to_obb(c)
    swap = o[:, 3] > o[:, 2]
    o[swap, 2], o[swap, 3] = o[swap, 3].copy(), o[swap, 2].copy()
    o[swap, 4] += math.pi / 2
    o[:, 4] = np.mod(o[:, 4], math.pi)
    return o


def overlapping_pairs(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of boxes ``[N, 4, 2]`` whose enclosing horizontal boxes overlap with
    positive area (an STR tree: memory and time about linear in N for spread-out boxes)."""
    import shapely

    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    if len(c) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hb = corners_to_hbb(c)
    rects = shapely.box(hb[:, 0], hb[:, 1], hb[:, 2], hb[:, 3])
    i, j = shapely.STRtree(rects).query(rects, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    ix = np.minimum(hb[i, 2], hb[j, 2]) - np.maximum(hb[i, 0], hb[j, 0])
    iy = np.minimum(hb[i, 3], hb[j, 3]) - np.maximum(hb[i, 1], hb[j, 1])
    pos = (ix > 0) & (iy > 0)
    order = np.lexsort((j[pos], i[pos]))
    return i[pos][order].astype(np.int64), j[pos][order].astype(np.int64)


def pair_iou(corners: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact rotated IoU ``[K]`` of the box pairs ``(i[k], j[k])`` of ``corners`` ``[N, 4, 2]``."""
    import shapely

    if not len(i):
        return np.zeros(0)
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    polys = shapely.make_valid(shapely.polygons(c))
    area = shapely.area(polys)
    inter = shapely.area(shapely.intersection(polys[i], polys[j]))
    union = area[i] + area[j] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def sparse_iou(corners: np.ndarray) -> np.ndarray:
    """Pairwise rotated IoU ``[N, N]`` of ``[N, 4, 2]`` boxes, exact, computing polygon
    intersections only for pairs whose enclosing horizontal boxes overlap."""
    n = len(corners)
    iou = np.eye(n)
    i, j = overlapping_pairs(corners)
    v = pair_iou(corners, i, j)
    iou[i, j] = v
    iou[j, i] = v
    return iou


def nms_rotated(corners: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression with exact rotated IoU; returns kept indices ``[M]``
    sorted by descending score. Sparse: only boxes whose enclosing horizontal boxes overlap are
    compared (no ``N x N`` matrix), so thousands of boxes of a large image stay cheap."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if not len(order):
        return order.astype(np.int64)
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)[order]
    i, j = overlapping_pairs(c)
    v = pair_iou(c, i, j)
    hit = v > iou_threshold
    i, j = i[hit], j[hit]  # i < j: i ranks higher; j is suppressed if i is kept
    start = np.searchsorted(i, np.arange(len(c) + 1))
    suppressed = np.zeros(len(c), bool)
    keep = []
    for a in range(len(c)):
        if suppressed[a]:
            continue
        keep.append(order[a])
        suppressed[j[start[a] : start[a + 1]]] = True
    return np.asarray(keep, dtype=np.int64)


class BoxNet(ModelMixin, ConfigMixin):
    """CenterNet-style detector. ``forward(images [B, 3, H, W] in 0..1)`` -> dict of maps (see the
    module docstring); H and W must be multiples of 16."""

    @register_to_config
    def __init__(
        self,
        classes: tuple[str, ...] = ("object",),
        width: int = 32,
        stride: int = 2,
        rotated: bool = True,
    ):
        super().__init__()
        if stride not in (1, 2, 4, 8):
            raise ValueError(f"stride must be 1, 2, 4 or 8, got {stride}")
        w = width
        chans = (w, w, 2 * w, 4 * w, 4 * w)  # at strides 1, 2, 4, 8, 16
        self.stages = nn.ModuleList(
            [_block(3, chans[0], 1)] + [_block(chans[i - 1], chans[i], 2) for i in range(1, 5)]
        )
        self.lateral = nn.ModuleList([nn.Conv2d(c, 2 * w, 1) for c in chans])
        k = len(classes)
        self.head = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU())
        self.heat = nn.Conv2d(2 * w, k, 1)
        self.reg = nn.Conv2d(2 * w, 6, 1)
        nn.init.constant_(self.heat.bias, -2.19)  # prior 0.1 (CenterNet)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - 0.5) / 0.25
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        level = int(math.log2(self.config.stride))
        y = self.lateral[4](feats[4])
        for i in (3, 2, 1, 0):
            if i < level:
                break
            y = F.interpolate(y, size=feats[i].shape[-2:], mode="nearest") + self.lateral[i](
                feats[i]
            )
        y = self.head(y)
        r = self.reg(y)
        return {
            "heatmap": self.heat(y),
            "size": r[:, 0:2],
            "angle": torch.tanh(r[:, 2:4]),
            "offset": r[:, 4:6],
        }

    # --- targets and loss ----------------------------------------------------------------------

    def targets(self, boxes: list[BoxSet], height: int, width: int) -> dict[str, torch.Tensor]:
        """Training targets for a batch of BoxSets (pixel corners) on ``height x width`` images."""
        s = self.config.stride
        h, w = height // s, width // s
        k = len(self.config.classes)
        index = {c: i for i, c in enumerate(self.config.classes)}
        b = len(boxes)
        heat = np.zeros((b, k, h, w), np.float32)
        reg = np.zeros((b, 6, h, w), np.float32)
        mask = np.zeros((b, h, w), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for n, bs in enumerate(boxes):
            if not len(bs):
                continue
            obb = canonical_obb(bs.corners, self.config.rotated)
            for (cx, cy, bw, bh, a), lab in zip(obb, bs.labels, strict=True):
                if lab not in index or bw <= 0 or bh <= 0:
                    continue
                gx, gy = cx / s - 0.5, cy / s - 0.5
                ix, iy = int(round(gx)), int(round(gy))
                if not (0 <= ix < w and 0 <= iy < h):
                    continue
                sig = max(0.6, math.sqrt(bw * bh) / s / 6.0)
                g = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sig * sig))
                heat[n, index[lab]] = np.maximum(heat[n, index[lab]], g)
                heat[n, index[lab], iy, ix] = 1.0
                reg[n, :, iy, ix] = (
                    math.log(bw / s),
                    math.log(bh / s),
                    math.sin(2 * a),
                    math.cos(2 * a),
                    gx - ix,
                    gy - iy,
                )
                mask[n, iy, ix] = 1.0
        return {
            "heatmap": torch.from_numpy(heat),
            "reg": torch.from_numpy(reg),
            "mask": torch.from_numpy(mask),
        }

    def loss(self, images: torch.Tensor, boxes: list[BoxSet]) -> torch.Tensor:
        """Focal loss on the centre heatmap + L1 on size, angle and offset at the centres."""
        out = self(images)
        t = {
            k: v.to(images.device)
            for k, v in self.targets(boxes, images.shape[-2], images.shape[-1]).items()
        }
        p = out["heatmap"].float().sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = t["heatmap"].eq(1).float()
        neg_w = (1 - t["heatmap"]) ** 4
        pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
        neg_loss = (torch.log(1 - p) * p**2 * neg_w * (1 - pos)).sum()
        npos = pos.sum().clamp(min=1.0)
        focal = -(pos_loss + neg_loss) / npos
        pred = torch.cat([out["size"], out["angle"], out["offset"]], dim=1)
        m = t["mask"][:, None]
        weights = torch.tensor(
            [
                1.0,
                1.0,
                1.0 if self.config.rotated else 0.0,
                1.0 if self.config.rotated else 0.0,
                1.0,
                1.0,
            ],
            device=images.device,
        )[None, :, None, None]
        reg = (F.l1_loss(pred, t["reg"], reduction="none") * m * weights).sum() / m.sum().clamp(
            min=1.0
        )
        return focal + reg

    # --- inference -----------------------------------------------------------------------------

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        score_threshold: float = 0.05,
        max_detections: int = 100,
        nms_iou: float = 0.5,
    ) -> list[BoxSet]:
        """Images ``[B, 3, H, W]`` in 0..1 (any size; padded to a multiple of 16) -> one BoxSet
        per image, corners in pixels, with ``scores``."""
        b, _, hh, ww = images.shape
        ph, pw = (-hh) % 16, (-ww) % 16
        x = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
        out = self(x.to(self.device, self.dtype))
        heat = out["heatmap"].float().sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        s = self.config.stride
        k, h, w = heat.shape[1:]
        results = []
        for n in range(b):
            flat = peaks[n].reshape(-1)
            top = torch.topk(flat, min(max_detections, flat.numel()))
            sel = top.values >= score_threshold
            idx, sc = top.indices[sel].cpu().numpy(), top.values[sel].cpu().numpy()
            cls, rem = idx // (h * w), idx % (h * w)
            iy, ix = rem // w, rem % w
            size = out["size"][n].float().cpu().numpy()
            ang = out["angle"][n].float().cpu().numpy()
            off = out["offset"][n].float().cpu().numpy()
            bw = np.exp(np.clip(size[0, iy, ix], -6, 8)) * s
            bh = np.exp(np.clip(size[1, iy, ix], -6, 8)) * s
            theta = (
                0.5 * np.arctan2(ang[0, iy, ix], ang[1, iy, ix])
                if self.config.rotated
                else np.zeros(len(idx))
            )
            cx = (ix + off[0, iy, ix] + 0.5) * s
            cy = (iy + off[1, iy, ix] + 0.5) * s
            corners = (
                obb_to_corners(np.stack([cx, cy, bw, bh, theta], 1))
                if len(idx)
                else np.zeros((0, 4, 2))
            )
            keep_all = []
            for c in np.unique(cls):
                sel_c = np.nonzero(cls == c)[0]
                keep_all.extend(sel_c[nms_rotated(corners[sel_c], sc[sel_c], nms_iou)])
            keep = np.asarray(
                sorted(keep_all, key=lambda i: -sc[i])[:max_detections], dtype=np.int64
            )
            results.append(
                BoxSet(
                    corners[keep],
                    [self.config.classes[int(c)] for c in cls[keep]],
                    scores=sc[keep],
                    rotated=bool(self.config.rotated),
                )
            )
        return results

    @torch.no_grad()
    def detect_tiled(
        self,
        image: np.ndarray,
        tile: int = DETECT_TILE,
        overlap: int | None = None,
        score_threshold: float = 0.05,
        max_detections: int = 100,
        nms_iou: float = 0.5,
    ) -> BoxSet:
        """One image ``[H, W, 3]`` uint8 of any size -> its detections (BoxSet, pixel corners, with
        ``scores``), run window by window: ``tile x tile`` windows overlapping by ``overlap``
        pixels (default a quarter of ``tile``); each window keeps at most ``max_detections``
        and only the detections whose centre lies in its core (the half of each overlap on its
        side, :class:`earthgen.augment.tiles.TileGrid`), then per-class rotated NMS across the
        seams removes the objects two windows both found. An image no larger than ``tile`` is
        one window: exactly :meth:`detect`. Memory: one window's activations."""
        from earthgen.augment.tiles import overlap_pixels, plan_tiles

        a = np.asarray(image)
        h, w = a.shape[:2]
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16 pixels, got {tile}")
        ov = overlap_pixels(tile, 0.25, 16) if overlap is None else int(overlap) // 16 * 16
        # windows start at multiples of 16 (the network's coarsest stride) over the image padded to
        # a multiple of 16, so every window sees the grid the whole image would; crops stop at the
        # image's edge
        grid = plan_tiles(-(-w // 16) * 16, -(-h // 16) * 16, tile, ov, 16)
        corners, labels, scores = [], [], []
        for t in grid:
            win = np.array(
                a[t.y0 : min(t.y1, h), t.x0 : min(t.x1, w), :3], dtype=np.uint8
            )  # writable
            x = torch.from_numpy(win).permute(2, 0, 1).float()[None] / 255.0
            d = self.detect(
                x, score_threshold=score_threshold, max_detections=max_detections, nms_iou=nms_iou
            )[0]
            if len(grid) == 1:
                return d
            if not len(d):
                continue
            c = d.corners + t.offset
            mine = grid.assign(c) == t.index
            corners.append(c[mine])
            labels.extend(lab for lab, k in zip(d.labels, mine, strict=True) if k)
            scores.append(np.asarray(d.scores)[mine])
        c = np.concatenate(corners) if corners else np.zeros((0, 4, 2))
        sc = np.concatenate(scores) if scores else np.zeros(0)
        return merge_detections(c, labels, sc, nms_iou, rotated=bool(self.config.rotated))


def merge_detections(
    corners: np.ndarray,
    labels: list[str],
    scores: np.ndarray,
    nms_iou: float = 0.5,
    rotated: bool = True,
) -> BoxSet:
    """Detections gathered from several windows (image coordinates) -> one BoxSet: per-class
    rotated NMS across the seams, sorted by descending score."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    sc = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=object)
    keep: list[int] = []
    for cls in dict.fromkeys(labels):
        sel = np.nonzero(lab == cls)[0]
        keep.extend(sel[nms_rotated(c[sel], sc[sel], nms_iou)].tolist())
    keep_a = np.asarray(sorted(keep, key=lambda i: -sc[i]), dtype=np.int64)
    return BoxSet(
        c[keep_a],
        [str(lab[i]) for i in keep_a],
        scores=sc[keep_a].astype(np.float32),
        rotated=rotated,
    )
