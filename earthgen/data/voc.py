"""Pascal VOC XML (one file per image; LabelImg, DeepForest/NEON) and box CSV tables.

VOC::

    <annotation><filename>OSBS_029.tif</filename>
      <size><width>400</width><height>400</height><depth>3</depth></size>
      <object><name>Tree</name><difficult>0</difficult>
        <bndbox><xmin>203</xmin><ymin>67</ymin><xmax>227</xmax><ymax>90</ymax></bndbox>
      </object></annotation>

Coordinates are read as written (pixels; no 1-based shift: a file's ``xmin=1`` reads as x = 1).
Written boxes follow the VOC convention every trainer accepts: integers inside the image,
``1 <= xmin <= xmax <= width`` and ``1 <= ymin <= ymax <= height`` (1-based inclusive pixels).
Boxes are rounded outward (floor of the minimum, ceiling of the maximum) and clipped to that
range, so an integer box inside it -- any VOC file read here -- is written back unchanged; a box
partly outside the image is clipped (one warning per file), one with no area inside it dropped.
Box CSV (DeepForest / NEON): a header
naming the columns in any order, e.g. ``image_path,xmin,ymin,xmax,ymax,label`` or NEON's
``image_path,xmin,xmax,ymin,ymax,label``; a row with all four coordinates 0 marks an image
without boxes (DeepForest's convention).
"""

from __future__ import annotations

import csv
import io
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from earthgen.boxes import BoxSet, corners_to_hbb, hbb_to_corners
from earthgen.data._common import (
    DetectionItem,
    PathLike,
    fail,
    find_image,
    fmt_num,
    image_size,
    is_axis_aligned,
    parse_float,
    read_text,
    require_dir,
    require_file,
    warn_clipped,
)
from earthgen.errors import UserInputError
from earthgen.io import atomic_path

IMAGE_COLUMNS: tuple[str, ...] = (
    "image_path",
    "image",
    "filename",
    "file_name",
    "image_name",
    "img",
    "path",
)
LABEL_COLUMNS: tuple[str, ...] = ("label", "class", "name", "category", "class_name")
BOX_COLUMNS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")


def _voc_image(root: ET.Element, xml_path: Path, image_dir: Path | None) -> Path:
    name = (root.findtext("filename") or "").strip()
    dirs = ([image_dir] if image_dir else []) + [
        xml_path.parent,
        xml_path.parent.parent / "JPEGImages",
        xml_path.parent.parent / "images",
        xml_path.parent / "images",
    ]
    if name:
        for d in dirs:
            if (d / name).is_file():
                return d / name
    found = find_image(Path(name).stem if name else xml_path.stem, dirs)
    if found is not None:
        return found
    given = (root.findtext("path") or "").strip()
    if given and Path(given).is_file():
        return Path(given)
    return xml_path.parent / (name or f"{xml_path.stem}.png")


def read_voc_file(path: PathLike, image_dir: PathLike | None = None) -> DetectionItem:
    """One Pascal VOC XML file -> item (image path, (width, height) from ``<size>`` or the image
    header, BoxSet of axis-aligned corners [N, 4, 2] px with ``difficult`` flags)."""
    path = require_file(path, "Pascal VOC XML file")
    try:
        root = ET.fromstring(read_text(path))
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        raise fail(path, line, f"invalid XML: {e}") from None
    if root.tag != "annotation":
        raise fail(
            path,
            None,
            f"not a Pascal VOC file: root element is <{root.tag}>, expected <annotation>",
        )
    corners, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        at = f"object {k}" + (f" ({name!r})" if name else "")
        if not name:
            raise fail(path, None, f"{at}: missing <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise fail(path, None, f"{at}: missing <bndbox>")
        vals = []
        for tag in BOX_COLUMNS:
            text = bb.findtext(tag)
            if text is None:
                raise fail(path, None, f"{at}: missing <bndbox>/<{tag}>")
            vals.append(parse_float(text.strip(), path, None, f"{at} <{tag}>"))
        x0, y0, x1, y1 = vals
        if x1 < x0 or y1 < y0:
            raise fail(path, None, f"{at}: xmax/ymax smaller than xmin/ymin ({vals})")
        corners.append(hbb_to_corners(np.array([vals]))[0])
        labels.append(name)
        d = (obj.findtext("difficult") or "0").strip()
        difficult.append(d not in ("0", "", "false", "False"))
    size = None
    sz = root.find("size")
    if sz is not None:
        try:
            w, h = int(float(sz.findtext("width") or 0)), int(float(sz.findtext("height") or 0))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            raise fail(path, None, "<size> width/height are not numbers") from None
    img = _voc_image(root, path, Path(image_dir) if image_dir else None)
    if size is None:
        size = image_size(img)
    boxes = BoxSet(
        np.array(corners, dtype=np.float64).reshape(-1, 4, 2),
        labels,
        difficult=np.array(difficult, dtype=bool),
        rotated=False,
    )
    return DetectionItem(img, size, boxes)


def voc_boxes(
    hbb: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enclosing boxes ``[N, 4]`` (xmin, ymin, xmax, ymax px) -> VOC integer boxes ``[N, 4]``
    (rounded outward, clipped to ``1..width`` / ``1..height``; only ``>= 1`` when ``size`` is
    None), ``outside`` [N] (changed by the clipping) and ``keep`` [N] (some area inside the
    image: boxes entirely outside it, or of zero area, are not written)."""
    b = np.asarray(hbb, dtype=np.float64).reshape(-1, 4)
    hi = (
        np.array([size[0], size[1], size[0], size[1]], dtype=np.float64)
        if size is not None
        else np.full(4, np.inf)
    )
    inner = np.clip(b, 0.0, hi)  # the part inside the image, continuous coordinates
    keep = (inner[:, 2] > inner[:, 0]) & (inner[:, 3] > inner[:, 1])
    out = np.concatenate([np.floor(b[:, :2]), np.ceil(b[:, 2:])], axis=1)
    clipped = np.clip(out, 1.0, np.maximum(hi, 1.0))
    outside = (clipped != out).any(axis=1)
    return clipped, outside, keep


def format_voc(item: DetectionItem, filename: str | None = None) -> str:
    """Pascal VOC XML text of ``item`` (enclosing horizontal boxes of its corners, as integers
    inside the image; see :func:`voc_boxes` and the module docstring)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename or Path(item.image).name
    if item.size is not None:
        sz = ET.SubElement(root, "size")
        ET.SubElement(sz, "width").text = str(int(item.size[0]))
        ET.SubElement(sz, "height").text = str(int(item.size[1]))
        ET.SubElement(sz, "depth").text = "3"
    b = item.boxes
    diff = np.zeros(len(b), bool) if b.difficult is None else np.asarray(b.difficult, bool)
    boxes, outside, keep = voc_boxes(corners_to_hbb(b.corners), item.size)
    if item.size is not None:
        warn_clipped(filename or Path(item.image).name, item.size, outside, keep, stacklevel=4)
    for hbb, lab, d, k in zip(boxes, b.labels, diff, keep, strict=True):
        if not k:
            continue
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = lab
        ET.SubElement(obj, "difficult").text = str(int(d))
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(BOX_COLUMNS, hbb, strict=True):
            ET.SubElement(bb, tag).text = fmt_num(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc_file(path: PathLike, item: DetectionItem, filename: str | None = None) -> Path:
    """Write ``item`` as a Pascal VOC XML file (atomically; rotated boxes -> enclosing boxes)."""
    if not is_axis_aligned(item.boxes.corners):
        warnings.warn(
            f"{path}: rotated boxes written as their enclosing horizontal boxes", stacklevel=2
        )
    text = format_voc(item, filename)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_voc(path: PathLike, image_dir: PathLike | None = None) -> list[DetectionItem]:
    """A VOC dataset (``Annotations/*.xml`` under ``path``, a folder of XML files, or one file)
    -> items sorted by XML name."""
    p = Path(path)
    if p.is_file():
        return [read_voc_file(p, image_dir)]
    root = require_dir(p, "Pascal VOC directory")
    ann = root / "Annotations" if (root / "Annotations").is_dir() else root
    files = sorted(ann.glob("*.xml"))
    if not files:
        raise UserInputError(f"no Pascal VOC files (*.xml) in {ann}")
    return [read_voc_file(f, image_dir) for f in files]


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def read_box_csv(
    path: PathLike, image_dir: PathLike | None = None, default_label: str = "object"
) -> list[DetectionItem]:
    """A box table (one row per box) -> items grouped by image, in order of first appearance.

    Needs columns ``xmin``, ``ymin``, ``xmax``, ``ymax`` (pixels, any order) and an image column
    (``image_path``/``image``/``filename``...); ``label`` is optional (``default_label``).
    Image paths are resolved against ``image_dir`` or the CSV's folder (or its ``images/``)."""
    path = require_file(path, "box CSV file")
    rows = csv.reader(io.StringIO(read_text(path)))
    try:
        header = next(rows)
    except StopIteration:
        raise fail(
            path, None, "empty CSV (expected a header like image_path,xmin,ymin,xmax,ymax,label)"
        ) from None
    cols = [_column(header, (c,)) for c in BOX_COLUMNS]
    img_col = _column(header, IMAGE_COLUMNS)
    lab_col = _column(header, LABEL_COLUMNS)
    missing = [c for c, i in zip(BOX_COLUMNS, cols, strict=True) if i is None]
    if missing or img_col is None:
        need = missing + ([] if img_col is not None else ["image_path"])
        raise fail(path, 1, f"missing column(s) {need}; header is {header}")
    base = Path(image_dir) if image_dir is not None else path.parent
    groups: dict[str, tuple[list, list]] = {}
    for row in rows:
        no = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise fail(path, no, f"expected {len(header)} fields like the header, got {len(row)}")
        name = row[img_col].strip()
        if not name:
            raise fail(path, no, "empty image name")
        vals = [parse_float(row[i], path, no, BOX_COLUMNS[k]) for k, i in enumerate(cols)]
        box_list, lab_list = groups.setdefault(name, ([], []))
        if not any(vals):
            continue  # 0,0,0,0: an image without boxes
        x0, y0, x1, y1 = vals
        if x1 < x0 or y1 < y0:
            raise fail(
                path,
                no,
                f"xmax/ymax smaller than xmin/ymin "
                f"(xmin={fmt_num(x0)}, ymin={fmt_num(y0)}, xmax={fmt_num(x1)}, "
                f"ymax={fmt_num(y1)})",
            )
        box_list.append(vals)
        lab_list.append(row[lab_col].strip() if lab_col is not None else default_label)
    items = []
    for name, (box_list, lab_list) in groups.items():
        img = Path(name) if Path(name).is_absolute() else base / name
        if not img.exists() and (base / "images" / name).is_file():
            img = base / "images" / name
        corners = hbb_to_corners(np.array(box_list, dtype=np.float64).reshape(-1, 4))
        boxes = BoxSet(corners, lab_list, difficult=np.zeros(len(lab_list), bool), rotated=False)
        items.append(DetectionItem(img, image_size(img), boxes))
    return items


def write_box_csv(
    path: PathLike, items: list[DetectionItem], image_names: list[str] | None = None
) -> Path:
    """Write ``items`` as ``image_path,xmin,ymin,xmax,ymax,label`` rows (atomically); an image
    without boxes gets one ``0,0,0,0`` row so it is not lost."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_path", *BOX_COLUMNS, "label"])
    for k, it in enumerate(items):
        name = image_names[k] if image_names else Path(it.image).name
        if not len(it.boxes):
            w.writerow([name, 0, 0, 0, 0, ""])
        for hbb, lab in zip(corners_to_hbb(it.boxes.corners), it.boxes.labels, strict=True):
            w.writerow([name, *(fmt_num(v) for v in hbb), lab])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)
