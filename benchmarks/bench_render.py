"""Benchmark of the 2DGS surfel rasterizer (JSON results).

Scene: a procedural world tile (earthgen.world, seed 3) as surfels, one per ground-sample: a
600 m x 600 m tile at 1 m gives 360 000 surfels on the surface height (terrain + buildings and
trees), coloured by the tile's RGB render, oriented by the surface slope. Camera: an orbit view
(renderers.cameras.orbit_rig) 35 degrees above the horizon at 1024 x 1024.

Measured: seconds per frame (median of --repeats after one warm-up) of the torch backend on the
CPU (forward only, no autograd), a forward + backward step on a smaller view, and, when CUDA
and gsplat are available, gsplat's frames/s and its largest difference from the torch backend
on a 256 x 256 view.

Usage: python benchmarks/bench_render.py [--out benchmarks/results/render.json] [--small]
       [--size 1024] [--repeats 3] [--device cpu|cuda] [--threads 1,2]
--small: a 150 m x 150 m tile (22 500 surfels) at 256 x 256, for a quick run.
CPU timings depend heavily on the load of the machine: on a shared VM whose cores are busy, torch's
multi-threaded kernels can be much slower than one thread, so the torch backend is timed for each
of --threads (default: 1 and torch's default); the load average is recorded next to them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from earthgen.io import write_json
from renderers.cameras import orbit_rig
from renderers.rasterization import rasterization_2dgs


def terrain_surfels(extent_m: float, gsd: float = 1.0, seed: int = 3) -> dict[str, torch.Tensor]:
    """Surfels on the surface of a world tile: means [N, 3], quats [N, 4], scales [N, 3],
    opacities [N], colors [N, 3]; one per ``gsd`` metres."""
    from earthgen.world import generate_world

    size = int(round(extent_m / gsd))
    tile = generate_world(seed=seed, size=size, gsd=gsd)
    h = tile.height.astype(np.float64) + tile.object_height.astype(np.float64)  # surface, m
    xs, ys = tile.grid.xs, tile.grid.ys
    gx, gy = np.meshgrid(xs, ys)
    dh_drow, dh_dcol = np.gradient(h, gsd)
    n = np.stack([-dh_dcol, dh_drow, np.ones_like(h)], -1)  # rows run south: dh/dy = -dh/drow
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    # Quaternion (wxyz) of the shortest rotation taking +z to n.
    w = 1.0 + n[..., 2]
    q = np.stack([w, -n[..., 1], n[..., 0], np.zeros_like(w)], -1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    N = h.size
    return {
        "means": torch.from_numpy(np.stack([gx, gy, h], -1).reshape(N, 3)).float(),
        "quats": torch.from_numpy(q.reshape(N, 4)).float(),
        "scales": torch.tensor([0.55 * gsd, 0.55 * gsd, 0.01]).expand(N, 3).contiguous(),
        "opacities": torch.full((N,), 0.9),
        "colors": torch.from_numpy(tile.rgb.reshape(N, 3).astype(np.float32) / 255.0),
        "center": torch.tensor([0.0, 0.0, float(np.median(h))]),
    }


def camera(scene: dict, extent_m: float, size: int, device: str):
    V, K = orbit_rig(
        scene["center"],
        radius_m=0.95 * extent_m,
        elevation_deg=35.0,
        n=1,
        width=size,
        height=size,
        fov_x_deg=60.0,
        start_azimuth_deg=30.0,
    )
    return V.to(device), K.to(device)


def render(scene: dict, V, K, size: int, backend: str, device: str, **kw):
    args = [scene[k].to(device) for k in ("means", "quats", "scales", "opacities", "colors")]
    return rasterization_2dgs(*args, V, K, size, size, render_mode="RGB+ED", backend=backend, **kw)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def bench_forward(scene, extent, size, backend, device, repeats) -> dict:
    V, K = camera(scene, extent, size, device)
    with torch.no_grad():
        med, runs = timed(lambda: render(scene, V, K, size, backend, device), repeats, device)
        out = render(scene, V, K, size, backend, device)
    return {
        "backend": backend,
        "device": device,
        "image_px": [size, size],
        "s_per_frame": round(med, 4),
        "frames_per_s": round(1.0 / med, 3),
        "runs_s": [round(r, 4) for r in runs],
        "threads": torch.get_num_threads(),
        "coverage": round(float((out[1] > 0.5).float().mean()), 4),
        "meta_backend": out[-1]["backend"],
    }


def bench_train_step(scene, extent, size, device, repeats) -> dict:
    """Forward + backward of a photometric-style loss w.r.t. means, colours and opacities."""
    V, K = camera(scene, extent, size, device)
    params = {
        k: scene[k].to(device).clone().requires_grad_(k in ("means", "colors", "opacities"))
        for k in ("means", "quats", "scales", "opacities", "colors")
    }

    def step():
        out = rasterization_2dgs(*params.values(), V, K, size, size, backend="torch")
        out[0].square().mean().backward()
        for p in params.values():
            p.grad = None

    med, runs = timed(step, repeats, device)
    return {
        "backend": "torch",
        "device": device,
        "image_px": [size, size],
        "s_per_step": round(med, 4),
        "threads": torch.get_num_threads(),
        "runs_s": [round(r, 4) for r in runs],
    }


def gsplat_vs_torch(scene, extent, size) -> dict:
    V, K = camera(scene, extent, size, "cuda")
    with torch.no_grad():
        g = render(scene, V, K, size, "gsplat", "cuda")
        t = render(scene, V, K, size, "torch", "cuda")
    d = {
        name: float((g[i][..., sl] - t[i][..., sl]).abs().max())
        for name, i, sl in (
            ("colors", 0, slice(0, 3)),
            ("alphas", 1, slice(None)),
            ("normals", 2, slice(None)),
        )
    }
    cov = t[1][..., 0] > 0.5
    d["expected_depth_rel"] = float(
        ((g[0][..., 3] - t[0][..., 3]).abs() / t[0][..., 3].clamp_min(1e-6))[cov].max()
    )
    d["image_px"] = [size, size]
    return d


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/render.json")
    ap.add_argument("--small", action="store_true", help="150 m tile at 256 x 256 (quick)")
    ap.add_argument(
        "--size", type=int, default=None, help="image side (px); default 1024 (256 with --small)"
    )
    ap.add_argument(
        "--train-size", type=int, default=256, help="image side of the forward+backward step"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--threads",
        default=f"1,{torch.get_num_threads()}",
        help="comma-separated CPU thread counts to time the torch backend with",
    )
    args = ap.parse_args()
    extent = 150.0 if args.small else 600.0
    size = args.size or (256 if args.small else 1024)
    t0 = time.perf_counter()
    scene = terrain_surfels(extent)
    build_s = time.perf_counter() - t0
    n = int(scene["means"].shape[0])
    report = {
        "benchmark": "render_2dgs",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "scene": {
            "source": "earthgen.world seed 3, surface = terrain + objects",
            "extent_m": extent,
            "surfels": n,
            "surfel_sigma_m": 0.55,
            "opacity": 0.9,
            "build_s": round(build_s, 3),
            "camera": "orbit_rig: radius 0.95 x extent, elevation 35 deg, fov 60 deg",
        },
        "render_mode": "RGB+ED",
    }
    threads = (
        [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    )
    rows, train = [], []
    for nt in dict.fromkeys(threads):
        torch.set_num_threads(nt)
        rows.append(bench_forward(scene, extent, size, "torch", args.device, args.repeats))
        train.append(
            bench_train_step(scene, extent, args.train_size, args.device, max(1, args.repeats))
        )
    report["train_step"] = train
    gsplat_ok = False
    if args.device == "cuda":
        try:
            import gsplat  # noqa: F401

            gsplat_ok = True
        except ImportError:
            pass
    if gsplat_ok:
        rows.append(bench_forward(scene, extent, size, "gsplat", "cuda", max(args.repeats, 10)))
        report["gsplat_vs_torch_max_abs_diff"] = gsplat_vs_torch(scene, extent, 256)
    report["forward"] = rows
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["notes"] = (
        "forward = one RGB+ED frame without autograd; train_step = forward + backward of "
        "mean squared colour w.r.t. means, colours, opacities; gsplat rows only with CUDA + gsplat"
    )
    best = min((r for r in rows if r["backend"] == "torch"), key=lambda r: r["s_per_frame"])
    report["summary"] = (
        f"{n} surfels, {size}x{size}, torch on {args.device}: {best['s_per_frame']:.3f} s/frame "
        f"({best['threads']} threads)"
    )
    for r in rows:
        print(
            f"{r['backend']} on {r['device']} ({r['threads']} threads): "
            f"{n} surfels, {size}x{size}: "
            f"{r['s_per_frame']:.3f} s/frame ({r['frames_per_s']:.2f} fps), "
            f"coverage {r['coverage']:.2f}"
        )
    for ts in train:
        print(
            f"torch forward+backward {args.train_size}x{args.train_size} "
            f"({ts['threads']} threads): "
            f"{ts['s_per_step']:.3f} s/step"
        )
    if math.isfinite(rows[0]["s_per_frame"]):
        print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
