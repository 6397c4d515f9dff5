"""Real aerial training sets and a weighted mix of them with procedural worlds.

Every reader returns :class:`Sample` objects: ``image`` [H, W, 3] uint8 RGB, ``semantic``
[H, W] uint8 ids of :mod:`earthgen.classes` (``IGNORE`` = 255 where unknown; None for sets
without masks), ``gsd`` in metres/pixel and a caption::

    items = read_set("dubai", split="train")          # list[Sample]
    crop = random_crop(items[0], 256, rng, gsd=1.0)    # 256x256, resampled to 1 m/px
    mix = MixedDataset({"ucmerced": 2, "dubai": 1, "world": 1})
    s = mix.sample(np.random.default_rng(0))           # 256x256 crop, random flip / rot90

Data root: ``root=``, else ``$EARTHGEN_DATA``, else ``../shared/data`` next to the repository.
Folders: ``ucmerced_landuse_subset``, ``dubai_aerial_seg``, ``naip_clips``,
``neon_tree_crowns_det``, ``spacenet_vegas_road_sample`` (each with its own SOURCES.md).

Fixed held-apart test splits (never train on "test"):

- ucmerced: per class folder, file names sorted; the first 48 are "train", the rest "test"
  (the last 12 of each class of 60: 16 x 48 = 768 train, 16 x 12 = 192 test).
- dubai: ``tile_8`` is "test", all other tiles "train" (45 train, 9 test pairs).
- naip, neon, spacenet: everything is "train"; "test" is empty.

GSDs (metres/pixel): ucmerced 0.3 (dataset paper: 1 ft), naip 5.0 (clips resampled from NAIP),
neon 0.1, spacenet 0.3 (WorldView-3 pan-sharpened), dubai 1.0 -- an ESTIMATE: the dataset
states no pixel size; its imagery comes from MBRSC satellites, and DubaiSat-2's panchromatic
band is 1 m (eoPortal, DubaiSat-2 mission page), so 1 m/px is assumed.

Class mapping: Dubai building -> building, land -> bare, road -> road_minor, vegetation ->
grass, water -> water, unlabeled (palette 5, 6) -> IGNORE. SpaceNet: road_minor where the road
mask is 255, IGNORE elsewhere (only roads are labelled); its bottom 130 rows (burned-in Maxar /
SpaceNet watermark) are cut off. NAIP keeps R, G, B and drops the NIR band.

Procedural samples (generated world tiles as torch batches, for training and evaluation):
:func:`world_batch`, :func:`world_box_batch`; :func:`detection_caption` captions box labels.
This module is below the pipelines, the training and the evaluation that read it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from earthgen.classes import CLASS_ID, NUM_CLASSES
from earthgen.errors import UserInputError

IGNORE = 255  # class-map value for unknown / unlabeled pixels
REAL_SETS: tuple[str, ...] = ("ucmerced", "dubai", "naip", "neon", "spacenet")
SPLITS: tuple[str, ...] = ("train", "test", "all")
SET_DIRS: dict[str, str] = {
    "ucmerced": "ucmerced_landuse_subset",
    "dubai": "dubai_aerial_seg",
    "naip": "naip_clips",
    "neon": "neon_tree_crowns_det",
    "spacenet": "spacenet_vegas_road_sample",
}
GSD: dict[str, float] = {"ucmerced": 0.3, "dubai": 1.0, "naip": 5.0, "neon": 0.1, "spacenet": 0.3}
UCM_CLASSES: tuple[str, ...] = (
    "agricultural",
    "beach",
    "buildings",
    "chaparral",
    "denseresidential",
    "forest",
    "freeway",
    "golfcourse",
    "harbor",
    "intersection",
    "mediumresidential",
    "mobilehomepark",
    "parkinglot",
    "river",
    "runway",
    "sparseresidential",
)
UCM_TRAIN_PER_CLASS = 48  # first 48 sorted names of a class are train, the rest test
DUBAI_TEST_TILES: tuple[str, ...] = ("tile_8",)
# Dubai palette index -> earthgen class id (5 = unlabeled grey, 6 = stray black: ignored).
DUBAI_TO_CLASS: dict[int, int] = {
    0: CLASS_ID["building"],
    1: CLASS_ID["bare"],
    2: CLASS_ID["road_minor"],
    3: CLASS_ID["grass"],
    4: CLASS_ID["water"],
    5: IGNORE,
    6: IGNORE,
}
# RGB colour of each Dubai palette index in the mask files (SOURCES.md table).
DUBAI_COLORS: dict[int, tuple[int, int, int]] = {
    0: (60, 16, 152),
    1: (132, 41, 246),
    2: (110, 193, 228),
    3: (254, 221, 58),
    4: (226, 169, 41),
    5: (155, 155, 155),
    6: (0, 0, 0),
}
SPACENET_WATERMARK_ROWS = 130  # bottom rows with the burned-in Maxar text and SpaceNet logo
CAPTION_MIN_FRACTION = 0.05  # classes under this share of labelled pixels are not named

# Phrase of each class in mask-derived captions (None: never named).
_PHRASE: dict[int, str | None] = {
    0: None,
    1: "buildings",
    2: "roads",
    3: "roads",
    4: "roads",
    5: "paths",
    6: "railways",
    7: "water",
    8: "forest",
    9: "vegetation",
    10: "farmland",
    11: "bare land",
    12: "parking lots",
}


@dataclass
class Sample:
    """One training image. ``image`` [H, W, 3] uint8 RGB; ``semantic`` [H, W] uint8 class ids
    (IGNORE where unknown) or None; ``gsd`` metres/pixel; ``source`` the set name; ``name`` a file
    id such as ``"ucmerced/forest/forest07"``; ``label`` the UC Merced scene class or None."""

    image: np.ndarray
    caption: str
    semantic: np.ndarray | None
    gsd: float
    source: str
    name: str
    label: str | None = None


def data_root(root: str | Path | None = None) -> Path:
    """Folder holding the real data sets: ``root``, else ``$EARTHGEN_DATA``, else the
    repository's ``../shared/data``; UserInputError when the chosen folder does not exist."""
    if root is not None:
        p, how = Path(root), "root="
    elif os.environ.get("EARTHGEN_DATA"):
        p, how = Path(os.environ["EARTHGEN_DATA"]), "$EARTHGEN_DATA"
    else:
        p, how = Path(__file__).resolve().parents[2] / "shared" / "data", "default"
    if not p.is_dir():
        raise UserInputError(
            f"data root not found: {p} ({how}); pass root=, set EARTHGEN_DATA or place the data "
            "sets in ../shared/data next to the repository"
        )
    return p


def caption_from_classes(semantic: np.ndarray, prefix: str = "a satellite image of") -> str:
    """Caption naming the classes covering >= 5 % of the labelled pixels of ``semantic``
    ([H, W] class ids, IGNORE skipped), largest first, at most three: e.g. "a satellite image of
    buildings, roads and bare land". Without such a class: "a satellite image"."""
    sem = np.asarray(semantic).ravel()
    counts = np.bincount(sem[sem < NUM_CLASSES], minlength=NUM_CLASSES).astype(np.float64)
    shares: dict[str, float] = {}
    total = counts.sum()
    for cid, n in enumerate(counts):
        phrase = _PHRASE.get(cid)
        if phrase is not None and n > 0:
            shares[phrase] = shares.get(phrase, 0.0) + n / total
    names = [
        p for p, f in sorted(shares.items(), key=lambda kv: -kv[1]) if f >= CAPTION_MIN_FRACTION
    ][:3]
    base = prefix.rsplit(" of", 1)[0] if prefix.endswith(" of") else prefix
    if not names:
        return base
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{prefix} {text}"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def _set_dir(name: str, root: str | Path | None) -> Path:
    if name not in SET_DIRS:
        raise UserInputError(f"unknown data set {name!r}; known sets: {', '.join(REAL_SETS)}")
    d = data_root(root) / SET_DIRS[name]
    if not d.is_dir():
        raise UserInputError(f"data set {name!r} not found: {d} is missing")
    return d


def _rgb(path: Path) -> np.ndarray:
    """An image file as [H, W, 3] uint8 RGB (alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserInputError(f"{path}: cannot read image: {e}") from None


def _raster_rgb(path: Path) -> np.ndarray:
    """Bands 1-3 of a raster as [H, W, 3] uint8, values unchanged (NAIP NIR / alpha dropped)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            if ds.count < 3 or ds.dtypes[0] != "uint8":
                raise UserInputError(
                    f"{path}: expected >= 3 uint8 bands, got {ds.count} {ds.dtypes[0]}"
                )
            return np.ascontiguousarray(np.moveaxis(ds.read([1, 2, 3]), 0, -1))
    except rasterio.errors.RasterioIOError as e:
        raise UserInputError(f"{path}: cannot read raster: {e}") from None


def _dubai_ids(path: Path) -> np.ndarray:
    """Dubai mask -> [H, W] palette indices 0..6 (palette PNG, or RGB colours via the table)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            return np.asarray(im).astype(np.uint8)
        rgb = np.asarray(im.convert("RGB"))
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.full(code.shape, 255, np.uint8)
    for idx, (r, g, b) in DUBAI_COLORS.items():
        out[code == ((r << 16) | (g << 8) | b)] = idx
    if (out == 255).any():
        raise UserInputError(
            f"{path}: {(out == 255).sum()} pixels with colours outside the Dubai class table"
        )
    return out


_DUBAI_LUT = np.full(256, IGNORE, np.uint8)
for _k, _v in DUBAI_TO_CLASS.items():
    _DUBAI_LUT[_k] = _v


def dubai_semantic(path: str | Path) -> np.ndarray:
    """A Dubai mask file -> [H, W] uint8 earthgen class ids (IGNORE for unlabeled)."""
    return _DUBAI_LUT[_dubai_ids(Path(path))]


def _read_ucmerced(d: Path, split: str) -> list[Sample]:
    import json

    cap_file = d / "captions.jsonl"
    captions: dict[str, str] = {}
    if cap_file.is_file():
        for no, line in enumerate(cap_file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    captions[rec["file"]] = rec["caption"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserInputError(
                        f"{cap_file}:{no}: expected JSON with 'file' and 'caption'"
                    ) from None
    out = []
    for cls in sorted(p.name for p in d.iterdir() if p.is_dir()):
        files = sorted(p for p in (d / cls).iterdir() if p.suffix.lower() in (".jpg", ".png"))
        chosen = {
            "train": files[:UCM_TRAIN_PER_CLASS],
            "test": files[UCM_TRAIN_PER_CLASS:],
            "all": files,
        }[split]
        for f in chosen:
            rel = f"{cls}/{f.name}"
            out.append(
                Sample(
                    _rgb(f),
                    captions.get(rel, f"a satellite image of {cls}"),
                    None,
                    GSD["ucmerced"],
                    "ucmerced",
                    f"ucmerced/{cls}/{f.stem}",
                    cls,
                )
            )
    return out


def _read_dubai(d: Path, split: str) -> list[Sample]:
    out = []
    for tile in sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("tile_")):
        is_test = tile.name in DUBAI_TEST_TILES
        if (split == "train" and is_test) or (split == "test" and not is_test):
            continue
        for img in sorted((tile / "images").glob("*.jpg")):
            mask = tile / "masks" / f"{img.stem}.png"
            if not mask.is_file():
                raise UserInputError(f"{img}: mask {mask} is missing")
            image, sem = _rgb(img), dubai_semantic(mask)
            if sem.shape != image.shape[:2]:
                raise UserInputError(
                    f"{mask}: size {sem.shape} differs from image {image.shape[:2]}"
                )
            out.append(
                Sample(
                    image,
                    caption_from_classes(sem),
                    sem,
                    GSD["dubai"],
                    "dubai",
                    f"dubai/{tile.name}/{img.stem}",
                )
            )
    return out


def _read_naip(d: Path, split: str) -> list[Sample]:
    if split == "test":
        return []
    out = []
    for f in sorted(d.glob("*.tif")):
        m = re.search(r"_(\d{4})(\d{2})\d{2}$", f.stem)
        when = f", {m.group(1)}" if m else ""
        cap = f"a satellite image of farmland and fields in North Dakota{when}"
        out.append(Sample(_raster_rgb(f), cap, None, GSD["naip"], "naip", f"naip/{f.stem}"))
    return out


def _read_neon(d: Path, split: str) -> list[Sample]:
    if split == "test":
        return []
    return [
        Sample(
            _rgb(f), "an aerial image of a tree canopy", None, GSD["neon"], "neon", f"neon/{f.stem}"
        )
        for f in sorted((d / "images").glob("*.png"))
    ]


def _read_spacenet(d: Path, split: str) -> list[Sample]:
    if split == "test":
        return []
    from PIL import Image

    out = []
    for f in sorted(d.glob("RGB-PanSharpen_*.tif")):
        stem = f.stem.removeprefix("RGB-PanSharpen_")
        mask_path = d / f"{stem}_road_mask.png"
        if not mask_path.is_file():
            raise UserInputError(f"{f}: road mask {mask_path} is missing")
        image = _raster_rgb(f)
        with Image.open(mask_path) as im:
            mask = np.asarray(im.convert("L"))
        if mask.shape != image.shape[:2]:
            raise UserInputError(
                f"{mask_path}: size {mask.shape} differs from image {image.shape[:2]}"
            )
        keep = image.shape[0] - SPACENET_WATERMARK_ROWS
        if keep <= 0:
            raise UserInputError(
                f"{f}: image has no rows left after cutting the "
                f"{SPACENET_WATERMARK_ROWS}-row watermark strip"
            )
        sem = np.where(mask[:keep] == 255, np.uint8(CLASS_ID["road_minor"]), np.uint8(IGNORE))
        out.append(
            Sample(
                np.ascontiguousarray(image[:keep]),
                "a satellite image of a city with roads",
                sem.astype(np.uint8),
                GSD["spacenet"],
                "spacenet",
                f"spacenet/{stem}",
            )
        )
    return out


_READERS = {
    "ucmerced": _read_ucmerced,
    "dubai": _read_dubai,
    "naip": _read_naip,
    "neon": _read_neon,
    "spacenet": _read_spacenet,
}


def read_set(name: str, root: str | Path | None = None, split: str = "train") -> list[Sample]:
    """All samples of real set ``name`` (one of REAL_SETS) in ``split`` ("train", "test",
    "all"), loaded eagerly; see the module docstring for the fixed splits."""
    _check_split(split)
    d = _set_dir(name, root)
    return _READERS[name](d, split)


def _max_side(n: int, scale: float) -> int:
    return int(math.floor(n * scale + 1e-6))


def resample(sample: Sample, gsd: float) -> Sample:
    """The whole sample resampled to ``gsd`` metres/pixel: size floor(H * sample.gsd / gsd);
    image bilinear (box/area filter when shrinking), semantic nearest."""
    if not (gsd > 0 and math.isfinite(gsd)):
        raise UserInputError(f"gsd must be a finite number > 0 metres/pixel, got {gsd}")
    scale = sample.gsd / gsd
    h, w = sample.image.shape[:2]
    nh, nw = _max_side(h, scale), _max_side(w, scale)
    if nh < 1 or nw < 1:
        raise UserInputError(
            f"{sample.name}: {w}x{h} px at {sample.gsd} m/px is under one pixel at {gsd} m/px"
        )
    return _window(sample, (0.0, 0.0, w, h), (nw, nh), gsd)


def _window(
    sample: Sample, box: tuple[float, float, float, float], out: tuple[int, int], gsd: float
) -> Sample:
    """Source window ``box`` (x0, y0, x1, y1, pixels) resampled to ``out`` (w, h) pixels."""
    from PIL import Image

    shrink = (box[2] - box[0]) > out[0]
    filt = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    img = np.asarray(Image.fromarray(sample.image).resize(out, filt, box=box))
    sem = None
    if sample.semantic is not None:
        sem = np.asarray(
            Image.fromarray(sample.semantic).resize(out, Image.Resampling.NEAREST, box=box)
        )
    return replace(sample, image=img, semantic=sem, gsd=float(gsd))


def random_crop(
    sample: Sample, size: int, rng: np.random.Generator, gsd: float | None = None
) -> Sample:
    """A random ``size`` x ``size`` crop; when ``gsd`` (metres/pixel) differs from
    ``sample.gsd`` the crop is taken from the image resampled to ``gsd`` (only the window is
    resampled: image bilinear / area, semantic nearest). Image and semantic get the same crop.
    UserInputError when ``size`` exceeds the (resampled) image."""
    size = int(size)
    if size < 1:
        raise UserInputError(f"crop size must be >= 1 pixel, got {size}")
    h, w = sample.image.shape[:2]
    same = gsd is None or abs(gsd - sample.gsd) <= 1e-9 * sample.gsd
    if not same and not (gsd > 0 and math.isfinite(gsd)):
        raise UserInputError(f"gsd must be a finite number > 0 metres/pixel, got {gsd}")
    scale = 1.0 if same else sample.gsd / float(gsd)  # type: ignore[arg-type]
    nh, nw = (h, w) if same else (_max_side(h, scale), _max_side(w, scale))
    if size > nh or size > nw:
        at = "" if same else f" after resampling to {gsd} m/px"
        raise UserInputError(
            f"{sample.name}: crop of {size} px is larger than the image ({nw}x{nh} px{at})"
        )
    y = int(rng.integers(0, nh - size + 1))
    x = int(rng.integers(0, nw - size + 1))
    if same:
        sem = (
            None if sample.semantic is None else sample.semantic[y : y + size, x : x + size].copy()
        )
        return replace(sample, image=sample.image[y : y + size, x : x + size].copy(), semantic=sem)
    box = (x / scale, y / scale, min(w, (x + size) / scale), min(h, (y + size) / scale))
    return _window(sample, box, (size, size), float(gsd))  # type: ignore[arg-type]


def flip_rotate(sample: Sample, rng: np.random.Generator) -> Sample:
    """Random horizontal flip and rot90 (k = 0..3), applied to image and semantic together."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def f(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    sem = None if sample.semantic is None else f(sample.semantic)
    return replace(sample, image=f(sample.image), semantic=sem)


class MixedDataset:
    """Weighted mix of real sets and procedural ``"world"`` tiles.

    ``weights``: set name (REAL_SETS or "world") -> weight >= 0; sets of weight 0 are neither
    loaded nor drawn. ``resolution``: crop side in pixels (images smaller than that are
    upsampled so their short side fits). ``world_gsd``: (min, max) metres/pixel of world
    tiles, drawn uniformly. ``len()`` counts the loaded real items (world tiles are unbounded
    and not counted)."""

    def __init__(
        self,
        weights: dict[str, float],
        root: str | Path | None = None,
        split: str = "train",
        resolution: int = 256,
        world_gsd: tuple[float, float] = (0.3, 2.0),
    ) -> None:
        _check_split(split)
        known = (*REAL_SETS, "world")
        for k, v in weights.items():
            if k not in known:
                raise UserInputError(f"unknown data set {k!r}; known sets: {', '.join(known)}")
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise UserInputError(f"weight of {k!r} must be a finite number >= 0, got {v}")
        self.names = [k for k in weights if float(weights[k]) > 0]
        if not self.names:
            raise UserInputError("all weights are 0: give at least one set a weight > 0")
        w = np.array([float(weights[k]) for k in self.names])
        self.probs = w / w.sum()
        self.resolution = int(resolution)
        if self.resolution < 1:
            raise UserInputError(f"resolution must be >= 1 pixel, got {resolution}")
        lo, hi = (float(v) for v in world_gsd)
        if not (0.05 <= lo <= hi <= 100):
            raise UserInputError(
                f"world_gsd must be (min, max) with 0.05 <= min <= max <= 100 "
                f"metres/pixel, got {world_gsd}"
            )
        self.world_gsd = (lo, hi)
        self.items: dict[str, list[Sample]] = {}
        for k in self.names:
            if k != "world":
                self.items[k] = read_set(k, root, split)
                if not self.items[k]:
                    raise UserInputError(
                        f"data set {k!r} has no items in split {split!r}; give it weight 0"
                    )

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def sample(self, rng: np.random.Generator) -> Sample:
        """One ``resolution`` x ``resolution`` sample: a set by weight, an item uniformly, a
        random crop, then a random flip / rot90."""
        name = self.names[int(rng.choice(len(self.names), p=self.probs))]
        if name == "world":
            from earthgen.world import generate_world

            seed = int(rng.integers(2**31 - 1))
            gsd = float(rng.uniform(*self.world_gsd))
            tile = generate_world(seed=seed, size=self.resolution, gsd=gsd)
            s = Sample(
                tile.rgb,
                tile.caption,
                tile.semantic,
                gsd,
                "world",
                f"world/seed{seed}_gsd{gsd:.3f}",
            )
        else:
            items = self.items[name]
            item = items[int(rng.integers(len(items)))]
            short = min(item.image.shape[:2])
            gsd = None if short >= self.resolution else item.gsd * short / self.resolution
            s = random_crop(item, self.resolution, rng, gsd)
        return flip_rotate(s, rng)


# --- procedural samples (training and evaluation on generated world tiles) -------------------


def world_batch(seed: int, index0: int, n: int, resolution: int) -> dict:
    """``n`` procedural tiles for sample indices ``index0 ..``: images ``[n, 3, R, R]`` in 0..1,
    class maps ``[n, R, R]``, captions, GSDs (m/px, log-uniform 0.3..4), scene ids
    (:data:`earthgen.world.caption.SCENES`)."""
    import torch

    from earthgen.world import generate_world
    from earthgen.world.caption import scene_label
    from earthgen.world.noise import hash_uniform

    imgs, sems, caps, gsds, scenes = [], [], [], [], []
    for k in range(index0, index0 + n):
        r = hash_uniform(np.arange(4), seed, k)
        gsd = float(10 ** (np.log10(0.3) + r[0] * (np.log10(4.0) - np.log10(0.3))))
        origin = ((r[1] - 0.5) * 6000.0, (r[2] - 0.5) * 6000.0)
        tile = generate_world(int(r[3] * 50), resolution, gsd, origin)
        imgs.append(torch.from_numpy(tile.rgb).permute(2, 0, 1).float() / 255.0)
        sems.append(torch.from_numpy(tile.semantic.astype(np.int64)))
        caps.append(tile.caption)
        gsds.append(gsd)
        scenes.append(scene_label(tile.stats))
    return {
        "image": torch.stack(imgs),
        "semantic": torch.stack(sems),
        "caption": caps,
        "gsd": torch.tensor(gsds),
        "scene": torch.tensor(scenes),
    }


def world_box_batch(seed: int, index0: int, n: int, resolution: int) -> dict:
    """:func:`world_batch` plus the tiles' detection boxes (``boxes``: BoxSets, pixel corners)."""
    from earthgen.world import generate_world
    from earthgen.world.noise import hash_uniform

    batch = world_batch(seed, index0, n, resolution)
    sets = []
    for k in range(index0, index0 + n):
        r = hash_uniform(np.arange(4), seed, k)
        gsd = float(10 ** (np.log10(0.3) + r[0] * (np.log10(4.0) - np.log10(0.3))))
        origin = ((r[1] - 0.5) * 6000.0, (r[2] - 0.5) * 6000.0)
        sets.append(generate_world(int(r[3] * 50), resolution, gsd, origin).boxes())
    batch["boxes"] = sets
    return batch


def detection_caption(labels: list[str]) -> str:
    """``["building", "building", "small_vehicle"]`` ->
    "satellite image with 2 building, 1 small vehicle"."""
    from collections import Counter

    if not labels:
        return "satellite image"
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in sorted(Counter(labels).items())]
    return "satellite image with " + ", ".join(parts)
