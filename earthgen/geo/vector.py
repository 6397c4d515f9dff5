"""Vector features in a metric map CRS and their rasterization to the semantic class table.

Both the OSM reader and the procedural world engine produce :class:`Feature` lists; one
function, :func:`rasterize_features`, turns them into a class-id map, so real and synthetic
layouts follow exactly the same rules (class table, road widths, paint order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earthgen.classes import CLASS_ID, PAINT_ORDER, ROAD_WIDTH_M

_PAINT_RANK = {name: i for i, name in enumerate(PAINT_ORDER)}


@dataclass
class Feature:
    """One map feature. ``geometry`` is a shapely geometry in map units (metres); ``cls`` a class
    name of :mod:`earthgen.classes`; ``props`` free attributes, e.g. ``height`` (m) for buildings,
    ``width`` (m) for roads/waterways (overrides the class default), ``osm_id``, ``kind``."""

    geometry: Any
    cls: str
    props: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cls not in CLASS_ID:
            raise ValueError(f"unknown class {self.cls!r}")


_LINES = ("LineString", "MultiLineString", "LinearRing")
_POINTS = ("Point", "MultiPoint")


def area_geometries(features: list[Feature]) -> np.ndarray:
    """Areas of many features at once (vectorized buffering): lines buffered to half their
    ``width`` (m; class default of :data:`ROAD_WIDTH_M`, else 3 m), points to ``radius`` (m,
    default 1), polygons unchanged. Returns an object array of shapely geometries."""
    import shapely

    geoms = np.array([f.geometry for f in features], dtype=object)
    out = geoms.copy()
    kinds = np.array([g.geom_type for g in geoms], dtype=object)
    is_line = np.isin(kinds, _LINES)
    is_point = np.isin(kinds, _POINTS)
    if is_line.any():
        idx = np.flatnonzero(is_line)
        width = np.array(
            [
                float(features[i].props.get("width") or ROAD_WIDTH_M.get(features[i].cls, 3.0))
                for i in idx
            ]
        )
        out[idx] = shapely.buffer(
            geoms[idx], width / 2.0, cap_style="flat", join_style="round", quad_segs=2
        )
    if is_point.any():
        idx = np.flatnonzero(is_point)
        radius = np.array([float(features[i].props.get("radius", 1.0)) for i in idx])
        out[idx] = shapely.buffer(geoms[idx], radius, quad_segs=4)
    return out


def geojson_like(geoms: np.ndarray) -> list[dict]:
    """Shapely geometries -> GeoJSON-like dicts for rasterio, fast for hole-free polygons."""
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    out: list[dict | None] = [None] * len(geoms)
    simple = (shapely.get_type_id(geoms) == 3) & (shapely.get_num_interior_rings(geoms) == 0)
    idx = np.flatnonzero(simple)
    if len(idx):
        coords, owner = shapely.get_coordinates(
            shapely.get_exterior_ring(geoms[idx]), return_index=True
        )
        parts = np.split(coords, np.flatnonzero(np.diff(owner)) + 1)
        for i, c in zip(idx[np.unique(owner)], parts, strict=True):
            out[i] = {"type": "Polygon", "coordinates": [c.tolist()]}
    for i in np.flatnonzero(~simple):
        out[i] = shapely.geometry.mapping(geoms[i])
    return out  # type: ignore[return-value]


def rasterize_features(
    features: list[Feature],
    transform: Any,
    shape: tuple[int, int],
    background: int = 0,
) -> np.ndarray:
    """Burn features into a ``[H, W]`` uint8 class-id map.

    ``transform`` is the affine pixel->map transform, ``shape`` (height, width). Classes are
    painted in :data:`earthgen.classes.PAINT_ORDER` (later wins, e.g. buildings over roads over
    water); within a class, in list order. A pixel belongs to a feature when its centre is inside.
    """
    import shapely
    from rasterio.features import rasterize

    out = np.full(shape, background, dtype=np.uint8)
    ordered = sorted(
        (f for f in features if f.cls in _PAINT_RANK),
        key=lambda f: _PAINT_RANK[f.cls],
    )  # sorted() is stable: list order within a class is kept
    if not ordered:
        return out
    areas = area_geometries(ordered)
    keep = ~shapely.is_empty(areas)
    if not keep.any():
        return out
    values = [CLASS_ID[f.cls] for f, k in zip(ordered, keep, strict=True) if k]
    shapes = zip(geojson_like(areas[keep]), values, strict=True)
    return rasterize(shapes, out_shape=shape, transform=transform, fill=background, dtype="uint8")


def features_geojson(
    features: list[Feature], crs: Any, bounds: tuple[float, float, float, float]
) -> dict:
    """Features clipped to ``bounds`` (xmin, ymin, xmax, ymax in ``crs``), reprojected to WGS84
    lon/lat (7 decimals, ~1 cm), as a GeoJSON FeatureCollection with ``class`` and the props."""
    import shapely

    from earthgen.geo.crs import WGS84, project_geometries

    out: list[dict] = []
    if features:
        geoms = np.array([f.geometry for f in features], dtype=object)
        clipped = shapely.intersection(geoms, shapely.box(*bounds))
        ll = project_geometries(clipped, crs, WGS84)
        ll = shapely.transform(ll, lambda c: np.round(c, 7))
        for f, g, gc in zip(features, ll, clipped, strict=True):
            if g is None or g.is_empty or gc.is_empty:
                continue
            props = {"class": f.cls, **{k: v for k, v in f.props.items() if v is not None}}
            out.append(
                {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(g)}
            )
    return {"type": "FeatureCollection", "features": out}
