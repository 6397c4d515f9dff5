"""``augment_dataset``: a detection dataset in, the same dataset plus filtered synthetic images out.

Steps: read the dataset (any format of :mod:`earthgen.data`) -> sample new layouts
(:mod:`earthgen.augment.layouts`) -> generate one image per layout with a box-conditioned
:class:`~earthgen.pipelines.image.EarthImagePipeline` (prompt from the class counts, GSD of the
source image when known) -> detect with a :class:`~earthgen.detection.BoxNet` trained on the real
data -> keep the images whose requested boxes are found (:mod:`earthgen.augment.filter`) ->
write real + kept synthetic images in the output format (default: the input's), with
``augment/manifest.json`` (which images are synthetic, their seeds, layouts' sources and
operations, recall, kept or not) and the filtering detector in ``augment/detector/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from earthgen.augment.filter import filter_generated
from earthgen.augment.layouts import (
    Layout,
    LayoutConfig,
    rotation_rules,
    sample_layouts,
    turn_corners,
)
from earthgen.augment.tiles import TileGrid, TileMerger, overlap_pixels, plan_tiles, polygon_mask
from earthgen.boxes import BoxSet
from earthgen.data import (
    DetectionItem,
    detect_format,
    read_detection_dataset,
    write_detection_dataset,
)
from earthgen.detection.net import DETECT_TILE
from earthgen.errors import UserInputError

MANIFEST = "augment/manifest.json"


@dataclass
class AugmentConfig:
    """Options of :func:`augment_dataset` (see ``earthgen augment --help``)."""

    n: int = 100  # layouts to generate
    seed: int = 0
    steps: int = 30  # sampler steps
    guidance_scale: float = 3.0
    batch_size: int = 4
    iou_threshold: float = 0.5
    score_threshold: float = 0.3
    min_recall: float = 0.5
    filter: bool = True
    out_format: str | None = None  # default: the input format
    detector: str | None = None  # a trained BoxNet folder; None = train one on the real data
    detector_steps: int = 1500
    detector_crop: int = 128
    inpaint: bool = False  # keep the real source image; paint only the pasted objects
    inpaint_margin: float = (
        0.4  # repainted area around a pasted box, fraction of its size (shadows)
    )
    tile: int | None = None  # generation window, px; None = the model's (its sample size)
    tile_overlap: float = 0.25  # overlap of neighbouring windows, fraction of one, [0, 0.5)
    detect_tile: int = DETECT_TILE  # the filter detector's window on large images, pixels
    layout: LayoutConfig = field(default_factory=LayoutConfig)

    def validate(self) -> None:
        if self.n <= 0 or self.steps <= 0 or self.batch_size <= 0 or self.detector_steps <= 0:
            raise UserInputError("--n, --steps, --batch-size and --detector-steps must be > 0")
        if self.guidance_scale < 0:
            raise UserInputError(f"--guidance must be >= 0, got {self.guidance_scale}")
        if not 0 <= self.inpaint_margin <= 2:
            raise UserInputError(f"--inpaint-margin must be in [0, 2], got {self.inpaint_margin}")
        if self.tile is not None and self.tile <= 0:
            raise UserInputError(f"--tile must be > 0 pixels, got {self.tile}")
        if not 0 <= self.tile_overlap < 0.5:
            raise UserInputError(
                f"--tile-overlap must be a fraction in [0, 0.5), got {self.tile_overlap}"
            )
        if self.detect_tile <= 0 or self.detect_tile % 16:
            raise UserInputError(
                f"--detect-tile must be a positive multiple of 16 pixels, got {self.detect_tile}"
            )
        self.layout.validate()


def _check_out(out: Path, src: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"output {out} exists and is not an empty folder; choose a new one")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserInputError(f"output {out} must not be inside the input dataset {src}")


def _turned_source(path: Path, turn: int, mirror: bool) -> np.ndarray:
    """The image at ``path`` ``[H, W, 3]`` uint8, mirrored (if ``mirror``) then turned ``turn``
    quarter turns clockwise, as :func:`~earthgen.augment.layouts.turn_corners` moves its boxes."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB"))
    if mirror:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, -turn))  # clockwise on screen


def _paste_mask(lay, margin: float) -> np.ndarray:
    """``[H, W]`` bool: the pasted boxes of ``lay`` (its last ``lay.pasted`` boxes), each grown by
    ``margin`` of its size around its centre."""
    from PIL import Image, ImageDraw

    w, h = lay.size
    n = lay.pasted
    im = Image.new("L", (w, h), 0)
    if n:
        d = ImageDraw.Draw(im)
        c = np.asarray(lay.boxes.corners, dtype=np.float64).reshape(-1, 4, 2)[-n:]
        centre = c.mean(1, keepdims=True)
        for poly in centre + (c - centre) * (1.0 + margin):
            d.polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(im) > 0


def _cells(mask: np.ndarray, f: int) -> np.ndarray:
    """``[H, W]`` bool: the pixels of every ``f x f`` latent cell that holds a masked pixel (what
    the pipeline repaints)."""
    h, w = mask.shape
    c = mask.reshape(h // f, f, w // f, f).any(axis=(1, 3))
    return np.repeat(np.repeat(c, f, 0), f, 1)


def model_window(pipe) -> int:
    """The model's window in pixels: the UNet's sample size times the VAE's scale factor (the
    size it was trained at), a multiple of the pipeline's size multiple."""
    f = int(getattr(pipe, "size_multiple", pipe.vae_scale_factor))
    s = pipe.unet.config.sample_size
    s = int(max(s) if isinstance(s, (list, tuple)) else s)
    return max(f, s * int(pipe.vae_scale_factor) // f * f)


def generation_grid(size: tuple[int, int], tile: int, overlap: float, multiple: int) -> TileGrid:
    """The windows a ``(width, height)`` layout is generated by: the canvas padded to a multiple
    of ``multiple`` (the model's factor) cut into ``tile`` px windows overlapping by ``overlap``
    of a window, every start a multiple of ``multiple`` (so latent cells line up across windows)."""
    w, h = size
    m = max(int(multiple), 1)
    gw, gh = -(-w // m) * m, -(-h // m) * m
    t = max(m, int(tile) // m * m)
    return plan_tiles(gw, gh, t, overlap_pixels(t, overlap, m), m)


def _tile_seed(seed: int, index: int, n_tiles: int) -> int:
    """The generator seed of window ``index`` of a layout: the layout's own seed when it is one
    window (as before tiling), else drawn from ``(seed, index)``."""
    return seed if n_tiles == 1 else int(np.random.default_rng([seed, index]).integers(2**62))


def generate_layout(
    pipe, lay: Layout, cfg: AugmentConfig, source: Path | None = None
) -> tuple[np.ndarray, dict]:
    """The image ``[h, w, 3]`` uint8 of one layout, generated window by window
    (:func:`generation_grid`): each window is prompted with the class counts of the boxes it
    touches and conditioned on them (in its own coordinates), windows are blended across their
    overlaps, and a box's pixels come from the window that owns it (holds its centre). With
    ``cfg.inpaint`` the ``source`` image (turned as the layout) is kept outside the repainted
    latent cells of the pasted boxes, and windows with nothing to paint are not generated.
    Returns the image and ``{"tiles", "generated_tiles", "tile", "overlap"}`` (pixels)."""
    from earthgen.datasets import detection_caption

    w, h = lay.size
    m = int(getattr(pipe, "size_multiple", pipe.vae_scale_factor))
    tile = cfg.tile if cfg.tile is not None else model_window(pipe)
    grid = generation_grid(lay.size, tile, cfg.tile_overlap, m)
    gh, gw = grid.height, grid.width
    gsd = lay.boxes.extra.get("gsd")
    corners = np.asarray(lay.boxes.corners, dtype=np.float64).reshape(-1, 4, 2)
    labels = list(lay.boxes.labels)
    owner = grid.assign(corners)
    ref = paint = None
    if cfg.inpaint:
        src_rgb = _turned_source(source, lay.turn, lay.mirror)  # [h, w, 3] uint8
        ref = np.zeros((gh, gw, 3), np.uint8)
        ref[:h, :w] = src_rgb
        paint = np.zeros((gh, gw), bool)
        paint[:h, :w] = _paste_mask(lay, cfg.inpaint_margin)
    merger = TileMerger(grid)
    made = 0
    for t in grid:
        win = (slice(t.y0, t.y1), slice(t.x0, t.x1))
        if paint is not None and not paint[win].any():  # nothing to paint here: the real pixels
            merger.add(t, ref[win])
            continue
        touch = np.ones(len(corners), bool) if len(grid) == 1 else grid.touching(t, corners)
        names = [lab for lab, k in zip(labels, touch, strict=True) if k]
        sub = BoxSet(corners[touch] - t.offset, names, rotated=lay.boxes.rotated)
        edit = {}
        if paint is not None:
            edit = {
                "image": ref[win].astype(np.float32) / 255.0,
                "mask": paint[win].astype(np.float32),
            }
        seed = _tile_seed(lay.seed, t.index, len(grid))
        img = pipe(
            detection_caption(sub.labels),
            boxes=sub,
            gsd=gsd,
            height=t.height,
            width=t.width,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            tile_size=max(t.width, t.height) // pipe.vae_scale_factor,  # the window at once
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            **edit,
        ).images[0]
        arr = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        keep = None
        if len(grid) > 1:  # the owned boxes' pixels: this window's
            keep = polygon_mask(corners[owner == t.index] - t.offset, t.height, t.width)
        merger.add(t, arr, keep)
        made += 1
    out = merger.result()[:h, :w]
    if paint is not None:  # real pixels outside the repainted latent cells, exactly
        cells = _cells(paint.astype(np.float32), pipe.vae_scale_factor)[:h, :w]
        out = np.where(cells[..., None], out, ref[:h, :w])
    one = len(grid) == 1
    info = {
        "tiles": len(grid),
        "generated_tiles": made,
        "tile": max(gw, gh) if one else grid.tile_w,
        "overlap": 0 if one else grid.overlap,
    }
    return np.ascontiguousarray(out), info


def augment_dataset(
    src,
    out,
    pipe,
    config: AugmentConfig | None = None,
    src_format: str | None = None,
    progress: bool = True,
) -> dict:
    """Augment the dataset at ``src`` into the folder ``out`` (see the module docstring) with the
    box-conditioned pipeline ``pipe``; returns the manifest's summary. Large layouts are
    generated by windows (:func:`generate_layout`) and filtered by windows (the detector's
    ``cfg.detect_tile``); everything is written into a temporary folder renamed onto ``out`` at
    the end (:func:`earthgen.io.atomic_dir`), so a killed run leaves no complete-looking ``out``."""
    from PIL import Image
    from tqdm import tqdm

    from earthgen.detection import BoxNet, predict, train_detector
    from earthgen.io import atomic_dir

    cfg = config or AugmentConfig()
    cfg.validate()
    src, out = Path(src), Path(out)
    fmt = src_format or detect_format(src)
    out_fmt = cfg.out_format or fmt
    _check_out(out, src)
    if getattr(pipe, "box_encoder", None) is None:
        raise UserInputError(
            "the model has no box conditioning (box_encoder); train one with "
            "`earthgen train image-boxes`"
        )
    items = read_detection_dataset(src, fmt)
    missing = [str(it.image) for it in items if not it.image.is_file()]
    if missing:
        raise UserInputError(
            f"{len(missing)} images of {src} are missing (e.g. {missing[0]}); "
            "augmentation needs them"
        )
    from earthgen.data._common import image_size

    items = [
        it if it.size is not None else DetectionItem(it.image, image_size(it.image), it.boxes)
        for it in items
    ]
    classes = list(dict.fromkeys(c for it in items for c in (it.boxes.extra.get("classes") or [])))
    classes = [c for c in classes if any(c in it.boxes.labels for it in items)] or sorted(
        {lab for it in items for lab in it.boxes.labels}
    )
    if cfg.inpaint:  # the real objects stay where they are: their boxes must not move
        cfg = replace(
            cfg, layout=replace(cfg.layout, jitter=0.0, scale_jitter=0.0, angle_jitter_deg=0.0)
        )
    rotated, upright = rotation_rules(
        items, cfg.layout
    )  # resolved once: for the layouts and the manifest
    layouts = sample_layouts(
        items,
        cfg.n,
        cfg.seed,
        replace(cfg.layout, rotated=rotated, upright=sorted(upright)),
        classes,
    )
    if cfg.tile is not None and cfg.tile < pipe.size_multiple:
        raise UserInputError(
            f"--tile must be at least {pipe.size_multiple} pixels for this model, got {cfg.tile}"
        )

    if cfg.filter and cfg.detector and not (Path(cfg.detector) / "config.json").is_file():
        raise UserInputError(
            f"detector not found: {cfg.detector} (a folder written by BoxNet.save_pretrained)"
        )

    timings: dict[str, float] = {}
    with atomic_dir(out) as tmp:
        gen_dir = tmp / ".synthetic"  # generated images: copied into the dataset, then removed
        gen_dir.mkdir()
        names, tiling = [], []
        t0 = time.perf_counter()
        for lay in tqdm(layouts, desc="generate", disable=not progress):  # sizes and seeds differ
            source = items[lay.source].image if cfg.inpaint else None
            arr, info = generate_layout(pipe, lay, cfg, source)
            name = f"synthetic_{cfg.seed}_{len(names):05d}.png"
            Image.fromarray(arr).save(gen_dir / name)
            names.append(name)
            tiling.append(info)
            del arr  # one generated image in memory at a time
        timings["generate_s"] = time.perf_counter() - t0
        # detector trained on the real data (or given)
        t0 = time.perf_counter()
        detector = None
        if cfg.filter:
            if cfg.detector:
                try:
                    detector = BoxNet.from_pretrained(cfg.detector)
                except (OSError, ValueError) as e:
                    raise UserInputError(f"cannot load the detector {cfg.detector}: {e}") from None
                unknown = sorted(set(classes) - set(detector.classes))
                if unknown:
                    raise UserInputError(f"the detector does not know the classes {unknown}")
            else:
                detector = train_detector(
                    items,
                    classes,
                    steps=cfg.detector_steps,
                    crop=cfg.detector_crop,
                    rotated=any(lay.boxes.rotated for lay in layouts),
                    seed=cfg.seed,
                    progress=progress,
                )
        timings["detector_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if detector is not None:
            syn_items = [
                DetectionItem(gen_dir / nm, lay.size, lay.boxes)
                for nm, lay in zip(names, layouts, strict=True)
            ]
            # images read back one at a time; large ones detected by windows, merged by NMS
            detected = predict(
                detector,
                syn_items,
                score_threshold=min(cfg.score_threshold, 0.05),
                progress=progress,
                tile=cfg.detect_tile,
            )
            # with --inpaint the real boxes are real pixels: only the painted ones test the
            # generator
            res = filter_generated(
                [lay.boxes for lay in layouts],
                detected,
                cfg.iou_threshold,
                cfg.score_threshold,
                cfg.min_recall,
                rotated=bool(detector.config.rotated),
                count_last=[lay.pasted for lay in layouts] if cfg.inpaint else None,
            )
            keep, recall, found = res.keep, res.recall, res.found
        else:
            keep, recall = np.ones(len(layouts), bool), np.full(len(layouts), np.nan)
            found = [None] * len(layouts)
        timings["filter_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept_items = [
            DetectionItem(gen_dir / nm, lay.size, lay.boxes)
            for nm, lay, k in zip(names, layouts, keep, strict=True)
            if k
        ]
        ids = classes if out_fmt in ("yolo", "yolo-obb", "coco") else None
        write_detection_dataset(items + kept_items, tmp, out_fmt, classes=ids, images="copy")
        shutil.rmtree(gen_dir)
        det_dir = None
        if detector is not None:
            det_dir = out / "augment" / "detector"
            detector.save_pretrained(tmp / "augment" / "detector")
        timings["write_s"] = time.perf_counter() - t0
        summary = {
            "source": str(src),
            "source_format": fmt,
            "format": out_fmt,
            "real_images": len(items),
            "generated": len(layouts),
            "kept": int(keep.sum()),
            "kept_fraction": float(keep.mean()) if detector is not None else None,
            "filter": {
                "enabled": detector is not None,
                "iou_threshold": cfg.iou_threshold,
                "score_threshold": cfg.score_threshold,
                "min_recall": cfg.min_recall,
                "detector": str(det_dir) if det_dir else None,
                "detect_tile": cfg.detect_tile,
            },
            "classes": classes,
            "config": {k: v for k, v in asdict(cfg).items() if k != "layout"},
            "layout_config": asdict(cfg.layout),
            "upright_classes": sorted(upright),
            "tiling": {
                "tile": cfg.tile if cfg.tile is not None else model_window(pipe),
                "overlap_fraction": cfg.tile_overlap,
                "tiled_images": sum(t["tiles"] > 1 for t in tiling),
                "windows": sum(t["generated_tiles"] for t in tiling),
            },
            "seconds": {k: round(v, 3) for k, v in timings.items()},
        }
        manifest = {
            "summary": summary,
            "real": [it.image.name for it in items],
            "synthetic": [
                {
                    "image": nm,
                    "seed": lay.seed,
                    "source_image": items[lay.source].image.name,
                    "ops": lay.ops,
                    "turn": lay.turn,
                    "mirror": lay.mirror,
                    "pasted": lay.pasted,
                    "boxes": len(lay.boxes),
                    "labels": list(lay.boxes.labels),
                    "tiles": tl["tiles"],
                    "recall": None if np.isnan(r) else float(r),
                    "found": None if fd is None else [bool(v) for v in fd],
                    "kept": bool(k),
                }
                for nm, lay, tl, r, fd, k in zip(
                    names, layouts, tiling, recall, found, keep, strict=True
                )
            ],
        }
        (tmp / "augment").mkdir(parents=True, exist_ok=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return summary


def read_manifest(path) -> dict:
    """The manifest of an augmented dataset folder (``augment/manifest.json``)."""
    p = Path(path)
    m = p / MANIFEST if p.is_dir() else p
    if not m.is_file():
        raise UserInputError(f"no augmentation manifest at {m}")
    return json.loads(m.read_text())


def write_copies(augmented, real_items, out) -> list[DetectionItem]:
    """The *copies* control of an augmented dataset: for each kept synthetic image of ``augmented``
    (a folder written by :func:`augment_dataset`), its real source image from ``real_items``
    turned and mirrored as its layout was, otherwise unchanged, labelled with the source's own
    boxes (none jittered, none pasted). PNGs are written to the folder ``out``; returns their
    DetectionItems. A detector trained on real + these, against one trained on real + synthetic,
    separates what the generated objects add from what drawing and turning the source images
    (class rebalancing) adds."""
    from PIL import Image

    from earthgen.data._common import image_size

    m = read_manifest(augmented)
    recs = [r for r in m["synthetic"] if r["kept"]]
    if not recs:
        raise UserInputError(f"{augmented} holds no kept synthetic image: no copies to make")
    if "turn" not in recs[0]:
        raise UserInputError(
            f"the manifest of {augmented} records no turn/mirror per image (written by an older "
            "earthgen); run `earthgen augment` again to use the copies control"
        )
    by_name: dict[str, DetectionItem] = {}
    for it in real_items:
        if it.image.name in by_name:
            raise UserInputError(
                f"two real images are named {it.image.name}: the manifest cannot tell them apart"
            )
        by_name[it.image.name] = it
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for r in recs:
        it = by_name.get(r["source_image"])
        if it is None:
            raise UserInputError(
                f"source image {r['source_image']} of {r['image']} is not in the real dataset"
            )
        w, h = it.size if it.size is not None else image_size(it.image)
        arr = _turned_source(it.image, int(r["turn"]), bool(r["mirror"]))  # [h, w, 3] uint8
        p = out / f"copy_{Path(r['image']).stem}.png"
        Image.fromarray(arr).save(p)
        b = it.boxes
        corners = turn_corners(b.corners, w, h, int(r["turn"]), bool(r["mirror"]))
        copies.append(
            DetectionItem(
                p,
                (arr.shape[1], arr.shape[0]),
                BoxSet(
                    corners,
                    list(b.labels),
                    difficult=b.difficult,
                    rotated=b.rotated,
                    extra=dict(b.extra),
                ),
            )
        )
    return copies
