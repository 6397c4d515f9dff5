"""Metrics shared by the evaluation commands (pure numpy/scipy, any feature extractor).

- :func:`miou`: mean intersection-over-union of class maps (control fidelity: segment generated
  images and compare with the input layout).
- :func:`fid_from_features` / :func:`frechet_distance`: Fréchet distance between Gaussian fits of
  two feature sets (FID when the features are Inception's; EarthGen reports which network).
- :func:`kid_from_features`: kernel inception distance, the unbiased MMD² with the cubic
  polynomial kernel ``k(x, y) = (x·y / d + 1)^3``, averaged over random subsets.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from earthgen.errors import UserInputError


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """``[K, K]`` counts, rows = target class, columns = predicted class."""
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(target).ravel().astype(np.int64)
    if p.shape != t.shape:
        raise UserInputError(
            f"prediction and target differ in size: {np.shape(pred)} vs {np.shape(target)}"
        )
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def miou(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> dict:
    """Mean IoU over the classes present in target or prediction; also per-class IoU and pixel
    accuracy."""
    cm = confusion_matrix(pred, target, num_classes, ignore_index).astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.full(num_classes, np.nan)
    iou[present] = tp[present] / union[present]
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "per_class_iou": iou.tolist(),
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1.0)),
    }


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(
        covmean
    ).all():  # singular product: regularise, as the reference FID code does
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _check_features(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserInputError(
            f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}"
        )
    if len(a) < minimum or len(b) < minimum:
        raise UserInputError(f"need at least {minimum} samples per set, got {len(a)} and {len(b)}")
    return a, b


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between feature sets ``[N, D]`` and ``[M, D]``."""
    a, b = _check_features(a, b, 2)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kid_from_features(
    a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) between feature sets ``[N, D]`` and ``[M, D]``."""
    a, b = _check_features(a, b, 2)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
