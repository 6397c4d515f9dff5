"""One loader per input kind, shared by the CLI, the app and the evaluation (one set of errors).

* Layouts (:func:`read_layout`): OSM (.osm, .osm.pbf, .pbf, .osm.bz2, .osm.gz, .o5m) and GeoJSON
  (.geojson, .json) are rasterized with :func:`earthgen.geo.layout.build_layout`; class maps
  (.png, .tif, .tiff) are read with :func:`earthgen.data.masks.read_mask`: grey class ids,
  palette PNGs (pixel value = id) or colours of the class palette
  (:data:`earthgen.classes.PALETTE`); a GeoTIFF class map keeps its CRS and transform.
* Images (:func:`read_image`): PNG / JPEG (grey or RGBA -> RGB) and GeoTIFF (any CRS, kept).
* Outputs (:func:`write_image`, :func:`check_image_output`): the format follows the extension
  (.png, .jpg/.jpeg, .tif/.tiff GeoTIFF); written atomically (:func:`earthgen.io.atomic_path`).

Every mistake is a :class:`~earthgen.errors.UserInputError` of one line naming the flag and the
file: ``--layout x.png: cannot read the file as an image (...)``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from earthgen.errors import UserInputError

#: OSM and GeoJSON files, rasterized on the fly (earthgen.geo.osm.OSM_SUFFIXES + GEOJSON_SUFFIXES).
VECTOR_SUFFIXES: tuple[str, ...] = (
    ".osm",
    ".osm.pbf",
    ".pbf",
    ".osm.bz2",
    ".osm.gz",
    ".o5m",
    ".geojson",
    ".json",
)
#: Class-id maps (grey ids, palette or class colours); a GeoTIFF keeps its georeference.
CLASS_MAP_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
LAYOUT_SUFFIXES: tuple[str, ...] = VECTOR_SUFFIXES + CLASS_MAP_SUFFIXES
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")


@dataclass
class LayoutInput:
    """A layout ready for a pipeline.

    ``semantic`` [H, W] uint8 class ids (:mod:`earthgen.classes`); ``gsd`` metres/pixel (None
    for a class map given without one); ``crs`` / ``transform`` (affine of the north-west corner,
    pixel -> map units) when georeferenced, else None; ``description`` a short human text;
    ``source`` the :class:`earthgen.geo.layout.Layout` when rasterized from vectors."""

    semantic: np.ndarray
    gsd: float | None
    crs: Any | None
    transform: Any | None
    description: str
    source: Any | None = None


@dataclass
class ImageInput:
    """An RGB image: ``rgb`` [H, W, 3] uint8, ``gsd`` metres/pixel, ``crs`` / ``transform`` when
    the file is georeferenced (else None)."""

    rgb: np.ndarray
    gsd: float | None
    crs: Any | None
    transform: Any | None


# --- shared checks and error wording --------------------------------------------------------------


def suffix_of(path: str | os.PathLike, known: tuple[str, ...]) -> str | None:
    """The longest of ``known`` that the (lower-case) file name ends with, else None."""
    name = Path(path).name.lower()
    hits = [s for s in known if name.endswith(s)]
    return max(hits, key=len) if hits else None


def _strip_path(msg: str, path: Path) -> str:
    """A reader's message without its own leading path (the caller puts flag and path first)."""
    for prefix in (str(path), path.name):
        for sep in (": ", ":"):
            if msg.startswith(prefix + sep):
                return msg[len(prefix) + len(sep) :]
    return msg


@contextlib.contextmanager
def user_errors(flag: str, path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a reader's :class:`UserInputError` as ``{flag} {path}: {reason}`` (one line)."""
    p = Path(path)
    try:
        yield
    except UserInputError as e:
        msg = " ".join(str(e).split())
        if msg.startswith(f"{flag} "):
            raise
        raise UserInputError(f"{flag} {p}: {_strip_path(msg, p)}") from None


def require_input(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` as a Path when it is a readable file whose name ends with one of ``suffixes``;
    else a one-line UserInputError naming ``flag`` and the file. ``what``: e.g. "a layout"."""
    if path is None or not str(path).strip():
        raise UserInputError(f"{flag}: empty path")
    p = Path(path).expanduser()
    if suffix_of(p, suffixes) is None:
        got = f"'{''.join(p.suffixes)}'" if p.suffixes else "no extension"
        raise UserInputError(
            f"{flag} {p}: unknown file type {got}; {what} is one of {', '.join(suffixes)}"
        )
    if not p.exists():
        raise UserInputError(f"{flag} {p}: file not found")
    if p.is_dir():
        raise UserInputError(f"{flag} {p}: is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise UserInputError(f"{flag} {p}: cannot read the file (permission denied)")
    return p


def _unreadable(flag: str, p: Path) -> UserInputError:
    """The one message for a file no image reader can open."""
    return UserInputError(f"{flag} {p}: cannot read the file as an image (PNG, JPEG or TIFF)")


def _probe(p: Path, flag: str) -> None:
    """Refuse a file that neither PIL nor rasterio can open, with one common message."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.size  # noqa: B018 - opening reads the header
        return
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    if suffix_of(p, _TIFF):
        try:
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(p):
                    return
        except Exception:  # noqa: BLE001 - any unreadable file is the user's
            pass
    raise _unreadable(flag, p)


def _georef(p: Path) -> tuple[Any, Any, float | None, tuple[int, int] | None]:
    """(crs, transform, gsd m/px, (height, width)) of a TIFF; Nones when it has no CRS."""
    try:
        import rasterio

        from earthgen.data.geotiff import gsd_from_transform

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain TIFFs
            with rasterio.open(p) as ds:
                if ds.crs is None:
                    return None, None, None, (ds.height, ds.width)
                gsd = gsd_from_transform(ds.transform, ds.crs, (ds.height, ds.width))
                return ds.crs, ds.transform, gsd, (ds.height, ds.width)
    except Exception:  # noqa: BLE001 - PIL read it; no georeference then
        return None, None, None, None


def _check_size(size: Any, flag: str) -> tuple[int, int] | None:
    """``None``, ``N`` or ``(width, height)`` pixels -> (width, height) or None."""
    if size is None:
        return None
    vals = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(vals) == 2 and vals[0] is None and vals[1] is None:
        return None
    if len(vals) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in vals
    ):
        raise UserInputError(
            f"{flag}: size must be N or (width, height) in pixels > 0, got {size!r}"
        )
    return int(vals[0]), int(vals[1])


# --- layouts -------------------------------------------------------------------------------------


def read_layout(
    path: str | os.PathLike,
    *,
    flag: str = "--layout",
    center: tuple[float, float] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    size: int | tuple[int, int] | None = None,
    gsd: float | None = None,
) -> LayoutInput:
    """Read any layout file -> :class:`LayoutInput`.

    Vector files are rasterized (:func:`earthgen.geo.layout.build_layout`) on the area of
    ``center`` (lat, lon degrees) or ``bbox`` (min_lon, min_lat, max_lon, max_lat degrees) with
    ``size`` (N or (width, height) pixels) and ``gsd`` (metres/pixel). Class maps are read whole
    (``center`` / ``bbox`` are for vector data and ignored), resized nearest to ``size`` when
    given; ``gsd`` is the one given, else a GeoTIFF's own."""
    p = require_input(path, flag, LAYOUT_SUFFIXES, "a layout (OSM, GeoJSON or class map)")
    wh = _check_size(size, flag)
    if suffix_of(p, VECTOR_SUFFIXES):
        from earthgen.geo.layout import build_layout

        with user_errors(flag, p):
            lay = build_layout(p, bbox=bbox, center=center, size=wh, gsd=gsd)
        return LayoutInput(
            np.ascontiguousarray(lay.semantic, dtype=np.uint8),
            float(lay.gsd),
            lay.crs,
            lay.transform,
            f"{p.name} rasterized",
            source=lay,
        )
    return _read_class_map(p, flag, wh, gsd)


def _read_class_map(
    p: Path, flag: str, wh: tuple[int, int] | None, gsd: float | None
) -> LayoutInput:
    from earthgen.data.masks import read_mask

    _probe(p, flag)
    with user_errors(flag, p):
        ids = read_mask(p)
    h0, w0 = ids.shape
    crs = transform = None
    own_gsd = None
    if suffix_of(p, _TIFF):
        crs, transform, own_gsd, _ = _georef(p)
    if wh is not None and wh != (w0, h0):
        from PIL import Image

        ids = np.asarray(Image.fromarray(ids).resize(wh, Image.Resampling.NEAREST))
        if transform is not None:
            from affine import Affine

            transform = transform @ Affine.scale(w0 / wh[0], h0 / wh[1])
            own_gsd = None if own_gsd is None else own_gsd * 0.5 * (w0 / wh[0] + h0 / wh[1])
    g = float(gsd) if gsd is not None else own_gsd
    return LayoutInput(
        np.ascontiguousarray(ids, dtype=np.uint8),
        g,
        crs,
        transform,
        f"class-id map {p.name} ({w0}x{h0})",
    )


# --- images --------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, *, flag: str = "--image") -> ImageInput:
    """Read a PNG / JPEG (grey, palette or RGBA -> RGB) or a GeoTIFF -> :class:`ImageInput`.

    A uint8 GeoTIFF keeps its values; other types are stretched to 0-255 by
    :func:`earthgen.data.geotiff.read_geotiff` (2-98 % percentiles). The CRS is kept as given."""
    p = require_input(path, flag, IMAGE_SUFFIXES, "an image (PNG, JPEG or GeoTIFF)")
    if suffix_of(p, _TIFF):
        if _georef(p)[3] is not None:  # rasterio reads it
            return _read_tiff(p, flag)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise _unreadable(flag, p) from None
    return ImageInput(np.ascontiguousarray(rgb, dtype=np.uint8), None, None, None)


def _read_tiff(p: Path, flag: str) -> ImageInput:
    import rasterio

    from earthgen.data.geotiff import read_geotiff

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(p) as ds:
            is_u8 = all(dt == "uint8" for dt in ds.dtypes)
        with user_errors(flag, p):
            img = read_geotiff(p, stretch=None if is_u8 else (2.0, 98.0))
    if img.crs is None:
        return ImageInput(img.rgb, None, None, None)
    return ImageInput(img.rgb, img.gsd, img.crs, img.transform)


# --- outputs -------------------------------------------------------------------------------------


def check_image_output(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse an image output path before any work: an extension other than
    :data:`IMAGE_SUFFIXES` (the message names them), a folder, an unwritable place."""
    from earthgen.io import check_output

    check_output(path, flag, exts=IMAGE_SUFFIXES)


def write_image(
    path: str | os.PathLike, rgb: np.ndarray, *, crs: Any = None, transform: Any = None
) -> Path:
    """Write ``rgb`` ([H, W, 3] or [H, W] uint8) in the format of the extension of ``path``:
    .png, .jpg/.jpeg (quality 95), .tif/.tiff (a GeoTIFF with ``crs`` and ``transform`` when
    given, a plain TIFF otherwise). Atomic: a killed run leaves no half-written file."""
    from earthgen.io import atomic_path, write_geotiff

    p = Path(path)
    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(
            f"write_image expects [H, W, 3] or [H, W] uint8, got {arr.dtype} {arr.shape}"
        )
    ext = suffix_of(p, IMAGE_SUFFIXES)
    if ext is None:
        raise UserInputError(
            f"{p}: extension '{p.suffix}' is not supported; give one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if ext in _TIFF and crs is not None and transform is not None:
        bands = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr
        desc = ["red", "green", "blue"] if arr.ndim == 3 else ["grey"]
        return write_geotiff(p, bands, crs, transform, band_descriptions=desc)
    from PIL import Image

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}[ext]
    kw: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {}
    if fmt == "TIFF":
        kw["compression"] = "tiff_deflate"
    img = Image.fromarray(arr)
    with atomic_path(p) as tmp:
        img.save(tmp, format=fmt, **kw)
    return p


__all__ = [
    "CLASS_MAP_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LAYOUT_SUFFIXES",
    "VECTOR_SUFFIXES",
    "ImageInput",
    "LayoutInput",
    "check_image_output",
    "read_image",
    "read_layout",
    "require_input",
    "suffix_of",
    "user_errors",
    "write_image",
]
