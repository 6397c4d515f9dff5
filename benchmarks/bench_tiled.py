"""Tiled image generation with the default packaged image model on CPU: seconds per megapixel
and peak memory per image size, before and after the overlap change (EarthGen issue 24, s. 5).

Each (mode, size) runs in a fresh subprocess at ``torch.set_num_threads(1)`` so ``ru_maxrss`` is
that run's peak; sizes run one after another. Modes:

- ``after``: the defaults (windows of the UNet's 32 latents overlapping by an eighth, spread
  evenly, :data:`earthgen.pipelines.image.TILE_BATCH` windows per UNet call), sampling then
  the TAEF2 decode (timed apart);
- ``before``: the former rule, ``tile_overlap=16`` (half a window: the same windows as the old
  code) at one window per UNet call; sampling only (the decode does not depend on the overlap).
- ``after_batch1``: the defaults at one window per call (what batching saves), sampling only.

Times: wall seconds and CPU seconds (user + system of the process: robust on a busy machine,
where wall time depends on the other jobs). Also: the latent area the UNet processed per step
over the image's (``unet_area_ratio``), the UNet calls, and for ``after`` a seam measure: the
mean absolute gradient across the sampling windows' edges (pixel rows and columns where a
window starts or ends) over the mean elsewhere.

    python benchmarks/bench_tiled.py            # -> benchmarks/results/tiled_generation.json
    python benchmarks/bench_tiled.py --sizes 512,1024 --modes after --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "tiled_generation.json"
PROMPT = "farmland with fields and a river"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _seam_ratio(img, starts_ends: list[int]) -> float:
    """``img`` ``[H, W, 3]``; mean |gradient| across the pixel lines in ``starts_ends`` (a window
    starts or ends there, both axes; square image) over the mean across all other lines."""
    import numpy as np

    g = img.mean(-1)
    gx = np.abs(np.diff(g, axis=1)).mean(axis=0)  # [W - 1]: between column c and c + 1
    gy = np.abs(np.diff(g, axis=0)).mean(axis=1)
    edges = sorted({c - 1 for c in starts_ends if 0 < c < g.shape[1]})
    per_line = np.concatenate([gx, gy])
    idx = edges + [len(gx) + e for e in edges]
    others = np.delete(per_line, idx)
    return float(per_line[idx].mean() / others.mean())


def child(side: int, mode: str, steps: int, guidance: float) -> dict:
    import torch

    torch.set_num_threads(1)
    import earthgen.pipelines.image as im
    from earthgen.models import float32_on_cpu, resolve_model

    pipe = float32_on_cpu(im.load_pipeline(resolve_model("default", "image")))
    pipe.set_progress_bar_config(disable=True)
    if mode in ("before", "after_batch1"):
        im.TILE_BATCH = 1
    overlap = 16 if mode == "before" else None
    rss_loaded = _rss_mb()
    kw = {
        "gsd": 1.0,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "output_type": "latent",
    }
    pipe(PROMPT, height=256, width=256, **{**kw, "num_inference_steps": 1})  # warm-up, not timed
    rss_warm = _rss_mb()
    calls = {"n": 0, "area": 0}
    fwd = pipe.unet.forward

    def counting(sample, t, **k):
        calls["n"] += 1
        calls["area"] += sample.shape[0] * sample.shape[-2] * sample.shape[-1]
        return fwd(sample, t, **k)

    pipe.unet.forward = counting
    w0, c0 = time.perf_counter(), _cpu_s()
    lat = pipe(
        PROMPT,
        height=side,
        width=side,
        tile_overlap=overlap,
        generator=torch.Generator().manual_seed(0),
        **kw,
    ).images
    sample_wall, sample_cpu = time.perf_counter() - w0, _cpu_s() - c0
    pipe.unet.forward = fwd
    tile = int(pipe.unet.config.sample_size)
    ov = im.default_tile_overlap(tile) if overlap is None else overlap
    latent = side // pipe.vae_scale_factor
    wins = im._windows(latent, tile, ov, pipe._unet_multiple)
    mp = side * side / 1e6
    cfg_branches = 2 if guidance > 1 else 1
    row = {
        "mode": mode,
        "side_px": side,
        "megapixels": mp,
        "tile_latent": tile,
        "overlap_latent": ov,
        "windows_per_axis": len(wins),
        "window_sizes": sorted({n for _, n in wins}),
        "unet_calls": calls["n"],
        "tile_batch": im.TILE_BATCH,
        "unet_area_ratio": calls["area"] / (cfg_branches * steps * latent * latent),
        "sample_s": sample_wall,
        "sample_cpu_s": sample_cpu,
        "sample_s_per_mp": sample_wall / mp,
        "sample_cpu_s_per_mp": sample_cpu / mp,
    }
    if mode == "after":
        w0, c0 = time.perf_counter(), _cpu_s()
        img = pipe.decode_latents(lat).permute(0, 2, 3, 1).cpu().numpy()[0]  # as output_type="np"
        dec_wall, dec_cpu = time.perf_counter() - w0, _cpu_s() - c0
        f = pipe.vae_scale_factor
        lines = [s * f for s, _ in wins[1:]] + [(s + n) * f for s, n in wins[:-1]]
        row.update(
            {
                "decode_s": dec_wall,
                "decode_cpu_s": dec_cpu,
                "decode_s_per_mp": dec_wall / mp,
                "decode_cpu_s_per_mp": dec_cpu / mp,
                "total_s_per_mp": (sample_wall + dec_wall) / mp,
                "total_cpu_s_per_mp": (sample_cpu + dec_cpu) / mp,
                "image_mean": float(img.mean()),
                "image_std": float(img.std()),
                "seam_gradient_ratio": _seam_ratio(img, lines),
            }
        )
    row.update(
        {
            "rss_after_load_mb": rss_loaded,
            "rss_after_warmup_mb": rss_warm,
            "peak_rss_mb": _rss_mb(),
            "peak_rss_over_warmup_mb": _rss_mb() - rss_warm,
        }
    )
    return row


def _ratio(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return max(vals) / min(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--sizes", default="512,1024,1536,2048", help="image sides in pixels")
    ap.add_argument("--modes", default="after,before,after_batch1")
    ap.add_argument("--batch1-sizes", default="1024", help="sizes for the after_batch1 mode")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.steps, args.guidance)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows, load = [], [os.getloadavg()[0]]
    t_start = time.perf_counter()
    for mode in args.modes.split(","):
        mode_sizes = sizes
        if mode == "after_batch1":
            mode_sizes = [int(s) for s in args.batch1_sizes.split(",")]
        for side in mode_sizes:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(side),
                mode,
                "--steps",
                str(args.steps),
                "--guidance",
                str(args.guidance),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                sys.exit(f"{mode} {side}: failed\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            load.append(os.getloadavg()[0])
            x = rows[-1]
            total = x.get("total_s_per_mp", float("nan"))
            print(
                f"{mode:13s} {side:5d} px: sample {x['sample_s_per_mp']:6.1f} s/MP wall, "
                f"{x['sample_cpu_s_per_mp']:6.1f} s/MP cpu, total {total:6.1f} s/MP, "
                f"UNet area x{x['unet_area_ratio']:.2f}, peak {x['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    summary = {}
    for mode in {r["mode"] for r in rows}:
        mr = [r for r in rows if r["mode"] == mode]
        keys = (
            "sample_s_per_mp",
            "sample_cpu_s_per_mp",
            "total_s_per_mp",
            "total_cpu_s_per_mp",
            "decode_cpu_s_per_mp",
            "unet_area_ratio",
            "peak_rss_mb",
        )
        summary[mode] = {f"max_over_min_{k}": _ratio(mr, k) for k in keys if _ratio(mr, k)}
    report = {
        "benchmark": "tiled image generation, default packaged image model",
        "device": "cpu",
        "torch_threads": 1,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "prompt": PROMPT,
        "gsd": 1.0,
        "scheduler": "the model's (DPM-Solver++)",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "wall_seconds": time.perf_counter() - t_start,
        "target": "max/min s/MP <= 1.3 from 0.25 to 4 MP",
        "summary": summary,
        "rows": rows,
        "notes": (
            "one fresh process per row; peak_rss_mb is ru_maxrss of that process "
            "(model, torch, warm-up at 256 px and the run); CPU seconds are user + "
            "system time of the process (one thread), robust to other jobs on a "
            "shared machine; before = tile_overlap=16 (the old default, half a "
            "32-latent window: the old code's windows) at one window per UNet call, "
            "sampling only"
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
