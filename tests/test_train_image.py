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
    assert s["steps"] == 20 and sorted(p.name for p in (ldm_run / "checkpoints").iterdir()) == [
        "step_10",
        "step_20",
    ]
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
    s = train(
        TrainConfig(
            model=str(ldm_run / "pipeline"), out=str(tmp_path / "c"), test_run=True, steps=2
        )
    )
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


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"task": "image-gan"}, "unknown task"),
        ({"resolution": 100}, "multiple of 64"),
        ({"data": "/nonexistent/captions.jsonl"}, "not found"),
        ({"cond_dropout": 1.5}, "cond-dropout"),
    ],
)
def test_bad_config(tmp_path, kw, msg):
    with pytest.raises(UserInputError, match=msg):
        TrainConfig(out=str(tmp_path), **kw).validate()


def _mask_folder(root, n: int = 3, index: bool = False, colour_images: bool = False):
    """``n`` world tiles cut to 64x96 as a segmentation folder: images/ + masks/ (palette PNGs)."""
    from earthgen.classes import PALETTE, colorize
    from earthgen.io import write_png
    from earthgen.world import generate_world

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        t = generate_world(seed=k, size=96, gsd=1.0)
        ids = t.semantic[:64]
        write_png(root / "images" / f"t{k}.png", colorize(ids) if colour_images else t.rgb[:64])
        write_png(root / "masks" / f"t{k}.png", ids, palette=PALETTE)
    if index:
        rows = [
            {"file_name": f"t{k}.png", "caption": f"tile number {k}", "gsd": 1.0} for k in range(n)
        ]
        (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_mask_folder_batches_keep_image_and_mask_aligned(tmp_path):
    """One crop, rotation and flip for image and mask: an image painted in the mask's class
    colours still matches its mask exactly; captions and GSD from the index (the GSD scaled with
    the resize) or, without one, a caption from the class fractions."""
    from earthgen.classes import colorize
    from earthgen.training.image import MaskData, is_mask_dataset

    root = _mask_folder(tmp_path / "a", colour_images=True)
    assert is_mask_dataset(str(root)) and not is_mask_dataset(str(tmp_path))
    d = MaskData(str(root), 64)
    b = d.batch(0, 0, 6)
    assert b["image"].shape == (6, 3, 64, 64) and b["semantic"].shape == (6, 64, 64)
    for img, ids in zip(b["image"], b["semantic"], strict=True):
        np.testing.assert_array_equal(
            colorize(ids.numpy().astype(np.uint8)),
            np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8),
        )
    assert all(c.startswith("Satellite image of ") for c in b["caption"]) and b["gsd"].isnan().all()
    assert not torch_equal(d.batch(0, 0, 6)["image"], d.batch(1, 0, 6)["image"])  # seeds differ
    assert torch_equal(d.batch(0, 0, 6)["image"], b["image"])  # and repeat
    half = MaskData(str(_mask_folder(tmp_path / "b", index=True)), 32).batch(0, 0, 4)
    assert all(c.startswith("tile number") for c in half["caption"])
    np.testing.assert_allclose(half["gsd"].numpy(), 2.0)  # 64 px of 1 m/px resized to 32 px


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def spacenet_mask_folder(root, fixture_path):
    """docs/training.md's example: the SpaceNet chip (0.5 m/px pan GeoTIFF) and its building
    footprint raster as a 2x2 segmentation folder with a caption index."""
    import rasterio

    from earthgen.classes import CLASS_ID, PALETTE
    from earthgen.data import read_geotiff
    from earthgen.io import write_png

    img = read_geotiff(fixture_path("imagery/solaris_sample_geotiff.tif"))
    with rasterio.open(fixture_path("imagery/solaris_sample_fp_mask_from_geojson.tif")) as ds:
        fp = ds.read(1) > 0
    ids = np.where(fp, CLASS_ID["building"], CLASS_ID["background"]).astype(np.uint8)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(2):
        for j in range(2):
            name = f"chip_{i}{j}.png"
            sl = np.s_[i * 450 : i * 450 + 448, j * 450 : j * 450 + 448]
            write_png(root / "images" / name, img.rgb[sl])
            write_png(root / "masks" / name, ids[sl], palette=PALETTE)
            rows.append(
                {
                    "file_name": name,
                    "caption": "Satellite image of a residential neighbourhood.",
                    "gsd": img.gsd,
                }
            )
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_control_trains_on_a_real_mask_folder(tmp_path):
    """The SpaceNet chip with its building footprints (real data) as a mask folder: batches carry
    the footprints as the building class and the GSD scaled to the crop, and image-control
    trains."""
    from conftest import fixture_path

    from earthgen.training.image import MaskData

    root = spacenet_mask_folder(tmp_path / "seg", fixture_path)
    b = MaskData(str(root), 64).batch(0, 0, 4)
    frac = (b["semantic"] == 1).float().mean().item()
    assert 0.01 < frac < 0.1 and set(b["semantic"].unique().tolist()) == {0, 1}  # 4.2 % of the chip
    np.testing.assert_allclose(b["gsd"].numpy(), 0.5 * 448 / 64, rtol=1e-5)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "image-control",
                "--test-run",
                "--data",
                str(root),
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(losses(out)) == 3 and all(np.isfinite(list(losses(out).values())))


def test_control_trains_on_a_mask_folder(tmp_path):
    from PIL import Image

    root = _mask_folder(tmp_path / "seg", index=True)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "image-control",
                "--test-run",
                "--data",
                str(root),
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lv = losses(out)
    assert len(lv) == 4 and all(np.isfinite(list(lv.values())))
    assert (out / "pipeline" / "controlnet").is_dir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(
        root / "masks" / "t0.png"
    )  # a wrong-size mask
    with pytest.raises(UserInputError, match="t0.png: .*mask is 12x10"):
        train(
            TrainConfig(
                task="image-control",
                data=str(root),
                out=str(tmp_path / "bad"),
                test_run=True,
                steps=40,
                seed=3,
            )
        )
