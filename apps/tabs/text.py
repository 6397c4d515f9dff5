"""Text -> Image: a prompt (+ GSD, + location for models with location metadata) -> one image."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from apps.common import (
    AppLimits,
    _generator,
    as_number,
    check_gsd,
    check_size,
    check_steps,
    no_model,
    parse_latlon,
    pick_seed,
    seed_row,
    size_row,
    step_progress,
    steps_slider,
    user_errors,
)


def text_to_image(
    pipe,
    limits: AppLimits,
    prompt: str,
    negative_prompt: str,
    gsd: Any,
    width: Any,
    height: Any,
    steps: Any,
    guidance: Any,
    seed: Any,
    randomize: bool,
    progress: Any = None,
    location: str = "",
    metadata_guidance: Any = 0.0,
) -> tuple[Image.Image, int]:
    """Text (+ GSD in metres/pixel, + location ``"lat,lon"`` for models with location metadata)
    -> one image; returns ``(image, seed used)``. ``metadata_guidance`` > 0: a separate guidance
    scale for the metadata alone (the pipeline's ``metadata_guidance_scale``); 0: guided with
    the text."""
    w, h = check_size(width, height, pipe, limits)
    n = check_steps(steps, limits)
    loc = parse_latlon(location, "location")
    s = pick_seed(seed, randomize)
    meta = {"lat": loc[0], "lon": loc[1]} if loc else None
    mg = as_number(
        metadata_guidance or 0.0,
        float,
        f"metadata guidance must be a number, got {metadata_guidance!r}",
    )
    if not 0.0 <= mg <= 30.0:
        raise gr.Error(f"metadata guidance must be in 0..30, got {mg:g}", print_exception=False)
    g = check_gsd(gsd)
    if mg > 0 and g is None and meta is None:
        raise gr.Error(
            "metadata guidance needs a GSD or a location to guide", print_exception=False
        )
    with user_errors():
        out = pipe(
            prompt=prompt or "",
            negative_prompt=negative_prompt or None,
            gsd=g,
            metadata=meta,
            height=h,
            width=w,
            num_inference_steps=n,
            guidance_scale=float(guidance),
            metadata_guidance_scale=mg if mg > 0 else None,
            generator=_generator(s),
            output_type="pil",
            callback_on_step_end=step_progress(progress, n, "denoising"),
        )
    return out.images[0], s


def build(pipe, limits: AppLimits, queue: dict) -> None:
    """The tab's components and its ``text_to_image`` event (``queue``: the concurrency group)."""
    if pipe is None:
        no_model("image", "--model")
        return
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(
                label="Prompt",
                value="dense residential area with trees",
                elem_id="t2i-prompt",
                max_length=500,
            )
            negative = gr.Textbox(label="Negative prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=0.5, minimum=0)
            enc = getattr(pipe, "metadata_encoder", None)
            location = gr.Textbox(
                label="Location 'lat,lon' (degrees; empty = not given)",
                value="",
                visible=enc is not None and "lat" in tuple(enc.config.fields),
            )
            width, height = size_row(pipe, limits, "t2i")
            with gr.Row():
                steps = steps_slider(limits, elem_id="t2i-steps")
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            takes_meta = enc is not None or bool(pipe.unet.config.get("num_class_embeds"))
            meta_guidance = gr.Slider(
                0.0,
                15.0,
                value=0.0,
                step=0.5,
                visible=takes_meta,
                label="Metadata guidance (GSD, location; 0 = together with the text)",
            )
            seed, rand = seed_row("t2i")
            run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
        with gr.Column():
            image = gr.Image(
                label="Generated image", type="pil", format="png", elem_id="t2i-output"
            )

    def fn(
        prompt,
        negative,
        gsd,
        location,
        width,
        height,
        steps,
        guidance,
        meta_guidance,
        seed,
        rand,
        progress=gr.Progress(),
    ):
        return text_to_image(
            pipe,
            limits,
            prompt,
            negative,
            gsd,
            width,
            height,
            steps,
            guidance,
            seed,
            rand,
            progress,
            location,
            meta_guidance,
        )

    inputs = [
        prompt,
        negative,
        gsd,
        location,
        width,
        height,
        steps,
        guidance,
        meta_guidance,
        seed,
        rand,
    ]
    run.click(fn, inputs, [image, seed], api_name="text_to_image", **queue)
