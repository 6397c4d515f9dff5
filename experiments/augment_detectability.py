"""How often detectors trained on the real data find the *painted* (pasted) objects of
`earthgen augment --inpaint` outputs, per class: a generator-quality number that needs no
detector training (docs/augment.md round 8). Usage:

    python experiments/augment_detectability.py OUT.json AUG_DIR [AUG_DIR ...] --detectors D0 D1 D2

Found = a detection of the same class with score >= 0.3 and rotated IoU >= 0.5 (the filter's
defaults). Real-box rows are the same images' unchanged real objects, for reference."""

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from earthgen.augment import match_requested, read_manifest
from earthgen.data import read_detection_dataset
from earthgen.detection import BoxNet, predict

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("augmented", nargs="+")
ap.add_argument("--detectors", nargs="+", required=True)
args = ap.parse_args()
torch.set_num_threads(1)
dets = [BoxNet.from_pretrained(d) for d in args.detectors]
res = {}
for aug in args.augmented:
    m = read_manifest(aug)
    by_name = {it.image.name: it for it in read_detection_dataset(aug)}
    recs = [r for r in m["synthetic"] if r["kept"]]
    items = [by_name[r["image"]] for r in recs]
    rows = defaultdict(list)  # (part, class) -> found fraction per detector
    for det in dets:
        preds = predict(det, items, score_threshold=0.05)
        hit = defaultdict(lambda: [0, 0])
        for r, it, pr in zip(recs, items, preds, strict=True):
            found = match_requested(it.boxes, pr, 0.5, 0.3, rotated=bool(det.config.rotated))
            n = len(found)
            for j, (lab, f) in enumerate(zip(it.boxes.labels, found, strict=True)):
                part = "pasted" if j >= n - r["pasted"] else "real"
                hit[(part, lab)][0] += int(f)
                hit[(part, lab)][1] += 1
        for k, (a, b) in hit.items():
            rows[k].append((a / b, b))
    res[aug] = {
        f"{part}/{lab}": {
            "found_mean": float(np.mean([v for v, _ in vs])),
            "found_std": float(np.std([v for v, _ in vs])),
            "boxes": vs[0][1],
        }
        for (part, lab), vs in sorted(rows.items())
    }
    print(aug)
    for k, v in res[aug].items():
        print(f"  {k:<28} {v['found_mean']:.3f} +- {v['found_std']:.3f}  ({v['boxes']} boxes)")
json.dump(
    {"detectors": args.detectors, "score_threshold": 0.3, "iou_threshold": 0.5, "results": res},
    open(args.out, "w"),
    indent=1,
)
