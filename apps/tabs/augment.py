"""Detection augmentation: a small detection dataset (``.zip``) -> the dataset plus
box-conditioned synthetic images (:func:`earthgen.augment.augment_dataset`)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from apps.common import (
    AppLimits,
    as_number,
    check_steps,
    check_upload,
    file_path,
    pick_seed,
    seed_row,
    session_dir,
    steps_slider,
    upload_bytes,
    user_errors,
)
from earthgen.classes import PALETTE


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
        infos = [
            i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
        ]
        if not infos:
            raise gr.Error("the .zip file is empty", print_exception=False)
        if len(infos) > max_files:
            raise gr.Error(
                f"the .zip holds {len(infos)} files; the limit is {max_files}",
                print_exception=False,
            )
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise gr.Error(
                f"the .zip unpacks to {total / 2**20:.0f} MB; the limit is "
                f"{max_bytes / 2**20:.0f} MB",
                print_exception=False,
            )
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


def augment_zip(
    pipe,
    limits: AppLimits,
    folder: Path,
    data: Any,
    count: Any,
    steps: Any,
    guidance: Any,
    use_filter: bool,
    seed: Any,
    randomize: bool,
):
    """A detection dataset (``.zip`` of images + DOTA/YOLO/COCO/VOC/CSV labels) -> the dataset
    plus ``count`` box-conditioned synthetic images (:func:`earthgen.augment.augment_dataset`).

    Returns ``(previews [(image [H, W, 3], caption)], zip path, seed used, summary)``; previews
    are the synthetic images kept, their boxes drawn."""
    if getattr(pipe, "box_encoder", None) is None:
        raise gr.Error(
            "this image model has no box conditioning; start the app with --augment-model",
            print_exception=False,
        )
    path = check_upload(file_path(data), limits, "dataset .zip")
    if not path:
        raise gr.Error(
            "upload a .zip of a detection dataset (images + labels)", print_exception=False
        )
    n = as_number(count, int, f"the number of images must be a whole number, got {count!r}")
    if not 1 <= n <= limits.max_augment:
        raise gr.Error(
            f"generate 1..{limits.max_augment} images at a time, got {n}", print_exception=False
        )
    k = check_steps(steps, limits)
    s = pick_seed(seed, randomize)
    from earthgen.augment import AugmentConfig, augment_dataset
    from earthgen.data import read_detection_dataset

    work = folder / f"augment_{s}_{random.randint(0, 10**9)}"
    src = extract_zip(path, work / "input", 10 * upload_bytes(limits))
    out = work / "augmented"
    cfg = AugmentConfig(
        n=n, seed=s, steps=k, guidance_scale=float(guidance), filter=bool(use_filter)
    )
    with user_errors():
        summary = augment_dataset(src, out, pipe, cfg, progress=True)
        items = read_detection_dataset(out, summary["format"])
    synthetic = [it for it in items if it.image.name.startswith("synthetic_")]
    previews = [
        (draw_boxes(it.image, it.boxes), f"{it.image.name}: {len(it.boxes)} boxes")
        for it in synthetic
    ]
    archive = shutil.make_archive(str(work / f"augmented_{s}"), "zip", out)
    if cfg.filter:
        kept = f"{summary['kept']} of {summary['generated']} kept by the detector filter"
    else:
        kept = f"{summary['generated']} generated (no filter)"
    text = (
        f"{summary['real_images']} real images ({summary['source_format']}), {kept}; "
        f"classes: {', '.join(summary['classes'])}; written as {summary['format']}"
    )
    return previews, archive, s, text


def build(pipe, limits: AppLimits, root: Path, queue: dict) -> None:
    """The tab's components and its ``augment`` event; ``pipe`` must have box conditioning
    (``box_encoder``), else the tab shows a note. ``root``: the session folders' root."""
    if pipe is None or getattr(pipe, "box_encoder", None) is None:
        gr.Markdown(
            "**No box-conditioned image model is loaded** (start the app with "
            "`--augment-model FOLDER`, a model trained with `earthgen train "
            "image-boxes`)."
        )
        return
    with gr.Row():
        with gr.Column():
            data = gr.File(
                label="Small detection dataset (.zip: images + DOTA/YOLO/COCO/VOC labels)",
                file_types=[".zip"],
                type="filepath",
                elem_id="aug-data",
            )
            count = gr.Slider(
                1,
                limits.max_augment,
                value=min(8, limits.max_augment),
                step=1,
                label="Images to generate",
                elem_id="aug-count",
            )
            with gr.Row():
                steps = steps_slider(limits, elem_id="aug-steps")
                guidance = gr.Slider(0.0, 15.0, value=3.0, step=0.5, label="Guidance scale")
            use_filter = gr.Checkbox(
                label="Keep only images a detector trained on the data confirms (slower)",
                value=False,
            )
            seed, rand = seed_row("aug")
            run = gr.Button("Augment", variant="primary", elem_id="aug-run")
        with gr.Column():
            gallery = gr.Gallery(
                label="Synthetic images with their boxes", columns=4, elem_id="aug-gallery"
            )
            out = gr.File(label="Augmented dataset (.zip)", elem_id="aug-zip")
            info = gr.Markdown(elem_id="aug-info")

    def fn(
        data,
        count,
        steps,
        guidance,
        use_filter,
        seed,
        rand,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),
    ):
        return augment_zip(
            pipe,
            limits,
            session_dir(root, request),
            data,
            count,
            steps,
            guidance,
            use_filter,
            seed,
            rand,
        )

    run.click(
        fn,
        [data, count, steps, guidance, use_filter, seed, rand],
        [gallery, out, seed, info],
        api_name="augment",
        **queue,
    )
