"""The EarthGen Gradio app (``earthgen app``): text -> image, layout -> image, inpaint/outpaint,
detection augmentation and 3D scenes in the browser.

:func:`create_demo` builds the :class:`gradio.Blocks` from already-loaded pipelines (one per tab;
``None`` = the tab shows a note instead of controls); weights load only in
:mod:`earthgen.commands.app`. Handlers are module-level functions that turn UI values into one
pipeline call, so tests call them directly; user mistakes raise :class:`gradio.Error` (a message in
the page, no stack trace).

Serving rules: the server listens on 127.0.0.1 unless :func:`launch` is given another host; every
model call goes through one queue per pipeline (``concurrency_limit``, default 1: a diffusers
pipeline keeps per-call state in its scheduler), waiting jobs are bounded (``queue_size``: one more
is refused), images are limited to ``max_side`` pixels (a larger size is an error naming the
limit, never a clamp), steps to ``max_steps``, uploads to ``max_upload_mb`` (HTTP 413 from the
server, a gr.Error in a handler); files a session writes live in its own temporary folder,
deleted when the browser tab closes (and the whole root when the process exits). Layout files are
read by the CLI's loader (:func:`earthgen.inputs.read_layout`). Typed numbers are committed to the
page's state as they are typed (:func:`commit_typed_values`), so a Run click right after typing
uses them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from earthgen.classes import CLASSES, PALETTE, colorize
from earthgen.errors import EarthGenError, UserInputError
from earthgen.inputs import CLASS_MAP_SUFFIXES, LAYOUT_SUFFIXES, read_layout, suffix_of
from earthgen.prior import DEFAULT_STRENGTH, layout_prior_inputs

MAX_SEED = 2**31 - 1
# every layout the CLI reads (earthgen.inputs.LAYOUT_SUFFIXES), plus the last extension alone of
# the double ones (.osm.bz2, .osm.gz) for browsers whose file picker matches only that
LAYOUT_FILE_TYPES = [*LAYOUT_SUFFIXES, ".bz2", ".gz"]
SCENE_SOURCES = ("Procedural world", "Semantic layout (class map, OSM or GeoJSON)", "Aerial image",
                 "Nothing (unconditional)")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class AppLimits:
    """Input limits and serving settings of one app instance."""

    max_side: int = 1024  # pixels, the longest side of any generated image or layout
    max_steps: int = 100  # denoising steps
    max_upload_mb: float = 50  # MB (2**20 bytes) per uploaded file: HTTP 413, and a gr.Error
    concurrency_limit: int = 1  # model calls running at once, per pipeline
    queue_size: int = 16  # jobs waiting, all tabs together; one more is refused ("queue is full")
    max_scene_m: float = 256.0  # metres, the side of a 3D scene (16 windows of 64 m: minutes on a CPU)
    scene_render_size: int = 256  # pixels, each of the 4 rendered views of a 3D scene
    max_augment: int = 32  # synthetic images per augmentation request


# --- helpers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn EarthGen's user-facing errors into :class:`gradio.Error` (message only, no traceback)."""
    try:
        yield
    except gr.Error:
        raise
    except (UserInputError, EarthGenError) as e:
        raise gr.Error(str(e), print_exception=False) from None


def pick_seed(seed: Any, randomize: bool) -> int:
    """The seed to use: a fresh random one when ``randomize``, else ``seed`` checked to be in
    ``0..2**31-1``."""
    if randomize:
        return random.randint(0, MAX_SEED)
    try:
        s = int(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"seed must be a whole number, got {seed!r}", print_exception=False) from None
    if not 0 <= s <= MAX_SEED or s != float(seed):
        raise gr.Error(f"seed must be a whole number in 0..{MAX_SEED}, got {seed}", print_exception=False)
    return s


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this (:attr:`EarthImagePipeline.size_multiple`)."""
    return int(pipe.size_multiple)


def default_size(pipe) -> int:
    """The side, pixels, the model was trained at."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_size(width: Any, height: Any, pipe, limits: AppLimits) -> tuple[int, int]:
    """Validated ``(width, height)`` in pixels: positive multiples of :func:`size_multiple`, at most
    ``limits.max_side`` (a larger size is an error naming the limit, never clamped)."""
    return _check_wh(width, height, size_multiple(pipe), limits)


def _check_wh(width: Any, height: Any, f: int, limits: AppLimits) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
        if w != float(width) or h != float(height):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"width and height must be whole numbers, got {width!r} x {height!r}",
                       print_exception=False) from None
    if w <= 0 or h <= 0 or w % f or h % f:
        raise gr.Error(f"width and height must be positive multiples of {f} pixels, got {w}x{h}",
                       print_exception=False)
    if max(w, h) > limits.max_side:
        raise gr.Error(f"images are limited to {limits.max_side} pixels a side here, asked {w}x{h}",
                       print_exception=False)
    return w, h


def check_steps(steps: Any, limits: AppLimits) -> int:
    try:
        s = int(steps)
    except (TypeError, ValueError):
        raise gr.Error(f"steps must be a whole number, got {steps!r}", print_exception=False) from None
    if not 1 <= s <= limits.max_steps:
        raise gr.Error(f"steps must be in 1..{limits.max_steps}, got {s}", print_exception=False)
    return s


def check_gsd(gsd: Any) -> float | None:
    """Ground sampling distance in metres/pixel (``None``/0 = not given)."""
    try:
        g = None if gsd is None or gsd == "" else float(gsd)
    except (TypeError, ValueError):
        raise gr.Error(f"GSD must be a number of metres/pixel, got {gsd!r}", print_exception=False) from None
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
        raise gr.Error(f"{what} must be 'lat,lon' in degrees, got {text!r}", print_exception=False) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise gr.Error(f"{what} out of range: latitude {lat:g} (-90..90), longitude {lon:g} (-180..180)",
                       print_exception=False)
    return lat, lon


def step_progress(progress: Any, total: int, desc: str) -> Callable | None:
    """A ``callback_on_step_end`` that advances a :class:`gradio.Progress` bar."""
    if progress is None:
        return None

    def callback(pipe, i, t, kwargs):
        progress((i + 1, total), desc=desc, unit="steps")
        return kwargs

    return callback


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


def palette_ids(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` colours -> ``[H, W]`` uint8 class ids of the nearest palette colour (brush
    strokes are anti-aliased, so exact matching would fail at their edges)."""
    d = ((rgb[..., None, :3].astype(np.int32) - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


def drawn_layout(editor: Any) -> np.ndarray | None:
    """Class ids ``[H, W]`` from a :class:`gradio.ImageEditor` value drawn with the palette colours;
    transparent pixels are background (class 0). None when nothing was drawn."""
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
    return np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((width, height), Image.NEAREST))


def load_layout(file: Any, drawn: Any, center: str, gsd: float | None, width: int,
                height: int, limits: AppLimits | None = None) -> tuple[np.ndarray, float | None, str]:
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
                raise gr.Error(f"the layout is {shape[0]}x{shape[1]} px; give one at most 4x the image size "
                               "(8192 px at most)", print_exception=False)
            c = None  # a class map is used whole
        with input_errors(path):
            lay = read_layout(path, flag="layout", center=c, size=(width, height), gsd=gsd)
        return lay.semantic, lay.gsd, lay.description
    ids = drawn_layout(drawn)
    if ids is None:
        raise gr.Error("upload a layout (OSM, GeoJSON or a class-id PNG) or draw one", print_exception=False)
    return resize_ids(ids, width, height), gsd, "drawn layout"


def _image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` pixels from an image file's header; None when PIL cannot open it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def to_rgb(image: Any) -> np.ndarray:
    """PIL / array image -> ``[H, W, 3]`` uint8."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return arr[..., :3]


def fit_image(rgb: np.ndarray, mask: np.ndarray | None, f: int, max_side: int):
    """Crop ``rgb`` ``[H, W, 3]`` (and ``mask`` ``[H, W]``) to multiples of ``f`` pixels (at most
    ``f - 1`` pixels lost at the right and bottom); an image over ``max_side`` pixels a side is a
    :class:`gradio.Error` naming the limit (never silently shrunk)."""
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        raise gr.Error(f"the image is {w}x{h} px; images are limited to {max_side} pixels a side here "
                       "(resize it, or start the app with a larger --max-side)", print_exception=False)
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    if h == 0 or w == 0:
        raise gr.Error(f"the image is too small: at least {f}x{f} pixels", print_exception=False)
    return rgb[:h, :w], (None if mask is None else mask[:h, :w])


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
            raise gr.Error(f"the {what} is {n / 2**20:.1f} MB; uploads are limited to "
                           f"{limits.max_upload_mb:g} MB here", print_exception=False)
    return path


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


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


# --- handlers ---------------------------------------------------------------------------------------


def text_to_image(pipe, limits: AppLimits, prompt: str, negative_prompt: str, gsd: Any, width: Any,
                  height: Any, steps: Any, guidance: Any, seed: Any, randomize: bool,
                  progress: Any = None, location: str = "", metadata_guidance: Any = 0.0) -> tuple[Image.Image, int]:
    """Text (+ GSD in metres/pixel, + location ``"lat,lon"`` for models with location metadata)
    -> one image; returns ``(image, seed used)``. ``metadata_guidance`` > 0: a separate guidance
    scale for the metadata alone (the pipeline's ``metadata_guidance_scale``); 0: guided with the text."""
    w, h = check_size(width, height, pipe, limits)
    n = check_steps(steps, limits)
    loc = parse_latlon(location, "location")
    s = pick_seed(seed, randomize)
    meta = {"lat": loc[0], "lon": loc[1]} if loc else None
    try:
        mg = float(metadata_guidance or 0.0)
    except (TypeError, ValueError):
        raise gr.Error(f"metadata guidance must be a number, got {metadata_guidance!r}",
                       print_exception=False) from None
    if not 0.0 <= mg <= 30.0:
        raise gr.Error(f"metadata guidance must be in 0..30, got {mg:g}", print_exception=False)
    g = check_gsd(gsd)
    if mg > 0 and g is None and meta is None:
        raise gr.Error("metadata guidance needs a GSD or a location to guide", print_exception=False)
    with user_errors():
        out = pipe(prompt=prompt or "", negative_prompt=negative_prompt or None, gsd=g,
                   metadata=meta, height=h, width=w, num_inference_steps=n, guidance_scale=float(guidance),
                   metadata_guidance_scale=mg if mg > 0 else None,
                   generator=_generator(s), output_type="pil",
                   callback_on_step_end=step_progress(progress, n, "denoising"))
    return out.images[0], s


def preview_layout(limits: AppLimits, file: Any, drawn: Any, center: str, gsd: Any, width: Any,
                   height: Any, multiple: int = 8) -> tuple[np.ndarray, str]:
    """The colourized layout ``[H, W, 3]`` that generation will use, and a one-line description."""
    w, h = _check_wh(width, height, multiple, limits)
    ids, g, what = load_layout(file, drawn, center, check_gsd(gsd), w, h, limits)
    return colorize(ids), _describe(ids, g, what)


def layout_to_image(pipe, limits: AppLimits, file: Any, drawn: Any, center: str, prompt: str,
                    gsd: Any, width: Any, height: Any, layout_scale: Any, roads_scale: Any, steps: Any,
                    guidance: Any, seed: Any, randomize: bool,
                    progress: Any = None,
                    strength: Any = DEFAULT_STRENGTH) -> tuple[np.ndarray, Image.Image, int, str]:
    """Layout (+ text, GSD) -> ``(layout preview [H, W, 3], image, seed used, description)``.

    Render, then refine: the layout is rendered to an RGB prior (:mod:`earthgen.prior`), noised
    to ``strength`` and denoised (1 = from pure noise, no prior)."""
    w, h = check_size(width, height, pipe, limits)
    n = check_steps(steps, limits)
    if not pipe.takes_layout:
        raise gr.Error("this model takes no layout; use the Text -> Image tab",
                       print_exception=False)
    ids, g, what = load_layout(file, drawn, center, check_gsd(gsd), w, h, limits)
    s = pick_seed(seed, randomize)
    scales = {"layout": float(layout_scale), "roads": float(roads_scale)}
    with user_errors():
        prior_kw = layout_prior_inputs(ids, g, s, strength, size=(w, h))
        out = pipe(prompt=prompt or "", gsd=g, layout=ids, control_scales=scales, height=h, width=w,
                   **prior_kw, num_inference_steps=n, guidance_scale=float(guidance), generator=_generator(s),
                   output_type="pil", callback_on_step_end=step_progress(progress, n, "denoising"))
    return colorize(ids), out.images[0], s, _describe(ids, g, what)


def edit_image(pipe, limits: AppLimits, editor: Any, mode: str, left: Any, right: Any, top: Any,
               bottom: Any, prompt: str, gsd: Any, steps: Any, guidance: Any, seed: Any,
               randomize: bool, progress: Any = None) -> tuple[Image.Image, int]:
    """Inpaint the painted area of the editor's image, or outpaint: extend its borders by
    ``left/right/top/bottom`` pixels. Returns ``(image, seed used)``."""
    bg = editor.get("background") if isinstance(editor, dict) else editor
    if bg is None:
        raise gr.Error("upload an image to edit", print_exception=False)
    rgb = to_rgb(bg)
    f = size_multiple(pipe)
    n = check_steps(steps, limits)
    if mode.lower().startswith("outpaint"):
        from earthgen.pipelines.image import outpaint_canvas

        pads = [int(v or 0) for v in (left, right, top, bottom)]
        if min(pads) < 0 or sum(pads) == 0:
            raise gr.Error("outpainting needs a border > 0 pixels on at least one side", print_exception=False)
        rgb, _ = fit_image(rgb, None, f, limits.max_side)
        with user_errors():
            image, mask, _ = outpaint_canvas(rgb, *pads, multiple=f)
        if max(image.shape[:2]) > limits.max_side:
            raise gr.Error(f"the outpainted canvas would be {image.shape[1]}x{image.shape[0]}; the limit is "
                           f"{limits.max_side} pixels a side", print_exception=False)
    else:
        layers = (editor.get("layers") or []) if isinstance(editor, dict) else []
        painted = np.zeros(rgb.shape[:2], bool)
        for la in layers:
            a = np.asarray(la)
            if a.ndim == 3 and a.shape[-1] == 4 and a.shape[:2] == painted.shape:
                painted |= a[..., 3] > 0
        if not painted.any():
            raise gr.Error("paint the area to repaint on the image (brush tool) first", print_exception=False)
        image, m = fit_image(rgb, painted, f, limits.max_side)
        mask = m.astype(np.float32)
    s = pick_seed(seed, randomize)
    with user_errors():
        out = pipe(prompt=prompt or "", gsd=check_gsd(gsd), image=Image.fromarray(image), mask=mask,
                   strength=1.0, height=image.shape[0], width=image.shape[1], num_inference_steps=n,
                   guidance_scale=float(guidance), generator=_generator(s), output_type="pil",
                   callback_on_step_end=step_progress(progress, n, "denoising"))
    return out.images[0], s


def save_scene_files(scene: Any, folder: Path, render_size: int = 256) -> dict[str, str]:
    """Write a scene with :func:`earthgen.export3d.save_scene` (GLB, PLYs, rendered views); returns
    its paths. ``scene``: an :class:`earthgen.pipelines.scene.EarthSceneOutput` (``colors``,
    ``surfels``) or an :class:`earthgen.world.scene3d.Scene3D` (``color``, ``reference``)."""
    from earthgen.export3d import save_scene

    colors = scene.colors if hasattr(scene, "colors") else scene.color
    surfels = scene.surfels if hasattr(scene, "surfels") else scene.reference
    if not len(scene.coords):
        raise gr.Error("the model generated an empty scene (no voxels); try another seed or more steps",
                       print_exception=False)
    return save_scene(folder, scene.coords, scene.voxel_size, scene.origin, colors, surfels,
                      semantic=getattr(scene, "semantic", None), image_size=render_size, views=4)


def _scene_progress(progress: Any, steps: int) -> Callable | None:
    if progress is None:
        return None

    def callback(pipe, step, t, kwargs):
        stage, window = kwargs.get("stage") or "sampling", kwargs.get("window")
        # ``window`` is None for a stage that samples the whole scene at once
        desc = stage if window is None else f"{stage}, window {int(window) + 1}"
        progress((step + 1, steps), desc=desc, unit="steps")
        return None

    return callback


def generate_scene(scene_pipe, limits: AppLimits, folder: Path, source: str, world_seed: Any,
                   size_m: Any, semantic_file: Any, image: Any, steps: Any, guidance: Any,
                   seed: Any, randomize: bool, progress: Any = None):
    """A 3D scene -> ``(GLB path, render PNG path, [download paths], seed used, description)``.

    ``source`` (one of :data:`SCENE_SOURCES`) gives the condition: a procedural world tile's
    semantic map, an uploaded class-id PNG, an aerial image, or nothing; ``size_m`` is the scene's
    side in metres (the map's width covers it). Without a scene model only the procedural world is
    offered, and its exact 3D (:func:`earthgen.world.scene3d.world_scene`) is shown."""
    try:
        size = float(size_m)
    except (TypeError, ValueError):
        raise gr.Error(f"scene size must be a number of metres, got {size_m!r}", print_exception=False) from None
    if not 16 <= size <= limits.max_scene_m:
        raise gr.Error(f"scene size must be in 16..{limits.max_scene_m:g} metres, got {size:g}",
                       print_exception=False)
    s = pick_seed(seed, randomize)
    out_dir = folder / f"scene_{s}_{random.randint(0, 10**9)}"
    if progress is not None:
        progress(0.0, desc="preparing the condition")
    semantic = img = tile = None
    if source == SCENE_SOURCES[0]:
        from earthgen.world import generate_world

        ws = pick_seed(world_seed, False)
        gsd = 0.5 if size <= 128 else 1.0
        with user_errors():
            tile = generate_world(ws, int(round(size / gsd)), gsd)
        semantic = tile.semantic
        what = f"procedural world {ws}, {size:g} m"
    elif source == SCENE_SOURCES[1]:
        path = check_upload(file_path(semantic_file), limits, "layout file")
        if not path:
            raise gr.Error("upload a semantic layout: a class-id/colour PNG, OSM or GeoJSON file",
                           print_exception=False)
        if suffix_of(path, CLASS_MAP_SUFFIXES):  # used whole: its width spans the scene
            shape = _image_size(path)
            if shape is not None and max(shape) > limits.max_side:
                raise gr.Error(f"the layout is {shape[0]}x{shape[1]} px; layouts are limited to "
                               f"{limits.max_side} pixels a side here", print_exception=False)
            kw = {}
        else:  # OSM / GeoJSON: the scene's square around the data's centre
            gsd = 0.5 if size <= 128 else 1.0
            kw = {"size": int(round(size / gsd)), "gsd": gsd}
        with input_errors(path):
            semantic = read_layout(path, flag="layout", **kw).semantic
        what = f"layout {Path(str(path)).name}, {size:g} m"
    elif source == SCENE_SOURCES[2]:
        if image is None:
            raise gr.Error("upload an aerial image to lift to 3D", print_exception=False)
        img = to_rgb(image)
        if max(img.shape[:2]) > limits.max_side:
            raise gr.Error(f"images are limited to {limits.max_side} pixels a side", print_exception=False)
        what = f"image {img.shape[1]}x{img.shape[0]}, {size:g} m"
    elif source == SCENE_SOURCES[3]:
        what = f"unconditional, {size:g} m"
    else:
        raise gr.Error(f"unknown condition {source!r}", print_exception=False)
    if scene_pipe is None:
        if tile is None:
            raise gr.Error("no 3D model is loaded (start the app with --scene-model); only the procedural "
                           "world is available", print_exception=False)
        from earthgen.world.scene3d import world_scene

        if progress is not None:
            progress(0.3, desc="voxelizing the world")
        with user_errors():
            scene = world_scene(tile, 2.0 if size > 128 else 1.0)
        what += " (exact procedural 3D, no model)"
    else:
        n = check_steps(steps, limits)
        ref = semantic if semantic is not None else img
        window_m = getattr(scene_pipe, "window", 64) * getattr(scene_pipe, "voxel_size", 1.0)
        kw = {"gsd": size / ref.shape[1]} if ref is not None else {"size_m": size}
        with user_errors():
            scene = scene_pipe(semantic=semantic, image=img, overlap_m=min(16.0, window_m / 4),
                               num_inference_steps=n, guidance_scale=float(guidance), generator=_generator(s),
                               callback_on_step_end=_scene_progress(progress, n), **kw)
    if progress is not None:
        progress(0.7, desc="meshing and rendering")
    with user_errors():
        paths = save_scene_files(scene, out_dir, limits.scene_render_size)
    files = [paths[k] for k in ("glb", "gaussians", "voxels", "mesh_ply") if k in paths]
    return paths["glb"], paths.get("render"), files, s, f"{what}: {len(scene.coords)} voxels"


def extract_zip(path: Any, dest: Path, max_bytes: int, max_files: int = 20000) -> Path:
    """Unpack an uploaded dataset ``.zip`` into ``dest`` safely (no absolute or ``..`` paths, at
    most ``max_bytes`` unpacked and ``max_files`` entries); returns the dataset's root folder
    (``dest``, or the single folder the archive holds)."""
    import zipfile

    try:
        zf = zipfile.ZipFile(str(file_path(path)))
    except (OSError, zipfile.BadZipFile) as e:
        raise gr.Error(f"not a readable .zip file: {e}", print_exception=False) from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        if not infos:
            raise gr.Error("the .zip file is empty", print_exception=False)
        if len(infos) > max_files:
            raise gr.Error(f"the .zip holds {len(infos)} files; the limit is {max_files}", print_exception=False)
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise gr.Error(f"the .zip unpacks to {total / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB",
                           print_exception=False)
        root = dest.resolve()
        for info in infos:
            target = (dest / info.filename).resolve()
            if root not in target.parents:
                raise gr.Error(f"unsafe path in the .zip: {info.filename}", print_exception=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    entries = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def draw_boxes(image_path: Path, boxes: Any) -> np.ndarray:
    """The image ``[H, W, 3]`` with its boxes (``BoxSet``: pixel corners ``[N, 4, 2]``) outlined,
    one colour per class."""
    from PIL import ImageDraw

    im = Image.open(image_path).convert("RGB")
    draw = ImageDraw.Draw(im)
    names = sorted(set(boxes.labels))
    for corners, label in zip(np.asarray(boxes.corners), boxes.labels, strict=True):
        c = tuple(int(v) for v in PALETTE[1 + names.index(label) % (len(PALETTE) - 1)])
        draw.polygon([tuple(map(float, p)) for p in corners], outline=c, width=2)
    return np.asarray(im)


def augment_zip(pipe, limits: AppLimits, folder: Path, data: Any, count: Any, steps: Any, guidance: Any,
                use_filter: bool, seed: Any, randomize: bool):
    """A detection dataset (``.zip`` of images + DOTA/YOLO/COCO/VOC/CSV labels) -> the dataset plus
    ``count`` box-conditioned synthetic images (:func:`earthgen.augment.augment_dataset`).

    Returns ``(previews [(image [H, W, 3], caption)], zip path, seed used, summary)``; previews
    are the synthetic images kept, their boxes drawn."""
    if getattr(pipe, "box_encoder", None) is None:
        raise gr.Error("this image model has no box conditioning; start the app with --augment-model",
                       print_exception=False)
    path = check_upload(file_path(data), limits, "dataset .zip")
    if not path:
        raise gr.Error("upload a .zip of a detection dataset (images + labels)", print_exception=False)
    try:
        n = int(count)
    except (TypeError, ValueError):
        raise gr.Error(f"the number of images must be a whole number, got {count!r}", print_exception=False) from None
    if not 1 <= n <= limits.max_augment:
        raise gr.Error(f"generate 1..{limits.max_augment} images at a time, got {n}", print_exception=False)
    k = check_steps(steps, limits)
    s = pick_seed(seed, randomize)
    from earthgen.augment import AugmentConfig, augment_dataset
    from earthgen.data import read_detection_dataset

    work = folder / f"augment_{s}_{random.randint(0, 10**9)}"
    src = extract_zip(path, work / "input", 10 * upload_bytes(limits))
    out = work / "augmented"
    cfg = AugmentConfig(n=n, seed=s, steps=k, guidance_scale=float(guidance), filter=bool(use_filter))
    with user_errors():
        summary = augment_dataset(src, out, pipe, cfg, progress=True)
        items = read_detection_dataset(out, summary["format"])
    synthetic = [it for it in items if it.image.name.startswith("synthetic_")]
    previews = [(draw_boxes(it.image, it.boxes), f"{it.image.name}: {len(it.boxes)} boxes") for it in synthetic]
    archive = shutil.make_archive(str(work / f"augmented_{s}"), "zip", out)
    kept = f"{summary['kept']} of {summary['generated']} kept by the detector filter" if cfg.filter else \
        f"{summary['generated']} generated (no filter)"
    text = (f"{summary['real_images']} real images ({summary['source_format']}), {kept}; classes: "
            f"{', '.join(summary['classes'])}; written as {summary['format']}")
    return previews, archive, s, text


# --- UI -----------------------------------------------------------------------------------------


def _describe(ids: np.ndarray, gsd: float | None, what: str) -> str:
    frac = np.bincount(ids.ravel(), minlength=len(CLASSES)) / ids.size
    top = ", ".join(f"{CLASSES[i].name} {frac[i]:.0%}" for i in np.argsort(-frac)[:4] if frac[i] > 0)
    g = f", {gsd:g} m/px" if gsd else ""
    return f"{what}: {ids.shape[1]}x{ids.shape[0]} px{g}; {top}"


def _hex(c) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def _no_model(what: str, flag: str) -> None:
    gr.Markdown(f"**No {what} model is loaded.** Start the app with `{flag} FOLDER` (or the packaged "
                "default) to use this tab.")


# The frontend renders a tab's components when the tab is first shown and, a frame later, sets
# them to the values the server sent: a value typed in that frame was silently replaced (the run
# then used the old value). Writing each typed value back as the component's own state (a
# browser-only event, no server call) makes the later set keep what was typed.
COMMIT_JS = "(value) => value"


def commit_typed_values(demo: gr.Blocks) -> int:
    """Make every number box and slider of ``demo`` store what the user types as soon as it is
    typed (see :data:`COMMIT_JS`); returns how many components were wired."""
    n = 0
    for block in list(demo.blocks.values()):
        if isinstance(block, (gr.Number, gr.Slider)) and block.interactive is not False:
            block.input(None, block, block, js=COMMIT_JS, queue=False, show_progress="hidden",
                        api_visibility="private")
            n += 1
    return n


def _seed_row(prefix: str):
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id=f"{prefix}-seed")
        rand = gr.Checkbox(label="Randomize seed", value=True, elem_id=f"{prefix}-randomize")
    return seed, rand


def _size_row(pipe, limits: AppLimits, prefix: str):
    # number boxes, not sliders: a slider clamps a typed 4096 to its maximum without a word; here
    # the handler refuses it with a message naming the limit (check_size)
    f, d = size_multiple(pipe), default_size(pipe)
    top = max(f, limits.max_side // f * f)
    with gr.Row():
        w = gr.Number(value=min(d, top), step=f, precision=0, label=f"Width (px, multiple of {f}, at most {top})",
                      elem_id=f"{prefix}-width")
        h = gr.Number(value=min(d, top), step=f, precision=0, label=f"Height (px, multiple of {f}, at most {top})",
                      elem_id=f"{prefix}-height")
    return w, h


def _text_tab(pipe, limits: AppLimits, queue: dict) -> None:
    if pipe is None:
        _no_model("image", "--model")
        return
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", value="dense residential area with trees",
                                elem_id="t2i-prompt", max_length=500)
            negative = gr.Textbox(label="Negative prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=0.5, minimum=0)
            enc = getattr(pipe, "metadata_encoder", None)
            location = gr.Textbox(label="Location 'lat,lon' (degrees; empty = not given)", value="",
                                  visible=enc is not None and "lat" in tuple(enc.config.fields))
            width, height = _size_row(pipe, limits, "t2i")
            with gr.Row():
                steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1, label="Steps",
                                  elem_id="t2i-steps")
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            takes_meta = enc is not None or bool(pipe.unet.config.get("num_class_embeds"))
            meta_guidance = gr.Slider(0.0, 15.0, value=0.0, step=0.5, visible=takes_meta,
                                      label="Metadata guidance (GSD, location; 0 = together with the text)")
            seed, rand = _seed_row("t2i")
            run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
        with gr.Column():
            image = gr.Image(label="Generated image", type="pil", format="png", elem_id="t2i-output")

    def fn(prompt, negative, gsd, location, width, height, steps, guidance, meta_guidance, seed, rand,
           progress=gr.Progress()):
        return text_to_image(pipe, limits, prompt, negative, gsd, width, height, steps, guidance, seed,
                             rand, progress, location, meta_guidance)

    run.click(fn, [prompt, negative, gsd, location, width, height, steps, guidance, meta_guidance, seed, rand],
              [image, seed], api_name="text_to_image", **queue)


def _layout_tab(pipe, limits: AppLimits, queue: dict) -> None:
    if pipe is None:
        _no_model("image", "--model")
        return
    if not pipe.takes_layout:
        gr.Markdown("**This image model takes no layout**; use the Text -> Image tab.")
        return
    # per-map scales exist for a control branch; a layout at the UNet input follows the guidance scale
    names = set(pipe.controlnet.condition_names) if pipe.controlnet is not None else set()
    f = size_multiple(pipe)
    colors = [_hex(c.color) for c in CLASSES]
    legend = " ".join(f"<span style='background:{_hex(c.color)};padding:0 6px'>&nbsp;</span> {c.name}"
                      for c in CLASSES)
    with gr.Row():
        with gr.Column():
            file = gr.File(label="Layout: OpenStreetMap (.osm/.pbf/.osm.bz2/.osm.gz), GeoJSON or class-id/colour PNG",
                           file_types=LAYOUT_FILE_TYPES, type="filepath", elem_id="l2i-file")
            center = gr.Textbox(label="Centre 'lat,lon' (OSM/GeoJSON; empty = centre of the data)", value="")
            with gr.Accordion("...or draw a layout (brush colours = classes)", open=False):
                gr.HTML(f"<div style='font-size:smaller'>{legend}</div>")
                canvas = default_size(pipe)
                drawn = gr.ImageEditor(
                    value={"background": np.zeros((canvas, canvas, 3), np.uint8), "layers": [], "composite": None},
                    type="numpy", image_mode="RGBA", label="Draw", canvas_size=(canvas, canvas),
                    brush=gr.Brush(colors=colors, default_color=colors[1], color_mode="fixed"),
                    sources=("upload",), elem_id="l2i-draw")
            prompt = gr.Textbox(label="Prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=1.0, minimum=0)
            width, height = _size_row(pipe, limits, "l2i")
            with gr.Row():
                ls = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Layout scale", visible="layout" in names)
                rs = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Roads scale", visible="roads" in names)
            with gr.Row():
                steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1, label="Steps")
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, elem_id="l2i-strength",
                                 label="Strength (the layout rendered to a prior, then refined; 1 = pure noise)")
            seed, rand = _seed_row("l2i")
            with gr.Row():
                prev = gr.Button("Preview layout", elem_id="l2i-preview")
                run = gr.Button("Generate", variant="primary", elem_id="l2i-run")
        with gr.Column():
            preview = gr.Image(label="Rasterized layout", type="numpy", format="png", elem_id="l2i-layout")
            info = gr.Markdown()
            image = gr.Image(label="Generated image", type="pil", format="png", elem_id="l2i-output")

    def fn_prev(file, drawn, center, gsd, width, height):
        return preview_layout(limits, file, drawn, center, gsd, width, height, f)

    def fn(file, drawn, center, prompt, gsd, width, height, ls, rs, steps, guidance, strength, seed, rand,
           progress=gr.Progress()):
        return layout_to_image(pipe, limits, file, drawn, center, prompt, gsd, width, height, ls, rs, steps,
                               guidance, seed, rand, progress, strength)

    prev.click(fn_prev, [file, drawn, center, gsd, width, height], [preview, info], api_name="preview_layout")
    run.click(fn, [file, drawn, center, prompt, gsd, width, height, ls, rs, steps, guidance, strength, seed,
                   rand],
              [preview, image, seed, info], api_name="layout_to_image", **queue)


def _edit_tab(pipe, limits: AppLimits, queue: dict) -> None:
    if pipe is None:
        _no_model("image", "--model")
        return
    f = size_multiple(pipe)
    with gr.Row():
        with gr.Column():
            editor = gr.ImageEditor(type="numpy", image_mode="RGBA", label="Image (paint the area to repaint)",
                                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                    sources=("upload", "clipboard"), elem_id="edit-input")
            mode = gr.Radio(["Inpaint (painted area)", "Outpaint (extend borders)"],
                            value="Inpaint (painted area)", label="Mode")
            with gr.Row():
                pads = [gr.Number(value=v, step=f, precision=0, label=f"Extend {side} (px)")
                        for side, v in (("left", 0), ("right", 2 * f), ("top", 0), ("bottom", 0))]
            prompt = gr.Textbox(label="Prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=0.5, minimum=0)
            with gr.Row():
                steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1, label="Steps")
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            seed, rand = _seed_row("edit")
            run = gr.Button("Edit", variant="primary", elem_id="edit-run")
        with gr.Column():
            image = gr.Image(label="Edited image", type="pil", format="png", elem_id="edit-output")

    def fn(editor, mode, left, right, top, bottom, prompt, gsd, steps, guidance, seed, rand,
           progress=gr.Progress()):
        return edit_image(pipe, limits, editor, mode, left, right, top, bottom, prompt, gsd, steps, guidance,
                          seed, rand, progress)

    run.click(fn, [editor, mode, *pads, prompt, gsd, steps, guidance, seed, rand], [image, seed],
              api_name="edit", **queue)


def _augment_tab(pipe, limits: AppLimits, root: Path, queue: dict) -> None:
    if pipe is None or getattr(pipe, "box_encoder", None) is None:
        gr.Markdown("**No box-conditioned image model is loaded** (start the app with `--augment-model "
                    "FOLDER`, a model trained with `earthgen train image-boxes`).")
        return
    with gr.Row():
        with gr.Column():
            data = gr.File(label="Small detection dataset (.zip: images + DOTA/YOLO/COCO/VOC labels)",
                           file_types=[".zip"], type="filepath", elem_id="aug-data")
            count = gr.Slider(1, limits.max_augment, value=min(8, limits.max_augment), step=1,
                              label="Images to generate", elem_id="aug-count")
            with gr.Row():
                steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1, label="Steps",
                                  elem_id="aug-steps")
                guidance = gr.Slider(0.0, 15.0, value=3.0, step=0.5, label="Guidance scale")
            use_filter = gr.Checkbox(label="Keep only images a detector trained on the data confirms (slower)",
                                     value=False)
            seed, rand = _seed_row("aug")
            run = gr.Button("Augment", variant="primary", elem_id="aug-run")
        with gr.Column():
            gallery = gr.Gallery(label="Synthetic images with their boxes", columns=4, elem_id="aug-gallery")
            out = gr.File(label="Augmented dataset (.zip)", elem_id="aug-zip")
            info = gr.Markdown(elem_id="aug-info")

    def fn(data, count, steps, guidance, use_filter, seed, rand, request: gr.Request,
           progress=gr.Progress(track_tqdm=True)):
        return augment_zip(pipe, limits, session_dir(root, request), data, count, steps, guidance, use_filter,
                           seed, rand)

    run.click(fn, [data, count, steps, guidance, use_filter, seed, rand], [gallery, out, seed, info],
              api_name="augment", **queue)


#: The 3D viewer's first camera: (alpha, beta, radius) of gradio's Model3D (babylon.js's arc-rotate
#: camera on the y-up GLB): 60 degrees round from the default side view, 45 degrees down from the
#: vertical (an oblique view, not one almost level with the ground), radius None = framing the scene.
SCENE_CAMERA = (-60.0, 45.0, None)


def _scene_tab(scene_pipe, limits: AppLimits, root: Path, queue: dict) -> None:
    sources = list(SCENE_SOURCES) if scene_pipe is not None else [SCENE_SOURCES[0]]
    if scene_pipe is None:
        gr.Markdown("**No 3D model is loaded** (start the app with `--scene-model`): this tab shows the exact "
                    "3D of a procedural world tile (sparse voxels + surfels), the kind of scene the model "
                    "generates.")
    with gr.Row():
        with gr.Column():
            source = gr.Radio(sources, value=sources[0], label="Condition", elem_id="scene-source")
            with gr.Row():
                world_seed = gr.Number(label="World seed", value=3, precision=0, minimum=0)
                size_m = gr.Number(value=64, step=16, label=f"Scene size (m, 16..{limits.max_scene_m:g})",
                                   elem_id="scene-size")
            semantic = gr.File(label="Semantic layout: class-id/colour PNG, OSM or GeoJSON (centre of the data)",
                               file_types=LAYOUT_FILE_TYPES, type="filepath", visible=scene_pipe is not None)
            image = gr.Image(label="Aerial image (covers the scene)", type="numpy", visible=scene_pipe is not None)
            with gr.Row(visible=scene_pipe is not None):
                steps = gr.Slider(1, limits.max_steps, value=min(25, limits.max_steps), step=1, label="Steps")
                guidance = gr.Slider(0.0, 15.0, value=3.0, step=0.5, label="Guidance scale")
            seed, rand = _seed_row("scene")
            run = gr.Button("Generate 3D scene", variant="primary", elem_id="scene-run")
        with gr.Column():
            # an oblique start (45 degrees from the vertical, babylon.js's beta), framing the whole scene
            model = gr.Model3D(label="Scene (GLB)", clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="scene-model",
                               camera_position=SCENE_CAMERA)
            render = gr.Image(label="Rendered views (surfels)", type="filepath", elem_id="scene-render")
            files = gr.File(label="Downloads (GLB mesh, Gaussian splats PLY, voxels PLY)", file_count="multiple",
                            elem_id="scene-files")
            info = gr.Markdown(elem_id="scene-info")

    def fn(source, world_seed, size_m, semantic, image, steps, guidance, seed, rand, request: gr.Request,
           progress=gr.Progress()):
        return generate_scene(scene_pipe, limits, session_dir(root, request), source, world_seed, size_m,
                              semantic, image, steps, guidance, seed, rand, progress)

    run.click(fn, [source, world_seed, size_m, semantic, image, steps, guidance, seed, rand],
              [model, render, files, seed, info], api_name="scene", **queue)


def create_demo(image_pipeline=None, scene_pipeline=None, augment_pipeline=None,
                limits: AppLimits | None = None, workdir: str | Path | None = None) -> gr.Blocks:
    """Build the app.

    Args:
        image_pipeline: an :class:`~earthgen.pipelines.image.EarthImagePipeline` (Text, Layout and
            Edit tabs) or None.
        scene_pipeline: an :class:`~earthgen.pipelines.scene.EarthScenePipeline` (3D tab) or None
            (the tab then shows procedural worlds' exact 3D).
        augment_pipeline: a box-conditioned image pipeline (``box_encoder``) for the detection
            augmentation tab, or None (the image pipeline is used when it has box conditioning).
        limits: :class:`AppLimits`. workdir: root of the per-session temporary folders (default a
            fresh temporary folder, deleted at exit).
    """
    limits = limits or AppLimits()
    if workdir is None:
        root = Path(tempfile.mkdtemp(prefix="earthgen-app-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    else:
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
    image_q = {"concurrency_limit": limits.concurrency_limit, "concurrency_id": "image"}
    scene_q = {"concurrency_limit": limits.concurrency_limit, "concurrency_id": "scene"}
    aug_q = {"concurrency_limit": limits.concurrency_limit, "concurrency_id": "augment"}
    with gr.Blocks(title="EarthGen", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# EarthGen\nGenerative Earth imagery and 3D scenes. Images are limited to "
                    f"{limits.max_side} px a side and {limits.max_steps} steps; uploads to "
                    f"{limits.max_upload_mb:g} MB.")
        with gr.Tabs():
            with gr.Tab("Text → Image", id="text"):
                _text_tab(image_pipeline, limits, image_q)
            with gr.Tab("Layout → Image", id="layout"):
                _layout_tab(image_pipeline, limits, image_q)
            with gr.Tab("Edit", id="edit"):
                _edit_tab(image_pipeline, limits, image_q)
            with gr.Tab("Detection augmentation", id="augment"):
                box_pipe = augment_pipeline
                if box_pipe is None and getattr(image_pipeline, "box_encoder", None) is not None:
                    box_pipe = image_pipeline
                _augment_tab(box_pipe, limits, root, image_q if box_pipe is image_pipeline else aug_q)
            with gr.Tab("3D Scene", id="scene"):
                _scene_tab(scene_pipeline, limits, root, scene_q)

        def cleanup(request: gr.Request):
            cleanup_session(root, request)

        demo.unload(cleanup)
        commit_typed_values(demo)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency_limit)
    demo.earthgen_root = root  # where session folders live (tests, launch's allowed_paths)
    demo.earthgen_limits = limits
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           **kwargs):
    """Serve ``demo`` (blocking unless ``prevent_thread_lock=True``) on ``host`` (default
    127.0.0.1: this machine only; Gradio's ``GRADIO_SERVER_NAME`` is not read, only ``host``
    widens it) with the app's upload limit (larger uploads: HTTP 413)."""
    limits: AppLimits = getattr(demo, "earthgen_limits", AppLimits())
    return demo.launch(server_name=host or "127.0.0.1", server_port=port, share=share, ssr_mode=False,
                       max_file_size=upload_bytes(limits), show_error=True,
                       allowed_paths=[str(getattr(demo, "earthgen_root", tempfile.gettempdir()))],
                       footer_links=["gradio", "settings"], **kwargs)
