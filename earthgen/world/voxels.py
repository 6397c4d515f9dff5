"""Sparse voxels of a world tile: a closed 2.5D surface shell (terrain, water surface, buildings,
tanks, tree canopies) with a semantic class and a colour per voxel.

Voxel indices are global: voxel ``(i, j, k)`` spans ``[i*s, (i+1)*s) x [j*s, (j+1)*s) x
[k*s, (k+1)*s)`` world metres (x east, y north, z up; ``s`` = voxel size), so voxels of adjacent
tiles line up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError
from earthgen.io import atomic_path

MAX_VOXELS = 60_000_000
WALLS = np.array(
    [[205, 195, 178], [190, 188, 182], [170, 160, 150], [215, 210, 200]], dtype=np.float64
)


@dataclass
class VoxelGrid:
    """``coords`` ``[N, 3]`` int32 global voxel indices (x, y, z); ``semantic`` ``[N]`` uint8;
    ``color`` ``[N, 3]`` uint8; ``voxel_size`` metres."""

    coords: np.ndarray
    semantic: np.ndarray
    color: np.ndarray
    voxel_size: float

    def __len__(self) -> int:
        return len(self.coords)

    def centers(self) -> np.ndarray:
        """``[N, 3]`` float64 voxel centres in world metres."""
        return (self.coords.astype(np.float64) + 0.5) * self.voxel_size

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """Occupancy ``[X, Y, Z]`` bool over the bounding box and its minimum corner index
        ``[3]``."""
        lo = self.coords.min(axis=0)
        ext = self.coords.max(axis=0) - lo + 1
        occ = np.zeros(tuple(int(e) for e in ext), dtype=bool)
        c = self.coords - lo
        occ[c[:, 0], c[:, 1], c[:, 2]] = True
        return occ, lo

    def save_npz(self, path: str | os.PathLike) -> Path:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    coords=self.coords,
                    semantic=self.semantic,
                    color=self.color,
                    voxel_size=np.float64(self.voxel_size),
                )
        return Path(path)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> VoxelGrid:
        with np.load(path) as z:
            return cls(z["coords"], z["semantic"], z["color"], float(z["voxel_size"]))

    def save_ply(self, path: str | os.PathLike) -> Path:
        """Binary little-endian PLY point cloud of voxel centres (metres) with colour and class."""
        n = len(self)
        rec = np.empty(
            n,
            dtype=[
                ("x", "<f4"),
                ("y", "<f4"),
                ("z", "<f4"),
                ("red", "u1"),
                ("green", "u1"),
                ("blue", "u1"),
                ("semantic", "u1"),
            ],
        )
        ctr = self.centers()
        rec["x"], rec["y"], rec["z"] = ctr[:, 0], ctr[:, 1], ctr[:, 2]
        rec["red"], rec["green"], rec["blue"] = self.color[:, 0], self.color[:, 1], self.color[:, 2]
        rec["semantic"] = self.semantic
        header = (
            "ply\nformat binary_little_endian 1.0\n"
            f"comment earthgen voxels, voxel_size {self.voxel_size} m, "
            "semantic = earthgen class id\n"
            f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\n"
            "property uchar semantic\nend_header\n"
        )
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(header.encode("ascii"))
                fh.write(rec.tobytes())
        return Path(path)


def _box_mean(img: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Mean of ``img`` ``[H, W, C]`` over row ranges ``[r0, r1)`` x col ranges ``[c0, c1)``
    (broadcast index arrays), via an integral image."""
    ii = np.zeros((img.shape[0] + 1, img.shape[1] + 1, img.shape[2]))
    ii[1:, 1:] = img.cumsum(0).cumsum(1)
    s = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
    return s / np.maximum((r1 - r0) * (c1 - c0), 1)[..., None]


def voxelize(tile, voxel_size: float = 1.0) -> VoxelGrid:
    """Voxelize a :class:`~earthgen.world.tile.WorldTile`: one column per voxel footprint whose
    top is the surface (terrain + object height, or the water surface), filled down to the
    lowest neighbouring top so the shell is closed (no holes on slopes or at walls)."""
    if not (voxel_size > 0 and np.isfinite(voxel_size)):
        raise UserInputError(f"voxel size must be a finite number > 0 metres, got {voxel_size}")
    g = tile.grid
    s = float(voxel_size)
    x0, ymin, x1, y1 = g.bounds
    i = np.arange(int(np.ceil(x0 / s - 1e-9)), int(np.floor(x1 / s + 1e-9)))
    j = np.arange(int(np.ceil(ymin / s - 1e-9)), int(np.floor(y1 / s + 1e-9)))[::-1]  # north first
    if len(i) == 0 or len(j) == 0:
        raise UserInputError(
            f"voxel size {s} m is larger than the tile ({x1 - x0:g} x {y1 - ymin:g} m)"
        )
    # pixel windows of each column
    c0 = np.clip(np.floor((i * s - x0) / g.gsd + 1e-9).astype(int), 0, g.shape[1] - 1)
    c1 = np.clip(np.ceil(((i + 1) * s - x0) / g.gsd - 1e-9).astype(int), c0 + 1, g.shape[1])
    r0 = np.clip(np.floor((y1 - (j + 1) * s) / g.gsd + 1e-9).astype(int), 0, g.shape[0] - 1)
    r1 = np.clip(np.ceil((y1 - j * s) / g.gsd - 1e-9).astype(int), r0 + 1, g.shape[0])
    R0, C0 = np.meshgrid(r0, c0, indexing="ij")
    R1, C1 = np.meshgrid(r1, c1, indexing="ij")
    rc = ((R0 + R1 - 1) // 2, (C0 + C1 - 1) // 2)  # centre pixel of each column
    color = _box_mean(tile.rgb.astype(np.float64), R0, R1, C0, C1)  # [ny, nx, 3]
    sem = tile.semantic[rc]
    ground = _box_mean(tile.height[..., None].astype(np.float64), R0, R1, C0, C1)[..., 0]
    water = sem == CLASS_ID["water"]
    surf = np.where(water, tile.water_level[rc], ground)
    obj_h = tile.object_height[rc]
    top = np.floor((surf + obj_h) / s).astype(np.int64)
    base = np.floor(surf / s).astype(np.int64)
    pad = np.pad(top, 1, mode="edge")
    low = np.minimum.reduce([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]) + 1
    bottom = np.minimum(low, top)
    n = (top - bottom + 1).ravel()
    total = int(n.sum())
    if total > MAX_VOXELS:
        raise UserInputError(
            f"{total} voxels at {s} m exceed the limit of {MAX_VOXELS}; use a larger voxel size"
        )
    col = np.repeat(np.arange(n.size), n)
    offset = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    z = bottom.ravel()[col] + offset
    jj, ii = np.meshgrid(j, i, indexing="ij")
    coords = np.stack([ii.ravel()[col], jj.ravel()[col], z], axis=1).astype(np.int32)
    vsem = sem.ravel()[col].astype(np.uint8)
    is_top = z == top.ravel()[col]
    above = z > base.ravel()[col]  # wall of an object (building, tank, canopy)
    vcol = color.reshape(-1, 3)[col]
    bidx = tile.building_index[rc].ravel()[col]
    wall = WALLS[bidx % len(WALLS)] * (0.75 + 0.25 * (offset / np.maximum(n[col] - 1, 1)))[:, None]
    building_wall = ~is_top & above & (vsem == CLASS_ID["building"])
    vcol = np.where(building_wall[:, None], wall, np.where(is_top[:, None], vcol, vcol * 0.8))
    return VoxelGrid(coords, vsem, np.clip(np.rint(vcol), 0, 255).astype(np.uint8), s)
