"""Edit: inpaint the painted area of an image, or outpaint (extend its borders)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from apps.common import (
    AppLimits,
    _generator,
    check_gsd,
    check_steps,
    fit_image,
    no_model,
    pick_seed,
    seed_row,
    size_multiple,
    step_progress,
    steps_slider,
    to_rgb,
    user_errors,
)


def edit_image(
    pipe,
    limits: AppLimits,
    editor: Any,
    mode: str,
    left: Any,
    right: Any,
    top: Any,
    bottom: Any,
    prompt: str,
    gsd: Any,
    steps: Any,
    guidance: Any,
    seed: Any,
    randomize: bool,
    progress: Any = None,
) -> tuple[Image.Image, int]:
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
            raise gr.Error(
                "outpainting needs a border > 0 pixels on at least one side", print_exception=False
            )
        rgb, _ = fit_image(rgb, None, f, limits.max_side)
        with user_errors():
            image, mask, _ = outpaint_canvas(rgb, *pads, multiple=f)
        if max(image.shape[:2]) > limits.max_side:
            raise gr.Error(
                f"the outpainted canvas would be {image.shape[1]}x{image.shape[0]}; "
                f"the limit is {limits.max_side} pixels a side",
                print_exception=False,
            )
    else:
        layers = (editor.get("layers") or []) if isinstance(editor, dict) else []
        painted = np.zeros(rgb.shape[:2], bool)
        for la in layers:
            a = np.asarray(la)
            if a.ndim == 3 and a.shape[-1] == 4 and a.shape[:2] == painted.shape:
                painted |= a[..., 3] > 0
        if not painted.any():
            raise gr.Error(
                "paint the area to repaint on the image (brush tool) first", print_exception=False
            )
        image, m = fit_image(rgb, painted, f, limits.max_side)
        mask = m.astype(np.float32)
    s = pick_seed(seed, randomize)
    with user_errors():
        out = pipe(
            prompt=prompt or "",
            gsd=check_gsd(gsd),
            image=Image.fromarray(image),
            mask=mask,
            strength=1.0,
            height=image.shape[0],
            width=image.shape[1],
            num_inference_steps=n,
            guidance_scale=float(guidance),
            generator=_generator(s),
            output_type="pil",
            callback_on_step_end=step_progress(progress, n, "denoising"),
        )
    return out.images[0], s


def build(pipe, limits: AppLimits, queue: dict) -> None:
    """The tab's components and its ``edit`` event (``queue``: the concurrency group)."""
    if pipe is None:
        no_model("image", "--model")
        return
    f = size_multiple(pipe)
    with gr.Row():
        with gr.Column():
            editor = gr.ImageEditor(
                type="numpy",
                image_mode="RGBA",
                label="Image (paint the area to repaint)",
                brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                sources=("upload", "clipboard"),
                elem_id="edit-input",
            )
            mode = gr.Radio(
                ["Inpaint (painted area)", "Outpaint (extend borders)"],
                value="Inpaint (painted area)",
                label="Mode",
            )
            with gr.Row():
                pads = [
                    gr.Number(value=v, step=f, precision=0, label=f"Extend {side} (px)")
                    for side, v in (("left", 0), ("right", 2 * f), ("top", 0), ("bottom", 0))
                ]
            prompt = gr.Textbox(label="Prompt", value="", max_length=500)
            gsd = gr.Number(label="GSD (metres/pixel, 0 = not given)", value=0.5, minimum=0)
            with gr.Row():
                steps = steps_slider(limits)
                guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
            seed, rand = seed_row("edit")
            run = gr.Button("Edit", variant="primary", elem_id="edit-run")
        with gr.Column():
            image = gr.Image(label="Edited image", type="pil", format="png", elem_id="edit-output")

    def fn(
        editor,
        mode,
        left,
        right,
        top,
        bottom,
        prompt,
        gsd,
        steps,
        guidance,
        seed,
        rand,
        progress=gr.Progress(),
    ):
        return edit_image(
            pipe,
            limits,
            editor,
            mode,
            left,
            right,
            top,
            bottom,
            prompt,
            gsd,
            steps,
            guidance,
            seed,
            rand,
            progress,
        )

    run.click(
        fn,
        [editor, mode, *pads, prompt, gsd, steps, guidance, seed, rand],
        [image, seed],
        api_name="edit",
        **queue,
    )
