"""``earthgen scene``: 3D scenes (voxels + 2D Gaussian surfels) from a semantic map, an aerial
image, or nothing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DESCRIPTION = """\
Generate a 3D scene with an EarthScenePipeline: structure flow -> structure VAE (voxels) ->
texture flow -> texture VAE (2D Gaussian surfels). Conditions, any or none:
  --layout FILE    an OSM (.osm/.pbf) or GeoJSON file, rasterized around --center/--bbox
                   (the DEM GeoTIFF is then georeferenced in its UTM frame);
  --semantic PNG   a class-id map (palette or grey PNG of earthgen's class table) at --gsd;
  --image IMG      an aerial RGB image (PNG/JPEG/GeoTIFF) at --gsd, alone or with a map;
  --world SEED     a procedural world tile: its semantic map and its image (see --condition);
  nothing          an unconditional scene of --size-m metres.
Areas larger than one window (64 m for the default models) are generated window by window,
each conditioned on its neighbours' borders. Writes under --out: scene.glb and scene_mesh.ply
(voxel surface mesh), gaussians.ply (2DGS surfels for 3DGS viewers), voxels.ply, render.png
(orbit views), turntable.gif, dem.tif (surface height, metres), the conditions, scene.json.
"""

EPILOG = """\
examples:
  earthgen scene --world 3 --size-m 128 --seed 0 --out outputs/scene
  earthgen scene --layout monaco.osm.pbf --center 43.7384,7.4246 --size-m 200 --out outputs/monaco3d
  earthgen scene --semantic layout.png --gsd 1 --out outputs/s3d
  earthgen scene --size-m 64 --seed 5 --out outputs/unconditional
  earthgen scene --world 3 --condition image --model runs/scene-pipeline --out outputs/from_image
"""


def register(sub) -> None:
    from earthgen.commands._args import (
        SCENE_MAX_SIZE_M,
        bbox_list,
        center_list,
        gsd_float,
        guidance_float,
        number,
        seed_int,
        steps_int,
    )

    p = sub.add_parser("scene", help="generate a 3D scene (voxels + 2D Gaussian surfels)", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="scene pipeline folder or hub id (default: embedded models)")
    c = p.add_argument_group("conditions")
    c.add_argument("--layout", default=None, help="OSM (.osm/.pbf/.bz2) or GeoJSON file")
    c.add_argument("--center", type=center_list, default=None, metavar="LAT,LON")
    c.add_argument("--bbox", type=bbox_list, default=None, metavar="MIN_LON,MIN_LAT,MAX_LON,MAX_LAT")
    c.add_argument("--semantic", default=None, help="class-id PNG (palette or grey)")
    c.add_argument("--image", default=None, help="aerial RGB image of the same area")
    c.add_argument("--world", type=seed_int, default=None, metavar="SEED", help="a procedural world tile as condition")
    c.add_argument("--preset", default="mixed", help="world preset with --world (mixed, urban, suburban, rural, mountain)")
    c.add_argument("--condition", choices=("semantic", "image", "both"), default="semantic",
                   help="with --world: which of the tile's maps to give (default: semantic)")
    c.add_argument("--gsd", type=gsd_float, default=None, help="metres/pixel of --semantic/--image (default 1)")
    c.add_argument("--size-m", type=number(0.0, SCENE_MAX_SIZE_M, lo_open=True), default=None,
                   help="scene size, metres (unconditional, --world and --layout; default 64; at most "
                        f"{SCENE_MAX_SIZE_M:g}, docs/limits.md)")
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=steps_int, default=20, help="structure flow steps (Heun)")
    g.add_argument("--texture-steps", type=steps_int, default=None, help="texture flow steps (default: --steps)")
    g.add_argument("--guidance", type=guidance_float, default=2.0, help="classifier-free guidance scale")
    g.add_argument("--overlap-m", type=float, default=16.0,
                   help="overlap of neighbouring windows, metres (0 to 1024)")
    g.add_argument("--seed", type=seed_int, default=None, help="random seed (default: random, printed)")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    o = p.add_argument_group("outputs")
    o.add_argument("--render-size", type=number(16, 8192, integer=True), default=512,
                   help="pixels per rendered view, 16..8192")
    o.add_argument("--views", type=number(1, 64, integer=True), default=4, help="orbit views in render.png, 1..64")
    o.add_argument("--turntable", type=number(0, 720, integer=True), default=24,
                   help="frames of turntable.gif, 0..720 (0: none)")
    o.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run, check=check_args)


def check_args(args: argparse.Namespace) -> None:
    """The output folder and --overlap-m, before any work (UserInputError: one line); the other
    numbers are checked by their argparse types."""
    import math

    from earthgen.commands._args import check_output
    from earthgen.errors import UserInputError

    if not (math.isfinite(args.overlap_m) and 0.0 <= args.overlap_m <= 1024.0):
        raise UserInputError(f"--overlap-m must be a finite number in [0, 1024] metres, got {args.overlap_m}")
    check_output(args.out, "--out", folder=True)


def _read_image(path: str, what: str):
    import numpy as np

    from earthgen.errors import UserInputError

    if path.lower().endswith((".tif", ".tiff")):
        from earthgen.data.geotiff import read_geotiff

        return read_geotiff(path).rgb, None
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot read {what} {path}: {e}") from None
    return np.asarray(img), img


def conditions(args: argparse.Namespace) -> dict:
    """The pipeline's condition arguments from the command line, plus ``geo`` (crs, transform of
    the north-west corner) when the condition is georeferenced."""
    import numpy as np

    from earthgen.errors import UserInputError

    given = [n for n in ("layout", "semantic", "world") if getattr(args, n) is not None]
    if len(given) > 1:
        raise UserInputError(f"give one of --layout, --semantic, --world (got {', '.join('--' + n for n in given)})")
    if args.world is not None and args.image:
        raise UserInputError("--world brings its own image; --image applies to --layout/--semantic or alone")
    out: dict = {"semantic": None, "image": None, "gsd": args.gsd, "size_m": None, "geo": None}
    size = args.size_m or 64.0
    if args.world is not None:
        from earthgen.world.config import preset
        from earthgen.world.tile import generate_world

        gsd = args.gsd or 0.5
        px = int(round(size / gsd))
        if px > 4096:
            raise UserInputError(f"--size-m {size:g} at {gsd:g} m/px is over 4096 px; use a coarser --gsd")
        tile = generate_world(args.world, px, gsd, origin=(-size / 2, size / 2), config=preset(args.preset))
        if args.condition in ("semantic", "both"):
            out["semantic"] = tile.semantic
        if args.condition in ("image", "both"):
            out["image"] = tile.rgb
        out["gsd"] = gsd
        out["reference"] = tile
    elif args.layout is not None:
        from earthgen.geo.layout import build_layout

        gsd = args.gsd or 1.0
        px = int(round(size / gsd))
        lay = build_layout(args.layout, bbox=args.bbox, center=args.center,
                           size=None if args.bbox else (px, px), gsd=gsd)
        out.update(semantic=lay.semantic, gsd=lay.gsd, geo=(lay.crs, lay.transform))
    elif args.semantic is not None:
        sem, _ = _read_image(args.semantic, "semantic map")
        if sem.ndim != 2:
            raise UserInputError("a semantic PNG must hold class ids (palette or grey), not RGB colours")
        out.update(semantic=sem, gsd=args.gsd or 1.0)
    if args.image and args.world is None:
        img, _ = _read_image(args.image, "image")
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        out.update(image=img, gsd=out["gsd"] or args.gsd or 1.0)
    from earthgen.commands._args import SCENE_MAX_SIZE_M

    for key in ("semantic", "image"):
        m = out[key]
        if m is not None and args.world is None and max(m.shape[:2]) * (out["gsd"] or 1.0) > SCENE_MAX_SIZE_M:
            flag = "--image" if key == "image" else ("--layout" if args.layout else "--semantic")
            raise UserInputError(f"{flag}: {m.shape[1]}x{m.shape[0]} px at {out['gsd'] or 1.0:g} m/px is over "
                                 f"the scene limit of {SCENE_MAX_SIZE_M:g} m a side (docs/limits.md)")
    if out["semantic"] is None and out["image"] is None:
        out["size_m"] = size
    elif args.size_m is not None and args.world is None and args.layout is None:
        raise UserInputError("--size-m applies to unconditional scenes, --world and --layout (a map sets its own size)")
    return out


def save_outputs(out_dir: Path, result, cond: dict, args: argparse.Namespace, seed: int, seconds: float) -> dict:
    """Write the scene's files (see the command's description); returns their paths."""
    import numpy as np

    from earthgen.export3d import render_views, save_scene
    from earthgen.io import write_png
    from earthgen.pipelines.scene import save_dem

    if not len(result.coords):
        from earthgen.errors import EarthGenError

        raise EarthGenError("the model generated an empty scene (no voxels); try another --seed or more --steps")
    paths = save_scene(out_dir, result.coords, result.voxel_size, result.origin, result.colors, result.surfels,
                       image_size=args.render_size, views=args.views)
    crs, transform = cond["geo"] if cond.get("geo") is not None else (None, None)
    paths["dem"] = str(save_dem(out_dir / "dem.tif", result.height, result.voxel_size, crs, transform))
    if cond.get("semantic") is not None:
        from earthgen.classes import PALETTE

        paths["semantic"] = str(write_png(out_dir / "condition_semantic.png", PALETTE[np.asarray(cond["semantic"])]))
    if cond.get("image") is not None:
        paths["image"] = str(write_png(out_dir / "condition_image.png", np.asarray(cond["image"])[..., :3]))
    if args.turntable > 0:
        from PIL import Image

        c = result.coords
        ctr = (c.min(0) + c.max(0) + 1) / 2 * result.voxel_size + result.origin
        ext = float(np.max(c.max(0) - c.min(0) + 1) * result.voxel_size)
        frames = render_views(result.surfels, ctr, ext, min(args.render_size, 256), args.turntable,
                              elevation_deg=35.0)
        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(out_dir / "turntable.gif", save_all=True, append_images=ims[1:], duration=120, loop=0)
        paths["turntable"] = str(out_dir / "turntable.gif")
    meta = json.loads((out_dir / "scene.json").read_text())
    meta.update({"seed": seed, "seconds": round(seconds, 2), "windows": len(result.windows),
                 "size_m": [result.height.shape[1] * result.voxel_size, result.height.shape[0] * result.voxel_size],
                 "condition": [k for k in ("semantic", "image") if cond.get(k) is not None] or ["none"],
                 "steps": args.steps, "guidance": args.guidance, "model": args.model})
    (out_dir / "scene.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def run(args: argparse.Namespace) -> int:
    import torch

    from earthgen.errors import UserInputError
    from earthgen.pipelines.scene import load_scene_pipeline

    if args.turntable < 0:
        raise UserInputError(f"--turntable must be >= 0 frames, got {args.turntable}")
    check_args(args)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    cond = conditions(args)
    pipe = load_scene_pipeline(args.model, args.device)
    t0 = time.perf_counter()
    result = pipe(semantic=cond["semantic"], image=cond["image"], gsd=cond["gsd"], size_m=cond["size_m"],
                  overlap_m=args.overlap_m, num_inference_steps=args.steps, texture_steps=args.texture_steps,
                  guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    paths = save_outputs(out, result, cond, args, seed, seconds)
    ny, nx = result.height.shape
    print(f"scene of {nx * result.voxel_size:g} x {ny * result.voxel_size:g} m ({len(result.windows)} windows, "
          f"{len(result.coords)} voxels, {len(result.surfels['means'])} surfels) in {seconds:.1f} s, seed {seed}")
    print(f"wrote {out}/: " + ", ".join(sorted(Path(p).name for p in paths.values())))
    return 0
