"""Image-caption datasets -> :class:`CaptionRecord` lists.

Supported sources (``read_captions`` picks by path):

- folder of images with same-stem ``.txt`` captions (one caption per non-empty line)::

      tiles/a.png  tiles/a.txt  ("a harbour with many boats")

- folder with ``metadata.jsonl`` / ``captions.jsonl`` / ``captions.json`` / ``captions.csv``
  (Hugging Face ``imagefolder`` style);
- JSONL, one record per line (RSICD / Git-10M style)::

      {"file_name": "square_221.jpg", "captions": ["some buildings ..."], "gsd": 0.5,
       "lat": 48.1, "lon": 11.6}

- JSON: a list of such records, a Karpathy split file (``{"images": [{"filename": ...,
  "sentences": [{"raw": ...}]}]}``, RSICD / UCM / Sydney captions) or ``{file name: caption(s)}``;
- CSV / TSV with a header; Parquet (pyarrow), including Hugging Face image columns
  (``{"bytes": ..., "path": ...}``, kept in ``image_bytes``).

Field names are matched case-insensitively: image ``image``/``file_name``/``filename``/
``image_path``/``path``...; caption ``caption``/``captions``/``text``/``sentences``/``raw``...;
GSD ``gsd``/``resolution``/``spatial_resolution``... in metres per pixel (numbers, or text
such as ``"0.5 m"``, ``"50cm"``); ``lat``/``latitude``, ``lon``/``lng``/``longitude``. Other
fields go to ``metadata``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earthgen.data._common import (
    IMAGE_EXTS,
    PathLike,
    fail,
    read_text,
    require_dir,
    require_file,
    where,
)
from earthgen.errors import UserInputError

IMAGE_KEYS: tuple[str, ...] = (
    "image",
    "image_path",
    "img_path",
    "file_name",
    "filename",
    "file_path",
    "image_file",
    "image_name",
    "img",
    "file",
    "path",
    "filepath",
)
CAPTION_KEYS: tuple[str, ...] = (
    "captions",
    "caption",
    "text",
    "texts",
    "sentences",
    "sentence",
    "raw",
    "description",
    "descriptions",
    "prompt",
    "title",
)
GSD_KEYS: tuple[str, ...] = (
    "gsd",
    "resolution",
    "spatial_resolution",
    "ground_sample_distance",
    "ground_sampling_distance",
    "meters_per_pixel",
    "m_per_px",
    "pixel_size",
    "res",
)
LAT_KEYS: tuple[str, ...] = ("lat", "latitude", "center_lat", "centre_lat")
LON_KEYS: tuple[str, ...] = ("lon", "lng", "long", "longitude", "center_lon", "centre_lon")
SENTENCE_KEYS: tuple[str, ...] = ("raw", "sentence", "caption", "text")
INDEX_FILES: tuple[str, ...] = (
    "metadata.jsonl",
    "captions.jsonl",
    "captions.json",
    "metadata.json",
    "captions.csv",
    "metadata.csv",
    "captions.parquet",
    "metadata.parquet",
)
_UNIT = {
    "": 1.0,
    "m": 1.0,
    "meter": 1.0,
    "meters": 1.0,
    "metre": 1.0,
    "metres": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "km": 1000.0,
}
_GSD_RE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*(?:/\s*(?:px|pixel|pix))?\s*$"
)


@dataclass
class CaptionRecord:
    """One image and its captions. ``image``: path (for Parquet rows with embedded bytes, the
    stored name under the file's folder); ``captions``: non-empty strings; ``gsd``: metres per
    pixel; ``lat``/``lon``: degrees (WGS84); ``metadata``: the other fields of the record."""

    image: Path
    captions: list[str]
    gsd: float | None = None
    lat: float | None = None
    lon: float | None = None
    metadata: dict = field(default_factory=dict)
    image_bytes: bytes | None = field(default=None, repr=False)

    @property
    def caption(self) -> str:
        """The first caption."""
        return self.captions[0]

    def load_image(self) -> np.ndarray:
        """The image as ``[H, W, 3]`` uint8 (from ``image_bytes`` or the file; GeoTIFFs that PIL
        cannot read go through :func:`earthgen.data.geotiff.read_geotiff`)."""
        from PIL import Image, UnidentifiedImageError

        src: Any = io.BytesIO(self.image_bytes) if self.image_bytes is not None else self.image
        if self.image_bytes is None and not Path(self.image).is_file():
            raise UserInputError(f"image not found: {self.image}")
        try:
            with Image.open(src) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError):
            if self.image_bytes is not None:
                raise UserInputError(
                    f"{self.image}: embedded image bytes are not an image"
                ) from None
            from earthgen.data.geotiff import read_geotiff

            return read_geotiff(self.image).rgb


def parse_gsd(value: Any, at: str) -> float | None:
    """A GSD value (number, or text with unit m/cm/mm/km, optional ``/px``) -> metres per pixel."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise UserInputError(f"{at}: gsd must be a number of metres per pixel, got {value!r}")
    if isinstance(value, int | float | np.integer | np.floating):
        v = float(value)
        if math.isnan(v):
            return None
    else:
        m = _GSD_RE.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNIT:
            raise UserInputError(
                f"{at}: cannot read gsd {value!r}; expected metres per pixel "
                "such as 0.5, '0.5 m' or '50 cm'"
            )
        v = float(m.group(1)) * _UNIT[unit]
    if not (v > 0 and math.isfinite(v)):
        raise UserInputError(f"{at}: gsd must be > 0 metres per pixel, got {value!r}")
    return v


def _coord(value: Any, at: str, name: str, limit: float) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{at}: {name} must be a number of degrees, got {value!r}") from None
    if math.isnan(v):
        return None
    if not -limit <= v <= limit:
        raise UserInputError(f"{at}: {name} {v} outside [-{limit:g}, {limit:g}] degrees")
    return v


def _texts(value: Any) -> list[str] | None:
    """Caption field value -> list of strings (None when the shape is not understood)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for k in SENTENCE_KEYS:
            if isinstance(value.get(k), str):
                return [value[k]]
        return None
    if isinstance(value, list | tuple):
        out: list[str] = []
        for v in value:
            t = _texts(v)
            if t is None:
                return None
            out += t
        return out
    return None


def _pick(rec: dict[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    low = {str(k).lower(): k for k in rec}
    for k in keys:
        if k in low and rec[low[k]] is not None:
            return low[k], rec[low[k]]
    return None, None


def _resolve(name: str, base: Path) -> Path:
    p = Path(name)
    if p.is_absolute() or "://" in name:
        return p
    cand = base / p
    if not cand.exists() and (base / "images" / p).exists():
        return base / "images" / p
    return cand


def make_record(rec: dict[str, Any], at: str, base: Path) -> CaptionRecord:
    """One raw record (dict of fields) -> CaptionRecord; ``at`` names it in errors
    (``file:line``), ``base`` resolves relative image paths."""
    if not isinstance(rec, dict):
        raise UserInputError(f"{at}: expected an object/record, got {type(rec).__name__}")
    used: set[str] = set()
    image_bytes = None
    low = {str(k).lower(): k for k in rec}
    if "filepath" in low and "filename" in low:  # Karpathy split files (COCO-style folders)
        ikey, ival = (
            low["filename"],
            str(Path(str(rec[low["filepath"]])) / str(rec[low["filename"]])),
        )
        used.add(low["filepath"])
    else:
        ikey, ival = _pick(rec, IMAGE_KEYS)
    if ikey is None:
        raise UserInputError(
            f"{at}: no image field (looked for {', '.join(IMAGE_KEYS[:6])}...); "
            f"fields are {sorted(map(str, rec))[:12]}"
        )
    used.add(ikey)
    if isinstance(ival, dict):  # Hugging Face Image feature
        image_bytes = ival.get("bytes")
        ival = ival.get("path") or ""
        if image_bytes is None and not ival:
            raise UserInputError(f"{at}: image field {ikey!r} has neither bytes nor path")
    if not isinstance(ival, str | Path) or (not str(ival).strip() and image_bytes is None):
        raise UserInputError(f"{at}: image field {ikey!r} must be a file name, got {ival!r}"[:300])
    ckey, cval = _pick(rec, CAPTION_KEYS)
    if ckey is None:
        raise UserInputError(
            f"{at}: no caption field (looked for {', '.join(CAPTION_KEYS[:6])}...);"
            f" fields are {sorted(map(str, rec))[:12]}"
        )
    used.add(ckey)
    texts = _texts(cval)
    if texts is None:
        raise UserInputError(
            f"{at}: caption field {ckey!r} must be text or a list of texts, got {cval!r}"[:300]
        )
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise UserInputError(f"{at}: empty caption in field {ckey!r}")
    gkey, gval = _pick(rec, GSD_KEYS)
    lat_key, lat = _pick(rec, LAT_KEYS)
    lon_key, lon = _pick(rec, LON_KEYS)
    used |= {k for k in (gkey, lat_key, lon_key) if k is not None}
    meta = {str(k): v for k, v in rec.items() if k not in used}
    return CaptionRecord(
        image=_resolve(str(ival), base) if str(ival) else Path(f"{at} (embedded)"),
        captions=texts,
        gsd=parse_gsd(gval, at),
        lat=_coord(lat, at, "latitude", 90.0),
        lon=_coord(lon, at, "longitude", 180.0),
        metadata=meta,
        image_bytes=image_bytes,
    )


def read_caption_jsonl(path: PathLike, image_root: PathLike | None = None) -> list[CaptionRecord]:
    """A JSONL file (one JSON object per line) -> records; blank lines are skipped."""
    path = require_file(path, "JSONL caption file")
    base = Path(image_root) if image_root is not None else path.parent
    out = []
    for no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise fail(path, no, f"invalid JSON: {e.msg} (column {e.colno})") from None
        out.append(make_record(rec, where(path, no), base))
    if not out:
        raise UserInputError(f"{path}: no records")
    return out


def read_caption_json(path: PathLike, image_root: PathLike | None = None) -> list[CaptionRecord]:
    """A JSON file: list of records, Karpathy ``{"images": [...]}`` or
    ``{file name: caption(s)}``."""
    path = require_file(path, "JSON caption file")
    base = Path(image_root) if image_root is not None else path.parent
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise fail(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):  # COCO captions
        caps: dict[Any, list] = {}
        for a in data["annotations"]:
            if isinstance(a, dict) and "caption" in a:
                caps.setdefault(a.get("image_id"), []).append(a["caption"])
        recs = [
            {**im, "captions": caps.get(im.get("id"), [])} if isinstance(im, dict) else im
            for im in data["images"]
        ]
        key = "images"
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        recs, key = data["images"], "images"
    elif isinstance(data, list):
        recs, key = data, ""
    elif isinstance(data, dict) and data and all(isinstance(k, str) for k in data):
        recs = [{"image": k, "caption": v} for k, v in data.items()]
        key = ""
    else:
        raise fail(
            path, None, "expected a list of records, {'images': [...]} or {file name: caption}"
        )
    out = [make_record(r, f"{path}: {key}[{i}]", base) for i, r in enumerate(recs)]
    if not out:
        raise UserInputError(f"{path}: no records")
    return out


def read_caption_csv(path: PathLike, image_root: PathLike | None = None) -> list[CaptionRecord]:
    """A CSV (or ``.tsv``) file with a header row -> records; line numbers in errors."""
    path = require_file(path, "CSV caption file")
    base = Path(image_root) if image_root is not None else path.parent
    text = read_text(path)
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    out = []
    for row in reader:
        no = reader.line_num
        if None in row:
            raise fail(path, no, f"more fields than the header's {len(reader.fieldnames or [])}")
        out.append(make_record(dict(row), where(path, no), base))
    if not out:
        raise UserInputError(f"{path}: no records (expected a header row and one row per image)")
    return out


def iter_caption_parquet(
    path: PathLike, image_root: PathLike | None = None, batch_size: int = 4096
) -> Iterator[CaptionRecord]:
    """Stream records from a Parquet file batch by batch (for files larger than memory)."""
    import pyarrow.parquet as pq

    path = require_file(path, "Parquet caption file")
    base = Path(image_root) if image_root is not None else path.parent
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - not Parquet / corrupt
        raise fail(path, None, f"not a readable Parquet file: {e}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            yield make_record(rec, f"{path}: row {row}", base)
            row += 1


def read_caption_parquet(path: PathLike, image_root: PathLike | None = None) -> list[CaptionRecord]:
    """A Parquet file -> records (all in memory; see :func:`iter_caption_parquet`)."""
    out = list(iter_caption_parquet(path, image_root))
    if not out:
        raise UserInputError(f"{path}: no records")
    return out


def read_caption_folder(path: PathLike, strict: bool = True) -> list[CaptionRecord]:
    """A folder: its index file (``metadata.jsonl``, ``captions.json``, ...) if any, else images
    with same-stem ``.txt`` captions. With ``strict`` an image without a caption file is an
    error; otherwise it is skipped."""
    root = require_dir(path, "caption folder")
    for name in INDEX_FILES:
        if (root / name).is_file():
            return read_captions(root / name, image_root=root)
    images = sorted(
        f
        for f in root.iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")
    )
    if not images:
        raise UserInputError(
            f"{root}: no images ({', '.join(IMAGE_EXTS[:5])}...) and no "
            f"index file ({', '.join(INDEX_FILES[:4])}...)"
        )
    out, missing = [], []
    for img in images:
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            missing.append(img.name)
            continue
        caps = [s.strip() for s in read_text(txt).splitlines() if s.strip()]
        if not caps:
            raise fail(txt, None, "empty caption file")
        out.append(CaptionRecord(image=img, captions=caps))
    if missing and strict:
        raise UserInputError(
            f"{root}: {len(missing)} image(s) without a same-stem .txt caption: "
            f"{missing[:5]} (pass strict=False to skip them)"
        )
    if not out:
        raise UserInputError(f"{root}: no image has a caption file")
    return out


def read_captions(
    path: PathLike, image_root: PathLike | None = None, strict: bool = True
) -> list[CaptionRecord]:
    """Any supported caption source (see the module docstring) -> records."""
    p = Path(path)
    if p.is_dir():
        return read_caption_folder(p, strict=strict)
    suffix = require_file(p, "caption file").suffix.lower()
    readers = {
        ".jsonl": read_caption_jsonl,
        ".ndjson": read_caption_jsonl,
        ".json": read_caption_json,
        ".csv": read_caption_csv,
        ".tsv": read_caption_csv,
        ".parquet": read_caption_parquet,
        ".pq": read_caption_parquet,
    }
    if suffix not in readers:
        raise UserInputError(
            f"{p}: unknown caption file type {suffix!r}; supported: "
            f"{', '.join(sorted(readers))} or a folder"
        )
    return readers[suffix](p, image_root)
