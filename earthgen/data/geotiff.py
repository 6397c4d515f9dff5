"""GeoTIFF (any GDAL raster) -> uint8 RGB for display and training, keeping the georeference.

Band choice (1-based): 1 band -> grey replicated; 2 bands -> band 1 grey (band 2 alpha if so
tagged); 3 or 4 bands -> 1, 2, 3 (a 4th alpha band becomes the valid mask); more bands ->
the bands tagged red/green/blue, else ``bands=`` must be given, e.g. ``bands=(4, 3, 2)`` for
Sentinel-2 true colour. Each band is stretched from its ``stretch`` percentiles (2-98 % by default,
computed on valid pixels only) to 0-255; nodata / alpha-0 / NaN pixels are 0 and False in
``valid``::

    img = read_geotiff("scene.tif", bands=(4, 3, 2))
    img.rgb.shape, img.gsd        # (H, W, 3) uint8, metres per pixel
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from earthgen.data._common import PathLike, fail, require_file
from earthgen.errors import UserInputError

_MAX_STAT_PIXELS = 2_000_000  # percentiles from a strided subsample above this


@dataclass
class GeoImage:
    """A raster read for display: ``rgb`` [H, W, 3] uint8, ``valid`` [H, W] bool (False at
    nodata), ``crs`` (rasterio CRS or None), ``transform`` (affine pixel -> map), ``gsd`` metres
    per pixel (None when unknown), ``bands`` the 1-based source bands used for R, G, B,
    ``dtype`` the source data type, ``stretch_range`` [3, 2] source values mapped to 0 and 255."""

    rgb: np.ndarray
    valid: np.ndarray
    crs: Any
    transform: Any
    gsd: float | None
    bands: tuple[int, int, int]
    dtype: str
    stretch_range: np.ndarray
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.rgb.shape[0], self.rgb.shape[1]


def gsd_from_transform(
    transform: Any, crs: Any, shape: tuple[int, int] | None = None
) -> float | None:
    """Ground sample distance in metres per pixel: the mean pixel side length of ``transform``
    times the CRS's metres per unit when ``crs`` is projected; for geographic CRSs the geodesic
    pixel size at the raster centre (``shape`` = (height, width)); None without a CRS."""
    if crs is None:
        return None
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    px, py = math.hypot(a, d), math.hypot(b, e)
    if px == 0 or py == 0:
        return None
    if getattr(crs, "is_projected", False):
        try:
            factor = float(crs.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - units rasterio cannot name: assume metres
            factor = 1.0
        return 0.5 * (px + py) * factor
    if getattr(crs, "is_geographic", False):
        from pyproj import CRS, Geod

        try:
            geod = CRS.from_user_input(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
        except Exception:  # noqa: BLE001
            geod = Geod(ellps="WGS84")
        h, w = shape if shape is not None else (1, 1)
        cx, cy = c + a * w / 2 + b * h / 2, f + d * w / 2 + e * h / 2
        dx = geod.inv(cx, cy, cx + a, cy + d)[2]
        dy = geod.inv(cx, cy, cx + b, cy + e)[2]
        return 0.5 * (abs(dx) + abs(dy))
    return None


def _default_bands(ds: Any, path: Path) -> tuple[tuple[int, int, int], int | None]:
    """(R, G, B) 1-based band indices and the alpha band (or None) of a dataset."""
    from rasterio.enums import ColorInterp

    ci = list(ds.colorinterp)
    alpha = ci.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in ci else None
    n = ds.count
    if n == 1:
        return (1, 1, 1), None
    if n == 2:
        return (1, 1, 1), alpha if alpha == 2 else None
    if n in (3, 4):
        return (1, 2, 3), alpha if alpha == 4 else None
    try:
        rgb = tuple(ci.index(x) + 1 for x in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
        return rgb, alpha  # type: ignore[return-value]
    except ValueError:
        raise fail(
            path,
            None,
            f"{n} bands and none tagged red/green/blue: pass bands=(r, g, b), "
            "1-based, e.g. bands=(4, 3, 2) for Sentinel-2 true colour",
        ) from None


def _stretch(
    band: np.ndarray, valid: np.ndarray, pct: tuple[float, float] | None, dtype: np.dtype
) -> tuple[np.ndarray, tuple[float, float]]:
    """One band [H, W] -> uint8 [H, W] and the (low, high) source values mapped to 0 and 255."""
    vals = band[valid]
    if vals.size > _MAX_STAT_PIXELS:
        vals = vals[:: int(math.ceil(vals.size / _MAX_STAT_PIXELS))]
    if vals.size == 0:
        return np.zeros(band.shape, np.uint8), (0.0, 0.0)
    if pct is None and dtype == np.uint8:
        return band.astype(np.uint8), (0.0, 255.0)
    lo, hi = np.percentile(vals, pct if pct is not None else (0.0, 100.0))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:  # a constant band: keep uint8 values, else mid grey
        const = float(lo) if dtype == np.uint8 else 127.0
        return np.where(valid, np.uint8(const), np.uint8(0)), (float(lo), float(hi))
    out = (band.astype(np.float64) - lo) * (255.0 / (hi - lo))
    out = np.clip(np.rint(out), 0, 255)
    out[~valid] = 0
    return out.astype(np.uint8), (float(lo), float(hi))


def read_geotiff(
    path: PathLike,
    bands: Sequence[int] | None = None,
    stretch: tuple[float, float] | None = (2.0, 98.0),
    nodata: float | None = None,
    max_size: int | None = None,
) -> GeoImage:
    """Read a raster as uint8 RGB ``[H, W, 3]`` with its CRS, transform and GSD (m/px).

    ``bands``: 1 or 3 band numbers (1-based; one band is replicated as grey). ``stretch``:
    (low, high) percentiles per band; None keeps uint8 data as is and maps other types by their
    min-max. ``nodata`` overrides the file's value (a pixel is invalid when all its selected
    bands equal it). ``max_size`` caps the longer side (pixels) by averaging on read; the
    transform and GSD follow."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError

    path = require_file(path, "raster file")
    if stretch is not None:
        lo_p, hi_p = (float(v) for v in stretch)
        if not 0 <= lo_p < hi_p <= 100:
            raise UserInputError(
                f"stretch percentiles must satisfy 0 <= low < high <= 100, got {stretch}"
            )
        stretch = (lo_p, hi_p)
    try:
        ds = rasterio.open(path)
    except RasterioIOError as e:
        raise fail(path, None, f"cannot read raster: {e}") from None
    with ds:
        if bands is None:
            sel, alpha = _default_bands(ds, path)
        else:
            sel_l = [int(b) for b in bands]
            if len(sel_l) not in (1, 3):
                raise UserInputError(f"{path}: bands must be 1 or 3 band numbers, got {bands}")
            bad = [b for b in sel_l if not 1 <= b <= ds.count]
            if bad:
                raise UserInputError(
                    f"{path}: band(s) {bad} out of range; the file has "
                    f"{ds.count} band(s), numbered from 1"
                )
            sel = tuple(sel_l * 3 if len(sel_l) == 1 else sel_l)  # type: ignore[assignment]
            alpha = None
        height, width = ds.height, ds.width
        transform = ds.transform
        if max_size is not None and max(height, width) > max_size:
            k = max(height, width) / float(max_size)
            height, width = max(1, round(ds.height / k)), max(1, round(ds.width / k))
            sx, sy = ds.width / width, ds.height / height
            t = ds.transform
            transform = Affine(t.a * sx, t.b * sy, t.c, t.d * sx, t.e * sy, t.f)
        uniq = sorted(set(sel) | ({alpha} if alpha else set()))
        kw: dict[str, Any] = {}
        if (height, width) != (ds.height, ds.width):
            kw = {"out_shape": (len(uniq), height, width), "resampling": Resampling.average}
        try:
            data = ds.read(uniq, **kw)
        except Exception as e:  # noqa: BLE001 - corrupt/truncated file
            raise fail(path, None, f"cannot read raster data: {e}") from None
        by_band = {b: data[i] for i, b in enumerate(uniq)}
        nd = nodata if nodata is not None else ds.nodatavals[sel[0] - 1]
        dtype = np.dtype(ds.dtypes[sel[0] - 1])
        crs = ds.crs
    rgb_src = [by_band[b] for b in sel]
    valid = np.ones((height, width), dtype=bool)
    if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
        valid &= ~np.all([b == nd for b in rgb_src], axis=0)
    if np.issubdtype(dtype, np.floating):
        valid &= np.all([np.isfinite(b) for b in rgb_src], axis=0)
    if alpha:
        valid &= by_band[alpha] > 0
    out = np.zeros((height, width, 3), dtype=np.uint8)
    ranges = np.zeros((3, 2))
    cache: dict[int, tuple[np.ndarray, tuple[float, float]]] = {}
    for k, b in enumerate(sel):
        if b not in cache:
            cache[b] = _stretch(by_band[b], valid, stretch, dtype)
        out[..., k], ranges[k] = cache[b]
    return GeoImage(
        rgb=out,
        valid=valid,
        crs=crs,
        transform=transform,
        gsd=gsd_from_transform(transform, crs, (height, width)),
        bands=(int(sel[0]), int(sel[1]), int(sel[2])),
        dtype=dtype.name,
        stretch_range=ranges,
        path=path,
    )
