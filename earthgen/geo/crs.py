"""Coordinate reference systems: a metric UTM CRS for a place, and lon/lat <-> metre transforms.

All transformers use ``always_xy=True``: coordinates are always (x, y) = (lon, lat) or
(easting, northing), whatever axis order the CRS definition declares.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from earthgen.errors import UserInputError

WGS84 = CRS.from_epsg(4326)

BBox = tuple[float, float, float, float]  # (min_lon, min_lat, max_lon, max_lat) in degrees
Bounds = tuple[float, float, float, float]  # (min_x, min_y, max_x, max_y) in CRS units (metres)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone (WGS84, 326xx north / 327xx south) containing ``(lon, lat)``.

    Follows the Norway (32V) and Svalbard (31X-37X) exceptions. Beyond the UTM latitude range
    (84 N / 80 S) the polar stereographic UPS CRS (EPSG 32661 / 32761) is returned instead.
    """
    check_lonlat(lon, lat)
    if lat > 84.0:
        return 32661
    if lat < -80.0:
        return 32761
    zone = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        zone = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return (32600 if lat >= 0.0 else 32700) + zone


def utm_crs(lon: float, lat: float) -> CRS:
    """The UTM :class:`pyproj.CRS` (metres) for a point given in degrees."""
    return CRS.from_epsg(utm_epsg(lon, lat))


def check_lonlat(lon: float, lat: float) -> None:
    """Raise :class:`UserInputError` unless ``lon`` is in [-180, 180] and ``lat`` in [-90, 90]."""
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise UserInputError(f"longitude/latitude must be finite numbers, got ({lon}, {lat})")
    if not -180.0 <= lon <= 180.0:
        raise UserInputError(f"longitude {lon} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise UserInputError(f"latitude {lat} is outside [-90, 90]")


def check_bbox(bbox: Any) -> BBox:
    """Validate a (min_lon, min_lat, max_lon, max_lat) box in degrees; return it as floats."""
    try:
        vals = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise UserInputError(
            f"bbox must be 4 numbers min_lon,min_lat,max_lon,max_lat; got {bbox!r}"
        ) from None
    if len(vals) != 4:
        raise UserInputError(
            f"bbox must be 4 numbers min_lon,min_lat,max_lon,max_lat; got {bbox!r}"
        )
    min_lon, min_lat, max_lon, max_lat = vals
    check_lonlat(min_lon, min_lat)
    check_lonlat(max_lon, max_lat)
    if not min_lon < max_lon:
        raise UserInputError(
            f"bbox min_lon ({min_lon}) must be < max_lon ({max_lon}); the order is "
            "min_lon,min_lat,max_lon,max_lat"
        )
    if not min_lat < max_lat:
        raise UserInputError(
            f"bbox min_lat ({min_lat}) must be < max_lat ({max_lat}); the order is "
            "min_lon,min_lat,max_lon,max_lat"
        )
    return vals  # type: ignore[return-value]


def as_crs(value: Any, what: str = "CRS") -> CRS:
    """Parse anything pyproj accepts ('EPSG:32632', 32632, WKT, a CRS) into a :class:`CRS`."""
    if isinstance(value, CRS):
        return value
    try:
        return CRS.from_user_input(value)
    except (CRSError, TypeError, ValueError) as e:
        raise UserInputError(
            f"{what}: cannot parse {value!r} as a CRS (try e.g. EPSG:32632): {e}"
        ) from None


def check_metric(crs: CRS) -> CRS:
    """Raise :class:`UserInputError` unless ``crs`` is projected with metre units."""
    units = {ax.unit_name for ax in crs.axis_info}
    if not crs.is_projected or not units <= {"metre", "meter"}:
        raise UserInputError(
            f"the layout CRS must be projected in metres (e.g. a UTM zone, EPSG:326xx); "
            f"got {crs.to_string()} with units {sorted(units)}"
        )
    return crs


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


def transformer(src: Any, dst: Any) -> Transformer:
    """A cached ``always_xy`` :class:`pyproj.Transformer` from ``src`` to ``dst``."""
    return _transformer(as_crs(src).to_wkt(), as_crs(dst).to_wkt())


def lonlat_to_xy(crs: Any, lon: Any, lat: Any) -> tuple[Any, Any]:
    """Degrees -> map coordinates (metres) of ``crs``; scalars or arrays."""
    return transformer(WGS84, crs).transform(lon, lat)


def xy_to_lonlat(crs: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """Map coordinates (metres) of ``crs`` -> degrees (lon, lat); scalars or arrays."""
    return transformer(crs, WGS84).transform(x, y)


def bbox_to_bounds(bbox: BBox, crs: Any, densify: int = 21) -> Bounds:
    """Lon/lat box -> the enclosing (min_x, min_y, max_x, max_y) box in ``crs`` (metres).

    Edges are densified so the result encloses the curved image of the box."""
    return tuple(transformer(WGS84, crs).transform_bounds(*bbox, densify_pts=densify))  # type: ignore[return-value]


def bounds_to_bbox(bounds: Bounds, crs: Any, densify: int = 21) -> BBox:
    """Projected (min_x, min_y, max_x, max_y) in ``crs`` -> the enclosing lon/lat box (degrees)."""
    return tuple(transformer(crs, WGS84).transform_bounds(*bounds, densify_pts=densify))  # type: ignore[return-value]


def transform_bounds(bounds: Bounds, src: Any, dst: Any, densify: int = 21) -> Bounds:
    """Enclosing box of ``bounds`` (in ``src`` units) expressed in ``dst`` units."""
    if as_crs(src) == as_crs(dst):
        return tuple(float(v) for v in bounds)  # type: ignore[return-value]
    return tuple(transformer(src, dst).transform_bounds(*bounds, densify_pts=densify))  # type: ignore[return-value]


def project_geometries(geoms: Any, src: Any, dst: Any) -> np.ndarray:
    """Reproject an array of shapely geometries from ``src`` to ``dst`` (vectorised)."""
    import shapely

    arr = np.asarray(geoms, dtype=object)
    if as_crs(src) == as_crs(dst) or arr.size == 0:
        return arr
    tr = transformer(src, dst)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(arr, fn)
