"""Helpers shared by the app's tabs (:mod:`apps.tabs`): the limits of one app instance
(:class:`AppLimits`), input checks that raise :class:`gradio.Error` (seeds, sizes, steps, GSD,
coordinates, uploads), layouts read by the CLI's loader (:func:`earthgen.inputs.read_layout`),
session folders, progress callbacks and the small UI rows several tabs use (seed, size).

This module imports no other module of the app: the tabs import it, and the page
(:mod:`apps.earthgen_app`) imports the tabs.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from earthgen.classes import PALETTE
from earthgen.errors import EarthGenError, UserInputError
from earthgen.inputs import CLASS_MAP_SUFFIXES, LAYOUT_SUFFIXES, read_layout, suffix_of

MAX_SEED = 2**31 - 1
# every layout the CLI reads (earthgen.inputs.LAYOUT_SUFFIXES), plus the last extension alone of
# the double ones (.osm.bz2, .osm.gz) for browsers whose file picker matches only that
LAYOUT_FILE_TYPES = [*LAYOUT_SUFFIXES, ".bz2", ".gz"]


@dataclass(frozen=True)
class AppLimits:
    """Input limits and serving settings of one app instance."""

    max_side: int = 1024  # pixels, the longest side of any generated image or layout
    max_steps: int = 100  # denoising steps
    max_upload_mb: float = 50  # MB (2**20 bytes) per uploaded file: HTTP 413, and a gr.Error
    concurrency_limit: int = 1  # model calls running at once, per pipeline
    queue_size: int = 16  # jobs waiting, all tabs together; one more is refused ("queue is full")
    max_scene_m: float = 256.0  # metres, a 3D scene's side (16 windows of 64 m: minutes on a CPU)
    scene_render_size: int = 256  # pixels, each of the 4 rendered views of a 3D scene
    max_augment: int = 32  # synthetic images per augmentation request


# --- errors ---------------------------------------------------------------------------------


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn EarthGen's user-facing errors into :class:`gradio.Error` (message only, no
    traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except (UserInputError, EarthGenError) as e:
        raise gr.Error(str(e), print_exception=False) from None


def input_errors(path: str | os.PathLike) -> contextlib.AbstractContextManager:
    """:func:`user_errors` that names an upload by its file name (not Gradio's temporary path)."""
    return _input_errors(Path(str(path)))


@contextlib.contextmanager
def _input_errors(p: Path) -> Iterator[None]:
    try:
        yield
    except gr.Error:
        raise
    except (UserInputError, EarthGenError) as e:
        raise gr.Error(str(e).replace(str(p), p.name), print_exception=False) from None


# --- checks of typed values -----------------------------------------------------------------


def as_number(value: Any, cast: type, message: str) -> Any:
    """``cast(value)`` (``int`` or ``float``), or ``gr.Error(message)`` when it is not one."""
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise gr.Error(message, print_exception=False) from None


def pick_seed(seed: Any, randomize: bool) -> int:
    """The seed to use: a fresh random one when ``randomize``, else ``seed`` checked to be in
    ``0..2**31-1``."""
    if randomize:
        return random.randint(0, MAX_SEED)
    s = as_number(seed, int, f"seed must be a whole number, got {seed!r}")
    if not 0 <= s <= MAX_SEED or s != float(seed):
        raise gr.Error(
            f"seed must be a whole number in 0..{MAX_SEED}, got {seed}", print_exception=False
        )
    return s


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this (:attr:`EarthImagePipeline.size_multiple`)."""
    return int(pipe.size_multiple)


def default_size(pipe) -> int:
    """The side, pixels, the model was trained at."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_size(width: Any, height: Any, pipe, limits: AppLimits) -> tuple[int, int]:
    """Validated ``(width, height)`` in pixels: positive multiples of :func:`size_multiple`, at
    most ``limits.max_side`` (a larger size is an error naming the limit, never clamped)."""
    return _check_wh(width, height, size_multiple(pipe), limits)


def _check_wh(width: Any, height: Any, f: int, limits: AppLimits) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
        if w != float(width) or h != float(height):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(
            f"width and height must be whole numbers, got {width!r} x {height!r}",
            print_exception=False,
        ) from None
    if w <= 0 or h <= 0 or w % f or h % f:
        raise gr.Error(
            f"width and height must be positive multiples of {f} pixels, got {w}x{h}",
            print_exception=False,
        )
    if max(w, h) > limits.max_side:
        raise gr.Error(
            f"images are limited to {limits.max_side} pixels a side here, asked {w}x{h}",
            print_exception=False,
        )
    return w, h


def check_steps(steps: Any, limits: AppLimits) -> int:
    s = as_number(steps, int, f"steps must be a whole number, got {steps!r}")
    if not 1 <= s <= limits.max_steps:
        raise gr.Error(f"steps must be in 1..{limits.max_steps}, got {s}", print_exception=False)
    return s


def check_gsd(gsd: Any) -> float | None:
    """Ground sampling distance in metres/pixel (``None``/0 = not given)."""
    try:
        g = None if gsd is None or gsd == "" else float(gsd)
    except (TypeError, ValueError):
        raise gr.Error(
            f"GSD must be a number of metres/pixel, got {gsd!r}", print_exception=False
        ) from None
    if g is None or g == 0:
        return None
    if not 0 < g <= 1000 or g != g:
        raise gr.Error(f"GSD must be in (0, 1000] metres/pixel, got {gsd}", print_exception=False)
    return g


def parse_latlon(text: str | None, what: str = "centre") -> tuple[float, float] | None:
    """``"lat,lon"`` in degrees -> ``(lat, lon)``; None for an empty string."""
    if not text or not str(text).strip():
        return None
    try:
        lat, lon = (float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise gr.Error(
            f"{what} must be 'lat,lon' in degrees, got {text!r}", print_exception=False
        ) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise gr.Error(
            f"{what} out of range: latitude {lat:g} (-90..90), longitude {lon:g} (-180..180)",
            print_exception=False,
        )
    return lat, lon


# --- model calls ----------------------------------------------------------------------------


def step_progress(progress: Any, total: int, desc: str) -> Callable | None:
    """A ``callback_on_step_end`` that advances a :class:`gradio.Progress` bar."""
    if progress is None:
        return None

    def callback(pipe, i, t, kwargs):
        progress((i + 1, total), desc=desc, unit="steps")
        return kwargs

    return callback


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


# --- session folders ------------------------------------------------------------------------


def session_dir(root: Path, request: Any) -> Path:
    """The temporary folder of the browser session of ``request`` (created on first use)."""
    name = getattr(request, "session_hash", None) or "local"
    d = root / "".join(c for c in str(name) if c.isalnum() or c in "-_")[:64]
    d.mkdir(parents=True, exist_ok=True)
    return d


def cleanup_session(root: Path, request: Any) -> None:
    """Delete the temporary folder of the session of ``request`` (called when its tab closes)."""
    name = getattr(request, "session_hash", None)
    if name:
        shutil.rmtree(session_dir(root, request), ignore_errors=True)


# --- uploads --------------------------------------------------------------------------------


def file_path(value: Any) -> str | None:
    """The local path of an uploaded file: gradio gives a path string (``type="filepath"``), older
    versions a tempfile wrapper with ``.name``; None when nothing was uploaded."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    for attr in ("path", "name"):
        if isinstance(getattr(value, attr, None), str):
            return getattr(value, attr)
    raise gr.Error(f"unexpected upload value {type(value).__name__}", print_exception=False)


def upload_bytes(limits: AppLimits) -> int:
    """The largest upload, bytes (``limits.max_upload_mb`` MB of 2**20 bytes)."""
    return int(limits.max_upload_mb * 2**20)


def check_upload(path: str | None, limits: AppLimits, what: str = "upload") -> str | None:
    """``path`` unchanged, or a :class:`gradio.Error` when the file is larger than the upload limit
    (the server refuses larger uploads with HTTP 413; this also covers files that reach a
    handler another way, e.g. an API call with a URL)."""
    if path:
        try:
            n = os.path.getsize(path)
        except OSError:
            return path  # the reader names a missing file
        if n > upload_bytes(limits):
            raise gr.Error(
                f"the {what} is {n / 2**20:.1f} MB; uploads are limited to "
                f"{limits.max_upload_mb:g} MB here",
                print_exception=False,
            )
    return path


def _image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` pixels from an image file's header; None when PIL cannot open it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


# --- images and layouts ---------------------------------------------------------------------


def to_rgb(image: Any) -> np.ndarray:
    """PIL / array image -> ``[H, W, 3]`` uint8."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    return arr[..., :3]


def fit_image(rgb: np.ndarray, mask: np.ndarray | None, f: int, max_side: int):
    """Crop ``rgb`` ``[H, W, 3]`` (and ``mask`` ``[H, W]``) to multiples of ``f`` pixels (at most
    ``f - 1`` pixels lost at the right and bottom); an image over ``max_side`` pixels a side is a
    :class:`gradio.Error` naming the limit (never silently shrunk)."""
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        raise gr.Error(
            f"the image is {w}x{h} px; images are limited to {max_side} pixels a side "
            "here (resize it, or start the app with a larger --max-side)",
            print_exception=False,
        )
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    if h == 0 or w == 0:
        raise gr.Error(f"the image is too small: at least {f}x{f} pixels", print_exception=False)
    return rgb[:h, :w], (None if mask is None else mask[:h, :w])


def palette_ids(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` colours -> ``[H, W]`` uint8 class ids of the nearest palette colour (brush
    strokes are anti-aliased, so exact matching would fail at their edges)."""
    diff = rgb[..., None, :3].astype(np.int32) - PALETTE[None, None].astype(np.int32)
    return (diff**2).sum(-1).argmin(-1).astype(np.uint8)


def drawn_layout(editor: Any) -> np.ndarray | None:
    """Class ids ``[H, W]`` from a :class:`gradio.ImageEditor` value drawn with the palette
    colours; transparent pixels are background (class 0). None when nothing was drawn."""
    if not editor:
        return None
    comp = editor.get("composite") if isinstance(editor, dict) else editor
    if comp is None:
        return None
    comp = np.asarray(comp)
    if comp.ndim == 2:
        comp = np.stack([comp] * 3, -1)
    ids = palette_ids(comp[..., :3])
    if comp.shape[-1] == 4:
        ids[comp[..., 3] < 128] = 0
    return ids if ids.any() else None  # an empty (all background) drawing is no layout


def resize_ids(ids: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a class-id map ``[H, W]`` to ``height x width``."""
    if ids.shape == (height, width):
        return ids
    im = Image.fromarray(ids.astype(np.uint8))
    return np.asarray(im.resize((width, height), Image.NEAREST))


def load_layout(
    file: Any,
    drawn: Any,
    center: str,
    gsd: float | None,
    width: int,
    height: int,
    limits: AppLimits | None = None,
) -> tuple[np.ndarray, float | None, str]:
    """The class-id layout ``[height, width]`` from an uploaded file, read by the CLI's loader
    (:func:`earthgen.inputs.read_layout`: OSM ``.osm/.pbf/.osm.bz2/.osm.gz/.o5m`` and GeoJSON
    rasterized on ``center`` at ``gsd`` metres/pixel; class-id, palette or class-colour PNG/TIFF
    resized nearest), or from a drawing; returns ``(ids, gsd, description)``."""
    limits = limits or AppLimits()
    path = check_upload(file_path(file), limits, "layout file")
    if path:
        c = parse_latlon(center, "centre")
        if suffix_of(path, CLASS_MAP_SUFFIXES):
            shape = _image_size(path)
            if shape is not None and (max(shape) > 4 * max(width, height) or max(shape) > 8192):
                raise gr.Error(
                    f"the layout is {shape[0]}x{shape[1]} px; give one at most 4x the "
                    "image size (8192 px at most)",
                    print_exception=False,
                )
            c = None  # a class map is used whole
        with input_errors(path):
            lay = read_layout(path, flag="layout", center=c, size=(width, height), gsd=gsd)
        return lay.semantic, lay.gsd, lay.description
    ids = drawn_layout(drawn)
    if ids is None:
        raise gr.Error(
            "upload a layout (OSM, GeoJSON or a class-id PNG) or draw one", print_exception=False
        )
    return resize_ids(ids, width, height), gsd, "drawn layout"


# --- UI pieces several tabs use -------------------------------------------------------------


def no_model(what: str, flag: str) -> None:
    """The note a tab shows instead of its controls when its model is not loaded."""
    gr.Markdown(
        f"**No {what} model is loaded.** Start the app with `{flag} FOLDER` (or the "
        "packaged default) to use this tab."
    )


def seed_row(prefix: str):
    """A seed box and a *Randomize seed* tick box (``{prefix}-seed``, ``{prefix}-randomize``)."""
    with gr.Row():
        seed = gr.Number(
            label="Seed",
            value=0,
            precision=0,
            minimum=0,
            maximum=MAX_SEED,
            elem_id=f"{prefix}-seed",
        )
        rand = gr.Checkbox(label="Randomize seed", value=True, elem_id=f"{prefix}-randomize")
    return seed, rand


def size_row(pipe, limits: AppLimits, prefix: str):
    """Width and height number boxes (``{prefix}-width``, ``{prefix}-height``)."""
    # number boxes, not sliders: a slider clamps a typed 4096 to its maximum without a word; here
    # the handler refuses it with a message naming the limit (check_size)
    f, d = size_multiple(pipe), default_size(pipe)
    top = max(f, limits.max_side // f * f)
    with gr.Row():
        w = gr.Number(
            value=min(d, top),
            step=f,
            precision=0,
            label=f"Width (px, multiple of {f}, at most {top})",
            elem_id=f"{prefix}-width",
        )
        h = gr.Number(
            value=min(d, top),
            step=f,
            precision=0,
            label=f"Height (px, multiple of {f}, at most {top})",
            elem_id=f"{prefix}-height",
        )
    return w, h


def steps_slider(limits: AppLimits, value: int = 30, **kw):
    """The *Steps* slider, ``1..limits.max_steps``."""
    return gr.Slider(
        1, limits.max_steps, value=min(value, limits.max_steps), step=1, label="Steps", **kw
    )
