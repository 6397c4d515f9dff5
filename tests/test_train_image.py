"""`earthgen train image-*`: a test run finishes, the loss falls, resume continues exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from earthgen.cli import main
from earthgen.errors import UserInputError
from earthgen.training.image import TrainConfig, train


def losses(path) -> dict[int, float]:
    with open(path / "loss.csv") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm")
    assert main(["train", "image-ldm", "--test-run", "--out", str(out)]) == 0
    return out


def test_test_run_writes_a_loadable_pipeline_and_the_loss_falls(ldm_run):
    from earthgen.pipelines.image import EarthImagePipeline

    s = json.loads((ldm_run / "summary.json").read_text())
    assert s["steps"] == 20 and sorted(p.name for p in (ldm_run / "checkpoints").iterdir()) == ["step_10", "step_20"]
    assert (ldm_run / "loss.png").stat().st_size > 1000
    lv = losses(ldm_run)
    assert len(lv) == 20 and all(np.isfinite(list(lv.values())))
    assert np.mean([lv[i] for i in range(16, 21)]) < 0.95 * np.mean([lv[i] for i in range(1, 6)])
    pipe = EarthImagePipeline.from_pretrained(ldm_run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    img = pipe("residential area", gsd=0.5, num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_trained_pipeline_samples_with_dpm_solver_on_the_training_schedule(ldm_run, tmp_path):
    """A DDPM training schedule is saved as DPM-Solver++ on the same betas (DDPM's ancestral
    sampler blurs images at 20 steps); training can start again from the saved pipeline, its
    noise schedule unchanged."""
    import torch
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from earthgen.pipelines.image import EarthImagePipeline, sampling_scheduler
    from earthgen.training.image import fresh_components

    pipe = EarthImagePipeline.from_pretrained(ldm_run / "pipeline")
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    ddpm = fresh_components("tiny")["scheduler"]
    assert type(ddpm) is DDPMScheduler
    again = DDPMScheduler.from_config(pipe.scheduler.config)  # what the trainer noises with
    assert torch.equal(again.alphas_cumprod, ddpm.alphas_cumprod)
    assert again.config.prediction_type == ddpm.config.prediction_type
    assert sampling_scheduler(pipe.scheduler) is pipe.scheduler  # others are left as they are
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ddpm  # an older trained pipeline: few DDPM steps are warned about
    with pytest.warns(UserWarning, match="sampling_scheduler"):
        pipe("forest", num_inference_steps=2, output_type="np")
    s = train(TrainConfig(model=str(ldm_run / "pipeline"), out=str(tmp_path / "c"), test_run=True, steps=2))
    assert s["steps"] == 2


def test_resume_continues_exactly(tmp_path):
    common = {"task": "image-control", "test_run": True, "save_every": 3, "seed": 4}
    train(TrainConfig(out=str(tmp_path / "a"), steps=6, **common))
    train(TrainConfig(out=str(tmp_path / "b"), steps=3, **common))
    s = train(TrainConfig(out=str(tmp_path / "b"), steps=6, resume=True, **common))
    assert s["started_at"] == 3
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[i] for i in range(4, 7)], [a[i] for i in range(4, 7)], rtol=1e-4)


def test_vae_task_runs(tmp_path):
    s = train(TrainConfig(task="image-vae", out=str(tmp_path / "v"), test_run=True, steps=8))
    assert s["steps"] == 8 and (tmp_path / "v" / "pipeline" / "vae").is_dir()


@pytest.mark.parametrize("kw, msg", [
    ({"task": "image-gan"}, "unknown task"),
    ({"resolution": 100}, "multiple of 64"),
    ({"data": "/nonexistent/captions.jsonl"}, "not found"),
    ({"cond_dropout": 1.5}, "cond-dropout"),
])
def test_bad_config(tmp_path, kw, msg):
    with pytest.raises(UserInputError, match=msg):
        TrainConfig(out=str(tmp_path), **kw).validate()
