"""TAEF2 tiled encode + decode: seconds and peak memory per image size, tiled (512 px tiles,
64 px margins) vs one pass, each size in its own process so peak RSS is that run's.

    python benchmarks/bench_taef2.py            # -> benchmarks/results/taef2_tiling.json
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "taef2_tiling.json"


def one(size: int, tile: int) -> dict:
    import torch

    from earthgen.models import MODELS_DIR
    from vae.taef2 import TAEF2

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    m = TAEF2.from_pretrained(str(MODELS_DIR / "image" / "vae")).float().eval()
    m.register_to_config(tile_size=tile)
    x = torch.rand(1, 3, size, size) * 2 - 1
    t0 = time.perf_counter()
    with torch.no_grad():
        y = m.decode(m.encode(x).latents).sample
    assert y.shape == x.shape
    return {
        "size_px": size,
        "tile_px": tile,
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(one(int(sys.argv[1]), int(sys.argv[2]))))
        return
    rows = []
    for size, tile in ((512, 4096), (1024, 4096), (1024, 512), (2048, 512)):
        r = subprocess.run(
            [sys.executable, __file__, str(size), str(tile)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    OUT.write_text(
        json.dumps(
            {
                "threads": int(os.environ.get("BENCH_THREADS", "2")),
                "cores": os.cpu_count(),
                "note": "encode + decode of one random image; 4096 = one pass",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
