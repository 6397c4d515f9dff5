"""Control of docs/augment.md round 7: real + the same 96 source images, turned/mirrored as the
layouts, unchanged (no pasted objects): what oversampling the real source images alone gives.
Run from the repository root after round 7 (reads runs/tank4/train and runs/tank7-aug; writes
the dataset runs/control7, its images under runs/control7-src):

    python experiments/augment_round7_control.py"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from earthgen.augment.core import _turned_source
from earthgen.augment.layouts import LayoutConfig, sample_layouts
from earthgen.boxes import BoxSet
from earthgen.data import DetectionItem, read_detection_dataset, write_detection_dataset

real = read_detection_dataset("runs/tank4/train")
m = json.load(open("runs/tank7-aug/augment/manifest.json"))
classes = m["summary"]["classes"]
lays = sample_layouts(
    real, 96, 0, LayoutConfig(jitter=0.0, scale_jitter=0.0, angle_jitter_deg=0.0), classes
)
tmp = Path("runs/control7-src")
tmp.mkdir(exist_ok=True)
items = list(real)
for k, (lay, rec) in enumerate(zip(lays, m["synthetic"], strict=True)):
    assert rec["source_image"] == real[lay.source].image.name and rec["ops"] == lay.ops
    n = len(real[lay.source].boxes)
    p = tmp / f"copy_{k:05d}.png"
    Image.fromarray(_turned_source(real[lay.source].image, lay.turn, lay.mirror)).save(p)
    b = lay.boxes
    items.append(
        DetectionItem(
            p,
            lay.size,
            BoxSet(
                np.asarray(b.corners).reshape(-1, 4, 2)[:n], list(b.labels)[:n], rotated=b.rotated
            ),
        )
    )
write_detection_dataset(items, "runs/control7", "dota", classes=classes, images="copy")
print(len(items))
