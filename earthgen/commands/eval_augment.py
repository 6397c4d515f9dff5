"""``earthgen eval augment``: the mAP gain of synthetic detection data."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Measure what augmentation buys: train the same detector (BoxNet, EarthGen's compact CenterNet-style
rotated-box detector, trained from scratch: no detection library installs here without torchvision
or downloaded weights) with the same steps and seed on the real training data only and on real +
synthetic (the output of `earthgen augment`), evaluate both on a held-out real split, and report
VOC mAP@0.5 and per-class AP, with rotated and horizontal IoU (--ap-method: 11-point VOC07, DOTA's
official, by default, or all-point; the method is named in the table and the JSON). Large test
images are detected by overlapping windows (--detect-tile) merged by NMS across the seams.
Several --seed values (or --real-detector folders) repeat the comparison per detector seed and
report mean +- std and in how many seeds each class rose: on small data one class's AP moves by
0.2 between seeds.
--control copies adds a third detector per seed, trained on real + the synthetic images' real
source images turned but unchanged: the gain over it is what the generated objects add.

--make-world-data DIR writes a procedural-world experiment instead: DIR/train (one class made
scarce: its images dropped but --rare-keep) and DIR/test (untouched), DOTA format.
"""

EPILOG = """\
examples:
  earthgen eval augment --make-world-data runs/exp --rare large_vehicle --rare-keep 4
  earthgen train image-boxes --data runs/exp/train --resolution 128 --steps 20000 --out runs/gen
  earthgen augment runs/exp/train --model runs/gen/pipeline --n 400 --out runs/exp/aug
  earthgen eval augment --real runs/exp/train --augmented runs/exp/aug --test runs/exp/test \\
      --out gain.json
  earthgen eval augment --real runs/exp/train --augmented runs/exp/aug --test runs/exp/test \\
      --seed 0 1 2
  earthgen eval augment --real runs/exp/train --augmented runs/exp/aug --test runs/exp/test \\
      --seed 0 1 2 \\
      --control copies
"""


def register(sub) -> None:
    from earthgen.commands._args import positive_int

    p = sub.add_parser(
        "augment",
        help="mAP of a detector trained on real vs real + synthetic data",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--real", help="the real training dataset")
    p.add_argument("--augmented", help="real + synthetic dataset (earthgen augment --out)")
    p.add_argument("--test", help="held-out real dataset")
    p.add_argument(
        "--steps", type=positive_int, default=1500, help="detector training steps (each run)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--crop", type=positive_int, default=128, help="training crop, pixels (multiple of 16)"
    )
    p.add_argument(
        "--horizontal",
        action="store_true",
        help="train a horizontal-box detector even for rotated data",
    )
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="detector seed(s); several: one comparison per seed, mean +- std reported",
    )
    p.add_argument(
        "--real-detector",
        nargs="+",
        default=None,
        metavar="DIR",
        help="detector(s) already trained on --real (e.g. AUG/augment/detector) as the baseline; "
        "their steps, batch size, crop and seed are reused for the augmented runs (one run each; "
        "--seed is then ignored)",
    )
    p.add_argument(
        "--control",
        choices=["copies"],
        default=None,
        help="also train on real + 'copies' of the synthetic images (each one's real source image, "
        "turned as its layout, unchanged, with its own boxes) and report what the synthetic data "
        "gains over that: the part of the gain that comes from the generated objects rather than "
        "from drawing rare-class source images more often",
    )
    p.add_argument(
        "--control-detector",
        nargs="+",
        default=None,
        metavar="DIR",
        help="copies detector(s) already trained "
        "(e.g. GAIN-detectors/seed0/detector-copies of a run with the same layouts), "
        "matched to the runs by seed",
    )
    p.add_argument(
        "--ap-method",
        choices=["voc07", "all"],
        default="voc07",
        help="AP interpolation: voc07 = 11-point (PASCAL VOC 2007, DOTA's official "
        "evaluation; default), all = all-point (VOC 2010+); named in every "
        "table and JSON",
    )
    p.add_argument(
        "--detect-tile",
        type=positive_int,
        default=512,
        help="test images larger than this (pixels, multiple of 16) are detected by "
        "overlapping windows of this size, merged by NMS across the seams "
        "(default 512)",
    )
    p.add_argument("--out", default=None, help="write the result JSON here (detectors beside it)")
    w = p.add_argument_group("procedural world experiment")
    w.add_argument(
        "--make-world-data",
        default=None,
        metavar="DIR",
        help="write DIR/train and DIR/test and exit",
    )
    w.add_argument("--rare", default="large_vehicle", help="the class made scarce in DIR/train")
    w.add_argument(
        "--rare-keep", type=int, default=4, help="training images with the rare class that are kept"
    )
    w.add_argument("--n-train", type=positive_int, default=400)
    w.add_argument("--n-test", type=positive_int, default=300)
    w.add_argument("--tile", type=positive_int, default=128, help="tile size, pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from earthgen.errors import UserInputError
    from earthgen.io import write_json

    if args.make_world_data:
        from earthgen.augment.world import make_world_splits

        if args.rare_keep < 0:
            raise UserInputError(f"--rare-keep must be >= 0, got {args.rare_keep}")
        s = make_world_splits(
            args.make_world_data,
            args.n_train,
            args.n_test,
            size=args.tile,
            rare=args.rare,
            rare_keep=args.rare_keep,
            seed=args.seed[0],
        )
        print(json.dumps(s, indent=2))
        return 0
    missing = [f"--{n}" for n in ("real", "augmented", "test") if not getattr(args, n)]
    if missing:
        raise UserInputError(f"{', '.join(missing)} required (or --make-world-data DIR)")
    if args.crop % 16:
        raise UserInputError(f"--crop must be a multiple of 16 pixels, got {args.crop}")
    if args.detect_tile % 16:
        raise UserInputError(
            f"--detect-tile must be a multiple of 16 pixels, got {args.detect_tile}"
        )
    for n in ("real", "augmented", "test"):
        if not Path(getattr(args, n)).exists():
            raise UserInputError(f"--{n} dataset not found: {getattr(args, n)}")
    from earthgen.augment.evaluate import (
        evaluate_augmentation,
        evaluate_augmentation_seeds,
        format_table,
    )

    out_dir = None if args.out is None else Path(args.out).with_suffix("")
    det_dir = None if out_dir is None else out_dir.parent / (out_dir.name + "-detectors")
    kw = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        rotated=False if args.horizontal else None,
        ap_method=args.ap_method,
        detect_tile=args.detect_tile,
    )
    dets = args.real_detector or []
    ctl = args.control_detector or []
    if ctl and args.control is None:
        raise UserInputError("--control-detector needs --control copies")
    kw.update(control=args.control)
    if len(dets) > 1 or len(args.seed) > 1 or len(ctl) > 1:
        if len(set(args.seed)) < len(args.seed):
            raise UserInputError(f"--seed repeats a value: {args.seed}")
        r = evaluate_augmentation_seeds(
            args.real,
            args.augmented,
            args.test,
            seeds=args.seed,
            real_detectors=dets or None,
            out=det_dir,
            control_detectors=ctl or None,
            **kw,
        )
    else:
        r = evaluate_augmentation(
            args.real,
            args.augmented,
            args.test,
            seed=args.seed[0],
            out=det_dir,
            real_detector=dets[0] if dets else None,
            control_detector=ctl[0] if ctl else None,
            **kw,
        )
    print(format_table(r))
    if args.out:
        write_json(args.out, r)
    return 0
