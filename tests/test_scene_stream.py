"""Scenes streamed to disk (``stream_to=``, earthgen.scene_store) and exported chunk by chunk:
the same arrays as in memory (with and without a DEM, with orthophoto colours), the same PLY
files, bounded level-of-detail sets, valid tiled GLBs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earthgen.pipelines.scene import EarthScenePipeline, StreamedSceneOutput
from tests.test_scene import get_scene_components, semantic_map


@pytest.fixture(scope="module")
def pipe():
    p = EarthScenePipeline(**get_scene_components(1))
    p.set_progress_bar_config(disable=True)
    return p


def _pair(pipe, tmp_path, **kw):
    """The same scene in memory and streamed (3 x 2 windows of the tiny 32-voxel models)."""
    kw = dict(num_inference_steps=1, **kw)
    a = pipe(**kw, generator=torch.Generator().manual_seed(2))
    b = pipe(**kw, generator=torch.Generator().manual_seed(2), stream_to=tmp_path / "chunks")
    return a, b


def _same(a, b) -> None:
    assert isinstance(b, StreamedSceneOutput)
    assert b.store.n_voxels == len(a.coords)
    for k in ("coords", "colors"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    sa, sb = a.surfels, b.surfels
    assert set(sa) == set(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k
    assert np.array_equal(a.height, b.height, equal_nan=True)
    assert np.array_equal(a.origin, b.origin) and a.windows == b.windows


def test_streamed_equals_in_memory(pipe, tmp_path):
    sem = semantic_map(80)[:56]  # 80 x 56 m: 3 x 2 windows
    img = np.random.default_rng(0).integers(0, 256, (56, 80, 3), dtype=np.uint8)
    a, b = _pair(pipe, tmp_path, semantic=sem, image=img, gsd=1.0)
    _same(a, b)
    assert len(list((tmp_path / "chunks").glob("chunk_*.npz"))) == len(b.store)


def test_streamed_equals_in_memory_on_a_dem(pipe, tmp_path):
    sem = semantic_map(80)[:56]
    yy, xx = np.mgrid[0:56, 0:80]
    dem = (100 + 0.3 * xx + 8 * np.sin(yy / 6.0)).astype(np.float32)  # slopes and steps
    a, b = _pair(pipe, tmp_path, semantic=sem, gsd=1.0, dem=dem)
    assert a.origin[2] == pytest.approx(float(dem.min()))
    assert len(a.coords) > int((a.height > 0).sum())  # walls were added under the columns
    _same(a, b)
    assert not list((tmp_path / "chunks").glob("add_*"))  # temporary files are gone
    # the tiled mesh sees the walls added under the columns (chunks of their own)
    import trimesh

    from earthgen.export3d import save_scene_store
    from renderers.mesh import voxels_to_mesh

    p = save_scene_store(tmp_path / "out", b.store, 1.0, b.origin, image_size=32, mesh_budget=100)
    v, f, _ = voxels_to_mesh(a.coords, 1.0, a.colors)
    m = trimesh.load(p["mesh_ply"], process=False)
    assert _faces(m.vertices, m.faces) == _faces(v, f)


@pytest.fixture(scope="module")
def streamed(pipe, tmp_path_factory):
    """A 96 x 64 m scene (3 x 2 windows) in memory and streamed."""
    tmp = tmp_path_factory.mktemp("streamed")
    sem = semantic_map(96)[:64]
    return _pair(pipe, tmp, semantic=sem, gsd=1.0)


def _faces(v: np.ndarray, f: np.ndarray) -> set:
    """A mesh's triangles as a set of sorted corner-coordinate triples (order-free)."""
    t = np.round(v[f].astype(np.float64), 4)
    return {tuple(sorted(map(tuple, tri))) for tri in t}


def test_chunked_exports_equal_in_memory_under_the_budgets(streamed, tmp_path):
    from earthgen.export3d import save_scene, save_scene_store

    a, b = streamed
    pa = save_scene(tmp_path / "a", a.coords, 1.0, a.origin, a.colors, a.surfels, image_size=48)
    pb = save_scene_store(tmp_path / "b", b.store, 1.0, b.origin, image_size=48)
    for k in ("glb", "mesh_ply", "gaussians", "voxels", "render", "json"):
        assert open(pa[k], "rb").read() == open(pb[k], "rb").read(), k


def test_ply_written_by_chunks_equals_one_write(streamed, tmp_path):
    """Above the mesh and render budgets: the PLYs are still those of one write, the mesh PLY is
    the whole scene's mesh (faces in another order), tiles and overview are valid GLBs."""
    import trimesh

    from earthgen.export3d import save_scene, save_scene_store
    from renderers.mesh import voxels_to_mesh

    a, b = streamed
    pa = save_scene(tmp_path / "a", a.coords, 1.0, a.origin, a.colors, a.surfels, image_size=48)
    budget = len(a.coords) // 10
    pb = save_scene_store(
        tmp_path / "b", b.store, 1.0, b.origin, image_size=48, mesh_budget=budget, render_budget=500
    )
    for k in ("gaussians", "voxels"):
        assert open(pa[k], "rb").read() == open(pb[k], "rb").read(), k
    v, f, c = voxels_to_mesh(a.coords, 1.0, a.colors)
    m = trimesh.load(pb["mesh_ply"], process=False)
    assert len(m.faces) == len(f) and _faces(m.vertices, m.faces) == _faces(v, f)
    tiles = sorted((tmp_path / "b" / "tiles").glob("*.glb"))
    assert len(tiles) == len(a.windows)
    tv = [trimesh.load(t, force="mesh", process=False) for t in tiles]
    assert sum(len(t.faces) for t in tv) == len(f)
    over = trimesh.load(pb["glb"], force="mesh", process=False)
    meta = __import__("json").loads(open(pb["json"]).read())
    assert meta["overview_voxels"] <= budget and meta["overview_voxel_m"] >= 2
    assert len(over.faces) > 0 and meta["mesh_faces"] == len(f)
    assert open(pb["render"], "rb").read()[:4] == b"\x89PNG"


def test_level_of_detail_sets_respect_their_budgets(streamed):
    from earthgen.export3d import lod_surfels, lod_voxels

    a, b = streamed
    full = lod_surfels(b.store, 1.0, budget=10**9)
    assert all(np.array_equal(full[k], a.surfels[k]) for k in full)  # under the budget: all
    for budget in (50, 1000, len(a.surfels["means"]) // 3):
        s = lod_surfels(b.store, 1.0, budget=budget)
        assert 0 < len(s["means"]) <= budget
        assert s["scales"].shape[1] == a.surfels["scales"].shape[1]
        assert set(s) >= {"means", "quats", "scales", "opacities", "colors"}
        assert (s["opacities"] > 0).all() and (s["colors"] >= 0).all() and (s["colors"] <= 1).all()
        # the merged surfels stay inside the scene
        lo, hi = a.surfels["means"].min(0), a.surfels["means"].max(0)
        assert (s["means"] >= lo - 1e-4).all() and (s["means"] <= hi + 1e-4).all()
    for budget in (20, 500, len(a.coords) // 4):
        c, col, f = lod_voxels(b.store, budget)
        assert 0 < len(c) <= budget and len(col) == len(c) and f >= 2
        assert len(np.unique(c, axis=0)) == len(c)
    c, col, f = lod_voxels(b.store, 10**9)
    assert f == 1 and len(c) == len(a.coords)


def test_empty_scene_streams_like_in_memory(pipe, tmp_path):
    sem = semantic_map(48)
    dem = np.full((48, 48), 50.0, np.float32)
    a, b = _pair(pipe, tmp_path, semantic=sem, gsd=1.0, dem=dem, structure_threshold=1e9)
    assert len(a.coords) == 0
    _same(a, b)
