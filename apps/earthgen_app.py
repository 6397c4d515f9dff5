"""The EarthGen Gradio app (``earthgen app``): text -> image, layout -> image, inpaint/outpaint,
detection augmentation and 3D scenes in the browser.

The page: :func:`create_demo` builds the :class:`gradio.Blocks` from already-loaded pipelines
(one per tab; ``None`` = the tab shows a note instead of controls), :func:`launch` serves it and
:func:`main` is ``earthgen app`` (weights load there, in :mod:`earthgen.commands.app`, never in
:func:`create_demo`). Each tab is a module of :mod:`apps.tabs` (``text``, ``layout``, ``edit``,
``augment``, ``scene``) holding its handlers, module-level functions that turn UI values into one
pipeline call, so tests call them directly, and its ``build`` function; helpers several tabs share
live in :mod:`apps.common`. User mistakes raise :class:`gradio.Error` (a message in the page, no
stack trace). Every name the tests and the CLI use is importable from here.

Serving rules: the server listens on 127.0.0.1 unless :func:`launch` is given another host; every
model call goes through one queue per pipeline (``concurrency_limit``, default 1: a diffusers
pipeline keeps per-call state in its scheduler), waiting jobs are bounded (``queue_size``: one
more is refused), images are limited to ``max_side`` pixels (a larger size is an error naming the
limit, never a clamp), steps to ``max_steps``, uploads to ``max_upload_mb`` (HTTP 413 from the
server, a gr.Error in a handler); files a session writes live in its own temporary folder,
deleted when the browser tab closes (and the whole root when the process exits). Layout files are
read by the CLI's loader (:func:`earthgen.inputs.read_layout`). Typed numbers are committed to the
page's state as they are typed (:func:`commit_typed_values`), so a Run click right after typing
uses them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from apps.common import (
    LAYOUT_FILE_TYPES,
    MAX_SEED,
    AppLimits,
    check_gsd,
    check_size,
    check_steps,
    check_upload,
    cleanup_session,
    default_size,
    drawn_layout,
    file_path,
    fit_image,
    input_errors,
    load_layout,
    palette_ids,
    parse_latlon,
    pick_seed,
    resize_ids,
    session_dir,
    size_multiple,
    step_progress,
    to_rgb,
    upload_bytes,
    user_errors,
)
from apps.tabs import augment, edit, layout, scene, text
from apps.tabs.augment import augment_zip, draw_boxes, extract_zip
from apps.tabs.edit import edit_image
from apps.tabs.layout import layout_to_image, preview_layout
from apps.tabs.scene import SCENE_CAMERA, SCENE_SOURCES, generate_scene, save_scene_files
from apps.tabs.text import text_to_image

__all__ = [
    "COMMIT_JS",
    "LAYOUT_FILE_TYPES",
    "LOCAL_HOSTS",
    "MAX_SEED",
    "SCENE_CAMERA",
    "SCENE_SOURCES",
    "AppLimits",
    "augment_zip",
    "check_gsd",
    "check_size",
    "check_steps",
    "check_upload",
    "cleanup_session",
    "commit_typed_values",
    "create_demo",
    "default_size",
    "draw_boxes",
    "drawn_layout",
    "edit_image",
    "extract_zip",
    "file_path",
    "fit_image",
    "generate_scene",
    "input_errors",
    "launch",
    "layout_to_image",
    "load_layout",
    "main",
    "palette_ids",
    "parse_latlon",
    "pick_seed",
    "preview_layout",
    "resize_ids",
    "save_scene_files",
    "session_dir",
    "size_multiple",
    "step_progress",
    "text_to_image",
    "to_rgb",
    "upload_bytes",
    "user_errors",
]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

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
            block.input(
                None,
                block,
                block,
                js=COMMIT_JS,
                queue=False,
                show_progress="hidden",
                api_visibility="private",
            )
            n += 1
    return n


def create_demo(
    image_pipeline=None,
    scene_pipeline=None,
    augment_pipeline=None,
    limits: AppLimits | None = None,
    workdir: str | Path | None = None,
) -> gr.Blocks:
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
        gr.Markdown(
            "# EarthGen\nGenerative Earth imagery and 3D scenes. Images are limited to "
            f"{limits.max_side} px a side and {limits.max_steps} steps; uploads to "
            f"{limits.max_upload_mb:g} MB."
        )
        with gr.Tabs():
            with gr.Tab("Text → Image", id="text"):
                text.build(image_pipeline, limits, image_q)
            with gr.Tab("Layout → Image", id="layout"):
                layout.build(image_pipeline, limits, image_q)
            with gr.Tab("Edit", id="edit"):
                edit.build(image_pipeline, limits, image_q)
            with gr.Tab("Detection augmentation", id="augment"):
                box_pipe = augment_pipeline
                if box_pipe is None and getattr(image_pipeline, "box_encoder", None) is not None:
                    box_pipe = image_pipeline
                augment.build(
                    box_pipe, limits, root, image_q if box_pipe is image_pipeline else aug_q
                )
            with gr.Tab("3D Scene", id="scene"):
                scene.build(scene_pipeline, limits, root, scene_q)

        def cleanup(request: gr.Request):
            cleanup_session(root, request)

        demo.unload(cleanup)
        commit_typed_values(demo)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency_limit)
    demo.earthgen_root = root  # where session folders live (tests, launch's allowed_paths)
    demo.earthgen_limits = limits
    return demo


def launch(
    demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs
):
    """Serve ``demo`` (blocking unless ``prevent_thread_lock=True``) on ``host`` (default
    127.0.0.1: this machine only; Gradio's ``GRADIO_SERVER_NAME`` is not read, only ``host``
    widens it) with the app's upload limit (larger uploads: HTTP 413)."""
    limits: AppLimits = getattr(demo, "earthgen_limits", AppLimits())
    return demo.launch(
        server_name=host or "127.0.0.1",
        server_port=port,
        share=share,
        ssr_mode=False,
        max_file_size=upload_bytes(limits),
        show_error=True,
        allowed_paths=[str(getattr(demo, "earthgen_root", tempfile.gettempdir()))],
        footer_links=["gradio", "settings"],
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """``earthgen app [ARGS]`` (``python -m apps.earthgen_app [ARGS]``): load the models named by
    the arguments (:func:`earthgen.commands.app.load_models`), build the page and serve it."""
    import sys

    from earthgen.cli import main as cli

    return cli(["app", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
