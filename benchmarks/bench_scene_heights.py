"""Generated building heights vs a real nDSM (issue 22 §1): Alexandria (VA), JSON results.

    python benchmarks/bench_scene_heights.py [--size-m 256] [--steps 20]

The 1 m layout of ``../shared/data/alexandria_dsm_dtm`` (footprints as buildings, HEIGHT as
height tags; :func:`earthgen.geo.heights.read_alexandria`) cropped to ``--size-m`` around its
centre is generated twice with the default scene models and the same seed: **today** (the
generator's own heights, ``heights=None``) and **data** (``heights=height_map(layout)``,
``height_cap=height_caps(semantic)``: what ``earthgen scene --heights data`` passes). Each
scene's height above ground = its surface height minus its bare ground (the lowest free surface
within 8 m, filled into the footprints: :func:`earthgen.pipelines.scene.ground_surface`, the
ground the pipeline builds on), scored
against the nDSM (dsm - dtm, resampled to 1 m) inside the footprints: RMSE, bias, MAE in metres
(:func:`earthgen.geo.heights.height_rmse`). The texture stage does not change heights: it runs
one step. Results are merged into benchmarks/results/alexandria_heights.json
(``generated_scenes``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EARTHGEN_DATA", ROOT.parent / "shared" / "data")) / "alexandria_dsm_dtm"


def ground_fill(surface: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The generated scene's bare ground (a DTM) under its surface ``[H, W]``: the lowest free
    surface within 8 m, filled into the rest (:func:`earthgen.pipelines.scene.ground_surface`)."""
    import torch

    from earthgen.pipelines.scene import ground_surface

    return ground_surface(
        torch.from_numpy(surface.astype(np.float32)), torch.from_numpy(free)
    ).numpy()


def main() -> int:
    import torch

    from earthgen.classes import CLASS_ID
    from earthgen.geo.heights import height_caps, height_map, height_rmse, read_alexandria
    from earthgen.pipelines.scene import load_scene_pipeline

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", default=str(DATA))
    p.add_argument("--size-m", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="structure flow steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "alexandria_heights.json")
    )
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    al = read_alexandria(a.root, gsd=1.0)
    H, W = al["semantic"].shape
    n = a.size_m
    r0, c0 = (H - n) // 2, (W - n) // 2
    win = (slice(r0, r0 + n), slice(c0, c0 + n))
    sem = al["semantic"][win]
    hm = height_map(al["layout"])
    tops, base = hm.top[win], np.nan_to_num(hm.base[win])
    ndsm, fp = al["ndsm"][win], al["footprints"][win]
    pipe = load_scene_pipeline("default", "cpu")
    res = {}
    data = {
        "heights": tops,
        "height_base": base,
        "height_cap": height_caps(sem),
    }  # as --heights data
    for name, kw in (("today", {}), ("data", data)):
        t0 = time.perf_counter()
        out = pipe(
            semantic=sem,
            gsd=1.0,
            num_inference_steps=a.steps,
            texture_steps=1,
            generator=torch.Generator().manual_seed(a.seed),
            **kw,
        )
        surf = np.nan_to_num(out.height)
        free = sem != CLASS_ID["building"]
        above = surf - ground_fill(surf, free)
        res[name] = {
            k: round(v, 3) if isinstance(v, float) else v
            for k, v in height_rmse(above, ndsm, fp).items()
        }
        res[name]["median_building_height_m"] = round(float(np.median(above[fp])), 2)
        res[name]["p95_building_height_m"] = round(float(np.percentile(above[fp], 95)), 2)
        res[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, res[name], flush=True)
    res["settings"] = {
        "crop_m": n,
        "voxel_m": 1.0,
        "structure_steps": a.steps,
        "texture_steps": 1,
        "seed": a.seed,
        "footprint_pixels": int(fp.sum()),
        "reference": "nDSM (dsm - dtm) resampled to 1 m, inside footprints",
    }
    path = Path(a.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["generated_scenes"] = res
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
