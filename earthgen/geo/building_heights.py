"""Building heights and ground elevation from data, on a layout's metric grid (the rules; the
public module is :mod:`earthgen.geo.heights`, which adds the Alexandria reference set).

* :func:`building_height`: one building's top and base (metres above ground) from its OSM tags:
  ``height`` wins, then ``building:levels`` x :data:`LEVEL_HEIGHT_M`, then the type default of
  :data:`DEFAULT_HEIGHTS_M` (``building=*`` value; unknown types use ``yes``).
* :func:`height_map`: the building tops/bases of a :class:`~earthgen.geo.layout.Layout`
  rasterized on its grid (:class:`HeightMap`), the condition map of the 3D structure generator.
* :func:`read_dem`: ground elevation (metres) from a GeoTIFF / ASCII grid in any CRS,
  reprojected onto a target grid, with one-line refusals for uncovered areas and large voids.
* :func:`height_rmse`: RMSE / bias of a height map against a reference nDSM inside a mask.

It imports nothing of :mod:`earthgen.geo.layout` (which calls :func:`height_map` from
``Layout.height_map``). All heights are metres; grids are north-up with square pixels (``gsd``
metres/pixel). See docs/heights.md for the default table and the DEM rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError
from earthgen.geo.osm import LEVEL_HEIGHT_M, _parse_count, parse_length

# Top of the building above ground (metres) by ``building=*`` value, used when neither a
# ``height`` nor a ``building:levels`` tag is present. Mostly storeys x 3 m (+ ~1 m of roof or
# parapet); halls and sheds by typical eaves/ridge heights. Sources of the storey counts:
# typical European/North-American stock (docs/heights.md explains each row).
DEFAULT_HEIGHTS_M: dict[str, float] = {
    # residential
    "house": 7.0,  # 2 storeys + pitched roof
    "detached": 7.0,
    "semidetached_house": 7.0,
    "terrace": 8.0,  # 2-3 storeys, row houses
    "bungalow": 4.0,  # 1 storey + roof
    "farm": 7.0,  # farmhouse, 2 storeys
    "residential": 10.0,  # 3 storeys (a generic residential block)
    "apartments": 16.0,  # 5 storeys + 1 m
    "dormitory": 13.0,  # 4 storeys + 1 m
    "hotel": 19.0,  # 6 storeys + 1 m
    # commercial / civic
    "commercial": 10.0,  # 3 storeys
    "retail": 6.0,  # 1 tall storey (shop floor ~5 m) + parapet
    "supermarket": 7.0,
    "office": 16.0,  # 5 storeys + 1 m
    "public": 10.0,  # 3 storeys
    "civic": 10.0,
    "government": 13.0,  # 4 storeys + 1 m
    "school": 10.0,  # 3 storeys
    "kindergarten": 4.0,  # 1 storey + roof
    "university": 16.0,  # 5 storeys + 1 m
    "college": 13.0,
    "hospital": 19.0,  # 6 storeys + 1 m
    "train_station": 10.0,
    "transportation": 8.0,
    "stadium": 20.0,
    "sports_hall": 9.0,
    # religious (nave ridge; towers are separate building:part objects or height-tagged)
    "church": 15.0,
    "chapel": 8.0,
    "cathedral": 30.0,
    "mosque": 12.0,
    "synagogue": 12.0,
    "temple": 10.0,
    "shrine": 5.0,
    # industrial / agricultural
    "industrial": 9.0,  # single-storey hall, 8-10 m eaves
    "warehouse": 9.0,
    "manufacture": 9.0,
    "hangar": 12.0,
    "barn": 7.0,
    "farm_auxiliary": 5.0,
    "cowshed": 5.0,
    "stable": 5.0,
    "greenhouse": 3.0,
    "silo": 15.0,
    "storage_tank": 10.0,
    # small structures
    "garage": 3.0,
    "garages": 3.0,
    "carport": 3.0,
    "shed": 3.0,
    "hut": 3.0,
    "cabin": 4.0,
    "kiosk": 3.0,
    "service": 3.0,  # utility boxes, pump houses
    "toilets": 3.0,
    "roof": 4.0,  # roof on pillars (canopy, fuel station)
    "ruins": 3.0,
    "construction": 6.0,
    # unknown type: 2 storeys
    "yes": 6.0,
}
DEFAULT_KIND = "yes"

SOURCE_NONE, SOURCE_HEIGHT, SOURCE_LEVELS, SOURCE_DEFAULT = 0, 1, 2, 3
SOURCE_NAMES: tuple[str, ...] = ("none", "height", "levels", "default")
_SOURCE_CODE = {n: i for i, n in enumerate(SOURCE_NAMES)}

MAX_HEIGHT_M = 1000.0
MAX_ABS_ELEVATION_M = 12000.0  # a DEM value beyond this is not metres (or garbage)


def default_height(kind: Any, defaults: Mapping[str, float] | None = None) -> float:
    """Type default (metres) of a ``building=*`` value; unknown values use ``yes``."""
    table = DEFAULT_HEIGHTS_M if defaults is None else defaults
    key = str(kind).strip().lower() if kind not in (None, "") else DEFAULT_KIND
    return float(table.get(key, table.get(DEFAULT_KIND, DEFAULT_HEIGHTS_M[DEFAULT_KIND])))


def _positive(v: float | None, limit: float) -> float | None:
    return v if v is not None and math.isfinite(v) and 0 < v < limit else None


def building_height(
    props: Mapping[str, Any],
    defaults: Mapping[str, float] | None = None,
    ignore_tags: bool = False,
) -> tuple[float, float, str]:
    """``(height_m, min_height_m, source)`` of one building, metres above ground.

    ``props`` are either the parsed feature props of :mod:`earthgen.geo.osm` (``kind``,
    ``height``, ``height_source``, ``levels``, ``min_height``, ``min_level``) or raw OSM tags
    (``building``, ``height``, ``building:levels``, ``min_height``, ``building:min_level``).
    Precedence: ``height`` tag ("height"), else levels x 3 m ("levels"), else the type default
    ("default"). The base is ``min_height``, else ``building:min_level`` x 3 m, else 0. A base
    at or above a tagged top is dropped (base 0: the top tag is trusted); a default top is raised
    to base + 3 m. ``ignore_tags`` uses the type default for every building."""
    kind = props.get("kind", props.get("building"))
    top: float | None = None
    source = "default"
    if not ignore_tags:
        tagged = props.get("height_source")
        h = _positive(parse_length(props.get("height")), MAX_HEIGHT_M)
        if h is not None and tagged in (None, "height", "levels"):
            top, source = h, tagged or "height"
        else:
            levels = _parse_count(props.get("levels", props.get("building:levels")))
            if _positive(levels, 300) is not None:
                top, source = float(levels) * LEVEL_HEIGHT_M, "levels"
    base = _positive(parse_length(props.get("min_height")), MAX_HEIGHT_M)
    if base is None:
        min_level = _parse_count(props.get("min_level", props.get("building:min_level")))
        if _positive(min_level, 300) is not None:
            base = float(min_level) * LEVEL_HEIGHT_M
    base = base or 0.0
    if top is None:
        top = default_height(kind, defaults)
        if base >= top:
            top = base + LEVEL_HEIGHT_M
    elif base >= top:
        base = 0.0
    return float(top), float(base), source


@dataclass
class HeightMap:
    """Building heights on a layout grid. ``top`` [H, W] float32 metres above ground of the
    building tops (NaN outside buildings); ``base`` [H, W] float32 metres above ground of the
    lowest part (``min_height``; 0 by default, NaN outside buildings); ``source`` [H, W] uint8
    (0 none, 1 ``height`` tag, 2 ``building:levels`` x 3 m, 3 type default); ``crs`` /
    ``transform`` / ``gsd`` (metres/pixel) of the layout."""

    top: np.ndarray
    base: np.ndarray
    source: np.ndarray
    crs: CRS
    transform: Any
    gsd: float

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.top.shape[0]), int(self.top.shape[1]))

    @property
    def buildings(self) -> np.ndarray:
        """[H, W] bool: pixels with a building."""
        return self.source > 0

    @property
    def tagged(self) -> np.ndarray:
        """[H, W] bool: building pixels whose top comes from a ``height`` or levels tag."""
        return (self.source == SOURCE_HEIGHT) | (self.source == SOURCE_LEVELS)

    def source_counts(self) -> dict[str, int]:
        """Pixels per source name ('none', 'height', 'levels', 'default')."""
        counts = np.bincount(self.source.ravel(), minlength=len(SOURCE_NAMES))
        return {n: int(counts[i]) for i, n in enumerate(SOURCE_NAMES)}

    def top_or(self, fill: float = 0.0) -> np.ndarray:
        """[H, W] float32 tops with ``fill`` (metres) outside buildings."""
        return np.where(self.buildings, self.top, np.float32(fill)).astype(np.float32)


def _building_shapes(features: list, defaults: Mapping[str, float] | None, ignore_tags: bool):
    """(areas, tops, bases, source codes) of the building features (lines/points buffered the
    way :func:`~earthgen.geo.vector.rasterize_features` does, so pixels match the class map)."""
    import shapely

    from earthgen.geo.vector import area_geometries

    blds = [f for f in features if f.cls == "building"]
    if not blds:
        return np.zeros(0, dtype=object), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.uint8)
    areas = area_geometries(blds)
    keep = ~shapely.is_empty(areas)
    vals = [building_height(f.props, defaults, ignore_tags) for f in blds]
    tops = np.array([v[0] for v in vals], dtype=np.float64)
    bases = np.array([v[1] for v in vals], dtype=np.float64)
    codes = np.array([_SOURCE_CODE[v[2]] for v in vals], dtype=np.uint8)
    return areas[keep], tops[keep], bases[keep], codes[keep]


def height_map(
    layout: Any,
    defaults: Mapping[str, float] | None = None,
    ignore_tags: bool = False,
    default_kind: str = DEFAULT_KIND,
) -> HeightMap:
    """Rasterize the building heights of ``layout`` (a :class:`~earthgen.geo.layout.Layout`)
    on its grid. A pixel takes the building whose footprint contains its centre (the rule of
    the class map); where footprints overlap the taller building wins. Pixels of class
    ``building`` in ``layout.semantic`` without a footprint get the ``default_kind`` default;
    pixels of other classes get NaN / source 0. ``defaults`` replaces :data:`DEFAULT_HEIGHTS_M`;
    ``ignore_tags`` uses type defaults everywhere (the "untagged" baseline)."""
    from rasterio.features import rasterize

    from earthgen.geo.vector import geojson_like

    sem = np.asarray(layout.semantic)
    shape = (int(sem.shape[0]), int(sem.shape[1]))
    is_bld = sem == CLASS_ID["building"]
    top = np.full(shape, np.nan, dtype=np.float32)
    base = np.full(shape, np.nan, dtype=np.float32)
    source = np.zeros(shape, dtype=np.uint8)
    areas, tops, bases, codes = _building_shapes(list(layout.features), defaults, ignore_tags)
    idx = np.zeros(shape, dtype=np.int32)
    if len(areas):
        order = np.argsort(tops, kind="stable")  # burnt in order: the tallest is burnt last
        shapes = zip(geojson_like(areas[order]), (order + 1).tolist(), strict=True)
        idx = rasterize(shapes, out_shape=shape, transform=layout.transform, fill=0, dtype="int32")
    hit = (idx > 0) & is_bld
    k = idx[hit] - 1
    top[hit], base[hit], source[hit] = tops[k], bases[k], codes[k]
    rest = is_bld & ~hit
    if rest.any():
        top[rest] = default_height(default_kind, defaults)
        base[rest] = 0.0
        source[rest] = SOURCE_DEFAULT
    return HeightMap(
        top=top,
        base=base,
        source=source,
        crs=layout.crs,
        transform=layout.transform,
        gsd=float(layout.gsd),
    )


# --- ground elevation ----------------------------------------------------------------------------


def _resampling(name: str) -> Any:
    from rasterio.enums import Resampling

    if str(name) not in ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average"):
        raise UserInputError(
            f"unknown DEM resampling {name!r}; use one of nearest, bilinear, cubic, average"
        )
    try:
        return Resampling[str(name)]
    except KeyError:
        raise UserInputError(
            f"unknown DEM resampling {name!r}; use one of nearest, bilinear, cubic, average"
        ) from None


def _fmt_lonlat(bounds: tuple[float, float, float, float], crs: CRS) -> str:
    from earthgen.geo.crs import bounds_to_bbox

    try:
        b = bounds_to_bbox(bounds, crs)
    except Exception:  # noqa: BLE001 - only used for a message
        return f"x {bounds[0]:.1f}..{bounds[2]:.1f}, y {bounds[1]:.1f}..{bounds[3]:.1f}"
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def _hole_mask(invalid: np.ndarray, max_hole_px: int) -> np.ndarray:
    """[h, w] bool: the invalid pixels in connected holes wider or taller than ``max_hole_px``."""
    from scipy import ndimage

    labels, n = ndimage.label(invalid, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(invalid)
    big = np.zeros(n + 1, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None and max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) > max_hole_px:
            big[i] = True
    return big[labels]


def read_dem(
    path: str | os.PathLike,
    crs: Any,
    transform: Any,
    shape: tuple[int, int],
    *,
    resampling: str = "bilinear",
    src_crs: Any = None,
    max_hole_px: int = 16,
    fill_value: float | None = None,
) -> np.ndarray:
    """Ground elevation [H, W] float32 (metres) of the DEM at ``path`` on the target grid
    (``crs``, north-up ``transform``, ``shape`` = (H, W)).

    Reads any raster GDAL reads (GeoTIFF, ESRI ASCII grid .asc, ...) in any CRS and reprojects
    it (``resampling``: nearest, bilinear, cubic, average). The DEM's values must be metres.
    ``src_crs`` gives the CRS of a file without one (it overrides the file's own). Voids
    (nodata / non-finite) are filled by interpolation when each connected void spans at most
    ``max_hole_px`` DEM pixels; larger voids inside the area are refused unless ``fill_value``
    (metres, e.g. 0 for sea) is given. Raises :class:`UserInputError` (one line, naming the
    file) for unreadable files, a missing CRS, a DEM that does not cover the whole grid, large
    voids or values that are not plausible elevations in metres."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.fill import fillnodata
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    from earthgen.geo.crs import as_crs

    p = Path(path)
    dst_crs = as_crs(crs, "target CRS")
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise UserInputError(f"target grid shape must be positive (H, W), got {shape}")
    method = _resampling(resampling)
    if not p.exists():
        raise UserInputError(f"DEM file {p} does not exist")
    try:
        ds = rasterio.open(p)
    except (RasterioIOError, OSError) as e:
        raise UserInputError(f"{p}: cannot read as an elevation raster: {e}") from None
    with ds:
        scrs = as_crs(src_crs, f"{p.name}: src_crs") if src_crs is not None else ds.crs
        if scrs is None:
            b = ds.bounds
            hint = (
                " (its coordinates look like longitude/latitude: try EPSG:4326)"
                if -180.5 <= b.left < b.right <= 180.5 and -90.5 <= b.bottom < b.top <= 90.5
                else ""
            )
            raise UserInputError(
                f"{p}: the DEM has no CRS (no .prj beside it); give its CRS "
                f"(src_crs / --dem-crs){hint}"
            )
        scrs = CRS.from_user_input(scrs)
        t = transform
        dst_bounds = (t.c, t.f + t.e * h, t.c + t.a * w, t.f)
        where = _fmt_lonlat(dst_bounds, dst_crs)
        sb = transform_bounds(dst_crs, scrs, *dst_bounds, densify_pts=21)
        if not all(math.isfinite(v) for v in sb):
            raise UserInputError(
                f"{p}: the scene ({where}) cannot be projected to the DEM's CRS {scrs.to_string()}"
            )
        pad = max_hole_px + 2
        win = from_bounds(*sb, transform=ds.transform)
        col0 = math.floor(win.col_off) - pad
        row0 = math.floor(win.row_off) - pad
        col1 = math.ceil(win.col_off + win.width) + pad
        row1 = math.ceil(win.row_off + win.height) + pad
        col0, row0 = max(col0, 0), max(row0, 0)
        col1, row1 = min(col1, ds.width), min(row1, ds.height)
        if col1 <= col0 or row1 <= row0:
            raise UserInputError(
                f"{p}: the DEM ({_fmt_lonlat(tuple(ds.bounds), scrs)}) covers "
                f"only 0.0% of the scene ({where}); give a DEM that covers "
                "the whole area"
            )
        window = Window(col0, row0, col1 - col0, row1 - row0)
        arr = ds.read(1, window=window).astype(np.float64)
        wtrans = ds.window_transform(window)
        invalid = ~np.isfinite(arr)
        if ds.nodata is not None:
            invalid |= arr == ds.nodata
        dem_where = _fmt_lonlat(tuple(ds.bounds), scrs)

    # coverage: the window's footprint (the DEM's own extent near the scene) on the target grid
    cov = np.full((h, w), np.nan, dtype=np.float32)
    reproject(
        np.ones(arr.shape, dtype=np.float32),
        cov,
        src_transform=wtrans,
        src_crs=scrs,
        dst_transform=transform,
        dst_crs=dst_crs,
        src_nodata=None,
        dst_nodata=np.nan,
        resampling=_resampling("nearest"),
    )
    covered = np.isfinite(cov)
    if not covered.all():
        raise UserInputError(
            f"{p}: the DEM ({dem_where}) covers only {100 * covered.mean():.1f}% of the scene "
            f"({where}); give a DEM that covers the whole area"
        )
    src = arr.astype(np.float32)
    if invalid.any():
        big = _hole_mask(invalid, max_hole_px)
        valid = ~invalid
        if valid.any() and (invalid & ~big).any():
            filled = fillnodata(
                np.where(valid, src, 0).astype(np.float32),
                mask=valid.astype(np.uint8),
                max_search_distance=max_hole_px + 1,
                smoothing_iterations=0,
            )
            src = np.where(invalid & ~big, filled, src).astype(np.float32)
        src[big] = np.nan if fill_value is None else np.float32(fill_value)
        src[invalid & ~big & ~np.isfinite(src)] = np.nan
        if not np.isfinite(src).any():
            raise UserInputError(f"{p}: the DEM has no valid elevation over the scene ({where})")
    out = np.full((h, w), np.nan, dtype=np.float32)
    reproject(
        src,
        out,
        src_transform=wtrans,
        src_crs=scrs,
        dst_transform=transform,
        dst_crs=dst_crs,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=method,
    )
    bad = ~np.isfinite(out)
    if bad.any():
        raise UserInputError(
            f"{p}: the DEM has voids (nodata) over {100 * bad.mean():.1f}% of the scene ({where}) "
            f"larger than {max_hole_px} DEM pixels; fill them first or give a fill value "
            "(e.g. 0 m for sea)"
        )
    if float(np.abs(out).max()) > MAX_ABS_ELEVATION_M:
        raise UserInputError(
            f"{p}: elevations up to {float(np.abs(out).max()):.0f} are not plausible metres "
            "(the DEM must be in metres)"
        )
    return out


def height_rmse(generated: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Height error of ``generated`` [H, W] (metres above ground) against ``reference`` [H, W]
    (an nDSM, metres) over ``mask`` [H, W] bool pixels where both are finite: ``rmse``,
    ``bias`` (mean generated - reference), ``mae`` (metres) and ``n`` (pixels)."""
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if not (g.shape == r.shape == m.shape):
        raise ValueError(f"shapes differ: generated {g.shape}, reference {r.shape}, mask {m.shape}")
    sel = m & np.isfinite(g) & np.isfinite(r)
    n = int(sel.sum())
    if n == 0:
        return {"rmse": math.nan, "bias": math.nan, "mae": math.nan, "n": 0}
    d = g[sel] - r[sel]
    return {
        "rmse": float(np.sqrt(np.mean(d * d))),
        "bias": float(d.mean()),
        "mae": float(np.abs(d).mean()),
        "n": n,
    }


__all__ = [
    "DEFAULT_HEIGHTS_M",
    "DEFAULT_KIND",
    "LEVEL_HEIGHT_M",
    "SOURCE_DEFAULT",
    "SOURCE_HEIGHT",
    "SOURCE_LEVELS",
    "SOURCE_NAMES",
    "SOURCE_NONE",
    "HeightMap",
    "building_height",
    "default_height",
    "height_map",
    "height_rmse",
    "read_dem",
]


#: The most metres above the ground a column of each class may reach in a scene built from data
#: (``--heights data``): roads, rail, paths, water, parking, grass, farmland and bare land are
#: flat; unmapped land (yards, plazas, verges) may hold walls, hedges and cars up to 2 m; forest
#: is not bounded; buildings get their own height (:func:`height_map`).
CLASS_HEIGHT_CAPS_M: dict[str, float | None] = {
    "background": 2.0,
    "road_major": 0.0,
    "road_secondary": 0.0,
    "road_minor": 0.0,
    "path": 0.0,
    "railway": 0.0,
    "water": 0.0,
    "forest": None,
    "grass": 0.0,
    "farmland": 0.0,
    "bare": 0.0,
    "parking": 0.0,
}


def height_caps(semantic: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 metres: :data:`CLASS_HEIGHT_CAPS_M` of each pixel's class (class ids of
    :mod:`earthgen.classes`); NaN for buildings and classes without a bound."""
    from earthgen.classes import CLASS_NAMES

    table = np.array(
        [
            np.nan if CLASS_HEIGHT_CAPS_M.get(n) is None else CLASS_HEIGHT_CAPS_M[n]
            for n in CLASS_NAMES
        ],
        dtype=np.float32,
    )
    return table[np.asarray(semantic, dtype=np.int64)]
