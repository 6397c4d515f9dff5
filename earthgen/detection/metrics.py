"""Detection metrics: VOC-style average precision at an IoU threshold, for rotated
boxes (exact polygon IoU, :func:`earthgen.boxes.box_iou`) or horizontal boxes (the enclosing
axis-aligned boxes of both predictions and ground truth).

Matching follows PASCAL VOC: predictions of a class, sorted by score over the whole dataset,
match the unmatched ground-truth box of highest IoU >= the threshold in the same image; a
``difficult`` ground truth is neither a hit nor a miss (a prediction matching it is ignored).

Two interpolations of the precision-recall curve (``ap_method``), named in every result:

- ``"voc07"`` (default): PASCAL VOC 2007 11-point AP, the mean of the interpolated precision at
  recall 0, 0.1, ..., 1 -- DOTA's official evaluation (``dota_evaluation_task1.py``,
  ``use_07_metric=True``);
- ``"all"``: all-point AP (VOC 2010+), the area under the precision envelope.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earthgen.boxes import BoxSet, corners_to_hbb, hbb_to_corners
from earthgen.errors import UserInputError

AP_METHODS: tuple[str, ...] = ("voc07", "all")


def check_ap_method(ap_method: str) -> str:
    """``ap_method`` if it is one of :data:`AP_METHODS`, else a one-line UserInputError."""
    if ap_method not in AP_METHODS:
        raise UserInputError(
            f"unknown ap_method {ap_method!r}; use 'voc07' (11-point, DOTA's "
            "official) or 'all' (all-point)"
        )
    return ap_method


def average_precision(recall: np.ndarray, precision: np.ndarray, ap_method: str = "voc07") -> float:
    """AP of a precision-recall curve (``recall``, ``precision``: ``[P]`` in prediction order).

    ``ap_method="voc07"``: 11-point interpolated AP (VOC 2007, DOTA's official metric): the mean
    over t = 0, 0.1, ..., 1 of the highest precision at recall >= t (0 where none).
    ``"all"``: all-point interpolated AP (VOC 2010+): area under the precision envelope."""
    check_ap_method(ap_method)
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if ap_method == "voc07":
        return float(
            sum(prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1))
            / 11.0
        )
    r = np.concatenate([[0.0], rec, [1.0]])
    p = np.concatenate([[0.0], prec, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    i = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[i + 1] - r[i]) * p[i + 1]))


def _geometry(corners: np.ndarray, rotated: bool) -> np.ndarray:
    return corners if rotated else hbb_to_corners(corners_to_hbb(corners))


class _GroundTruth:
    """The ground-truth boxes of one image and class, ready for many IoU queries: exact rotated
    IoU (as :func:`earthgen.boxes.box_iou`) computed only against the boxes whose enclosing
    horizontal box overlaps the query's, so a large image with hundreds of boxes stays cheap."""

    def __init__(self, corners: np.ndarray):
        import shapely

        self.hbb = corners_to_hbb(corners)
        c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
        self.polys = shapely.make_valid(shapely.polygons(c))
        self.area = shapely.area(self.polys)

    def iou(self, corners: np.ndarray) -> np.ndarray:
        """``[G]`` IoU of one box ``[4, 2]`` with each ground-truth box (0: they cannot meet)."""
        import shapely

        out = np.zeros(len(self.hbb))
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        b = self.hbb
        cand = np.nonzero(
            (np.minimum(b[:, 2], hi[0]) > np.maximum(b[:, 0], lo[0]))
            & (np.minimum(b[:, 3], hi[1]) > np.maximum(b[:, 1], lo[1]))
        )[0]
        if len(cand):
            p = shapely.make_valid(shapely.polygons(np.asarray(corners, np.float64).reshape(4, 2)))
            inter = shapely.area(shapely.intersection(p, self.polys[cand]))
            union = shapely.area(p) + self.area[cand] - inter
            out[cand] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        return out


def evaluate_detections(
    predictions: Sequence[BoxSet],
    ground_truth: Sequence[BoxSet],
    classes: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    rotated: bool = True,
    ap_method: str = "voc07",
) -> dict:
    """mAP of ``predictions`` (BoxSets with ``scores``) against ``ground_truth``, image by image.

    Returns ``{"mAP": float, "AP": {class: float}, "num_gt": {class: int},
    "num_pred": {class: int}, "iou_threshold", "rotated", "method"}``; ``method`` is
    ``ap_method`` (``"voc07"``: 11-point, DOTA's official; ``"all"``: all-point, see
    :func:`average_precision`). Classes without (non-difficult) ground truth get AP ``nan`` and
    are left out of the mean (mAP is ``nan`` if all are)."""
    check_ap_method(ap_method)
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truth)} images")
    if classes is None:
        classes = sorted({lab for b in ground_truth for lab in b.labels})
    ap: dict[str, float] = {}
    n_gt: dict[str, int] = {}
    n_pred: dict[str, int] = {}
    for cls in classes:
        recs = []  # (score, image index, corners)
        gts = []
        npos = 0
        for i, (pr, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
            gi = np.array([lab == cls for lab in gt.labels], dtype=bool)
            diff = (
                np.zeros(len(gt), bool) if gt.difficult is None else np.asarray(gt.difficult, bool)
            )[gi]
            gts.append((_geometry(gt.corners[gi], rotated), diff))
            npos += int((~diff).sum())
            pi = np.array([lab == cls for lab in pr.labels], dtype=bool)
            scores = (
                np.ones(len(pr)) if pr.scores is None else np.asarray(pr.scores, dtype=np.float64)
            )
            for s, c in zip(scores[pi], _geometry(pr.corners[pi], rotated), strict=True):
                recs.append((float(s), i, c))
        n_gt[cls], n_pred[cls] = npos, len(recs)
        if npos == 0:
            ap[cls] = float("nan")
            continue
        recs.sort(key=lambda r: -r[0])
        used = [np.zeros(len(g[0]), bool) for g in gts]
        tp = np.zeros(len(recs))
        fp = np.zeros(len(recs))
        geo: dict[int, _GroundTruth] = {}  # per image, built at its first prediction
        for k, (_, i, c) in enumerate(recs):
            g, diff = gts[i]
            if not len(g):
                fp[k] = 1
                continue
            if i not in geo:
                geo[i] = _GroundTruth(g)
            iou = geo[i].iou(c)
            j = int(np.argmax(iou))
            if iou[j] >= iou_threshold:
                if diff[j]:
                    continue  # matched a difficult box: ignored
                if not used[i][j]:
                    used[i][j] = True
                    tp[k] = 1
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        ap[cls] = average_precision(recall, precision, ap_method)
    vals = [v for v in ap.values() if not np.isnan(v)]
    return {
        "mAP": float(np.mean(vals)) if vals else float("nan"),
        "AP": ap,
        "num_gt": n_gt,
        "num_pred": n_pred,
        "iou_threshold": float(iou_threshold),
        "rotated": bool(rotated),
        "method": ap_method,
    }
