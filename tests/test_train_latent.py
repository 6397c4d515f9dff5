"""The default image model's trainer (earthgen.training.latent) on a tiny TAEF2 and the real-data
excerpts in tests/data/real: conversion, the latent cache, training, export, resume, user errors
and the `earthgen train image-latent` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from earthgen.errors import UserInputError
from earthgen.training.latent import (
    LatentTrainConfig,
    build_cache,
    convert_taef2,
    init_latent_model,
    train_latent,
)
from vae.taef2 import TAEF2

torch.set_num_threads(1)
REAL = Path(__file__).resolve().parent / "data" / "real"
TINY = {"block_out_channels": (16, 16, 16, 16), "latent_channels": 8}
MIX = {"ucmerced": 1.0, "dubai": 1.0, "naip": 0.5, "neon": 0.5, "spacenet": 0.5}
N_CROPS = 12


def _tiny_taef2() -> TAEF2:
    torch.manual_seed(0)
    return TAEF2(**TINY).eval()


@pytest.fixture(scope="module")
def model_and_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny pipeline (init) and a cache of 12 crops of 64 px from the excerpts."""
    d = tmp_path_factory.mktemp("latent")
    _tiny_taef2().save_pretrained(d / "taef2")
    model = init_latent_model(d / "init", vae=d / "taef2", channels=(32, 32), sample_size=8)
    build_cache(model, d / "cache.pt", n=N_CROPS, mix=MIX, resolution=64, root=str(REAL), batch=4)
    return model, d / "cache.pt"


def _cfg(model: Path, cache: Path, out: Path, steps: int = 4, **kw) -> LatentTrainConfig:
    return LatentTrainConfig(
        cache=str(cache),
        model=str(model),
        out=str(out),
        steps=steps,
        batch_size=2,
        save_every=2,
        log_every=1,
        threads=1,
        **kw,
    )


@pytest.fixture(scope="module")
def run4(model_and_cache, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted 4-step run (the --test-run size)."""
    model, cache = model_and_cache
    out = tmp_path_factory.mktemp("run4") / "run"
    return out, train_latent(_cfg(model, cache, out))


def _losses(out: Path) -> dict[int, float]:
    with open(out / "loss.csv") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def test_convert_taef2_key_for_key(tmp_path):
    ref = _tiny_taef2()
    enc, dec = ref.encoder.state_dict(), ref.decoder.state_dict()
    assert "0.weight" in enc and any(".pool." in k for k in dec)  # upstream nn.Sequential keys
    e, d = tmp_path / "taef2_encoder.pth", tmp_path / "taef2_decoder.pth"
    torch.save(enc, e)
    torch.save(dec, d)
    convert_taef2(e, d, tmp_path / "vae", **TINY)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    back = TAEF2.from_pretrained(tmp_path / "vae")
    for part, sd in (("encoder", enc), ("decoder", dec)):
        got = getattr(back, part).state_dict()
        assert got.keys() == sd.keys()
        for k, v in sd.items():
            assert torch.equal(got[k], v), f"{part}.{k}"
    # strict: a left-over key is an error, a missing file a UserInputError
    torch.save({**enc, "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="extra.weight"):
        convert_taef2(tmp_path / "bad.pth", d, tmp_path / "vae2", **TINY)
    with pytest.raises(UserInputError, match="not found"):
        convert_taef2(tmp_path / "nope.pth", d, tmp_path / "vae3", **TINY)


def test_cache_latents_layouts_and_stats(model_and_cache):
    model, cache = model_and_cache
    data = torch.load(cache, weights_only=False)
    z, lay = data["latents"], data["layout"].float()
    assert z.shape == (N_CROPS, 8, 8, 8) and lay.shape[0] == N_CROPS and lay.shape[-2:] == (8, 8)
    assert len(data["captions"]) == N_CROPS and data["gsd"].shape == (N_CROPS,)
    assert data["resolution"] == 64
    src = data["source"]
    assert {"ucmerced", "dubai"} <= set(src)  # the draw (seed 0) holds both kinds
    sums = lay.sum(dim=1)  # [N, 8, 8]
    for i, s in enumerate(src):
        has_mask = s in ("dubai", "spacenet")
        assert bool(data["has_layout"][i]) == has_mask
        if has_mask:
            assert torch.allclose(sums[i], torch.ones(8, 8), atol=2e-3), s
        else:  # no mask (UC Merced, NAIP, NEON): the null layout, as when sampling without one
            assert float(lay[i].abs().max()) == 0.0, s
    cfg = json.loads((model / "vae" / "config.json").read_text())
    assert len(cfg["latents_mean"]) == 8 and len(cfg["latents_std"]) == 8
    zn = TAEF2.from_pretrained(model / "vae").normalize_latents(z.float())
    assert zn.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (zn.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_cache_cli_with_own_data_root_and_mix(tmp_path, capsys):
    """`cache --data-root --mix --resolution`: a user's folders laid out like ../shared/data."""
    from earthgen.training.latent import main as latent_main

    _tiny_taef2().save_pretrained(tmp_path / "taef2")
    model = init_latent_model(
        tmp_path / "init", vae=tmp_path / "taef2", channels=(32, 32), sample_size=8
    )
    args = [
        "cache",
        "--model",
        str(model),
        "--n",
        "3",
        "--data-root",
        str(REAL),
        "--resolution",
        "64",
    ]
    assert latent_main([*args, "--out", str(tmp_path / "c.pt"), "--mix", "ucmerced=1"]) == 0
    data = torch.load(tmp_path / "c.pt", weights_only=False)
    assert data["source"] == ["ucmerced"] * 3 and data["latents"].shape == (3, 8, 8, 8)
    assert json.loads(capsys.readouterr().out)["crops"] == 3
    for bad in (["--mix", "mars=1"], ["--resolution", "60"]):
        assert latent_main([*args, "--out", str(tmp_path / "d.pt"), *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "d.pt").exists()


def test_training_writes_logs_checkpoints_and_a_working_pipeline(run4):
    from earthgen.pipelines.image import load_pipeline

    out, summary = run4
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses.values())
    assert summary["steps"] == 4 and summary["started_at"] == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    assert (out / "loss.png").is_file() and (out / "summary.json").is_file()
    assert json.loads((out / "train_config.json").read_text())["steps"] == 4
    pipe = load_pipeline(str(out / "pipeline"))
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    kw = {
        "prompt": "a satellite image of buildings",
        "gsd": 1.0,
        "num_inference_steps": 2,
        "output_type": "np",
    }
    plain = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    ids = np.zeros((64, 64), np.uint8)
    ids[:, 24:40] = 7  # a water band
    laid = pipe(**kw, layout=ids, generator=torch.Generator().manual_seed(0)).images
    for img in (plain, laid):
        assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    assert np.abs(plain - laid).max() > 0  # the layout reaches the UNet


def test_resume_continues_as_if_uninterrupted(model_and_cache, run4, tmp_path):
    model, cache = model_and_cache
    full = _losses(run4[0])
    out = tmp_path / "run"
    train_latent(_cfg(model, cache, out, steps=2))
    assert sorted(_losses(out)) == [1, 2]
    with pytest.raises(UserInputError, match="--resume"):  # a fresh run must not reuse the folder
        train_latent(_cfg(model, cache, out, steps=4))
    s = train_latent(_cfg(model, cache, out, steps=4, resume=True))
    assert s["started_at"] == 2
    got = _losses(out)
    assert sorted(got) == [1, 2, 3, 4]
    # batches, noise and timesteps are a pure function of (seed, step), and the checkpoint holds
    # the optimizer, LR schedule and EMA: the resumed run is the uninterrupted one, bit for bit
    assert got == full
    a = load_file(run4[0] / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the EMA export


def test_user_errors(model_and_cache, tmp_path, capsys):
    from earthgen.training.latent import main as latent_main

    model, cache = model_and_cache
    with pytest.raises(UserInputError, match="latent cache not found"):
        train_latent(_cfg(model, tmp_path / "missing.pt", tmp_path / "a"))
    with pytest.raises(UserInputError, match="--layout-dropout"):
        train_latent(_cfg(model, cache, tmp_path / "b", layout_dropout=1.0))
    with pytest.raises(UserInputError, match="--steps"):
        train_latent(_cfg(model, cache, tmp_path / "c", steps=0))
    with pytest.raises(UserInputError, match="no pipeline folder"):
        train_latent(_cfg(tmp_path, cache, tmp_path / "d"))
    capsys.readouterr()
    rc = latent_main(
        [
            "train",
            "--cache",
            str(tmp_path / "missing.pt"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "e"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "latent cache not found" in err


def test_cli_train_image_latent(model_and_cache, tmp_path, capsys):
    from earthgen.cli import main

    model, cache = model_and_cache
    base = ["train", "image-latent", "--model", str(model), "--cache", str(cache)]
    # user errors: one line on stderr, exit 2
    missing = str(tmp_path / "nope.pt")
    for extra, msg in (
        (["--out", str(tmp_path / "a"), "--data", "x"], "--data"),
        (["--out", str(tmp_path / "b"), "--cache", missing], "not found"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and msg in err
    assert main(["train", "image-latent", "--out", str(tmp_path / "c")]) == 2
    with pytest.raises(SystemExit) as e:  # a malformed value: argparse's exit 2
        main([*base, "--out", str(tmp_path / "d"), "--steps", "0"])
    assert e.value.code == 2
    # a smoke run through the CLI: --test-run's 4 steps, --steps overriding them
    out = tmp_path / "cli"
    assert main([*base, "--out", str(out), "--test-run", "--steps", "2", "--threads", "1"]) == 0
    assert "image-latent: steps 0..2" in capsys.readouterr().out
    assert sorted(_losses(out)) == [1, 2] and (out / "pipeline" / "model_index.json").is_file()
    cfg = json.loads((out / "train_config.json").read_text())
    assert (cfg["batch_size"], cfg["threads"], cfg["test_run"]) == (2, 1, True)


def test_cli_help_explains_the_steps(capsys):
    from earthgen.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "image-latent" in text and "python -m earthgen.training.latent" in text
    for step in ("convert-taef2", "init", "cache", "--cache"):
        assert step in text
