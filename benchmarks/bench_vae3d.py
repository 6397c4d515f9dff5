"""3D VAE benchmark: sparse structure VAE vs a dense Conv3d VAE of the same depth and widths
(time and peak memory of one training step at 128^3 and 256^3), and the quality of trained
models on procedural world scenes (voxel IoU of the structure VAE on a 256^3 scene, render PSNR /
SSIM of the texture VAE on held-out views).

    python benchmarks/bench_vae3d.py                                    # CPU: sizes 64, 128, 256
    python benchmarks/bench_vae3d.py --structure-model runs/svae/model \\
        --texture-model runs/tvae/model

Every configuration runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is
its own; the dense model gets a memory cap (``--dense-limit-gb``) and is reported as "out of
memory" above it. Results: benchmarks/results/vae3d.json (or --out).
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- the dense twin: same levels, widths, blocks and heads as vae.structure.StructureVAE ---------


class _Norm(nn.Module):  # per-voxel LayerNorm over channels, as the sparse blocks use
    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.movedim(1, -1)).movedim(-1, 1)


class _Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n1, self.c1, self.n2, self.c2 = (
            _Norm(c),
            nn.Conv3d(c, c, 3, padding=1),
            _Norm(c),
            nn.Conv3d(c, c, 3, padding=1),
        )

    def forward(self, x):
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class DenseStructureVAE(nn.Module):
    def __init__(self, channels=(16, 32, 48, 64), latent=8, blocks=1):
        super().__init__()
        c = channels
        self.stem = nn.Conv3d(1, c[0], 3, padding=1)
        self.enc = nn.ModuleList(
            [
                nn.Sequential(*[_Res(c[i]) for _ in range(blocks)], nn.Conv3d(c[i], c[i + 1], 2, 2))
                for i in range(3)
            ]
        )
        self.enc_out = nn.Sequential(
            *[_Res(c[3]) for _ in range(blocks)], nn.Conv3d(c[3], 2 * latent, 1)
        )
        self.inp = nn.Conv3d(latent, c[3], 1)
        self.dec = nn.ModuleList(
            [nn.Sequential(*[_Res(c[i]) for _ in range(blocks)]) for i in (3, 2, 1)]
        )
        self.heads = nn.ModuleList([nn.Conv3d(c[i], 8, 1) for i in (3, 2, 1)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(c[i], c[i - 1], 2, 2) for i in (3, 2)])

    def forward(self, occ):  # occ [B, 1, L, L, L]
        h = self.stem(occ)
        for e in self.enc:
            h = e(h)
        mean, logvar = self.enc_out(h).chunk(2, 1)
        h = self.inp(mean + torch.randn_like(mean) * (0.5 * logvar).exp())
        loss = 0.0
        target = occ
        for lvl, (d, head) in enumerate(zip(self.dec, self.heads, strict=True)):
            h = d(h)
            logits = _shuffle(head(h))
            k = 2 ** (2 - lvl)
            lab = F.max_pool3d(target, k) if k > 1 else target
            loss = loss + F.binary_cross_entropy_with_logits(logits, lab)
            if lvl < 2:
                h = self.up[lvl](h)
        return loss


def _shuffle(x):  # [B, 8, X, Y, Z] -> [B, 1, 2X, 2Y, 2Z] (octant order x, y, z as the sparse model)
    B, _, X, Y, Z = x.shape
    return (
        x.reshape(B, 2, 2, 2, X, Y, Z)
        .permute(0, 4, 1, 5, 2, 6, 3)
        .reshape(B, 1, 2 * X, 2 * Y, 2 * Z)
    )


# --- one measurement (runs in a subprocess) -----------------------------------------------------


def scene_coords(L: int, seed: int = 11) -> np.ndarray:
    from earthgen.training.vae3d import tile_voxels, world_tile

    return tile_voxels(world_tile(seed, 0, L * 1.0, 1.0), L)


def measure(kind: str, L: int, steps: int, device: str = "cpu") -> dict:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = scene_coords(L)
    torch.manual_seed(0)
    if kind == "sparse":
        from earthgen.training.vae3d import batch_of
        from vae.structure import StructureVAE

        model = StructureVAE(channels=(16, 32, 48, 64)).to(device)
        x = batch_of([c], L, device)
        step = lambda: model(x)["loss"]  # noqa: E731
    else:
        model = DenseStructureVAE().to(device)
        occ = torch.zeros(1, 1, L, L, L, device=device)
        occ[0, 0, c[:, 0], c[:, 1], c[:, 2]] = 1
        step = lambda: model(occ)  # noqa: E731
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        alloc0 = torch.cuda.memory_allocated()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = {
        "kind": kind,
        "L": L,
        "device": device,
        "voxels": int(len(c)),
        "step_s": float(np.median(times)),
        "peak_rss_gb": peak / 2**20,
        "peak_over_setup_gb": (peak - before) / 2**20,
        "baseline_gb": base / 2**20,
    }
    if cuda:
        r["peak_cuda_gb"] = (torch.cuda.max_memory_allocated() - alloc0) / 2**30
    return r


def _hwm_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def run_one(
    kind: str,
    L: int,
    steps: int,
    limit_gb: float | None,
    device: str = "cpu",
    time_limit_s: float | None = None,
) -> dict:
    """One configuration in a subprocess; its peak resident memory is watched from here too, so
    a run stopped at ``time_limit_s`` still reports how much memory it had reached."""
    cmd = [sys.executable, __file__, "--_one", kind, str(L), str(steps), device]
    env = dict(os.environ)
    if limit_gb:
        env["BENCH_LIMIT_GB"] = str(limit_gb)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0, peak = time.perf_counter(), 0.0
    while p.poll() is None:
        peak = max(peak, _hwm_gb(p.pid) or 0.0)
        if time_limit_s and time.perf_counter() - t0 > time_limit_s:
            p.kill()
            p.wait()
            return {
                "kind": kind,
                "L": L,
                "device": device,
                "error": f"stopped after {time_limit_s:.0f} s (no training step finished)",
                "peak_rss_gb_when_stopped": round(peak, 3),
            }
        time.sleep(0.2)
    out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        oom = "MemoryError" in err or "alloc" in err or p.returncode < 0
        return {
            "kind": kind,
            "L": L,
            "device": device,
            "error": "out of memory" if oom else err[-400:],
            "limit_gb": limit_gb,
        }
    return json.loads(lines[-1])


# --- quality of trained models -------------------------------------------------------------------


def structure_quality(model_dir: str, L: int = 256, seed: int = 101) -> dict:
    """Voxel IoU of reconstructions (no teacher forcing) of one 256^3 scene per world preset
    (tile index i of the data seed has preset PRESETS[i]); the seed is not a training seed."""
    from earthgen.training.vae3d import PRESETS, batch_of, tile_voxels, world_tile
    from vae.structure import StructureVAE, voxel_metrics

    model = StructureVAE.from_pretrained(model_dir).eval()
    rows = []
    for i, preset in enumerate(PRESETS):
        c = tile_voxels(world_tile(seed, i, L * 1.0, 1.0), L)
        x = batch_of([c], L, "cpu")
        t = time.perf_counter()
        rec = model.reconstruct(x)
        rows.append(
            {"preset": preset}
            | voxel_metrics(rec.coords, x.coords)
            | {"seconds": time.perf_counter() - t}
        )
    return {"L": L, "scenes": rows, "mean_iou": float(np.mean([r["iou"] for r in rows]))}


def texture_quality(model_dir: str, scenes: int = 4, views: int = 4, size: int = 128) -> dict:
    from earthgen.training.vae3d import evaluate_texture, texture_pool
    from vae.texture import TextureVAE

    model = TextureVAE.from_pretrained(model_dir).eval()
    held = texture_pool(424242, scenes, 32.0, 1.0, 0.5)
    return evaluate_texture(model, held, views, size, 424242, "cpu") | {
        "scenes": scenes,
        "image_size": size,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        if os.environ.get("BENCH_LIMIT_GB"):  # an address-space cap (CPU runs only)
            lim = int(float(os.environ["BENCH_LIMIT_GB"]) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="64,128,256", help="grid sizes L (voxels per side)")
    ap.add_argument(
        "--steps", type=int, default=3, help="timed training steps per configuration (median)"
    )
    ap.add_argument(
        "--dense-limit-gb", type=float, default=20.0, help="address-space cap for the dense model"
    )
    ap.add_argument(
        "--structure-model", default=None, help="a trained StructureVAE folder: IoU on 256^3 scenes"
    )
    ap.add_argument(
        "--texture-model",
        default=None,
        help="a trained TextureVAE folder: PSNR/SSIM on held-out views",
    )
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=600.0,
        help="seconds per configuration before it is stopped",
    )
    ap.add_argument(
        "--device", default="cpu", help="cpu or cuda (GPU memory from torch.cuda peak stats)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vae3d.json"))
    args = ap.parse_args()
    from earthgen.io import write_json

    res = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "model": "StructureVAE channels (16, 32, 48, 64), 1 res block per level; "
        "dense twin: same levels, widths, blocks and heads with Conv3d / ConvTranspose3d",
        "speed": [],
    }
    if Path(args.out).exists():  # keep the other half of an earlier run
        old = json.loads(Path(args.out).read_text())
        res.update(
            {k: v for k, v in old.items() if k in ("structure_quality", "texture_quality", "speed")}
        )
    if not args.skip_speed:
        res["speed"] = []
        for L in (int(s) for s in args.sizes.split(",")):
            for kind in ("sparse", "dense"):
                cap = args.dense_limit_gb if kind == "dense" and args.device == "cpu" else None
                r = run_one(kind, L, args.steps, cap, args.device, args.time_limit)
                res["speed"].append(r)
                print(json.dumps(r), flush=True)
                write_json(
                    args.out, res
                )  # after every configuration: a long run keeps what it measured
    if args.structure_model:
        res["structure_quality"] = structure_quality(args.structure_model) | {
            "model": args.structure_model
        }
        print("structure", json.dumps(res["structure_quality"]), flush=True)
        write_json(args.out, res)
    if args.texture_model:
        res["texture_quality"] = texture_quality(args.texture_model) | {"model": args.texture_model}
        print("texture", json.dumps(res["texture_quality"]))
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
