"""Seams of a 256 m scene with the packaged 3D models (issue 22 §3): across the borders where
windows meet, the 99th percentile of the height steps between neighbouring columns is within one
voxel of the interior's (the same place of the 8-voxel lattice elsewhere), with the generator's
own heights and with heights from the data. ~50 CPU s; benchmarks/bench_seams.py records the
numbers for Monaco and Helsinki."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_seams", ROOT / "benchmarks" / "bench_seams.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_monaco_256m_has_no_seams(bench):
    r = bench.seams("monaco", size_m=256, steps=8, seed=0)
    for mode, s in r.items():
        assert s["windows"] == 25 and s["n_seam"] == 2048, mode
        # one voxel = 1 m
        assert s["seam_p99_m"] <= s["interior_p99_m"] + 1.0, (mode, s)
        assert s["seam_mean_m"] <= s["interior_mean_m"] + 1.0, (mode, s)
