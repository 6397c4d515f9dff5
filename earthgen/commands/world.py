"""``earthgen world``: generate a procedural world tile (or a grid of seamless tiles)."""

from __future__ import annotations

import argparse
import time

from earthgen.commands._args import (
    MAX_VOXEL_COLUMNS,
    check_output,
    float_list,
    number,
    positive_float,
    seed_int,
    size_pair,
)

# --origin: world metres, within +-1e7 (float64 noise coordinates stay exact to ~1e-9 m)
ORIGIN_LIMIT = 1e7
# --tiles: at most this many tiles per side
MAX_TILES_SIDE = 256

DESCRIPTION = """\
Generate a deterministic synthetic tile: height field, land-cover classes, OSM-like vector
layout, RGB aerial render, caption, detection labels and sparse voxels. The same --seed gives
the same world everywhere; tiles at different --origin values join without seams.
"""

EPILOG = """\
examples:
  earthgen world --seed 3 --size 512 --gsd 0.5 --out outputs/world
  earthgen world --seed 3 --size 1024x512 --gsd 2 --preset rural --out outputs/rural
  earthgen world --seed 3 --size 512 --gsd 0.5 --tiles 2x2 --out outputs/big   # 4 seamless tiles

outputs (in --out, a new or empty folder): rgb.png/.tif, semantic.png/.tif, legend.json,
height.tif, layout.geojson, labels.json, labels_dota.txt, caption.txt, meta.json, voxels.npz/.ply,
preview.png. --out appears complete (every tile) or not at all: the files are written into a
hidden .<name>.partial-* folder beside it, renamed at the end; a killed run leaves only that one.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "world",
        help="generate a procedural world tile",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=seed_int, default=0, help="world seed, 0..2**63-1 (default 0)")
    p.add_argument(
        "--size",
        type=size_pair,
        default=(512, 512),
        metavar="N|WxH",
        help="tile size in pixels (default 512)",
    )
    p.add_argument(
        "--gsd",
        type=_gsd,
        default=0.5,
        metavar="M",
        help="ground sampling distance, metres/pixel, 0.05..100 (default 0.5)",
    )
    p.add_argument(
        "--origin",
        type=float_list(2, "--origin", [(-ORIGIN_LIMIT, ORIGIN_LIMIT)] * 2),
        default=None,
        metavar="X,Y",
        help="world metres of the top-left corner (default: tile centred on the origin)",
    )
    p.add_argument(
        "--tiles",
        type=_tiles,
        default=(1, 1),
        metavar="N|CxR",
        help="write a grid of adjacent tiles into OUT/tile_<row>_<col> (default 1)",
    )
    p.add_argument(
        "--preset",
        default="mixed",
        help="landscape preset: mixed, urban, suburban, rural, mountain",
    )
    p.add_argument(
        "--voxel-size",
        type=number(0.0, 1000.0, lo_open=True),
        default=1.0,
        metavar="M",
        help="voxel edge in metres for voxels.npz/.ply (default 1.0; at most "
        f"{MAX_VOXEL_COLUMNS} voxel columns per tile, docs/limits.md)",
    )
    p.add_argument("--no-voxels", action="store_true", help="skip the 3D voxel export")
    p.add_argument("--out", required=True, help="output folder, new or empty")
    p.set_defaults(func=run, check=check_args)


def _gsd(text: str) -> float:
    """``--gsd``: a finite number > 0 in the range of the world generator, 0.05..100 m/px."""
    v = positive_float(text)
    if not 0.05 <= v <= 100:
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 0 in [0.05, 100] m/px, got {text}"
        )
    return v


def _tiles(text: str) -> tuple[int, int]:
    """``--tiles N|CxR``: at most MAX_TILES_SIDE per side."""
    return size_pair(text, max_side=MAX_TILES_SIDE, unit="tiles")


def check_args(args: argparse.Namespace) -> None:
    """Limits and the output folder, before any tile is generated (UserInputError: one line)."""
    import math

    from earthgen.errors import UserInputError
    from earthgen.world.tile import MAX_PIXELS, check_tile_args

    w, h = args.size
    if w * h > MAX_PIXELS:
        raise UserInputError(
            f"--size {w}x{h}: {w * h} pixels is over the limit of {MAX_PIXELS} pixels "
            "per tile; use --tiles or --origin for larger areas (tiles are seamless)"
        )
    check_tile_args((w, h), args.gsd)  # pixels (MAX_PIXELS) and GSD (0.05..100 m/px)
    if not args.no_voxels:
        cols = math.ceil(w * args.gsd / args.voxel_size) * math.ceil(h * args.gsd / args.voxel_size)
        if cols > MAX_VOXEL_COLUMNS:
            least = math.sqrt(w * args.gsd * h * args.gsd / MAX_VOXEL_COLUMNS)
            raise UserInputError(
                f"--voxel-size {args.voxel_size:g}: a {w * args.gsd:g} x {h * args.gsd:g} m tile "
                f"needs {cols} voxel columns, over the cap of {MAX_VOXEL_COLUMNS}; "
                f"use --voxel-size >= {least:.3g} or --no-voxels"
            )
    check_output(args.out, "--out", folder=True, empty=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from earthgen.io import atomic_dir
    from earthgen.world import generate_world, preset
    from earthgen.world.tile import check_tile_args

    cfg = preset(args.preset)
    w, h = args.size
    check_tile_args((w, h), args.gsd)
    check_args(args)
    cols, rows = args.tiles
    x0, y0 = args.origin if args.origin else (-0.5 * w * cols * args.gsd, 0.5 * h * rows * args.gsd)
    voxel = None if args.no_voxels else args.voxel_size
    jobs = [(r, c) for r in range(rows) for c in range(cols)]
    with atomic_dir(args.out, merge=False) as tmp:  # all tiles or nothing under --out
        for r, c in tqdm(jobs, desc="world tiles", disable=len(jobs) == 1, unit="tile"):
            t0 = time.perf_counter()
            tile = generate_world(
                args.seed, (w, h), args.gsd, (x0 + c * w * args.gsd, y0 - r * h * args.gsd), cfg
            )
            dt = time.perf_counter() - t0
            tile.save(tmp if len(jobs) == 1 else Path(tmp) / f"tile_{r}_{c}", voxel_size=voxel)
            if len(jobs) == 1:
                n = len(tile.labels["labels"])
                print(
                    f"world seed {args.seed}: {w}x{h} px at {args.gsd:g} m/px "
                    f"({w * args.gsd:g} x {h * args.gsd:g} m) in {dt:.2f} s, {n} labelled objects"
                )
                print(f"caption: {tile.caption}")
    if len(jobs) == 1:
        print(
            f"wrote {args.out}/ (rgb.png, semantic.png, height.tif, "
            "layout.geojson, labels.json, ...)"
        )
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} tiles to {args.out}/tile_<row>_<col>/")
    return 0
