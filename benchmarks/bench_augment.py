"""Benchmarks of detection augmentation (JSON results).

1. BoxNet (width 32, stride 2) inference: milliseconds per 128 px image, with decoding and
   rotated NMS, and the number of parameters.
2. Rotated IoU: exact pairwise IoU of 200 x 200 boxes, ``box_iou`` vs the sparse version used
   by NMS.
3. Box-conditioned sampling (tiny grounded UNet): seconds per step with 0, 16 and 128 boxes
   (the token count grows with the boxes; there is no cap).

Usage: python benchmarks/bench_augment.py [--out benchmarks/results/augment.json] [--threads 1].
Absolute numbers depend on the machine (CPU times were taken with other jobs running).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from earthgen.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/augment.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from earthgen.boxes import BoxSet, box_iou, obb_to_corners
    from earthgen.detection import BoxNet
    from earthgen.detection.net import sparse_iou

    res: dict = {"machine": platform.platform(), "threads": args.threads}
    net = BoxNet(classes=("a", "b", "c", "d"), width=32, stride=2).eval()
    x = torch.rand(1, 3, 128, 128)
    res["boxnet"] = {
        "parameters": sum(p.numel() for p in net.parameters()),
        "ms_per_128px_image": 1000 * timed(lambda: net.detect(x, score_threshold=0.01)),
    }
    rng = np.random.default_rng(0)
    c = obb_to_corners(
        np.c_[rng.uniform(0, 512, (200, 2)), rng.uniform(4, 40, (200, 2)), rng.uniform(0, 3, 200)]
    )
    res["rotated_iou_200x200_ms"] = {
        "box_iou": 1000 * timed(lambda: box_iou(c, c)),
        "sparse_iou": 1000 * timed(lambda: sparse_iou(c)),
    }
    from test_boxes_conditioning import grounded_components

    from earthgen.pipelines.image import EarthImagePipeline

    pipe = EarthImagePipeline(**grounded_components())
    pipe.set_progress_bar_config(disable=True)
    per = {}
    for n in (0, 16, 128):
        b = (
            None
            if n == 0
            else BoxSet(
                obb_to_corners(
                    np.c_[
                        rng.uniform(0, 64, (n, 2)), rng.uniform(2, 8, (n, 2)), rng.uniform(0, 3, n)
                    ]
                ),
                ["car"] * n,
            )
        )
        per[str(n)] = (
            timed(
                lambda b=b: pipe("a town", boxes=b, num_inference_steps=4, output_type="latent"), 2
            )
            / 4
        )
    res["tiny_sampling_s_per_step_by_boxes"] = per
    write_json(args.out, res)
    print(res)
    return res


if __name__ == "__main__":
    main()
