"""3D scenes from data (issue 22): building heights rebuilt from tags, terrain raised on a DEM,
roofs and ground coloured by an orthophoto. Tiny random models; the real-model measurements
are in benchmarks/bench_scene.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from earthgen.pipelines.scene import EarthScenePipeline, build_heights, surface_height
from tests.test_scene import get_scene_components

DUBAI = Path(__file__).parent / "data" / "real" / "dubai_aerial_seg" / "tile_3" / "images"


@pytest.fixture(scope="module")
def pipe():
    p = EarthScenePipeline(**get_scene_components())
    p.set_progress_bar_config(disable=True)
    return p


def _tops(coords: np.ndarray) -> dict:
    out: dict = {}
    for x, y, z in np.asarray(coords).tolist():
        out[(x, y)] = max(out.get((x, y), -1), z)
    return out


def test_build_heights_is_exact_on_flat_ground():
    """Flat ground (top voxel z = 3): a 10 m building on 1 m voxels gets its roof at z = 13
    (surface 14 m = ground 4 m + 10 m); inside columns keep only the roof, walls are solid;
    a raised part (min_height 4 m) leaves the ground under it."""
    X = Y = 16
    g = torch.tensor([[x, y, z] for x in range(X) for y in range(Y) for z in range(4)])
    h = torch.full((X, Y), float("nan"))
    h[4:10, 4:10] = 10.2
    h[12:14, 2:4] = 7.0
    base = torch.zeros(X, Y)
    base[12:14, 2:4] = 4.0
    out = build_heights(g, h, base, (0, 0, X, Y), 1.0)
    tops = _tops(out.numpy())
    for x in range(X):
        for y in range(Y):
            want = (
                3 + 10
                if 4 <= x < 10 and 4 <= y < 10
                else 3 + 7
                if 12 <= x < 14 and 2 <= y < 4
                else 3
            )
            assert tops[(x, y)] == want, (x, y)
    col = sorted(
        z for x, y, z in out.tolist() if (x, y) == (4, 4)
    )  # a corner: wall from the ground
    assert col == list(range(0, 14))
    inner = sorted(z for x, y, z in out.tolist() if (x, y) == (6, 6))  # inside: ground below, roof
    assert inner == [0, 1, 2, 3, 13]
    raised = sorted(z for x, y, z in out.tolist() if (x, y) == (12, 2))
    assert raised == [0, 1, 2, 3, 8, 9, 10]  # ground, then 4 m of air, then the part up to 7 m


def test_pipeline_building_tops_follow_the_height_map(pipe):
    """Same seed, heights raised by 5 m: every building column's top rises by exactly 5 voxels
    and every other column stays as it was (the ground the buildings stand on is unchanged)."""
    sem = np.full((48, 48), 9, np.uint8)
    sem[8:20, 10:30] = 1
    sem[30:40, 30:44] = 1
    h = np.where(sem == 1, 9.0, np.nan).astype(np.float32)
    h[30:40, 30:44] = 21.0
    runs = [
        pipe(
            semantic=sem,
            gsd=1.0,
            heights=hh,
            num_inference_steps=1,
            texture_steps=1,
            generator=torch.Generator().manual_seed(2),
        )
        for hh in (h, h + 5)
    ]
    a, b = _tops(runs[0].coords), _tops(runs[1].coords)
    bld = {(x, 47 - r) for r, x in zip(*np.nonzero(sem == 1), strict=True)}
    assert set(a) == set(b) == {(x, y) for x in range(48) for y in range(48)}
    assert all(b[k] - a[k] == 5 for k in bld)
    assert all(b[k] == a[k] for k in a if k not in bld)


def test_dem_raises_columns_and_closes_walls(pipe):
    sem = np.full((32, 48), 9, np.uint8)
    dem = np.tile(np.linspace(100.0, 112.0, 48, dtype=np.float32), (32, 1))  # rises 12 m eastwards
    flat = pipe(
        semantic=sem, gsd=1.0, num_inference_steps=1, generator=torch.Generator().manual_seed(3)
    )
    hill = pipe(
        semantic=sem,
        gsd=1.0,
        dem=dem,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(3),
    )
    assert hill.origin[2] == pytest.approx(100.0)
    a, b = _tops(flat.coords), _tops(hill.coords)
    for (x, y), z in a.items():
        assert b[(x, y)] - z == round(12.0 * x / 47), (x, y)
    # no see-through gaps: each column reaches down to just above its lowest neighbour's top
    cols: dict = {}
    for x, y, z in hill.coords.tolist():
        cols.setdefault((x, y), []).append(z)
    for (x, y), zs in cols.items():
        zs = sorted(zs)
        nb = [
            b[(x + dx, y + dy)]
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if (x + dx, y + dy) in b
        ]
        assert zs[0] <= max(min(nb) + 1, 0) or zs[0] <= min(nb), (x, y)
    assert len(hill.surfels["voxel"]) and hill.surfels["voxel"].max() == len(hill.coords) - 1
    # surfels and voxels in one frame: each surfel within a voxel of its voxel's box above the
    # datum (origin + coords * voxel_size), so exports and renders put them at the same place
    lo = hill.origin + hill.coords[hill.surfels["voxel"]] * hill.voxel_size
    m = hill.surfels["means"]
    assert (m >= lo - hill.voxel_size).all() and (m <= lo + 2 * hill.voxel_size).all()
    h = surface_height(hill.coords, 48, 32, 1.0)
    assert np.nanmax(h) - np.nanmin(h) >= 12


def test_orthophoto_colours_the_top_view():
    """A real aerial image (Dubai excerpt, 0.5 m/px) as the orthophoto of a 48 m scene: the
    top-down render at the image's GSD matches it (PSNR >= 20 dB); without ortho colours it
    does not."""
    from PIL import Image

    from earthgen.evaluation.scene import nadir_render
    from renderers.metrics import psnr

    pipe = EarthScenePipeline(**get_scene_components())
    pipe.set_progress_bar_config(disable=True)
    path = sorted(DUBAI.iterdir())[0]
    img = np.asarray(Image.open(path).convert("RGB"))[:96, :96]
    ref = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    scores = {}
    for ortho in (True, False):
        out = pipe(
            image=img,
            gsd=0.5,
            ortho_colors=ortho,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
        )
        r = nadir_render(out, 0.5)
        assert r.shape == (96, 96, 3)
        scores[ortho] = float(psnr(torch.from_numpy(r).permute(2, 0, 1)[None], ref))
    assert scores[True] >= 20.0, scores
    assert scores[False] < scores[True] - 3, scores


def test_height_caps_flatten_roads_to_the_ground(pipe):
    """Roads capped at 0 m: each road column's top becomes the lowest road top within 8 columns
    of the same sample (the bare ground, ``ground_surface``); lumps are cut, not moved."""
    from earthgen.classes import CLASS_ID
    from earthgen.geo.heights import height_caps

    sem = np.full((48, 48), CLASS_ID["road_minor"], np.uint8)
    sem[20:28, 20:28] = CLASS_ID["forest"]  # no cap: kept as generated
    caps = height_caps(sem)
    assert np.isnan(caps[24, 24]) and caps[0, 0] == 0.0
    kw = {"semantic": sem, "gsd": 1.0, "num_inference_steps": 1, "texture_steps": 1}
    free = _tops(pipe(**kw, generator=torch.Generator().manual_seed(5)).coords)
    flat = _tops(pipe(**kw, height_cap=caps, generator=torch.Generator().manual_seed(5)).coords)
    road = {(x, 47 - r) for r, x in zip(*np.nonzero(sem == CLASS_ID["road_minor"]), strict=True)}
    for x, y in road:
        near = [
            free[(a, b)]
            for a in range(max(x - 8, 0), min(x + 9, 48))
            for b in range(max(y - 8, 0), min(y + 9, 48))
            if (a, b) in road
        ]
        assert flat[(x, y)] == min(near), (x, y)
    assert all(flat[k] == free[k] for k in free if k not in road)


def test_cli_scene_from_geojson_with_heights_dem_and_atomic_folder(tmp_path, pipe):
    """``earthgen scene`` on a GeoJSON in San Francisco (a building tagged 12 m, a road) with the
    SRTM fixture as --dem: heights from the data, the DEM raises the scene to metres above the
    datum, the folder appears whole (no partial left); user mistakes exit 2 before any work."""
    import json

    import rasterio

    from earthgen.cli import main

    dem = Path(__file__).parents[2] / "shared" / "fixtures" / "dem" / "osmnx_elevation1.tif"
    if not dem.is_file():
        pytest.skip("needs ../shared/fixtures/dem/osmnx_elevation1.tif")
    lon, lat = -122.4075, 37.7950
    d = 0.00008  # ~7 m
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"building": "yes", "height": "12"},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [lon - d, lat - d],
                            [lon + d, lat - d],
                            [lon + d, lat + d],
                            [lon - d, lat + d],
                            [lon - d, lat - d],
                        ]
                    ],
                },
            },
            {
                "type": "Feature",
                "properties": {"highway": "residential"},
                "geometry": {
                    "type": "LineString",
                    "coordinates": [[lon - 0.0005, lat - 0.0002], [lon + 0.0005, lat - 0.0002]],
                },
            },
        ],
    }
    src = tmp_path / "sf.geojson"
    src.write_text(json.dumps(gj))
    pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "scene"
    args = [
        "scene",
        "--model",
        str(tmp_path / "pipe"),
        "--layout",
        str(src),
        "--center",
        f"{lat},{lon}",
        "--size-m",
        "48",
        "--steps",
        "1",
        "--seed",
        "0",
        "--no-ortho",
        "--render-size",
        "64",
        "--views",
        "1",
        "--turntable",
        "2",
    ]
    assert main(args + ["--dem", str(dem), "--out", str(out)]) == 0
    meta = json.loads((out / "scene.json").read_text())
    assert meta["heights"] == "data" and meta["dem"] == str(dem)
    assert (out / "oblique.png").stat().st_size > 0 and not list(tmp_path.glob(".scene.partial-*"))
    with rasterio.open(out / "dem.tif") as ds:
        surf = ds.read(1)
    assert (
        10 < np.nanmin(surf) and np.nanmax(surf) < 200
    )  # metres above the datum (SF hills, not the base)
    # mistakes: a DEM under a non-georeferenced map; an existing non-empty --out
    png = tmp_path / "ids.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    assert (
        main(["scene", "--semantic", str(png), "--dem", str(dem), "--out", str(tmp_path / "x")])
        == 2
    )
    assert main(args + ["--out", str(out)]) == 2  # not empty
