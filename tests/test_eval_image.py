"""The evaluator network and `earthgen eval image` (tiny models, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import get_dummy_components

from earthgen.cli import main
from earthgen.evaluation.tilenet import SCENES, TileNet, scene_label, train_tilenet
from earthgen.pipelines.image import EarthImagePipeline


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluator")
    s = train_tilenet(out, steps=40, batch_size=2, resolution=64, width=16, progress=False)
    return out, s


def test_evaluator_learns(evaluator):
    _, s = evaluator
    assert np.mean(s["last_losses"]) < 0.8 * np.mean(s["first_losses"])


def test_scene_labels_follow_the_tile():
    from earthgen.world import generate_world, preset

    urban = generate_world(1, 256, 1.0, config=preset("urban"))
    rural = generate_world(1, 256, 2.0, origin=(20000.0, 20000.0), config=preset("rural"))
    assert SCENES[scene_label(urban.stats)] in ("dense_urban", "residential", "industrial")
    assert SCENES[scene_label(rural.stats)] in ("farmland", "forest", "countryside", "water")


def test_eval_image_end_to_end(tmp_path, evaluator):
    from earthgen.evaluation.image import evaluate_image

    pipe = EarthImagePipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    net = TileNet.from_pretrained(evaluator[0])
    m = evaluate_image(pipe, net, n=4, steps=2, batch_size=2, progress=False)
    assert m["n"] == 4 and m["resolution_px"] == 64
    assert 0 <= m["control_miou"] <= 1 and 0 <= m["cls_oa"] <= 1 and m["gsd_abs_log10_error"] >= 0
    assert np.isfinite(m["fid_tilenet"])
    # the evaluator reads real tiles much better than an untrained generator's noise
    assert m["real_miou"] > 0.3 and m["real_miou"] > m["control_miou"]
    pipe.save_pretrained(tmp_path / "pipe")
    assert (
        main(
            [
                "eval",
                "image",
                "--model",
                str(tmp_path / "pipe"),
                "--evaluator",
                str(evaluator[0]),
                "--n",
                "2",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert set(json.loads((tmp_path / "m.json").read_text())) >= {
        "control_miou",
        "cls_oa",
        "fid_tilenet",
    }
