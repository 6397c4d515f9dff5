"""3D training scenes from world tiles: voxels, per-voxel appearance and a reference surfel scene.

A :class:`Scene3D` is what the 3D VAEs train on:

- ``coords`` ``[N, 3]`` local voxel indices (the minimum over the scene is ``(0, 0, 0)``),
  ``origin`` the world position (metres) of local voxel ``(0, 0, 0)``'s minimum corner,
  ``voxel_size`` metres;
- ``appearance`` ``[N, D]`` what the texture VAE encodes for each voxel: the voxel colour, which
  side faces are exposed, and for the top voxel of a column the ``p x p`` sub-voxel patch of the
  tile's pixel colours and surface heights (``p = voxel_size / gsd``);
- ``reference``: the ground-truth scene the texture VAE's surfels are rendered against: one
  horizontal surfel per tile pixel (of a column that has voxels) at the surface height with the
  pixel's colour (roofs, ground, water), and one vertical surfel per exposed side face of a
  voxel (walls, slopes), cut at the column's surface height. Renders of it from any camera are
  the training targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError

# side faces: +x, -x, +y, -y (unit normals)
SIDES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.int64)


@dataclass
class Scene3D:
    coords: np.ndarray  # [N, 3] int32 local voxel indices
    semantic: np.ndarray  # [N] uint8 class ids
    color: np.ndarray  # [N, 3] uint8
    appearance: np.ndarray  # [N, D] float32
    origin: np.ndarray  # [3] float64, metres
    voxel_size: float  # metres
    reference: (
        dict  # means [M,3], quats [M,4] (wxyz), scales [M,2], opacities [M], colors [M,3] (0..1)
    )

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def extent(self) -> np.ndarray:
        """Scene size in metres ``[3]`` (x, y, z) of the voxels' bounding box."""
        return (self.coords.max(0) - self.coords.min(0) + 1) * self.voxel_size

    @property
    def center(self) -> np.ndarray:
        """World centre (metres) of the voxels' bounding box."""
        lo = self.coords.min(0) * self.voxel_size
        return self.origin + lo + 0.5 * self.extent


def appearance_channels(patch: int) -> int:
    """Width ``D`` of :attr:`Scene3D.appearance` for a ``patch x patch`` sub-voxel grid."""
    return 3 + 4 + 1 + 4 * patch * patch


def _quat_to(normals: np.ndarray) -> np.ndarray:
    """Quaternions (wxyz) ``[M, 4]`` rotating +z onto unit ``normals`` ``[M, 3]`` (not -z)."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, normals)
    w = 1.0 + normals @ z
    q = np.concatenate([w[:, None], axis], 1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def world_scene(tile, voxel_size: float = 1.0) -> Scene3D:
    """Build a :class:`Scene3D` from a :class:`~earthgen.world.tile.WorldTile`; ``voxel_size``
    must be a whole multiple of the tile's GSD."""
    from earthgen.world.voxels import voxelize

    g = tile.grid
    s = float(voxel_size)
    p = s / g.gsd
    if abs(p - round(p)) > 1e-6 or round(p) < 1:
        raise UserInputError(
            f"voxel size {s} m must be a whole multiple of the tile's GSD {g.gsd} m/px"
        )
    p = int(round(p))
    vox = voxelize(tile, s)
    x0, _, _, y_top = g.bounds
    H, W = g.shape
    water = tile.semantic == CLASS_ID["water"]
    surface = np.where(water, tile.water_level, tile.height) + tile.object_height  # [H, W] metres
    xs = x0 + (np.arange(W) + 0.5) * g.gsd
    ys = y_top - (np.arange(H) + 0.5) * g.gsd
    X, Y = np.meshgrid(xs, ys)

    lo = vox.coords.min(0).astype(np.int64)
    coords = (vox.coords - lo).astype(np.int64)
    origin = lo * s
    N = len(coords)
    ext = coords.max(0) + 1
    key = (coords[:, 0] * ext[1] + coords[:, 1]) * ext[2] + coords[:, 2]
    order = np.argsort(key)
    skey = key[order]

    def lookup(c: np.ndarray) -> np.ndarray:
        inside = ((c >= 0) & (c < ext)).all(1)
        k = (np.clip(c[:, 0], 0, ext[0] - 1) * ext[1] + np.clip(c[:, 1], 0, ext[1] - 1)) * ext[
            2
        ] + np.clip(c[:, 2], 0, ext[2] - 1)
        pos = np.clip(np.searchsorted(skey, k), 0, N - 1)
        return np.where(inside & (skey[pos] == k), order[pos], -1)

    exposed = np.stack([lookup(coords + d) < 0 for d in SIDES], 1)  # [N, 4]

    # column top voxel of each pixel, and the pixel's slot in its voxel's p x p patch
    ci = np.floor(X / s).astype(np.int64) - lo[0]
    cj = np.floor(Y / s).astype(np.int64) - lo[1]
    ck = np.floor(surface / s).astype(np.int64) - lo[2]
    pu = np.clip(np.floor((X / s - np.floor(X / s)) * p).astype(np.int64), 0, p - 1)
    pv = np.clip(np.floor((Y / s - np.floor(Y / s)) * p).astype(np.int64), 0, p - 1)
    # the voxelizer's top voxel uses the column's centre pixel; pixels whose own surface falls in
    # another voxel are attached to the highest voxel of their column at or below their surface
    col_key = coords[:, 0] * ext[1] + coords[:, 1]
    top_of = np.full(ext[0] * ext[1], -1, dtype=np.int64)
    np.maximum.at(top_of, col_key, coords[:, 2].astype(np.int64))
    low_of = np.full(ext[0] * ext[1], np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(low_of, col_key, coords[:, 2].astype(np.int64))
    pix_col = np.clip(ci, 0, ext[0] - 1) * ext[1] + np.clip(cj, 0, ext[1] - 1)
    # a column's voxels are contiguous, so clamping into [lowest, highest] always finds one
    kz = np.clip(ck, np.minimum(low_of[pix_col], top_of[pix_col]), top_of[pix_col])
    vidx = lookup(np.stack([ci.ravel(), cj.ravel(), kz.ravel()], 1)).reshape(H, W)  # -1: no column

    feat = np.zeros((N, appearance_channels(p)), dtype=np.float32)
    feat[:, :3] = vox.color / 255.0
    feat[:, 3:7] = exposed
    ok = vidx >= 0
    v = vidx[ok]
    feat[v, 7] = 1.0
    slot = pv[ok] * p + pu[ok]
    rgb = tile.rgb[ok].astype(np.float32) / 255.0
    for ch in range(3):
        feat[v, 8 + ch * p * p + slot] = rgb[:, ch]
    rel = (
        surface[ok] - (kz[ok] + lo[2]) * s
    ) / s  # height inside the voxel, 0..1 (more if clamped)
    feat[v, 8 + 3 * p * p + slot] = np.clip(rel, 0.0, 2.0)

    # reference surfels: tops (one per pixel) and exposed side faces (cut at the column's surface)
    # (pixels of partial columns at the tile edge, which have no voxel, are left out)
    top_means = np.stack([X, Y, surface], -1)[ok]
    top_quat = np.tile([1.0, 0.0, 0.0, 0.0], (len(top_means), 1))
    top_scale = np.full((len(top_means), 2), 0.5 * g.gsd)
    top_col = tile.rgb[ok] / 255.0
    # a column's surface height: the highest surface of its pixels (walls are cut there)
    col_h = np.full(ext[0] * ext[1], -np.inf)
    np.maximum.at(col_h, pix_col[ok].ravel(), surface[ok].ravel())
    means, quats, scales, cols = [top_means], [top_quat], [top_scale], [top_col]
    for f, d in enumerate(SIDES):
        sel = exposed[:, f]
        c = coords[sel]
        bottom = (c[:, 2] + lo[2]) * s
        top = np.minimum(bottom + s, col_h[c[:, 0] * ext[1] + c[:, 1]])
        keep = top > bottom + 1e-3
        c, bottom, top = c[keep], bottom[keep], top[keep]
        ctr = (c + lo + 0.5) * s + 0.5 * s * d
        ctr[:, 2] = 0.5 * (bottom + top)
        means.append(ctr)
        quats.append(_quat_to(np.repeat(d[None].astype(np.float64), len(c), 0)))
        # local axes after rotating +z to the face normal: for +-x faces the first axis is vertical
        sc = (
            np.stack([0.5 * (top - bottom), np.full(len(c), 0.5 * s)], 1)
            if d[0] != 0
            else np.stack([np.full(len(c), 0.5 * s), 0.5 * (top - bottom)], 1)
        )
        scales.append(sc)
        cols.append(vox.color[sel][keep] / 255.0)
    ref = {
        "means": np.concatenate(means).astype(np.float32),
        "quats": np.concatenate(quats).astype(np.float32),
        "scales": np.concatenate(scales).astype(np.float32),
        "opacities": np.full(sum(len(m) for m in means), 0.99, dtype=np.float32),
        "colors": np.concatenate(cols).astype(np.float32),
    }
    return Scene3D(
        coords.astype(np.int32), vox.semantic, vox.color, feat, origin.astype(np.float64), s, ref
    )
