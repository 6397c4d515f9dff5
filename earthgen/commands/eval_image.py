"""``earthgen eval image``: class accuracy, FID/KID and layout fidelity of generated images, against
held-apart REAL data (default) or procedural tiles (``--evaluator``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DESCRIPTION = """\
Evaluate an image model.

Default (no --evaluator): against REAL held-apart data, with evaluators trained on real images
only (earthgen.evaluation.real, packaged RealNet weights):
  - class accuracy of images generated from the 16 UC Merced class captions (0.3 m/px), read by
    the UC Merced classifier; ceiling: the classifier on the held-apart real test images;
    target 0.6 (class_target_met);
  - FID/KID on that classifier's features, generated vs the held-apart real images; reference:
    the real train vs test images;
  - layout mIoU of images generated (render-then-refine, --strength) from held-apart Dubai masks
    (1 m/px) and, with --osm, from the Monaco / Helsinki / Kotka OSM layouts, read by the Dubai
    segmenter; ceiling: the segmenter on the real images of the same crops; target: 0.5, or 80 %
    of the ceiling when the ceiling is below 0.6 (layout_target_met).
Every score is written beside its real-data ceiling.

With --evaluator DIR: on held-out procedural tiles, with a TileNet trained offline on them
(`earthgen train evaluator`): control mIoU, GSD error, Cls-OA and FID/KID.
"""

EPILOG = """\
examples:
  earthgen eval image --osm ../shared/fixtures --out eval_real.json
  earthgen eval image --model runs/control/pipeline --n-per-class 8 --steps 30 --out eval.json
  earthgen train evaluator --steps 2000 --out runs/evaluator
  earthgen eval image --model runs/control/pipeline --evaluator runs/evaluator --n 64 \\
      --out eval.json
"""


def register(sub) -> None:
    from earthgen.commands._args import parse_float, parse_int

    p = sub.add_parser(
        "image",
        help="evaluate an image model (real data by default)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="default", help="pipeline folder or hub id (default: the packaged model)"
    )
    p.add_argument(
        "--steps",
        type=parse_int,
        default=None,
        help="sampling steps (default: 20 real-data mode, 30 with --evaluator)",
    )
    p.add_argument(
        "--guidance",
        type=parse_float,
        default=None,
        help="guidance scale (default: 4 real-data mode, 5 with --evaluator)",
    )
    p.add_argument(
        "--batch-size", type=parse_int, default=4, help="images per pipeline call, 1..1024"
    )
    p.add_argument(
        "--control-end",
        type=parse_float,
        default=None,
        help="fraction of the sampling steps that run the control branch (default: the "
        "model's own)",
    )
    p.add_argument("--seed", type=parse_int, default=0, help="seed of the real-data evaluation")
    p.add_argument("--out", default=None, help="write the metrics as JSON here (.json)")
    r = p.add_argument_group("real-data evaluation (default)")
    r.add_argument(
        "--n-per-class",
        type=parse_int,
        default=4,
        help="images per UC Merced class (16 classes; default 4)",
    )
    r.add_argument(
        "--strength",
        type=parse_float,
        default=None,
        help="render-then-refine strength for layouts, in (0, 1] (default: "
        "earthgen.prior.DEFAULT_STRENGTH, 0.7; 1 = pure noise, no prior)",
    )
    r.add_argument(
        "--osm",
        metavar="FIXTURES_DIR",
        default=None,
        help="also score the Monaco / Helsinki / Kotka OSM layouts from "
        "FIXTURES_DIR/osm/ (e.g. ../shared/fixtures)",
    )
    r.add_argument(
        "--data-root",
        default=None,
        help="real data folder (default: $EARTHGEN_DATA, else ../shared/data)",
    )
    r.add_argument("--realnet", default=None, help="RealNet folder (default: the packaged one)")
    t = p.add_argument_group("procedural-tile evaluation (--evaluator)")
    t.add_argument(
        "--evaluator",
        default=None,
        help="TileNet folder (earthgen train evaluator): evaluate on procedural tiles",
    )
    t.add_argument("--n", type=parse_int, default=32, help="number of generated images, 1..100000")
    t.add_argument("--no-layout", action="store_true", help="do not give the layout to the model")
    p.set_defaults(func=run, check=_check)


def _check(args: argparse.Namespace) -> None:
    """Validate every numeric flag and path before a model loads (UserInputError: one line)."""
    from earthgen.commands._args import SEED_MAX, check_number, check_output
    from earthgen.errors import UserInputError

    if args.out:
        check_output(args.out, "--out", exts=(".json",))
    check_number("--steps", args.steps, 1, 1000, integer=True)
    check_number("--batch-size", args.batch_size, 1, 1024, integer=True)
    check_number("--n", args.n, 1, 100_000, integer=True)
    check_number("--n-per-class", args.n_per_class, 1, 1000, integer=True)
    check_number("--guidance", args.guidance, 0.0, 100.0)
    check_number("--control-end", args.control_end, 0.0, 1.0)
    check_number("--seed", args.seed, 0, SEED_MAX, integer=True)
    check_number("--strength", args.strength, 0.0, 1.0, lo_open=True)
    ints = [("--steps", args.steps), ("--batch-size", args.batch_size)]
    ints += [("--n", args.n)] if args.evaluator else [("--n-per-class", args.n_per_class)]
    for flag, v in ints:
        if v is not None and v <= 0:
            raise UserInputError(f"{flag} must be an integer > 0, got {v}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise UserInputError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.control_end is not None and not (0.0 <= args.control_end <= 1.0):
        raise UserInputError(f"--control-end must be in [0, 1], got {args.control_end}")
    if args.evaluator:
        extra = [
            f
            for f, v in (
                ("--strength", args.strength),
                ("--osm", args.osm),
                ("--data-root", args.data_root),
                ("--realnet", args.realnet),
            )
            if v is not None
        ]
        if extra:
            raise UserInputError(
                f"{', '.join(extra)}: real-data options, not used with --evaluator"
            )
        return
    if args.no_layout:
        raise UserInputError("--no-layout applies to --evaluator mode only")
    if args.strength is not None:
        from earthgen.prior import check_strength

        check_strength(args.strength, "--strength")
    if args.osm is not None:
        from earthgen.evaluation.real import OSM_SPOTS

        d = Path(args.osm) / "osm"
        if not any((d / f).is_file() for f, _ in OSM_SPOTS.values()):
            raise UserInputError(
                f"--osm: no OSM fixtures in {d} (expected any of "
                f"{', '.join(f for f, _ in OSM_SPOTS.values())})"
            )
    from earthgen.datasets import data_root

    data_root(args.data_root)


def _load(args: argparse.Namespace):
    import torch

    from earthgen.models import resolve_model
    from earthgen.pipelines.image import load_pipeline

    path = resolve_model(args.model, "image")
    pipe = load_pipeline(path)
    if torch.cuda.is_available():
        pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    return pipe, path


def run(args: argparse.Namespace) -> int:
    from earthgen.io import write_json

    _check(args)
    if args.evaluator:
        from earthgen.errors import UserInputError
        from earthgen.evaluation.image import evaluate_image
        from earthgen.evaluation.tilenet import TileNet

        pipe, _ = _load(args)
        try:
            evaluator = TileNet.from_pretrained(args.evaluator)
        except (OSError, ValueError) as e:
            raise UserInputError(f"cannot load the evaluator {args.evaluator}: {e}") from None
        m = evaluate_image(
            pipe,
            evaluator,
            n=args.n,
            steps=args.steps or 30,
            guidance_scale=5.0 if args.guidance is None else args.guidance,
            batch_size=args.batch_size,
            use_layout=not args.no_layout,
            control_end=args.control_end,
        )
    else:
        from earthgen.evaluation.real import evaluate_real, osm_fixture_layouts

        osm = osm_fixture_layouts(args.osm) if args.osm else None
        pipe, path = _load(args)
        m = evaluate_real(
            pipe,
            n_per_class=args.n_per_class,
            steps=args.steps or 20,
            guidance_scale=4.0 if args.guidance is None else args.guidance,
            strength=args.strength,
            osm_layouts=osm,
            seed=args.seed,
            root=args.data_root,
            realnet=args.realnet,
            batch_size=args.batch_size,
            control_end=args.control_end,
            model=path,
        )
    print(json.dumps(m, indent=2))
    if args.out:
        write_json(args.out, m)
    return 0
