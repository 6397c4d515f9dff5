"""Building heights from OSM tags (precedence, min_height, type defaults), their rasterization on
a real OSM layout, DEM reading/reprojection on real SRTM fixtures, and the Alexandria
DSM/DTM reference set (earthgen.geo.heights)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from conftest import fixture_path
from pyproj import CRS, Transformer

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError
from earthgen.geo import heights as H
from earthgen.geo.crs import lonlat_to_xy, utm_crs
from earthgen.geo.layout import Grid, build_layout, layout_from_features
from earthgen.geo.osm import classify_area
from earthgen.geo.vector import Feature

HELSINKI = "osm/Helsinki.osm.pbf"
SRTM_ASC = "dem/landlab_SRTMGL3_40.09_-105.56_40.21_-105.44.asc"
SF_TIF = "dem/osmnx_elevation1.tif"
GULLY_ASC = "dem/landlab_west_bijou_gully.asc"
BLD = CLASS_ID["building"]


HERE = Path(__file__).resolve().parent
ALEX_EXCERPT = HERE / "data" / "alexandria"  # 64 x 64 px crop (README.md there)


def alexandria_root() -> Path:
    d = HERE.parents[1] / "shared" / "data" / "alexandria_dsm_dtm"
    if not (d / "dsm.tif").exists():
        pytest.skip("alexandria_dsm_dtm data not available")
    return d


# --- tag precedence ------------------------------------------------------------------------------


def test_height_tag_wins_over_levels_and_default():
    assert H.building_height({"building": "house", "height": "12", "building:levels": "2"}) == (
        12.0,
        0.0,
        "height",
    )
    assert H.building_height({"building": "house", "building:levels": "4"}) == (12.0, 0.0, "levels")
    top, base, src = H.building_height({"building": "apartments"})
    assert (top, base, src) == (H.DEFAULT_HEIGHTS_M["apartments"], 0.0, "default")
    # units and unparsable values
    assert H.building_height({"building": "yes", "height": "40 ft"})[0] == pytest.approx(12.192)
    assert H.building_height({"building": "yes", "height": "tall", "building:levels": "3"})[2] == (
        "levels"
    )
    # unknown types and a missing type use the 'yes' default
    assert H.building_height({"building": "spaceport"})[0] == H.DEFAULT_HEIGHTS_M["yes"]
    assert H.building_height({})[0] == H.DEFAULT_HEIGHTS_M["yes"]
    # ignore_tags: the untagged baseline
    assert H.building_height({"building": "house", "height": "30"}, ignore_tags=True) == (
        H.DEFAULT_HEIGHTS_M["house"],
        0.0,
        "default",
    )


def test_parsed_osm_props_keep_the_source():
    _, p = classify_area({"building": "office", "building:levels": "5"})
    assert p["height_source"] == "levels" and H.building_height(p) == (15.0, 0.0, "levels")
    _, p = classify_area({"building": "office", "height": "21.5", "building:levels": "5"})
    assert p["height_source"] == "height" and H.building_height(p) == (21.5, 0.0, "height")
    _, p = classify_area({"building": "church"})
    assert "height" not in p and H.building_height(p) == (15.0, 0.0, "default")


def test_min_height_and_min_level():
    assert H.building_height({"building": "yes", "height": "20", "min_height": "8"}) == (
        20.0,
        8.0,
        "height",
    )
    assert H.building_height(
        {"building": "yes", "building:levels": "6", "building:min_level": "2"}
    ) == (18.0, 6.0, "levels")
    _, p = classify_area({"building": "roof", "min_height": "4.5"})
    top, base, src = H.building_height(p)
    assert base == 4.5 and top > base and src == "default"  # default raised above the base
    # a base at or above a tagged top is dropped: the height tag is trusted
    assert H.building_height({"building": "yes", "height": "5", "min_height": "9"}) == (
        5.0,
        0.0,
        "height",
    )


def test_default_table_is_sane():
    for kind in (
        "house",
        "detached",
        "semidetached_house",
        "terrace",
        "residential",
        "apartments",
        "commercial",
        "retail",
        "office",
        "industrial",
        "warehouse",
        "church",
        "cathedral",
        "school",
        "hospital",
        "garage",
        "garages",
        "shed",
        "hut",
        "roof",
        "yes",
    ):
        assert 2.0 <= H.DEFAULT_HEIGHTS_M[kind] <= 40.0, kind
    d = H.DEFAULT_HEIGHTS_M
    assert d["shed"] < d["house"] < d["apartments"] < d["cathedral"]
    assert H.LEVEL_HEIGHT_M == 3.0


# --- rasterized height maps ----------------------------------------------------------------------


def _grid(w: int = 40, h: int = 30, gsd: float = 1.0) -> Grid:
    return Grid(CRS.from_epsg(32635), Affine(gsd, 0, 500000.0, 0, -gsd, 6700000.0 + h * gsd), w, h)


def test_overlap_taller_wins_and_untagged_class_pixels():
    g = _grid()
    x0, y0 = 500000.0, 6700000.0
    low = Feature(
        shapely.box(x0 + 2, y0 + 2, x0 + 20, y0 + 20),
        "building",
        {"kind": "yes", "height": 9.0, "height_source": "height"},
    )
    tall = Feature(
        shapely.box(x0 + 10, y0 + 10, x0 + 30, y0 + 28),
        "building",
        {"kind": "yes", "levels": 8.0, "height": 24.0, "height_source": "levels"},
    )
    road = Feature(shapely.LineString([(x0, y0 + 25), (x0 + 40, y0 + 25)]), "road_minor", {})
    lay = layout_from_features([low, tall, road], g)
    hm = H.height_map(lay)
    assert hm.top.shape == (30, 40) and hm.top.dtype == np.float32
    assert np.array_equal(hm.source > 0, lay.semantic == BLD)
    assert np.all(np.isnan(hm.top[lay.semantic != BLD]))
    # overlap (x 10..20, y 10..20 from the bottom) takes the taller (24 m, from levels)
    col, row = ~g.transform @ (x0 + 15, y0 + 15)
    assert hm.top[int(row), int(col)] == 24.0 and hm.source[int(row), int(col)] == H.SOURCE_LEVELS
    col, row = ~g.transform @ (x0 + 5, y0 + 5)
    assert hm.top[int(row), int(col)] == 9.0 and hm.source[int(row), int(col)] == H.SOURCE_HEIGHT
    assert np.all(hm.base[hm.buildings] == 0.0)
    # building pixels without a footprint (an edited class map) get the 'yes' default
    lay.semantic[0:3, 0:3] = BLD
    hm2 = lay.height_map()
    assert np.all(hm2.top[0:3, 0:3] == H.DEFAULT_HEIGHTS_M["yes"])
    assert np.all(hm2.source[0:3, 0:3] == H.SOURCE_DEFAULT)
    # untagged baseline: every building at its type default
    hm3 = H.height_map(lay, ignore_tags=True)
    assert set(np.unique(hm3.top[hm3.buildings])) == {H.DEFAULT_HEIGHTS_M["yes"]}


def test_height_map_on_helsinki():
    lay = build_layout(fixture_path(HELSINKI), bbox=(24.935, 60.164, 24.953, 60.172), gsd=1.0)
    hm = lay.height_map()
    bld = lay.semantic == BLD
    # heights exactly where buildings are
    assert np.array_equal(np.isfinite(hm.top), bld) and np.array_equal(hm.source > 0, bld)
    counts = hm.source_counts()
    assert counts["none"] == int((~bld).sum())
    assert counts["height"] > 1000 and counts["levels"] > 10000 and counts["default"] > 10000
    assert np.all(hm.top[bld] > hm.base[bld])
    assert 0 < np.nanmax(hm.base) < np.nanmax(hm.top) <= 100
    # the tag value where tagged: at an inner point of each tagged building the top is its tag
    # (or a taller overlapping building's)
    inv = ~lay.transform
    checked = equal = 0
    for f in lay.features:
        if f.cls != "building" or f.props.get("height_source") is None:
            continue
        poly = shapely.intersection(f.geometry, shapely.box(*lay.bounds))
        if poly.is_empty or poly.area < 50:
            continue
        pt = poly.representative_point()
        col, row = inv @ (pt.x, pt.y)
        r, c = int(row), int(col)
        if not (0 <= r < lay.height and 0 <= c < lay.width) or not bld[r, c]:
            continue
        tag = H.building_height(f.props)[0]
        assert hm.top[r, c] >= tag - 1e-4
        checked += 1
        equal += abs(float(hm.top[r, c]) - tag) < 1e-4
    assert checked > 50 and equal >= 0.9 * checked


# --- DEM ---------------------------------------------------------------------------------------


def _utm_grid(lon: float, lat: float, gsd: float, half_m: float) -> tuple[CRS, Affine, int]:
    crs = utm_crs(lon, lat)
    cx, cy = lonlat_to_xy(crs, lon, lat)
    n = int(2 * half_m / gsd)
    t = Affine(gsd, 0, round(cx / gsd) * gsd - half_m, 0, -gsd, round(cy / gsd) * gsd + half_m)
    return crs, t, n


def _lonlat_of_pixels(crs: CRS, t: Affine, rows: np.ndarray, cols: np.ndarray):
    xs, ys = t @ (cols + 0.5, rows + 0.5)
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)


def test_read_dem_reprojects_srtm_ascii_grid():
    import rasterio

    path = fixture_path(SRTM_ASC)
    crs, t, n = _utm_grid(-105.5, 40.15, 30.0, 3000.0)
    with pytest.raises(UserInputError, match="no CRS.*EPSG:4326"):
        H.read_dem(path, crs, t, (n, n))
    z = H.read_dem(path, crs, t, (n, n), src_crs="EPSG:4326")
    zn = H.read_dem(path, crs, t, (n, n), src_crs="EPSG:4326", resampling="nearest")
    assert z.shape == (n, n) and z.dtype == np.float32 and np.isfinite(z).all()
    assert 2186 <= z.min() < z.max() <= 3345
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, n, 40), rng.integers(0, n, 40)
    lon, lat = _lonlat_of_pixels(crs, t, rows, cols)
    with rasterio.open(path) as ds:
        a = ds.read(1).astype(np.float64)
        sample = np.array([v[0] for v in ds.sample(list(zip(lon, lat, strict=True)))])
        # bilinear values lie within the 2 x 2 DEM cells around the point
        fc, fr = ~ds.transform @ (np.asarray(lon), np.asarray(lat))
    assert np.mean(sample == zn[rows, cols]) >= 0.95
    c0 = np.floor(fc - 0.5).astype(int)
    r0 = np.floor(fr - 0.5).astype(int)
    for i in range(len(rows)):
        cell = a[r0[i] : r0[i] + 2, c0[i] : c0[i] + 2]
        assert cell.min() - 0.01 <= z[rows[i], cols[i]] <= cell.max() + 0.01


def test_read_dem_geotiff_and_refusals(tmp_path):
    import rasterio

    path = fixture_path(SF_TIF)
    crs, t, n = _utm_grid(-122.406, 37.795, 5.0, 250.0)
    z = H.read_dem(path, crs, t, (n, n))
    rows, cols = np.array([0, n // 2, n - 1]), np.array([n - 1, n // 2, 0])
    lon, lat = _lonlat_of_pixels(crs, t, rows, cols)
    with rasterio.open(path) as ds:
        sample = np.array([v[0] for v in ds.sample(list(zip(lon, lat, strict=True)))], float)
    assert np.all(np.abs(z[rows, cols] - sample) < 15.0)  # 1" SRTM, 5 m target: local slope
    # a grid outside the DEM: refused, saying how much is covered
    crs, t, n = _utm_grid(-122.30, 37.80, 5.0, 250.0)
    with pytest.raises(UserInputError, match=r"osmnx_elevation1.tif.*covers only 0\.0%"):
        H.read_dem(path, crs, t, (n, n))
    crs, t, n = _utm_grid(-122.4027, 37.795, 5.0, 250.0)  # straddles the east edge
    with pytest.raises(UserInputError, match=r"covers only [1-9]\d?\.\d% of the scene"):
        H.read_dem(path, crs, t, (n, n))
    with pytest.raises(UserInputError, match="resampling"):
        H.read_dem(path, crs, t, (n, n), resampling="magic")
    with pytest.raises(UserInputError, match="does not exist"):
        H.read_dem(tmp_path / "none.tif", crs, t, (n, n))


def test_read_dem_voids(tmp_path):
    import rasterio

    # a lidar DEM that is mostly nodata: large voids refused, accepted with a fill value
    gully = fixture_path(GULLY_ASC)
    crs = CRS.from_epsg(32613)
    t = Affine(3.0, 0, 559705.0, 0, -3.0, 4380487.0)
    with pytest.raises(UserInputError, match=r"west_bijou_gully.asc.*voids"):
        H.read_dem(gully, crs, t, (89, 43), src_crs=crs)
    z = H.read_dem(gully, crs, t, (89, 43), src_crs=crs, resampling="nearest", fill_value=-1.0)
    with rasterio.open(gully) as ds:
        a = ds.read(1)
    assert np.array_equal(z[a != 0], a[a != 0]) and np.all(z[a == 0] == -1.0)
    # a small hole (3 x 3 DEM pixels) is filled by interpolation from its rim
    yy, xx = np.mgrid[0:40, 0:40]
    dem = (100.0 + 0.5 * xx + 0.25 * yy).astype(np.float32)
    dem[18:21, 18:21] = -9999.0
    tif = tmp_path / "hole.tif"
    dcrs = CRS.from_epsg(32633)
    dt = Affine(10.0, 0, 400000.0, 0, -10.0, 5000400.0)
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=40,
        height=40,
        count=1,
        dtype="float32",
        crs=dcrs,
        transform=dt,
        nodata=-9999.0,
    ) as ds:
        ds.write(dem, 1)
    z = H.read_dem(tif, dcrs, dt, (40, 40), resampling="nearest")
    assert np.isfinite(z).all()
    ref = 100.0 + 0.5 * xx + 0.25 * yy
    assert np.abs(z - ref)[18:21, 18:21].max() < 2.0 and np.array_equal(z[:10], ref[:10])
    dem[5:35, 5:35] = -9999.0  # 30 x 30: too large
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=40,
        height=40,
        count=1,
        dtype="float32",
        crs=dcrs,
        transform=dt,
        nodata=-9999.0,
    ) as ds:
        ds.write(dem, 1)
    with pytest.raises(UserInputError, match=r"hole.tif: the DEM has voids .* over 56\.2%"):
        H.read_dem(tif, dcrs, dt, (40, 40))


# --- Alexandria and RMSE -------------------------------------------------------------------------


def test_read_alexandria():
    a = H.read_alexandria(alexandria_root())
    shape = a["dsm"].shape
    for k in ("dtm", "ndsm", "hag", "footprints", "building_height", "semantic"):
        assert a[k].shape == shape, k
    assert a["gsd"] == 2.0 and a["crs"].to_epsg() == 26918
    nd = a["ndsm"]
    assert np.nanmin(nd) > -2.0 and np.nanmax(nd) < 40.0
    np.testing.assert_allclose(nd, a["dsm"] - a["dtm"])
    fp = a["footprints"]
    assert np.array_equal(fp, a["semantic"] == BLD) and 0.02 < fp.mean() < 0.5
    # buildings stand out of the ground: median nDSM inside footprints vs outside
    assert np.nanmedian(nd[fp]) > 4.0 > np.nanmedian(nd[~fp])
    bh = a["building_height"]
    assert np.all(np.isnan(bh[~fp])) and np.nanmin(bh) >= 3.5 and np.nanmax(bh) <= 18.0
    assert int(np.isfinite(a["heights"]).sum()) >= 60
    hm = H.height_map(a["layout"])  # HEIGHT values act as height tags
    assert np.array_equal(hm.source == H.SOURCE_HEIGHT, np.isfinite(bh))
    assert np.array_equal(hm.buildings, fp)


def test_read_alexandria_excerpt_and_regrid():
    a = H.read_alexandria(ALEX_EXCERPT)
    assert a["dsm"].shape == (64, 64) and a["gsd"] == 2.0 and len(a["features"]) == 30
    fp = a["footprints"]
    assert 0.1 < fp.mean() < 0.5 and np.nanmedian(a["ndsm"][fp]) > 4.0 > np.nanmedian(
        a["ndsm"][~fp]
    )
    r = H.height_rmse(a["building_height"], a["ndsm"], fp)
    assert r["n"] > 500 and r["rmse"] < H.height_rmse(np.zeros((64, 64)), a["ndsm"], fp)["rmse"]
    b = H.read_alexandria(ALEX_EXCERPT, gsd=1.0)  # same extent at 1 m
    assert b["dsm"].shape == (128, 128) and b["gsd"] == 1.0
    assert abs(b["footprints"].mean() - fp.mean()) < 0.02
    assert abs(float(np.nanmean(b["dsm"])) - float(np.nanmean(a["dsm"]))) < 0.2
    with pytest.raises(UserInputError, match="does not exist"):
        H.read_alexandria(HERE / "data" / "no_such_set")


def test_height_rmse():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.ones((3, 4), bool)
    mask[0, 0] = False
    r = H.height_rmse(ref + 2.0, ref, mask)
    assert r["rmse"] == pytest.approx(2.0) and r["bias"] == pytest.approx(2.0) and r["n"] == 11
    gen = ref + np.where(np.arange(12).reshape(3, 4) % 2 == 0, 3.0, -3.0)
    gen[2, 3] = np.nan  # not counted
    r = H.height_rmse(gen, ref, np.ones((3, 4), bool))
    assert r["n"] == 11 and r["rmse"] == pytest.approx(3.0)
    assert r["bias"] == pytest.approx(3.0 / 11)
    assert math.isnan(H.height_rmse(ref, ref, np.zeros((3, 4), bool))["rmse"])
    with pytest.raises(ValueError):
        H.height_rmse(ref, ref[:2], mask)
