"""``earthgen augment``: more detection training data from box-conditioned generation."""

from __future__ import annotations

import argparse

# --n: generated images per run
MAX_N = 1_000_000

DESCRIPTION = """\
Augment an object-detection dataset (DOTA labelTxt, COCO, YOLO / YOLO-OBB, VOC, CSV; horizontal or
rotated boxes) with generated images:

  1. sample new box layouts from the dataset: whole-layout 90-degree turns and mirrors, box
     jitter, copy-paste of objects from other images, rare classes first (class weights
     count^-rebalance); classes whose every box is axis-aligned (round storage tanks, ...)
     stay axis-aligned in a rotated dataset (--upright to choose them);
  2. generate one image per layout with a box-conditioned EarthImagePipeline (`earthgen train
     image-boxes`; default: the small packaged model, trained on procedural world tiles),
     prompted with the layout's class counts;
     --inpaint keeps the real source image and paints only the pasted objects (box-conditioned
     inpainting around each pasted box; the real objects keep their boxes, no jitter);
  3. filter: a detector trained on the real data (or --detector) must find at least --min-recall
     of the requested boxes (same class, IoU >= --iou, score >= --score); the kept fraction is
     printed;
  4. write the real images plus the kept synthetic ones to --out in the input format (or
     --format), with augment/manifest.json listing which images are synthetic, their seeds,
     source images and layout operations, and augment/detector/ (the filtering detector).
"""

EPILOG = """\
examples:
  earthgen augment outputs/augment/real --n 8 --no-filter --out aug-demo     # packaged model, CPU
  earthgen augment DOTA/train --model runs/boxes/pipeline --n 500 --out DOTA-aug
  earthgen augment coco.json --model M --n 200 --rebalance 1.5 --format yolo-obb --out aug-yolo
  earthgen augment data/train --model M --n 100 --detector runs/det --min-recall 0.8 --out aug
  earthgen eval augment --real data/train --augmented aug --test data/test   # the mAP gain
"""


def register(sub) -> None:
    from earthgen.commands._args import fraction, guidance_float, number, seed_int, steps_int

    p = sub.add_parser("augment", help="augment a detection dataset with generated images", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="detection dataset folder or label file (format guessed)")
    p.add_argument("--model", default=None,
                   help="box-conditioned pipeline folder or hub id (earthgen train image-boxes; default: the small "
                        "packaged model, docs/models.md)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=number(1, MAX_N, integer=True), default=100,
                   help=f"layouts / images to generate, 1..{MAX_N} (default 100)")
    p.add_argument("--input-format", default=None, help="format of the input (default: guessed)")
    p.add_argument("--format", default=None, help="output format: dota, yolo, yolo-obb, coco, voc, csv (default: the input's)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the layouts and the generator (recorded per image)")
    p.add_argument("--steps", type=steps_int, default=30, help="sampler steps, 1..1000")
    p.add_argument("--guidance", type=guidance_float, default=3.0, help="classifier-free guidance scale, 0..100")
    p.add_argument("--inpaint", action="store_true",
                   help="edit the real source images: paint only the pasted objects (real pixels elsewhere)")
    p.add_argument("--inpaint-margin", type=number(0.0, 2.0), default=0.4,
                   help="--inpaint: repainted area around a pasted box, fraction of its size (default 0.4)")
    g = p.add_argument_group("layouts")
    g.add_argument("--jitter", type=number(0.0, 2.0), default=0.15,
                   help="box centre jitter, fraction of the box size, 0..2")
    g.add_argument("--angle-jitter", type=number(0.0, 180.0), default=10.0,
                   help="box angle jitter, degrees, 0..180 (rotated datasets)")
    g.add_argument("--copy-paste", type=number(0, 1000, integer=True), default=3,
                   help="objects pasted per layout, 0..1000 (0 = off)")
    g.add_argument("--rebalance", type=number(0.0, 10.0), default=1.0, help="rare-class emphasis: class weight = count^-R (0 = off)")
    g.add_argument("--no-rotate", action="store_true", help="no whole-layout 90-degree turns / mirrors")
    g.add_argument("--upright", default=None, metavar="CLASSES",
                   help="comma-separated classes never turned by jitter or copy-paste ('' = none; default: "
                        "the classes whose every box is axis-aligned)")
    f = p.add_argument_group("filter")
    f.add_argument("--no-filter", action="store_true", help="keep every generated image")
    f.add_argument("--detector", default=None, help="trained BoxNet folder (default: train one on the real data)")
    f.add_argument("--detector-steps", type=number(1, 1_000_000, integer=True), default=1500, help="steps when training the detector")
    f.add_argument("--iou", type=fraction, default=0.5, help="IoU a detection needs with a requested box")
    f.add_argument("--score", type=fraction, default=0.3, help="score a detection needs")
    f.add_argument("--min-recall", type=fraction, default=0.5, help="fraction of requested boxes that must be found")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=run, check=check_args)


def check_args(args: argparse.Namespace) -> None:
    """Formats, the dataset and the output folder (new or empty), before any work."""
    from pathlib import Path

    from earthgen.commands._args import check_output
    from earthgen.data import FORMATS
    from earthgen.errors import UserInputError

    for name in ("format", "input_format"):
        v = getattr(args, name)
        if v is not None and v.lower().replace("_", "-") not in FORMATS:
            raise UserInputError(f"--{name.replace('_', '-')}: unknown format {v!r}; supported: {', '.join(FORMATS)}")
    if not Path(args.dataset).exists():
        raise UserInputError(f"dataset not found: {args.dataset}")
    check_output(args.out, "--out", folder=True, empty=True)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    import torch

    from earthgen.augment import AugmentConfig, LayoutConfig, augment_dataset
    from earthgen.data import FORMATS
    from earthgen.errors import UserInputError
    from earthgen.pipelines.image import load_pipeline

    for name in ("format", "input_format"):
        v = getattr(args, name)
        if v is not None and v.lower().replace("_", "-") not in FORMATS:
            raise UserInputError(f"unknown format {v!r}; supported: {', '.join(FORMATS)}")
    from pathlib import Path

    if not Path(args.dataset).exists():
        raise UserInputError(f"dataset not found: {args.dataset}")
    lay = LayoutConfig(jitter=args.jitter, angle_jitter_deg=args.angle_jitter, copy_paste=args.copy_paste,
                       rebalance=args.rebalance, rotate=not args.no_rotate,
                       upright=None if args.upright is None else [c.strip() for c in args.upright.split(",") if c.strip()])
    cfg = AugmentConfig(n=args.n, seed=args.seed, steps=args.steps, guidance_scale=args.guidance,
                        iou_threshold=args.iou, score_threshold=args.score, min_recall=args.min_recall,
                        filter=not args.no_filter, out_format=args.format and args.format.lower().replace("_", "-"),
                        detector=args.detector, detector_steps=args.detector_steps, layout=lay,
                        inpaint=args.inpaint, inpaint_margin=args.inpaint_margin)
    cfg.validate()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from earthgen.models import float32_on_cpu, resolve_model

    pipe = float32_on_cpu(load_pipeline(resolve_model(args.model, "boxes")).to(device))
    pipe.set_progress_bar_config(disable=True)
    s = augment_dataset(args.dataset, args.out, pipe, cfg, src_format=args.input_format)
    kept = f"kept {s['kept']}/{s['generated']} ({100 * s['kept_fraction']:.0f}%)" if s["kept_fraction"] is not None \
        else f"kept all {s['generated']} (no filter)"
    print(f"{s['real_images']} real images + {kept} synthetic -> {args.out} ({s['format']}); "
          f"manifest {args.out}/augment/manifest.json")
    return 0
