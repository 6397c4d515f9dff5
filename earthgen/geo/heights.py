"""Building heights and ground elevation from data, on a layout's metric grid.

* :func:`building_height`: one building's top and base (metres above ground) from its OSM tags:
  ``height`` wins, then ``building:levels`` x :data:`LEVEL_HEIGHT_M`, then the type default of
  :data:`DEFAULT_HEIGHTS_M` (``building=*`` value; unknown types use ``yes``).
* :func:`height_map`: the building tops/bases of a :class:`~earthgen.geo.layout.Layout`
  rasterized on its grid (:class:`HeightMap`), the condition map of the 3D structure generator.
* :func:`read_dem`: ground elevation (metres) from a GeoTIFF / ASCII grid in any CRS,
  reprojected onto a target grid, with one-line refusals for uncovered areas and large voids.
* :func:`read_alexandria`: the real DSM/DTM/building-height set of ``../shared/data`` on its
  2 m grid, with a :class:`Layout` whose buildings carry the surveyed heights as tags.
* :func:`height_rmse`: RMSE / bias of a height map against a reference nDSM inside a mask.

All heights are metres; grids are north-up with square pixels (``gsd`` metres/pixel).
See docs/heights.md for the default table and the DEM rules. The rules live in
:mod:`earthgen.geo.building_heights` (below :mod:`earthgen.geo.layout`); this module adds the
Alexandria reader, which builds a layout.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError
from earthgen.geo.building_heights import (
    CLASS_HEIGHT_CAPS_M,
    DEFAULT_HEIGHTS_M,
    DEFAULT_KIND,
    LEVEL_HEIGHT_M,
    MAX_ABS_ELEVATION_M,
    MAX_HEIGHT_M,
    SOURCE_DEFAULT,
    SOURCE_HEIGHT,
    SOURCE_LEVELS,
    SOURCE_NAMES,
    SOURCE_NONE,
    HeightMap,
    building_height,
    default_height,
    height_caps,
    height_map,
    height_rmse,
    read_dem,
)

# --- the Alexandria DSM / DTM reference set ------------------------------------------------------


ALEXANDRIA_GSD = 2.0


def _read_band(path: Path) -> tuple[np.ndarray, Any, CRS]:
    import rasterio

    if not path.exists():
        raise UserInputError(f"{path} does not exist (expected the alexandria_dsm_dtm set)")
    with rasterio.open(path) as ds:
        a = ds.read(1).astype(np.float32)
        if ds.nodata is not None:
            a[a == ds.nodata] = np.nan
        return a, ds.transform, CRS.from_user_input(ds.crs)


def _regrid(
    a: np.ndarray, transform: Any, crs: CRS, dst_transform: Any, shape: tuple[int, int]
) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    out = np.full(shape, np.nan, dtype=np.float32)
    reproject(
        a,
        out,
        src_transform=transform,
        src_crs=crs,
        dst_transform=dst_transform,
        dst_crs=crs,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    return out


def read_alexandria(root: str | os.PathLike, gsd: float | None = None) -> dict[str, Any]:
    """The Alexandria (VA) DSM/DTM/footprint set on its 2 m EPSG:26918 grid (or, with ``gsd``
    metres/pixel, on a grid of the same extent: rasters resampled bilinearly, footprints
    rasterized anew).

    Returns ``dsm``, ``dtm``, ``hag`` (as shipped; not dsm - dtm), ``ndsm`` = dsm - dtm
    ([H, W] float32 metres, NaN where the DTM has no data), ``footprints`` [H, W] bool,
    ``building_height`` [H, W] float32 (the footprints' ``HEIGHT`` in metres, taller wins, NaN
    elsewhere or untagged), ``semantic`` [H, W] uint8 class ids (building / background),
    ``heights`` [N] per-building HEIGHT (NaN when null), ``features`` (buildings in EPSG:26918,
    props ``height`` / ``height_source``='height' / ``kind``='yes'), ``layout`` (a
    :class:`~earthgen.geo.layout.Layout` on the grid: ``height_map(layout)`` uses HEIGHT as
    tags), ``crs``, ``transform``, ``gsd`` (2.0 m/px unless ``gsd`` is given)."""
    import shapely

    from earthgen.geo.crs import WGS84, project_geometries
    from earthgen.geo.layout import Grid, layout_from_features
    from earthgen.geo.vector import Feature

    r = Path(root)
    dsm, transform, crs = _read_band(r / "dsm.tif")
    dtm, t2, crs2 = _read_band(r / "dtm.tif")
    hag, _, _ = _read_band(r / "hag.tif")
    if dtm.shape != dsm.shape or t2 != transform or crs2 != crs:
        raise UserInputError(f"{r}: dsm.tif and dtm.tif are not on the same grid")
    gj = r / "buildings.geojson"
    try:
        data = json.loads(gj.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"{gj}: cannot read the building footprints: {e}") from None
    geoms, heights = [], []
    for f in data.get("features", []):
        if not f.get("geometry"):
            continue
        geoms.append(shapely.geometry.shape(f["geometry"]))
        v = (f.get("properties") or {}).get("HEIGHT")
        heights.append(float(v) if v is not None else math.nan)
    proj = project_geometries(np.array(geoms, dtype=object), WGS84, crs)
    features = []
    for i, (g, hv) in enumerate(zip(proj, heights, strict=True)):
        props: dict[str, Any] = {"osm_id": f"alexandria/{i}", "kind": "yes"}
        if math.isfinite(hv) and hv > 0:
            props.update(height=hv, height_source="height")
        features.append(Feature(shapely.make_valid(g), "building", props))
    hgt, wid = dsm.shape
    if gsd is not None and float(gsd) != float(transform.a):
        from affine import Affine

        g = float(gsd)
        if not math.isfinite(g) or g <= 0:
            raise UserInputError(f"gsd must be a positive number of metres per pixel, got {gsd}")
        hgt = max(int(round(hgt * transform.a / g)), 1)
        wid = max(int(round(wid * transform.a / g)), 1)
        dst = Affine(g, 0.0, transform.c, 0.0, -g, transform.f)
        dsm, dtm, hag = (_regrid(x, transform, crs, dst, (hgt, wid)) for x in (dsm, dtm, hag))
        transform = dst
    grid = Grid(crs, transform, wid, hgt)
    layout = layout_from_features(features, grid, source=str(gj))
    hm = height_map(layout)
    building_height = np.where(hm.source == SOURCE_HEIGHT, hm.top, np.nan).astype(np.float32)
    return {
        "dsm": dsm,
        "dtm": dtm,
        "hag": hag,
        "ndsm": (dsm - dtm).astype(np.float32),
        "footprints": layout.semantic == CLASS_ID["building"],
        "building_height": building_height,
        "semantic": layout.semantic,
        "heights": np.asarray(heights, dtype=np.float64),
        "features": features,
        "layout": layout,
        "crs": crs,
        "transform": transform,
        "gsd": float(transform.a),
    }


__all__ = [
    "CLASS_HEIGHT_CAPS_M",
    "DEFAULT_HEIGHTS_M",
    "DEFAULT_KIND",
    "LEVEL_HEIGHT_M",
    "MAX_ABS_ELEVATION_M",
    "MAX_HEIGHT_M",
    "SOURCE_DEFAULT",
    "SOURCE_HEIGHT",
    "SOURCE_LEVELS",
    "SOURCE_NAMES",
    "SOURCE_NONE",
    "HeightMap",
    "building_height",
    "default_height",
    "height_caps",
    "height_map",
    "height_rmse",
    "read_alexandria",
    "read_dem",
]
