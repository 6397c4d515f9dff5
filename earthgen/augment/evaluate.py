"""The measured gain of augmentation: the same detector trained on real data only and on real +
synthetic data, evaluated on a held-out real split (VOC mAP@0.5, rotated and horizontal IoU;
11-point AP, DOTA's official metric, unless ``ap_method="all"``; every result names its
``method``)."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthgen.data import read_detection_dataset
from earthgen.detection.net import DETECT_TILE
from earthgen.errors import UserInputError

CACHE_PIXELS = 64_000_000  # test pixels kept decoded across detectors (~190 MB RGB); more: re-read


def evaluate_augmentation(
    real,
    augmented,
    test,
    steps: int = 1500,
    batch_size: int = 8,
    crop: int = 128,
    width: int = 32,
    seed: int = 0,
    rotated: bool | None = None,
    iou_threshold: float = 0.5,
    out: str | Path | None = None,
    progress: bool = True,
    real_detector: str | Path | None = None,
    control: str | None = None,
    control_detector: str | Path | None = None,
    copies: Sequence | None = None,
    ap_method: str = "voc07",
    detect_tile: int = DETECT_TILE,
) -> dict:
    """Train :class:`~earthgen.detection.BoxNet` twice with identical settings and seed (on
    ``real``, then on ``augmented``) and evaluate both on ``test``. Returns
    ``{"real": {...}, "augmented": {...}, "gain": {...}}`` with ``mAP`` and per-class ``AP`` for
    rotated and horizontal IoU, plus the dataset sizes and ``method``, the AP interpolation
    (``ap_method``: ``"voc07"`` 11-point, DOTA's official, or ``"all"`` all-point). Detectors are
    saved under ``out``.
    ``real_detector``: a BoxNet already trained on ``real`` (e.g. ``augment/detector`` written by
    ``earthgen augment``, or an earlier run's ``detector-real``) used as the baseline instead of
    training it again; its training settings are read from its ``train.json`` and reused.

    ``control="copies"``: a third detector, same settings, on real + the *copies* of the synthetic
    images (:func:`~earthgen.augment.core.write_copies`: each kept synthetic image's real source,
    turned as its layout, unchanged, with its own boxes); adds ``copies`` and
    ``gain_over_copies`` (augmented - copies: what the generated objects add beyond drawing the
    source images more often). ``control_detector``: that detector, already trained (e.g. for
    another generator with the same layouts); ``copies``: the copies' DetectionItems when already
    written (default: written under ``out``, or to a temporary folder).

    Test images larger than ``detect_tile`` pixels are detected window by window (overlap a
    quarter of the window, NMS across the seams; :meth:`~earthgen.detection.BoxNet.detect_tiled`);
    test images are kept in memory between detectors only up to :data:`CACHE_PIXELS` in all."""
    from earthgen.data._common import image_size
    from earthgen.detection import evaluate_detections, predict, train_detector
    from earthgen.detection.metrics import check_ap_method
    from earthgen.detection.train import load_rgb

    check_ap_method(ap_method)
    if detect_tile <= 0 or detect_tile % 16:
        raise UserInputError(
            f"detection tile must be a positive multiple of 16 pixels, got {detect_tile}"
        )
    if control not in (None, "copies"):
        raise UserInputError(f"unknown control {control!r}; the one control is 'copies'")
    if control_detector is not None and control is None:
        raise UserInputError("a control detector was given without control='copies'")
    real_items = read_detection_dataset(real)
    aug_items = read_detection_dataset(augmented)
    test_items = read_detection_dataset(test)
    for name, its in (("real", real_items), ("augmented", aug_items), ("test", test_items)):
        if not its:
            raise UserInputError(f"the {name} dataset has no images")
        miss = [it.image for it in its if not Path(it.image).is_file()]
        if miss:
            raise UserInputError(
                f"{len(miss)} images of the {name} dataset are missing (e.g. {miss[0]})"
            )
    classes = sorted(
        {
            lab
            for its in (real_items, aug_items, test_items)
            for it in its
            for lab in it.boxes.labels
        }
    )
    if rotated is None:
        from earthgen.data._common import is_axis_aligned

        rotated = not all(is_axis_aligned(it.boxes.corners) for it in real_items + test_items)
    sizes = [it.size if it.size is not None else image_size(it.image) for it in test_items]
    cache = sum(int(w) * int(h) for w, h in sizes) <= CACHE_PIXELS  # else read one at a time
    test_images = [load_rgb(it.image) for it in test_items] if cache else None
    result: dict = {
        "classes": classes,
        "rotated_detector": bool(rotated),
        "steps": steps,
        "seed": seed,
        "method": ap_method,
        "detect_tile": detect_tile,
        "sizes": {"real": len(real_items), "augmented": len(aug_items), "test": len(test_items)},
    }
    if real_detector is not None:
        base = _load_detector(real_detector)
        t = _train_settings(real_detector)
        if t is not None:  # train the augmented detector exactly as the baseline was trained
            steps, batch_size, crop, seed = t["steps"], t["batch_size"], t["crop"], t["seed"]
            result.update(steps=steps, seed=seed)
        classes, rotated, width = base.classes, bool(base.config.rotated), int(base.config.width)
        result.update(classes=classes, rotated_detector=rotated, real_detector=str(real_detector))
    with contextlib.ExitStack() as stack:  # a temporary copies folder when there is no --out
        sets = [("real", real_items), ("augmented", aug_items)]
        if control == "copies":
            if copies is None:
                copies = _write_copies(augmented, real_items, out, stack)
            sets.append(("copies", real_items + copies))
            result["sizes"]["copies"] = len(real_items) + len(copies)
            if control_detector is not None:
                cbase = _load_detector(control_detector)
                ct = _train_settings(control_detector)
                want = {"steps": steps, "batch_size": batch_size, "crop": crop, "seed": seed}
                if ct is not None and {k: ct[k] for k in want} != want:
                    raise UserInputError(
                        f"the control detector {control_detector} was trained with "
                        f"{ {k: ct[k] for k in want} }, the others with {want}"
                    )
                if list(cbase.classes) != list(classes) or bool(cbase.config.rotated) != bool(
                    rotated
                ):
                    raise UserInputError(
                        f"the control detector {control_detector} has other classes or box type"
                    )
                result["control_detector"] = str(control_detector)
        for name, its in sets:
            if name == "real" and real_detector is not None:
                model = base
            elif name == "copies" and control_detector is not None:
                model = cbase
            else:
                model = train_detector(
                    its,
                    classes,
                    steps=steps,
                    batch_size=batch_size,
                    crop=crop,
                    width=width,
                    rotated=rotated,
                    seed=seed,
                    progress=progress,
                    out=None if out is None else Path(out) / f"detector-{name}",
                )
            r = {}
            preds = predict(
                model,
                test_items,
                score_threshold=0.01,
                images=test_images,
                progress=progress,
                tile=detect_tile,
            )
            for geo in (
                (("rotated", True), ("horizontal", False)) if rotated else (("horizontal", False),)
            ):
                m = evaluate_detections(
                    preds,
                    [it[2] for it in test_items],
                    model.classes,
                    iou_threshold,
                    rotated=geo[1],
                    ap_method=ap_method,
                )
                r[geo[0]] = {
                    "mAP": m["mAP"],
                    "AP": m["AP"],
                    "num_gt": m["num_gt"],
                    "method": m["method"],
                }
            result[name] = r
    result["gain"] = _difference(result["augmented"], result["real"], classes)
    if "copies" in result:
        result["gain_over_copies"] = _difference(result["augmented"], result["copies"], classes)
    return result


def _difference(b: dict, a: dict, classes: Sequence[str]) -> dict:
    """``b - a`` of two results' mAP and per-class AP, per IoU kind (NaN where either is NaN)."""
    return {
        geo: {
            "mAP": b[geo]["mAP"] - a[geo]["mAP"],
            "AP": {
                c: (b[geo]["AP"][c] - a[geo]["AP"][c])
                if not (np.isnan(a[geo]["AP"][c]) or np.isnan(b[geo]["AP"][c]))
                else float("nan")
                for c in classes
            },
        }
        for geo in a
    }


def _write_copies(augmented, real_items, out, stack: contextlib.ExitStack) -> list:
    """:func:`~earthgen.augment.core.write_copies` into ``out/copies``, or into a temporary folder
    that lives as long as ``stack``."""
    from earthgen.augment.core import write_copies

    folder = (
        Path(out) / "copies"
        if out is not None
        else Path(stack.enter_context(tempfile.TemporaryDirectory()))
    )
    return write_copies(augmented, real_items, folder)


def _load_detector(path):
    from earthgen.detection import BoxNet

    try:
        return BoxNet.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot load the detector {path}: {e}") from None


def _train_settings(path) -> dict | None:
    """The ``train.json`` of a detector folder written by ``train_detector`` (None if absent)."""
    tj = Path(path) / "train.json"
    return json.loads(tj.read_text()) if tj.is_file() else None


def evaluate_augmentation_seeds(
    real,
    augmented,
    test,
    seeds: Sequence[int] = (0, 1, 2),
    real_detectors: Sequence[str | Path] | None = None,
    out: str | Path | None = None,
    control: str | None = None,
    control_detectors: Sequence[str | Path] | None = None,
    **kw,
) -> dict:
    """:func:`evaluate_augmentation` once per detector seed (detector training varies a lot from
    seed to seed on small data: one class's AP can move by 0.2), aggregated: ``runs`` (one result
    per seed), ``mean`` and ``std`` (over seeds) of ``real``, ``augmented`` and ``gain``, and
    ``rises`` (per class: in how many seeds the AP rose). ``real_detectors``: one trained baseline
    per run (their own seeds are used; ``seeds`` is then ignored). Detectors of run ``i`` go to
    ``out/seed<seed>``. ``control="copies"`` adds the copies control to every run (and
    ``rises_over_copies``); ``control_detectors``: trained copies detectors, matched to the runs by
    their seeds."""

    def seed_of(d) -> int:
        t = _train_settings(d)
        if t is None:
            raise UserInputError(
                f"{d} has no train.json (not a detector folder written by train_detector)"
            )
        return int(t["seed"])

    if real_detectors is not None:
        runs_in = [(seed_of(d), d) for d in real_detectors]
    else:
        runs_in = [(int(sd), None) for sd in seeds]
    if not runs_in:
        raise UserInputError("no seeds to evaluate")
    seeds_used = [sd for sd, _ in runs_in]
    if len(set(seeds_used)) < len(seeds_used):
        raise UserInputError(
            f"the runs repeat seeds {seeds_used}; each run needs its own detector seed"
        )
    controls: dict[int, str | Path] = {}
    for d in control_detectors or ():
        sd = seed_of(d)
        if sd in controls:
            raise UserInputError(f"two control detectors have seed {sd}")
        controls[sd] = d
    if control_detectors and set(controls) != set(seeds_used):
        raise UserInputError(
            f"the control detectors have seeds {sorted(controls)}, the runs {seeds_used}"
        )
    with contextlib.ExitStack() as stack:  # the copies are the same for every seed: written once
        copies = (
            _write_copies(augmented, read_detection_dataset(real), out, stack)
            if control == "copies"
            else None
        )
        runs = [
            evaluate_augmentation(
                real,
                augmented,
                test,
                seed=sd,
                real_detector=det,
                out=None if out is None else Path(out) / f"seed{sd}",
                control=control,
                control_detector=controls.get(sd),
                copies=copies,
                **kw,
            )
            for sd, det in runs_in
        ]
    return aggregate_runs(runs)


def aggregate_runs(runs: Sequence[dict]) -> dict:
    """Several :func:`evaluate_augmentation` results (one per detector seed, same data) as one:
    ``runs``, ``mean`` and ``std`` over them of every part (``real``, ``augmented``, ``gain``,
    and ``copies``, ``gain_over_copies`` with the control), ``rises`` (and
    ``rises_over_copies``): per class, in how many runs the AP rose."""
    runs = list(runs)
    agg: dict = {
        "classes": runs[0]["classes"],
        "rotated_detector": runs[0]["rotated_detector"],
        "steps": runs[0]["steps"],
        "seeds": [r["seed"] for r in runs],
        "sizes": runs[0]["sizes"],
        "method": _method(runs[0]),
        "runs": runs,
    }
    parts = [p for p in ("real", "augmented", "gain", "copies", "gain_over_copies") if p in runs[0]]
    for stat, fn in (("mean", np.mean), ("std", np.std)):
        agg[stat] = {
            part: {
                geo: {
                    "mAP": float(fn([_get(r, part, geo) for r in runs])),
                    "AP": {
                        c: float(fn([_get(r, part, geo, c) for r in runs])) for c in agg["classes"]
                    },
                }
                for geo in runs[0][part]
            }
            for part in parts
        }
    for key, part in (("rises", "gain"), ("rises_over_copies", "gain_over_copies")):
        if part in runs[0]:
            agg[key] = {
                geo: {c: int(sum(r[part][geo]["AP"][c] > 0 for r in runs)) for c in agg["classes"]}
                for geo in runs[0][part]
            }
    return agg


def _method(result: dict) -> str:
    """The AP interpolation of a result (results written before it was named: all-point)."""
    return str(result.get("method", "all"))


def _label(result: dict) -> str:
    return {"voc07": "11-point AP (VOC07, DOTA official)", "all": "all-point AP"}.get(
        _method(result), _method(result)
    )


def _get(result: dict, part: str, geo: str, cls: str | None = None) -> float:
    """mAP (``cls`` None) or one class's AP of ``result[part][geo]``."""
    d = result[part][geo]
    return d["mAP"] if cls is None else d["AP"][cls]


def format_table(result: dict) -> str:
    """A plain-text table of :func:`evaluate_augmentation`'s (or, with mean +- std over seeds,
    :func:`evaluate_augmentation_seeds`') result; with the copies control, its AP and the gain of
    the synthetic data over it (``syn-copies``) are two more columns."""
    if "runs" in result:
        return _format_seeds(result)
    ctl = "copies" in result
    lines = [f"AP method: {_label(result)}"]
    for geo in result["real"]:
        lines.append(
            f"AP@{0.5:.1f} ({geo} IoU)      real    real+syn   gain"
            + ("   copies  syn-copies" if ctl else "")
        )
        for c in [None, *result["classes"]]:
            a, b = _get(result, "real", geo, c), _get(result, "augmented", geo, c)
            row = f"  {c or 'mAP':<22}{a:8.3f} {b:9.3f} {b - a:+7.3f}"
            if ctl:
                k = _get(result, "copies", geo, c)
                row += f" {k:8.3f} {b - k:+10.3f}"
            lines.append(row)
    return "\n".join(lines)


def _format_seeds(result: dict) -> str:
    m, sd, n = result["mean"], result["std"], len(result["runs"])
    parts = [p for p in ("real", "augmented", "gain", "copies", "gain_over_copies") if p in m]
    names = {
        "real": "real",
        "augmented": "real+syn",
        "gain": "gain",
        "copies": "copies",
        "gain_over_copies": "syn-copies",
    }
    lines = [
        f"{n} detector seeds {result['seeds']}: mean +- std; rises = seeds where the AP rose"
        + (" (over real; over copies)" if "copies" in m else ""),
        f"AP method: {_label(result)}",
    ]
    for geo in m["real"]:
        lines.append(
            f"AP@{0.5:.1f} ({geo} IoU)  " + "".join(f"{names[p]:>16}" for p in parts) + "   rises"
        )
        for c in [None, *result["classes"]]:
            cells = [
                (
                    f"{_get(m, p, geo, c):+7.3f}"
                    if p.startswith("gain")
                    else f"{_get(m, p, geo, c):7.3f}"
                )
                + f" +- {_get(sd, p, geo, c):5.3f}"
                for p in parts
            ]
            rises = (
                ""
                if c is None
                else "; ".join(
                    f"{result[k][geo][c]}/{n}"
                    for k in ("rises", "rises_over_copies")
                    if k in result
                )
            )
            lines.append(f"  {c or 'mAP':<20}" + " ".join(cells) + f"  {rises}")
    return "\n".join(lines)
