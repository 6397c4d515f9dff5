"""One entry point for detection datasets in any supported format.

``detect_format(path)`` guesses the format of a file or folder; ``read_detection_dataset`` reads
it to :class:`DetectionItem` (image path, (width, height) or None, BoxSet in pixels);
``write_detection_dataset`` writes items in any format, atomically, in the format's usual layout:

=========  ==========================================  ==========================================
format     read from                                   written as (under ``out``)
=========  ==========================================  ==========================================
dota       ``labelTxt/*.txt`` (+ ``images/``)          ``labelTxt/<stem>.txt``
yolo       ``labels/**.txt`` (+ ``images/**``)          ``labels/<stem>.txt`` + ``classes.txt``
yolo-obb   same, 9-field lines                         same, ``class x1 y1 ... x4 y4``
coco       a ``.json`` file (or the one in a folder)   ``annotations.json``
voc        ``Annotations/*.xml`` or ``*.xml``          ``Annotations/<stem>.xml``
csv        a ``.csv`` box table                        ``annotations.csv``
=========  ==========================================  ==========================================

With ``images="copy"`` or ``"symlink"`` the images go to ``out/images/`` too, so the written
folder reads back on its own (YOLO needs the images, or ``image_size=``, to denormalise).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from earthgen.data._common import (
    DetectionItem,
    PathLike,
    image_size,
    is_axis_aligned,
    read_text,
    require_file,
    resolve_classes,
)
from earthgen.data.coco import read_coco, to_coco
from earthgen.data.dota import LABEL_DIR_NAMES, format_dota, read_dota
from earthgen.data.voc import format_voc, read_box_csv, read_voc, write_box_csv
from earthgen.data.yolo import format_yolo, read_yolo, warn_lost_fields
from earthgen.errors import UserInputError
from earthgen.io import atomic_dir

FORMATS: tuple[str, ...] = ("dota", "yolo", "yolo-obb", "coco", "voc", "csv")
ImageMode = Literal["none", "copy", "symlink"]


def _sniff_txt(path: Path) -> str | None:
    """Format of one label ``.txt`` from its first box line, or None if it has none."""
    try:
        text = read_text(path)
    except UserInputError:
        return None
    for line in text.splitlines()[:50]:
        s = line.strip()
        if not s:
            continue
        if s.lower().startswith(("imagesource:", "gsd:")):
            return "dota"
        parts = s.split()
        numeric = []
        for t in parts:
            try:
                float(t)
                numeric.append(True)
            except ValueError:
                numeric.append(False)
        if len(parts) in (9, 10) and not numeric[8]:
            return "dota"
        if all(numeric):
            if len(parts) == 5:
                return "yolo"
            if len(parts) == 9:
                return "yolo-obb"
            if len(parts) >= 7 and len(parts) % 2:
                return "yolo"
        return None
    return None


def _sniff_dir(files: Sequence[Path]) -> str | None:
    for f in files[:50]:
        fmt = _sniff_txt(f)
        if fmt is not None:
            return fmt
    return None


def _coco_file(root: Path) -> Path:
    cands = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    cands = cands or sorted(root.glob("*.json"))
    if len(cands) != 1:
        raise UserInputError(
            f"{root}: {'no' if not cands else len(cands)} COCO JSON files "
            f"{[c.name for c in cands][:5] if cands else ''}; pass the file "
            "itself"
        )
    return cands[0]


def _csv_file(root: Path) -> Path:
    cands = sorted(root.glob("*.csv"))
    if len(cands) != 1:
        raise UserInputError(f"{root}: {len(cands)} CSV files; pass the file itself")
    return cands[0]


def detect_format(path: PathLike) -> str:
    """Guess the detection format of a file or dataset folder: one of :data:`FORMATS`.

    Files go by suffix (``.json`` coco, ``.xml`` voc, ``.csv`` csv) or, for ``.txt``, by their
    first box line; folders by their layout (``labelTxt/``, ``labels/``, ``Annotations/``,
    ``annotations/*.json``) or the files they hold."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"dataset not found: {p}")
    if p.is_file():
        suffix = p.suffix.lower()
        fixed = {".json": "coco", ".xml": "voc", ".csv": "csv"}
        if suffix in fixed:
            return fixed[suffix]
        if suffix == ".txt":
            fmt = _sniff_txt(p)
            if fmt:
                return fmt
            raise UserInputError(f"{p}: cannot tell DOTA from YOLO (no box line); pass format=")
        raise UserInputError(
            f"{p}: unknown label file type {suffix!r}; pass format= (one of {', '.join(FORMATS)})"
        )
    if any((p / n).is_dir() for n in LABEL_DIR_NAMES):
        return "dota"
    if (p / "Annotations").is_dir():
        return "voc"
    if (p / "labels").is_dir():
        fmt = _sniff_dir(sorted((p / "labels").rglob("*.txt")))
        if fmt:
            return fmt
    if (p / "annotations").is_dir() and any((p / "annotations").glob("*.json")):
        return "coco"
    for pattern, fmt in (("*.json", "coco"), ("*.xml", "voc"), ("*.csv", "csv")):
        if any(p.glob(pattern)):
            return fmt
    fmt = _sniff_dir(sorted(f for f in p.glob("*.txt") if f.name != "classes.txt"))
    if fmt:
        return fmt
    raise UserInputError(
        f"{p}: cannot tell the detection format (no labelTxt/, labels/, "
        f"Annotations/, .json, .xml, .csv or label .txt files); pass format= "
        f"(one of {', '.join(FORMATS)})"
    )


def _check_format(fmt: str) -> str:
    f = str(fmt).lower().replace("_", "-")
    if f not in FORMATS:
        raise UserInputError(f"unknown detection format {fmt!r}; supported: {', '.join(FORMATS)}")
    return f


def read_detection_dataset(
    path: PathLike,
    format: str | None = None,  # noqa: A002 - the natural name for callers
    classes: list[str] | None = None,
    image_size: tuple[int, int] | None = None,
    image_dir: PathLike | None = None,
) -> list[DetectionItem]:
    """Read a detection dataset -> list of ``(image path, (width, height) or None, BoxSet)``.

    ``format``: one of :data:`FORMATS` (guessed by :func:`detect_format` when None);
    ``classes``: id -> name for YOLO; ``image_size``: (width, height) for YOLO labels whose images
    are absent; ``image_dir``: where the images are, when not in the usual place."""
    fmt = _check_format(format) if format is not None else detect_format(path)
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"dataset not found: {p}")
    if fmt == "dota":
        return read_dota(p, image_dir)
    if fmt in ("yolo", "yolo-obb"):
        return read_yolo(p, image_size, classes)
    if fmt == "coco":
        return read_coco(p if p.is_file() else _coco_file(p), image_dir=image_dir)
    if fmt == "voc":
        return read_voc(p, image_dir)
    return read_box_csv(p if p.is_file() else _csv_file(p), image_dir)


def _size(it: DetectionItem) -> tuple[int, int]:
    if it.size is not None:
        return (int(it.size[0]), int(it.size[1]))
    s = image_size(it.image)
    if s is None:
        raise UserInputError(
            f"{it.image}: image size unknown and the image is not readable; "
            "YOLO stores normalised coordinates, so items need a size"
        )
    return s


def write_detection_dataset(
    items: Sequence[DetectionItem],
    out: PathLike,
    format: str,  # noqa: A002
    classes: list[str] | None = None,
    images: ImageMode = "none",
) -> Path:
    """Write ``items`` under the folder ``out`` in ``format`` (layout in the module docstring).

    Nothing appears in ``out`` unless every file was written (:func:`earthgen.io.atomic_dir`).
    ``classes`` fixes the class order (YOLO ids, COCO category ids 1..K; by default the order
    read from a YOLO or COCO source is kept); ``images``: ``"none"``
    (labels only; COCO/CSV refer to the images by path relative to ``out``), ``"copy"`` or
    ``"symlink"`` into ``out/images/``. Returns ``out``."""
    fmt = _check_format(format)
    if images not in ("none", "copy", "symlink"):
        raise UserInputError(f"images must be 'none', 'copy' or 'symlink', got {images!r}")
    items = [DetectionItem(Path(it[0]), it[1], it[2]) for it in items]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output must be a directory, got a file: {out}")
    stems: dict[str, Path] = {}
    for it in items:
        key = it.image.stem if fmt not in ("coco", "csv") or images != "none" else str(it.image)
        if key in stems and stems[key] != it.image:
            raise UserInputError(
                f"two images share the name {key!r} ({stems[key]} and "
                f"{it.image}); label files are named by image stem"
            )
        stems[key] = it.image
    if images != "none":
        for it in items:
            require_file(it.image, "image")
        names = [it.image.name for it in items]
    else:
        names = [
            Path(os.path.relpath(it.image.resolve(), out.resolve())).as_posix() for it in items
        ]
    if fmt in ("voc", "csv") and not all(is_axis_aligned(it.boxes.corners) for it in items):
        warnings.warn(
            f"{out}: rotated boxes written as their enclosing horizontal boxes "
            f"({fmt} has no rotated boxes; use dota, yolo-obb or coco)",
            stacklevel=2,
        )
    with atomic_dir(out) as tmp:
        if fmt == "dota":
            for it in items:
                _write(
                    tmp / "labelTxt" / f"{it.image.stem}.txt", format_dota(it.boxes, where=it.image)
                )
        elif fmt in ("yolo", "yolo-obb"):
            labels = [lab for it in items for lab in it.boxes.labels]
            known = [it.boxes.extra.get("classes") for it in items]
            if (
                classes is None
                and known
                and all(k and list(k) == list(known[0]) for k in known)
                and set(labels) <= set(known[0])
            ):
                classes = list(known[0])  # keep the ids of a YOLO source
            cls, index = resolve_classes(labels, classes, out, "YOLO")
            warn_lost_fields([it.boxes for it in items], out)
            for it in items:
                _write(
                    tmp / "labels" / f"{it.image.stem}.txt",
                    format_yolo(it.boxes, _size(it), index, obb=fmt == "yolo-obb", where=it.image),
                )
            _write(tmp / "classes.txt", "\n".join(cls) + "\n")
        elif fmt == "coco":
            import json

            data = to_coco(items, classes, names)
            _write(tmp / "annotations.json", json.dumps(data, indent=1) + "\n")
        elif fmt == "voc":
            for it in items:
                _write(tmp / "Annotations" / f"{it.image.stem}.xml", format_voc(it, it.image.name))
        else:
            write_box_csv(tmp / "annotations.csv", items, names)
        if images != "none":
            (tmp / "images").mkdir(exist_ok=True)
            for it in items:
                dest = tmp / "images" / it.image.name
                if images == "copy":
                    shutil.copy2(it.image, dest)
                else:
                    os.symlink(it.image.resolve(), dest)
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def convert_detection_dataset(
    src: PathLike,
    out: PathLike,
    format: str,  # noqa: A002
    src_format: str | None = None,
    classes: list[str] | None = None,
    images: ImageMode = "none",
) -> Path:
    """Read ``src`` (format guessed unless ``src_format``) and write it to ``out`` in ``format``."""
    items = read_detection_dataset(src, src_format, classes=classes)
    return write_detection_dataset(items, out, format, classes=classes, images=images)
