"""The measured gain of augmentation: the same detector trained on real data only and on real +
synthetic data, evaluated on a held-out real split (VOC mAP@0.5, rotated and horizontal IoU)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthgen.data import read_detection_dataset
from earthgen.errors import UserInputError


def evaluate_augmentation(real, augmented, test, steps: int = 1500, batch_size: int = 8, crop: int = 128,
                          width: int = 32, seed: int = 0, rotated: bool | None = None, iou_threshold: float = 0.5,
                          out: str | Path | None = None, progress: bool = True,
                          real_detector: str | Path | None = None) -> dict:
    """Train :class:`~earthgen.detection.BoxNet` twice with identical settings and seed (on
    ``real``, then on ``augmented``) and evaluate both on ``test``. Returns
    ``{"real": {...}, "augmented": {...}, "gain": {...}}`` with ``mAP`` and per-class ``AP`` for
    rotated and horizontal IoU, plus the dataset sizes. Detectors are saved under ``out``.
    ``real_detector``: a BoxNet already trained on ``real`` (e.g. ``augment/detector`` written by
    ``earthgen augment``, or an earlier run's ``detector-real``) used as the baseline instead of
    training it again; its training settings are read from its ``train.json`` and reused."""
    from earthgen.detection import evaluate_detector, predict, train_detector
    from earthgen.detection.train import load_rgb

    real_items = read_detection_dataset(real)
    aug_items = read_detection_dataset(augmented)
    test_items = read_detection_dataset(test)
    for name, its in (("real", real_items), ("augmented", aug_items), ("test", test_items)):
        if not its:
            raise UserInputError(f"the {name} dataset has no images")
        miss = [it.image for it in its if not Path(it.image).is_file()]
        if miss:
            raise UserInputError(f"{len(miss)} images of the {name} dataset are missing (e.g. {miss[0]})")
    classes = sorted({lab for its in (real_items, aug_items, test_items) for it in its for lab in it.boxes.labels})
    if rotated is None:
        from earthgen.data._common import is_axis_aligned

        rotated = not all(is_axis_aligned(it.boxes.corners) for it in real_items + test_items)
    test_images = [load_rgb(it.image) for it in test_items]
    result: dict = {"classes": classes, "rotated_detector": bool(rotated), "steps": steps, "seed": seed,
                    "sizes": {"real": len(real_items), "augmented": len(aug_items), "test": len(test_items)}}
    if real_detector is not None:
        import json

        from earthgen.detection import BoxNet

        try:
            base = BoxNet.from_pretrained(real_detector)
        except (OSError, ValueError) as e:
            raise UserInputError(f"cannot load the detector {real_detector}: {e}") from None
        tj = Path(real_detector) / "train.json"
        if tj.is_file():  # train the augmented detector exactly as the baseline was trained
            t = json.loads(tj.read_text())
            steps, batch_size, crop, seed = t["steps"], t["batch_size"], t["crop"], t["seed"]
            result.update(steps=steps, seed=seed)
        classes, rotated, width = base.classes, bool(base.config.rotated), int(base.config.width)
        result.update(classes=classes, rotated_detector=rotated, real_detector=str(real_detector))
    for name, its in (("real", real_items), ("augmented", aug_items)):
        if name == "real" and real_detector is not None:
            model = base
        else:
            model = train_detector(its, classes, steps=steps, batch_size=batch_size, crop=crop, width=width,
                                   rotated=rotated, seed=seed, progress=progress,
                                   out=None if out is None else Path(out) / f"detector-{name}")
        r = {}
        preds = predict(model, test_items, score_threshold=0.01, images=test_images, progress=progress)
        for geo in (("rotated", True), ("horizontal", False)) if rotated else (("horizontal", False),):
            m = evaluate_detector(model, test_items, iou_threshold, rotated=geo[1], predictions=preds)
            r[geo[0]] = {"mAP": m["mAP"], "AP": m["AP"], "num_gt": m["num_gt"]}
        result[name] = r
    gain = {}
    for geo in result["real"]:
        a, b = result["real"][geo], result["augmented"][geo]
        gain[geo] = {"mAP": b["mAP"] - a["mAP"],
                     "AP": {c: (b["AP"][c] - a["AP"][c]) if not (np.isnan(a["AP"][c]) or np.isnan(b["AP"][c]))
                            else float("nan") for c in classes}}
    result["gain"] = gain
    return result


def evaluate_augmentation_seeds(real, augmented, test, seeds: Sequence[int] = (0, 1, 2),
                                real_detectors: Sequence[str | Path] | None = None,
                                out: str | Path | None = None, **kw) -> dict:
    """:func:`evaluate_augmentation` once per detector seed (detector training varies a lot from seed
    to seed on small data: one class's AP can move by 0.2), aggregated: ``runs`` (one result per
    seed), ``mean`` and ``std`` (over seeds) of ``real``, ``augmented`` and ``gain``, and
    ``rises`` (per class: in how many seeds the AP rose). ``real_detectors``: one trained baseline
    per run (their own seeds are used; ``seeds`` is then ignored). Detectors of run ``i`` go to
    ``out/seed<seed>``."""
    import json

    if real_detectors is not None:
        runs_in = []
        for d in real_detectors:
            tj = Path(d) / "train.json"
            if not tj.is_file():
                raise UserInputError(f"{d} has no train.json (not a detector folder written by train_detector)")
            runs_in.append((int(json.loads(tj.read_text())["seed"]), d))
    else:
        runs_in = [(int(sd), None) for sd in seeds]
    if not runs_in:
        raise UserInputError("no seeds to evaluate")
    seeds_used = [sd for sd, _ in runs_in]
    if len(set(seeds_used)) < len(seeds_used):
        raise UserInputError(f"the runs repeat seeds {seeds_used}; each run needs its own detector seed")
    runs = [evaluate_augmentation(real, augmented, test, seed=sd, real_detector=det,
                                  out=None if out is None else Path(out) / f"seed{sd}", **kw)
            for sd, det in runs_in]
    agg: dict = {"classes": runs[0]["classes"], "rotated_detector": runs[0]["rotated_detector"],
                 "steps": runs[0]["steps"], "seeds": seeds_used, "sizes": runs[0]["sizes"], "runs": runs}
    for stat, fn in (("mean", np.mean), ("std", np.std)):
        agg[stat] = {part: {geo: {"mAP": float(fn([_get(r, part, geo) for r in runs])),
                                  "AP": {c: float(fn([_get(r, part, geo, c) for r in runs])) for c in agg["classes"]}}
                            for geo in runs[0][part]}
                     for part in ("real", "augmented", "gain")}
    agg["rises"] = {geo: {c: int(sum(r["gain"][geo]["AP"][c] > 0 for r in runs)) for c in agg["classes"]}
                    for geo in runs[0]["gain"]}
    return agg


def _get(result: dict, part: str, geo: str, cls: str | None = None) -> float:
    """mAP (``cls`` None) or one class's AP of ``result[part][geo]``."""
    d = result[part][geo]
    return d["mAP"] if cls is None else d["AP"][cls]


def format_table(result: dict) -> str:
    """A plain-text table of :func:`evaluate_augmentation`'s (or, with mean +- std over seeds,
    :func:`evaluate_augmentation_seeds`') result."""
    if "runs" in result:
        return _format_seeds(result)
    lines = []
    for geo in result["real"]:
        lines.append(f"AP@{0.5:.1f} ({geo} IoU)      real    real+syn   gain")
        rows = [("mAP", result["real"][geo]["mAP"], result["augmented"][geo]["mAP"])]
        rows += [(c, result["real"][geo]["AP"][c], result["augmented"][geo]["AP"][c]) for c in result["classes"]]
        for name, a, b in rows:
            lines.append(f"  {name:<22}{a:8.3f} {b:9.3f} {b - a:+7.3f}")
    return "\n".join(lines)


def _format_seeds(result: dict) -> str:
    m, sd, n = result["mean"], result["std"], len(result["runs"])
    lines = [f"{n} detector seeds {result['seeds']}: mean +- std; rises = seeds where the AP rose"]
    for geo in m["real"]:
        lines.append(f"AP@{0.5:.1f} ({geo} IoU)        real            real+syn        gain       rises")
        for c in [None, *result["classes"]]:
            rises = "" if c is None else f"{result['rises'][geo][c]}/{n}"
            cells = [f"{_get(m, part, geo, c):+7.3f}" if part == "gain" else f"{_get(m, part, geo, c):6.3f}"
                     for part in ("real", "augmented", "gain")]
            spread = [f"{_get(sd, part, geo, c):5.3f}" for part in ("real", "augmented", "gain")]
            lines.append(f"  {c or 'mAP':<20}" + " ".join(f"{a} +- {b}" for a, b in zip(cells, spread, strict=True))
                         + f" {rises:>5}")
    return "\n".join(lines)
