"""``earthgen app``: the Gradio app in the browser (apps/earthgen_app.py)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Start the EarthGen web app (Gradio) on this machine: tabs for text -> image, layout -> image
(OpenStreetMap, GeoJSON, class-id PNG or a drawing), inpainting/outpainting, detection
augmentation (with a box-conditioned model) and 3D scenes (a GLB viewer and downloads). It
listens on 127.0.0.1 (this machine only) unless --host says otherwise (GRADIO_SERVER_NAME is not
read); open the printed URL in a browser. Models load once at start: --model and --scene-model
take a folder or hub id, "default" for the packaged models, or "none" to leave their tabs empty
(the 3D tab then shows procedural worlds). Serving limits: an upload over --max-upload-mb is
refused (HTTP 413, a message in the page); model calls run one at a time per model
(--concurrency), and when --queue-size jobs wait, a new one is refused ("queue is full") until
one starts; sizes over --max-side are refused with a message, never clamped.
"""

EPILOG = """\
examples:
  earthgen app                                   # packaged default models, http://127.0.0.1:7860
  earthgen app --model runs/ldm/pipeline --scene-model none --port 8080
  earthgen app --augment-model runs/boxes/pipeline   # + the detection augmentation tab
  earthgen app --host 0.0.0.0 --max-side 512     # reachable from other machines (no auth!)
"""


def register(sub) -> None:
    from earthgen.commands._args import MAX_SIDE, number

    p = sub.add_parser(
        "app",
        help="start the web app (Gradio)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help='image pipeline folder or hub id; "default" = packaged, "none" = no image tabs',
    )
    p.add_argument(
        "--scene-model",
        default="default",
        help='3D scene pipeline folder or hub id; "default" = packaged, "none" = procedural '
        "3D only",
    )
    p.add_argument(
        "--augment-model",
        default="default",
        help='box-conditioned image pipeline for the detection augmentation tab; "default" = the '
        'packaged one (or the --model when it has box conditioning), "none" = no tab',
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, reachable from other machines, no authentication)",
    )
    p.add_argument(
        "--port",
        type=number(1, 65535, integer=True),
        default=7860,
        help="port, 1..65535 (default 7860)",
    )
    p.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--max-side",
        type=number(64, MAX_SIDE, integer=True),
        default=1024,
        help=f"largest image side in pixels, 64..{MAX_SIDE} (default 1024)",
    )
    p.add_argument(
        "--max-steps",
        type=number(1, 1000, integer=True),
        default=100,
        help="most denoising steps, 1..1000 (default 100)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=number(1, 10240, integer=True),
        default=50,
        help="largest upload in MB, 1..10240 (default 50); larger ones are refused (HTTP 413)",
    )
    p.add_argument(
        "--concurrency",
        type=number(1, 64, integer=True),
        default=1,
        help="model calls running at once, per model (default 1)",
    )
    p.add_argument(
        "--queue-size",
        type=number(1, 10000, integer=True),
        default=16,
        help="most jobs waiting, all tabs together, 1..10000 (default 16); one more is refused",
    )
    p.set_defaults(func=run)


def _wanted(spec: str | None) -> bool:
    return not (spec is not None and str(spec).strip().lower() in ("none", "off", ""))


def load_models(
    model: str | None, scene_model: str | None, device: str | None, name: str = "image"
):
    """``(image_pipeline | None, scene_pipeline | None)`` from the CLI specs; a missing packaged
    *scene* model is not an error (the 3D tab then shows procedural scenes), a missing image
    model is."""
    import torch

    from earthgen.errors import UserInputError

    try:
        from earthgen.models import resolve_model
    except ImportError as e:  # the packaged-models module arrives with the default models
        raise UserInputError(
            f"packaged default models are not available in this installation ({e}); "
            "give --model FOLDER and --scene-model FOLDER|none"
        ) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    image = scene = None
    if _wanted(model):
        from earthgen.models import float32_on_cpu
        from earthgen.pipelines.image import load_pipeline

        image = float32_on_cpu(
            load_pipeline(resolve_model(model, name)).to(device)
        )  # packaged weights are fp16
    if _wanted(scene_model):
        default = str(scene_model).strip().lower() == "default"
        try:
            from earthgen.pipelines.scene import load_scene_pipeline
        except ImportError:
            if not default:
                raise UserInputError(
                    "this installation has no 3D scene pipeline (earthgen.pipelines.scene); "
                    "use --scene-model none"
                ) from None
            load_scene_pipeline = None
        if load_scene_pipeline is not None:
            try:
                scene = load_scene_pipeline(None if default else scene_model, device)
            except UserInputError:
                if not default:
                    raise
                print("earthgen app: no packaged 3D model; the 3D tab shows procedural scenes only")
    return image, scene


def run(args: argparse.Namespace) -> int:
    from earthgen.errors import MissingDependencyError, UserInputError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MissingDependencyError("gradio", "app", "the web app") from None
    from apps.earthgen_app import LOCAL_HOSTS, AppLimits, create_demo, launch

    limits = AppLimits(
        max_side=args.max_side,
        max_steps=args.max_steps,
        max_upload_mb=args.max_upload_mb,
        concurrency_limit=args.concurrency,
        queue_size=args.queue_size,
    )
    image, scene = load_models(args.model, args.scene_model, args.device)
    boxes = None
    default_boxes = str(args.augment_model).strip().lower() == "default"
    if default_boxes and getattr(image, "box_encoder", None) is not None:
        boxes = image
    elif _wanted(args.augment_model):
        try:
            boxes, _ = load_models(args.augment_model, "none", args.device, name="boxes")
        except UserInputError:
            if not default_boxes:
                raise
            print(
                "earthgen app: no packaged box model; "
                "the detection augmentation tab needs --augment-model"
            )
        if boxes is not None and getattr(boxes, "box_encoder", None) is None:
            raise UserInputError(
                f"--augment-model {args.augment_model} has no box conditioning (box_encoder); "
                "train one with `earthgen train image-boxes`"
            )
    demo = create_demo(image, scene, boxes, limits=limits)
    if args.host not in LOCAL_HOSTS:
        print(
            f"earthgen app: warning: listening on {args.host}: "
            "anyone who can reach this machine can use the app (there is no authentication)"
        )
    print(f"earthgen app: serving on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(demo, host=args.host, port=args.port, share=args.share)
    return 0
