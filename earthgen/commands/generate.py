"""``earthgen generate``: satellite images from text, GSD, layouts and reference images."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

DESCRIPTION = """\
Generate satellite images with an EarthImagePipeline checkpoint (a folder written by
`earthgen train` or `save_pretrained`, or a hub id). Conditions: a text prompt, the ground
sampling distance, a semantic layout (an OSM/GeoJSON file rasterized on the fly, or a class map:
PNG/GeoTIFF of grey ids, palette ids or the class colours), a reference image (PNG, JPEG or
GeoTIFF) for image-to-image, a mask for inpainting, or --extend for outpainting (the image grown
by generated borders). The output format follows the extension of --out: .png, .jpg/.jpeg or
.tif/.tiff (a GeoTIFF, georeferenced when the layout is); a georeferenced layout with a .png or
.jpg --out also gives a GeoTIFF beside it.
"""

EPILOG = """\
examples:
  earthgen generate --model runs/ldm/pipeline --prompt "dense residential area" --gsd 0.5 \\
      --out a.png
  earthgen generate --model M --layout monaco.osm.pbf --center 43.7384,7.4246 --gsd 1 --size 512 \\
      --out m.png
  earthgen generate --model M --layout outputs/world/semantic.png --gsd 0.5 --out w.png
  earthgen generate --model M --layout outputs/world/semantic.tif --out w.tif       # a GeoTIFF out
  earthgen generate --model M --prompt "harbour" --gsd 1 \\
      --out harbour.jpg         # JPEG, quality 95
  earthgen generate --model M --image a.png --mask hole.png --prompt "a park" --out edited.png
  earthgen generate --image a.png --extend 64,64,0,0 --prompt "farmland" --gsd 2 \\
      --out wider.png   # outpaint
  earthgen generate --model M --prompt "farmland" --size 2048 --out big.png     # tiled, seamless
"""


def register(sub) -> None:
    from earthgen.commands._args import (
        bbox_list,
        center_list,
        generate_size,
        gsd_float,
        guidance_float,
        number,
        seed_int,
        steps_int,
    )

    p = sub.add_parser(
        "generate",
        help="generate satellite images",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help="pipeline folder or hub id "
        "(default: the small model packaged with EarthGen, docs/models.md)",
    )
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument(
        "--gsd", type=gsd_float, default=None, help="ground sampling distance, metres/pixel"
    )
    p.add_argument(
        "--layout",
        default=None,
        help="OSM (.osm, .osm.pbf, .osm.bz2, .osm.gz) or GeoJSON file, or a class map (.png, .tif: "
        "grey ids, palette ids or the class colours of docs/classes.md; a GeoTIFF keeps its "
        "georeference)",
    )
    p.add_argument(
        "--bbox", type=bbox_list, default=None, metavar="MIN_LON,MIN_LAT,MAX_LON,MAX_LAT"
    )
    p.add_argument("--center", type=center_list, default=None, metavar="LAT,LON")
    p.add_argument(
        "--layout-scale",
        type=number(0.0, 100.0),
        default=1.0,
        help="guidance weight of the layout control",
    )
    p.add_argument(
        "--control-end",
        type=number(0.0, 1.0, lo_open=True),
        default=None,
        help="fraction of the sampling steps (the first ones) that run the control branch, "
        "in (0, 1] (default: the model's own; the packaged model: see docs/models.md)",
    )
    p.add_argument(
        "--image",
        default=None,
        help="reference image, PNG, JPEG or GeoTIFF (image-to-image, or inpainting with --mask)",
    )
    p.add_argument(
        "--mask", default=None, help="inpainting mask image (PNG, JPEG or TIFF): white = repaint"
    )
    p.add_argument(
        "--extend",
        type=_extend,
        default=None,
        metavar="LEFT,RIGHT,TOP,BOTTOM",
        help="outpaint: grow --image by these borders (pixels), generated to continue it (the size "
        "follows; not with --size or --mask)",
    )
    p.add_argument(
        "--strength",
        type=_float,
        default=None,
        help="in (0, 1]: with --image the image-to-image strength (default 0.75); "
        "with a layout the render-then-refine strength: "
        "the layout is rendered to an RGB prior (earthgen.prior) "
        "that is noised to this strength and denoised (default 0.7; 1 = pure noise, no prior)",
    )
    p.add_argument(
        "--prior-out",
        default=None,
        metavar="PATH",
        help="also save the rendered layout prior here, format by extension like --out (a layout "
        "without --image)",
    )
    p.add_argument(
        "--size",
        type=generate_size,
        default=None,
        metavar="N|WxH",
        help="image size in pixels (at most a limit computed from the memory, docs/limits.md)",
    )
    p.add_argument("--steps", type=steps_int, default=30, help="sampling steps, 1..1000")
    p.add_argument(
        "--guidance",
        type=guidance_float,
        default=5.0,
        help="classifier-free guidance scale, 0..100",
    )
    p.add_argument(
        "--metadata-guidance",
        type=guidance_float,
        default=None,
        metavar="S",
        help="a separate guidance scale for the metadata (--gsd) alone; "
        "--guidance then weights text and layout on top of it "
        "(one more model pass per step; 0: the metadata unguided; "
        "default: guided with the text)",
    )
    p.add_argument(
        "--seed", type=seed_int, default=None, help="random seed (default: random, printed)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--out",
        required=True,
        help="output image: .png, .jpg/.jpeg (quality 95) or .tif/.tiff (GeoTIFF); "
        "with a georeferenced layout (OSM/GeoJSON, GeoTIFF class map) "
        "a .png/.jpg gets a GeoTIFF beside it (same name, .tif)",
    )
    p.set_defaults(func=run, check=_check_args)


def _float(text: str) -> float:
    """A number; its range is checked by :func:`_check_args` (one line, exit 2)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None


def _extend(text: str) -> tuple[float, ...]:
    """``--extend LEFT,RIGHT,TOP,BOTTOM``: whole pixels in [0, MAX_SIDE]."""
    from earthgen.commands._args import MAX_SIDE

    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        v = tuple(float(p) for p in parts)
    except ValueError:
        v = ()
    if len(v) != 4 or not all(math.isfinite(x) and 0 <= x <= MAX_SIDE and x == int(x) for x in v):
        raise argparse.ArgumentTypeError(
            f"--extend takes whole pixels in [0, {MAX_SIDE}], got {text!r}"
        )
    return v


def _check_args(args: argparse.Namespace) -> None:
    """Output paths (format by extension), input files and combinations, before any work
    (UserInputError: one line)."""
    from earthgen.inputs import IMAGE_SUFFIXES, LAYOUT_SUFFIXES, check_image_output, require_input

    if args.strength is not None:
        from earthgen.prior import check_strength

        check_strength(args.strength, "--strength")
    check_image_output(args.out, "--out")
    if args.prior_out is not None:
        check_image_output(args.prior_out, "--prior-out")
    if args.layout:
        require_input(
            args.layout, "--layout", LAYOUT_SUFFIXES, "a layout (OSM, GeoJSON or class map)"
        )
    if args.image:
        require_input(args.image, "--image", IMAGE_SUFFIXES, "an image (PNG, JPEG or GeoTIFF)")
    if args.mask:
        require_input(args.mask, "--mask", IMAGE_SUFFIXES, "a mask image (PNG, JPEG or TIFF)")


def _sidecar(out: str) -> str | None:
    """The GeoTIFF written beside a georeferenced .png/.jpg result (None for a .tif --out)."""
    from earthgen.inputs import suffix_of

    if suffix_of(out, (".tif", ".tiff")):
        return None
    return str(Path(out).with_suffix(".tif"))


def _check_extended(image, extend) -> None:
    """The outpainted canvas under the memory limit of --size, before the model loads."""
    from earthgen.commands._args import generate_max_pixels
    from earthgen.errors import UserInputError

    w = image.shape[1] + int(extend[0]) + int(extend[1])
    h = image.shape[0] + int(extend[2]) + int(extend[3])
    if w * h > generate_max_pixels():
        raise UserInputError(
            f"--extend: the grown image {w}x{h} is over the limit of {generate_max_pixels()} "
            "pixels (docs/limits.md)"
        )


def run(args: argparse.Namespace) -> int:
    _check_args(args)  # before the heavy imports: a bad --out costs nothing
    import numpy as np
    import torch

    from earthgen.errors import UserInputError
    from earthgen.inputs import read_image, read_layout, write_image
    from earthgen.pipelines.image import load_pipeline

    if args.extend is not None and not all(
        math.isfinite(v) and v >= 0 and v == int(v) for v in args.extend
    ):
        raise UserInputError(
            f"--extend takes whole pixels >= 0, got {','.join(f'{v:g}' for v in args.extend)}"
        )
    from earthgen.prior import DEFAULT_STRENGTH, check_strength

    if args.strength is not None:
        check_strength(args.strength, "--strength")
    if args.prior_out is not None and (not args.layout or args.image):
        raise UserInputError(
            "--prior-out saves the rendered layout prior: give --layout (and no --image)"
        )
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    width, height = args.size if args.size else (None, None)
    layout = None
    geo = None
    if args.layout:
        from earthgen.inputs import VECTOR_SUFFIXES, suffix_of

        if args.size is None and suffix_of(args.layout, VECTOR_SUFFIXES):
            width = height = 512  # vector data has no size of its own
        lay = read_layout(
            args.layout,
            flag="--layout",
            center=args.center,
            bbox=args.bbox,
            size=(width, height) if width else None,
            gsd=args.gsd,
        )
        layout = lay.semantic
        if lay.crs is not None and lay.transform is not None:
            geo = (lay.crs, lay.transform, layout.shape)
        if args.gsd is None:
            args.gsd = lay.gsd
    if args.metadata_guidance is not None and args.gsd is None:
        raise UserInputError(
            "--metadata-guidance guides the metadata: give --gsd too (or an OSM layout)"
        )
    image = mask = None
    if args.image:
        image = read_image(args.image, flag="--image").rgb
    if args.mask:
        m = read_image(args.mask, flag="--mask").rgb
        mask = (m.max(-1) > 127).astype(np.float32)
    if args.extend is not None:
        if image is None or mask is not None or args.size:
            raise UserInputError(
                "--extend grows the --image (outpainting): give --image, and no --mask or --size"
            )
        _check_extended(image, args.extend)
    strength = args.strength if args.strength is not None else 0.75
    if layout is not None and image is None:  # render, then refine (strength 1: pure noise)
        from earthgen.prior import layout_prior_inputs, render_prior

        strength = args.strength if args.strength is not None else DEFAULT_STRENGTH
        size = (width, height) if width and height else None
        prior_kw = layout_prior_inputs(layout, args.gsd, seed, strength, size=size)
        image, strength = prior_kw.get("image"), prior_kw["strength"]
        if args.prior_out is not None:
            from earthgen.prior import DEFAULT_GSD, resize_ids

            prior = image
            if prior is None:  # strength 1 uses no prior; render it anyway for the file
                ids = layout if size is None else resize_ids(np.asarray(layout), *size)
                prior = render_prior(ids, args.gsd or DEFAULT_GSD, seed)
            write_image(args.prior_out, np.asarray(prior))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from earthgen.models import float32_on_cpu, resolve_model

    pipe = float32_on_cpu(load_pipeline(resolve_model(args.model, "image")).to(device))
    if args.extend is not None:  # the canvas rounded up to the sizes the model takes
        from earthgen.pipelines.image import outpaint_canvas

        image, mask, _ = outpaint_canvas(
            image, *(int(v) for v in args.extend), multiple=pipe.size_multiple
        )
        height, width = image.shape[:2]
    t0 = time.perf_counter()
    out = pipe(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        gsd=args.gsd,
        layout=layout,
        control_scales={"layout": args.layout_scale, "roads": args.layout_scale},
        image=image,
        mask=mask,
        strength=strength if mask is None else 1.0,
        height=height,
        width=width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        control_guidance_end=args.control_end,
        metadata_guidance_scale=args.metadata_guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]
    arr = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    crs = transform = None
    if geo is not None:  # the layout's grid, scaled if the image came out at another size
        from affine import Affine

        crs, transform, (lh, lw) = geo
        if arr.shape[:2] != (lh, lw):
            transform = transform @ Affine.scale(lw / arr.shape[1], lh / arr.shape[0])
    tif = _sidecar(args.out) if crs is not None else None
    write_image(args.out, arr, crs=crs, transform=transform)
    msg = (
        f"wrote {args.out} ({arr.shape[1]}x{arr.shape[0]}) "
        f"in {time.perf_counter() - t0:.1f} s, seed {seed}"
    )
    if tif is not None:
        write_image(tif, arr, crs=crs, transform=transform)
        msg += f"; GeoTIFF {tif}"
    elif crs is not None:
        msg += " (GeoTIFF)"
    print(msg)
    return 0
