"""``python -m earthgen.models <step>``: the build steps of the packaged default image model
(:mod:`earthgen.training.build`, ``docs/models.md``)."""

from __future__ import annotations

import argparse
import sys

from earthgen.errors import UserInputError
from earthgen.models import folder_size_mb
from earthgen.training.build import (
    attach_control,
    calibrate_vae,
    finetune_vae_decoder,
    init_box_model,
    init_image_model,
    init_layout_model,
    package_image_model,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m earthgen.models",
        description="Build steps of the packaged default image model (docs/models.md).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init-image", help="a fresh default-size image pipeline")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser(
        "init-boxes", help="a fresh box-conditioned image pipeline (dense box map, no control)"
    )
    s.add_argument("--out", required=True)
    s.add_argument(
        "--size", default="compact", help="tiny | compact | small (default compact: 4x VAE)"
    )
    s.add_argument(
        "--raster-dim",
        type=int,
        default=8,
        help="class dimensions of the dense box map (default 8)",
    )
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser(
        "init-layout",
        help="a fresh image pipeline taking the layout at the UNet input (no control)",
    )
    s.add_argument("--out", required=True)
    s.add_argument(
        "--size", default="compact", help="tiny | compact | small (default compact: 4x VAE)"
    )
    s.add_argument(
        "--vae",
        default=None,
        help="take the trained VAE of this pipeline (or AutoencoderKL) folder",
    )
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser(
        "calibrate-vae", help="set the VAE latent scaling factor from procedural tiles or a dataset"
    )
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--data",
        default=None,
        help="a detection, image-caption or semantic-mask dataset to calibrate on "
        "(default: procedural tiles)",
    )
    s = sub.add_parser(
        "finetune-vae-decoder", help="fine-tune the VAE decoder only (latent space unchanged)"
    )
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--seed", type=int, default=2)
    s.add_argument("--max-minutes", type=float, default=None)
    s.add_argument(
        "--data",
        default=None,
        help="a detection, image-caption or semantic-mask dataset to train on "
        "(default: procedural tiles)",
    )
    s = sub.add_parser(
        "attach-control", help="re-initialise the control branch from the trained UNet"
    )
    s.add_argument("src")
    s.add_argument("--out", required=True)
    s = sub.add_parser(
        "package-image",
        help="write a pipeline as the packaged default (fp16, text encoder referenced)",
    )
    s.add_argument("src")
    s.add_argument("--out", default=None)
    s.add_argument("--fp32", action="store_true", help="keep float32 weights")
    s.add_argument(
        "--vae", default=None, help="a VAE folder with a fine-tuned decoder (finetune-vae-decoder)"
    )
    s.add_argument(
        "--control-end",
        type=float,
        default=None,
        help="default control_guidance_end of the packaged model: the control branch runs on this "
        "fraction of the sampling steps (the first ones); default: keep the source's",
    )
    args = p.parse_args(argv)
    try:
        if args.cmd == "init-image":
            print(init_image_model(args.out, args.seed))
        elif args.cmd == "init-boxes":
            print(init_box_model(args.out, args.size, args.raster_dim, args.seed))
        elif args.cmd == "init-layout":
            print(init_layout_model(args.out, args.size, args.vae, args.seed))
        elif args.cmd == "calibrate-vae":
            print(
                f"scaling_factor {calibrate_vae(args.src, args.out, data=args.data):.5f}; "
                f"written to {args.out}"
            )
        elif args.cmd == "finetune-vae-decoder":
            r = finetune_vae_decoder(
                args.src,
                args.out,
                steps=args.steps,
                batch_size=args.batch_size,
                resolution=args.resolution,
                lr=args.lr,
                seed=args.seed,
                max_minutes=args.max_minutes,
                data=args.data,
            )
            print(f"{r['steps']} steps in {r['seconds']} s; written to {args.out}")
        elif args.cmd == "attach-control":
            print(attach_control(args.src, args.out))
        else:
            out = package_image_model(
                args.src, args.out, fp16=not args.fp32, vae=args.vae, control_end=args.control_end
            )
            print(f"{out}: {folder_size_mb(out):.1f} MB")
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
