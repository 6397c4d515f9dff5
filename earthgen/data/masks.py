"""Semantic-segmentation folders: ``images/`` and ``masks/`` paired by file stem.

Masks may be class-id PNGs (palette ``P`` mode, whose pixel values are the ids, or grayscale
``L``/``I``) or RGB colour masks mapped to ids through a palette ([K, 3] uint8, default
:data:`earthgen.classes.PALETTE`)::

    root/images/tile_001.png   root/masks/tile_001.png   ->  MaskSample(image, mask)
    read_mask("masks/tile_001.png")  ->  [H, W] uint8 class ids

Colours not in the palette are reported with their pixel count and first position. An RGB mask
whose colours are all grey (R = G = B) and small (< K) is read as ids saved as RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from earthgen.classes import PALETTE
from earthgen.data._common import IMAGE_EXTS, PathLike, fail, require_dir, require_file
from earthgen.errors import UserInputError

MASK_DIR_NAMES: tuple[str, ...] = ("masks", "mask", "labels", "annotations", "gt", "label")
IMAGE_DIR_NAMES: tuple[str, ...] = ("images", "image", "imgs", "img")


def _load(path: Path) -> tuple[np.ndarray, str]:
    """Raw mask array and its PIL mode ("tif" masks through rasterio give mode "L"/"I")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGB" if mode != "LA" else "L")
                mode = im.mode
            elif mode not in ("P", "L", "I", "I;16", "RGB", "1"):
                im = im.convert("RGB")
                mode = "RGB"
            return np.asarray(im), mode
    except (UnidentifiedImageError, OSError):
        pass
    try:
        import rasterio

        with rasterio.open(path) as ds:
            arr = ds.read()
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's
        raise fail(path, None, f"cannot read mask image: {e}") from None
    if arr.shape[0] >= 3:
        return np.moveaxis(arr[:3], 0, -1), "RGB"
    return arr[0], "L"


def _unknown_colours(rgb: np.ndarray, known: np.ndarray) -> str:
    flat = rgb.reshape(-1, 3)
    cols, first, counts = np.unique(
        flat[~known.reshape(-1)], axis=0, return_index=True, return_counts=True
    )
    idx = np.flatnonzero(~known.reshape(-1))[first]
    order = np.argsort(-counts)[:5]
    w = rgb.shape[1]
    parts = [
        f"{tuple(int(v) for v in cols[i])} x{int(counts[i])} (first at row "
        f"{int(idx[i] // w)}, col {int(idx[i] % w)})"
        for i in order
    ]
    more = f" and {len(cols) - 5} more" if len(cols) > 5 else ""
    return ", ".join(parts) + more


def rgb_to_ids(
    rgb: np.ndarray, palette: np.ndarray = PALETTE, where: PathLike = "<mask>"
) -> np.ndarray:
    """``[H, W, 3]`` uint8 colour mask -> ``[H, W]`` uint8 class ids via ``palette`` [K, 3];
    UserInputError listing colours not in the palette."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) > 256:
        raise UserInputError(f"palette has {len(pal)} colours; at most 256 classes are supported")
    rgb = np.asarray(rgb)[..., :3].astype(np.uint8)
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pcode = (pal[:, 0].astype(np.int64) << 16) | (pal[:, 1].astype(np.int64) << 8) | pal[:, 2]
    order = np.argsort(pcode, kind="stable")
    sorted_codes = pcode[order]
    pos = np.clip(np.searchsorted(sorted_codes, code), 0, len(pal) - 1)
    known = sorted_codes[pos] == code
    if not known.all():
        raise UserInputError(
            f"{where}: {int((~known).sum())} pixels have colours not in the palette "
            f"({len(pal)} classes): {_unknown_colours(rgb, known)}. Pass the dataset's palette "
            "or fix the mask (anti-aliased or JPEG-compressed masks cannot be mapped)"
        )
    return order[pos].astype(np.uint8)


def read_mask(
    path: PathLike, palette: np.ndarray = PALETTE, ignore_index: int | None = None
) -> np.ndarray:
    """One mask file -> ``[H, W]`` uint8 class ids.

    Palette/grayscale PNGs are read as ids (checked < K = ``len(palette)``, except
    ``ignore_index``); RGB masks are mapped through ``palette``."""
    path = require_file(path, "mask file")
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    arr, mode = _load(path)
    if mode == "RGB" and arr.ndim == 3:
        grey = bool(np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]))
        if grey and int(arr.max(initial=0)) < len(pal) and not _all_in_palette(arr, pal):
            ids = arr[..., 0]
        else:
            return rgb_to_ids(arr, pal, where=path)
    else:
        ids = arr
    if ids.ndim != 2:
        raise fail(path, None, f"expected a single-channel mask, got shape {ids.shape}")
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer) and ids.dtype != bool:
        raise fail(path, None, f"class-id mask must be integer, got {ids.dtype}")
    bad = (ids >= len(pal)) | (ids < 0)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bad.any():
        r, c = np.argwhere(bad)[0]
        vals = np.unique(ids[bad])[:8].tolist()
        hint = " (255 is often 'ignore': pass ignore_index=255)" if 255 in vals else ""
        raise fail(
            path,
            None,
            f"class ids {vals} outside 0..{len(pal) - 1} (first at row {r}, col {c}){hint}",
        )
    return ids.astype(np.uint8)


def _all_in_palette(rgb: np.ndarray, pal: np.ndarray) -> bool:
    cols = np.unique(rgb.reshape(-1, 3), axis=0)
    return bool(all((pal == c).all(axis=1).any() for c in cols))


@dataclass
class MaskSample:
    """An image and its mask (paths); :meth:`read` gives the ``[H, W]`` uint8 class map."""

    image: Path
    mask: Path
    palette: np.ndarray = field(default_factory=lambda: PALETTE, repr=False)
    ignore_index: int | None = None

    def read(self) -> np.ndarray:
        """``[H, W]`` uint8 class ids of the mask."""
        return read_mask(self.mask, self.palette, self.ignore_index)


def _files_by_stem(d: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."):
            out.setdefault(f.stem, f)
    return out


def _pick(root: Path, names: tuple[str, ...], given: PathLike | None, what: str) -> Path:
    if given is not None:
        p = Path(given)
        return require_dir(p if p.is_absolute() else root / p, f"{what} directory")
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise UserInputError(
        f"{root}: no {what} directory (looked for {', '.join(names)}); pass {what}_dir="
    )


def read_mask_folder(
    root: PathLike,
    image_dir: PathLike | None = None,
    mask_dir: PathLike | None = None,
    palette: np.ndarray = PALETTE,
    ignore_index: int | None = None,
    strict: bool = True,
) -> list[MaskSample]:
    """Pair ``root/images/*`` with ``root/masks/*`` by stem -> samples sorted by stem.

    A mask stem may carry a suffix (``x_mask``, ``x_label``, ``x_gt``). With ``strict`` an image
    without a mask (or a mask without an image) is a UserInputError naming a few; otherwise they
    are skipped. Masks are read lazily (:meth:`MaskSample.read`)."""
    root = require_dir(root, "mask dataset directory")
    images = _files_by_stem(_pick(root, IMAGE_DIR_NAMES, image_dir, "image"))
    mdir = _pick(root, MASK_DIR_NAMES, mask_dir, "mask")
    masks: dict[str, Path] = {}
    for stem, f in _files_by_stem(mdir).items():
        key = stem
        for suf in ("_mask", "_label", "_labels", "_gt", "_seg"):
            if stem.endswith(suf) and stem[: -len(suf)] in images and stem not in images:
                key = stem[: -len(suf)]
        masks.setdefault(key, f)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if strict and (no_mask or no_image):
        msg = []
        if no_mask:
            msg.append(f"{len(no_mask)} image(s) without a mask in {mdir}: {no_mask[:5]}")
        if no_image:
            msg.append(f"{len(no_image)} mask(s) without an image: {no_image[:5]}")
        raise UserInputError(f"{root}: " + "; ".join(msg) + " (pass strict=False to skip them)")
    if not images.keys() & masks.keys():
        raise UserInputError(f"{root}: no image/mask pairs (stems must match)")
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return [
        MaskSample(images[s], masks[s], pal, ignore_index)
        for s in sorted(images.keys() & masks.keys())
    ]
