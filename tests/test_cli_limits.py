"""Issue 24 (items 1, 2, 6): every numeric flag is checked for type, finiteness and range, sizes
and voxel counts against their limits, and output paths, before any work: a user mistake exits
2 with one line on stderr naming the flag, no traceback, no model load. Threads follow --threads,
else OMP_NUM_THREADS, else the CPUs this process may use (docs/limits.md)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from earthgen.cli import main

NAN, INF, NEG, ZERO, HUGE, WORD = "nan", "inf", "-1", "0", "9" * 20, "abc"
ALL = (NAN, INF, NEG, ZERO, HUGE, WORD)
NONZERO = (NAN, INF, NEG, HUGE, WORD)  # flags where 0 is a valid value

# the modules whose run() must never start in these tests
MODULES = ("generate", "world", "layout", "scene", "augment", "train", "eval_image", "eval_scene")


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Replace every command's run(): reaching it means a bad value got past the checks."""

    def boom(args):
        raise AssertionError(f"the command ran with {args}")

    for name in MODULES:
        monkeypatch.setattr(importlib.import_module(f"earthgen.commands.{name}"), "run", boom)


def call(argv: list[str], capsys) -> tuple[int, str, float]:
    capsys.readouterr()
    t0 = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err, time.perf_counter() - t0


def assert_user_error(argv: list[str], capsys, *needles: str) -> str:
    rc, err, seconds = call(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (argv, rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert seconds < 5, f"{argv}: {seconds:.1f} s: checks must come before any work"
    return lines[0]


def _base(command: str, tmp_path: Path) -> list[str]:
    data = tmp_path / "dataset"
    data.mkdir(exist_ok=True)
    return {
        "generate": ["generate", "--out", str(tmp_path / "g.png")],
        "world": ["world", "--out", str(tmp_path / "w")],
        "layout": ["layout", str(tmp_path / "x.osm"), "--out", str(tmp_path / "l")],
        "scene": ["scene", "--out", str(tmp_path / "s")],
        "augment": ["augment", str(data), "--out", str(tmp_path / "a")],
        "train": ["train", "image-ldm", "--out", str(tmp_path / "t")],
        "eval image": ["eval", "image"],
        "eval scene": ["eval", "scene"],
        "eval augment": [
            "eval",
            "augment",
            "--real",
            str(data),
            "--augmented",
            str(data),
            "--test",
            str(data),
        ],
    }[command]


# (command, flag, bad values)
CASES = [
    ("generate", "--gsd", ALL),
    ("generate", "--layout-scale", NONZERO),
    ("generate", "--control-end", ALL),
    ("generate", "--strength", ALL),
    ("generate", "--size", ALL),
    ("generate", "--steps", ALL),
    ("generate", "--guidance", NONZERO),
    ("generate", "--metadata-guidance", NONZERO),
    ("generate", "--seed", NONZERO),
    ("generate", "--threads", ALL),
    ("world", "--seed", NONZERO),
    ("world", "--size", ALL),
    ("world", "--gsd", ALL),
    ("world", "--tiles", ALL),
    ("world", "--voxel-size", ALL),
    ("world", "--threads", ALL),
    ("layout", "--size", ALL),
    ("layout", "--gsd", ALL),
    ("layout", "--max-pixels", ALL),
    ("scene", "--world", NONZERO),
    ("scene", "--gsd", ALL),
    ("scene", "--size-m", ALL),
    ("scene", "--steps", ALL),
    ("scene", "--texture-steps", ALL),
    ("scene", "--guidance", NONZERO),
    ("scene", "--overlap-m", NONZERO),
    ("scene", "--seed", NONZERO),
    ("scene", "--render-size", ALL),
    ("scene", "--views", ALL),
    ("scene", "--turntable", NONZERO),
    ("augment", "--n", ALL),
    ("augment", "--seed", NONZERO),
    ("augment", "--steps", ALL),
    ("augment", "--guidance", NONZERO),
    ("augment", "--inpaint-margin", NONZERO),
    ("augment", "--jitter", NONZERO),
    ("augment", "--angle-jitter", NONZERO),
    ("augment", "--copy-paste", NONZERO),
    ("augment", "--rebalance", NONZERO),
    ("augment", "--detector-steps", ALL),
    ("augment", "--iou", NONZERO + ("2",)),
    ("augment", "--tile", ALL),
    ("augment", "--tile-overlap", NONZERO + ("0.5",)),
    ("augment", "--detect-tile", ALL + ("100",)),
    ("eval augment", "--detect-tile", ALL),
    ("augment", "--score", NONZERO),
    ("augment", "--min-recall", NONZERO),
    ("train", "--resolution", ALL),
    ("train", "--batch-size", ALL),
    ("train", "--steps", ALL),
    ("train", "--lr", ALL),
    ("train", "--grad-accum", ALL),
    ("train", "--ema-decay", NONZERO),
    ("train", "--cond-dropout", NONZERO),
    ("train", "--save-every", ALL),
    ("train", "--log-every", ALL),
    ("train", "--seed", NONZERO),
    ("train", "--box-raster-dim", NONZERO),
    ("train", "--box-loss-weight", NONZERO),
    ("train", "--balance", NONZERO),
    ("train", "--layout-dropout", NONZERO),
    ("train", "--voxel-size", ALL),
    ("train", "--gsd", ALL),
    ("train", "--scene-size", ALL),
    ("train", "--views", ALL),
    ("train", "--image-size", ALL),
    ("train", "--pool", ALL),
    ("train", "--kl-weight", NONZERO),
    ("train", "--threads", ALL),
    ("eval image", "--steps", ALL),
    ("eval image", "--guidance", NONZERO),
    ("eval image", "--batch-size", ALL),
    ("eval image", "--control-end", NONZERO),
    ("eval image", "--seed", NONZERO),
    ("eval image", "--n-per-class", ALL),
    ("eval image", "--strength", ALL),
    ("eval image", "--n", ALL),
    ("eval image", "--threads", ALL),
    ("eval scene", "--n", ALL),
    ("eval scene", "--size-m", ALL),
    ("eval scene", "--steps", ALL),
    ("eval scene", "--guidance", NONZERO),
    ("eval scene", "--seed", NONZERO),
]


@pytest.mark.parametrize("command, flag, values", CASES, ids=[f"{c}-{f}" for c, f, _ in CASES])
def test_bad_number_exits_2_with_one_line(tmp_path, capsys, command, flag, values):
    for v in values:
        assert_user_error([*_base(command, tmp_path), f"{flag}={v}"], capsys, flag)


# comma lists: each number finite and in range
LISTS = [
    ("generate", "--center", ["nan,0", "0,inf", "91,0", "0,181", "a,b", "1"]),
    ("generate", "--bbox", ["nan,0,1,1", "0,0,1,inf", "1,0,0,1", "0,0,200,1", "a,b,c,d"]),
    (
        "generate",
        "--extend",
        ["nan,0,0,0", "inf,0,0,0", "-1,0,0,0", f"{HUGE},0,0,0", "0.5,0,0,0", "abc", "8,0,0"],
    ),
    ("world", "--origin", ["nan,0", "0,inf", "-1e300,0", "abc", "1"]),
    ("layout", "--center", ["nan,0", "0,inf", "abc"]),  # ranges: build_layout's own messages
    ("layout", "--bbox", ["nan,0,1,1", "0,0,1,inf", "abc"]),
    ("scene", "--center", ["nan,0", "0,inf", "abc"]),
]


@pytest.mark.parametrize("command, flag, values", LISTS, ids=[f"{c}-{f}" for c, f, _ in LISTS])
def test_bad_number_list_exits_2_with_one_line(tmp_path, capsys, command, flag, values):
    for v in values:
        assert_user_error([*_base(command, tmp_path), f"{flag}={v}"], capsys, flag)


def test_sizes_against_memory_and_voxel_caps(tmp_path, capsys):
    from earthgen.commands._args import MAX_VOXEL_COLUMNS, generate_max_pixels

    # the 520 GB allocation: refused at parse time, the limit named
    line = assert_user_error(
        ["generate", "--size", "100000", "--out", str(tmp_path / "g.png")], capsys, "--size"
    )
    assert "too large" in line
    side = int(generate_max_pixels() ** 0.5) + 8
    line = assert_user_error(
        ["generate", "--size", str(side), "--out", str(tmp_path / "g.png")], capsys, "--size"
    )
    assert str(generate_max_pixels()) in line
    # the issue's `world --voxel-size 0.001`: the voxel columns are counted before any tile
    line = assert_user_error(
        ["world", "--voxel-size", "0.001", "--out", str(tmp_path / "w")], capsys, "--voxel-size"
    )
    assert str(MAX_VOXEL_COLUMNS) in line and not (tmp_path / "w").exists()
    assert_user_error(["world", "--size", "9000", "--out", str(tmp_path / "w")], capsys, "--size")
    assert_user_error(
        ["scene", "--size-m", "100000", "--out", str(tmp_path / "s")], capsys, "--size-m"
    )
    assert_user_error(
        ["train", "structure-vae", "--resolution", "1024", "--out", str(tmp_path / "t")],
        capsys,
        "--resolution",
    )
    assert_user_error(
        ["layout", "x.osm", "--size", "40000", "--out", str(tmp_path / "l")], capsys, "--size"
    )


def test_generate_max_pixels_formula():
    from earthgen.commands._args import (
        GENERATE_BYTES_PER_PIXEL,
        MEMORY_FRACTION,
        generate_max_pixels,
    )

    assert generate_max_pixels(64 * 2**30) == int(
        MEMORY_FRACTION * 64 * 2**30 / GENERATE_BYTES_PER_PIXEL
    )
    assert generate_max_pixels() >= 4096 * 4096 // 4  # any machine that runs the tests


def test_output_paths_checked_before_work(tmp_path, capsys):
    png = str(tmp_path / "g.png")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("1")
    a_file = tmp_path / "file.txt"
    a_file.write_text("1")
    data = tmp_path / "dataset"
    data.mkdir()
    cases = [
        (["generate", "--out", "/proc/earthgen/x.png"], "cannot write"),
        (["generate", "--out", str(tmp_path / "g.bmp")], "extension '.bmp'"),
        (["generate", "--out", str(tmp_path / "g.xyz")], ".png or .jpg or .jpeg or .tif or .tiff"),
        (["generate", "--out", str(tmp_path / "g")], "no extension"),
        (["generate", "--out", str(tmp_path)], ".png"),  # a folder: no extension either
        (
            ["generate", "--out", png, "--layout", "x.osm", "--prior-out", str(tmp_path / "p.gif")],
            "--prior-out",
        ),
        (["world", "--out", "/proc/earthgen-w"], "cannot write"),
        (["world", "--out", str(a_file)], "not a folder"),
        (["world", "--out", str(a_file / "sub")], "not a folder"),
        (["world", "--out", str(full)], "not an empty folder"),
        (["layout", "x.osm", "--out", "/proc/earthgen-l"], "cannot write"),
        (["layout", "x.osm", "--out", str(full)], "not an empty folder"),
        (["scene", "--out", "/proc/earthgen-s"], "cannot write"),
        (["augment", str(data), "--out", str(full)], "not an empty folder"),
        (["augment", str(data), "--out", "/proc/earthgen-a"], "cannot write"),
        (["train", "image-ldm", "--out", "/proc/earthgen-t"], "cannot write"),
        (["eval", "image", "--out", str(tmp_path / "m.csv")], ".json"),
        (["eval", "scene", "--out", "/proc/earthgen/m.json"], "cannot write"),
    ]
    for argv, msg in cases:
        line = assert_user_error(argv, capsys, msg)
        assert "--out" in line or "--prior-out" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dataset",
        "file.txt",
        "full",
    ]  # nothing written


def test_train_refuses_an_earlier_runs_checkpoints_without_resume(tmp_path, capsys):
    out = tmp_path / "t"
    (out / "checkpoints" / "step_5").mkdir(parents=True)
    assert_user_error(["train", "image-ldm", "--out", str(out)], capsys, "--resume")


def test_subprocess_one_line_no_traceback(tmp_path):
    """The issue's cases through `python -m earthgen`: one stderr line, exit 2, quickly."""
    data = tmp_path / "d"
    data.mkdir()
    for argv, flag in (
        (["generate", "--size", "100000", "--out", str(tmp_path / "g.png")], "--size"),
        (["generate", "--guidance", "nan", "--out", str(tmp_path / "g.png")], "--guidance"),
        (["world", "--origin=nan,0", "--out", str(tmp_path / "w")], "--origin"),
        (["augment", str(data), "--iou", "2", "--out", str(tmp_path / "a")], "--iou"),
        (["generate", "--out", "/proc/earthgen/x.png"], "--out"),
    ):
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "earthgen", *argv], capture_output=True, text=True, timeout=60
        )
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and flag in lines[0], r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert time.perf_counter() - t0 < 30


def test_default_threads(monkeypatch):
    import os

    from earthgen.commands import _args

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _args.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    n = len(os.sched_getaffinity(0))
    q = _args.cpu_quota()
    assert _args.default_threads() == (min(n, q) if q else n)
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")  # not a count: ignored
    assert _args.default_threads() == (min(n, q) if q else n)


def test_threads_flag_sets_torch_threads(monkeypatch):
    import argparse

    import torch

    from earthgen.cli import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(argparse.Namespace(command="generate", threads=1)) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert set_threads(argparse.Namespace(command="generate", threads=None)) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_every_command_takes_threads_and_the_cli_imports_no_torch():
    from earthgen.cli import _leaf_parsers, build_parser

    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) >= 10
    assert all("--threads" in p._option_string_actions for p in leaves if p.prog != "earthgen")
    code = "import sys, earthgen.cli as c; c.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
