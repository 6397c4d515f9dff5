"""``earthgen eval image``: control, resolution and classification fidelity and FID/KID of generated images."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Evaluate an image model on held-out procedural tiles: control fidelity (mIoU of a segmentation
of the generated images against the input layouts), resolution fidelity (GSD error), zero-shot
scene classification accuracy (Cls-OA) and FID/KID, all measured with an evaluator network
trained offline on procedural tiles (`earthgen train evaluator`).
"""

EPILOG = """\
examples:
  earthgen train evaluator --steps 2000 --out runs/evaluator
  earthgen eval image --model runs/control/pipeline --evaluator runs/evaluator --n 64 --out eval.json
"""


def register(sub) -> None:
    from earthgen.commands._args import positive_int

    p = sub.add_parser("image", help="evaluate an image model", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="pipeline folder or hub id (default: the packaged model)")
    p.add_argument("--evaluator", required=True, help="TileNet folder (earthgen train evaluator)")
    p.add_argument("--n", type=positive_int, default=32, help="number of generated images")
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--no-layout", action="store_true", help="do not give the layout to the model")
    p.add_argument("--control-end", type=float, default=None,
                   help="fraction of the sampling steps that run the control branch (default: the model's own)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from earthgen.errors import UserInputError
    from earthgen.evaluation.image import evaluate_image
    from earthgen.evaluation.tilenet import TileNet
    from earthgen.io import write_json
    from earthgen.models import resolve_model
    from earthgen.pipelines.image import load_pipeline

    pipe = load_pipeline(resolve_model(args.model, "image"))
    try:
        evaluator = TileNet.from_pretrained(args.evaluator)
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot load the evaluator {args.evaluator}: {e}") from None
    if torch.cuda.is_available():
        pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    m = evaluate_image(pipe, evaluator, n=args.n, steps=args.steps, guidance_scale=args.guidance,
                       batch_size=args.batch_size, use_layout=not args.no_layout, control_end=args.control_end)
    print(json.dumps(m, indent=2))
    if args.out:
        write_json(args.out, m)
    return 0
