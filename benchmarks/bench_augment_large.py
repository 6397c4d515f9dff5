"""Benchmark: `earthgen augment` on large images, generated and filtered by tiles (JSON results).

For each side S (default 1000, 2000, 4000 px) a one-image DOTA dataset is written: an S x S
smooth random texture with rotated and upright boxes at a constant density (``--boxes-per-mp``,
default 20 per megapixel: 320 boxes at 4000 px). A fresh subprocess per size then runs
``augment_dataset`` (one layout, ``--steps`` sampler steps, windows of ``--tile`` px with 25%
overlap, the filter on with a small BoxNet trained once beforehand, detecting by 512 px windows)
and reports the seconds of ``augment_dataset`` (model loading excluded) split into generation,
filtering and writing, and its peak resident memory (``ru_maxrss``; also the RSS after loading
the model, before augmenting). Seconds per megapixel and the ratio of the largest size's s/MP to
the smallest's show whether time is linear in the area (linear: ~1).

Models: ``tiny`` (default; the random tiny grounded model of the tests, 8x VAE, so a 4000 px
run takes minutes on a CPU) and ``boxes`` (the packaged model, 4x VAE, 128 px window; about 1 s
per window at 2 steps on one CPU thread, ~110 windows per megapixel: use it for small sizes).

Usage: python benchmarks/bench_augment_large.py [--sizes 1000 2000 4000] [--model tiny]
       [--steps 2] [--tile 256] [--out benchmarks/results/augment_large.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("small_vehicle", "storage_tank", "building")


def make_dataset(root: Path, size: int, per_mp: float, seed: int = 0) -> tuple[Path, int]:
    """A one-image DOTA dataset at ``root``: ``size`` px square texture, boxes at ``per_mp``."""
    from PIL import Image

    from earthgen.boxes import BoxSet, obb_to_corners
    from earthgen.data import DetectionItem, write_detection_dataset

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16 + 2, size // 16 + 2, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))
    n = max(int(round(per_mp * size * size / 1e6)), 10)
    obb = np.c_[
        rng.uniform(40, size - 40, (n, 2)),
        rng.uniform(8, 40, (n, 2)),
        rng.uniform(0, np.pi, n) * (np.arange(n) % 3 != 1),
    ]  # storage tanks upright
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / f"big{size}.png")
    labels = [CLASSES[i % 3] for i in range(n)]
    item = DetectionItem(root / f"big{size}.png", (size, size), BoxSet(obb_to_corners(obb), labels))
    write_detection_dataset([item], root / "ds", "dota", images="copy")
    return root / "ds", n


def load_model(name: str):
    from earthgen.pipelines.image import EarthImagePipeline, load_pipeline

    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from test_boxes_conditioning import grounded_components

        pipe = EarthImagePipeline(**grounded_components())
    else:
        from earthgen.models import float32_on_cpu, resolve_model

        pipe = float32_on_cpu(load_pipeline(resolve_model(None, "boxes")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (less sensitive than wall time to other jobs)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> None:
    """One size in this (fresh) process: prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from earthgen.augment import AugmentConfig, LayoutConfig, augment_dataset

    pipe = load_model(args.model)
    base = rss_mb()
    cfg = AugmentConfig(
        n=1,
        seed=0,
        steps=args.steps,
        guidance_scale=3.0,
        tile=args.tile,
        tile_overlap=0.25,
        detector=args.detector,
        filter=args.detector is not None,
        score_threshold=0.3,
        layout=LayoutConfig(copy_paste=3),
    )
    cpu0, t = cpu_seconds(), time.perf_counter()
    s = augment_dataset(args.child_data, args.child_out, pipe, cfg, progress=False)
    sec, cpu = time.perf_counter() - t, cpu_seconds() - cpu0
    print(
        json.dumps(
            {
                "seconds": sec,
                "cpu_seconds": cpu,
                "peak_rss_mb": rss_mb(),
                "rss_after_model_mb": base,
                "parts": s["seconds"],
                "windows": s["tiling"]["windows"],
                "tile": s["tiling"]["tile"],
                "kept": s["kept"],
            }
        )
    )


def train_small_detector(data: Path, out: Path) -> None:
    """A small BoxNet on the smallest dataset (the filter's detector; its quality is moot here)."""
    from earthgen.data import read_detection_dataset
    from earthgen.detection import train_detector

    items = read_detection_dataset(data)
    train_detector(
        items, list(CLASSES), steps=20, batch_size=4, crop=128, seed=0, out=out, progress=False
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--model", choices=["tiny", "boxes"], default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument(
        "--tile", type=int, default=256, help="generation window, pixels (0: the model's own)"
    )
    ap.add_argument("--boxes-per-mp", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-filter", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/augment_large.json"))
    ap.add_argument("--child-data", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--detector", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.tile = args.tile or None
    if args.child_data:
        child(args)
        return {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-augment-large-") as tmp:
        tmp = Path(tmp)
        det = None
        for k, size in enumerate(sorted(args.sizes)):
            data, n = make_dataset(tmp / f"s{size}", size, args.boxes_per_mp)
            if k == 0 and not args.no_filter:
                det = tmp / "detector"
                train_small_detector(data, det)
            cmd = [
                sys.executable,
                __file__,
                "--child-data",
                str(data),
                "--child-out",
                str(tmp / f"out{size}"),
                "--model",
                args.model,
                "--steps",
                str(args.steps),
                "--tile",
                str(args.tile or 0),
                "--threads",
                str(args.threads),
            ] + (["--detector", str(det)] if det else [])
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if r.returncode:
                raise SystemExit(f"size {size} failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            mp = size * size / 1e6
            row = {
                "size": size,
                "megapixels": mp,
                "boxes": n,
                **res,
                "s_per_mp": res["seconds"] / mp,
                "cpu_s_per_mp": res["cpu_seconds"] / mp,
                "generate_s_per_mp": res["parts"]["generate_s"] / mp,
                "windows_per_mp": res["windows"] / mp,
                "peak_rss_gb": res["peak_rss_mb"] / 1024,
            }
            rows.append(row)
            print(
                f"{size} px: {res['seconds']:.1f} s ({row['s_per_mp']:.1f} s/MP, "
                f"CPU {row['cpu_s_per_mp']:.1f} s/MP), "
                f"{res['windows']} windows, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    first, last = rows[0], rows[-1]
    out = {
        "benchmark": "earthgen augment, large images by tiles (1 layout per size, 1 process each)",
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "settings": {
            "model": args.model,
            "steps": args.steps,
            "guidance": 3.0,
            "tile_px": args.tile or "model window",
            "tile_overlap": 0.25,
            "detect_tile_px": 512,
            "filter": not args.no_filter,
            "filter_detector": "BoxNet width 32, 20 steps on the smallest image",
            "boxes_per_megapixel": args.boxes_per_mp,
            "copy_paste": 3,
            "n": 1,
        },
        "sizes": rows,
        "linearity": {
            "s_per_mp_ratio_largest_to_smallest": last["s_per_mp"] / first["s_per_mp"],
            "cpu_s_per_mp_ratio_largest_to_smallest": last["cpu_s_per_mp"] / first["cpu_s_per_mp"],
            "note": "wall seconds on a shared 2-core machine vary with the other jobs' load; "
            "CPU seconds of the process are the steadier measure of the work done",
            "generate_s_per_mp_ratio": last["generate_s_per_mp"] / first["generate_s_per_mp"],
        },
        "peak_rss_gb_at_largest": last["peak_rss_gb"],
        "total_seconds": time.perf_counter() - t_all,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from earthgen.io import write_json

    write_json(args.out, out)
    print(json.dumps(out["linearity"]), f"peak {out['peak_rss_gb_at_largest']:.2f} GB", flush=True)
    return out


if __name__ == "__main__":
    main()
