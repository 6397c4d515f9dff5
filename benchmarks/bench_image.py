"""Benchmarks of the image pipeline (JSON results).

1. Fused control branch vs diffusers' MultiControlNetModel (one ControlNet per condition), same
   UNet, 3 dense conditions: sampling time per step and peak memory.
2. Tiled (unbounded) sampling: time per megapixel and peak memory from 1 to 16 megapixels
   (random UNet, explicit 8-latent overlap). The packaged default model's tiled generation
   (s/MP and peak RSS per size, before/after the overlap change): ``benchmarks/bench_tiled.py``.

Usage: python benchmarks/bench_image.py [--out benchmarks/results/image.json] [--device cpu|cuda]
       [--size small|tiny]. Absolute numbers depend on the machine; the ratios are the point.
Peak memory: the CUDA allocator peak on GPU; not measured on CPU (null).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from earthgen.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str, base: None = None) -> float | None:
    """CUDA allocator peak (MiB); None on CPU, where no allocator peak is available."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def build(size: str, device: str):
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        MultiControlNetModel,
        UNet2DConditionModel,
    )

    from controls import FusedControlNet

    ch = {"tiny": (32, 64), "small": (64, 128, 256), "base": (160, 320, 640, 640)}[size]
    n = len(ch)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=1 if size == "tiny" else 2,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
    )
    conds = {"layout": 13, "roads": 1, "height": 1}
    fused = FusedControlNet.from_unet(unet, conds)
    multi = MultiControlNetModel(
        [ControlNetModel.from_unet(unet, conditioning_channels=c) for c in conds.values()]
    )
    for m in (unet, vae, fused, multi):
        m.to(device).eval()
    return unet, vae, fused, multi, conds, DDIMScheduler(num_train_timesteps=1000)


@torch.no_grad()
def bench_fused_vs_multi(unet, fused, multi, conds, device, steps=5, res=256):
    lat = torch.randn(2, 4, res // 8, res // 8, device=device)  # CFG batch
    txt = torch.randn(2, 16, 64, device=device)
    maps = {k: torch.rand(2, c, res, res, device=device) for k, c in conds.items()}
    packed = fused.pack(maps)

    def run_fused():
        down, mid = fused(lat, 500, txt, packed)
        return unet(
            lat, 500, txt, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample

    def run_multi():
        down, mid = multi(
            lat,
            500,
            txt,
            controlnet_cond=list(maps.values()),
            conditioning_scale=[1.0] * 3,
            return_dict=False,
        )
        return unet(
            lat, 500, txt, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample

    def branch_fused():
        return fused(lat, 500, txt, packed)

    def branch_multi():
        return multi(
            lat,
            500,
            txt,
            controlnet_cond=list(maps.values()),
            conditioning_scale=[1.0] * 3,
            return_dict=False,
        )

    out = {}
    for name, fn in (
        ("fused", run_fused),
        ("multi_controlnet", run_multi),
        ("fused_branch_only", branch_fused),
        ("multi_controlnet_branches_only", branch_multi),
    ):
        fn()
        base = peak_reset(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = {
            "s_per_step": (time.perf_counter() - t0) / steps,
            "peak_mb": peak_mb(device, base),
        }
    out["speedup"] = out["multi_controlnet"]["s_per_step"] / out["fused"]["s_per_step"]
    out["speedup_control_branch"] = (
        out["multi_controlnet_branches_only"]["s_per_step"] / out["fused_branch_only"]["s_per_step"]
    )
    out["resolution_px"] = res
    return out


@torch.no_grad()
def bench_tiled(unet, vae, fused, sched, device, megapixels=(1, 4, 16), steps=2):
    from tiny_models import tiny_clip

    from earthgen.pipelines.image import EarthImagePipeline

    tok, text = tiny_clip(hidden=64, max_length=16)
    pipe = EarthImagePipeline(
        vae=vae,
        unet=unet,
        scheduler=sched,
        text_encoder=text.to(device),
        tokenizer=tok,
        controlnet=None,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for mp in megapixels:
        side = int(round((mp * 1e6) ** 0.5 / 64)) * 64
        base = peak_reset(device)
        t0 = time.perf_counter()
        pipe(
            "farmland",
            height=side,
            width=side,
            num_inference_steps=steps,
            guidance_scale=2.0,
            tile_size=32,
            tile_overlap=8,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
        dt = time.perf_counter() - t0
        rows.append(
            {
                "megapixels": side * side / 1e6,
                "side_px": side,
                "seconds": dt,
                "s_per_megapixel": dt / (side * side / 1e6),
                "peak_mb": peak_mb(device, base),
            }
        )
        print(f"tiled {side}x{side}: {dt:.2f} s, {rows[-1]['s_per_megapixel']:.2f} s/MP")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/image.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--size",
        default="tiny",
        choices=("tiny", "small", "base"),
        help="UNet widths: tiny 32/64, small 64/128/256, base 160/320/640/640 (half SD)",
    )
    ap.add_argument("--megapixels", default="1,4,16", help="tiled sizes; empty to skip")
    args = ap.parse_args()
    unet, vae, fused, multi, conds, sched = build(args.size, args.device)
    fm = bench_fused_vs_multi(unet, fused, multi, conds, args.device)
    print(
        f"fused {fm['fused']['s_per_step']:.3f} s/step "
        f"vs MultiControlNet {fm['multi_controlnet']['s_per_step']:.3f}"
        f" -> {fm['speedup']:.2f}x (control branch alone: {fm['speedup_control_branch']:.2f}x)"
    )
    mps = [float(x) for x in args.megapixels.split(",") if x]
    tiled = bench_tiled(unet, vae, fused, sched, args.device, mps) if mps else []
    report = {
        "benchmark": "image",
        "device": args.device,
        "model_size": args.size,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "fused_vs_multicontrolnet": fm,
        "tiled_latent_sampling": tiled,
        "notes": "tiled rows time the sampler only (output_type=latent), 2 steps, CFG on",
    }
    print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
