"""Cameras for rendering scenes: intrinsics from a field of view, world-to-camera matrices from
look-at, and the rigs aerial work needs (an orbit around a scene, nadir views over it).

Conventions (those of gsplat and OpenCV): camera looks along +z, x right, y down in the image;
``viewmats`` are world-to-camera ``[C, 4, 4]``; ``Ks`` are pinhole intrinsics ``[C, 3, 3]`` in
pixels. World: x east, y north, z up, metres (docs/conventions.md).
"""

from __future__ import annotations

import math

import torch

from earthgen_base.errors import UserInputError


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> torch.Tensor:
    """Pinhole ``K`` ``[3, 3]`` for a horizontal field of view (degrees), square pixels, centred."""
    if not 0.0 < fov_x_deg < 180.0:
        raise UserInputError(f"field of view must be in (0, 180) degrees, got {fov_x_deg}")
    if width <= 0 or height <= 0:
        raise UserInputError(f"image size must be positive, got {width}x{height}")
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(
    eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None
) -> torch.Tensor:
    """World-to-camera ``[..., 4, 4]`` for cameras at ``eye`` ``[..., 3]`` looking at ``target``."""
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32).expand_as(eye)
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up, dtype=torch.float32)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    up = up.expand_as(fwd)
    parallel = (
        torch.linalg.cross(fwd, up).norm(dim=-1, keepdim=True) < 1e-6
    )  # looking straight down/up
    up = torch.where(
        parallel, torch.tensor([0.0, 1.0, 0.0]).expand_as(fwd), up
    )  # then north is image-up
    right = torch.nn.functional.normalize(torch.linalg.cross(fwd, up), dim=-1)  # camera +x
    down = torch.linalg.cross(fwd, right)  # camera +y
    R = torch.stack([right, down, fwd], dim=-2)  # rows: camera axes in world coordinates
    t = -(R @ eye[..., None])[..., 0]
    m = torch.zeros(*eye.shape[:-1], 4, 4)
    m[..., :3, :3] = R
    m[..., :3, 3] = t
    m[..., 3, 3] = 1.0
    return m


def orbit_rig(
    center,
    radius_m: float,
    elevation_deg: float,
    n: int,
    width: int = 512,
    height: int = 512,
    fov_x_deg: float = 45.0,
    start_azimuth_deg: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` cameras on a circle around ``center`` (m), looking at it from ``elevation_deg`` above
    the horizon; azimuth clockwise from north. Returns ``(viewmats [n, 4, 4], Ks [n, 3, 3])``."""
    if n <= 0 or radius_m <= 0 or not 0 < elevation_deg <= 90:
        raise UserInputError("orbit needs n > 0, radius > 0 and elevation in (0, 90] degrees")
    c = torch.as_tensor(center, dtype=torch.float32)
    az = torch.deg2rad(torch.tensor(start_azimuth_deg) + torch.arange(n) * 360.0 / n)
    el = math.radians(elevation_deg)
    eye = torch.stack(
        [
            c[0] + radius_m * math.cos(el) * torch.sin(az),
            c[1] + radius_m * math.cos(el) * torch.cos(az),
            c[2] + radius_m * math.sin(el) * torch.ones(n),
        ],
        -1,
    )
    K = intrinsics_from_fov(width, height, fov_x_deg)
    return look_at(eye, c), K.expand(n, 3, 3).clone()


def nadir_rig(
    center,
    altitude_m: float,
    ground_width_m: float,
    width: int = 512,
    height: int = 512,
    grid: int = 1,
    overlap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-down cameras (north up in the image) on a ``grid x grid`` pattern whose images each
    cover ``ground_width_m`` metres across at the height of ``center``, overlapping by
    ``overlap``."""
    if altitude_m <= 0 or ground_width_m <= 0 or grid <= 0 or not 0 <= overlap < 1:
        raise UserInputError(
            "nadir rig needs altitude > 0, ground width > 0, grid > 0, overlap in [0, 1)"
        )
    c = torch.as_tensor(center, dtype=torch.float32)
    fov = math.degrees(2 * math.atan(0.5 * ground_width_m / altitude_m))
    step = ground_width_m * (1 - overlap)
    offs = (torch.arange(grid) - (grid - 1) / 2) * step
    ys, xs = torch.meshgrid(offs, offs, indexing="ij")
    eye = torch.stack(
        [
            c[0] + xs.flatten(),
            c[1] - ys.flatten(),
            torch.full((grid * grid,), float(c[2]) + altitude_m),
        ],
        -1,
    )
    target = eye - torch.tensor([0.0, 0.0, altitude_m])
    K = intrinsics_from_fov(width, height, fov)
    return look_at(eye, target), K.expand(grid * grid, 3, 3).clone()


def project(
    points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[N, 3]`` -> pixel coordinates ``[N, 2]`` and depths ``[N]`` for one camera."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = (cam @ K.T)[:, :2] / z[:, None]
    return uv, z
