"""``earthgen eval scene``: geometry, semantic agreement, diversity and seams of generated 3D
scenes."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Evaluate a scene pipeline on held-out procedural tiles: for each condition mode (semantic map,
aerial image, none) and each tile, two scenes are generated (two seeds) and measured:
height error (m) against the true surface, building IoU (geometric: columns 2.5 m above their
surroundings vs the map's buildings), diversity between seeds (height difference, 1 - voxel IoU),
and the seam ratio (height steps across window borders / elsewhere; 1 = seamless). With an
evaluator (`earthgen train evaluator`) also the semantic mIoU of a segmentation of nadir renders
against the input map and FID/KID of TileNet features of renders vs the reference scenes' renders.
"""

EPILOG = """\
examples:
  earthgen eval scene --n 4 --size-m 112 --steps 20 --out eval_scene.json
  earthgen eval scene --model runs/scene-pipeline --evaluator runs/evaluator --modes semantic,none
"""

MODES = ("semantic", "image", "both", "none")


def _modes(text: str) -> tuple[str, ...]:
    m = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in m if x not in MODES]
    if not m or bad:
        raise argparse.ArgumentTypeError(
            f"modes must be a comma list of {', '.join(MODES)}, got {text!r}"
        )
    return m


def register(sub) -> None:
    from earthgen.commands._args import (
        SCENE_MAX_SIZE_M,
        guidance_float,
        number,
        seed_int,
        steps_int,
    )

    p = sub.add_parser(
        "scene",
        help="evaluate a 3D scene pipeline",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help="scene pipeline folder or hub id (default: embedded models)",
    )
    p.add_argument(
        "--evaluator", default=None, help="TileNet folder for semantic mIoU and FID/KID (optional)"
    )
    p.add_argument(
        "--n",
        type=number(1, 1000, integer=True),
        default=4,
        help="held-out tiles per mode, 1..1000",
    )
    p.add_argument(
        "--size-m",
        type=number(0.0, SCENE_MAX_SIZE_M, lo_open=True),
        default=112.0,
        help=f"scene size, metres, at most {SCENE_MAX_SIZE_M:g} (112: 2 x 2 windows)",
    )
    p.add_argument("--steps", type=steps_int, default=20, help="sampling steps, 1..1000")
    p.add_argument("--guidance", type=guidance_float, default=2.0, help="guidance scale, 0..100")
    p.add_argument(
        "--modes",
        type=_modes,
        default=("semantic", "image", "none"),
        help="comma list of " + ", ".join(MODES),
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write the metrics as JSON here (.json)")
    p.set_defaults(func=run, check=check_args)


def check_args(args: argparse.Namespace) -> None:
    """The output file, before a model loads (UserInputError: one line)."""
    from earthgen.commands._args import check_output

    if args.out:
        check_output(args.out, "--out", exts=(".json",))


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from earthgen.errors import UserInputError
    from earthgen.evaluation.scene import evaluate_scene
    from earthgen.io import write_json
    from earthgen.pipelines.scene import load_scene_pipeline

    pipe = load_scene_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    evaluator = None
    if args.evaluator:
        from earthgen.evaluation.tilenet import TileNet

        try:
            evaluator = TileNet.from_pretrained(args.evaluator).to(pipe.device)
        except (OSError, ValueError) as e:
            raise UserInputError(f"cannot load the evaluator {args.evaluator}: {e}") from None
    m = evaluate_scene(
        pipe,
        n=args.n,
        size_m=args.size_m,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        evaluator=evaluator,
        modes=args.modes,
    )
    print(json.dumps(m, indent=2))
    if args.out:
        write_json(args.out, m)
    return 0
