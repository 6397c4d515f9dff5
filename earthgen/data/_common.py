"""Shared helpers of the dataset readers: error messages with file and line, path checks, number
formatting that round-trips exactly, image lookup by stem and cheap image-size probing."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from earthgen.boxes import BoxSet, polygon_area
from earthgen.errors import UserInputError

IMAGE_EXTS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".jp2",
    ".gif",
)
PathLike = str | os.PathLike


class DetectionItem(NamedTuple):
    """One labelled image: ``image`` path (may not exist when only labels were given),
    ``size`` (width, height) in pixels or None when unknown, ``boxes`` in pixel coordinates."""

    image: Path
    size: tuple[int, int] | None
    boxes: BoxSet


def where(path: PathLike, line: int | None = None) -> str:
    """``path`` or ``path:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def fail(path: PathLike, line: int | None, reason: str) -> UserInputError:
    """A :class:`UserInputError` reading ``file:line: reason`` (to be raised by the caller)."""
    return UserInputError(f"{where(path, line)}: {reason}")


def require_file(path: PathLike, what: str = "file") -> Path:
    """``path`` as a Path; UserInputError when it does not exist or is a directory."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserInputError(f"expected a {what}, got a directory: {p}")
    return p


def require_dir(path: PathLike, what: str = "directory") -> Path:
    """``path`` as a Path; UserInputError when it does not exist or is not a directory."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{what} not found: {p}")
    if not p.is_dir():
        raise UserInputError(f"expected a {what}, got a file: {p}")
    return p


def read_text(path: Path) -> str:
    """UTF-8 text of a user file (BOM tolerated); undecodable bytes become a UserInputError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise fail(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise fail(path, None, f"cannot read: {e.strerror or e}") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, stripped line)`` for every non-blank line of a text file."""
    for no, line in enumerate(read_text(path).splitlines(), start=1):
        s = line.strip()
        if s:
            yield no, s


def parse_float(text: str, path: PathLike, line: int | None, what: str) -> float:
    """``float(text)``, finite, or a UserInputError naming the file, line and field."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise fail(path, line, f"{what} is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise fail(path, line, f"{what} is not finite: {text!r}")
    return v


def fmt_num(v: float) -> str:
    """Shortest text that parses back to exactly ``v``; integral values without ``.0``."""
    v = float(v)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def label_token(label: str, path: PathLike, fmt: str) -> str:
    """A class name usable as one whitespace-separated token of a text label format."""
    s = str(label)
    if not s or any(c.isspace() for c in s):
        raise UserInputError(
            f"{path}: class name {s!r} cannot be written to {fmt}: it must be non-empty and "
            "contain no spaces (rename the class, e.g. with '-' or '_')"
        )
    return s


def find_image(stem: str, dirs: Iterable[Path]) -> Path | None:
    """The first existing ``dir/stem.<image ext>`` (extension case-insensitive), else None.

    ``stem`` may itself end in an image extension (``x.tif`` for a label file ``x.tif.txt``)."""
    dirs = [d for d in dirs if d.is_dir()]
    for d in dirs:
        if Path(stem).suffix.lower() in IMAGE_EXTS and (d / stem).is_file():
            return d / stem
        for ext in IMAGE_EXTS:
            for e in (ext, ext.upper()):
                p = d / f"{stem}{e}"
                if p.is_file():
                    return p
    return None


def image_size(path: PathLike) -> tuple[int, int] | None:
    """(width, height) in pixels from the image header (PIL, then rasterio); None if unreadable."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(p) as im:
            return int(im.width), int(im.height)
    except Exception:  # noqa: BLE001 - try the GDAL reader next (e.g. multiband uint16 GeoTIFF)
        pass
    try:
        import rasterio

        with rasterio.open(p) as ds:
            return int(ds.width), int(ds.height)
    except Exception:  # noqa: BLE001 - not an image we can read: size unknown
        return None


def empty_boxes(**extra) -> BoxSet:
    """A BoxSet with no boxes."""
    return BoxSet(np.zeros((0, 4, 2)), [], difficult=np.zeros(0, dtype=bool), extra=dict(extra))


def boxes_axis_aligned(corners: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """``[N]`` bool: box ``i`` of ``[N, 4, 2]`` corners has edges parallel to the image axes
    (each edge's smaller coordinate step at most ``tol`` times the box's largest step; ``tol=0``:
    exactly)."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    e = np.abs(np.roll(c, -1, axis=1) - c)  # [N, 4, 2] edge vectors
    scale = e.max(axis=(1, 2), initial=0.0)[:, None]  # [N, 1]
    return (np.minimum(e[..., 0], e[..., 1]) <= tol * scale).all(1)


def is_axis_aligned(corners: np.ndarray) -> bool:
    """True when every box of ``[N, 4, 2]`` corners has edges parallel to the image axes."""
    return bool(boxes_axis_aligned(corners).all())


def clip_to_image(
    corners: np.ndarray, size: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box corners ``[N, 4, 2]`` clipped coordinate-wise to the image ``[0, W] x [0, H]``.

    Returns ``(clipped, outside, keep)``: ``outside`` [N] marks boxes with a corner outside the
    image (their clipped corners differ), ``keep`` [N] those with area left after clipping (a box
    entirely outside the image, or of zero area, has none). Boxes inside are returned unchanged."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    hi = np.array([float(size[0]), float(size[1])])
    clipped = np.clip(c, 0.0, hi)
    outside = (clipped != c).any(axis=(1, 2))
    keep = polygon_area(clipped) > 0.0
    return clipped, outside, keep


def keep_boxes(boxes: BoxSet, corners: np.ndarray, keep: np.ndarray) -> BoxSet:
    """``boxes`` with new ``corners`` [N, 4, 2], reduced to the boxes where ``keep`` [N] (scores,
    difficult flags and per-box arrays of ``extra`` such as ``iscrowd`` follow)."""
    keep = np.asarray(keep, dtype=bool)
    n = len(boxes)
    extra = {
        k: (v[keep] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v)
        for k, v in boxes.extra.items()
    }
    return BoxSet(
        np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)[keep],
        [lab for lab, k in zip(boxes.labels, keep, strict=True) if k],
        scores=None if boxes.scores is None else np.asarray(boxes.scores)[keep],
        difficult=None if boxes.difficult is None else np.asarray(boxes.difficult)[keep],
        rotated=boxes.rotated,
        extra=extra,
    )


def warn_clipped(
    where_: PathLike,
    size: tuple[float, float],
    outside: np.ndarray,
    keep: np.ndarray,
    stacklevel: int = 3,
) -> None:
    """One warning for a file: how many boxes were clipped to the image and how many dropped for
    having no area inside it (nothing when every box is inside and kept)."""
    n_out, n_drop = int(np.sum(outside & keep)), int(np.sum(~np.asarray(keep, dtype=bool)))
    if not n_out and not n_drop:
        return
    parts = []
    if n_out:
        parts.append(
            f"{n_out} box{'es' if n_out > 1 else ''} partly outside the image "
            f"({fmt_num(size[0])}x{fmt_num(size[1])} px) clipped to it"
        )
    if n_drop:
        parts.append(
            f"{n_drop} box{'es' if n_drop > 1 else ''} with no area inside the image dropped"
        )
    warnings.warn(f"{where_}: " + "; ".join(parts), stacklevel=stacklevel)


def resolve_classes(
    labels: Iterable[str], classes: list[str] | None, path: PathLike, fmt: str
) -> tuple[list[str], dict[str, int]]:
    """Class list and name -> 0-based id for id-based formats (YOLO).

    With ``classes`` given every label must be in it. Without, labels that are all integers
    (``"0"``, ``"3"``) are used as ids; otherwise the sorted unique names become the class list.
    """
    labels = list(labels)
    if classes is not None:
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in labels if lab not in index})
        if unknown:
            raise UserInputError(
                f"{path}: labels {unknown[:5]} are not in the class list {list(classes)[:20]} "
                f"({fmt} stores class ids; add them to classes)"
            )
        return [str(c) for c in classes], index
    if labels and all(lab.isdigit() for lab in labels):
        n = max(int(lab) for lab in labels) + 1
        return [str(i) for i in range(n)], {lab: int(lab) for lab in set(labels)}
    names = sorted(set(labels))
    return names, {n: i for i, n in enumerate(names)}
