"""Benchmark of the procedural world engine (CPU): time per tile and per megapixel.

Usage: python benchmarks/bench_world.py [--out benchmarks/results/world.json] [--repeats 5]

Generation = all layers in memory (fields, layout, objects, render, labels, caption); saving
(PNG/GeoTIFF/GeoJSON/voxels) is timed separately. Reports the median of --repeats runs after
one warm-up run. Target (issue 2): a 512x512 tile "well under a second" on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from earthgen.io import write_json
from earthgen.world import generate_world, preset


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/world.json")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cases = [
        ("mixed", 3, 256, 0.5),
        ("mixed", 3, 512, 0.5),
        ("mixed", 3, 1024, 0.5),
        ("urban", 3, 512, 0.5),
        ("rural", 3, 512, 2.0),
        ("mixed", 3, 512, 8.0),
    ]
    results = []
    for name, seed, size, gsd in cases:
        cfg = preset(name)
        med, runs = timed(
            lambda s=seed, n=size, g=gsd, c=cfg: generate_world(s, n, g, config=c), args.repeats
        )
        tile = generate_world(seed, size, gsd, config=cfg)
        with tempfile.TemporaryDirectory() as d:
            save_med, _ = timed(
                lambda t=tile, v=max(1.0, gsd): t.save(Path(d) / "t", voxel_size=v),
                max(1, args.repeats // 2),
            )
        row = {
            "preset": name,
            "seed": seed,
            "size_px": size,
            "gsd_m": gsd,
            "extent_m": size * gsd,
            "generate_s": round(med, 4),
            "generate_runs_s": [round(r, 4) for r in runs],
            "s_per_megapixel": round(med / (size * size / 1e6), 4),
            "save_s": round(save_med, 4),
            "objects": len(tile.labels["labels"]),
        }
        results.append(row)
        print(
            f"{name:6s} {size:5d}px @ {gsd:4.1f} m/px: generate {med:.3f} s "
            f"({row['s_per_megapixel']:.3f} s/MP), save {save_med:.3f} s, {row['objects']} objects"
        )
    report = {
        "benchmark": "world",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "results": results,
    }
    print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
