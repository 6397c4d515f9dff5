"""Triangle meshes from sparse voxels and from raster height fields (DEMs).

World frame (docs/conventions.md): x east, y north, z up, metres. Every function returns
``(vertices [V, 3] float32, faces [F, 3] int64, vertex_colors [V, C] uint8 or None)``; faces wind
counter-clockwise seen from outside (right-hand normals point out of voxel solids and up out of
terrain). Vertices are float32 (what glTF stores): keep coordinates local with ``origin`` when they
are large, a UTM northing of 4.4e6 m is resolved to only 0.5 m in float32.
Save them with :func:`renderers.export.save_mesh`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from earthgen_base.errors import UserInputError

MeshArrays = tuple[np.ndarray, np.ndarray, np.ndarray | None]

# Corner offsets of the square face of a unit cube on its +axis side (before adding the unit step
# along the axis), walked counter-clockwise seen from +axis: 0, e_b, e_b + e_c, e_c with
# (axis, b, c) a cyclic permutation of (0, 1, 2), so that e_b x e_c = +e_axis.
_QUAD_POS = np.zeros((3, 4, 3), dtype=np.int64)
for _a in range(3):
    _b, _c = (_a + 1) % 3, (_a + 2) % 3
    _QUAD_POS[_a, 1, _b] = 1
    _QUAD_POS[_a, 2, _b] = _QUAD_POS[_a, 2, _c] = 1
    _QUAD_POS[_a, 3, _c] = 1
    _QUAD_POS[_a, :, _a] = 1
_QUAD_NEG = _QUAD_POS[:, [0, 3, 2, 1]].copy()  # reversed walk: normal -e_axis
for _a in range(3):
    _QUAD_NEG[_a, :, _a] = 0
_QUAD_TRIS = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)  # a quad as two triangles


def _as_numpy(x: Any) -> np.ndarray:
    """NumPy view of an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def colors_to_uint8(colors: Any, n: int, name: str = "colors") -> np.ndarray:
    """``[n, 3|4]`` colours, uint8 or float in [0, 1], as uint8 ``[n, 3|4]``."""
    c = _as_numpy(colors)
    if c.ndim != 2 or c.shape[0] != n or c.shape[1] not in (3, 4):
        raise UserInputError(f"{name} must be [{n}, 3] or [{n}, 4], got shape {tuple(c.shape)}")
    if c.dtype == np.uint8:
        return np.ascontiguousarray(c)
    if c.dtype.kind not in "fiu":
        raise UserInputError(f"{name} must be uint8 or float in [0, 1], got dtype {c.dtype}")
    if c.dtype.kind in "iu":
        if c.size and (c.min() < 0 or c.max() > 255):
            raise UserInputError(f"integer {name} must be in 0..255")
        return c.astype(np.uint8)
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise UserInputError(f"{name} contain NaN or infinite values")
    if c.size and (c.min() < 0.0 or c.max() > 1.0):
        raise UserInputError(
            f"float {name} must be in [0, 1] (got {c.min():g}..{c.max():g}); "
            "pass uint8 for 0..255 values"
        )
    return np.rint(c * 255.0).astype(np.uint8)


def _origin3(origin: Any, dims: int = 3) -> np.ndarray:
    o = np.zeros(dims) if origin is None else _as_numpy(origin).astype(np.float64).reshape(-1)
    if o.shape != (dims,) or not np.isfinite(o).all():
        raise UserInputError(f"origin must be {dims} finite numbers (metres), got {origin!r}")
    return o


def voxels_to_mesh(
    coords: Any, voxel_size: float, colors: Any = None, origin: Any = None, flat: bool = True
) -> MeshArrays:
    """Exact boundary surface of the union of voxel cubes.

    ``coords`` ``[N, 3]`` integer voxel indices; voxel ``(i, j, k)`` spans
    ``origin + [i, i+1) x [j, j+1) x [k, k+1) * voxel_size`` metres (``origin`` ``[3]`` metres,
    default 0: world coordinates). Only the square faces between an occupied and an empty voxel
    are emitted, each as two triangles wound counter-clockwise seen from outside. Duplicate
    coordinates count once (the first colour wins). ``colors`` ``[N, 3|4]`` uint8 or float in
    [0, 1] colours each voxel's faces.

    ``flat=True`` (default): four vertices per face, so each face has its voxel's flat colour
    (``V = 4 * faces``). ``flat=False``: vertices shared between faces (one per lattice corner,
    smaller files); a shared vertex's colour is the mean over the faces meeting there.
    Faces where voxels touch only along an edge make the surface non-manifold there (as the
    union of cubes is); volume and area are exact either way.
    Returns ``(vertices [V, 3] float32, faces [F, 3] int64, vertex_colors [V, C] uint8 | None)``.
    """
    c = _as_numpy(coords)
    if c.ndim != 2 or c.shape[1] != 3 or (c.size and c.dtype.kind not in "iu"):
        raise UserInputError(f"voxel coords must be integer [N, 3], got {c.dtype} {tuple(c.shape)}")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise UserInputError(f"voxel size must be a finite number > 0 metres, got {voxel_size}")
    o = _origin3(origin)
    n = len(c)
    col = None if colors is None else colors_to_uint8(colors, n)
    if n == 0:
        nc = 0 if col is None else col.shape[1]
        return (
            np.zeros((0, 3), np.float32),
            np.zeros((0, 3), np.int64),
            None if col is None else np.zeros((0, nc), np.uint8),
        )

    # pack indices (shifted so that every neighbour is inside the box) into int64 keys
    c = c.astype(np.int64)
    lo = c.min(axis=0) - 1
    rel = c - lo
    ext = rel.max(axis=0) + 2
    if float(np.prod(ext.astype(np.float64) + 1)) >= 2.0**62:
        raise UserInputError("voxel coordinates span too large a box to mesh at once; split them")
    stride = np.array([ext[1] * ext[2], ext[2], 1], dtype=np.int64)
    keys, first = np.unique(rel @ stride, return_index=True)  # sorted, deduplicated
    rel = rel[first]
    if col is not None:
        col = col[first]

    exposed = []  # (quad corners [4, 3], voxels whose neighbour on that side is empty [q])
    for axis in range(3):
        for sign, quad in ((1, _QUAD_POS[axis]), (-1, _QUAD_NEG[axis])):
            nb = keys + sign * stride[axis]
            pos = np.minimum(np.searchsorted(keys, nb), len(keys) - 1)
            exposed.append((quad, np.flatnonzero(keys[pos] != nb)))
    own = np.concatenate([idx for _, idx in exposed])  # [Q] voxel of each face
    nq = len(own)
    # lattice corner indices per axis [Q, 4] (int32 is enough: ext < 2**31 per axis here)
    lat = np.empty((3, nq, 4), dtype=np.int64 if ext.max() >= 2**31 - 1 else np.int32)
    start = 0
    for quad, idx in exposed:
        for ax in range(3):
            lat[ax, start : start + len(idx)] = rel[idx, ax][:, None] + quad[None, :, ax]
        start += len(idx)

    if flat:
        # coordinates of the lattice planes, looked up so shared corners are bit-identical
        vertices = np.empty((nq * 4, 3), dtype=np.float32)
        for ax in range(3):
            plane = (np.arange(ext[ax] + 1) + lo[ax]) * float(voxel_size) + o[ax]
            plane = plane.astype(np.float32)
            vertices[:, ax] = plane[lat[ax].ravel()]
        faces = (4 * np.arange(nq, dtype=np.int64))[:, None, None] + _QUAD_TRIS[None]
        vcol = None if col is None else np.repeat(col[own], 4, axis=0)
    else:
        cstride = np.array([(ext[1] + 1) * (ext[2] + 1), ext[2] + 1, 1], dtype=np.int64)
        ck = lat[0].astype(np.int64) * cstride[0] + lat[1].astype(np.int64) * cstride[1] + lat[2]
        ukeys, inv = np.unique(ck.ravel(), return_inverse=True)
        inv = inv.reshape(nq, 4)
        verts = np.stack(
            [ukeys // cstride[0], (ukeys // cstride[1]) % (ext[1] + 1), ukeys % (ext[2] + 1)],
            axis=1,
        )
        vertices = ((verts + lo) * float(voxel_size) + o).astype(np.float32)
        faces = inv[:, _QUAD_TRIS]
        vcol = None
        if col is not None:
            w = np.repeat(col[own].astype(np.float64), 4, axis=0)  # [4Q, C]
            cnt = np.bincount(inv.ravel(), minlength=len(ukeys))
            sums = np.stack(
                [
                    np.bincount(inv.ravel(), weights=w[:, k], minlength=len(ukeys))
                    for k in range(col.shape[1])
                ],
                axis=1,
            )
            vcol = np.clip(np.rint(sums / cnt[:, None]), 0, 255).astype(np.uint8)
    return vertices, faces.reshape(-1, 3).astype(np.int64), vcol


def voxel_grid_to_mesh(grid, flat: bool = True, origin: Any = None) -> MeshArrays:
    """Surface mesh of a :class:`~earthgen.world.voxels.VoxelGrid` with its per-voxel colours
    (see :func:`voxels_to_mesh`)."""
    return voxels_to_mesh(grid.coords, grid.voxel_size, grid.color, origin=origin, flat=flat)


def heightfield_to_mesh(
    height: Any, gsd: float, colors: Any = None, origin: Any = None, decimate: int = 1
) -> MeshArrays:
    """Grid triangulation of a raster DEM ``height`` ``[H, W]`` (metres; NaN = no data).

    One vertex per pixel centre: pixel ``(row, col)`` -> ``x = x0 + (col + 0.5) * gsd``,
    ``y = y_top - (row + 0.5) * gsd``, ``z = height`` (row 0 is the northern edge). ``origin`` =
    ``(x0, y_top)``, the raster's top-left corner in metres; by default ``(0, H * gsd)``, which puts
    the south-west corner at (0, 0). Each pixel square becomes two triangles with upward normals.
    ``decimate = k`` keeps every k-th row and column, plus the last ones so the extent is kept.
    Triangles touching a NaN height are dropped, and so are vertices no triangle uses.
    ``colors`` ``[H, W, 3|4]`` (uint8 or float in [0, 1]) give per-vertex colours.
    Returns ``(vertices [V, 3] float32, faces [F, 3] int64, vertex_colors [V, C] uint8 | None)``.
    """
    h = _as_numpy(height)
    if h.ndim != 2 or h.shape[0] < 2 or h.shape[1] < 2 or h.dtype.kind not in "fiu":
        raise UserInputError(
            f"height must be a numeric [H, W] raster with H, W >= 2, got {h.dtype} {tuple(h.shape)}"
        )
    if not (np.isfinite(gsd) and gsd > 0):
        raise UserInputError(f"gsd must be a finite number > 0 metres per pixel, got {gsd}")
    if int(decimate) != decimate or decimate < 1:
        raise UserInputError(f"decimate must be an integer >= 1, got {decimate}")
    H, W = h.shape
    x0, y_top = _origin3(origin, 2) if origin is not None else (0.0, H * float(gsd))
    k = int(decimate)
    rows = np.unique(np.append(np.arange(0, H, k), H - 1))
    cols = np.unique(np.append(np.arange(0, W, k), W - 1))
    z = h[np.ix_(rows, cols)].astype(np.float64)
    if np.isinf(z).any():
        raise UserInputError("height contains infinite values (use NaN for no data)")
    col = None
    if colors is not None:
        cc = _as_numpy(colors)
        if cc.ndim != 3 or cc.shape[:2] != (H, W):
            raise UserInputError(f"colors must be [{H}, {W}, 3|4], got shape {tuple(cc.shape)}")
        sub = cc[np.ix_(rows, cols)].reshape(-1, cc.shape[2])
        col = colors_to_uint8(sub, len(rows) * len(cols))
    hh, ww = len(rows), len(cols)
    X, Y = np.meshgrid(x0 + (cols + 0.5) * gsd, y_top - (rows + 0.5) * gsd)
    vertices = np.stack([X.ravel(), Y.ravel(), z.ravel()], axis=1)
    ids = np.arange(hh * ww, dtype=np.int64).reshape(hh, ww)
    a, b = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()  # north-west, north-east
    d, e = ids[1:, :-1].ravel(), ids[1:, 1:].ravel()  # south-west, south-east
    # counter-clockwise seen from above: (d - a) x (b - a) points up
    faces = np.concatenate([np.stack([a, d, b], 1), np.stack([b, d, e], 1)])
    bad = np.isnan(vertices[:, 2])
    if bad.any():
        faces = faces[~bad[faces].any(axis=1)]
        if len(faces) == 0:
            raise UserInputError(
                "no triangle of the height field has valid heights at all 3 corners"
            )
        used = np.zeros(len(vertices), dtype=bool)
        used[faces.ravel()] = True
        remap = np.cumsum(used) - 1
        vertices, faces = vertices[used], remap[faces]
        col = None if col is None else col[used]
    return vertices.astype(np.float32), faces, col
