"""DOTA v1 ``labelTxt`` files: one ``.txt`` per image.

Optional header lines, then one rotated box per line (pixel coordinates, 4 corners in the
annotator's order, class name without spaces, difficult flag 0/1)::

    imagesource:GoogleEarth
    gsd:0.146343590398
    2753 2408 2861 2385 2888 2468 2805 2502 plane 0

Lines with 9 fields (no difficult flag, as in some test-set files) are read as not difficult.
``gsd:null`` is kept as ``gsd=None``. Corners are kept exactly as written (order and values), so
read -> write -> read is the identity -- unless the image size is known (``image_size=``, or the
image found by :func:`read_dota`): then corners outside the image are clipped to it
(coordinate-wise, to ``[0, width] x [0, height]``), boxes with no area left inside dropped, with
one warning per file giving the counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from earthgen.boxes import BoxSet
from earthgen.data._common import (
    DetectionItem,
    PathLike,
    clip_to_image,
    fail,
    find_image,
    fmt_num,
    image_size,
    keep_boxes,
    label_token,
    parse_float,
    require_dir,
    require_file,
    text_lines,
    warn_clipped,
)
from earthgen.errors import UserInputError
from earthgen.io import atomic_path

_HEADER_KEYS = ("imagesource", "gsd")
LABEL_DIR_NAMES: tuple[str, ...] = (
    "labelTxt",
    "annfiles",
    "labelTxt-v1.0",
    "labelTxt-v1.5",
    "labelTxt-v2.0",
)


def read_dota_file(path: PathLike, image_size: tuple[int, int] | None = None) -> BoxSet:
    """Boxes of one DOTA label file -> BoxSet (``corners`` [N, 4, 2] px, ``labels`` class names,
    ``difficult`` [N] bool; ``extra`` holds ``imagesource`` (str) and ``gsd`` (m/px or None)
    when the header has them).

    With ``image_size`` (width, height) boxes partly outside the image are clipped to it and
    boxes with no area inside it dropped, with one warning for the file (with the counts)."""
    path = require_file(path, "DOTA label file")
    corners: list[list[float]] = []
    labels: list[str] = []
    difficult: list[bool] = []
    extra: dict = {}
    for no, line in text_lines(path):
        parts = line.split()
        key, sep, value = line.partition(":")
        if sep and len(parts) < 9 and key.strip().lower() in _HEADER_KEYS:
            if corners:
                raise fail(path, no, f"header line {key.strip()!r} after the first box")
            key = key.strip().lower()
            value = value.strip()
            if key == "gsd":
                extra["gsd"] = (
                    None
                    if value.lower() in ("null", "none", "")
                    else parse_float(value, path, no, "gsd")
                )
            else:
                extra[key] = value
            continue
        if len(parts) not in (9, 10):
            raise fail(
                path, no, f"expected 10 fields (8 coordinates, class, difficult), got {len(parts)}"
            )
        xy = [parse_float(t, path, no, f"coordinate {i + 1}") for i, t in enumerate(parts[:8])]
        flag = 0
        if len(parts) == 10:
            try:
                flag = int(parts[9])
            except ValueError:
                raise fail(path, no, f"difficult flag must be 0 or 1, got {parts[9]!r}") from None
        corners.append(xy)
        labels.append(parts[8])
        difficult.append(bool(flag))
    boxes = BoxSet(
        np.array(corners, dtype=np.float64).reshape(-1, 4, 2),
        labels,
        difficult=np.array(difficult, dtype=bool),
        rotated=True,
        extra=extra,
    )
    if image_size is None or not len(boxes):
        return boxes
    size = (float(image_size[0]), float(image_size[1]))
    clipped, outside, keep = clip_to_image(boxes.corners, size)
    if not outside.any() and keep.all():
        return boxes
    warn_clipped(path, size, outside, keep, stacklevel=3)
    return keep_boxes(boxes, clipped, keep)


def format_dota(
    boxes: BoxSet,
    imagesource: str | None = None,
    gsd: float | None = None,
    where: PathLike = "<DOTA>",
) -> str:
    """DOTA text of ``boxes``. Header values default to ``boxes.extra`` (``gsd`` key present with
    None writes ``gsd:null``)."""
    lines: list[str] = []
    src = imagesource if imagesource is not None else boxes.extra.get("imagesource")
    if src is not None:
        lines.append(f"imagesource:{src}")
    if gsd is not None:
        lines.append(f"gsd:{fmt_num(gsd)}")
    elif "gsd" in boxes.extra:
        g = boxes.extra["gsd"]
        lines.append(f"gsd:{'null' if g is None else fmt_num(g)}")
    diff = (
        np.zeros(len(boxes), dtype=bool)
        if boxes.difficult is None
        else np.asarray(boxes.difficult, dtype=bool)
    )
    for c, lab, d in zip(boxes.corners.reshape(-1, 8), boxes.labels, diff, strict=True):
        coords = " ".join(fmt_num(v) for v in c)
        lines.append(f"{coords} {label_token(lab, where, 'DOTA')} {int(d)}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_dota_file(
    path: PathLike, boxes: BoxSet, imagesource: str | None = None, gsd: float | None = None
) -> Path:
    """Write ``boxes`` as a DOTA label file (atomically); see :func:`format_dota`."""
    text = format_dota(boxes, imagesource, gsd, where=path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def find_label_dir(root: Path) -> Path:
    """The directory holding DOTA ``.txt`` files: ``root/labelTxt`` (or another known name), or
    ``root`` itself."""
    for name in LABEL_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    return root


def read_dota(path: PathLike, image_dir: PathLike | None = None) -> list[DetectionItem]:
    """A DOTA dataset -> items sorted by label name.

    ``path``: the dataset root (with ``labelTxt/`` and ``images/``), the label directory itself,
    or one label file. Images are looked up by stem in ``image_dir``, ``<root>/images`` or beside
    the labels; ``size`` is read from the image header when it exists, and boxes outside that
    image are then clipped to it (one warning per file, see :func:`read_dota_file`)."""
    p = Path(path)
    if p.is_file():
        files = [p]
        roots = [p.parent, p.parent.parent / "images"]
    else:
        root = require_dir(p, "DOTA dataset directory")
        label_dir = find_label_dir(root)
        files = sorted(label_dir.glob("*.txt"))
        if not files:
            raise UserInputError(f"no DOTA label files (*.txt) in {label_dir}")
        roots = [root / "images", label_dir.parent / "images", label_dir]
    if image_dir is not None:
        roots.insert(0, require_dir(image_dir, "image directory"))
    items = []
    for f in files:
        img = find_image(f.stem, roots)
        size = image_size(img) if img is not None else None
        items.append(
            DetectionItem(
                img if img is not None else roots[0] / f"{f.stem}.png",
                size,
                read_dota_file(f, size),
            )
        )
    return items
