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
  --image IMG      an aerial RGB image (PNG/JPEG at --gsd, or a GeoTIFF in any CRS, reprojected
                   onto a --layout's grid), alone or with a map: it conditions the generators
                   and colours roofs and ground (the orthophoto);
  --world SEED     a procedural world tile: its semantic map and its image (see --condition);
  nothing          an unconditional scene of --size-m metres.
With a map and no --image, an orthophoto is first generated from the map by the image model
(--no-ortho: none). Building heights come from the data (--heights data: OSM height, then
building:levels x 3 m, then a per-type default; roads, water and open land flat at the ground,
unmapped land at most 2 m; docs/heights.md), terrain from --dem.
Areas larger than one window (64 m for the default models) are generated on overlapping
windows sampled together (no seams). Writes under --out (all at once when complete):
scene.glb and scene_mesh.ply (voxel surface mesh), gaussians.ply (2DGS surfels for 3DGS
viewers), voxels.ply, render.png (orbit views), oblique.png (45 degrees, whole scene),
turntable.gif, dem.tif (surface height, metres), orthophoto.png, the conditions, scene.json.
"""

EPILOG = """\
examples:
  earthgen scene --world 3 --size-m 128 --seed 0 --out outputs/scene
  earthgen scene --layout monaco.osm.pbf --center 43.7384,7.4246 --size-m 256 --out outputs/monaco3d
  earthgen scene --layout town.osm.pbf --center 40.15,-105.5 --size-m 256 --dem srtm.tif --out hill
  earthgen scene --layout city.osm.pbf --center 60.17,24.94 --image ortho.tif --out helsinki3d
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

    p = sub.add_parser(
        "scene",
        help="generate a 3D scene (voxels + 2D Gaussian surfels)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="default",
        help="scene pipeline folder or hub id (default: embedded models)",
    )
    c = p.add_argument_group("conditions")
    c.add_argument("--layout", default=None, help="OSM (.osm/.pbf/.bz2) or GeoJSON file")
    c.add_argument("--center", type=center_list, default=None, metavar="LAT,LON")
    c.add_argument(
        "--bbox", type=bbox_list, default=None, metavar="MIN_LON,MIN_LAT,MAX_LON,MAX_LAT"
    )
    c.add_argument("--semantic", default=None, help="class-id PNG (palette or grey)")
    c.add_argument("--image", default=None, help="aerial RGB image of the same area")
    c.add_argument(
        "--world",
        type=seed_int,
        default=None,
        metavar="SEED",
        help="a procedural world tile as condition",
    )
    c.add_argument(
        "--preset",
        default="mixed",
        help="world preset with --world (mixed, urban, suburban, rural, mountain)",
    )
    c.add_argument(
        "--condition",
        choices=("semantic", "image", "both"),
        default="semantic",
        help="with --world: which of the tile's maps to give (default: semantic)",
    )
    c.add_argument(
        "--gsd", type=gsd_float, default=None, help="metres/pixel of --semantic/--image (default 1)"
    )
    c.add_argument(
        "--dem",
        default=None,
        help="ground elevation GeoTIFF (metres, any CRS) under a georeferenced "
        "condition (--layout or a GeoTIFF): columns are raised on it",
    )
    c.add_argument(
        "--dem-crs", default=None, help="CRS of a --dem file that has none (e.g. EPSG:4326)"
    )
    c.add_argument(
        "--heights",
        choices=("data", "model"),
        default="data",
        help="building heights: from the data (OSM tags, per-type defaults; default) or as the "
        "model generates them",
    )
    c.add_argument(
        "--no-ortho",
        action="store_true",
        help="with a map and no --image: do not generate an orthophoto (model colours only)",
    )
    c.add_argument(
        "--ortho-steps", type=steps_int, default=20, help="image model steps for the orthophoto"
    )
    c.add_argument(
        "--image-model", default="default", help="image model of the orthophoto (default: embedded)"
    )
    c.add_argument(
        "--size-m",
        type=number(0.0, SCENE_MAX_SIZE_M, lo_open=True),
        default=None,
        help="scene size, metres (unconditional, --world and --layout; default 64; at most "
        f"{SCENE_MAX_SIZE_M:g}, docs/limits.md)",
    )
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=steps_int, default=20, help="structure flow steps (Heun)")
    g.add_argument(
        "--texture-steps",
        type=steps_int,
        default=None,
        help="texture flow steps (default: --steps)",
    )
    g.add_argument(
        "--guidance", type=guidance_float, default=2.0, help="classifier-free guidance scale"
    )
    g.add_argument(
        "--overlap-m",
        type=float,
        default=16.0,
        help="overlap of neighbouring windows, metres (0 to 1024)",
    )
    g.add_argument(
        "--seed", type=seed_int, default=None, help="random seed (default: random, printed)"
    )
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    o = p.add_argument_group("outputs")
    o.add_argument(
        "--render-size",
        type=number(16, 8192, integer=True),
        default=512,
        help="pixels per rendered view, 16..8192",
    )
    o.add_argument(
        "--views",
        type=number(1, 64, integer=True),
        default=4,
        help="orbit views in render.png, 1..64",
    )
    o.add_argument(
        "--turntable",
        type=number(0, 720, integer=True),
        default=24,
        help="frames of turntable.gif, 0..720 (0: none)",
    )
    o.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run, check=check_args)


def check_args(args: argparse.Namespace) -> None:
    """The output folder, the input files and --overlap-m, before any work (UserInputError: one
    line); the other numbers are checked by their argparse types."""
    import math

    from earthgen.commands._args import check_output
    from earthgen.errors import UserInputError
    from earthgen.inputs import IMAGE_SUFFIXES, LAYOUT_SUFFIXES, require_input

    if not (math.isfinite(args.overlap_m) and 0.0 <= args.overlap_m <= 1024.0):
        raise UserInputError(
            f"--overlap-m must be a finite number in [0, 1024] metres, got {args.overlap_m}"
        )
    check_output(args.out, "--out", folder=True, empty=True)
    if args.layout:
        require_input(args.layout, "--layout", LAYOUT_SUFFIXES, "layout")
    if args.semantic:
        require_input(args.semantic, "--semantic", (".png", ".tif", ".tiff"), "class map")
    if args.image:
        require_input(args.image, "--image", IMAGE_SUFFIXES, "image")
    if args.dem:
        require_input(args.dem, "--dem", (".tif", ".tiff", ".asc", ".vrt", ".img"), "DEM")
        if args.world is not None or (
            args.layout is None
            and not str(args.semantic or args.image or "").lower().endswith((".tif", ".tiff"))
        ):
            raise UserInputError(
                "--dem needs a georeferenced condition: --layout, or a GeoTIFF --semantic/--image"
            )


def conditions(args: argparse.Namespace, seed: int = 0) -> dict:
    """The pipeline's condition arguments from the command line, plus ``geo`` (crs, transform of
    the north-west corner) when the condition is georeferenced, ``heights`` / ``height_base``
    (building tops, metres above ground, from the data), ``dem`` (ground elevation, metres) and
    ``ortho`` (how the orthophoto was made)."""
    import numpy as np

    from earthgen.errors import UserInputError
    from earthgen.inputs import read_image, read_layout

    given = [n for n in ("layout", "semantic", "world") if getattr(args, n) is not None]
    if len(given) > 1:
        raise UserInputError(
            f"give one of --layout, --semantic, --world (got {', '.join('--' + n for n in given)})"
        )
    if args.world is not None and args.image:
        raise UserInputError(
            "--world brings its own image; --image applies to --layout/--semantic or alone"
        )
    out: dict = {
        "semantic": None,
        "image": None,
        "gsd": args.gsd,
        "size_m": None,
        "geo": None,
        "heights": None,
        "height_base": None,
        "height_cap": None,
        "dem": None,
        "ortho": None,
    }
    size = args.size_m or 64.0
    source = None
    if args.world is not None:
        from earthgen.world.config import preset
        from earthgen.world.tile import generate_world

        gsd = args.gsd or 0.5
        px = int(round(size / gsd))
        if px > 4096:
            raise UserInputError(
                f"--size-m {size:g} at {gsd:g} m/px is over 4096 px; use a coarser --gsd"
            )
        tile = generate_world(
            args.world, px, gsd, origin=(-size / 2, size / 2), config=preset(args.preset)
        )
        if args.condition in ("semantic", "both"):
            out["semantic"] = tile.semantic
        if args.condition in ("image", "both"):
            out["image"] = tile.rgb
            out["ortho"] = "world tile"
        out["gsd"] = gsd
        out["reference"] = tile
    elif args.layout is not None:
        gsd = args.gsd or 1.0
        px = int(round(size / gsd))
        lay = read_layout(
            args.layout,
            flag="--layout",
            bbox=args.bbox,
            center=args.center,
            size=None if args.bbox else (px, px),
            gsd=gsd,
        )
        source = lay.source
        out.update(
            semantic=lay.semantic,
            gsd=lay.gsd or gsd,
            geo=(lay.crs, lay.transform) if lay.crs is not None else None,
        )
    elif args.semantic is not None:
        lay = read_layout(args.semantic, flag="--semantic", gsd=args.gsd)
        out.update(
            semantic=lay.semantic,
            gsd=lay.gsd or args.gsd or 1.0,
            geo=(lay.crs, lay.transform) if lay.crs is not None else None,
        )
    if args.image and args.world is None:
        img = read_image(args.image, flag="--image")
        rgb = img.rgb
        if out["geo"] is not None and img.crs is not None:  # onto the map's grid
            rgb = _regrid_image(img, out["geo"], out["semantic"].shape, args.image)
        elif out["semantic"] is None and img.crs is not None:
            out["geo"] = (img.crs, img.transform)
        out.update(
            image=rgb, gsd=out["gsd"] or img.gsd or args.gsd or 1.0, ortho=f"--image {args.image}"
        )
    from earthgen.commands._args import SCENE_MAX_SIZE_M

    for key in ("semantic", "image"):
        m = out[key]
        if (
            m is not None
            and args.world is None
            and max(m.shape[:2]) * (out["gsd"] or 1.0) > SCENE_MAX_SIZE_M
        ):
            flag = "--image" if key == "image" else ("--layout" if args.layout else "--semantic")
            raise UserInputError(
                f"{flag}: {m.shape[1]}x{m.shape[0]} px at {out['gsd'] or 1.0:g} m/px is over "
                f"the scene limit of {SCENE_MAX_SIZE_M:g} m a side (docs/limits.md)"
            )
    if out["semantic"] is None and out["image"] is None:
        out["size_m"] = size
    elif args.size_m is not None and args.world is None and args.layout is None:
        raise UserInputError(
            "--size-m applies to unconditional scenes, --world and --layout "
            "(a map sets its own size)"
        )
    sem = out["semantic"]
    if (
        sem is not None
        and out["image"] is not None
        and tuple(out["image"].shape[:2]) != tuple(sem.shape)
    ):
        raise UserInputError(
            f"--image is {out['image'].shape[1]}x{out['image'].shape[0]} px but the map is "
            f"{sem.shape[1]}x{sem.shape[0]}: give them on the same grid (or a GeoTIFF --image)"
        )
    if args.heights == "data" and sem is not None and args.world is None:
        from earthgen.classes import CLASS_ID
        from earthgen.geo.heights import default_height, height_caps, height_map

        out["height_cap"] = height_caps(sem)

        if source is not None:
            hm = height_map(source)
            out["heights"], out["height_base"] = hm.top, np.nan_to_num(hm.base)
        elif (np.asarray(sem) == CLASS_ID["building"]).any():  # a class map: the default height
            out["heights"] = np.where(
                np.asarray(sem) == CLASS_ID["building"], default_height("yes"), np.nan
            ).astype(np.float32)
    if args.dem:
        from earthgen.geo.heights import read_dem

        ref = sem if sem is not None else out["image"]
        crs, transform = out["geo"]
        out["dem"] = read_dem(args.dem, crs, transform, tuple(ref.shape[:2]), src_crs=args.dem_crs)
    if sem is not None and out["image"] is None and args.world is None and not args.no_ortho:
        from earthgen.prior import orthophoto

        out["image"] = orthophoto(
            sem,
            out["gsd"],
            seed,
            model=args.image_model,
            steps=args.ortho_steps,
            device=args.device,
        )
        out["ortho"] = (
            f"generated by the image model ({args.image_model}, {args.ortho_steps} steps)"
        )
    return out


def _regrid_image(img, geo, shape, path: str):
    """A georeferenced RGB image reprojected (bilinear) onto the map's grid ``shape`` = (H, W)."""
    import numpy as np
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from earthgen.errors import UserInputError

    crs, transform = geo
    out = np.zeros((3, *shape), np.float32)
    valid = np.zeros(shape, np.float32)
    src = np.moveaxis(img.rgb.astype(np.float32), -1, 0)
    for b in range(3):
        reproject(
            src[b],
            out[b],
            src_transform=img.transform,
            src_crs=img.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.bilinear,
            dst_nodata=np.nan,
        )
    reproject(
        np.ones(img.rgb.shape[:2], np.float32),
        valid,
        src_transform=img.transform,
        src_crs=img.crs,
        dst_transform=transform,
        dst_crs=crs,
        resampling=Resampling.nearest,
        dst_nodata=0,
    )
    cover = float((valid > 0).mean())
    if cover < 0.999:
        raise UserInputError(
            f"--image {path} covers {100 * cover:.1f}% of the scene's area; give an image "
            "that covers it all"
        )
    return np.clip(np.rint(np.moveaxis(out, 0, -1)), 0, 255).astype(np.uint8)


def save_outputs(
    out_dir: Path, result, cond: dict, args: argparse.Namespace, seed: int, seconds: float
) -> dict:
    """Write the scene's files (see the command's description); returns their paths.

    ``result``: an in-memory scene (:class:`~earthgen.pipelines.scene.EarthSceneOutput`) or one
    streamed to disk (:class:`~earthgen.pipelines.scene.StreamedSceneOutput`), written chunk by
    chunk within the budgets of :func:`earthgen.export3d.save_scene_store` (the same files as in
    memory for scenes under them; above, a tiled mesh, an overview scene.glb and renders of
    merged surfels)."""
    import numpy as np

    from earthgen.export3d import lod_surfels, render_views, save_scene, save_scene_store
    from earthgen.io import write_png
    from earthgen.pipelines.scene import save_dem

    store = getattr(result, "store", None)
    if (store.n_voxels if store is not None else len(result.coords)) == 0:
        from earthgen.errors import EarthGenError

        raise EarthGenError(
            "the model generated an empty scene (no voxels); try another --seed or more --steps"
        )
    if store is not None:
        surfels = lod_surfels(store, result.voxel_size)  # all of them up to the render budget
        lo, hi = store.bounds()
        paths = save_scene_store(
            out_dir,
            store,
            result.voxel_size,
            result.origin,
            image_size=args.render_size,
            views=args.views,
            render_surfels=surfels,
        )
    else:
        surfels = result.surfels
        lo, hi = result.coords.min(0), result.coords.max(0)
        paths = save_scene(
            out_dir,
            result.coords,
            result.voxel_size,
            result.origin,
            result.colors,
            surfels,
            image_size=args.render_size,
            views=args.views,
        )
    crs, transform = cond["geo"] if cond.get("geo") is not None else (None, None)
    surface = result.height + float(
        result.origin[2]
    )  # metres above the datum with --dem, else the base
    paths["dem"] = str(save_dem(out_dir / "dem.tif", surface, result.voxel_size, crs, transform))
    if cond.get("semantic") is not None:
        from earthgen.classes import PALETTE

        paths["semantic"] = str(
            write_png(out_dir / "condition_semantic.png", PALETTE[np.asarray(cond["semantic"])])
        )
    if cond.get("image") is not None:
        name = (
            "orthophoto.png"
            if cond.get("ortho", "").startswith("generated")
            else "condition_image.png"
        )
        paths["image"] = str(write_png(out_dir / name, np.asarray(cond["image"])[..., :3]))
    ctr = (lo + hi + 1) / 2 * result.voxel_size + result.origin
    ext = float(np.max(hi[:2] - lo[:2] + 1) * result.voxel_size)
    oblique = render_views(surfels, ctr, 0.8 * ext, args.render_size, 1, elevation_deg=45.0)[0]
    paths["oblique"] = str(write_png(out_dir / "oblique.png", oblique))
    if args.turntable > 0:
        from PIL import Image

        frames = render_views(
            surfels, ctr, ext, min(args.render_size, 256), args.turntable, elevation_deg=35.0
        )
        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(
            out_dir / "turntable.gif", save_all=True, append_images=ims[1:], duration=120, loop=0
        )
        paths["turntable"] = str(out_dir / "turntable.gif")
    meta = json.loads((out_dir / "scene.json").read_text())
    meta.update(
        {
            "seed": seed,
            "seconds": round(seconds, 2),
            "windows": len(result.windows),
            "size_m": [
                result.height.shape[1] * result.voxel_size,
                result.height.shape[0] * result.voxel_size,
            ],
            "condition": [k for k in ("semantic", "image") if cond.get(k) is not None] or ["none"],
            "steps": args.steps,
            "guidance": args.guidance,
            "model": args.model,
            "orthophoto": cond.get("ortho"),
            "heights": args.heights if cond.get("heights") is not None else "model",
            "dem": args.dem,
            "coverage_windows": len(result.windows),
        }
    )
    (out_dir / "scene.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def run(args: argparse.Namespace) -> int:
    import torch

    from earthgen.errors import UserInputError
    from earthgen.io import atomic_dir
    from earthgen.pipelines.scene import load_scene_pipeline

    if args.turntable < 0:
        raise UserInputError(f"--turntable must be >= 0 frames, got {args.turntable}")
    check_args(args)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    cond = conditions(args, seed)
    pipe = load_scene_pipeline(args.model, args.device)
    out = Path(args.out)
    with atomic_dir(out, merge=False) as tmp:  # a killed run leaves no --out folder
        # finished windows go to disk as they are done (peak memory that of a few windows);
        # the chunk files are deleted once the outputs are written
        t0 = time.perf_counter()
        result = _generate(pipe, cond, args, seed, tmp / ".chunks")
        seconds = time.perf_counter() - t0
        paths = save_outputs(tmp, result, cond, args, seed, seconds)
        result.store.delete()
    ny, nx = result.height.shape
    print(
        f"scene of {nx * result.voxel_size:g} x {ny * result.voxel_size:g} m "
        f"({len(result.windows)} windows, {result.store.n_voxels} voxels, "
        f"{result.store.n_surfels} surfels) in {seconds:.1f} s, seed {seed}"
    )
    print(f"wrote {out}/: " + ", ".join(sorted(Path(p).name for p in paths.values())))
    return 0


def _generate(pipe, cond: dict, args: argparse.Namespace, seed: int, chunks: Path):
    """Run the pipeline on the command's conditions, streaming windows to ``chunks``."""
    import torch

    return pipe(
        semantic=cond["semantic"],
        image=cond["image"],
        gsd=cond["gsd"],
        size_m=cond["size_m"],
        overlap_m=args.overlap_m,
        num_inference_steps=args.steps,
        texture_steps=args.texture_steps,
        guidance_scale=args.guidance,
        heights=cond["heights"],
        height_base=cond["height_base"],
        height_cap=cond["height_cap"],
        dem=cond["dem"],
        generator=torch.Generator().manual_seed(seed),
        stream_to=chunks,
    )
