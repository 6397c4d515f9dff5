"""Large images by tiles: a grid of overlapping windows, box ownership, blended merging.

An image larger than a model's window is cut into a grid of ``tile x tile`` windows whose
neighbours overlap by ``overlap`` pixels (starts spread evenly, so every overlap is at least
``overlap``; windows are the image itself when it is smaller). Each window also has a *core*:
the windows' cores split every overlap at its middle and partition the image, so every pixel,
and every box centre, has exactly one owner tile.

- **Boxes**: a box belongs to the tile whose core holds its centre (the mean of its 4 corners;
  centres outside the image go to the nearest edge tile), so every box is assigned exactly
  once; a box cut by a window edge is still *seen* (as a condition) by every window its
  enclosing horizontal box overlaps, in that window's coordinates.
- **Pixels**: the windows' outputs are blended with weights that ramp linearly across each
  overlap (1 inside, summing to 1 where two windows meet, no ramp at the image border); the
  pixels of a box's polygon inside its owner's window are then taken from the owner alone.
- **Memory**: one window's work at a time, plus the merged image and a float32 accumulator
  (``H x W x (C + 1)`` floats: 256 MB at 4000 x 4000 RGB). Time is linear in the area (the
  number of windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from earthgen.errors import UserInputError


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets (pixels) of windows of ``tile`` covering ``[0, size)``, neighbours
    overlapping by at least ``overlap``; multiples of ``multiple`` when ``size`` and ``tile``
    are. One window at 0 when ``size <= tile``."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise UserInputError(f"need tile > overlap >= 0 pixels, got tile {tile}, overlap {overlap}")
    if size <= tile:
        return [0]
    m = max(int(multiple), 1)
    stride = max((tile - overlap) // m * m, m)
    n = math.ceil((size - tile) / stride) + 1
    span = size - tile
    starts = [int(round(i * span / (n - 1) / m)) * m for i in range(n)]
    starts[-1] = span
    return starts


@dataclass(frozen=True)
class Tile:
    """One window: ``x0 <= x < x1``, ``y0 <= y < y1`` (pixels) and its core (owned pixels)
    ``cx0 <= x < cx1``, ``cy0 <= y < cy1``; ``row`` and ``col`` in the grid."""

    index: int
    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int
    cx0: int
    cy0: int
    cx1: int
    cy1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def offset(self) -> np.ndarray:
        """``[2]`` (x0, y0): subtract from image coordinates to get window coordinates."""
        return np.array([self.x0, self.y0], dtype=np.float64)


def _cores(starts: list[int], tile: int, size: int) -> list[int]:
    """Core boundaries ``[n + 1]``: 0, the middle of each overlap, ``size``."""
    mids = [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)]
    return [0, *mids, size]


def _ramp(starts: list[int], i: int, tile: int) -> np.ndarray:
    """``[tile]`` weights of window ``i`` along one axis: linear ramps across the overlaps with
    its neighbours (two ramps meeting in an overlap sum to 1), 1 elsewhere."""
    j = np.arange(tile, dtype=np.float64)
    w = np.ones(tile)
    if i > 0 and (o := starts[i - 1] + tile - starts[i]) > 0:
        w = np.minimum(w, (j + 0.5) / o)
    if i < len(starts) - 1 and (o := starts[i] + tile - starts[i + 1]) > 0:
        w = np.minimum(w, (tile - j - 0.5) / o)
    return w


class TileGrid:
    """Overlapping windows over a ``width x height`` image (see the module docstring)."""

    def __init__(self, width: int, height: int, tile: int, overlap: int, multiple: int = 1):
        if width <= 0 or height <= 0:
            raise UserInputError(f"image size must be positive, got {width}x{height}")
        self.width, self.height, self.overlap = int(width), int(height), int(overlap)
        self.tile_w, self.tile_h = min(tile, self.width), min(tile, self.height)
        self.xs = tile_starts(self.width, tile, overlap, multiple)
        self.ys = tile_starts(self.height, tile, overlap, multiple)
        self.xb = _cores(self.xs, self.tile_w, self.width)
        self.yb = _cores(self.ys, self.tile_h, self.height)
        self.tiles = [
            Tile(
                r * len(self.xs) + c,
                r,
                c,
                x,
                y,
                x + self.tile_w,
                y + self.tile_h,
                self.xb[c],
                self.yb[r],
                self.xb[c + 1],
                self.yb[r + 1],
            )
            for r, y in enumerate(self.ys)
            for c, x in enumerate(self.xs)
        ]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def owner(self, points: np.ndarray) -> np.ndarray:
        """``[N]`` index of the tile whose core holds each point ``[N, 2]`` (x, y pixels;
        points outside the image go to the nearest edge tile)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        col = np.searchsorted(np.asarray(self.xb[1:-1]), p[:, 0], side="right")
        row = np.searchsorted(np.asarray(self.yb[1:-1]), p[:, 1], side="right")
        return (row * len(self.xs) + col).astype(np.int64)

    def assign(self, corners: np.ndarray) -> np.ndarray:
        """``[N]`` owner tile of each box ``[N, 4, 2]`` (pixel corners): the one with its centre."""
        c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
        return self.owner(c.mean(axis=1)) if len(c) else np.zeros(0, np.int64)

    def touching(self, tile: Tile, corners: np.ndarray) -> np.ndarray:
        """``[N]`` bool: boxes whose enclosing horizontal box overlaps the window (area > 0)."""
        c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
        if not len(c):
            return np.zeros(0, bool)
        lo, hi = c.min(axis=1), c.max(axis=1)
        return (
            (lo[:, 0] < tile.x1)
            & (hi[:, 0] > tile.x0)
            & (lo[:, 1] < tile.y1)
            & (hi[:, 1] > tile.y0)
        )

    def weight(self, tile: Tile) -> np.ndarray:
        """``[tile_h, tile_w]`` float32 blending weight of a window (> 0 everywhere)."""
        return (
            _ramp(self.ys, tile.row, self.tile_h)[:, None]
            * _ramp(self.xs, tile.col, self.tile_w)[None, :]
        ).astype(np.float32)


def plan_tiles(width: int, height: int, tile: int, overlap: int, multiple: int = 1) -> TileGrid:
    """The :class:`TileGrid` of a ``width x height`` image (pixels)."""
    return TileGrid(width, height, tile, overlap, multiple)


def overlap_pixels(tile: int, fraction: float, multiple: int = 1) -> int:
    """``fraction`` of ``tile`` in pixels, a multiple of ``multiple``, below ``tile / 2``."""
    if not 0.0 <= fraction < 0.5:
        raise UserInputError(f"tile overlap must be a fraction in [0, 0.5), got {fraction}")
    m = max(int(multiple), 1)
    o = int(round(fraction * tile / m)) * m
    while o and 2 * o >= tile:
        o -= m
    return max(o, 0)


def polygon_mask(corners: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[height, width]`` bool: pixels covered by any of the polygons ``[N, 4, 2]`` (pixel
    corners in this window's frame; PIL's fill, edges included)."""
    from PIL import Image, ImageDraw

    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    im = Image.new("L", (width, height), 0)
    if len(c):
        d = ImageDraw.Draw(im)
        for poly in c:
            d.polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(im) > 0


class TileMerger:
    """Merge window outputs ``[h, w, C]`` into one ``[H, W, C]`` uint8 image: weighted blend
    (:meth:`TileGrid.weight`), with ``keep`` pixels (a window's owned boxes) taken from that
    window exactly."""

    def __init__(self, grid: TileGrid, channels: int = 3):
        self.grid = grid
        self.acc = np.zeros((grid.height, grid.width, channels), np.float32)
        self.wsum = np.zeros((grid.height, grid.width), np.float32)
        self.fixed = np.zeros((grid.height, grid.width, channels), np.uint8)
        self.is_fixed = np.zeros((grid.height, grid.width), bool)

    def add(self, tile: Tile, image: np.ndarray, keep: np.ndarray | None = None) -> None:
        """Blend ``image`` ``[tile.height, tile.width, C]`` (uint8 or 0..255 floats) into the
        window; ``keep`` ``[tile.height, tile.width]`` bool: pixels taken from it exactly."""
        a = np.asarray(image)
        if a.shape[:2] != (tile.height, tile.width):
            raise ValueError(
                f"tile {tile.index} output is {a.shape[:2]}, expected {(tile.height, tile.width)}"
            )
        w = self.grid.weight(tile)
        win = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
        self.acc[win] += w[..., None] * a.astype(np.float32)
        self.wsum[win] += w
        if keep is not None and keep.any():
            self.fixed[win][keep] = np.clip(np.rint(a[keep]), 0, 255).astype(np.uint8)
            self.is_fixed[win] |= keep

    def result(self) -> np.ndarray:
        """The merged image ``[H, W, C]`` uint8 (pixels no window covered stay 0)."""
        out = self.acc
        np.divide(out, np.maximum(self.wsum, 1e-12)[..., None], out=out)
        np.rint(out, out=out)
        np.clip(out, 0, 255, out=out)
        img = out.astype(np.uint8)
        img[self.is_fixed] = self.fixed[self.is_fixed]
        return img


def run_tiled(
    image_size: tuple[int, int], corners: np.ndarray, fn, tile: int, overlap: int, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn(tile, local_corners [K, 4, 2], touching [N] bool, owned [N] bool) -> [h, w, 3]``
    on every window of a ``(width, height)`` image and merge the outputs; the pixels of each
    owned box's polygon come from its owner. Returns (image ``[H, W, 3]`` uint8, owner ``[N]``)."""
    w, h = image_size
    grid = plan_tiles(w, h, tile, overlap, multiple)
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    owner = grid.assign(c)
    merger = TileMerger(grid)
    for t in grid:
        touch = grid.touching(t, c) if len(grid) > 1 else np.ones(len(c), bool)
        owned = owner == t.index
        out = fn(t, c[touch] - t.offset, touch, owned)
        merger.add(t, out, polygon_mask(c[owned] - t.offset, t.height, t.width))
    return merger.result(), owner
