"""Semantic layouts from OSM/GeoJSON: a north-up class-id raster on a metric grid, the features
behind it and the oriented boxes of its buildings.

Grid rules (all sizes in pixels, ``gsd`` in metres/pixel, square pixels):

* ``bbox`` + ``gsd``: the grid covers the box; its edges are snapped outwards to multiples of
  ``gsd`` in the projected CRS (neighbouring layouts tile seamlessly), the size follows.
* ``bbox`` + ``size``: ``gsd`` = the larger of extent_x / width and extent_y / height, so the
  whole box fits; the grid is centred on the box (the other axis covers a little more).
* ``center`` (lat, lon) + ``size`` [+ ``gsd``, default 1 m/px]: the grid is centred on the point,
  its origin snapped to a multiple of ``gsd``.
* nothing: the data's extent with ``gsd`` (default 1 m/px); ``size`` + ``gsd`` without a bbox or
  centre: centred on the data's extent.

The CRS is the UTM zone of the area's centre unless ``crs`` names another metric CRS.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS

from earthgen.boxes import BoxSet, polygon_to_corners
from earthgen.classes import CLASS_NAMES, PALETTE, class_fractions, legend
from earthgen.errors import UserInputError
from earthgen.geo.crs import (
    BBox,
    Bounds,
    as_crs,
    bbox_to_bounds,
    bounds_to_bbox,
    check_bbox,
    check_lonlat,
    check_metric,
    lonlat_to_xy,
    utm_crs,
)
from earthgen.geo.osm import VectorSource, load_source, select_features
from earthgen.geo.vector import Feature, features_geojson, rasterize_features

DEFAULT_GSD = 1.0  # metres / pixel
MAX_PIXELS = 16384 * 16384  # about 270 MB for the uint8 class map alone


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``transform`` maps (col, row) to map metres of ``crs``."""

    crs: CRS
    transform: Any  # affine.Affine
    width: int
    height: int

    @property
    def gsd(self) -> float:
        """Ground sampling distance in metres/pixel."""
        return float(self.transform.a)

    @property
    def bounds(self) -> Bounds:
        """(min_x, min_y, max_x, max_y) of the grid in metres."""
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    @property
    def bbox(self) -> BBox:
        """Enclosing lon/lat box (degrees) of the grid."""
        return bounds_to_bbox(self.bounds, self.crs)


def _check_gsd(gsd: Any) -> float:
    try:
        v = float(gsd)
    except (TypeError, ValueError):
        raise UserInputError(f"GSD must be a number of metres per pixel, got {gsd!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserInputError(f"GSD must be a finite number of metres per pixel > 0, got {gsd}")
    return v


def _check_size(size: Any) -> tuple[int, int]:
    """``N`` or ``(width, height)`` in pixels."""
    vals = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(vals) != 2:
        raise UserInputError(f"size must be N or (width, height) in pixels, got {size!r}")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise UserInputError(f"size must be positive whole numbers of pixels, got {size!r}")
        out.append(int(v))
    return out[0], out[1]


def _check_pixels(width: int, height: int, gsd: float, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UserInputError(
            f"the layout would be {width} x {height} = {width * height:,} pixels at {gsd:g} m/px, "
            f"more than the limit of {max_pixels:,}; use a larger --gsd, a smaller area or --size"
        )


def _snap_down(v: float, step: float) -> float:
    return math.floor(v / step + 1e-6) * step


def _snap_up(v: float, step: float) -> float:
    return math.ceil(v / step - 1e-6) * step


def plan_grid(
    bbox: BBox | None = None,
    center: tuple[float, float] | None = None,
    size: int | tuple[int, int] | None = None,
    gsd: float | None = None,
    crs: Any = None,
    extent: BBox | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Grid:
    """The pixel grid for a layout request (rules in the module docstring).

    ``bbox`` is (min_lon, min_lat, max_lon, max_lat) in degrees, ``center`` (lat, lon) in
    degrees, ``size`` N or (width, height) pixels, ``gsd`` metres/pixel, ``extent`` the lon/lat
    box used when neither ``bbox`` nor ``center`` is given."""
    from affine import Affine

    if gsd is not None:
        gsd = _check_gsd(gsd)
    wh = _check_size(size) if size is not None else None
    if bbox is not None and center is not None:
        raise UserInputError("give either a bbox or a center, not both")
    target = check_metric(as_crs(crs, "layout CRS")) if crs is not None else None

    if center is not None:
        try:
            lat, lon = (float(v) for v in center)
        except (TypeError, ValueError):
            raise UserInputError(f"center must be two numbers lat,lon; got {center!r}") from None
        check_lonlat(lon, lat)
        if wh is None:
            raise UserInputError("a center needs a size (pixels), e.g. --center LAT,LON --size 512")
        gsd = gsd if gsd is not None else DEFAULT_GSD
        w, h = wh
        _check_pixels(w, h, gsd, max_pixels)
        target = target or utm_crs(lon, lat)
        cx, cy = lonlat_to_xy(target, lon, lat)
        x0 = round((cx - w * gsd / 2) / gsd) * gsd
        y1 = round((cy + h * gsd / 2) / gsd) * gsd
        return Grid(target, Affine(gsd, 0.0, x0, 0.0, -gsd, y1), w, h)

    if bbox is None:
        if extent is None:
            raise UserInputError("give a bbox or a center: the data has no known extent")
        if wh is not None and gsd is not None:  # a size and a GSD: centred on the data
            mid = ((extent[1] + extent[3]) / 2, (extent[0] + extent[2]) / 2)
            return plan_grid(None, mid, size, gsd, crs, max_pixels=max_pixels)
        bbox = extent
    bbox = check_bbox(bbox)
    if wh is not None and gsd is not None:
        raise UserInputError(
            "with a bbox give either a size or a GSD, not both (the other follows from the box)"
        )
    target = target or utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    minx, miny, maxx, maxy = bbox_to_bounds(bbox, target)
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise UserInputError(f"bbox {bbox} cannot be projected to {target.to_string()}")
    if wh is not None:
        w, h = wh
        gsd = max((maxx - minx) / w, (maxy - miny) / h)
        _check_pixels(w, h, gsd, max_pixels)
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        return Grid(target, Affine(gsd, 0.0, cx - w * gsd / 2, 0.0, -gsd, cy + h * gsd / 2), w, h)
    gsd = gsd if gsd is not None else DEFAULT_GSD
    x0, x1 = _snap_down(minx, gsd), _snap_up(maxx, gsd)
    y0, y1 = _snap_down(miny, gsd), _snap_up(maxy, gsd)
    w, h = max(int(round((x1 - x0) / gsd)), 1), max(int(round((y1 - y0) / gsd)), 1)
    _check_pixels(w, h, gsd, max_pixels)
    return Grid(target, Affine(gsd, 0.0, x0, 0.0, -gsd, y1), w, h)


def _fmt_bbox(b: BBox) -> str:
    return f"lon {b[0]:.5f}..{b[2]:.5f}, lat {b[1]:.5f}..{b[3]:.5f}"


def _overlaps(a: BBox, b: BBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class Layout:
    """A semantic layout. ``semantic`` [H, W] uint8 class ids (:mod:`earthgen.classes`);
    ``transform`` north-up pixel -> map (metres in ``crs``); ``gsd`` metres/pixel;
    ``features`` in ``crs`` (clipped to the grid plus a margin); ``building_corners`` [N, 4, 2]
    oriented boxes in pixels (x right, y down; clockwise on screen, starting top-left);
    ``building_heights`` [N] metres (NaN when unknown); ``bbox`` lon/lat of the grid."""

    semantic: np.ndarray
    transform: Any
    crs: CRS
    gsd: float
    features: list[Feature]
    building_corners: np.ndarray
    building_heights: np.ndarray
    building_ids: list[Any] = field(default_factory=list)
    building_areas: np.ndarray = field(default_factory=lambda: np.zeros(0))  # m², visible part
    building_truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    bbox: BBox = (0.0, 0.0, 0.0, 0.0)
    source: str = ""

    @property
    def height(self) -> int:
        return int(self.semantic.shape[0])

    @property
    def width(self) -> int:
        return int(self.semantic.shape[1])

    @property
    def bounds(self) -> Bounds:
        """(min_x, min_y, max_x, max_y) of the raster in metres."""
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def class_fractions(self) -> dict[str, float]:
        """Fraction of pixels per class name."""
        return class_fractions(self.semantic)

    def feature_counts(self) -> dict[str, int]:
        """Number of features per class name (those touching the grid plus margin)."""
        counts = dict.fromkeys(CLASS_NAMES, 0)
        for f in self.features:
            counts[f.cls] += 1
        return counts

    def height_map(self, **kwargs: Any) -> Any:
        """Building tops/bases in metres above ground on this grid, from the OSM tags with type
        defaults: :func:`earthgen.geo.heights.height_map` (keyword arguments passed on)."""
        from earthgen.geo.building_heights import height_map

        return height_map(self, **kwargs)

    def building_boxes(self) -> BoxSet:
        """The buildings' oriented boxes as a :class:`~earthgen.boxes.BoxSet` (label 'building')."""
        return BoxSet(
            self.building_corners,
            ["building"] * len(self.building_corners),
            extra={"height_m": self.building_heights, "ids": list(self.building_ids)},
        )

    def legend_dict(self) -> dict:
        """The class legend plus the grid, CRS, class fractions and feature counts."""
        t = self.transform
        out = legend()
        out.update(
            source=self.source,
            size=[self.width, self.height],
            gsd_m_per_px=self.gsd,
            crs=self.crs.to_string(),
            epsg=self.crs.to_epsg(),
            transform=[t.a, t.b, t.c, t.d, t.e, t.f],
            bounds_m=list(self.bounds),
            bbox_lonlat=list(self.bbox),
            class_fractions=self.class_fractions(),
            feature_counts=self.feature_counts(),
            buildings=len(self.building_corners),
        )
        return out

    def features_geojson(self) -> dict:
        """The features clipped to the grid, in WGS84 lon/lat, as a GeoJSON FeatureCollection."""
        return features_geojson(self.features, self.crs, self.bounds)

    def buildings_dict(self) -> dict:
        """Oriented building boxes in pixel coordinates with heights (metres) and areas (m²)."""
        boxes = []
        for i, c in enumerate(self.building_corners):
            h = float(self.building_heights[i])
            boxes.append(
                {
                    "id": self.building_ids[i] if i < len(self.building_ids) else None,
                    "corners_px": np.round(c, 3).tolist(),
                    "height_m": None if math.isnan(h) else h,
                    "footprint_area_m2": round(float(self.building_areas[i]), 3)
                    if i < len(self.building_areas)
                    else None,
                    "truncated": bool(self.building_truncated[i])
                    if i < len(self.building_truncated)
                    else False,
                }
            )
        return {
            "image_size": [self.width, self.height],
            "gsd_m_per_px": self.gsd,
            "crs": self.crs.to_string(),
            "corner_order": "pixels (x right, y down), "
            "clockwise on screen from the top-left corner",
            "boxes": boxes,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write layout.png (palette), layout.tif (GeoTIFF), legend.json, features.geojson and
        buildings.json into ``out_dir``; each file appears atomically, none if writing fails."""
        from earthgen.io import atomic_dir, write_geotiff, write_json, write_png

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise UserInputError(f"output path {out} exists and is not a directory")
        existed = out.exists()
        names = ("layout.png", "layout.tif", "legend.json", "features.geojson", "buildings.json")
        try:
            with atomic_dir(out) as tmp:
                write_png(tmp / names[0], self.semantic, palette=PALETTE)
                write_geotiff(
                    tmp / names[1],
                    self.semantic,
                    self.crs,
                    self.transform,
                    colormap=PALETTE,
                    band_descriptions=["class_id"],
                )
                write_json(tmp / names[2], self.legend_dict())
                write_json(tmp / names[3], self.features_geojson())
                write_json(tmp / names[4], self.buildings_dict())
        except BaseException:
            if not existed:
                try:
                    out.rmdir()  # only if empty: never remove anything the user had
                except OSError:
                    pass
            raise
        return {n: out / n for n in names}


def _pixel_corners(corners_map: np.ndarray, transform: Any) -> np.ndarray:
    """[N, 4, 2] map metres -> pixels, reordered clockwise on screen from the top-left corner."""
    inv = ~transform
    x, y = corners_map[..., 0], corners_map[..., 1]
    px = np.stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f], axis=-1)
    out = np.empty_like(px)
    for i, c in enumerate(px):
        xs, ys = c[:, 0], c[:, 1]
        signed = 0.5 * np.sum(xs * np.roll(ys, -1) - np.roll(xs, -1) * ys)
        if signed < 0:  # counter-clockwise on screen (y down): reverse
            c = c[::-1]
        start = int(np.argmin(c[:, 0] + c[:, 1]))
        out[i] = np.roll(c, -start, axis=0)
    return out


def _building_boxes(features: list[Feature], grid_box: Any, transform: Any, gsd: float):
    corners, heights, ids, areas, trunc = [], [], [], [], []
    for f in features:
        if f.cls != "building":
            continue
        full = f.geometry
        vis = shapely.intersection(full, grid_box)
        for part in shapely.get_parts(vis):
            if part.geom_type != "Polygon" or part.area < gsd * gsd:
                continue  # less than one pixel visible
            corners.append(polygon_to_corners(part))
            h = f.props.get("height")
            heights.append(float(h) if h is not None else math.nan)
            ids.append(f.props.get("osm_id"))
            areas.append(part.area)
            trunc.append(bool(vis.area < full.area * (1 - 1e-6)))
    if not corners:
        return np.zeros((0, 4, 2)), np.zeros(0), [], np.zeros(0), np.zeros(0, dtype=bool)
    px = _pixel_corners(np.asarray(corners, dtype=np.float64), transform)
    return px, np.asarray(heights), ids, np.asarray(areas), np.asarray(trunc)


def build_layout(
    source: str | os.PathLike | VectorSource,
    bbox: BBox | None = None,
    center: tuple[float, float] | None = None,
    size: int | tuple[int, int] | None = None,
    gsd: float | None = None,
    crs: Any = None,
    source_crs: Any = None,
    max_pixels: int = MAX_PIXELS,
) -> Layout:
    """Rasterize an OSM/GeoJSON file into a :class:`Layout`.

    ``bbox`` (min_lon, min_lat, max_lon, max_lat) degrees or ``center`` (lat, lon) degrees;
    ``size`` pixels (N or (width, height)); ``gsd`` metres/pixel; ``crs`` the layout CRS
    (default: UTM of the area); ``source_crs`` the CRS of GeoJSON coordinates when the file has
    no ``crs`` member; ``max_pixels`` the largest width x height accepted.
    Raises :class:`~earthgen.errors.UserInputError` for bad files or arguments, areas outside
    the data and areas with no mapped features."""
    # Cheap argument checks first, so a bad flag fails before a big file is read.
    grid = None
    if bbox is not None or center is not None:
        grid = plan_grid(bbox, center, size, gsd, crs, max_pixels=max_pixels)
    elif gsd is not None:
        _check_gsd(gsd)
    src = source if isinstance(source, VectorSource) else load_source(source, source_crs)
    if src.extent is None:
        raise UserInputError(
            f"{src.path}: no mapped features (buildings, roads, water, land cover) in the file"
        )
    if grid is None:
        grid = plan_grid(None, None, size, gsd, crs, extent=src.extent, max_pixels=max_pixels)
    area = grid.bbox
    if not _overlaps(area, src.extent):
        raise UserInputError(
            f"the requested area ({_fmt_bbox(area)}) lies outside the data's extent "
            f"({_fmt_bbox(src.extent)}) in {src.path.name}"
        )
    features = select_features(src, grid.bounds, grid.crs)
    grid_box = shapely.box(*grid.bounds)
    if not any(f.geometry.intersects(grid_box) for f in features):
        raise UserInputError(
            f"no mapped features (buildings, roads, water, land cover) in the requested area "
            f"({_fmt_bbox(area)}); the data covers {_fmt_bbox(src.extent)}"
        )
    return layout_from_features(features, grid, source=str(src.path))


def layout_from_features(features: list[Feature], grid: Grid, source: str = "") -> Layout:
    """A :class:`Layout` on ``grid`` from features already in ``grid.crs`` (metres): the class
    map by :func:`~earthgen.geo.vector.rasterize_features` and the buildings' oriented boxes
    (heights from ``props['height']``, NaN when absent). Used by :func:`build_layout` and for
    footprints from other sources (e.g. :func:`earthgen.geo.heights.read_alexandria`)."""
    grid_box = shapely.box(*grid.bounds)
    semantic = rasterize_features(features, grid.transform, (grid.height, grid.width))
    corners, heights, ids, areas, trunc = _building_boxes(
        features, grid_box, grid.transform, grid.gsd
    )
    return Layout(
        semantic=semantic,
        transform=grid.transform,
        crs=grid.crs,
        gsd=grid.gsd,
        features=features,
        building_corners=corners,
        building_heights=heights,
        building_ids=ids,
        building_areas=areas,
        building_truncated=trunc,
        bbox=grid.bbox,
        source=source,
    )


__all__ = [
    "DEFAULT_GSD",
    "MAX_PIXELS",
    "Grid",
    "Layout",
    "build_layout",
    "layout_from_features",
    "plan_grid",
]
