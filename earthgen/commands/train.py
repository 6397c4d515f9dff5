"""``earthgen train``: train the image models (the 3D models join in later releases)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train an image model on procedural world tiles (default) or an image-caption dataset.
Tasks: image-vae (the autoencoder), image-ldm (UNet + metadata encoder), image-control (the
fused control branch, UNet frozen). Runs on CPU or GPU; for several GPUs or nodes start it with
`accelerate launch -m earthgen train ...`. Checkpoints are atomic; --resume continues.
"""

EPILOG = """\
examples:
  earthgen train image-ldm --test-run --out outputs/train-test       # seconds on CPU
  earthgen train image-ldm --size small --steps 20000 --batch-size 32 --resolution 256 \\
      --mixed-precision bf16 --out runs/ldm
  earthgen train image-control --model runs/ldm/pipeline --steps 5000 --out runs/control
  earthgen train image-ldm --data captions.jsonl --model runs/ldm/pipeline --out runs/ft --resume

outputs (in --out): checkpoints/step_N/ (accelerate state + EMA), pipeline/ (EMA weights, loadable
with EarthImagePipeline.from_pretrained), loss.csv, loss.png, train_config.json, summary.json
"""


def register(sub) -> None:
    from earthgen.commands._args import positive_float, positive_int

    p = sub.add_parser("train", help="train the image models", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("image-vae", "image-ldm", "image-control", "evaluator"),
                   help="what to train (evaluator: the TileNet used by `earthgen eval`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="pipeline folder or hub id to start from (default: a fresh model)")
    p.add_argument("--size", default="tiny", choices=("tiny", "small"), help="size of a fresh model (default tiny)")
    p.add_argument("--data", default="world", help="'world' (procedural tiles) or an image-caption dataset path")
    p.add_argument("--resolution", type=positive_int, default=64, help="training image size, pixels (multiple of 64)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=None, help="total steps (default 1000; 20 with --test-run)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cond-dropout", type=float, default=0.1, help="drop probability of each condition")
    p.add_argument("--save-every", type=positive_int, default=500, help="checkpoint every N steps")
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--test-run", action="store_true",
                   help="tiny model, batch 2, 64 px, 20 steps unless --steps: a smoke test in seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from earthgen.training.image import TrainConfig, train

    if args.task == "evaluator":
        from earthgen.evaluation.tilenet import train_tilenet

        steps = args.steps or (20 if args.test_run else 2000)
        s = train_tilenet(args.out, steps=steps, batch_size=2 if args.test_run else args.batch_size,
                          resolution=64 if args.test_run else max(args.resolution, 64), seed=1000 + args.seed,
                          width=16 if args.test_run else 32)
        first, last = (sum(v) / max(len(v), 1) for v in (s["first_losses"], s["last_losses"]))
        print(f"evaluator: {steps} steps; loss {first:.3f} -> {last:.3f}; saved to {args.out}")
        return 0

    cfg = TrainConfig(task=args.task, out=args.out, model=args.model, size=args.size, data=args.data,
                      resolution=args.resolution, batch_size=args.batch_size,
                      steps=args.steps or (20 if args.test_run else 1000), lr=args.lr,
                      grad_accum=args.grad_accum, mixed_precision=args.mixed_precision,
                      grad_checkpointing=args.grad_checkpointing, ema_decay=args.ema_decay,
                      cond_dropout=args.cond_dropout, save_every=args.save_every, log_every=args.log_every,
                      seed=args.seed, resume=args.resume, test_run=args.test_run)
    s = train(cfg)
    first = sum(s["first_losses"]) / max(len(s["first_losses"]), 1)
    last = sum(s["last_losses"]) / max(len(s["last_losses"]), 1)
    print(f"{cfg.task}: steps {s['started_at']}..{s['steps']} in {s['seconds']} s; "
          f"loss {first:.4f} -> {last:.4f}; model in {cfg.out}/pipeline")
    return 0
