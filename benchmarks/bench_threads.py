"""Benchmark of torch CPU threads (issue 24, item 6): one UNet forward of the packaged image
model's architecture (random weights, built from its config: no download, no weights read) at 1
thread and at earthgen's default (`earthgen.commands._args.default_threads`: $OMP_NUM_THREADS,
else the CPUs this process may use), plus any --threads given.

Usage: python benchmarks/bench_threads.py [--out benchmarks/results/threads.json] [--repeats 5]
       [--latent 32] [--threads 1 2 4]

Reports the median of --repeats forwards after one warm-up per thread count. The numbers are only
meaningful on an otherwise idle machine; the JSON records the load average and the CPU count so a
noisy run can be recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unet_forward(latent: int):
    """A closure running one forward of the packaged image UNet architecture on a
    ``latent x latent`` latent (batch 1, conditional only)."""
    import torch
    from diffusers import UNet2DConditionModel

    cfg = json.loads((ROOT / "earthgen/assets/models/image/unet/config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    x = torch.randn(1, unet.config.in_channels, latent, latent)
    ctx = torch.randn(1, 8, unet.config.cross_attention_dim)
    t = torch.tensor([500])
    extra = {}
    if unet.config.class_embed_type == "identity":  # EarthGen's metadata embedding, added to time
        extra["class_labels"] = torch.zeros(1, unet.config.block_out_channels[0] * 4)

    def run() -> None:
        with torch.inference_mode():
            unet(x, t, encoder_hidden_states=ctx, **extra)

    return run, sum(p.numel() for p in unet.parameters())


def main() -> None:
    from earthgen.commands._args import default_threads

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/threads.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32: a 256 px image at /8)")
    ap.add_argument("--threads", type=int, nargs="*", default=[])
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. what else was running)")
    a = ap.parse_args()

    import torch

    torch_default = torch.get_num_threads()
    default = default_threads()
    counts = sorted({1, default, *a.threads})
    torch.set_num_threads(1)
    fn, params = unet_forward(a.latent)
    load_before = os.getloadavg()
    res = {}
    for n in counts:
        torch.set_num_threads(n)
        fn()  # warm-up
        runs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        res[str(n)] = {
            "median_s": round(statistics.median(runs), 4),
            "runs_s": [round(r, 4) for r in runs],
        }
        print(f"{n} thread(s): {res[str(n)]['median_s']:.3f} s per forward")
    torch.set_num_threads(1)
    base = res["1"]["median_s"]
    out = {
        "what": "one UNet forward (packaged image model architecture, random weights), batch 1",
        "latent": a.latent,
        "unet_params": params,
        "repeats": a.repeats,
        "default_threads": default,
        "torch_default_threads_at_start": torch_default,
        "cpus_affinity": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "results": res,
        "speedup_vs_1": {k: round(base / v["median_s"], 2) for k, v in res.items()},
        "machine": platform.platform(),
        "torch": torch.__version__,
        "note": a.note,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
