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


def feature_area_geometry(f: Feature):
    """The area a feature covers: lines are buffered to their width (m), polygons kept."""
    g = f.geometry
    if g.geom_type in ("LineString", "MultiLineString", "LinearRing"):
        width = float(f.props.get("width") or ROAD_WIDTH_M.get(f.cls, 3.0))
        return g.buffer(width / 2.0, cap_style="flat", join_style="round", quad_segs=2)
    if g.geom_type in ("Point", "MultiPoint"):
        return g.buffer(float(f.props.get("radius", 1.0)), quad_segs=4)
    return g


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
    from rasterio.features import rasterize

    out = np.full(shape, background, dtype=np.uint8)
    ordered = sorted(
        (f for f in features if f.cls in _PAINT_RANK),
        key=lambda f: _PAINT_RANK[f.cls],
    )  # sorted() is stable: list order within a class is kept
    shapes = []
    for f in ordered:
        g = feature_area_geometry(f)
        if g.is_empty:
            continue
        shapes.append((g, CLASS_ID[f.cls]))
    if not shapes:
        return out
    return rasterize(shapes, out_shape=shape, transform=transform, fill=background, dtype="uint8")
