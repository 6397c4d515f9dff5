"""Readers (and writers, for label formats) of the datasets users bring.

Every malformed file raises :class:`earthgen.errors.UserInputError` naming the file, the line
(text formats) and the reason, e.g. ``labelTxt/P0001.txt:7: expected 10 fields (8 coordinates,
class, difficult), got 6``. Boxes are :class:`earthgen.boxes.BoxSet` (corners ``[N, 4, 2]``
pixels, class-name labels).

Captions (:mod:`earthgen.data.captions`) -> :class:`CaptionRecord` (image, captions, gsd m/px,
lat/lon, metadata)::

    read_captions("rsicd.jsonl")     # {"file_name": "a.jpg", "captions": ["..."], "gsd": 0.5}
    read_captions("tiles/")          # a.png + a.txt, or metadata.jsonl / captions.csv
    read_captions("git10m.parquet")  # image / text / resolution / lat / lon columns

Detection labels (:mod:`.dota`, :mod:`.yolo`, :mod:`.coco`, :mod:`.voc`), unified by
:mod:`earthgen.data.detection`::

    DOTA      x1 y1 x2 y2 x3 y3 x4 y4 plane 0          (+ imagesource:/gsd: header lines)
    YOLO      0 0.51 0.32 0.06 0.04                    (class cx cy w h, normalised)
    YOLO-OBB  0 0.10 0.20 0.30 0.20 0.30 0.25 0.10 0.25
    COCO      {"bbox": [x, y, w, h], "segmentation": [[x1, y1, ..., x4, y4]], ...}
    VOC       <object><name>Tree</name><bndbox><xmin>203</xmin>...</bndbox></object>
    CSV       image_path,xmin,ymin,xmax,ymax,label     (DeepForest / NEON; any column order)

    items = read_detection_dataset("DOTA/train")          # format guessed
    write_detection_dataset(items, "out", "yolo-obb", images="symlink")

Segmentation masks (:mod:`.masks`): ``images/`` + ``masks/`` paired by stem, palette / grey
class-id PNGs or RGB colour masks (palette default :data:`earthgen.classes.PALETTE`)::

    [s.read() for s in read_mask_folder("seg_dataset")]   # [H, W] uint8 class ids

GeoTIFF (:mod:`.geotiff`): any band count and dtype -> uint8 RGB with percentile stretch::

    img = read_geotiff("S2.tif", bands=(4, 3, 2))   # img.rgb [H, W, 3], img.crs, img.gsd (m/px)
"""

from __future__ import annotations

from earthgen.data._common import DetectionItem
from earthgen.data.captions import (
    CaptionRecord,
    iter_caption_parquet,
    parse_gsd,
    read_caption_csv,
    read_caption_folder,
    read_caption_json,
    read_caption_jsonl,
    read_caption_parquet,
    read_captions,
)
from earthgen.data.coco import read_coco, to_coco, write_coco
from earthgen.data.detection import (
    FORMATS,
    convert_detection_dataset,
    detect_format,
    read_detection_dataset,
    write_detection_dataset,
)
from earthgen.data.dota import format_dota, read_dota, read_dota_file, write_dota_file
from earthgen.data.geotiff import GeoImage, gsd_from_transform, read_geotiff
from earthgen.data.masks import MaskSample, read_mask, read_mask_folder, rgb_to_ids
from earthgen.data.voc import (
    read_box_csv,
    read_voc,
    read_voc_file,
    write_box_csv,
    write_voc_file,
)
from earthgen.data.yolo import format_yolo, read_yolo, read_yolo_file, write_yolo_file

__all__ = [
    "FORMATS",
    "CaptionRecord",
    "DetectionItem",
    "GeoImage",
    "MaskSample",
    "convert_detection_dataset",
    "detect_format",
    "format_dota",
    "format_yolo",
    "gsd_from_transform",
    "iter_caption_parquet",
    "parse_gsd",
    "read_box_csv",
    "read_caption_csv",
    "read_caption_folder",
    "read_caption_json",
    "read_caption_jsonl",
    "read_caption_parquet",
    "read_captions",
    "read_coco",
    "read_detection_dataset",
    "read_dota",
    "read_dota_file",
    "read_geotiff",
    "read_mask",
    "read_mask_folder",
    "read_voc",
    "read_voc_file",
    "read_yolo",
    "read_yolo_file",
    "rgb_to_ids",
    "to_coco",
    "write_box_csv",
    "write_coco",
    "write_detection_dataset",
    "write_dota_file",
    "write_voc_file",
    "write_yolo_file",
]
