"""Steps of ``earthgen demo`` with tiny models (the full demo runs the packaged ones:
``make demo``)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from tiny_models import tiny_box_pipeline


def test_demo_augment_step_writes_a_merged_dataset_and_a_labelled_sheet(tmp_path, monkeypatch):
    import earthgen.pipelines.image
    from earthgen.commands import demo
    from earthgen.data import read_detection_dataset

    calls = []

    def fake_loader(dtype=None, name="image"):
        calls.append(name)
        return tiny_box_pipeline()

    monkeypatch.setattr(earthgen.pipelines.image, "load_default_image_pipeline", fake_loader)
    monkeypatch.setattr(demo, "DEMO_STEPS", 2)
    ctx = demo.DemoContext(out=tmp_path, seed=3)
    msg = demo.step_augment(ctx)
    assert calls == ["boxes"] and "synthetic" in msg
    out = tmp_path / "augment"
    merged = read_detection_dataset(out / "augmented")
    syn = [it for it in merged if it.image.name.startswith("synthetic_")]
    assert len(merged) == 2 * demo.AUGMENT_IMAGES and len(syn) == demo.AUGMENT_IMAGES
    assert all(len(it.boxes) > 0 for it in syn)
    manifest = json.loads((out / "augmented" / "augment" / "manifest.json").read_text())
    assert [m["image"] for m in manifest["synthetic"]] == sorted(it.image.name for it in syn)
    sheet = np.asarray(Image.open(out / "sample.png"))
    assert sheet.shape == (4 * demo.AUGMENT_PX, 2 * demo.AUGMENT_PX * demo.AUGMENT_IMAGES, 3)
    assert ctx.summary["augment"]["synthetic_boxes"] == sum(len(it.boxes) for it in syn)
    demo.step_augment(ctx)  # a second run replaces the demo's own folder
    assert len(read_detection_dataset(out / "augmented")) == 2 * demo.AUGMENT_IMAGES
