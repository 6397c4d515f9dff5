"""COCO detection JSON: ``images``, ``annotations`` (``bbox`` = [x, y, w, h] pixels, top-left
origin), ``categories``::

    {"images": [{"id": 1, "file_name": "a.png", "width": 800, "height": 600}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40],
                      "segmentation": [[10, 20, 40, 20, 40, 60, 10, 60]], "area": 1200,
                      "iscrowd": 0}],
     "categories": [{"id": 2, "name": "car"}]}

Rotated boxes: with ``segmentation="auto"`` (default) a single 4-point polygon is taken verbatim
as the box's corners (how DOTA-style COCO files store oriented boxes, and how this writer keeps
corner order); ``"obb"`` turns any polygon into its minimum-area rotated rectangle; ``"ignore"``
uses ``bbox`` only. The writer stores ``bbox`` (enclosing box) and the 4 corners as polygon.

Beyond the COCO fields (which allow extra keys), the writer keeps DOTA's ``difficult`` flag as
an annotation key (``"difficult": 0/1``, read back into ``BoxSet.difficult``) and the image
header of DOTA files as image keys (``"gsd"``: metres per pixel or null, ``"imagesource"``), read
back into ``BoxSet.extra``; COCO tools ignore keys they do not know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from earthgen.boxes import BoxSet, corners_to_hbb, hbb_to_corners, polygon_area, polygon_to_corners
from earthgen.data._common import (
    DetectionItem,
    PathLike,
    fail,
    is_axis_aligned,
    read_text,
    require_file,
)
from earthgen.errors import UserInputError
from earthgen.io import atomic_path

Segmentation = Literal["auto", "obb", "ignore"]
IMAGE_KEYS: tuple[str, ...] = ("gsd", "imagesource")  # BoxSet.extra keys kept per image


def _num_list(v: Any, n: int | None) -> list[float] | None:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float) or not np.isfinite(x):
            return None
        out.append(float(x))
    return out


def _resolve_image(name: str, json_dir: Path, image_dir: Path | None) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    candidates = ([image_dir / name] if image_dir else []) + [
        json_dir / name,
        json_dir / "images" / name,
        json_dir.parent / "images" / name,
        json_dir.parent / name,
    ]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def _polygon_corners(seg: Any, mode: Segmentation) -> np.ndarray | None:
    """Corners [4, 2] from a COCO segmentation, or None to fall back on bbox."""
    if mode == "ignore" or not isinstance(seg, list) or not seg:
        return None  # absent, or RLE (dict): use bbox
    polys = [_num_list(p, None) for p in seg]
    if any(p is None or len(p) < 6 or len(p) % 2 for p in polys):
        return None
    if mode == "auto":
        if len(polys) == 1 and len(polys[0]) == 8:
            return np.array(polys[0]).reshape(4, 2)
        return None
    import shapely

    geoms = [shapely.Polygon(np.array(p).reshape(-1, 2)) for p in polys]
    return polygon_to_corners(shapely.MultiPolygon(geoms) if len(geoms) > 1 else geoms[0])


def read_coco(
    path: PathLike, segmentation: Segmentation = "auto", image_dir: PathLike | None = None
) -> list[DetectionItem]:
    """A COCO JSON file -> one item per entry of ``images`` (in file order, images without
    annotations included, with empty BoxSets).

    Labels are category names; ``extra`` keeps ``coco_image_id``, ``coco_categories``
    ({name: id}), ``iscrowd`` ([N] bool) and the image keys ``gsd`` / ``imagesource`` when
    present; ``difficult`` comes from the annotations' ``difficult`` key (0 when absent);
    ``scores`` come from ``score`` when present (detection results). Image paths are resolved
    against ``image_dir``, the JSON's folder, its ``images/`` and ``../images/``."""
    path = require_file(path, "COCO JSON file")
    if segmentation not in ("auto", "obb", "ignore"):
        raise UserInputError(
            f"segmentation must be 'auto', 'obb' or 'ignore', got {segmentation!r}"
        )
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise fail(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise fail(
            path,
            None,
            "not a COCO file: expected an object with an 'images' list "
            "(and 'annotations', 'categories')",
        )
    anns = data.get("annotations", [])
    cats = data.get("categories", [])
    if not isinstance(anns, list) or not isinstance(cats, list):
        raise fail(path, None, "'annotations' and 'categories' must be lists")
    cat_name: dict[Any, str] = {}
    name_id: dict[str, Any] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise fail(path, None, f"categories[{i}]: needs 'id' and 'name', got {c!r}")
        name = str(c["name"])
        if name in name_id and name_id[name] != c["id"]:
            raise fail(
                path,
                None,
                f"categories[{i}]: name {name!r} used by ids {name_id[name]} "
                f"and {c['id']}; class names must be unique",
            )
        if c["id"] in cat_name:
            raise fail(path, None, f"categories[{i}]: duplicate category id {c['id']}")
        cat_name[c["id"]] = name
        name_id[name] = c["id"]
    json_dir = path.parent
    idir = Path(image_dir) if image_dir is not None else None
    images: dict[Any, dict] = {}
    per_image: dict[Any, list[tuple[np.ndarray, str, float | None, bool, bool]]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise fail(path, None, f"images[{i}]: needs 'id' and 'file_name', got {im!r}"[:300])
        if im["id"] in images:
            raise fail(path, None, f"images[{i}]: duplicate image id {im['id']}")
        images[im["id"]] = im
        per_image[im["id"]] = []
    for i, a in enumerate(anns):
        at = f"annotations[{i}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a else "")
        if not isinstance(a, dict):
            raise fail(path, None, f"{at}: expected an object, got {a!r}"[:300])
        if a.get("image_id") not in images:
            raise fail(path, None, f"{at}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cat_name:
            raise fail(
                path, None, f"{at}: category_id {a.get('category_id')!r} is not in 'categories'"
            )
        corners = _polygon_corners(a.get("segmentation"), segmentation)
        if corners is None:
            bb = _num_list(a.get("bbox"), 4)
            if bb is None:
                raise fail(
                    path, None, f"{at}: bbox must be 4 numbers [x, y, w, h], got {a.get('bbox')!r}"
                )
            if bb[2] < 0 or bb[3] < 0:
                raise fail(path, None, f"{at}: bbox width/height must be >= 0, got {bb}")
            x, y, w, h = bb
            corners = hbb_to_corners(np.array([[x, y, x + w, y + h]]))[0]
        score = a.get("score")
        per_image[a["image_id"]].append(
            (
                corners,
                cat_name[a["category_id"]],
                None if score is None else float(score),
                bool(a.get("iscrowd", 0)),
                bool(a.get("difficult", 0)),
            )
        )
    items = []
    for iid, im in images.items():
        rows = per_image[iid]
        corners = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4, 2)
        scores = (
            np.array([np.nan if r[2] is None else r[2] for r in rows])
            if any(r[2] is not None for r in rows)
            else None
        )
        extra: dict[str, Any] = {
            "coco_image_id": iid,
            "coco_categories": dict(name_id),
            "iscrowd": np.array([r[3] for r in rows], dtype=bool),
        }
        for key in IMAGE_KEYS:
            if key in im:
                extra[key] = _image_key(im[key], key, path, iid)
        boxes = BoxSet(
            corners,
            [r[1] for r in rows],
            scores=scores,
            difficult=np.array([r[4] for r in rows], dtype=bool),
            rotated=not is_axis_aligned(corners),
            extra=extra,
        )
        w, h = im.get("width"), im.get("height")
        size = (
            (int(w), int(h))
            if isinstance(w, int | float) and isinstance(h, int | float) and w > 0 and h > 0
            else None
        )
        items.append(
            DetectionItem(_resolve_image(str(im["file_name"]), json_dir, idir), size, boxes)
        )
    return items


def _image_key(value: Any, key: str, path: Path, iid: Any) -> Any:
    """An image-level extra key read back: ``gsd`` a number (m/px) or None, others as text."""
    if key != "gsd":
        return None if value is None else str(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise fail(path, None, f"image {iid}: 'gsd' must be a number (m/px) or null, got {value!r}")
    return float(value)


def _category_ids(items: list[DetectionItem], classes: list[str] | None) -> dict[str, int]:
    labels = {lab for it in items for lab in it.boxes.labels}
    if classes is not None:
        missing = sorted(labels - {str(c) for c in classes})
        if missing:
            raise UserInputError(f"labels {missing[:5]} are not in the class list {classes[:20]}")
        return {str(c): i + 1 for i, c in enumerate(classes)}
    known = [it.boxes.extra.get("coco_categories") for it in items]
    if (
        known
        and all(isinstance(k, dict) and k == known[0] for k in known)
        and labels <= set(known[0])
    ):
        return {str(k): int(v) for k, v in known[0].items()}
    return {name: i + 1 for i, name in enumerate(sorted(labels))}


def to_coco(
    items: list[DetectionItem],
    classes: list[str] | None = None,
    file_names: list[str] | None = None,
) -> dict:
    """COCO dict of ``items``. Category ids: 1.. in ``classes`` order, else the ids read from a
    COCO file, else 1.. over sorted names. ``file_names`` default to the image file names."""
    cat_ids = _category_ids(items, classes)
    images, anns = [], []
    used_ids = [it.boxes.extra.get("coco_image_id") for it in items]
    keep_ids = all(isinstance(i, int) for i in used_ids) and len(set(used_ids)) == len(used_ids)
    aid = 1
    for k, it in enumerate(items):
        iid = used_ids[k] if keep_ids else k + 1
        rec: dict[str, Any] = {
            "id": iid,
            "file_name": file_names[k] if file_names else Path(it.image).name,
        }
        if it.size is not None:
            rec["width"], rec["height"] = int(it.size[0]), int(it.size[1])
        b = it.boxes
        for key in IMAGE_KEYS:
            if key in b.extra:
                v = b.extra[key]
                rec[key] = None if v is None else (float(v) if key == "gsd" else str(v))
        images.append(rec)
        crowd = b.extra.get("iscrowd")
        diff = (
            np.zeros(len(b), bool) if b.difficult is None else np.asarray(b.difficult, dtype=bool)
        )
        hbb = corners_to_hbb(b.corners)
        areas = polygon_area(b.corners)
        for j in range(len(b)):
            x0, y0, x1, y1 = (float(v) for v in hbb[j])
            ann: dict[str, Any] = {
                "id": aid,
                "image_id": iid,
                "category_id": cat_ids[b.labels[j]],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": [[float(v) for v in b.corners[j].reshape(-1)]],
                "area": float(areas[j]),
                "iscrowd": int(bool(crowd[j])) if crowd is not None and len(crowd) == len(b) else 0,
                "difficult": int(diff[j]),
            }
            if b.scores is not None and np.isfinite(b.scores[j]):
                ann["score"] = float(b.scores[j])
            anns.append(ann)
            aid += 1
    cats = [
        {"id": i, "name": n, "supercategory": "none"}
        for n, i in sorted(cat_ids.items(), key=lambda kv: kv[1])
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(
    path: PathLike,
    items: list[DetectionItem],
    classes: list[str] | None = None,
    file_names: list[str] | None = None,
) -> Path:
    """Write ``items`` as one COCO JSON file (atomically); ``file_names`` default to paths
    relative to the JSON's folder when the image is under it, else the file names."""
    path = Path(path)
    if file_names is None:
        file_names = []
        base = path.parent.resolve()
        for it in items:
            img = Path(it.image)
            try:
                file_names.append(img.resolve().relative_to(base).as_posix())
            except ValueError:
                file_names.append(img.name)
    data = to_coco(items, classes, file_names)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def relative_names(items: list[DetectionItem], base: PathLike) -> list[str]:
    """Image paths relative to ``base`` (``os.path.relpath``, POSIX separators)."""
    return [
        Path(os.path.relpath(Path(it.image).resolve(), Path(base).resolve())).as_posix()
        for it in items
    ]
