"""Scene pipeline benchmark: time per km^2 and peak memory as the generated area grows.

    python benchmarks/bench_scene.py                                 # CPU: 64 to 208 m squares
    python benchmarks/bench_scene.py --device cuda --sizes 600,1000,2000 --steps 20  # GPU targets

Each area runs in its own subprocess (a semantic-map-conditioned scene of a procedural world tile,
sliding windows with 16 m overlap), so its peak resident memory (``ru_maxrss``) and, on CUDA, its
peak allocated GPU memory are its own. Targets (issue 5; absolute times only on a GPU): a 600 m x
600 m scene at 1 m voxels in under 60 s on one H100; time per km^2 flat from 0.36 to 4 km^2.
Results: benchmarks/results/scene.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(size_m: float, steps: int, model: str, device: str, seed: int) -> dict:
    import torch

    from earthgen.pipelines.scene import load_scene_pipeline
    from earthgen.world.config import preset
    from earthgen.world.tile import generate_world

    torch.set_num_threads(1) if device == "cpu" else None
    pipe = load_scene_pipeline(model, device)
    pipe.set_progress_bar_config(disable=True)
    tile = generate_world(
        seed, int(size_m), 1.0, origin=(-size_m / 2, size_m / 2), config=preset("mixed")
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = pipe(
        semantic=tile.semantic,
        gsd=1.0,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    if device == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    r = {
        "size_m": size_m,
        "km2": size_m**2 / 1e6,
        "windows": len(out.windows),
        "voxels": int(len(out.coords)),
        "surfels": int(len(out.surfels["means"])),
        "seconds": round(sec, 2),
        "seconds_per_km2": round(sec / (size_m**2 / 1e6), 1),
        "seconds_per_window": round(sec / len(out.windows), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    if device == "cuda":
        r["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return r


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="64,112,160,208", help="comma list of square sides, metres")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scene.json"))
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(one(a.child, a.steps, a.model, a.device, a.seed)))
        return 0
    rows = []
    for s in (float(x) for x in a.sizes.split(",")):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(s),
            "--steps",
            str(a.steps),
            "--model",
            a.model,
            "--device",
            a.device,
            "--seed",
            str(a.seed),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append(
                {
                    "size_m": s,
                    "error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed",
                }
            )
        else:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    ok = [r for r in rows if "seconds_per_km2" in r]
    spk = [r["seconds_per_km2"] for r in ok]
    out = {
        "device": a.device,
        "machine": platform.processor() or platform.machine(),
        "steps": a.steps,
        "model": a.model,
        "rows": rows,
        "seconds_per_km2_max_over_min": round(max(spk) / min(spk), 3) if spk else None,
        "note": "one torch thread on CPU; each area in its own process",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
