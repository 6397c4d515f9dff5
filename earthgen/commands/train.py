"""``earthgen train``: train the image models and the 3D VAEs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train a model. Image tasks (procedural world tiles, or your own data with --data: an image-caption
dataset, or a semantic-mask folder whose masks are the layouts; docs/training.md):
image-vae (the autoencoder), image-ldm (UNet + metadata encoder), image-control (the fused control
branch, UNet frozen), image-boxes (box-layout conditioning for `earthgen augment`: box-token
encoder + gated attention; --data a detection dataset in DOTA, COCO, YOLO, ... or world),
evaluator (the TileNet behind `earthgen eval`). 3D tasks (procedural world scenes):
structure-vae (sparse voxel occupancy <-> coarse latent; --resolution is the crop size in
voxels), texture-vae (per-voxel appearance <-> latent -> 2D Gaussian surfels, trained by rendering),
structure-flow (the flow-matching generator of the structure latent, conditioned on a semantic map,
an aerial image, both or nothing; needs --vae, the structure VAE), texture-flow (the sparse
flow-matching generator of per-voxel texture latents, same conditions; --vae is the texture VAE).
Runs on CPU or GPU; for several GPUs or nodes start it with `accelerate launch -m earthgen train
...`. Checkpoints are atomic; --resume continues.

image-latent: the default image model, trained on real aerial data in the pretrained TAEF2 latent
space (the VAE stays fixed). Four steps; the first three are sub-commands of
`python -m earthgen.training.latent` (its --help and docs/training.md have the exact runs):
  1. convert-taef2: the upstream taef2_encoder.pth / taef2_decoder.pth -> a diffusers VAE folder
  2. init: a fresh pipeline around it (UNet, metadata encoder, MiniLM text encoder, layout map)
  3. cache: encode real crops once (latents, layout maps, captions, GSDs) into CACHE.pt and write
     the per-channel latent mean/std into the pipeline's vae/config.json
  4. train (this task): `earthgen train image-latent --model PIPELINE --cache CACHE.pt --out RUN`
     trains the UNet + metadata encoder on the cache; batches are a pure function of
     (--seed, step), so --resume sees the data an uninterrupted run would.
"""

EPILOG = """\
examples:
  earthgen train image-ldm --test-run --out outputs/train-test       # seconds on CPU
  earthgen train image-ldm --size small --steps 20000 --batch-size 32 --resolution 256 \\
      --mixed-precision bf16 --out runs/ldm
  earthgen train image-control --model runs/ldm/pipeline --steps 5000 --out runs/control
  earthgen train image-ldm --size compact --layout-input concat --steps 20000 --out runs/layout-ldm
  earthgen train image-ldm --data captions.jsonl --model runs/ldm/pipeline --out runs/ft --resume
  earthgen train image-boxes --data DOTA/train --model runs/ldm/pipeline --resolution 256 \\
      --box-raster-dim 8 --box-loss-weight 3 --balance 0.3 --out runs/boxes
  earthgen train structure-vae --test-run --out outputs/svae-test       # seconds on CPU
  earthgen train structure-vae --size base --resolution 64 --steps 20000 --batch-size 8 \\
      --out runs/svae
  earthgen train texture-vae --scene-size 32 --views 4 --image-size 128 --steps 20000 \\
      --out runs/tvae
  earthgen train structure-flow --vae runs/svae/model --resolution 64 --steps 20000 --out runs/sflow
  earthgen train texture-flow --vae runs/tvae/model --resolution 64 --steps 20000 --out runs/tflow
  earthgen train image-latent --model runs/latent/init --cache runs/latent/cache.pt --steps 2000 \
      --save-every 100 --threads 2 --out runs/latent/train --resume

outputs (in --out): checkpoints/step_N/ (accelerate state + EMA), loss.csv, loss.png,
train_config.json, summary.json (3D tasks: with held-out voxel IoU or render PSNR/SSIM), and the
EMA weights: pipeline/ for image tasks (EarthImagePipeline.from_pretrained), model/ for 3D tasks
(StructureVAE / TextureVAE.from_pretrained)
"""


# limits of the numeric flags (docs/limits.md)
MAX_STEPS = 10_000_000
MAX_BATCH = 4096
MAX_RESOLUTION = 4096


def register(sub) -> None:
    from earthgen.commands._args import fraction, number, seed_int, threads_int

    count = number(1, MAX_STEPS, integer=True)

    p = sub.add_parser(
        "train",
        help="train the image models and the 3D VAEs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "task",
        choices=(
            "image-vae",
            "image-ldm",
            "image-control",
            "image-boxes",
            "image-latent",
            "evaluator",
            "structure-vae",
            "texture-vae",
            "structure-flow",
            "texture-flow",
        ),
        help="what to train (evaluator: the TileNet used by `earthgen eval`; "
        "image-latent: the default image model on a latent cache, see above)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="pipeline folder or hub id to start from; 'default': the packaged model of the task "
        "(image tasks; default: a fresh model)",
    )
    p.add_argument(
        "--size",
        default=None,
        choices=("tiny", "compact", "small", "base"),
        help="size of a fresh model (image: tiny | compact | small, default tiny; compact has a 4x "
        "VAE for small objects; 3D: tiny | small | base, default small)",
    )
    p.add_argument(
        "--data",
        default="world",
        help="image tasks: 'world' (procedural tiles), an image-caption dataset, a semantic-mask "
        "folder (images/ + masks/: layouts for image-control) or, for image-boxes, a detection "
        "dataset (docs/training.md); 3D tasks: 'world' only",
    )
    p.add_argument(
        "--resolution",
        type=number(1, MAX_RESOLUTION, integer=True),
        default=None,
        help="image tasks: training image size, pixels (multiple of 64, default 64); "
        "structure-vae: crop size, voxels (multiple of 8, default 64)",
    )
    p.add_argument(
        "--batch-size",
        type=number(1, MAX_BATCH, integer=True),
        default=None,
        help=f"1..{MAX_BATCH}; default 4 (image), 2 (3D)",
    )
    p.add_argument(
        "--steps", type=count, default=None, help="total steps (default 1000; 20 with --test-run)"
    )
    p.add_argument(
        "--lr",
        type=number(0.0, 1.0, lo_open=True),
        default=None,
        help="learning rate in (0, 1] (default 1e-4 image, 1e-3 3D)",
    )
    p.add_argument(
        "--grad-accum",
        type=number(1, 1024, integer=True),
        default=1,
        help="gradient accumulation steps",
    )
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument(
        "--ema-decay",
        type=number(0.0, 1.0, hi_open=True),
        default=None,
        help="EMA decay in [0, 1) (default 0.999 image, 0.995 3D)",
    )
    p.add_argument(
        "--cond-dropout", type=fraction, default=0.1, help="drop probability of each condition"
    )
    p.add_argument(
        "--save-every", type=count, default=None, help="checkpoint every N steps (default 500)"
    )
    p.add_argument(
        "--log-every",
        type=count,
        default=None,
        help="write loss.csv/png every N steps (default 10)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    p.add_argument(
        "--freeze-unet",
        action="store_true",
        help="image-boxes: train only the box encoder and gated attention layers (GLIGEN recipe)",
    )
    p.add_argument(
        "--box-raster-dim",
        type=number(0, 256, integer=True),
        default=0,
        help="image-boxes, on a model without boxes: also feed the UNet a dense box map with this "
        "many class dimensions (extra input channels; 0 = grounding tokens only)",
    )
    p.add_argument(
        "--box-loss-weight",
        type=number(0.0, 100.0),
        default=0.0,
        help="image-boxes: extra weight of the denoising loss inside boxes (default 0)",
    )
    p.add_argument(
        "--balance",
        type=number(0.0, 10.0),
        default=0.0,
        help="detection datasets: draw training images by the rarest class they hold, with weight "
        "count^-BALANCE (0 = uniform; 0.3 shows rare classes several times more often)",
    )
    p.add_argument(
        "--layout-input",
        default="control",
        choices=("control", "concat"),
        help="image-ldm / image-boxes: how the layout reaches the UNet. control: the fused control "
        "branch (trained by image-control); concat: its class fractions per latent cell as extra "
        "UNet input channels (zero-initialised on a trained model), trained with the UNet",
    )
    p.add_argument(
        "--layout-dropout",
        type=fraction,
        default=None,
        help="--layout-input concat: drop probability of the layout map alone (default: "
        "--cond-dropout); higher keeps text-only generation good when the layout is strong",
    )
    g3 = p.add_argument_group("3D tasks")
    g3.add_argument(
        "--voxel-size",
        type=number(0.0, 100.0, lo_open=True),
        default=None,
        help="metres, in (0, 100] (default 1)",
    )
    g3.add_argument(
        "--gsd",
        type=number(0.0, 100.0, lo_open=True),
        default=None,
        help="texture-vae: metres/pixel of the world tiles, the sub-voxel detail (default 0.5)",
    )
    g3.add_argument(
        "--scene-size",
        type=number(0.0, 1024.0, lo_open=True),
        default=None,
        help="texture-vae: scene side, metres, in (0, 1024] (default 32)",
    )
    g3.add_argument(
        "--views",
        type=number(1, 64, integer=True),
        default=None,
        help="texture-vae: cameras per scene per step (default 2)",
    )
    g3.add_argument(
        "--image-size",
        type=number(16, 4096, integer=True),
        default=None,
        help="texture-vae: render size, pixels (default 64)",
    )
    g3.add_argument(
        "--pool",
        type=number(1, 100_000, integer=True),
        default=None,
        help="world tiles generated up front (default 32)",
    )
    g3.add_argument(
        "--vae",
        default=None,
        help="structure-flow / texture-flow: the trained structure / texture VAE folder "
        "(OUT/model)",
    )
    g3.add_argument(
        "--kl-weight",
        type=number(0.0, 1000.0),
        default=None,
        help="weight of the KL term (default 1e-3)",
    )
    gl = p.add_argument_group("image-latent")
    gl.add_argument(
        "--cache",
        default=None,
        help="image-latent: the latent cache (.pt) of `python -m earthgen.training.latent cache`",
    )
    gl.add_argument(
        "--threads",
        type=threads_int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: $OMP_NUM_THREADS, else the CPUs this process may "
        "use; docs/limits.md)",
    )
    p.add_argument(
        "--test-run",
        action="store_true",
        help="tiny model, small data, 20 steps: a smoke test in seconds (flags you give "
        "still apply; image-latent: 4 steps at batch 2)",
    )
    p.set_defaults(func=run, check=check_args)


def check_args(args: argparse.Namespace) -> None:
    """Sizes and the output folder, before any work (UserInputError: one line): a 3D crop of
    --resolution^3 voxels under the voxel cap; --out a folder we can write, and without --resume
    not holding an earlier run's checkpoints."""
    from earthgen.commands._args import MAX_VOXEL_COLUMNS, check_output
    from earthgen.errors import UserInputError

    three_d = args.task in ("structure-vae", "texture-vae", "structure-flow", "texture-flow")
    if three_d and args.resolution is not None and args.resolution**3 > MAX_VOXEL_COLUMNS:
        raise UserInputError(
            f"--resolution {args.resolution}: a crop of {args.resolution}^3 voxels is over the "
            f"cap of {MAX_VOXEL_COLUMNS} voxels; use at most "
            f"{round(MAX_VOXEL_COLUMNS ** (1 / 3))}"
        )
    check_output(args.out, "--out", folder=True)
    if not args.resume:
        from earthgen.training.loop import check_fresh_out

        check_fresh_out(args.out)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.task == "image-latent":
        return run_latent(args)
    from earthgen.training.image import TrainConfig, train

    if args.task == "evaluator":
        from earthgen.evaluation.tilenet import train_tilenet

        steps = args.steps or (20 if args.test_run else 2000)
        s = train_tilenet(
            args.out,
            steps=steps,
            batch_size=2 if args.test_run else args.batch_size or 4,
            resolution=64 if args.test_run else max(args.resolution or 64, 64),
            seed=1000 + args.seed,
            width=16 if args.test_run else 32,
        )
        first, last = _mean_losses(s)
        print(f"evaluator: {steps} steps; loss {first:.3f} -> {last:.3f}; saved to {args.out}")
        return 0

    if args.task in ("structure-vae", "texture-vae"):
        return run_3d(args)
    if args.task in ("structure-flow", "texture-flow"):
        return run_flow(args)
    cfg = TrainConfig(
        task=args.task,
        out=args.out,
        model=args.model,
        size=args.size or "tiny",
        data=args.data,
        resolution=args.resolution or 64,
        batch_size=args.batch_size or 4,
        steps=args.steps or (20 if args.test_run else 1000),
        lr=args.lr or 1e-4,
        grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision,
        grad_checkpointing=args.grad_checkpointing,
        ema_decay=0.999 if args.ema_decay is None else args.ema_decay,
        cond_dropout=args.cond_dropout,
        save_every=args.save_every or 500,
        log_every=args.log_every or 10,
        seed=args.seed,
        resume=args.resume,
        test_run=args.test_run,
        freeze_unet=getattr(args, "freeze_unet", False),
        box_raster_dim=getattr(args, "box_raster_dim", 0),
        box_loss_weight=getattr(args, "box_loss_weight", 0.0),
        balance=getattr(args, "balance", 0.0),
        layout_input=getattr(args, "layout_input", "control"),
        layout_dropout=getattr(args, "layout_dropout", None),
    )
    s = train(cfg)
    first, last = _mean_losses(s)
    print(
        f"{cfg.task}: steps {s['started_at']}..{s['steps']} in {s['seconds']} s; "
        f"loss {first:.4f} -> {last:.4f}; model in {cfg.out}/pipeline"
    )
    return 0


def _mean_losses(summary: dict) -> tuple[float, float]:
    """Means of the first and of the last logged losses of a training summary."""
    return tuple(sum(v) / max(len(v), 1) for v in (summary["first_losses"], summary["last_losses"]))


def _check_3d_args(args: argparse.Namespace) -> None:
    from earthgen.errors import UserInputError

    if args.data != "world":
        raise UserInputError(
            f"{args.task} trains on procedural world scenes only (leave --data at 'world')"
        )
    if args.grad_accum != 1 or args.grad_checkpointing:
        raise UserInputError("--grad-accum and --grad-checkpointing apply to the image tasks only")
    if args.vae is not None and args.task not in ("structure-flow", "texture-flow"):
        raise UserInputError("--vae applies to structure-flow and texture-flow only")


def run_3d(args: argparse.Namespace) -> int:
    from earthgen.errors import UserInputError
    from earthgen.training.vae3d import Train3DConfig, train

    _check_3d_args(args)
    if args.cond_dropout != 0.1:
        raise UserInputError("--cond-dropout applies to the image tasks only")
    # only what the user gave overrides Train3DConfig's defaults (and --test-run's small ones)
    given = {
        k: getattr(args, k)
        for k in (
            "model",
            "size",
            "resolution",
            "scene_size",
            "voxel_size",
            "gsd",
            "views",
            "image_size",
            "batch_size",
            "steps",
            "lr",
            "kl_weight",
            "ema_decay",
            "pool",
            "save_every",
            "log_every",
        )
        if getattr(args, k) is not None
    }
    if "steps" not in given:
        given["steps"] = 20 if args.test_run else 2000
    cfg = Train3DConfig(
        task=args.task,
        out=args.out,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        resume=args.resume,
        test_run=args.test_run,
        **given,
    )
    s = train(cfg)
    first, last = _mean_losses(s)
    ev = ", ".join(f"{k} {v:.4g}" for k, v in s["eval"].items())
    print(
        f"{cfg.task}: steps {s['started_at']}..{s['steps']} in {s['seconds']} s; loss {first:.4f} "
        f"-> {last:.4f}; held-out: {ev}; model in {cfg.out}/model"
    )
    return 0


def run_flow(args: argparse.Namespace) -> int:
    from earthgen.training.flow3d import FlowTrainConfig, train_structure_flow, train_texture_flow

    _check_3d_args(args)
    given = {
        k: getattr(args, k)
        for k in (
            "vae",
            "model",
            "size",
            "resolution",
            "voxel_size",
            "batch_size",
            "lr",
            "ema_decay",
            "pool",
            "save_every",
            "log_every",
        )
        if getattr(args, k) is not None
    }
    given["steps"] = args.steps or (20 if args.test_run else 4000)
    cfg = FlowTrainConfig(
        task=args.task,
        out=args.out,
        cond_dropout=0.3 if args.cond_dropout == 0.1 else args.cond_dropout,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        resume=args.resume,
        test_run=args.test_run,
        **given,
    )
    s = (train_texture_flow if cfg.task == "texture-flow" else train_structure_flow)(cfg)
    first, last = _mean_losses(s)
    ev = "".join(
        f"; {k} {v['psnr_db']:.1f} dB" for k, v in s.get("eval", {}).items() if isinstance(v, dict)
    )
    print(
        f"{cfg.task}: steps {s['started_at']}..{s['steps']} in {s['seconds']} s; loss {first:.4f} "
        f"-> {last:.4f}"
        f"{ev}; model in {cfg.out}/model"
    )
    return 0


# flags of the other tasks that mean nothing for image-latent (the cache fixes data and resolution)
_NOT_LATENT = {
    "size": None,
    "data": "world",
    "resolution": None,
    "grad_accum": 1,
    "mixed_precision": "no",
    "grad_checkpointing": False,
    "vae": None,
}


def run_latent(args: argparse.Namespace) -> int:
    """``earthgen train image-latent``: :func:`earthgen.training.latent.train_latent` on a cache."""
    from earthgen.errors import UserInputError
    from earthgen.training.latent import LatentTrainConfig, train_latent

    if not args.model or not args.cache:
        raise UserInputError(
            "image-latent needs --model (a pipeline folder from `python -m "
            "earthgen.training.latent init`) and --cache (from its `cache` step)"
        )
    bad = [k for k, v in _NOT_LATENT.items() if getattr(args, k, v) != v]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise UserInputError(
            f"{flags}: not used by image-latent (the cache fixes the data and the resolution)"
        )
    cfg = LatentTrainConfig(
        cache=args.cache,
        model=args.model,
        out=args.out,
        seed=args.seed,
        threads=args.threads or 0,
        resume=args.resume,
        test_run=args.test_run,
    )
    if args.test_run:  # the sizes of `python -m earthgen.training.latent train --test-run`
        cfg.steps, cfg.batch_size, cfg.save_every, cfg.log_every = 4, 2, 2, 1
    # only what the user gave overrides the defaults (and --test-run's sizes)
    for name in (
        "steps",
        "batch_size",
        "lr",
        "save_every",
        "log_every",
        "ema_decay",
        "layout_dropout",
    ):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.cond_dropout != 0.1:  # --cond-dropout: the text and the metadata dropout
        cfg.text_dropout = cfg.meta_dropout = args.cond_dropout
    s = train_latent(cfg)
    first, last = _mean_losses(s)
    print(
        f"{cfg.task}: steps {s['started_at']}..{s['steps']} in {s['seconds']} s; "
        f"loss {first:.4f} -> {last:.4f}; model in {cfg.out}/pipeline"
    )
    return 0
