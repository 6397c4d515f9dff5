"""Layout -> Image: an OpenStreetMap, GeoJSON or class-map upload, or a drawing, (+ text, GSD)
-> one image, rendered to a prior and refined (:mod:`earthgen.prior`)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from apps.common import (
    LAYOUT_FILE_TYPES,
    AppLimits,
    _check_wh,
    _generator,
    check_gsd,
    check_size,
    check_steps,
    default_size,
    load_layout,
    no_model,
    pick_seed,
    seed_row,
    size_multiple,
    size_row,
    step_progress,
    steps_slider,
    user_errors,
)
from earthgen.classes import CLASSES, colorize
from earthgen.prior import DEFAULT_STRENGTH, layout_prior_inputs


def preview_layout(
    limits: AppLimits,
    file: Any,
    drawn: Any,
    center: str,
    gsd: Any,
    width: Any,
    height: Any,
    multiple: int = 8,
) -> tuple[np.ndarray, str]:
    """The colourized layout ``[H, W, 3]`` that generation will use, and a one-line
    description."""
    w, h = _check_wh(width, height, multiple, limits)
    ids, g, what = load_layout(file, drawn, center, check_gsd(gsd), w, h, limits)
    return colorize(ids), _describe(ids, g, what)


def layout_to_image(
    pipe,
    limits: AppLimits,
    file: Any,
    drawn: Any,
    center: str,
    prompt: str,
    gsd: Any,
    width: Any,
    height: Any,
    layout_scale: Any,
    roads_scale: Any,
    steps: Any,
    guidance: Any,
    seed: Any,
    randomize: bool,
    progress: Any = None,
    strength: Any = DEFAULT_STRENGTH,
) -> tuple[np.ndarray, Image.Image, int, str]:
    """Layout (+ text, GSD) -> ``(layout preview [H, W, 3], image, seed used, description)``.

    Render, then refine: the layout is rendered to an RGB prior (:mod:`earthgen.prior`), noised
    to ``strength`` and denoised (1 = from pure noise, no prior)."""
    w, h = check_size(width, height, pipe, limits)
    n = check_steps(steps, limits)
    if not pipe.takes_layout:
        raise gr.Error(
            "this model takes no layout; use the Text -> Image tab", print_exception=False
        )
    ids, g, what = load_layout(file, drawn, center, check_gsd(gsd), w, h, limits)
    s = pick_seed(seed, randomize)
    scales = {"layout": float(layout_scale), "roads": float(roads_scale)}
    with user_errors():
        prior_kw = layout_prior_inputs(ids, g, s, strength, size=(w, h))
        out = pipe(
            prompt=prompt or "",
            gsd=g,
            layout=ids,
            control_scales=scales,
            height=h,
            width=w,
            **prior_kw,
            num_inference_steps=n,
            guidance_scale=float(guidance),
            generator=_generator(s),
            output_type="pil",
            callback_on_step_end=step_progress(progress, n, "denoising"),
        )
    return colorize(ids), out.images[0], s, _describe(ids, g, what)


def _describe(ids: np.ndarray, gsd: float | None, what: str) -> str:
    frac = np.bincount(ids.ravel(), minlength=len(CLASSES)) / ids.size
    top = ", ".join(
        f"{CLASSES[i].name} {frac[i]:.0%}" for i in np.argsort(-frac)[:4] if frac[i] > 0
    )
    g = f", {gsd:g} m/px" if gsd else ""
    return f"{what}: {ids.shape[1]}x{ids.shape[0]} px{g}; {top}"


def _hex(c) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def build(pipe, limits: AppLimits, queue: dict) -> None:
    """The tab's components, its ``preview_layout`` event and its ``layout_to_image`` event
    (``queue``: the concurrency group)."""
    if pipe is None:
        no_model("image", "--model")
        return
    if not pipe.takes_layout:
        gr.Markdown("**This image model takes no layout**; use the Text -> Image tab.")
        return
    # per-map scales exist for a control branch; a layout at the UNet input follows the guidance
    # scale
    names = set(pipe.controlnet.condition_names) if pipe.controlnet is not None else set()
    f = size_multiple(pipe)
    colors = [_hex(c.color) for c in CLASSES]
    legend = " ".join(
        f"<span style='background:{_hex(c.color)};padding:0 6px'>&nbsp;</span> {c.name}"
        for c in CLASSES
    )
    with gr.Row():
        with gr.Column():
            file = gr.File(
                label="Layout: OpenStreetMap (.osm/.pbf/.osm.bz2/.osm.gz), GeoJSON or "
                "class-id/colour PNG",
                file_types=LAYOUT_FILE_TYPES,
                type="filepath",
                elem_id="l2i-file",
            )
            center = gr.Textbox(
                label="Centre 'lat,lon' (OSM/GeoJSON; empty = centre of the data)", value=""
            )
            with gr.Accordion("...or draw a layout (brush colours = classes)", open=False):
                gr.HTML(f"<div style='font-size:smaller'>{legend}</div>")
                canvas = default_size(pipe)
                blank = np.zeros((canvas, canvas, 3), np.uint8)
                drawn = gr.ImageEditor(
                    value={"background": blank, "layers": [], "composite": None},
                    type="numpy",
                    image_mode="RGBA",
                    label="Draw",
                    canvas_size=(canvas, canvas),
                    brush=gr.Brush(colors=colors, default_color=colors[1], color_mode="fixed"),
                    sources=("upload",),
                    elem_id="l2i-draw",
                )
            prompt = gr.Textbox(label="Prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=1.0, minimum=0)
            width, height = size_row(pipe, limits, "l2i")
            with gr.Row():
                ls = gr.Slider(
                    0.0, 2.0, value=1.0, step=0.05, label="Layout scale", visible="layout" in names
                )
                rs = gr.Slider(
                    0.0, 2.0, value=1.0, step=0.05, label="Roads scale", visible="roads" in names
                )
            with gr.Row():
                steps = steps_slider(limits)
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            strength = gr.Slider(
                0.05,
                1.0,
                value=DEFAULT_STRENGTH,
                step=0.05,
                elem_id="l2i-strength",
                label="Strength (the layout rendered to a prior, then refined; 1 = pure noise)",
            )
            seed, rand = seed_row("l2i")
            with gr.Row():
                prev = gr.Button("Preview layout", elem_id="l2i-preview")
                run = gr.Button("Generate", variant="primary", elem_id="l2i-run")
        with gr.Column():
            preview = gr.Image(
                label="Rasterized layout", type="numpy", format="png", elem_id="l2i-layout"
            )
            info = gr.Markdown()
            image = gr.Image(
                label="Generated image", type="pil", format="png", elem_id="l2i-output"
            )

    def fn_prev(file, drawn, center, gsd, width, height):
        return preview_layout(limits, file, drawn, center, gsd, width, height, f)

    def fn(
        file,
        drawn,
        center,
        prompt,
        gsd,
        width,
        height,
        ls,
        rs,
        steps,
        guidance,
        strength,
        seed,
        rand,
        progress=gr.Progress(),
    ):
        return layout_to_image(
            pipe,
            limits,
            file,
            drawn,
            center,
            prompt,
            gsd,
            width,
            height,
            ls,
            rs,
            steps,
            guidance,
            seed,
            rand,
            progress,
            strength,
        )

    prev.click(
        fn_prev,
        [file, drawn, center, gsd, width, height],
        [preview, info],
        api_name="preview_layout",
    )
    run.click(
        fn,
        [
            file,
            drawn,
            center,
            prompt,
            gsd,
            width,
            height,
            ls,
            rs,
            steps,
            guidance,
            strength,
            seed,
            rand,
        ],
        [preview, image, seed, info],
        api_name="layout_to_image",
        **queue,
    )
