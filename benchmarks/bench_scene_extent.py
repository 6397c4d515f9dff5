"""Scene cost and seams as the extent grows (issue 22 §3-4), CPU, JSON results.

    python benchmarks/bench_scene_extent.py --sizes 128,256,512 --steps 2
    python benchmarks/bench_scene_extent.py --sizes 128,256 --steps 2 --tree /tmp/old  # a peer
    python benchmarks/bench_scene_extent.py --sizes 128,256,512 --steps 1 --stream --export \
        --out benchmarks/results/scene_extent_stream.json   # windows streamed to disk, + exports

Each size runs in a fresh subprocess (its own peak RSS): the default scene models conditioned on
the Helsinki OSM fixture around the centre of the city (1 m voxels, 16 m overlap), no
orthophoto (the image model's cost is measured in benchmarks/bench_tiled.py). Reported per size:
seconds and s/km^2 (wall and CPU: on a shared machine the CPU time is the comparable one), windows
and their coverage ratio (window cells over the cells needed with
exactly the requested overlap, per axis), voxels textured per km^2 (the texture stage's work,
counted by a wrapper around the texture flow), peak RSS, and the height steps across window
borders vs elsewhere (:func:`earthgen.evaluation.scene.seam_steps`). ``--tree`` runs the same
measurement on another checkout (e.g. the previous commit) in the same run, for ratios.
``--stream`` streams every finished window to a temporary folder (``stream_to=``, the default of
``earthgen scene``) instead of keeping the scene in memory; ``--export`` then also writes the
command's files (meshes, PLYs, renders; :func:`earthgen.export3d.save_scene_store` and the
oblique view and turntable) and reports their CPU seconds and the peak RSS of the whole run.
Results: benchmarks/results/scene_extent.json (or --out).
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

ROOT = Path(__file__).resolve().parents[1]
HELSINKI = (
    Path(os.environ.get("EARTHGEN_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    / "osm"
    / "Helsinki.osm.pbf"
)
CENTER = (60.1699, 24.9384)


def one(size_m: int, steps: int, seed: int, stream: bool = False, export: bool = False) -> dict:
    import shutil
    import tempfile

    import numpy as np
    import torch

    from earthgen.geo.layout import build_layout
    from earthgen.pipelines.scene import load_scene_pipeline

    torch.set_num_threads(1)
    lay = build_layout(HELSINKI, center=CENTER, size=(size_m, size_m), gsd=1.0)
    pipe = load_scene_pipeline("default", "cpu")
    pipe.set_progress_bar_config(disable=True)
    counted = {"voxel_evals": 0}
    fwd = pipe.texture_flow.forward

    def counting(x, *a, **k):
        counted["voxel_evals"] += len(x.feats)
        return fwd(x, *a, **k)

    pipe.texture_flow.forward = counting
    tmp = Path(tempfile.mkdtemp(prefix="bench_scene_"))
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = pipe(
        semantic=lay.semantic,
        gsd=1.0,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        **({"stream_to": tmp / "chunks"} if stream else {}),
    )
    sec = time.perf_counter() - t0
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    km2 = size_m**2 / 1e6
    r = {
        "size_m": size_m,
        "km2": km2,
        "windows": len(out.windows),
        "stream": stream,
        "voxels": int(out.store.n_voxels if stream else len(out.coords)),
        "seconds": round(sec, 2),
        "seconds_per_km2": round(sec / km2, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_km2": round(cpu / km2, 1),
        "texture_voxel_evals_per_km2": round(counted["voxel_evals"] / km2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    try:
        from earthgen.evaluation.scene import seam_steps
        from earthgen.pipelines.scene import coverage_ratio

        r.update(seam_steps(out.height, out.windows, pipe.window))
        r["coverage_ratio_per_axis"] = round(coverage_ratio(size_m, pipe.window, 16), 4)
    except ImportError:  # an older checkout
        pass
    r["height_p99_m"] = float(np.nanpercentile(out.height, 99))
    if export:
        u2 = resource.getrusage(resource.RUSAGE_SELF)
        files = _export(out, tmp / "out", stream)
        u3 = resource.getrusage(resource.RUSAGE_SELF)
        r["export_cpu_seconds"] = round(
            (u3.ru_utime - u2.ru_utime) + (u3.ru_stime - u2.ru_stime), 2
        )
        r["export_mb"] = round(sum(p.stat().st_size for p in files) / 2**20, 1)
        r["peak_rss_gb_with_export"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return r


def _export(out, folder: Path, stream: bool) -> list[Path]:
    """The files ``earthgen scene`` writes from ``out`` (as its ``save_outputs``): meshes, PLYs,
    render.png, oblique.png and a 24-frame turntable; returns their paths."""
    import argparse

    from earthgen.commands.scene import save_outputs

    args = argparse.Namespace(
        render_size=512,
        views=4,
        turntable=24,
        steps=1,
        guidance=2.0,
        model="default",
        heights="model",
        dem=None,
    )
    folder.mkdir(parents=True)
    save_outputs(folder, out, {}, args, 0, 0.0)
    return [p for p in folder.rglob("*") if p.is_file()]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="128,256,512", help="comma list of square sides, metres")
    p.add_argument(
        "--steps", type=int, default=2, help="flow steps of both stages (cost scales with it)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tree", default=None, help="another checkout to measure in the same run (a peer)"
    )
    p.add_argument("--peer-sizes", default=None, help="sizes for the peer (default: --sizes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scene_extent.json"))
    p.add_argument(
        "--stream", action="store_true", help="stream finished windows to disk (stream_to=)"
    )
    p.add_argument(
        "--export", action="store_true", help="also write the command's files (with --stream)"
    )
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.one, a.steps, a.seed, a.stream, a.export)))
        return 0
    sizes = [int(s) for s in a.sizes.split(",")]
    results: dict = {
        "settings": {
            "steps": a.steps,
            "seed": a.seed,
            "threads": 1,
            "layout": "Helsinki OSM fixture",
            "center": CENTER,
            "voxel_m": 1.0,
            "overlap_m": 16,
            "orthophoto": False,
            "stream": a.stream,
            "export": a.export,
        },
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    for name, tree in (("this", ROOT), ("peer", Path(a.tree) if a.tree else None)):
        if tree is None:
            continue
        rows = []
        for s in (
            sizes
            if name == "this" or not a.peer_sizes
            else [int(v) for v in a.peer_sizes.split(",")]
        ):
            env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
            cmd = (
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--one",
                    str(s),
                    "--steps",
                    str(a.steps),
                    "--seed",
                    str(a.seed),
                ]
                + (["--stream"] if a.stream and name == "this" else [])
                + (["--export"] if a.export and name == "this" else [])
            )
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(name, rows[-1], flush=True)
        base, cbase = rows[0]["seconds_per_km2"], rows[0]["cpu_seconds_per_km2"]
        for r in rows:
            r["s_per_km2_ratio_to_smallest"] = round(r["seconds_per_km2"] / base, 3)
            r["cpu_s_per_km2_ratio_to_smallest"] = round(r["cpu_seconds_per_km2"] / cbase, 3)
        results[name] = rows
    if "peer" in results:
        results["cpu_speedup_vs_peer"] = {
            str(r["size_m"]): round(q["cpu_seconds"] / r["cpu_seconds"], 3)
            for r, q in zip(results["this"], results["peer"], strict=False)
        }
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
