"""Atomic file output and common raster writers.

Every writer goes through :func:`atomic_path`: the data is written to a temporary file beside
the target and renamed into place, so an interrupted run never leaves a half-written file.
Folder outputs go through :func:`atomic_dir`: built in a hidden sibling folder
(``.<name>.partial-*``) renamed onto the target at the end, so a killed run never leaves a folder
that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from earthgen_base.io import atomic_path, check_output  # noqa: F401  (re-exported)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, merge: bool | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write a folder output into; all or nothing.

    ``merge=False``: ``path`` must not exist or be an empty folder (UserInputError before the
    body otherwise). The body writes into a sibling ``<parent>/.<name>.partial-XXXXXXXX`` that is
    renamed onto ``path`` in one step when the body returns: ``path`` appears complete or not at
    all. On an exception the temporary is removed; a killed run (SIGKILL, power loss) leaves only
    the hidden ``.<name>.partial-*`` folder, which can be deleted (docs/conventions.md).

    ``merge=True``: add files to a folder that already holds others (it is created if missing):
    the body writes into ``path/.partial-XXXXXXXX`` and its files are moved in one by one, each
    atomically, nothing if the body fails; a kill during the moves leaves part of them.

    ``merge=None`` (default): ``False`` when ``path`` is missing or empty, else ``True`` (callers
    written before the whole-folder rename, such as ``Layout.save`` into an existing folder).
    Commands check ``--out`` to be new or empty up front (``check_output(..., empty=True)``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        from earthgen.errors import UserInputError

        raise UserInputError(f"{path} exists and is not a folder")
    nonempty = path.is_dir() and any(path.iterdir())
    if merge is None:
        merge = nonempty
    if merge:
        with _merge_dir(path) as tmp:
            yield tmp
        return
    if nonempty:
        from earthgen.errors import UserInputError

        raise UserInputError(f"{path} is not an empty folder; give a new or empty one")
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; give the usual folder mode
    try:
        yield tmp
        try:
            os.replace(tmp, path)  # onto a missing or empty folder: one atomic rename
        except OSError as e:
            from earthgen.errors import UserInputError

            raise UserInputError(
                f"{path}: cannot move the finished output into place "
                f"({e.strerror or e}); was the folder filled meanwhile?"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _merge_dir(path: Path) -> Iterator[Path]:
    """``atomic_dir(path, merge=True)``: files moved into ``path`` one by one on success."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=path))
    try:
        yield tmp
        for item in sorted(tmp.rglob("*")):
            if item.is_file() or item.is_symlink():
                dest = path / item.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_png(
    path: str | os.PathLike, image: np.ndarray, palette: np.ndarray | None = None
) -> Path:
    """Write ``image`` ([H, W] uint8, or [H, W, 3] uint8) as PNG; with ``palette`` ([K, 3] uint8)
    a [H, W] class map is written as a palette ('P' mode) PNG whose pixel values are the ids."""
    from PIL import Image

    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {arr.dtype}")
    if palette is not None:
        if arr.ndim != 2:
            raise ValueError("a palette PNG needs a [H, W] class map")
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = palette
        img.putpalette(flat.ravel().tolist())
    else:
        img = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def write_geotiff(
    path: str | os.PathLike,
    data: np.ndarray,
    crs: Any,
    transform: Any,
    nodata: float | None = None,
    colormap: np.ndarray | None = None,
    band_descriptions: list[str] | None = None,
) -> Path:
    """Write ``data`` ([H, W] or [C, H, W]) as a tiled, deflate-compressed GeoTIFF.

    ``crs`` is anything rasterio accepts (EPSG code, WKT, ``pyproj.CRS``); ``transform`` an
    ``affine.Affine`` mapping pixel (col, row) to map coordinates (metres for projected CRSs).
    ``colormap`` ([K, 3] uint8) is attached to band 1 of a uint8 class map.
    """
    import rasterio

    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"write_geotiff expects [H, W] or [C, H, W], got shape {arr.shape}")
    count, height, width = arr.shape
    if hasattr(crs, "to_wkt"):
        crs = crs.to_wkt()
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": arr.dtype.name,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
    }
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if nodata is not None:
        profile["nodata"] = nodata
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            if colormap is not None and arr.dtype == np.uint8:
                dst.write_colormap(
                    1, {i: tuple(int(v) for v in c) + (255,) for i, c in enumerate(colormap)}
                )
            if band_descriptions:
                for i, desc in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, desc)
    return Path(path)
