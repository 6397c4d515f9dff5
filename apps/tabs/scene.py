"""3D Scene: a procedural world tile, a layout, an aerial image or nothing -> a 3D scene (GLB
viewer, rendered views, downloads); without a scene model, the exact 3D of a procedural world."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from apps.common import (
    LAYOUT_FILE_TYPES,
    AppLimits,
    _generator,
    _image_size,
    as_number,
    check_steps,
    check_upload,
    file_path,
    input_errors,
    pick_seed,
    seed_row,
    session_dir,
    steps_slider,
    to_rgb,
    user_errors,
)
from earthgen.inputs import CLASS_MAP_SUFFIXES, read_layout, suffix_of

SCENE_SOURCES = (
    "Procedural world",
    "Semantic layout (class map, OSM or GeoJSON)",
    "Aerial image",
    "Nothing (unconditional)",
)

#: The 3D viewer's first camera: (alpha, beta, radius) of gradio's Model3D (babylon.js's
#: arc-rotate camera on the y-up GLB): 60 degrees round from the default side view, 45 degrees
#: down from the vertical (an oblique view, not one almost level with the ground), radius None =
#: framing the scene.
SCENE_CAMERA = (-60.0, 45.0, None)


def save_scene_files(scene: Any, folder: Path, render_size: int = 256) -> dict[str, str]:
    """Write a scene with :func:`earthgen.export3d.save_scene` (GLB, PLYs, rendered views);
    returns its paths. ``scene``: an :class:`earthgen.pipelines.scene.EarthSceneOutput`
    (``colors``, ``surfels``) or an :class:`earthgen.world.scene3d.Scene3D` (``color``,
    ``reference``)."""
    from earthgen.export3d import save_scene

    colors = scene.colors if hasattr(scene, "colors") else scene.color
    surfels = scene.surfels if hasattr(scene, "surfels") else scene.reference
    if not len(scene.coords):
        raise gr.Error(
            "the model generated an empty scene (no voxels); try another seed or more steps",
            print_exception=False,
        )
    return save_scene(
        folder,
        scene.coords,
        scene.voxel_size,
        scene.origin,
        colors,
        surfels,
        semantic=getattr(scene, "semantic", None),
        image_size=render_size,
        views=4,
    )


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


def generate_scene(
    scene_pipe,
    limits: AppLimits,
    folder: Path,
    source: str,
    world_seed: Any,
    size_m: Any,
    semantic_file: Any,
    image: Any,
    steps: Any,
    guidance: Any,
    seed: Any,
    randomize: bool,
    progress: Any = None,
):
    """A 3D scene -> ``(GLB path, render PNG path, [download paths], seed used, description)``.

    ``source`` (one of :data:`SCENE_SOURCES`) gives the condition: a procedural world tile's
    semantic map, an uploaded class-id PNG, an aerial image, or nothing; ``size_m`` is the
    scene's side in metres (the map's width covers it). Without a scene model only the procedural
    world is offered, and its exact 3D (:func:`earthgen.world.scene3d.world_scene`) is shown."""
    size = as_number(size_m, float, f"scene size must be a number of metres, got {size_m!r}")
    if not 16 <= size <= limits.max_scene_m:
        raise gr.Error(
            f"scene size must be in 16..{limits.max_scene_m:g} metres, got {size:g}",
            print_exception=False,
        )
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
            raise gr.Error(
                "upload a semantic layout: a class-id/colour PNG, OSM or GeoJSON file",
                print_exception=False,
            )
        if suffix_of(path, CLASS_MAP_SUFFIXES):  # used whole: its width spans the scene
            shape = _image_size(path)
            if shape is not None and max(shape) > limits.max_side:
                raise gr.Error(
                    f"the layout is {shape[0]}x{shape[1]} px; layouts are limited to "
                    f"{limits.max_side} pixels a side here",
                    print_exception=False,
                )
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
            raise gr.Error(
                f"images are limited to {limits.max_side} pixels a side", print_exception=False
            )
        what = f"image {img.shape[1]}x{img.shape[0]}, {size:g} m"
    elif source == SCENE_SOURCES[3]:
        what = f"unconditional, {size:g} m"
    else:
        raise gr.Error(f"unknown condition {source!r}", print_exception=False)
    if scene_pipe is None:
        if tile is None:
            raise gr.Error(
                "no 3D model is loaded (start the app with --scene-model); only the "
                "procedural world is available",
                print_exception=False,
            )
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
            scene = scene_pipe(
                semantic=semantic,
                image=img,
                overlap_m=min(16.0, window_m / 4),
                num_inference_steps=n,
                guidance_scale=float(guidance),
                generator=_generator(s),
                callback_on_step_end=_scene_progress(progress, n),
                **kw,
            )
    if progress is not None:
        progress(0.7, desc="meshing and rendering")
    with user_errors():
        paths = save_scene_files(scene, out_dir, limits.scene_render_size)
    files = [paths[k] for k in ("glb", "gaussians", "voxels", "mesh_ply") if k in paths]
    return paths["glb"], paths.get("render"), files, s, f"{what}: {len(scene.coords)} voxels"


def build(scene_pipe, limits: AppLimits, root: Path, queue: dict) -> None:
    """The tab's components and its ``scene`` event; without ``scene_pipe`` only the procedural
    world is offered. ``root``: the session folders' root."""
    sources = list(SCENE_SOURCES) if scene_pipe is not None else [SCENE_SOURCES[0]]
    if scene_pipe is None:
        gr.Markdown(
            "**No 3D model is loaded** (start the app with `--scene-model`): this tab "
            "shows the exact 3D of a procedural world tile (sparse voxels + surfels), the "
            "kind of scene the model generates."
        )
    with gr.Row():
        with gr.Column():
            source = gr.Radio(sources, value=sources[0], label="Condition", elem_id="scene-source")
            with gr.Row():
                world_seed = gr.Number(label="World seed", value=3, precision=0, minimum=0)
                size_m = gr.Number(
                    value=64,
                    step=16,
                    label=f"Scene size (m, 16..{limits.max_scene_m:g})",
                    elem_id="scene-size",
                )
            semantic = gr.File(
                label="Semantic layout: class-id/colour PNG, OSM or GeoJSON (centre of the data)",
                file_types=LAYOUT_FILE_TYPES,
                type="filepath",
                visible=scene_pipe is not None,
            )
            image = gr.Image(
                label="Aerial image (covers the scene)",
                type="numpy",
                visible=scene_pipe is not None,
            )
            with gr.Row(visible=scene_pipe is not None):
                steps = steps_slider(limits, value=25)
                guidance = gr.Slider(0.0, 15.0, value=3.0, step=0.5, label="Guidance scale")
            seed, rand = seed_row("scene")
            run = gr.Button("Generate 3D scene", variant="primary", elem_id="scene-run")
        with gr.Column():
            # an oblique start (45 degrees from the vertical, babylon.js's beta), framing the
            # whole scene
            model = gr.Model3D(
                label="Scene (GLB)",
                clear_color=(1.0, 1.0, 1.0, 1.0),
                elem_id="scene-model",
                camera_position=SCENE_CAMERA,
            )
            render = gr.Image(
                label="Rendered views (surfels)", type="filepath", elem_id="scene-render"
            )
            files = gr.File(
                label="Downloads (GLB mesh, Gaussian splats PLY, voxels PLY)",
                file_count="multiple",
                elem_id="scene-files",
            )
            info = gr.Markdown(elem_id="scene-info")

    def fn(
        source,
        world_seed,
        size_m,
        semantic,
        image,
        steps,
        guidance,
        seed,
        rand,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        return generate_scene(
            scene_pipe,
            limits,
            session_dir(root, request),
            source,
            world_seed,
            size_m,
            semantic,
            image,
            steps,
            guidance,
            seed,
            rand,
            progress,
        )

    run.click(
        fn,
        [source, world_seed, size_m, semantic, image, steps, guidance, seed, rand],
        [model, render, files, seed, info],
        api_name="scene",
        **queue,
    )
