"""Core utilities: box geometry, the class table, atomic writers, the CLI's error handling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from earthgen import boxes as B
from earthgen.classes import CLASS_NAMES, NUM_CLASSES, PALETTE, class_fractions, colorize, legend
from earthgen.cli import main
from earthgen.io import atomic_dir, atomic_path, write_geotiff


def test_obb_corners_round_trip_and_area():
    rng = np.random.default_rng(0)
    obb = np.column_stack(
        [
            rng.uniform(0, 500, 50),
            rng.uniform(0, 500, 50),
            rng.uniform(2, 80, 50),
            rng.uniform(2, 80, 50),
            rng.uniform(-np.pi, np.pi - 1e-9, 50),
        ]
    )
    c = B.obb_to_corners(obb)
    back = B.corners_to_obb(c)
    np.testing.assert_allclose(back[:, :4], obb[:, :4], atol=1e-9)
    np.testing.assert_allclose(np.cos(back[:, 4] - obb[:, 4]), 1.0, atol=1e-9)
    np.testing.assert_allclose(B.polygon_area(c), obb[:, 2] * obb[:, 3], rtol=1e-9)


def test_hbb_corners_round_trip():
    xyxy = np.array([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 3.0, 3.0]])
    np.testing.assert_allclose(B.corners_to_hbb(B.hbb_to_corners(xyxy)), xyxy)


def test_rotated_iou_against_shapely():
    import shapely

    rng = np.random.default_rng(1)
    a = B.obb_to_corners(
        np.column_stack(
            [
                rng.uniform(0, 40, 20),
                rng.uniform(0, 40, 20),
                rng.uniform(5, 30, 20),
                rng.uniform(5, 30, 20),
                rng.uniform(-3, 3, 20),
            ]
        )
    )
    iou = B.box_iou(a, a[::-1])
    for i in range(0, 20, 3):
        for j in range(0, 20, 4):
            p, q = shapely.Polygon(a[i]), shapely.Polygon(a[::-1][j])
            ref = p.intersection(q).area / p.union(q).area
            assert iou[i, j] == pytest.approx(ref, abs=1e-9)
    np.testing.assert_allclose(np.diag(B.box_iou(a, a)), 1.0)
    # a box rotated by 45 degrees around its own centre: IoU of two squares = known value
    sq = B.obb_to_corners(np.array([[0, 0, 2, 2, 0], [0, 0, 2, 2, np.pi / 4]]))
    octagon = 8 * (np.sqrt(2) - 1)  # area of the intersection of the two unit-half squares
    assert B.box_iou(sq[:1], sq[1:])[0, 0] == pytest.approx(octagon / (8 - octagon), rel=1e-9)


def test_polygon_to_corners_is_tight_for_rectangles():
    import shapely

    c = B.obb_to_corners(np.array([[10, 20, 30, 12, 0.3]]))[0]
    got = B.polygon_to_corners(shapely.Polygon(c))
    assert B.polygon_area(got[None])[0] == pytest.approx(360.0, rel=1e-9)
    assert B.box_iou(got[None], c[None])[0, 0] == pytest.approx(1.0, abs=1e-9)


def test_boxset_validation_and_normalisation():
    bs = B.BoxSet(B.hbb_to_corners(np.array([[0, 0, 50, 25]])), ["building"])
    np.testing.assert_allclose(bs.normalized(100, 50), [[0, 0, 0.5, 0, 0.5, 0.5, 0, 0.5]])
    with pytest.raises(ValueError):
        B.BoxSet(np.zeros((2, 4, 2)), ["a"])


def test_class_table_is_stable():
    assert NUM_CLASSES == 13 and CLASS_NAMES[0] == "background" and CLASS_NAMES[1] == "building"
    assert len({tuple(c) for c in PALETTE}) == NUM_CLASSES  # colours are distinct
    sem = np.array([[0, 1], [1, 7]], dtype=np.uint8)
    assert colorize(sem).shape == (2, 2, 3)
    fr = class_fractions(sem)
    assert fr["building"] == 0.5 and sum(fr.values()) == pytest.approx(1.0)
    assert len(legend()["classes"]) == NUM_CLASSES
    with pytest.raises(ValueError):
        colorize(np.array([[NUM_CLASSES]], dtype=np.uint8))


def test_atomic_path_and_dir_leave_nothing_on_error(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("ok")
    assert target.read_text() == "ok"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x.txt").write_text("1")
            raise RuntimeError
    assert not (tmp_path / "d").exists()


def test_geotiff_round_trip(tmp_path):
    import rasterio
    from affine import Affine

    data = np.arange(3 * 300 * 280, dtype=np.float32).reshape(3, 300, 280)
    tr = Affine(0.5, 0, 733601.0, 0, -0.5, 3725139.0)
    write_geotiff(tmp_path / "x.tif", data, "EPSG:32616", tr, band_descriptions=["a", "b", "c"])
    with rasterio.open(tmp_path / "x.tif") as ds:
        np.testing.assert_array_equal(ds.read(), data)
        assert (
            ds.crs.to_epsg() == 32616 and ds.transform == tr and ds.descriptions == ("a", "b", "c")
        )


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("world", "layout", "demo"):
        assert cmd in out
    for cmd in ("world", "layout", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["world", "--gsd", "0", "--out", "X"], "must be a finite number > 0"),
        (["world", "--gsd", "-1", "--out", "X"], "must be a finite number > 0"),
        (["world", "--size", "100000", "--out", "X"], "too large"),
        (["world", "--size", "12x", "--out", "X"], "not an integer"),
        (["world", "--preset", "moon", "--out", "X"], "unknown world preset"),
        (["world", "--origin", "1", "--out", "X"], "expected 2"),
    ],
)
def test_cli_bad_input_clear_message_no_traceback(tmp_path, argv, message):
    argv = [a if a != "X" else str(tmp_path / "out") for a in argv]
    r = subprocess.run([sys.executable, "-m", "earthgen", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_world_writes_outputs(tmp_path):
    assert (
        main(
            [
                "world",
                "--seed",
                "2",
                "--size",
                "96",
                "--gsd",
                "1",
                "--out",
                str(tmp_path / "w"),
                "--voxel-size",
                "2",
            ]
        )
        == 0
    )
    assert (tmp_path / "w" / "rgb.png").exists() and (tmp_path / "w" / "voxels.ply").exists()
    assert (
        main(
            [
                "world",
                "--seed",
                "2",
                "--size",
                "48",
                "--gsd",
                "1",
                "--tiles",
                "2x1",
                "--no-voxels",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["tile_0_0", "tile_0_1"]
