"""``earthgen demo``: the end-to-end tour on embedded data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

import numpy as np

DESCRIPTION = """\
Run the main jobs end to end on embedded defaults, no download, CPU only, and write the results
under --out: a procedural world tile with every layer, a 2x2 grid of seamless world tiles and
their mosaic, a semantic layout rasterized from the embedded OpenStreetMap extract of Monaco, and
a 3D scene of a world tile (sparse voxels and 2D Gaussian surfels: GLB and PLY meshes, a Gaussian
splat PLY, a voxel point cloud and rendered views).
"""

MONACO_CENTER = (43.7384, 7.4246)  # lat, lon: the port of Monaco and Monaco-Ville


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on embedded data", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument("--seed", type=int, default=3, help="world seed (default 3)")
    p.set_defaults(func=run)


def embedded_osm() -> Path:
    """Path of the embedded OSM extract of Monaco (ODbL, see earthgen/assets/NOTICE.md)."""
    return Path(str(resources.files("earthgen") / "assets" / "monaco-latest.osm.pbf"))


def run(args: argparse.Namespace) -> int:
    from earthgen.geo.layout import build_layout
    from earthgen.io import write_json, write_png
    from earthgen.world import generate_world

    out = Path(args.out)
    summary: dict = {}
    steps = ["world tile", "seamless 2x2 world", "OSM layout (Monaco)", "3D scene"]
    print(f"earthgen demo -> {out}/")

    t0 = time.perf_counter()
    tile = generate_world(args.seed, 512, 0.5)
    gen_s = time.perf_counter() - t0
    files = tile.save(out / "world", voxel_size=1.0)
    summary["world"] = {"seconds": round(gen_s, 3), "caption": tile.caption,
                        "objects": len(tile.labels["labels"]), "files": sorted(Path(f).name for f in files.values())}
    print(f"[1/{len(steps)}] {steps[0]}: 512x512 at 0.5 m/px in {gen_s:.2f} s -> {out}/world/")
    print(f"      caption: {tile.caption}")

    t0 = time.perf_counter()
    n, px, gsd = 2, 256, 1.0
    x0, y0 = -n * px * gsd / 2, n * px * gsd / 2
    rows = []
    for r in range(n):
        row = []
        for c in range(n):
            t = generate_world(args.seed, px, gsd, (x0 + c * px * gsd, y0 - r * px * gsd))
            t.save(out / "world_tiles" / f"tile_{r}_{c}", voxel_size=None)
            row.append(t.rgb)
        rows.append(np.concatenate(row, axis=1))
    write_png(out / "world_tiles" / "mosaic.png", np.concatenate(rows, axis=0))
    summary["world_tiles"] = {"seconds": round(time.perf_counter() - t0, 3), "grid": [n, n], "tile_px": px, "gsd_m": gsd}
    print(f"[2/{len(steps)}] {steps[1]}: 4 tiles of {px} px at {gsd:g} m/px -> {out}/world_tiles/mosaic.png")

    t0 = time.perf_counter()
    layout = build_layout(embedded_osm(), center=MONACO_CENTER, size=(512, 512), gsd=2.0)
    layout.save(out / "monaco_layout")
    fr = layout.class_fractions() if hasattr(layout, "class_fractions") else {}
    summary["monaco_layout"] = {"seconds": round(time.perf_counter() - t0, 3), "class_fractions": fr}
    top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(fr.items(), key=lambda kv: -kv[1])[:4])
    print(f"[3/{len(steps)}] {steps[2]}: 512x512 at 2 m/px ({top}) -> {out}/monaco_layout/")

    t0 = time.perf_counter()
    from earthgen.export3d import save_scene
    from earthgen.world.scene3d import world_scene

    sc = world_scene(generate_world(args.seed, 256, 0.5, origin=(-64.0, 64.0)), 1.0)
    paths = save_scene(out / "scene3d", sc.coords, sc.voxel_size, sc.origin, sc.color, sc.reference,
                       semantic=sc.semantic, image_size=384, views=4)
    summary["scene3d"] = {"seconds": round(time.perf_counter() - t0, 3), "voxels": len(sc),
                          "surfels": len(sc.reference["means"]), "files": sorted(Path(p).name for p in paths.values())}
    print(f"[4/{len(steps)}] {steps[3]}: 128 m at 1 m voxels ({len(sc)} voxels, {len(sc.reference['means'])} surfels) "
          f"in {summary['scene3d']['seconds']:.1f} s -> {out}/scene3d/ (scene.glb, gaussians.ply, render.png)")
    write_json(out / "demo_summary.json", summary)
    print(f"done; summary in {out}/demo_summary.json")
    return 0
