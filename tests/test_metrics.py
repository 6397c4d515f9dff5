"""Shared metrics against closed forms and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from earthgen.errors import UserInputError
from earthgen.metrics import fid_from_features, frechet_distance, kid_from_features, miou


def test_miou_hand_example():
    t = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    p = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    r = miou(p, t, 3)
    # class 0: tp 4, union 5 -> 0.8; class 1: tp 3, union 4 -> 0.75; class 2 absent
    assert r["miou"] == pytest.approx((0.8 + 0.75) / 2)
    assert r["pixel_accuracy"] == pytest.approx(7 / 8)
    assert np.isnan(r["per_class_iou"][2])
    assert miou(t, t, 3)["miou"] == 1.0
    assert miou(p, t, 3, ignore_index=1)["per_class_iou"][0] == pytest.approx(1.0)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    ref = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(ref, rel=1e-9)


def test_fid_and_kid_on_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    b = rng.normal(size=(2000, 8))
    c = rng.normal(size=(2000, 8)) + 1.0
    assert fid_from_features(a, b) < 0.05
    assert fid_from_features(a, c) == pytest.approx(8.0, rel=0.1)  # |mean shift|^2 = 8
    same, _ = kid_from_features(a, b, subsets=10, subset_size=200)
    shifted, _ = kid_from_features(a, c, subsets=10, subset_size=200)
    assert abs(same) < 0.02 and shifted > 0.5
    with pytest.raises(UserInputError):
        fid_from_features(a, c[:, :3])
