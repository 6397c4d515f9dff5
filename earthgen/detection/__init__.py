"""Object detection for EarthGen's data augmentation: a compact rotated-box detector of ours
(:class:`BoxNet`, CenterNet-style), its training, and VOC-style mAP for rotated and horizontal
boxes. Used to filter generated images and to measure the gain of synthetic training data."""

from earthgen.detection.metrics import average_precision, evaluate_detections
from earthgen.detection.net import BoxNet, canonical_obb, nms_rotated
from earthgen.detection.train import (
    DetectionSamples,
    evaluate_detector,
    load_rgb,
    predict,
    train_detector,
)

__all__ = [
    "BoxNet",
    "DetectionSamples",
    "average_precision",
    "canonical_obb",
    "evaluate_detections",
    "evaluate_detector",
    "load_rgb",
    "nms_rotated",
    "predict",
    "train_detector",
]
