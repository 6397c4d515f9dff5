"""``earthgen eval image``: how well generated images follow their conditions.

Held-out procedural tiles give (layout, caption, GSD, scene, real image). The pipeline generates
an image from each tile's conditions, and the evaluator network (:class:`TileNet`) measures:

- ``control_miou``: mIoU of the evaluator's segmentation of the generated image against the
  input layout (``real_miou``, the same on the real tiles, is the evaluator's own ceiling);
- ``gsd_abs_log10_error``: mean |predicted - requested| log10 GSD (resolution fidelity);
- ``cls_oa``: share of generated images classified as the scene their source tile shows;
- ``fid_tilenet``, ``kid_tilenet``: FID/KID between generated and real images in TileNet's
  feature space (not comparable with Inception FID).
"""

from __future__ import annotations

import numpy as np
import torch

from earthgen.classes import NUM_CLASSES
from earthgen.metrics import fid_from_features, kid_from_features, miou


@torch.no_grad()
def evaluate_image(
    pipe,
    evaluator,
    n: int = 32,
    resolution: int | None = None,
    steps: int = 30,
    guidance_scale: float = 5.0,
    batch_size: int = 4,
    seed: int = 99_000,
    use_layout: bool = True,
    progress: bool = True,
    control_end: float | None = None,
) -> dict:
    """Generate ``n`` images from held-out world conditions and score them (see module docstring).
    ``control_end``: the pipeline's ``control_guidance_end`` (None: the model's default)."""
    from tqdm import tqdm

    from earthgen.datasets import world_batch

    res = resolution or int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    dev = pipe._execution_device
    evaluator = evaluator.to(dev).eval()
    maps_given = use_layout and pipe.takes_layout
    if control_end is None:  # the pipeline's own default, recorded below
        control_end = pipe.default_control_guidance_end(with_maps=maps_given)
    gen_seg, real_seg, layouts, scenes, gen_scene, gsd_err = [], [], [], [], [], []
    f_gen, f_real = [], []
    for i in tqdm(range(0, n, batch_size), desc="eval image", disable=not progress):
        b = world_batch(seed, i, min(batch_size, n - i), res)
        out = pipe(
            prompt=b["caption"],
            gsd=b["gsd"].tolist() if pipe.metadata_encoder is not None else None,
            layout=b["semantic"] if maps_given else None,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="pt",
            control_guidance_end=control_end,
            generator=torch.Generator().manual_seed(seed + i),
        ).images
        eg, er = evaluator(out.to(dev)), evaluator(b["image"].to(dev))
        gen_seg.append(eg["segmentation"].argmax(1).cpu().numpy())
        real_seg.append(er["segmentation"].argmax(1).cpu().numpy())
        layouts.append(b["semantic"].numpy())
        scenes.append(b["scene"].numpy())
        gen_scene.append(eg["scene"].argmax(1).cpu().numpy())
        gsd_err.append(np.abs(eg["log_gsd"].cpu().numpy() - np.log10(b["gsd"].numpy())))
        f_gen.append(eg["features"].cpu().numpy())
        f_real.append(er["features"].cpu().numpy())
    lay = np.concatenate(layouts)
    fg, fr = np.concatenate(f_gen), np.concatenate(f_real)
    kid = kid_from_features(fg, fr, subsets=10, subset_size=min(50, len(fg)))
    return {
        "n": int(len(lay)),
        "resolution_px": res,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "control_guidance_end": float(control_end),
        "control_miou": miou(np.concatenate(gen_seg), lay, NUM_CLASSES)["miou"],
        "real_miou": miou(np.concatenate(real_seg), lay, NUM_CLASSES)["miou"],
        "gsd_abs_log10_error": float(np.concatenate(gsd_err).mean()),
        "cls_oa": float((np.concatenate(gen_scene) == np.concatenate(scenes)).mean()),
        "fid_tilenet": fid_from_features(fg, fr) if len(fg) > 2 else float("nan"),
        "kid_tilenet": kid[0],
        "feature_network": "TileNet "
        "(trained on procedural world tiles; see earthgen.evaluation.tilenet)",
    }
