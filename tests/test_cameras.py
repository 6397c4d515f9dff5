"""Camera conventions: intrinsics, look-at, orbit and nadir rigs."""

from __future__ import annotations

import math

import pytest
import torch

from earthgen.errors import UserInputError
from renderers.cameras import intrinsics_from_fov, look_at, nadir_rig, orbit_rig, project


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(640, 480, 90.0)
    assert K[0, 0] == pytest.approx(320.0) and K[1, 1] == pytest.approx(320.0)
    assert K[0, 2] == 320 and K[1, 2] == 240
    with pytest.raises(UserInputError):
        intrinsics_from_fov(64, 64, 180.0)


def test_look_at_is_a_rigid_transform_and_centres_the_target():
    eye = torch.tensor([[10.0, -20.0, 30.0], [0.0, 5.0, 2.0]])
    target = torch.tensor([1.0, 2.0, 3.0])
    V = look_at(eye, target)
    R = V[:, :3, :3]
    torch.testing.assert_close(
        R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0
    )
    assert torch.allclose(torch.linalg.det(R), torch.ones(2))
    K = intrinsics_from_fov(100, 80, 60.0)
    for i in range(2):
        uv, z = project(target[None], V[i], K)
        torch.testing.assert_close(uv[0], torch.tensor([50.0, 40.0]), atol=1e-4, rtol=0)
        assert z[0] == pytest.approx(float((eye[i] - target).norm()), rel=1e-5)


def test_nadir_view_has_north_up_and_east_right():
    V, K = nadir_rig([0.0, 0.0, 0.0], altitude_m=100.0, ground_width_m=200.0, width=200, height=200)
    uv, z = project(
        torch.tensor([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [100.0, 0.0, 0.0]]),
        V[0],
        K[0],
    )
    torch.testing.assert_close(uv[0], torch.tensor([100.0, 100.0]), atol=1e-4, rtol=0)
    assert uv[1, 0] > 100 and abs(uv[1, 1] - 100) < 1e-3  # east -> right
    assert uv[2, 1] < 100 and abs(uv[2, 0] - 100) < 1e-3  # north -> up
    assert uv[3, 0] == pytest.approx(200.0, abs=1e-3)  # ground width maps to the image width
    assert torch.allclose(z, torch.full((4,), 100.0))
    Vg, _ = nadir_rig([0.0, 0.0, 0.0], 100.0, 200.0, grid=2, overlap=0.5)
    assert Vg.shape == (4, 4, 4)


def test_orbit_cameras_all_see_the_centre():
    V, K = orbit_rig([5.0, 5.0, 0.0], radius_m=300.0, elevation_deg=35.0, n=8, width=64, height=64)
    assert V.shape == (8, 4, 4) and K.shape == (8, 3, 3)
    for i in range(8):
        uv, z = project(torch.tensor([[5.0, 5.0, 0.0]]), V[i], K[i])
        torch.testing.assert_close(uv[0], torch.tensor([32.0, 32.0]), atol=1e-3, rtol=0)
        assert z[0] == pytest.approx(300.0, rel=1e-5)
    # first camera is north of the centre, 35 degrees up
    cam_pos = -V[0, :3, :3].T @ V[0, :3, 3]
    assert cam_pos[1] > 5.0 and abs(float(cam_pos[0]) - 5.0) < 1e-3
    assert math.degrees(math.asin(float(cam_pos[2]) / 300.0)) == pytest.approx(35.0, abs=1e-3)
