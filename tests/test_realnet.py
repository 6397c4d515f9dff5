"""RealNet evaluators (trained on real data only): packaged weights, save/load, class mapping and,
when the real data is on this machine, the held-out scores of the packaged weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earthgen.errors import UserInputError
from earthgen.evaluation.realnet import (
    IGNORE,
    SEG_CLASSES,
    SceneClassifier,
    Segmenter,
    classify,
    load_realnet,
    segment,
    to_seg_classes,
)


def _data_root():
    try:
        from earthgen.datasets import data_root

        root = data_root()
    except UserInputError:  # no data folder: the data tests skip
        return None
    ok = (root / "ucmerced_landuse_subset").is_dir() and (root / "dubai_aerial_seg").is_dir()
    return root if ok else None


def test_packaged_weights_load_and_shapes():
    torch.manual_seed(0)
    clf, seg = load_realnet()
    assert len(clf.config.class_names) == 16
    assert tuple(seg.config.seg_classes) == SEG_CLASSES
    assert all(p.dtype == torch.float32 for p in clf.parameters())
    images = torch.rand(3, 3, 256, 256)
    pred, feats = classify(clf, images)
    assert pred.shape == (3,) and pred.min() >= 0 and pred.max() < 16
    assert feats.shape == (3, clf.head.in_features) and np.isfinite(feats).all()
    lab = segment(seg, torch.rand(2, 3, 72, 90))  # not a multiple of 16
    assert lab.shape == (2, 72, 90) and lab.dtype == np.uint8
    assert set(np.unique(lab).tolist()) <= set(SEG_CLASSES)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    clf = SceneClassifier(widths=(8, 16), input_size=32, class_names=("a", "b", "c")).eval()
    seg = Segmenter(widths=(8, 8, 16)).eval()
    clf.save_pretrained(tmp_path / "classifier")
    seg.save_pretrained(tmp_path / "segmenter")
    assert (tmp_path / "classifier" / "diffusion_pytorch_model.safetensors").exists()
    clf2, seg2 = load_realnet(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clf(x)["logits"], clf2(x)["logits"], atol=1e-5)
        assert torch.allclose(seg(x), seg2(x), atol=1e-5)
    assert tuple(clf2.config.class_names) == ("a", "b", "c")
    assert classify(clf2, x)[1].shape == (2, 16)


def test_load_missing_and_bad_input(tmp_path):
    with pytest.raises(UserInputError):
        load_realnet(tmp_path)
    clf = SceneClassifier(widths=(8, 16), input_size=32)
    with pytest.raises(UserInputError):
        classify(clf, torch.zeros(1, 1, 32, 32))
    with pytest.raises(UserInputError):
        classify(clf, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_to_seg_classes():
    lay = np.arange(13, dtype=np.uint8).reshape(1, 13)
    got = to_seg_classes(lay)[0].tolist()
    #       bg      bld road road road path rail    water forest grass farm bare parking
    assert got == [IGNORE, 1, 4, 4, 4, 4, IGNORE, 7, 9, 9, 9, 11, 4]
    assert to_seg_classes(np.array([[IGNORE]], np.uint8))[0, 0] == IGNORE
    assert set(to_seg_classes(lay).ravel().tolist()) - {IGNORE} <= set(SEG_CLASSES)
    with pytest.raises(UserInputError):
        to_seg_classes(np.array([[13]], np.uint8))


@pytest.mark.slow
def test_packaged_scores_on_held_out_real_data():
    root = _data_root()
    if root is None:
        pytest.skip("real data (/work/shared/data or $EARTHGEN_DATA) not available")
    from earthgen.evaluation.realnet import score_classifier, score_segmenter

    torch.set_num_threads(1)
    clf, seg = load_realnet()
    acc = score_classifier(clf, root, "test", progress=False)
    assert acc["n"] == 192 and acc["accuracy"] >= 0.6
    res = score_segmenter(seg, root, "test", progress=False)
    assert res["miou"] > res["majority_baseline_miou"] + 0.1
