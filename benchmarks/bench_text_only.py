"""Text-only sampling cost of ``EarthImagePipeline`` against a plain diffusers loop (JSON results).

With no control maps (no layout, no ``controls``) the pipeline runs the UNet alone: the fused
control branch is skipped. This measures, in one run on the packaged default model at its native
size, the time per denoising step of

(a) ``EarthImagePipeline`` text + GSD only (classifier-free guidance on),
(b) a plain diffusers loop with the same UNet and scheduler:
    ``unet(x, t, encoder_hidden_states=..., class_labels=...)`` on the CFG batch, then
    ``scheduler.step``; the text embeddings and class labels are made once, outside the loop,
(c) for reference, the pipeline with the control branch in its null mode on every step (all
    maps empty, all weights 0: what text-only sampling ran before the branch was skipped),

and the ratio (a) / (b) (target <= 1.1). It also checks that (a) and (b) give the same latents
from the same noise, and reports how much (c) differs from (a) in the decoded images.

Usage: python benchmarks/bench_text_only.py [--out benchmarks/results/text_only_step_time.json]
       [--steps 10] [--threads 1] [--repeats 5]. Per-step time: the median over the timed runs
(variants interleaved) of the time between consecutive steps (``callback_on_step_end``), so
prompt encoding and decoding are excluded from (a) as from (b).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import numpy as np
import torch

from earthgen.io import write_json

PROMPT = "dense residential area with a river"
GSD = 1.0


def step_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each ``fn(tick)`` of ``fns`` ``repeats`` times (plus one warm-up), round-robin so that
    a changing machine load hits every variant alike; ``tick()`` is called after each step.
    Returns, per name, the seconds between consecutive ticks (a run's first step is excluded)."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            ticks: list[float] = []
            fn(lambda ticks=ticks: ticks.append(time.perf_counter()))
            if r:
                out[name] += list(np.diff(ticks))
    return out


@torch.no_grad()
def plain_loop(
    unet,
    scheduler,
    text: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    guidance: float,
    tick=None,
) -> torch.Tensor:
    """Plain diffusers sampling: ``text`` ``[2B, L, D]`` and ``labels`` ``[2B, E]`` (null half
    first), ``noise`` ``[B, 4, h, w]`` -> latents ``[B, 4, h, w]``."""
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = unet(x_in, t, encoder_hidden_states=text, class_labels=labels).sample
        uncond, cond = eps.chunk(2)
        x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        if tick is not None:
            tick()
    return x


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/results/text_only_step_time.json")
    ap.add_argument(
        "--model", default="default", help="pipeline folder (default: the packaged model)"
    )
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed runs per variant (after one warm-up)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--guidance", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from earthgen.models import float32_on_cpu, resolve_model
    from earthgen.pipelines.image import load_pipeline

    pipe = float32_on_cpu(load_pipeline(resolve_model(args.model, "image")))
    pipe.set_progress_bar_config(disable=True)
    side = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor  # native size
    shape = (
        1,
        int(pipe.unet.config.out_channels),
        side // pipe.vae_scale_factor,
        side // pipe.vae_scale_factor,
    )
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    calls = {"controlnet": 0}
    if pipe.controlnet is not None:
        fwd = pipe.controlnet.forward

        def counting(*a, **k):
            calls["controlnet"] += 1
            return fwd(*a, **k)

        pipe.controlnet.forward = counting

    def run_pipe(tick=None, null_branch: bool = False, output_type: str = "latent"):
        kw = {}
        if null_branch:  # the previous text-only path: empty maps at weight 0 on every step
            name = pipe.controlnet.condition_names[0]
            c = pipe.controlnet.condition_channels[0]
            kw = {
                "controls": {name: torch.zeros(1, c, side, side)},
                "control_scales": {name: 0.0},
                "control_guidance_end": 1.0,
            }
        cb = None if tick is None else (lambda p, i, t, d: tick() or d)
        return pipe(
            PROMPT,
            gsd=GSD,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            latents=noise.clone(),
            output_type=output_type,
            callback_on_step_end=cb,
            **kw,
        ).images

    # (b) the plain loop's conditions, made like the pipeline's (null half first)
    text = torch.cat([pipe.encode_prompt([""]), pipe.encode_prompt([PROMPT])])
    labels = None
    if pipe.metadata_encoder is not None:
        labels = torch.cat(
            [
                pipe.class_labels(GSD, None, 1, torch.ones(1, dtype=torch.bool)),
                pipe.class_labels(GSD, None, 1, None),
            ]
        )
    sched = copy.deepcopy(pipe.scheduler)

    fns = {
        "pipeline_text_only": lambda tick: run_pipe(tick),
        "plain_diffusers_loop": lambda tick: plain_loop(
            pipe.unet, sched, text, labels, noise, args.steps, args.guidance, tick
        ),
    }
    if pipe.controlnet is not None:
        fns["pipeline_null_branch"] = lambda tick: run_pipe(tick, null_branch=True)
    calls["controlnet"] = 0
    run_pipe()
    text_only_calls = calls["controlnet"]
    times = step_times(fns, args.repeats)

    lat_pipe = run_pipe()
    lat_plain = plain_loop(pipe.unet, sched, text, labels, noise, args.steps, args.guidance)
    img_new = run_pipe(output_type="np")[0]
    img_null = (
        run_pipe(null_branch=True, output_type="np")[0] if pipe.controlnet is not None else img_new
    )
    diff = np.abs(img_new.astype(np.float64) - img_null.astype(np.float64)) * 255.0

    med = {
        k: statistics.median(times[k]) if k in times else None
        for k in ("pipeline_text_only", "plain_diffusers_loop", "pipeline_null_branch")
    }
    ratio = med["pipeline_text_only"] / med["plain_diffusers_loop"]
    report = {
        "benchmark": "text_only_step_time",
        "model": resolve_model(args.model, "image"),
        "resolution_px": side,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "repeats": args.repeats,
        "device": "cpu",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
        "s_per_step_median": med,
        "ratio_pipeline_to_plain": ratio,
        "target_ratio_max": 1.1,
        "meets_target": ratio <= 1.1,
        "ratio_null_branch_to_plain": (
            med["pipeline_null_branch"] / med["plain_diffusers_loop"]
            if med["pipeline_null_branch"]
            else None
        ),
        "controlnet_calls_text_only": text_only_calls,
        "latents_pipeline_vs_plain_max_abs": float((lat_pipe - lat_plain).abs().max()),
        "image_text_only_vs_null_branch_255": {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
        },
        "notes": "per-step times exclude prompt encoding and decoding; the null-branch row is the "
        "previous text-only behaviour (control branch on every step with empty maps at weight 0); "
        "the image difference is of the decoded 0..1 images times 255, same noise",
    }
    print(
        f"pipeline {med['pipeline_text_only']:.4f} s/step, "
        f"plain {med['plain_diffusers_loop']:.4f} s/step "
        f"-> ratio {ratio:.3f}; null branch {med['pipeline_null_branch']} s/step; "
        f"image diff vs null branch max {diff.max():.1f} mean {diff.mean():.2f} /255"
    )
    print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
