"""Filtering of generated images (AeroGen's idea): keep an image only when a detector trained on
the real data finds the boxes it was asked to contain.

A requested box is *found* when a detection of the same class has score >= ``score_threshold``
and IoU >= ``iou_threshold`` with it (rotated IoU, or horizontal when ``rotated=False``; each
detection is matched at most once, greedily by score). An image is kept when the found fraction
of its requested boxes (its *recall*) is >= ``min_recall``; an image asked to hold no box is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from earthgen.boxes import BoxSet, box_iou, corners_to_hbb, hbb_to_corners
from earthgen.errors import UserInputError


@dataclass
class FilterResult:
    """``keep`` ``[M]`` bool, ``recall`` ``[M]`` (found / requested boxes per image), ``found``
    (per image, ``[N]`` bool per requested box)."""

    keep: np.ndarray
    recall: np.ndarray
    found: list[np.ndarray]

    @property
    def kept_fraction(self) -> float:
        return float(self.keep.mean()) if len(self.keep) else float("nan")


def match_requested(
    requested: BoxSet,
    detected: BoxSet,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
    rotated: bool = True,
) -> np.ndarray:
    """``[N]`` bool: which requested boxes a detection of the same class found."""
    found = np.zeros(len(requested), bool)
    if not len(requested) or not len(detected):
        return found
    scores = (
        np.ones(len(detected))
        if detected.scores is None
        else np.asarray(detected.scores, np.float64)
    )
    ok = scores >= score_threshold
    req, det = requested.corners, detected.corners
    if not rotated:
        req, det = hbb_to_corners(corners_to_hbb(req)), hbb_to_corners(corners_to_hbb(det))
    iou = box_iou(req, det)
    same = np.array([[a == b for b in detected.labels] for a in requested.labels], bool)
    iou = np.where(same & ok[None, :], iou, 0.0)
    for j in np.argsort(
        -scores
    ):  # detections by score, each to its best still-unfound requested box
        cand = np.where(~found, iou[:, j], 0.0)
        i = int(np.argmax(cand))
        if cand[i] >= iou_threshold and cand[i] > 0:
            found[i] = True
    return found


def filter_generated(
    requested: Sequence[BoxSet],
    detected: Sequence[BoxSet],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
    min_recall: float = 0.5,
    rotated: bool = True,
    count_last: Sequence[int] | None = None,
) -> FilterResult:
    """Decide which generated images to keep (see the module docstring). ``count_last``: per
    image, only its last ``k`` requested boxes count towards the recall (e.g. the painted ones of
    an inpainted image; all boxes are still matched, and ``k = 0`` counts as nothing asked)."""
    if len(requested) != len(detected):
        raise ValueError(f"{len(requested)} layouts but {len(detected)} detection sets")
    for name, v in (
        ("iou threshold", iou_threshold),
        ("score threshold", score_threshold),
        ("min recall", min_recall),
    ):
        if not 0.0 <= v <= 1.0:
            raise UserInputError(f"{name} must be in [0, 1], got {v}")
    found = [
        match_requested(r, d, iou_threshold, score_threshold, rotated)
        for r, d in zip(requested, detected, strict=True)
    ]
    if count_last is not None and len(count_last) != len(found):
        raise ValueError(f"{len(found)} layouts but {len(count_last)} counts")
    counted = (
        found
        if count_last is None
        else [f[len(f) - k :] if k else f[:0] for f, k in zip(found, count_last, strict=True)]
    )
    recall = np.array([f.mean() if len(f) else 1.0 for f in counted])
    return FilterResult(recall >= min_recall - 1e-12, recall, found)
