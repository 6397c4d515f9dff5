"""``earthgen world``: generate a procedural world tile (or a grid of seamless tiles)."""

from __future__ import annotations

import argparse
import time

from earthgen.commands._args import float_list, positive_float, size_pair

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

outputs (in --out): rgb.png/.tif, semantic.png/.tif, legend.json, height.tif, layout.geojson,
labels.json, labels_dota.txt, caption.txt, meta.json, voxels.npz/.ply, preview.png
"""


def register(sub) -> None:
    p = sub.add_parser("world", help="generate a procedural world tile", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--size", type=size_pair, default=(512, 512), metavar="N|WxH",
                   help="tile size in pixels (default 512)")
    p.add_argument("--gsd", type=positive_float, default=0.5, metavar="M",
                   help="ground sampling distance, metres/pixel (default 0.5)")
    p.add_argument("--origin", type=float_list(2, "--origin"), default=None, metavar="X,Y",
                   help="world metres of the top-left corner (default: tile centred on the origin)")
    p.add_argument("--tiles", type=size_pair, default=(1, 1), metavar="N|CxR",
                   help="write a grid of adjacent tiles into OUT/tile_<row>_<col> (default 1)")
    p.add_argument("--preset", default="mixed", help="landscape preset: mixed, urban, suburban, rural, mountain")
    p.add_argument("--voxel-size", type=positive_float, default=1.0, metavar="M",
                   help="voxel edge in metres for voxels.npz/.ply (default 1.0)")
    p.add_argument("--no-voxels", action="store_true", help="skip the 3D voxel export")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from earthgen.world import generate_world, preset
    from earthgen.world.tile import check_tile_args

    cfg = preset(args.preset)
    w, h = args.size
    check_tile_args((w, h), args.gsd)
    cols, rows = args.tiles
    x0, y0 = args.origin if args.origin else (-0.5 * w * cols * args.gsd, 0.5 * h * rows * args.gsd)
    voxel = None if args.no_voxels else args.voxel_size
    jobs = [(r, c) for r in range(rows) for c in range(cols)]
    for r, c in tqdm(jobs, desc="world tiles", disable=len(jobs) == 1, unit="tile"):
        t0 = time.perf_counter()
        tile = generate_world(args.seed, (w, h), args.gsd, (x0 + c * w * args.gsd, y0 - r * h * args.gsd), cfg)
        dt = time.perf_counter() - t0
        out = args.out if len(jobs) == 1 else f"{args.out}/tile_{r}_{c}"
        tile.save(out, voxel_size=voxel)
        if len(jobs) == 1:
            n = len(tile.labels["labels"])
            print(f"world seed {args.seed}: {w}x{h} px at {args.gsd:g} m/px "
                  f"({w * args.gsd:g} x {h * args.gsd:g} m) in {dt:.2f} s, {n} labelled objects")
            print(f"caption: {tile.caption}")
            print(f"wrote {out}/ (rgb.png, semantic.png, height.tif, layout.geojson, labels.json, ...)")
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} tiles to {args.out}/tile_<row>_<col>/")
    return 0
