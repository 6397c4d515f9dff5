"""Write a 3D scene's deliverables in one call: a GLB mesh (viewers, gradio's Model3D), a PLY
mesh, a Gaussian-splat PLY of the surfels, a point cloud of the voxels and rendered views.

Coordinates are written local to the scene (``origin`` subtracted) so float32 files keep
centimetre precision; ``scene.json`` records the origin (metres, the scene's CRS) to put them back.
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
    ``center`` (metres) framing ``extent_m``; returns ``[n, size, size, 3]`` uint8."""
    from renderers.cameras import orbit_rig
    from renderers.rasterization import render_surfels

    radius = (
        0.6 * math.sqrt(2) * extent_m / math.tan(math.radians(22.5))
    )  # the whole footprint in view
    vm, Ks = orbit_rig(
        center, radius, elevation_deg, n, size, size, fov_x_deg=45.0, start_azimuth_deg=30.0
    )
    g = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in surfels.items() if k != "voxel"}
    with torch.no_grad():
        img = render_surfels(g, vm, Ks, size, background)
    return (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


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
    lo, hi = ctr.min(0), ctr.max(0)
    imgs = render_views(
        s,
        torch.tensor((lo + hi) / 2 + origin, dtype=torch.float32),
        float(np.max(hi - lo)),
        image_size,
        views,
    )
    cols = 2 if views > 1 else 1
    rows = math.ceil(views / cols)
    grid = np.full((rows * image_size, cols * image_size, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, q = divmod(i, cols)
        grid[r * image_size : (r + 1) * image_size, q * image_size : (q + 1) * image_size] = im
    paths["render"] = write_png(out / "render.png", grid)
    paths["json"] = write_json(
        out / "scene.json",
        {
            "origin_m": origin.tolist(),
            "voxel_size_m": voxel_size,
            "voxels": int(len(coords)),
            "surfels": int(len(s["means"])),
            "mesh_faces": int(len(f)),
            "frame": "local metres, x east, y north, z up "
            "(scene.glb is y-up); add origin_m for world coordinates",
        },
    )
    return {k: str(p) for k, p in paths.items()}
