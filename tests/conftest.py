"""Shared test helpers: where real fixture files are found."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FIXTURE_DIRS = [
    *([Path(os.environ["EARTHGEN_FIXTURES"])] if os.environ.get("EARTHGEN_FIXTURES") else []),
    HERE.parents[1] / "shared" / "fixtures",
    HERE / "data" / "fixtures",
]
EMBEDDED = {
    "osm/monaco-latest.osm.pbf": Path(
        str(resources.files("earthgen") / "assets" / "monaco-latest.osm.pbf")
    )
}


def find_fixture(rel: str) -> Path | None:
    """Path of fixture ``rel`` (e.g. ``"osm/winthrop.osm"``) or None when no copy exists."""
    for d in FIXTURE_DIRS:
        if (d / rel).exists():
            return d / rel
    p = EMBEDDED.get(rel)
    return p if p is not None and p.exists() else None


def fixture_path(rel: str) -> Path:
    """Path of fixture ``rel``; skips the test when it is nowhere to be found."""
    p = find_fixture(rel)
    if p is None:
        pytest.skip(f"fixture not available: {rel} (looked in {', '.join(map(str, FIXTURE_DIRS))})")
    return p


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on machines without CUDA (``-m gpu`` selects them)."""
    gpu = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for it in gpu:
            it.add_marker(skip)
