"""Folder outputs are all or nothing (issue 24 §3): earthgen.io.atomic_dir builds the folder in a
hidden sibling (.<name>.partial-*) renamed onto the target at the end, so a run killed with
SIGKILL, or failing, leaves no target folder; a finished one leaves the full folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from earthgen.errors import UserInputError
from earthgen.io import atomic_dir


def _partials(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.partial-*"))


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run to start writing")
        time.sleep(0.02)


def test_success_gives_the_full_folder(tmp_path):
    out = tmp_path / "sub" / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.partial-")
        assert not out.exists()  # nothing at the target while the body runs
        (tmp / "a.txt").write_text("a")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.txt").write_text("b")
    assert (out / "a.txt").read_text() == "a" and (out / "nested" / "b.txt").read_text() == "b"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporaries left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # the usual folder mode, not mkdtemp's 0700


def test_an_empty_existing_folder_is_filled(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with atomic_dir(out, merge=False) as tmp:
        (tmp / "x.txt").write_text("x")
    assert [p.name for p in out.iterdir()] == ["x.txt"]


def test_an_exception_inside_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_non_empty_target_refused_or_merged(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("k")
    with pytest.raises(UserInputError, match="not an empty folder"):
        with atomic_dir(out, merge=False):
            raise AssertionError("the body must not run")
    with atomic_dir(out, merge=True) as tmp:  # adding files into a folder that has others
        (tmp / "new.txt").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "new.txt"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:  # default: merge, since the folder is not empty
            (tmp / "never.txt").write_text("x")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "new.txt"]
    (tmp_path / "file").write_text("f")
    with pytest.raises(UserInputError, match="not a folder"):
        with atomic_dir(tmp_path / "file"):
            pass


def test_sigkill_inside_the_body_leaves_no_target(tmp_path):
    """A process killed while writing its folder: no target, only the hidden partial folder."""
    out = tmp_path / "result"
    code = textwrap.dedent(f"""
        import time
        from earthgen.io import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            for i in range(5):
                (tmp / f"part{{i}}.txt").write_text(str(i))
            (tmp / "READY").write_text("1")
            time.sleep(60)
            (tmp / "done.txt").write_text("done")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    _wait_for(lambda: any((p / "READY").exists() for p in _partials(tmp_path, "result")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    left = _partials(tmp_path, "result")
    assert len(left) == 1 and (left[0] / "part4.txt").exists()  # the documented leftover


@pytest.mark.slow
def test_killed_world_run_leaves_no_output_folder(tmp_path):
    """`earthgen world --tiles 3x3` killed with SIGKILL after its first tile: --out does not exist;
    the same command run to the end gives every tile."""
    out = tmp_path / "world"
    argv = [
        sys.executable,
        "-m",
        "earthgen",
        "world",
        "--seed",
        "1",
        "--size",
        "256",
        "--gsd",
        "1",
        "--tiles",
        "3x3",
        "--no-voxels",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def first_tile_written() -> bool:
        return any((p / "tile_0_0" / "meta.json").exists() for p in _partials(tmp_path, "world"))

    _wait_for(first_tile_written, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".world.partial-")] == []
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    tiles = sorted(p.name for p in out.iterdir())
    assert tiles == [f"tile_{r}_{c}" for r in range(3) for c in range(3)]
    assert all((out / t / "meta.json").exists() and (out / t / "rgb.png").exists() for t in tiles)
    assert not [p for p in out.rglob(".*")]  # no temporaries inside
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "not an empty folder" in again.stderr  # never mixed into


def test_world_cli_single_tile_is_complete(tmp_path):
    from earthgen.cli import main

    out = tmp_path / "w"
    assert (
        main(
            ["world", "--seed", "2", "--size", "48", "--gsd", "1", "--no-voxels", "--out", str(out)]
        )
        == 0
    )
    names = {p.name for p in out.iterdir()}
    assert {"rgb.png", "semantic.tif", "meta.json", "labels.json"} <= names
    assert not [n for n in names if n.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
