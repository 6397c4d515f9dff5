"""YOLO label files (Darknet / Ultralytics): one ``.txt`` per image, coordinates normalised by the
image width and height, class as a 0-based id.

- detection:  ``class cx cy w h``                 e.g. ``0 0.51 0.32 0.06 0.04``
- OBB:        ``class x1 y1 x2 y2 x3 y3 x4 y4``   e.g. ``3 0.10 0.20 0.30 0.20 0.30 0.25 0.10 0.25``
- segment:    ``class x1 y1 ... xk yk`` (k >= 3, k != 4) -> its minimum-area rotated rectangle

Written labels pass Ultralytics' label check (``verify_image_label``): every coordinate is clipped
to [0, 1] (a box partly outside the image is clipped to it, one with no area inside is dropped,
with one warning per file), widths and heights are > 0, class ids are integers >= 0 and repeated
rows are written once. YOLO has no field for DOTA's ``difficult`` flag or the GSD: both are lost
when writing (one warning per write says so); keep them with the dota or coco formats.

Class names come from ``classes=``, ``classes.txt`` / ``obj.names`` or ``data.yaml`` (``names:``);
without any, labels are the ids as strings (``"0"``). Layouts: Ultralytics ``images/<split>/x.jpg``
with ``labels/<split>/x.txt``, or Darknet ``x.jpg`` beside ``x.txt``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from earthgen.boxes import BoxSet, hbb_to_corners, polygon_to_corners
from earthgen.data._common import (
    DetectionItem,
    PathLike,
    clip_to_image,
    fail,
    find_image,
    fmt_num,
    is_axis_aligned,
    parse_float,
    read_text,
    require_dir,
    require_file,
    resolve_classes,
    text_lines,
    warn_clipped,
)
from earthgen.data._common import image_size as probe_size
from earthgen.errors import UserInputError
from earthgen.io import atomic_path

CLASS_FILES: tuple[str, ...] = ("classes.txt", "obj.names", "classes.names")
YAML_FILES: tuple[str, ...] = ("data.yaml", "dataset.yaml", "data.yml")


def _check_size(image_size: tuple[int, int], path: PathLike) -> tuple[float, float]:
    try:
        w, h = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserInputError(
            f"{path}: image_size must be (width, height), got {image_size!r}"
        ) from None
    if not (w > 0 and h > 0):
        raise UserInputError(f"{path}: image size must be positive, got {image_size!r}")
    return w, h


def read_yolo_file(
    path: PathLike, image_size: tuple[int, int], classes: list[str] | None = None
) -> BoxSet:
    """One YOLO / YOLO-OBB label file -> BoxSet in pixels (``corners`` [N, 4, 2]).

    ``image_size`` is (width, height) in pixels; ``classes`` maps ids to names (else labels are
    the id strings; kept in ``extra["classes"]``). ``rotated`` is False when every line is a
    ``cx cy w h`` box."""
    path = require_file(path, "YOLO label file")
    w, h = _check_size(image_size, path)
    scale = np.array([w, h])
    corners: list[np.ndarray] = []
    labels: list[str] = []
    rotated = False
    for no, line in text_lines(path):
        parts = line.split()
        n = len(parts)
        if n != 5 and (n < 7 or n % 2 == 0):
            raise fail(
                path,
                no,
                f"expected 5 fields (class cx cy w h) or 9 (class x1 y1 ... x4 y4, OBB), got {n}",
            )
        try:
            cid = float(parts[0])
        except ValueError:
            raise fail(path, no, f"class must be an integer id, got {parts[0]!r}") from None
        if not cid.is_integer() or cid < 0:
            raise fail(path, no, f"class must be an integer id >= 0, got {parts[0]!r}")
        cid_i = int(cid)
        if classes is not None and cid_i >= len(classes):
            raise fail(path, no, f"class id {cid_i} outside the class list (0..{len(classes) - 1})")
        vals = np.array(
            [parse_float(t, path, no, f"field {i + 2}") for i, t in enumerate(parts[1:])]
        )
        if vals.min() < -1.0 or vals.max() > 2.0:
            raise fail(
                path,
                no,
                f"coordinates must be normalised to [0, 1] by the image size, got "
                f"{fmt_num(vals.max() if vals.max() > 2 else vals.min())} "
                "(pixel coordinates?)",
            )
        if n == 5:
            cx, cy, bw, bh = vals
            if bw < 0 or bh < 0:
                raise fail(path, no, f"negative box width/height ({fmt_num(bw)}, {fmt_num(bh)})")
            c = hbb_to_corners(np.array([[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]]))[0]
        elif n == 9:
            c = vals.reshape(4, 2)
            rotated = True
        else:
            import shapely

            c = polygon_to_corners(shapely.Polygon(vals.reshape(-1, 2)))
            rotated = True
        corners.append(c * scale)
        labels.append(classes[cid_i] if classes is not None else str(cid_i))
    arr = np.array(corners, dtype=np.float64).reshape(-1, 4, 2)
    extra = {"classes": list(classes)} if classes is not None else {}
    return BoxSet(
        arr, labels, difficult=np.zeros(len(labels), dtype=bool), rotated=rotated, extra=extra
    )


def format_yolo(
    boxes: BoxSet,
    image_size: tuple[int, int],
    class_ids: dict[str, int],
    obb: bool = False,
    where: PathLike = "<YOLO>",
) -> str:
    """YOLO text of ``boxes`` (pixel corners) for an image of (width, height) px; ``class_ids``
    maps label -> id. ``obb=False`` writes enclosing ``cx cy w h`` boxes (warns if rotated).

    Coordinates are clipped to the image, so every value is in [0, 1]; boxes with no area inside
    the image are dropped and repeated rows written once (one warning per file for each)."""
    w, h = _check_size(image_size, where)
    if not obb and not is_axis_aligned(boxes.corners):
        warnings.warn(
            f"{where}: rotated boxes written as their enclosing horizontal boxes "
            "(use the yolo-obb format to keep them)",
            stacklevel=3,
        )
    corners = boxes.corners
    if not obb:  # clip the enclosing box (clipping the corners of a turned box would shrink it)
        corners = hbb_to_corners(boxes.hbb) if len(boxes) else corners
    clipped, outside, keep = clip_to_image(corners, (w, h))
    warn_clipped(where, (w, h), outside, keep, stacklevel=4)
    scale = np.array([w, h])
    lines: list[str] = []
    for c, lab, k in zip(clipped, boxes.labels, keep, strict=True):
        if not k:
            continue
        cid = class_ids[lab]
        if not (isinstance(cid, int | np.integer) and cid >= 0):
            raise UserInputError(f"{where}: YOLO class ids must be integers >= 0, got {cid!r}")
        n = np.clip(c / scale, 0.0, 1.0)  # x / w <= 1 for x <= w; the clip only guards rounding
        if obb:
            lines.append(f"{int(cid)} " + " ".join(fmt_num(v) for v in n.reshape(-1)))
        else:
            x0, y0 = n.min(axis=0)
            x1, y1 = n.max(axis=0)
            vals = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
            if vals[2] <= 0 or vals[3] <= 0:  # under float resolution: no area left
                continue
            lines.append(f"{int(cid)} " + " ".join(fmt_num(v) for v in vals))
    unique = list(dict.fromkeys(lines))
    if len(unique) < len(lines):
        d = len(lines) - len(unique)
        warnings.warn(
            f"{where}: {d} repeated box{'es' if d > 1 else ''} written once "
            "(Ultralytics drops duplicate label rows)",
            stacklevel=3,
        )
    return "\n".join(unique) + ("\n" if unique else "")


def warn_lost_fields(boxsets: list[BoxSet], where: PathLike = "<YOLO>") -> None:
    """One warning when ``boxsets`` hold what YOLO has no field for (``difficult`` flags set, a
    GSD in ``extra``): it is not written."""
    n_diff = sum(int(np.sum(b.difficult)) for b in boxsets if b.difficult is not None)
    n_gsd = sum(1 for b in boxsets if b.extra.get("gsd") is not None)
    lost = []
    if n_diff:
        lost.append(f"{n_diff} difficult flag{'s' if n_diff > 1 else ''}")
    if n_gsd:
        lost.append(f"the GSD of {n_gsd} image{'s' if n_gsd > 1 else ''}")
    if lost:
        warnings.warn(
            f"{where}: YOLO has no field for {' or '.join(lost)}; not written "
            "(use the dota or coco format to keep them)",
            stacklevel=3,
        )


def write_yolo_file(
    path: PathLike,
    boxes: BoxSet,
    image_size: tuple[int, int],
    classes: list[str] | None = None,
    obb: bool = False,
) -> list[str]:
    """Write ``boxes`` as a YOLO (``obb=False``) or YOLO-OBB label file (atomically).

    Returns the class list used (id = index): ``classes`` if given, else ``boxes.extra["classes"]``
    (from a YOLO read), else ids from integer labels or the sorted label names."""
    if classes is None and set(boxes.labels) <= set(boxes.extra.get("classes") or ()):
        classes = list(boxes.extra["classes"])
    names, index = resolve_classes(boxes.labels, classes, path, "YOLO")
    warn_lost_fields([boxes], path)
    text = format_yolo(boxes, image_size, index, obb=obb, where=path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return names


def read_class_names(root: Path) -> list[str] | None:
    """Class names of a YOLO dataset: ``classes.txt``/``obj.names`` (one per line) or
    ``data.yaml`` ``names`` (list or {id: name}); None when there is none."""
    for d in (root, root / "labels", root.parent):
        for name in CLASS_FILES:
            f = d / name
            if f.is_file():
                return [s.strip() for s in read_text(f).splitlines() if s.strip()]
        for name in YAML_FILES:
            f = d / name
            if f.is_file():
                return _yaml_names(f)
    return None


def _yaml_names(path: Path) -> list[str] | None:
    import yaml

    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise fail(path, None if line is None else line + 1, f"invalid YAML: {e}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise fail(path, None, "'names' keys must be integer class ids") from None
        if ids != list(range(len(ids))):
            raise fail(path, None, f"'names' ids must be 0..{len(ids) - 1}, got {ids}")
        return [str(names[k]) if k in names else str(names[str(k)]) for k in ids]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise fail(path, None, f"'names' must be a list or a mapping, got {type(names).__name__}")


def _label_files(root: Path) -> list[Path]:
    base = root / "labels" if (root / "labels").is_dir() else root
    return sorted(
        f for f in base.rglob("*.txt") if f.name not in CLASS_FILES and not f.name.startswith(".")
    )


def _image_dirs(label: Path, root: Path) -> list[Path]:
    """Where the image of a label file may be: the ``labels`` -> ``images`` mirror, then beside."""
    out = []
    parts = label.parent.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "labels":
            out.append(Path(*parts[:i], "images", *parts[i + 1 :]))
            break
    out += [label.parent, root / "images", root]
    return out


def read_yolo(
    path: PathLike, image_size: tuple[int, int] | None = None, classes: list[str] | None = None
) -> list[DetectionItem]:
    """A YOLO dataset (directory or one label file) -> items sorted by label path.

    The image of ``labels/<split>/x.txt`` is ``images/<split>/x.*`` (or beside the label); its
    header gives the size used to denormalise, unless ``image_size`` (width, height) is given."""
    p = Path(path)
    if p.is_file():
        root, files = p.parent, [p]
    else:
        root = require_dir(p, "YOLO dataset directory")
        files = _label_files(root)
        if not files:
            raise UserInputError(f"no YOLO label files (*.txt) in {root}")
    if classes is None:
        classes = read_class_names(root)
    items = []
    for f in files:
        dirs = _image_dirs(f, root)
        img = find_image(f.stem, dirs)
        if image_size is not None:
            size: tuple[int, int] | None = (int(image_size[0]), int(image_size[1]))
        else:
            size = probe_size(img) if img is not None else None
        if size is None:
            looked = ", ".join(str(d) for d in dirs[:2])
            raise UserInputError(
                f"{f}: YOLO coordinates are normalised, but the image {f.stem}.* was not found "
                f"(looked in {looked}); pass image_size=(width, height)"
            )
        items.append(
            DetectionItem(
                img if img is not None else dirs[0] / f"{f.stem}.png",
                size,
                read_yolo_file(f, size, classes),
            )
        )
    return items
