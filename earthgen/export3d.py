"""Write a 3D scene's deliverables in one call: a GLB mesh (viewers, gradio's Model3D), a PLY
mesh, a Gaussian-splat PLY of the surfels, a point cloud of the voxels and rendered views.

Coordinates are written local to the scene (``origin`` subtracted) so float32 files keep
centimetre precision; ``scene.json`` records the origin (metres, the scene's CRS) to put them back.

:func:`save_scene` takes arrays; :func:`save_scene_store` writes the same files from a scene
streamed to disk (:mod:`earthgen.scene_store`), one chunk at a time, within two budgets
(``MESH_VOXEL_BUDGET``, ``RENDER_SURFEL_BUDGET``; docs/scene.md, "Memory").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from earthgen.io import write_json, write_png


def render_views(
    surfels: dict,
    center,
    extent_m: float,
    size: int = 512,
    n: int = 4,
    elevation_deg: float = 45.0,
    background=(1.0, 1.0, 1.0),
) -> np.ndarray:
    """``n`` orbit views of ``surfels`` (means, quats, scales [M, 2|3], opacities, colors) around
    ``center`` (metres) framing ``extent_m``; returns ``[n, size, size, 3]`` uint8. Views are
    rendered one by one: memory grows with the surfels, not with ``n``."""
    from renderers.cameras import orbit_rig
    from renderers.rasterization import render_surfels

    radius = (
        0.6 * math.sqrt(2) * extent_m / math.tan(math.radians(22.5))
    )  # the whole footprint in view
    vm, Ks = orbit_rig(
        center, radius, elevation_deg, n, size, size, fov_x_deg=45.0, start_azimuth_deg=30.0
    )
    g = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in surfels.items() if k != "voxel"}
    out = np.empty((n, size, size, 3), np.uint8)
    with torch.no_grad():  # one view at a time: the projection's memory is per surfel and view
        for i in range(n):
            img = render_surfels(g, vm[i : i + 1], Ks[i : i + 1], size, background)
            out[i] = (img[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return out


def _view_grid(imgs: np.ndarray, image_size: int, views: int) -> np.ndarray:
    """Views ``[n, S, S, 3]`` uint8 as a grid two wide (one for a single view) on white."""
    cols = 2 if views > 1 else 1
    rows = math.ceil(views / cols)
    grid = np.full((rows * image_size, cols * image_size, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, q = divmod(i, cols)
        grid[r * image_size : (r + 1) * image_size, q * image_size : (q + 1) * image_size] = im
    return grid


def save_scene(
    out: str | Path,
    coords: np.ndarray,
    voxel_size: float,
    origin,
    colors: np.ndarray,
    surfels: dict,
    semantic: np.ndarray | None = None,
    image_size: int = 512,
    views: int = 4,
) -> dict:
    """Write ``scene.glb`` / ``scene_mesh.ply`` (voxel surface mesh), ``gaussians.ply``
    (surfels), ``voxels.ply`` (voxel centres with colour and class), ``render.png`` (a grid of
    orbit views) and ``scene.json`` under ``out``.

    ``coords`` ``[N, 3]`` local voxel indices; ``origin`` ``[3]`` metres of local voxel 0's corner;
    ``colors`` ``[N, 3]`` uint8; ``surfels`` in world metres. Returns the paths written.
    """
    from renderers.export import save_gaussians_ply, save_mesh, save_point_cloud
    from renderers.mesh import voxels_to_mesh

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    origin = np.asarray(origin, dtype=np.float64)
    v, f, c = voxels_to_mesh(coords, voxel_size, colors)
    paths = {
        "glb": save_mesh(out / "scene.glb", v, f, c),
        "mesh_ply": save_mesh(out / "scene_mesh.ply", v, f, c),
    }
    s = {
        k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
        for k, v in surfels.items()
    }
    paths["gaussians"] = save_gaussians_ply(
        out / "gaussians.ply",
        s["means"] - origin,
        s["quats"],
        s["scales"],
        s["opacities"],
        colors=s["colors"],
    )
    ctr = (coords.astype(np.float64) + 0.5) * voxel_size
    paths["voxels"] = save_point_cloud(
        out / "voxels.ply",
        ctr,
        colors,
        fields={"semantic": semantic} if semantic is not None else None,
    )
    info = {"voxels": int(len(coords)), "surfels": int(len(s["means"])), "mesh_faces": int(len(f))}
    paths.update(
        _render_and_describe(
            out, s, ctr.min(0), ctr.max(0), origin, voxel_size, image_size, views, info
        )
    )
    return {k: str(p) for k, p in paths.items()}


def _render_and_describe(
    out: Path,
    surfels: dict,
    lo,
    hi,
    origin,
    voxel_size: float,
    image_size: int,
    views: int,
    info: dict,
) -> dict:
    """``render.png`` (``views`` orbit views of ``surfels`` framing the voxel centres ``lo`` ..
    ``hi`` ``[3]``, local metres) and ``scene.json`` (origin, voxel size, ``info``, the frame)."""
    imgs = render_views(
        surfels,
        torch.tensor((lo + hi) / 2 + origin, dtype=torch.float32),
        float(np.max(hi - lo)),
        image_size,
        views,
    )
    render = write_png(out / "render.png", _view_grid(imgs, image_size, views))
    meta = {
        "origin_m": np.asarray(origin).tolist(),
        "voxel_size_m": voxel_size,
        **info,
        "frame": "local metres, x east, y north, z up "
        "(scene.glb is y-up); add origin_m for world coordinates",
    }
    return {"render": render, "json": write_json(out / "scene.json", meta)}


# ----------------------------------------------------------------------------------------------
# Scenes streamed to disk (earthgen.scene_store): the same files, chunk by chunk

MESH_VOXEL_BUDGET = 500_000  # voxels meshed at once: scene.glb's budget (about 0.5 GB to mesh)
RENDER_SURFEL_BUDGET = 1_000_000  # surfels rendered at once (about 0.5 KB each per view)
_CELL_BITS = 19  # packed cell keys: 19 bits per axis (cells -2^18 .. 2^18), 3 for a direction


def _cell_keys(cells: np.ndarray) -> np.ndarray:
    """Integer cells ``[k, 3]`` (each in ``-2^18 .. 2^18``) or ``[k, 4]`` (+ a direction 0..7)
    -> unique int64 keys ``[k]``."""
    off = 1 << (_CELL_BITS - 1)
    key = np.zeros(len(cells), np.int64)
    for ax in range(3):
        key = (key << _CELL_BITS) | (cells[:, ax].astype(np.int64) + off)
    if cells.shape[1] == 4:
        key = (key << 3) | cells[:, 3].astype(np.int64)
    return key


def _group(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``cells`` ``[k, C]`` (sorted by key) and each row's group ``[k]``."""
    _, first, inv = np.unique(_cell_keys(cells), return_index=True, return_inverse=True)
    return cells[first], inv.reshape(-1)


def _merge(cells: np.ndarray, sums: np.ndarray, peak: np.ndarray | None = None):
    """Rows with equal ``cells`` merged: ``sums`` ``[k, D]`` added, ``peak`` ``[k]`` maximum."""
    u, inv = _group(cells)
    s = np.zeros((len(u), sums.shape[1]))
    np.add.at(s, inv, sums)
    if peak is None:
        return u, s, None
    p = np.zeros(len(u))
    np.maximum.at(p, inv, peak)
    return u, s, p


def _factor(n: int, budget: int) -> int:
    """The smallest power of two ``f`` with ``n / f^2 <= budget`` (a surface of ``n`` elements
    merged into cells of ``f x f``)."""
    f = 1
    while n / (f * f) > budget:
        f *= 2
    return f


def lod_voxels(store, budget: int = MESH_VOXEL_BUDGET) -> tuple[np.ndarray, np.ndarray, int]:
    """The voxels of a streamed scene merged into cubes of ``f`` voxels a side: ``(coords [K, 3]
    int64 in cubes, colors [K, 3] uint8 the mean of their voxels, f)`` with ``K <= budget``.
    ``f`` (a power of two) starts at half what ``n / f^2 <= budget`` asks and doubles until the
    budget holds. Read chunk by chunk; memory: the cubes of that first ``f``."""
    f = max(1, _factor(store.n_voxels, budget) // 2)  # merging beats n / f^2: try finer first
    cells, sums = [], []
    for i in range(len(store)):
        ch = store.read(i, ("coords", "colors"))
        c = np.floor_divide(ch["coords"], f)
        s = np.concatenate([ch["colors"].astype(np.float64), np.ones((len(c), 1))], 1)
        u, s, _ = _merge(c, s)
        cells.append(u)
        sums.append(s)
    u, s, _ = _merge(np.concatenate(cells), np.concatenate(sums))
    while len(u) > budget:  # coarser cubes until within the budget
        f *= 2
        u, s, _ = _merge(np.floor_divide(u, 2), s)
    colors = np.clip(np.rint(s[:, :3] / s[:, 3:]), 0, 255).astype(np.uint8)
    return u.astype(np.int64), colors, f


# quaternion (w, x, y, z) turning +z to each axis direction: +x, -x, +y, -y, +z, -z
_S = math.sqrt(0.5)
_DIR_QUATS = np.array(
    [[_S, 0, _S, 0], [_S, 0, -_S, 0], [_S, -_S, 0, 0], [_S, _S, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]],
    dtype=np.float32,
)


def _surfel_dirs(quats: np.ndarray) -> np.ndarray:
    """Axis direction (0..5: +x, -x, +y, -y, +z, -z) nearest each surfel's normal (the rotated z
    axis of ``quats`` ``[M, 4]`` wxyz)."""
    q = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    n = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)
    ax = np.abs(n).argmax(1)
    return 2 * ax + (n[np.arange(len(n)), ax] < 0)


def lod_surfels(store, voxel_size: float, budget: int = RENDER_SURFEL_BUDGET) -> dict:
    """At most ``budget`` surfels standing for a streamed scene's surfels in renders: all of them
    (read back, in order) when there are no more than ``budget``; else those of each cell of
    ``f x f x f`` voxels (``f`` a power of two) and normal direction (the nearest of the six
    axis directions) merged into one flat disc: opacity-weighted mean position and colour, the
    largest opacity, the axis as normal, ``0.4 f`` voxels standard deviation (neighbouring discs
    overlap, no gaps). ``f`` starts at half the power of two that ``n / f^2 <= budget`` asks
    (merged surfaces shrink faster than that) and doubles until the budget holds. Read chunk by
    chunk; memory: the merged cells of that first ``f`` (a few times the budget at most).
    Returns a surfel dict (``means``, ``quats``, ``scales``, ``opacities``, ``colors``; float32).
    """
    if store.n_surfels <= budget:
        return store.load("surfels")
    f = max(1, _factor(store.n_surfels, budget) // 2)  # merging beats n / f^2: try finer first
    cells, sums, peaks = [], [], []
    scale_cols = 3
    for i in range(len(store)):
        s = store.read(i, ("surfels",))["surfels"]
        scale_cols = s["scales"].shape[1]
        w = s["opacities"].astype(np.float64)[:, None]
        c = np.concatenate(
            [
                np.floor(s["means"] / (f * voxel_size)).astype(np.int64),
                _surfel_dirs(s["quats"])[:, None],
            ],
            1,
        )
        u, sm, pk = _merge(
            c, np.concatenate([w, w * s["means"], w * s["colors"]], 1), s["opacities"]
        )
        cells.append(u)
        sums.append(sm)
        peaks.append(pk)
    u, sm, pk = _merge(np.concatenate(cells), np.concatenate(sums), np.concatenate(peaks))
    while len(u) > budget:  # coarser cells until within the budget
        f *= 2
        u = np.concatenate([np.floor_divide(u[:, :3], 2), u[:, 3:]], 1)
        u, sm, pk = _merge(u, sm, pk)
    w = np.maximum(sm[:, :1], 1e-12)
    sigma = np.full((len(u), scale_cols), 0.4 * f * voxel_size, np.float32)
    if scale_cols == 3:
        sigma[:, 2] *= 1e-3
    return {
        "means": (sm[:, 1:4] / w).astype(np.float32),
        "quats": _DIR_QUATS[u[:, 3]],
        "scales": sigma,
        "opacities": pk.astype(np.float32),
        "colors": np.clip(sm[:, 4:7] / w, 0, 1).astype(np.float32),
    }


def _ply_parts(path: Path, n: int, writes) -> Path:
    """One binary PLY of ``n`` vertices at ``path`` from the PLY files ``writes`` (callables
    ``fn(tmp_path)`` each writing one part with the same properties), in order: the first part's
    header with the total count, then every part's records. Byte for byte the file one call
    would write for all the records at once."""
    from earthgen.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        part = Path(str(tmp) + ".part.ply")
        for k, write in enumerate(writes):
            write(part)
            raw = part.read_bytes()
            end = raw.index(b"end_header\n") + len(b"end_header\n")
            if k == 0:
                head = raw[:end].decode("ascii").splitlines(keepends=True)
                fh.write(
                    "".join(
                        f"element vertex {n}\n" if h.startswith("element vertex ") else h
                        for h in head
                    ).encode("ascii")
                )
            fh.write(raw[end:])
        part.unlink(missing_ok=True)
    return path


def _quad_owners(v: np.ndarray, f: np.ndarray, voxel_size: float) -> np.ndarray:
    """Voxel column ``[Q, 2]`` (x, y) owning each quad of a flat :func:`voxels_to_mesh` mesh
    (quad ``q`` = faces ``2q, 2q + 1``): the voxel behind the face, against its normal."""
    tri = v[f[0::2]].astype(np.float64) / voxel_size  # [Q, 3, 3] first triangle of each quad
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.sign(np.round(n / np.maximum(np.abs(n).max(1, keepdims=True), 1e-12)))
    centre = v[4 * (np.arange(len(tri)))[:, None] + np.arange(4)].astype(np.float64).mean(1)
    return np.floor(centre / voxel_size - 0.5 * n)[:, :2].astype(np.int64)


def mesh_tiles(store, voxel_size: float):
    """The full-resolution voxel surface mesh of a streamed scene, one tile per window core:
    yields ``(box, vertices [V, 3] float32, faces [F, 3], colors [V, 3] uint8)``. Each tile is
    meshed with its neighbours' voxels one column around it (so no face is made between two
    tiles' voxels) and keeps the faces of its own voxels: the tiles together are the mesh of the
    whole scene (:func:`renderers.mesh.voxels_to_mesh`, ``flat``), its faces in another order."""
    from renderers.mesh import voxels_to_mesh

    boxes = [c.box for c in store.chunks]
    for ch in store.chunks:
        if not ch.window:
            continue
        x0, y0, x1, y1 = ch.box
        coords, colors = [], []
        for j, b in enumerate(boxes):
            if b[0] <= x1 and x0 <= b[2] and b[1] <= y1 and y0 <= b[3]:  # touches the halo
                d = store.read(j, ("coords", "colors"))
                c = d["coords"]
                near = (c[:, 0] >= x0 - 1) & (c[:, 0] <= x1) & (c[:, 1] >= y0 - 1) & (c[:, 1] <= y1)
                coords.append(c[near])
                colors.append(d["colors"][near])
        c, col = np.concatenate(coords), np.concatenate(colors)
        if not len(c):
            continue
        v, f, vc = voxels_to_mesh(c, voxel_size, col)
        own = _quad_owners(v, f, voxel_size)
        q = np.nonzero((own[:, 0] >= x0) & (own[:, 0] < x1) & (own[:, 1] >= y0) & (own[:, 1] < y1))[
            0
        ]
        if not len(q):
            continue
        keep_v = (4 * q[:, None] + np.arange(4)).ravel()
        faces = (4 * np.arange(len(q)))[:, None, None] + np.array([[0, 1, 2], [0, 2, 3]])
        yield ch.box, v[keep_v], faces.reshape(-1, 3), vc[keep_v]


def _save_mesh_ply_parts(path: Path, tiles, tmp_dir: Path) -> int:
    """Tiles ``(box, vertices, faces, colors)`` -> one binary PLY mesh at ``path`` (trimesh's
    layout: x y z float, red green blue alpha uchar; faces as uchar-counted int lists), written
    through two temporary files in ``tmp_dir``; returns the number of faces."""
    from earthgen.io import atomic_path

    vdt = np.dtype([("p", "<f4", (3,)), ("c", "u1", (4,))])
    fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
    vpath, fpath = tmp_dir / "mesh_vertices.bin", tmp_dir / "mesh_faces.bin"
    nv = nf = 0
    with open(vpath, "wb") as vf, open(fpath, "wb") as ff:
        for _, v, f, c in tiles:
            rv = np.empty(len(v), vdt)
            rv["p"], rv["c"][:, :3], rv["c"][:, 3] = v, c[:, :3], 255
            rf = np.empty(len(f), fdt)
            rf["n"], rf["i"] = 3, f + nv
            vf.write(rv.tobytes())
            ff.write(rf.tobytes())
            nv, nf = nv + len(v), nf + len(f)
    head = (
        "ply\nformat binary_little_endian 1.0\ncomment https://github.com/mikedh/trimesh\n"
        f"element vertex {nv}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {nf}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    import shutil

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(head.encode("ascii"))
        for p in (vpath, fpath):
            with open(p, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 24)
            p.unlink()
    return nf


def save_scene_store(
    out: str | Path,
    store,
    voxel_size: float,
    origin,
    image_size: int = 512,
    views: int = 4,
    mesh_budget: int = MESH_VOXEL_BUDGET,
    render_surfels: dict | None = None,
    render_budget: int = RENDER_SURFEL_BUDGET,
) -> dict:
    """:func:`save_scene` for a scene streamed to disk (:class:`earthgen.scene_store.SceneStore`),
    reading it chunk by chunk: ``gaussians.ply`` and ``voxels.ply`` are written part by part
    (the same bytes as :func:`save_scene`'s). Up to ``mesh_budget`` voxels, ``scene.glb`` and
    ``scene_mesh.ply`` are the whole mesh as :func:`save_scene` writes it; above it,
    ``scene_mesh.ply`` is the full-resolution mesh written tile by tile (:func:`mesh_tiles`),
    ``tiles/tile_X_Y.glb`` the same per window core (X, Y: its south-west corner in metres from
    the scene's; same frame as scene.glb, so the tiles fit together) and ``scene.glb`` an
    overview of at most ``mesh_budget`` merged voxels (:func:`lod_voxels`). ``render.png``
    renders ``render_surfels`` (default :func:`lod_surfels` under ``render_budget``: all the
    surfels up to it, the same image as :func:`save_scene`'s). Memory: the budgets, never the
    whole scene. Returns the paths written (an empty scene: ValueError)."""
    from renderers.export import save_gaussians_ply, save_mesh, save_point_cloud
    from renderers.mesh import voxels_to_mesh

    if not store.n_voxels:
        raise ValueError("the scene is empty (no voxels)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    origin = np.asarray(origin, dtype=np.float64)
    parts = [i for i, c in enumerate(store.chunks) if c.voxels]
    meta: dict = {}
    if store.n_voxels <= mesh_budget:
        v, f, c = voxels_to_mesh(store.load("coords"), voxel_size, store.load("colors"))
        paths = {
            "glb": save_mesh(out / "scene.glb", v, f, c),
            "mesh_ply": save_mesh(out / "scene_mesh.ply", v, f, c),
        }
        faces = len(f)
        del v, f, c
    else:
        (out / "tiles").mkdir(exist_ok=True)

        def tiles():
            for box, v, f, c in mesh_tiles(store, voxel_size):
                name = f"tile_{box[0] * voxel_size:g}_{box[1] * voxel_size:g}.glb"
                save_mesh(out / "tiles" / name, v, f, c)
                yield box, v, f, c

        faces = _save_mesh_ply_parts(out / "scene_mesh.ply", tiles(), out)
        paths = {"mesh_ply": out / "scene_mesh.ply", "tiles": out / "tiles"}
        lc, lcol, k = lod_voxels(store, mesh_budget)
        v, f, c = voxels_to_mesh(lc, k * voxel_size, lcol)
        paths["glb"] = save_mesh(out / "scene.glb", v, f, c)
        del v, f, c
        meta = {
            "tiles": len(list((out / "tiles").glob("*.glb"))),
            "overview_voxel_m": k * voxel_size,
            "overview_voxels": int(len(lc)),
        }

    def gauss(i):
        def write(path):
            s = store.read(i, ("surfels",))["surfels"]
            save_gaussians_ply(
                path, s["means"] - origin, s["quats"], s["scales"], s["opacities"], s["colors"]
            )

        return write

    def points(i):
        def write(path):
            d = store.read(i, ("coords", "colors"))
            ctr = (d["coords"].astype(np.float64) + 0.5) * voxel_size
            save_point_cloud(path, ctr, d["colors"])

        return write

    s_parts = [i for i, c in enumerate(store.chunks) if c.surfels] or parts[:1]  # header only
    paths["gaussians"] = _ply_parts(out / "gaussians.ply", store.n_surfels, map(gauss, s_parts))
    paths["voxels"] = _ply_parts(out / "voxels.ply", store.n_voxels, map(points, parts))
    lo_v, hi_v = store.bounds()
    lo, hi = (lo_v + 0.5) * voxel_size, (hi_v + 0.5) * voxel_size
    s = (
        render_surfels
        if render_surfels is not None
        else lod_surfels(store, voxel_size, render_budget)
    )
    info = {
        "voxels": int(store.n_voxels),
        "surfels": int(store.n_surfels),
        "mesh_faces": int(faces),
        **meta,
    }
    paths.update(_render_and_describe(out, s, lo, hi, origin, voxel_size, image_size, views, info))
    return {k: str(p) for k, p in paths.items()}
