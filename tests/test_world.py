"""The procedural world engine: determinism, seamless tiling, layer consistency, exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earthgen.classes import CLASS_ID, NUM_CLASSES
from earthgen.errors import UserInputError
from earthgen.world import WorldConfig, generate_world, preset
from earthgen.world.noise import Grid, Sampler, value_noise_grid, value_noise_points


@pytest.fixture(scope="module")
def tile():
    return generate_world(seed=3, size=256, gsd=0.5)


# --- noise -------------------------------------------------------------------------------------


def test_noise_unit_variance_and_zero_mean():
    g = Grid(0.0, 0.0, 1.0, (512, 512))
    v = np.stack([value_noise_grid(g, 4.0, s) for s in range(4)])
    assert abs(v.mean()) < 0.05
    assert 0.9 < v.std() < 1.1


def test_noise_points_equal_grid_and_derivatives_match_finite_differences():
    g = Grid(-37.0, 91.0, 0.25, (200, 160))
    val, dx, dy = value_noise_grid(g, 9.0, 5, derivatives=True)
    X, Y = g.mesh()
    pv, pdx, pdy = value_noise_points(X, Y, 9.0, 5, derivatives=True)
    np.testing.assert_allclose(pv, val, atol=1e-12)
    np.testing.assert_allclose(pdx, dx, atol=1e-12)
    eps = 1e-4
    fd_x = (value_noise_points(X + eps, Y, 9.0, 5) - value_noise_points(X - eps, Y, 9.0, 5)) / (
        2 * eps
    )
    fd_y = (value_noise_points(X, Y + eps, 9.0, 5) - value_noise_points(X, Y - eps, 9.0, 5)) / (
        2 * eps
    )
    np.testing.assert_allclose(fd_x, dx, atol=1e-6)
    np.testing.assert_allclose(fd_y, dy, atol=1e-6)


def test_noise_window_of_large_grid_equals_small_grid():
    big = value_noise_grid(Grid(0.0, 0.0, 0.5, (300, 300)), 11.0, 2)
    small = value_noise_grid(Grid(50.0, -25.0, 0.5, (100, 120)), 11.0, 2)
    np.testing.assert_array_equal(big[50:150, 100:220], small)


def test_eroded_fbm_same_on_grid_and_points():
    g = Grid(0.0, 0.0, 2.0, (64, 64))
    h, gx, gy = Sampler.from_grid(g).eroded_fbm(800.0, 1)
    X, Y = g.mesh()
    ph, pgx, _ = Sampler.from_points(X[::7, ::5], Y[::7, ::5], 2.0).eroded_fbm(800.0, 1)
    np.testing.assert_allclose(ph, h[::7, ::5], atol=1e-12)
    np.testing.assert_allclose(pgx, gx[::7, ::5], atol=1e-12)


# --- tiles -------------------------------------------------------------------------------------


def test_layers_shapes_dtypes_and_class_range(tile):
    assert tile.rgb.shape == (256, 256, 3) and tile.rgb.dtype == np.uint8
    assert tile.semantic.shape == (256, 256) and tile.semantic.dtype == np.uint8
    assert tile.height.shape == (256, 256) and np.isfinite(tile.height).all()
    assert int(tile.semantic.max()) < NUM_CLASSES
    assert tile.rgb.std() > 15  # a textured image, not a flat fill
    assert (
        tile.caption.startswith(("Aerial", "Satellite", "Overhead")) and "0.5 m/px" in tile.caption
    )


def test_deterministic_and_seed_dependent():
    a = generate_world(seed=11, size=128, gsd=1.0)
    b = generate_world(seed=11, size=128, gsd=1.0)
    c = generate_world(seed=12, size=128, gsd=1.0)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    assert a.caption == b.caption
    assert (a.rgb != c.rgb).mean() > 0.5


@pytest.mark.parametrize("gsd", [0.5, 2.0])
def test_tiles_are_seamless(gsd):
    """A 2x2 grid of tiles equals one tile covering the same ground (every layer)."""
    n = 96
    x0, y0 = -n * gsd, n * gsd
    big = generate_world(seed=5, size=2 * n, gsd=gsd, origin=(x0, y0))
    for r in range(2):
        for c in range(2):
            t = generate_world(seed=5, size=n, gsd=gsd, origin=(x0 + c * n * gsd, y0 - r * n * gsd))
            win = (slice(r * n, (r + 1) * n), slice(c * n, (c + 1) * n))
            np.testing.assert_allclose(t.height, big.height[win], atol=1e-4)
            assert (t.semantic == big.semantic[win]).mean() > 0.999
            diff = np.abs(t.rgb.astype(int) - big.rgb[win].astype(int))
            assert (diff <= 1).mean() > 0.999, f"tile {r},{c}: max diff {diff.max()}"


def test_presets_give_plausible_land_cover():
    urban = generate_world(seed=1, size=256, gsd=1.0, config=preset("urban"))
    rural = generate_world(
        seed=1, size=256, gsd=1.0, origin=(20000.0, 20000.0), config=preset("rural")
    )
    fu = urban.stats["class_fractions"]
    fr = rural.stats["class_fractions"]
    assert (
        fu["building"] > 0.08 and fu["road_minor"] + fu["road_secondary"] + fu["road_major"] > 0.08
    )
    assert fr["building"] < 0.01
    assert fr["farmland"] + fr["forest"] + fr["grass"] + fr["water"] + fr["bare"] > 0.9


def test_detection_labels_match_rendered_objects(tile):
    lab = tile.labels
    h, w = tile.grid.shape
    n = len(lab["labels"])
    assert n == len(lab["corners"]) == len(lab["hbb"]) > 10
    assert set(lab["labels"]) <= set(lab["classes"])
    centre = lab["corners"].mean(axis=1)
    assert ((centre >= 0) & (centre < [w, h])).all()
    assert (lab["hbb"][:, 2] >= lab["hbb"][:, 0]).all() and (
        lab["hbb"][:, 3] >= lab["hbb"][:, 1]
    ).all()
    # pixels inside each untruncated building box are (almost all) building pixels
    import shapely
    from rasterio.features import rasterize

    sel = [
        i
        for i, (name, t) in enumerate(zip(lab["labels"], lab["truncated"], strict=False))
        if name == "building" and not t
    ]
    assert sel
    for i in sel:
        m = (
            rasterize(
                [(shapely.Polygon(lab["corners"][i]), 1)], out_shape=(h, w), fill=0, dtype="uint8"
            )
            > 0
        )
        if m.sum() >= 20:
            assert (tile.semantic[m] == CLASS_ID["building"]).mean() > 0.9


def test_object_height_is_a_plausible_ndsm(tile):
    b = tile.semantic == CLASS_ID["building"]
    assert b.any()
    assert tile.object_height[b].min() >= 4.0  # every roof is at least one storey high
    open_ground = (tile.semantic == CLASS_ID["road_minor"]) | (tile.semantic == CLASS_ID["grass"])
    assert np.median(tile.object_height[open_ground]) == 0.0


def test_bad_arguments_raise_user_errors():
    with pytest.raises(UserInputError, match="GSD"):
        generate_world(size=64, gsd=0.0)
    with pytest.raises(UserInputError, match="too large"):
        generate_world(size=(100_000, 100_000), gsd=1.0)
    with pytest.raises(UserInputError, match="preset"):
        preset("moon")
    with pytest.raises(UserInputError, match="elevation"):
        WorldConfig(sun_elevation_deg=-5)


# --- voxels and exports ------------------------------------------------------------------------


def test_voxels_closed_surface_matching_height(tile):
    vox = tile.voxels(1.0)
    assert len(vox) > 0
    assert len(np.unique(vox.coords, axis=0)) == len(vox)
    # the top voxel of each column is at the surface height (terrain + objects, water surface)
    key = vox.coords[:, 0].astype(np.int64) * 100_000 + vox.coords[:, 1]
    order = np.lexsort((vox.coords[:, 2], key))
    k_sorted = key[order]
    last = np.r_[k_sorted[1:] != k_sorted[:-1], True]
    tops = vox.coords[order][last]
    assert len(tops) == 128 * 128  # one column per 1 m cell of a 128 m tile
    top_m = (tops[:, 2] + 1) * 1.0
    centres_px = (
        ((tops[:, 0] + 0.5 - tile.grid.x0) / tile.gsd).astype(int),
        ((tile.grid.y0 - tops[:, 1] - 0.5) / tile.gsd).astype(int),
    )
    surf = (
        tile.height[centres_px[1], centres_px[0]] + tile.object_height[centres_px[1], centres_px[0]]
    )
    water = tile.semantic[centres_px[1], centres_px[0]] == CLASS_ID["water"]
    err = np.abs(top_m - surf)[~water]
    assert np.median(err) < 1.0
    # columns are contiguous in z (no holes)
    inv = np.unique(key, return_inverse=True)[1]
    counts = np.bincount(inv)
    zr = np.full(len(counts), -(10**9), np.int64)
    np.maximum.at(zr, inv, vox.coords[:, 2])
    zmin = np.full(len(counts), 10**9, np.int64)
    np.minimum.at(zmin, inv, vox.coords[:, 2])
    np.testing.assert_array_equal(zr - zmin + 1, counts)


def test_save_writes_all_layers_georeferenced(tmp_path, tile):
    import rasterio

    from earthgen.world.voxels import VoxelGrid

    files = tile.save(tmp_path / "w", voxel_size=2.0)
    names = {p.name for p in (tmp_path / "w").iterdir()}
    for f in [
        "rgb.png",
        "rgb.tif",
        "semantic.png",
        "semantic.tif",
        "height.tif",
        "legend.json",
        "layout.geojson",
        "labels.json",
        "labels_dota.txt",
        "caption.txt",
        "meta.json",
        "voxels.npz",
        "voxels.ply",
        "preview.png",
    ]:
        assert f in names, f
    assert not [n for n in names if n.startswith(".")]  # no temporaries left
    with rasterio.open(files["rgb.tif"]) as ds:
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == tile.transform
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), tile.rgb)
    with rasterio.open(files["semantic.tif"]) as ds:
        np.testing.assert_array_equal(ds.read(1), tile.semantic)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(files["semantic.png"])), tile.semantic)
    gj = json.loads((tmp_path / "w" / "layout.geojson").read_text())
    classes = {f["properties"]["class"] for f in gj["features"]}
    assert {"building", "road_minor"} <= classes
    import shapely.geometry

    pts = [shapely.geometry.shape(f["geometry"]).representative_point() for f in gj["features"]]
    lon = np.array([p.x for p in pts])
    lat = np.array([p.y for p in pts])
    # the world sits in UTM 33N around 500 km E / 5000 km N: about 15 E, 45 N
    assert (np.abs(lon - 15.0) < 0.1).all() and (np.abs(lat - 45.1) < 0.1).all()
    from earthgen.data.dota import read_dota_file

    dota = read_dota_file(tmp_path / "w" / "labels_dota.txt")
    assert dota.labels == tile.labels["labels"] and dota.extra["gsd"] == 0.5
    np.testing.assert_allclose(dota.corners, tile.labels["corners"], atol=0.01)
    np.testing.assert_array_equal(dota.difficult, tile.labels["truncated"])
    vox = VoxelGrid.load_npz(files["voxels.npz"])
    np.testing.assert_array_equal(vox.coords, tile.voxels(2.0).coords)
    ply = (tmp_path / "w" / "voxels.ply").read_bytes()
    assert f"element vertex {len(vox)}".encode() in ply[:400]


def test_failed_save_leaves_nothing(tmp_path, tile, monkeypatch):
    import earthgen.world.export as ex

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "write_json", boom)
    with pytest.raises(OSError):
        tile.save(tmp_path / "w", voxel_size=None)
    assert not [p for p in (tmp_path / "w").rglob("*") if p.is_file()]
