"""Exporters (Gaussian PLY, meshes, point clouds) and the voxel / height-field meshers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import fixture_path

from earthgen.errors import UserInputError
from earthgen.world.voxels import VoxelGrid
from renderers.export import (
    SH_C0,
    load_gaussians_ply,
    save_gaussians_ply,
    save_mesh,
    save_point_cloud,
    to_y_up,
)
from renderers.mesh import heightfield_to_mesh, voxel_grid_to_mesh, voxels_to_mesh

ROOT = Path(__file__).resolve().parents[1]


def _read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """(header lines, float32 [N, P] body) of a PLY whose vertex properties are all float."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    props = [ln.split()[2] for ln in lines if ln.startswith("property")]
    return lines, np.frombuffer(raw[end:], dtype="<f4").reshape(-1, len(props))


def _mesh(v, f) -> trimesh.Trimesh:
    m = trimesh.Trimesh(v, f, process=False)
    m.merge_vertices()
    return m


def _exposed_faces(coords: np.ndarray) -> int:
    """Faces between an occupied and an empty voxel, counted on a dense grid."""
    c = coords - coords.min(axis=0) + 1
    occ = np.zeros(tuple(c.max(axis=0) + 2), dtype=bool)
    occ[c[:, 0], c[:, 1], c[:, 2]] = True
    return int(sum(np.count_nonzero(np.diff(occ, axis=a)) for a in range(3)))


# ------------------------------------------------------------------------------------- voxels


def test_single_voxel_is_a_closed_outward_cube():
    s, origin = 0.5, np.array([10.0, -4.0, 2.0])
    coords = np.array([[3, -2, 7]], dtype=np.int32)
    v, f, c = voxels_to_mesh(coords, s, [[200, 10, 20]], origin=origin)
    assert len(f) == 12 and len(v) == 24 and v.dtype == np.float32 and f.dtype == np.int64
    assert (c == [200, 10, 20]).all()
    m = _mesh(v, f)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(s**3, rel=1e-6)  # positive: normals point out
    lo = origin + np.array([3, -2, 7]) * s
    np.testing.assert_allclose(m.bounds, [lo, lo + s], atol=1e-6)
    centre = lo + s / 2
    assert ((m.triangles_center - centre) * m.face_normals).sum(axis=1).min() > 0


@pytest.mark.parametrize("flat", [True, False])
def test_block_and_l_shape(flat):
    s = 2.0
    block = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    v, f, _ = voxels_to_mesh(block, s, flat=flat)
    assert len(f) == 48
    m = _mesh(v, f)
    assert m.is_watertight and m.volume == pytest.approx(8 * s**3)
    if not flat:
        assert len(v) == 26  # the 3x3x3 lattice less its centre
    ell = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0]])
    v, f, _ = voxels_to_mesh(ell, s, flat=flat)
    m = _mesh(v, f)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(5 * s**3)
    assert m.area == pytest.approx(_exposed_faces(ell) * s**2) and _exposed_faces(ell) == 22


@pytest.mark.parametrize("flat", [True, False])
def test_random_voxels_volume_and_area(flat):
    rng = np.random.default_rng(0)
    s = 0.25
    for _ in range(4):
        coords = rng.integers(-6, 6, size=(300, 3)).astype(np.int32)  # with duplicates
        u = np.unique(coords, axis=0)
        colors = rng.integers(0, 256, size=(len(coords), 3), dtype=np.uint8)
        v, f, c = voxels_to_mesh(coords, s, colors, flat=flat)
        m = trimesh.Trimesh(v, f, process=False)
        assert m.volume == pytest.approx(len(u) * s**3, rel=1e-5)
        assert m.area == pytest.approx(_exposed_faces(u) * s**2, rel=1e-5)
        assert len(f) == 2 * _exposed_faces(u) and c.shape == (len(v), 3)


def test_face_colours_come_from_their_voxel():
    v, f, c = voxels_to_mesh([[0, 0, 0], [1, 0, 0]], 1.0, np.array([[1.0, 0, 0], [0, 0, 1.0]]))
    x = v[f].mean(axis=1)[:, 0]  # triangle centroid x
    tri_col = c[f[:, 0]]
    assert (c[f[:, 0]] == c[f[:, 1]]).all() and (c[f[:, 0]] == c[f[:, 2]]).all()
    assert (tri_col[x < 1] == [255, 0, 0]).all() and (tri_col[x > 1] == [0, 0, 255]).all()
    assert len(f) == 20  # the shared face is not emitted


def test_million_voxels():
    g = np.stack(np.meshgrid(*[np.arange(100)] * 3, indexing="ij"), -1).reshape(-1, 3)
    v, f, _ = voxels_to_mesh(g, 0.1)
    assert len(f) == 2 * 6 * 100 * 100
    assert trimesh.Trimesh(v, f, process=False).volume == pytest.approx(1000.0, rel=1e-4)


def test_voxel_grid_of_a_world_tile():
    from earthgen.world import generate_world

    tile = generate_world(seed=3, size=64, gsd=1.0)
    grid = tile.voxels(2.0)
    v, f, c = voxel_grid_to_mesh(grid)
    m = _mesh(v, f)
    assert m.volume == pytest.approx(len(grid) * 8.0, rel=1e-5)
    assert c.dtype == np.uint8 and set(map(tuple, c)) <= set(map(tuple, grid.color))
    lo, hi = grid.coords.min(0) * 2.0, (grid.coords.max(0) + 1) * 2.0
    np.testing.assert_allclose(m.bounds, [lo, hi])
    top_left = (tile.grid.x0, tile.grid.y0)
    hv, _, hc = heightfield_to_mesh(tile.height, tile.gsd, tile.rgb, origin=top_left)
    x0, y0, x1, y1 = tile.grid.bounds
    np.testing.assert_allclose(hv[:, :2].min(0), [x0 + 0.5, y0 + 0.5], atol=1e-4)
    np.testing.assert_allclose(hv[:, :2].max(0), [x1 - 0.5, y1 - 0.5], atol=1e-4)
    assert hc.shape == (64 * 64, 3)


def test_voxel_input_errors():
    with pytest.raises(UserInputError):
        voxels_to_mesh(np.zeros((3, 3)), 1.0)  # float coords
    with pytest.raises(UserInputError):
        voxels_to_mesh(np.zeros((3, 2), dtype=int), 1.0)
    with pytest.raises(UserInputError):
        voxels_to_mesh(np.zeros((3, 3), dtype=int), 0.0)
    with pytest.raises(UserInputError):
        voxels_to_mesh(np.zeros((3, 3), dtype=int), 1.0, colors=np.full((3, 3), 2.0))
    v, f, c = voxels_to_mesh(np.zeros((0, 3), dtype=int), 1.0, np.zeros((0, 3), np.uint8))
    assert v.shape == (0, 3) and f.shape == (0, 3) and c.shape == (0, 3)


# ------------------------------------------------------------------------------- height field


def test_heightfield_plane():
    H, W, gsd, a, b = 6, 9, 2.0, 0.3, -0.2
    x0, y_top = 100.0, 50.0
    col = np.arange(W) + 0.5
    row = np.arange(H) + 0.5
    X, Y = np.meshgrid(x0 + col * gsd, y_top - row * gsd)
    height = a * X + b * Y + 7.0
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    v, f, c = heightfield_to_mesh(height, gsd, rgb, origin=(x0, y_top))
    assert len(v) == H * W and len(f) == 2 * (H - 1) * (W - 1)
    np.testing.assert_allclose(v[:, :2], np.stack([X.ravel(), Y.ravel()], 1))
    np.testing.assert_array_equal(c, rgb.reshape(-1, 3))
    n = np.array([-a, -b, 1.0]) / math.sqrt(a * a + b * b + 1)
    m = trimesh.Trimesh(v.astype(np.float64), f, process=False)
    np.testing.assert_allclose(m.face_normals, np.broadcast_to(n, (len(f), 3)), atol=1e-5)
    # default origin: south-west corner at (0, 0)
    v, _, _ = heightfield_to_mesh(height, gsd)
    np.testing.assert_allclose(v[:, :2].min(0), [gsd / 2, gsd / 2])
    np.testing.assert_allclose(v[:, :2].max(0), [W * gsd - gsd / 2, H * gsd - gsd / 2])


def test_heightfield_decimate_and_nodata():
    h = np.zeros((7, 10), dtype=np.float32)
    v, f, _ = heightfield_to_mesh(h, 1.0, decimate=3)  # rows 0 3 6, cols 0 3 6 9
    assert len(v) == 12 and len(f) == 2 * 2 * 3
    np.testing.assert_allclose(np.unique(v[:, 0]), [0.5, 3.5, 6.5, 9.5])
    h[0, 0] = np.nan  # drops the one triangle at that corner, and the vertex
    v, f, _ = heightfield_to_mesh(h, 1.0)
    assert len(v) == 69 and len(f) == 2 * 6 * 9 - 1 and np.isfinite(v).all()
    with pytest.raises(UserInputError):
        heightfield_to_mesh(np.full((3, 3), np.nan), 1.0)
    with pytest.raises(UserInputError):
        heightfield_to_mesh(np.zeros((1, 5)), 1.0)
    with pytest.raises(UserInputError):
        heightfield_to_mesh(np.zeros((4, 5)), 1.0, decimate=0)


def _used_pixels(valid: np.ndarray) -> np.ndarray:
    """Pixels that are a corner of at least one all-valid triangle (loops, for reference)."""
    used = np.zeros_like(valid)
    for r in range(valid.shape[0] - 1):
        for c in range(valid.shape[1] - 1):
            for tri in (((r, c), (r + 1, c), (r, c + 1)), ((r, c + 1), (r + 1, c), (r + 1, c + 1))):
                if all(valid[p] for p in tri):
                    for p in tri:
                        used[p] = True
    return used


def _read_dem(path: Path) -> tuple[np.ndarray, float]:
    import rasterio
    from rasterio.crs import CRS

    from earthgen.data.geotiff import gsd_from_transform

    with rasterio.open(path) as ds:
        z = ds.read(1).astype(np.float64)
        if ds.nodata is not None:
            z[z == ds.nodata] = np.nan
        crs = ds.crs or CRS.from_epsg(4326)  # the ESRI ASCII grid is in degrees without a .prj
        return z, gsd_from_transform(ds.transform, crs, z.shape)


def test_heightfield_on_real_dems():
    z, gsd = _read_dem(fixture_path("dem/landlab_SRTMGL3_40.09_-105.56_40.21_-105.44.asc"))
    assert 60 < gsd < 90  # 3 arc-seconds at 40 N
    v, f, _ = heightfield_to_mesh(z, gsd)
    assert len(v) == z.size and len(f) == 2 * (z.shape[0] - 1) * (z.shape[1] - 1)
    assert (v[:, 2].min(), v[:, 2].max()) == (z.min(), z.max()) == (2186, 3345)
    assert (trimesh.Trimesh(v, f, process=False).face_normals[:, 2] > 0).all()
    v4, _, _ = heightfield_to_mesh(z, gsd, decimate=4)
    assert len(v4) == 37 * 37  # 0, 4, ..., 140 and 143

    z, gsd = _read_dem(fixture_path("dem/osmnx_elevation1.tif"))  # nodata over the bay
    valid = np.isfinite(z)
    assert not valid.all()
    v, f, _ = heightfield_to_mesh(z, gsd)
    used = _used_pixels(valid)
    assert len(v) == used.sum()
    assert (v[:, 2].min(), v[:, 2].max()) == (z[used].min(), z[used].max())
    assert v[:, 2].max() == np.nanmax(z)


# ------------------------------------------------------------------------------ Gaussian PLY


def _splats(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, generator=g) * 10,
        torch.randn(n, 4, generator=g),
        torch.exp(torch.randn(n, 2, generator=g) - 1),
        torch.rand(n, generator=g) * 0.98 + 0.01,
        torch.rand(n, 3, generator=g),
    )


def test_gaussian_ply_surfels_round_trip(tmp_path):
    means, quats, scales, opac, rgb = _splats(257)
    path = save_gaussians_ply(tmp_path / "s.ply", means, quats, scales, opac, colors=rgb)
    lines, body = _read_ply(path)
    names = [ln.split()[2] for ln in lines if ln.startswith("property")]
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {len(means)}" in lines
    assert all(ln.startswith("property float ") for ln in lines if ln.startswith("property"))
    assert names == [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    assert body.shape == (257, 17)
    # stored values: pre-activation
    q = torch.nn.functional.normalize(quats, dim=1)
    np.testing.assert_allclose(body[:, 9], torch.logit(opac).numpy(), atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(body[:, 10:12], scales.log().numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(body[:, 12], np.log(1e-3 * scales.min(1).values.numpy()), rtol=1e-6)
    np.testing.assert_allclose(body[:, 6:9], (rgb.numpy() - 0.5) / SH_C0, atol=1e-6)
    np.testing.assert_allclose(body[:, 13:17], q.numpy(), atol=1e-7)
    # normal of a surfel = third axis of its rotation
    R = _quat_to_matrix(q)
    np.testing.assert_allclose(body[:, 3:6], R[:, :, 2].numpy(), atol=1e-6)

    out = load_gaussians_ply(path)
    assert set(out) == {"means", "quats", "scales", "opacities", "colors", "sh", "normals"}
    assert all(t.dtype == torch.float32 for t in out.values())
    torch.testing.assert_close(out["means"], means, atol=0, rtol=0)
    torch.testing.assert_close(out["quats"], q, atol=1e-7, rtol=0)
    torch.testing.assert_close(out["scales"], scales, atol=1e-7, rtol=1e-6)  # [N, 2] again
    torch.testing.assert_close(out["opacities"], opac, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(out["colors"], rgb, atol=1e-7, rtol=1e-6)
    assert out["sh"].shape == (257, 1, 3)


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).view(-1, 3, 3)


def test_gaussian_ply_sh_round_trip_numpy(tmp_path):
    means, quats, scales2, opac, _ = _splats(64, seed=1)
    rng = np.random.default_rng(0)
    scales = np.exp(rng.normal(size=(64, 3)) - 2)
    sh = rng.normal(size=(64, 16, 3)).astype(np.float32)
    path = save_gaussians_ply(
        tmp_path / "g.ply", means.numpy(), quats.numpy(), scales, opac.numpy(), sh=sh
    )
    lines, body = _read_ply(path)
    names = [ln.split()[2] for ln in lines if ln.startswith("property")]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)] and names[54] == "opacity"
    np.testing.assert_array_equal(body[:, 3:6], 0)  # no normals for 3D Gaussians
    np.testing.assert_array_equal(body[:, 9:24], sh[:, 1:, 0])  # channel-major: red first
    np.testing.assert_array_equal(body[:, 39:54], sh[:, 1:, 2])
    out = load_gaussians_ply(path)
    np.testing.assert_array_equal(out["sh"].numpy(), sh)
    np.testing.assert_allclose(out["scales"].numpy(), scales, rtol=1e-6)
    rgb = np.clip(0.5 + SH_C0 * sh[:, 0], 0, 1)
    np.testing.assert_allclose(out["colors"].numpy(), rgb, atol=1e-7)


def test_gaussian_ply_reads_two_scale_2dgs_files(tmp_path):
    n = 5
    names = [
        "x",
        "y",
        "z",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        "scale_0",
        "scale_1",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    body = np.zeros((n, len(names)), dtype="<f4")
    body[:, 7:9] = np.log(0.5)
    body[:, 9] = 2.0  # unnormalised quaternion, as trainers store it
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 5\n"
        + "".join(f"property float {nm}\n" for nm in names)
        + "end_header\n"
    )
    (tmp_path / "t.ply").write_bytes(header.encode() + body.tobytes())
    out = load_gaussians_ply(tmp_path / "t.ply")
    torch.testing.assert_close(out["scales"], torch.full((n, 2), 0.5))
    torch.testing.assert_close(out["quats"], torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4))
    torch.testing.assert_close(out["opacities"], torch.full((n,), 0.5))
    torch.testing.assert_close(out["colors"], torch.full((n, 3), 0.5))
    assert out["normals"].abs().sum() == 0


def test_gaussian_ply_input_errors(tmp_path):
    means, quats, scales, opac, rgb = _splats(4)
    p = tmp_path / "e.ply"
    bad_means = means.clone()
    bad_means[1, 2] = float("nan")
    cases = [
        dict(means=bad_means),
        dict(means=means[:, :2]),
        dict(opacities=opac + 1.0),
        dict(scales=-scales),
        dict(scales=scales[:, :1]),
        dict(quats=torch.zeros(4, 4)),
        dict(colors=rgb * 3),
        dict(colors=None),  # neither colours nor SH
        dict(sh=torch.zeros(4, 4, 3)),  # both
        dict(colors=None, sh=torch.zeros(4, 5, 3)),  # K is not a square
    ]
    base = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=rgb)
    for override in cases:
        with pytest.raises(UserInputError):
            save_gaussians_ply(p, **{**base, **override})
    assert not p.exists() and list(tmp_path.iterdir()) == []
    save_point_cloud(p, means)  # a PLY without Gaussian properties
    with pytest.raises(UserInputError, match="f_dc_0"):
        load_gaussians_ply(p)
    with pytest.raises(UserInputError):
        load_gaussians_ply(tmp_path / "missing.ply")


# ------------------------------------------------------------------------------------ meshes


def _load_single(path: Path) -> trimesh.Trimesh:
    scene = trimesh.load(path, process=False)
    if isinstance(scene, trimesh.Scene):
        assert len(scene.geometry) == 1
        for node in scene.graph.nodes_geometry:
            np.testing.assert_array_equal(scene.graph[node][0], np.eye(4))
        return next(iter(scene.geometry.values()))
    return scene


def test_glb_round_trip_y_up_and_colours(tmp_path):
    coords = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 200, 10]], dtype=np.uint8)
    v, f, c = voxels_to_mesh(coords, 0.5, colors)
    m = _load_single(save_mesh(tmp_path / "m.glb", v, f, c))
    assert len(m.vertices) == len(v) and len(m.faces) == len(f)
    np.testing.assert_allclose(m.vertices, to_y_up(v), atol=1e-6)
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], c)
    assert (m.visual.vertex_colors[:, 3] == 255).all()
    assert m.volume == pytest.approx(4 * 0.125)  # rotation keeps the outward winding

    m = _load_single(save_mesh(tmp_path / "z.glb", v, f, c, y_up=False))
    np.testing.assert_allclose(m.vertices, v, atol=1e-6)


def test_glb_terrain_faces_plus_y(tmp_path):
    h = np.random.default_rng(0).normal(scale=0.2, size=(8, 8))
    v, f, _ = heightfield_to_mesh(h, 1.0)
    m = _load_single(save_mesh(tmp_path / "t.glb", v, f))
    assert (m.face_normals[:, 1] > 0.5).all()  # up is +y in glTF
    np.testing.assert_allclose(m.vertices[:, 2], -v[:, 1], atol=1e-6)  # north is -z
    np.testing.assert_allclose(to_y_up(np.array([1.0, 2.0, 3.0])), [1.0, 3.0, -2.0])


@pytest.mark.parametrize("ext", ["ply", "obj"])
def test_ply_and_obj_keep_z_up(tmp_path, ext):
    rgb = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    v, f, c = voxels_to_mesh([[0, 0, 0], [0, 0, 1]], 1.0, rgb)
    m = _load_single(save_mesh(tmp_path / f"m.{ext}", v, f, c))
    assert len(m.vertices) == len(v) and len(m.faces) == len(f)
    np.testing.assert_allclose(m.vertices, v, atol=1e-6)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], c)
    assert m.volume == pytest.approx(2.0)


def test_save_mesh_errors(tmp_path):
    v, f, _ = voxels_to_mesh([[0, 0, 0]], 1.0)
    with pytest.raises(UserInputError, match=".stl"):
        save_mesh(tmp_path / "m.stl", v, f)
    with pytest.raises(UserInputError):
        save_mesh(tmp_path / "m.glb", v, f + len(v))
    with pytest.raises(UserInputError):
        save_mesh(tmp_path / "m.glb", v, f, vertex_colors=np.zeros((3, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ point clouds


def test_point_cloud_readable_by_trimesh(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3)) * 50
    rgb = rng.integers(0, 256, (100, 3), dtype=np.uint8)
    sem = rng.integers(0, 12, 100).astype(np.uint8)
    hgt = rng.normal(size=100).astype(np.float32)
    fields = {"semantic": sem, "height": hgt, "edge": sem > 5, "idx": np.arange(100)}
    path = save_point_cloud(tmp_path / "p.ply", torch.from_numpy(pts), rgb, fields)
    pc = trimesh.load(path)
    assert isinstance(pc, trimesh.PointCloud)
    np.testing.assert_allclose(pc.vertices, pts.astype(np.float32))
    np.testing.assert_array_equal(pc.colors[:, :3], rgb)
    raw = pc.metadata["_ply_raw"]["vertex"]["data"]
    np.testing.assert_array_equal(raw["semantic"], sem)
    np.testing.assert_array_equal(raw["height"], hgt)
    np.testing.assert_array_equal(raw["edge"], sem > 5)
    np.testing.assert_array_equal(raw["idx"], np.arange(100))
    head = [ln.decode() for ln in path.read_bytes().split(b"\n")[:2]]
    assert head == ["ply", "format binary_little_endian 1.0"]

    utm = np.array([[559705.123, 4380487.456, 1700.25]])  # map coordinates need double
    pc = trimesh.load(save_point_cloud(tmp_path / "d.ply", utm, double=True))
    np.testing.assert_array_equal(pc.vertices, utm)

    for bad in (
        dict(points=np.full((2, 3), np.nan)),
        dict(fields={"x": np.zeros(100)}),
        dict(fields={"semantic": np.zeros(7)}),
        dict(colors=np.zeros((100, 4))),
    ):
        with pytest.raises(UserInputError):
            save_point_cloud(tmp_path / "bad.ply", **{"points": pts, **bad})


def test_voxel_grid_mesh_and_exports_end_to_end(tmp_path):
    grid = VoxelGrid(
        np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.int32),
        np.array([1, 2, 3], dtype=np.uint8),
        np.array([[10, 20, 30]] * 3, dtype=np.uint8),
        2.0,
    )
    v, f, c = voxel_grid_to_mesh(grid)
    m = _load_single(save_mesh(tmp_path / "g.glb", v, f, c))
    assert m.volume == pytest.approx(3 * 8.0)
    assert (m.visual.vertex_colors[:, :3] == [10, 20, 30]).all()
    fields = {"semantic": grid.semantic}
    path = save_point_cloud(tmp_path / "c.ply", grid.centers(), grid.color, fields)
    pc = trimesh.load(path)
    np.testing.assert_allclose(pc.vertices, grid.centers())


def test_import_is_quiet_and_lazy():
    code = (
        "import sys, renderers.export, renderers.mesh, renderers.metrics; "
        "assert 'trimesh' not in sys.modules and 'open3d' not in sys.modules"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
