"""``earthgen demo``: the end-to-end tour on embedded data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

DESCRIPTION = """\
Run the main jobs end to end on embedded defaults, no download, CPU only, and write the results
under --out: a procedural world tile with every layer, a 2x2 grid of seamless world tiles and
their mosaic, a semantic layout rasterized from the embedded OpenStreetMap extract of Monaco,
text -> image and OSM layout -> image results of the packaged default image model (see
docs/models.md; PNGs, a GeoTIFF and a side-by-side of layout and image), a detection dataset
augmented with images of the packaged box-conditioned model (DOTA labels, a manifest, and a
sheet of real and generated images with their boxes drawn), and a 3D scene generated
by the packaged scene models from the Monaco layout (sparse voxels and 2D Gaussian surfels: GLB
and PLY meshes, a Gaussian splat PLY, a voxel point cloud, a DEM GeoTIFF and rendered views).
"""

MONACO_CENTER = (43.7384, 7.4246)  # lat, lon: the port of Monaco and Monaco-Ville
# (prompt, GSD in metres/pixel) for the text -> image step, in the training captions' style
TEXT_PROMPTS = (
    ("a satellite image of a dense residential area", 0.3),
    ("a satellite image of agricultural fields", 0.3),
    ("a satellite image of a forest", 0.3),
    ("a satellite image of a harbor", 0.3),
)
DEMO_IMAGE_PX = 256  # text -> image size, pixels (the packaged model's native size)
OSM_IMAGE_PX = 256  # layout -> image size, pixels
OSM_GSD = 2.0  # metres/pixel of the Monaco layout -> image step
# The layout -> image step renders the layout with per-class colour and texture statistics
# measured on real imagery (earthgen.prior) and refines that prior at this strength, the same
# default as `earthgen generate --layout` (1.0 = from pure noise).
DEMO_STEPS = 15  # DPM-Solver++ steps
DEMO_GUIDANCE = 4.0


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on embedded data",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument("--seed", type=int, default=3, help="world seed (default 3)")
    p.set_defaults(func=run)


def embedded_osm() -> Path:
    """Path of the embedded OSM extract of Monaco (ODbL, see earthgen/assets/NOTICE.md)."""
    return Path(str(resources.files("earthgen") / "assets" / "monaco-latest.osm.pbf"))


def monaco_layout(size: int, gsd: float):
    """The embedded Monaco extract rasterized around MONACO_CENTER (``size`` px, ``gsd`` m/px),
    read like any --layout (:func:`earthgen.inputs.read_layout`) ->
    :class:`earthgen.geo.layout.Layout`."""
    from earthgen.inputs import read_layout

    return read_layout(
        embedded_osm(), flag="embedded OSM", center=MONACO_CENTER, size=(size, size), gsd=gsd
    ).source


@contextlib.contextmanager
def own_folder(path: Path) -> Iterator[Path]:
    """A step's own output folder, written whole: the previous run's copy is removed, the new one
    is built in a temporary sibling and renamed into place (:func:`earthgen.io.atomic_dir`)."""
    import shutil

    from earthgen.io import atomic_dir

    shutil.rmtree(path, ignore_errors=True)
    with atomic_dir(path, merge=False) as tmp:
        yield tmp


@dataclass
class DemoContext:
    """What the steps share: the output folder, the seed, the JSON summary, cached models."""

    out: Path
    seed: int
    summary: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def image_pipeline(self):
        """The packaged default image model (loaded once, float32 on CPU)."""
        if "image" not in self.cache:
            from earthgen.pipelines.image import load_default_image_pipeline

            pipe = load_default_image_pipeline()
            pipe.set_progress_bar_config(disable=True)
            self.cache["image"] = pipe
        return self.cache["image"]


def step_world(ctx: DemoContext) -> str:
    from earthgen.world import generate_world

    out = ctx.out
    t0 = time.perf_counter()
    tile = generate_world(ctx.seed, 512, 0.5)
    gen_s = time.perf_counter() - t0
    with own_folder(out / "world") as tmp:
        files = tile.save(tmp, voxel_size=1.0)
    ctx.summary["world"] = {
        "seconds": round(gen_s, 3),
        "caption": tile.caption,
        "objects": len(tile.labels["labels"]),
        "files": sorted(Path(f).name for f in files.values()),
    }
    return f"512x512 at 0.5 m/px in {gen_s:.2f} s -> {out}/world/\n      caption: {tile.caption}"


def step_world_tiles(ctx: DemoContext) -> str:
    from earthgen.io import write_png
    from earthgen.world import generate_world

    out = ctx.out
    t0 = time.perf_counter()
    n, px, gsd = 2, 256, 1.0
    x0, y0 = -n * px * gsd / 2, n * px * gsd / 2
    rows = []
    with own_folder(out / "world_tiles") as tmp:
        for r in range(n):
            row = []
            for c in range(n):
                t = generate_world(ctx.seed, px, gsd, (x0 + c * px * gsd, y0 - r * px * gsd))
                t.save(tmp / f"tile_{r}_{c}", voxel_size=None)
                row.append(t.rgb)
            rows.append(np.concatenate(row, axis=1))
        write_png(tmp / "mosaic.png", np.concatenate(rows, axis=0))
    ctx.summary["world_tiles"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "grid": [n, n],
        "tile_px": px,
        "gsd_m": gsd,
    }
    return f"4 tiles of {px} px at {gsd:g} m/px -> {out}/world_tiles/mosaic.png"


def step_osm_layout(ctx: DemoContext) -> str:
    t0 = time.perf_counter()
    layout = monaco_layout(512, 2.0)
    with own_folder(ctx.out / "monaco_layout") as tmp:
        layout.save(tmp)
    fr = layout.class_fractions() if hasattr(layout, "class_fractions") else {}
    ctx.summary["monaco_layout"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "class_fractions": fr,
    }
    top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(fr.items(), key=lambda kv: -kv[1])[:4])
    return f"512x512 at 2 m/px ({top}) -> {ctx.out}/monaco_layout/"


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def step_text_to_image(ctx: DemoContext) -> str:
    """Text (+ GSD) -> image with the packaged model: one image per prompt, and a contact sheet."""
    import torch

    from earthgen.io import write_json, write_png

    out = ctx.out / "text2image"
    t0 = time.perf_counter()
    pipe = ctx.image_pipeline()
    load_s = time.perf_counter() - t0
    records, images = [], []
    with own_folder(out) as tmp:
        for i, (prompt, gsd) in enumerate(TEXT_PROMPTS):
            seed = ctx.seed + i
            img = pipe(
                prompt,
                gsd=gsd,
                height=DEMO_IMAGE_PX,
                width=DEMO_IMAGE_PX,
                num_inference_steps=DEMO_STEPS,
                guidance_scale=DEMO_GUIDANCE,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
            ).images[0]
            arr = _to_uint8(img)
            name = f"{i}_{_slug(prompt)}.png"
            write_png(tmp / name, arr)
            images.append(arr)
            records.append({"file": name, "prompt": prompt, "gsd_m": gsd, "seed": seed})
        write_png(tmp / "sheet.png", np.concatenate(images, axis=1))
        write_json(tmp / "prompts.json", records)
    ctx.summary["text2image"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "model_load_seconds": round(load_s, 3),
        "size_px": DEMO_IMAGE_PX,
        "steps": DEMO_STEPS,
        "guidance_scale": DEMO_GUIDANCE,
        "images": records,
    }
    return (
        f"{len(records)} prompts at {DEMO_IMAGE_PX} px with the packaged model -> {out}/sheet.png"
    )


def step_layout_to_image(ctx: DemoContext) -> str:
    """OSM layout of Monaco -> image with the packaged model's layout control (PNG + GeoTIFF,
    and the layout beside the result)."""
    import torch

    from earthgen.classes import colorize
    from earthgen.datasets import caption_from_classes
    from earthgen.inputs import write_image
    from earthgen.io import write_png
    from earthgen.prior import DEFAULT_STRENGTH, layout_prior_inputs

    out = ctx.out / "layout2image"
    t0 = time.perf_counter()
    px, gsd = OSM_IMAGE_PX, OSM_GSD
    layout = monaco_layout(px, gsd)
    pipe = ctx.image_pipeline()
    prompt = caption_from_classes(layout.semantic)
    prior = layout_prior_inputs(layout.semantic, gsd, ctx.seed, DEFAULT_STRENGTH)
    img = pipe(
        prompt,
        gsd=gsd,
        layout=layout.semantic,
        num_inference_steps=DEMO_STEPS,
        guidance_scale=DEMO_GUIDANCE,
        generator=torch.Generator().manual_seed(ctx.seed),
        output_type="np",
        **prior,
    ).images[0]
    arr = _to_uint8(img)
    with own_folder(out) as tmp:
        layout.save(tmp / "layout")
        write_image(tmp / "monaco.png", arr)
        write_image(tmp / "monaco.tif", arr, crs=layout.crs, transform=layout.transform)
        gap = np.full((px, 8, 3), 255, np.uint8)
        write_png(tmp / "prior.png", prior["image"])  # DEFAULT_STRENGTH < 1: there is a prior
        write_png(
            tmp / "side_by_side.png", np.concatenate([colorize(layout.semantic), gap, arr], axis=1)
        )
    ctx.summary["layout2image"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "size_px": px,
        "gsd_m": gsd,
        "prompt": prompt,
        "seed": ctx.seed,
        "center_lat_lon": list(MONACO_CENTER),
        "strength": DEFAULT_STRENGTH,
        "files": ["monaco.png", "monaco.tif", "prior.png", "side_by_side.png", "layout/"],
    }
    return (
        f"Monaco, {px}x{px} at {gsd:g} m/px ({px * gsd:.0f} m) "
        f"-> {out}/side_by_side.png, monaco.tif"
    )


AUGMENT_IMAGES = 4  # detection augmentation step: real world tiles in, as many synthetic images out
AUGMENT_PX = 128


def step_augment(ctx: DemoContext) -> str:
    """Detection augmentation: a small real (procedural) DOTA dataset -> new layouts -> images of
    the packaged box-conditioned model -> merged dataset + a sheet with the labels drawn."""
    import shutil

    from earthgen.augment import AugmentConfig, augment_dataset
    from earthgen.augment.world import world_items
    from earthgen.data import read_detection_dataset, write_detection_dataset
    from earthgen.io import write_png
    from earthgen.pipelines.image import load_default_image_pipeline
    from earthgen.world.export import draw_boxes
    from earthgen.world.tile import DETECTION_CLASSES

    out = ctx.out / "augment"
    shutil.rmtree(out, ignore_errors=True)  # the demo's own folder: augment_dataset wants it new
    t0 = time.perf_counter()
    items = world_items(
        AUGMENT_IMAGES, ctx.seed, AUGMENT_PX, out / "_tiles", progress=False, min_boxes=3
    )
    write_detection_dataset(
        items, out / "real", "dota", classes=list(DETECTION_CLASSES), images="copy"
    )
    shutil.rmtree(out / "_tiles")
    pipe = load_default_image_pipeline(name="boxes")
    pipe.set_progress_bar_config(disable=True)
    cfg = AugmentConfig(
        n=AUGMENT_IMAGES,
        seed=ctx.seed,
        steps=DEMO_STEPS,
        guidance_scale=DEMO_GUIDANCE,
        filter=False,
    )
    s = augment_dataset(out / "real", out / "augmented", pipe, cfg, progress=False)
    merged = read_detection_dataset(out / "augmented")
    real = [it for it in merged if not it.image.name.startswith("synthetic_")]
    syn = [it for it in merged if it.image.name.startswith("synthetic_")]

    def row(its) -> np.ndarray:
        from PIL import Image

        tiles = [
            draw_boxes(
                np.asarray(Image.open(it.image).convert("RGB").resize((2 * AUGMENT_PX,) * 2, 0)),
                it.boxes.corners * 2,
                list(it.boxes.labels),
            )
            for it in its
        ]
        return np.concatenate(tiles, axis=1)

    write_png(out / "sample.png", np.concatenate([row(real), row(syn)], axis=0))
    n_boxes = sum(len(it.boxes) for it in syn)
    ctx.summary["augment"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "real_images": s["real_images"],
        "synthetic_images": len(syn),
        "synthetic_boxes": n_boxes,
        "format": s["format"],
        "steps": DEMO_STEPS,
        "seed": ctx.seed,
    }
    return (
        f"{s['real_images']} real + {len(syn)} synthetic images ({n_boxes} boxes) in "
        f"{ctx.summary['augment']['seconds']:.1f} s -> {out}/augmented/ (DOTA + manifest), "
        f"{out}/sample.png (top: real, bottom: generated, labels drawn)"
    )


SCENE_SIZE_M = 64.0  # the 3D step: one 64 m window of the Monaco layout at 1 m voxels
SCENE_GSD = 0.5  # metres/pixel of its layout and orthophoto
SCENE_STEPS = 8


def step_scene3d(ctx: DemoContext) -> str:
    """A 3D scene generated by the packaged scene models from the Monaco OSM layout: building
    heights from the OSM tags, colours from an orthophoto generated from the same layout."""
    import torch

    from earthgen.classes import PALETTE
    from earthgen.export3d import render_views, save_scene
    from earthgen.geo.heights import height_caps, height_map
    from earthgen.io import write_png
    from earthgen.pipelines.scene import load_scene_pipeline, save_dem
    from earthgen.prior import orthophoto

    out = ctx.out / "scene3d"
    t0 = time.perf_counter()
    pipe = load_scene_pipeline(None, "cpu")
    pipe.set_progress_bar_config(disable=True)
    px = int(round(SCENE_SIZE_M / SCENE_GSD))
    lay = monaco_layout(px, SCENE_GSD)
    hm = height_map(lay)
    ortho = orthophoto(lay.semantic, SCENE_GSD, ctx.seed, steps=DEMO_STEPS, guidance=DEMO_GUIDANCE)
    res = pipe(
        semantic=lay.semantic,
        image=ortho,
        gsd=lay.gsd,
        heights=hm.top,
        height_base=np.nan_to_num(hm.base),
        height_cap=height_caps(lay.semantic),
        num_inference_steps=SCENE_STEPS,
        generator=torch.Generator().manual_seed(ctx.seed),
    )
    with own_folder(out) as tmp:
        paths = save_scene(
            tmp,
            res.coords,
            res.voxel_size,
            res.origin,
            res.colors,
            res.surfels,
            image_size=384,
            views=4,
        )
        save_dem(tmp / "dem.tif", res.height, res.voxel_size, lay.crs, lay.transform)
        write_png(tmp / "condition_semantic.png", PALETTE[lay.semantic])
        write_png(tmp / "orthophoto.png", ortho)
        c = res.coords
        ctr = (c.min(0) + c.max(0) + 1) / 2 * res.voxel_size + res.origin
        write_png(
            tmp / "oblique.png",
            render_views(res.surfels, ctr, 0.8 * SCENE_SIZE_M, 384, 1, elevation_deg=45.0)[0],
        )
    ctx.summary["scene3d"] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "size_m": SCENE_SIZE_M,
        "steps": SCENE_STEPS,
        "seed": ctx.seed,
        "voxels": int(len(res.coords)),
        "surfels": int(len(res.surfels["means"])),
        "building_height_sources": hm.source_counts(),
        "files": sorted(
            [Path(p).name for p in paths.values()] + ["dem.tif", "orthophoto.png", "oblique.png"]
        ),
    }
    return (
        f"generated from the Monaco layout, {SCENE_SIZE_M:g} m at 1 m voxels "
        f"({len(res.coords)} voxels, {len(res.surfels['means'])} surfels) "
        f"in {ctx.summary['scene3d']['seconds']:.1f} s -> {out}/ "
        f"(scene.glb, gaussians.ply, dem.tif, render.png, oblique.png, orthophoto.png)"
    )


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()[:5])


# The demo's steps, in order: (title, function(ctx) -> one-line report). Add a step with one line.
STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("world tile", step_world),
    ("seamless 2x2 world", step_world_tiles),
    ("OSM layout (Monaco)", step_osm_layout),
    ("text -> image", step_text_to_image),
    ("OSM layout -> image (Monaco)", step_layout_to_image),
    ("detection augmentation", step_augment),
    ("3D scene", step_scene3d),
]


def run(args: argparse.Namespace) -> int:
    from earthgen.io import write_json

    ctx = DemoContext(out=Path(args.out), seed=args.seed)
    print(f"earthgen demo -> {ctx.out}/")
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, 1):
        msg = step(ctx)
        print(f"[{i}/{len(STEPS)}] {title}: {msg}")
    ctx.summary["seconds"] = round(time.perf_counter() - t_all, 3)
    write_json(ctx.out / "demo_summary.json", ctx.summary)
    print(f"done in {ctx.summary['seconds']:.0f} s; summary in {ctx.out}/demo_summary.json")
    return 0
