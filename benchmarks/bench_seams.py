"""Seams of 256 m scenes with the packaged 3D models (issue 22 §3), CPU, JSON results.

    python benchmarks/bench_seams.py            # Monaco and Helsinki, 8 structure steps

Each place is generated twice from its OSM fixture (1 m voxels, 16 m overlap, 8 structure steps,
1 texture step: seams are a matter of structure): once with the generator's own heights
(``--heights model``) and once with heights from the data and the class caps (``--heights data``,
the default of ``earthgen scene``). Reported: the height steps between neighbouring columns across
the borders where windows meet vs the steps at the same place of the 8-voxel lattice elsewhere
(:func:`earthgen.evaluation.scene.seam_steps`; seamless = seam no larger than interior) and CPU
seconds. Results: benchmarks/results/scene_seams.json (or --out). ``tests/test_seams_real.py``
asserts the same criterion on Monaco.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("EARTHGEN_FIXTURES", ROOT.parent / "shared" / "fixtures"))
PLACES = {
    "monaco": (
        str(resources.files("earthgen") / "assets" / "monaco-latest.osm.pbf"),
        (43.7384, 7.4246),
    ),
    "helsinki": (str(FIXTURES / "osm" / "Helsinki.osm.pbf"), (60.1699, 24.9384)),
}


def seams(place: str, size_m: int = 256, steps: int = 8, seed: int = 0, pipe=None) -> dict:
    """Seam statistics of one place in both height modes: ``{"model": {...}, "data": {...}}``."""
    import numpy as np
    import torch

    from earthgen.evaluation.scene import seam_steps
    from earthgen.geo.heights import height_caps, height_map
    from earthgen.geo.layout import build_layout
    from earthgen.pipelines.scene import load_scene_pipeline

    src, center = PLACES[place]
    lay = build_layout(src, center=center, size=(size_m, size_m), gsd=1.0)
    if pipe is None:
        pipe = load_scene_pipeline("default", "cpu")
        pipe.set_progress_bar_config(disable=True)
    hm = height_map(lay)
    modes = {
        "model": {},
        "data": {
            "heights": hm.top,
            "height_base": np.nan_to_num(hm.base),
            "height_cap": height_caps(lay.semantic),
        },
    }
    out = {}
    for mode, kw in modes.items():
        t0 = time.process_time()
        res = pipe(
            semantic=lay.semantic,
            gsd=1.0,
            num_inference_steps=steps,
            texture_steps=1,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )
        r = seam_steps(res.height, res.windows, pipe.window)
        r["windows"] = len(res.windows)
        r["cpu_seconds"] = round(time.process_time() - t0, 2)
        out[mode] = r
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--places", default="monaco,helsinki", help="comma list of: monaco, helsinki")
    p.add_argument("--size-m", type=int, default=256, help="square side, metres")
    p.add_argument("--steps", type=int, default=8, help="structure flow steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scene_seams.json"))
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict = {
        "settings": {
            "size_m": a.size_m,
            "steps": a.steps,
            "texture_steps": 1,
            "seed": a.seed,
            "threads": 1,
            "voxel_m": 1.0,
            "overlap_m": 16,
        },
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "places": {},
    }
    for place in a.places.split(","):
        r = seams(place, a.size_m, a.steps, a.seed)
        results["places"][place] = r
        for mode, s in r.items():
            print(
                f"{place} {mode}: seam p99 {s['seam_p99_m']:g} m vs interior "
                f"{s['interior_p99_m']:g} m (means {s['seam_mean_m']:.2f} / "
                f"{s['interior_mean_m']:.2f} m), {s['cpu_seconds']:.0f} CPU s"
            )
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
