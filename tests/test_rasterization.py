"""The pure-torch 2DGS rasterizer: against an independent brute-force reference, gradients by
finite differences, rendering properties, input validation, and (GPU) against gsplat."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from earthgen.errors import MissingDependencyError, UserInputError
from renderers.cameras import intrinsics_from_fov, look_at, nadir_rig, orbit_rig
from renderers.rasterization import (
    depth_to_normal,
    rasterization_2dgs,
    rasterization_2dgs_torch,
    spherical_harmonics,
)

SH_C0 = 0.28209479177387814


# ---------------------------------------------------------------------------------------------
# Independent reference: plain ray/plane geometry, NumPy float64, one surfel at a time.
# ---------------------------------------------------------------------------------------------


def _np_rotmat(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
        ]
    )


def reference_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
    """Per camera: colour [H,W,D], alpha [H,W], world normal [H,W,3], sum w z, median z."""
    means, quats, scales, opacities, colors = (
        np.asarray(a, dtype=np.float64) for a in (means, quats, scales, opacities, colors)
    )
    out = []
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    for V, K in zip(np.asarray(viewmats, np.float64), np.asarray(Ks, np.float64), strict=True):
        R, t = V[:3, :3], V[:3, 3]
        rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T  # [H, W, 3]
        layers = []
        for m, q, s, o in zip(means, quats, scales, opacities, strict=True):
            rot = R @ _np_rotmat(q)
            p, a, b, n = R @ m + t, rot[:, 0] * s[0], rot[:, 1] * s[1], rot[:, 2]
            if n @ p > 0:
                n = -n
            # The projected 1-sigma ellipse's bounding-box centre, from a dense outline.
            th = np.linspace(0, 2 * np.pi, 40001)
            rim = p[None] + np.cos(th)[:, None] * a + np.sin(th)[:, None] * b
            uv = rim[:, :2] / rim[:, 2:] * np.diag(K)[:2] + K[:2, 2]
            centre = (uv.min(0) + uv.max(0)) / 2
            # Ray from the camera centre through each pixel centre, met with the surfel plane.
            hit = rays * ((n @ p) / (rays @ n))[..., None]
            d = hit - p
            rho3d = (d @ a / (a @ a)) ** 2 + (d @ b / (b @ b)) ** 2
            rho2d = 2 * ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)
            alpha = np.minimum(0.999, o * np.exp(-0.5 * np.minimum(rho3d, rho2d)))
            layers.append((p[2], alpha, R.T @ n))
        order = np.argsort([lay[0] for lay in layers], kind="stable")
        T = np.ones((height, width))
        done = np.zeros((height, width), bool)
        col = np.zeros((height, width, colors.shape[1]))
        nrm = np.zeros((height, width, 3))
        dep = np.zeros((height, width))
        med = np.zeros((height, width))
        for i in order:
            z, alpha, n = layers[i]
            active = ~done & (alpha >= 1 / 255)
            stop = active & (T * (1 - alpha) <= 1e-4)
            done |= stop
            use = active & ~stop
            w = np.where(use, alpha * T, 0.0)
            col += w[..., None] * colors[i]
            nrm += w[..., None] * n
            dep += w * z
            med = np.where(use & (T > 0.5), z, med)
            T = np.where(use, T * (1 - alpha), T)
        out.append(
            {"colors": col, "alphas": 1 - T, "normals": nrm, "D": dep, "median": med, "done": done}
        )
    return out


def random_scene(n=20, seed=0, n_cams=3, width=32, height=24, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([1.2, 1.0, 0.8])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.25 + 0.12
    opacities = torch.rand(n, generator=g) * 0.55 + 0.3
    colors = torch.rand(n, 3, generator=g)
    # A stack of nearly opaque surfels facing camera 0, so pixels hit the 1e-4 stop rule.
    k = 4
    means[:k] = torch.tensor([[0.0, 0.0, 0.0]]) + torch.arange(k)[:, None] * torch.tensor(
        [0.04, 0.02, 0.2]
    )
    quats[:k] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    scales[:k, :2] = 0.4
    opacities[:k] = torch.tensor([0.99, 0.97, 0.99, 0.95])
    eyes = torch.tensor([[0.5, -0.8, 6.0], [5.0, 2.0, 3.0], [-4.0, 3.5, 2.5]])[:n_cams]
    viewmats = look_at(eyes, torch.zeros(3))
    K = torch.tensor([[40.0, 0.0, width / 2 + 0.3], [0.0, 41.0, height / 2 - 0.2], [0.0, 0.0, 1.0]])
    Ks = K.expand(n_cams, 3, 3).clone()
    cast = (means, quats, scales, opacities, colors, viewmats, Ks)
    return tuple(t.to(dtype) for t in cast)


# ---------------------------------------------------------------------------------------------
# 1. Brute-force reference
# ---------------------------------------------------------------------------------------------


@functools.cache
def _reference_for_random_scene():
    return reference_render(*random_scene(), 32, 24)


@pytest.mark.parametrize("chunk_size", [1 << 20, 37])
def test_matches_bruteforce_reference(chunk_size):
    scene = random_scene()
    W, H = 32, 24
    ref = _reference_for_random_scene()
    assert any(r["done"].any() for r in ref), "the scene should exercise the transmittance stop"
    kw = {"chunk_size": chunk_size}
    col, alpha, nrm, surf, dist, med, meta = rasterization_2dgs_torch(
        *scene, W, H, render_mode="RGB+D", **kw
    )
    ed = rasterization_2dgs_torch(*scene, W, H, render_mode="ED", **kw)[0]
    assert col.shape == (3, H, W, 4) and alpha.shape == (3, H, W, 1) and nrm.shape == (3, H, W, 3)
    assert surf.shape == (3, H, W, 3) and dist.shape == (3, H, W, 1) and med.shape == (3, H, W, 1)
    assert (meta["radii"] > 0).all()
    for c, r in enumerate(ref):
        np.testing.assert_allclose(col[c, ..., :3].numpy(), r["colors"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(alpha[c, ..., 0].numpy(), r["alphas"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(nrm[c].numpy(), r["normals"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(col[c, ..., 3].numpy(), r["D"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(med[c, ..., 0].numpy(), r["median"], atol=1e-5, rtol=0)
        expected = r["D"] / np.maximum(r["alphas"], 1e-10)
        covered = r["alphas"] > 1e-3
        np.testing.assert_allclose(
            ed[c, ..., 0].numpy()[covered], expected[covered], atol=1e-5, rtol=1e-6
        )
    assert (dist == 0).all()


def test_float32_close_to_float64():
    scene64 = random_scene()
    scene32 = tuple(t.float() for t in scene64)
    a = rasterization_2dgs_torch(*scene64, 32, 24, render_mode="RGB+ED")
    b = rasterization_2dgs_torch(*scene32, 32, 24, render_mode="RGB+ED")
    assert b[0].dtype == torch.float32
    for i in (0, 1, 2, 5):
        torch.testing.assert_close(b[i].double(), a[i], atol=2e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# 2. Gradients
# ---------------------------------------------------------------------------------------------


def test_gradcheck():
    means = torch.tensor(
        [[0.05, -0.02, 0.0], [-0.2, 0.15, 0.6], [0.25, 0.1, -0.4]], dtype=torch.float64
    )
    quats = torch.tensor(
        [[0.9, 0.2, 0.1, 0.0], [0.8, -0.3, 0.2, 0.1], [1.0, 0.1, -0.3, 0.2]], dtype=torch.float64
    )
    scales = torch.tensor(
        [[0.35, 0.25, 0.1], [0.3, 0.4, 0.1], [0.45, 0.3, 0.1]], dtype=torch.float64
    )
    opacities = torch.tensor([0.6, 0.45, 0.7], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=torch.float64)
    V = look_at(torch.tensor([[0.3, -0.5, 4.0]]), torch.zeros(3)).double()
    K = torch.tensor([[[14.0, 0.0, 6.0], [0.0, 14.0, 5.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)

    # Random projections of the outputs keep the check cheap (one backward pass each) while
    # every input element is still compared with finite differences.
    gen = torch.Generator().manual_seed(3)
    proj = [torch.randn(1, 10, 12, k, generator=gen, dtype=torch.float64) for k in (4, 1, 3)]

    def render(m, q, s, o, c):
        out = rasterization_2dgs_torch(
            m, q, s, o, c, V, K, 12, 10, render_mode="RGB+ED", chunk_size=50
        )
        return tuple((out[i] * w).sum() for i, w in enumerate(proj))

    # No pixel sits on a threshold (alpha = 1/255, the 1e-4 stop, the 0.999 clamp).
    with torch.no_grad():
        a = rasterization_2dgs_torch(means, quats, scales, opacities, colors, V, K, 12, 10)[1]
    assert a.max() < 0.99
    inputs = tuple(
        t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)
    )
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(sum(render(*inputs)), inputs)
    assert all(g.abs().sum() > 1e-3 for g in grads)  # the check above is not vacuous


def test_backward_runs_through_median_and_distortion():
    scene = [t.clone().requires_grad_(True) for t in random_scene(n=8, n_cams=2)[:5]]
    V, K = random_scene(n=8, n_cams=2)[5:]
    out = rasterization_2dgs_torch(*scene, V, K, 32, 24, render_mode="RGB+ED", distloss=True)
    with torch.no_grad():  # the no-autograd path gives the same images
        ref = rasterization_2dgs_torch(*scene, V, K, 32, 24, render_mode="RGB+ED", distloss=True)
    for i in (0, 1, 2, 4, 5):
        torch.testing.assert_close(out[i].detach(), ref[i], atol=1e-10, rtol=1e-10)
    (out[0].sum() + out[4].sum() + out[5].sum() + out[2].sum()).backward()
    for t in scene:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert scene[0].grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# 3. Properties
# ---------------------------------------------------------------------------------------------


def fronto(zs, opacities, colors, scale=1e4, width=16, height=12):
    """Large surfels facing a camera at the origin looking along +z."""
    n = len(zs)
    means = torch.tensor([[0.0, 0.0, z] for z in zs])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).clone()
    scales = torch.full((n, 3), scale)
    K = torch.tensor([[[20.0, 0.0, width / 2], [0.0, 20.0, height / 2], [0.0, 0.0, 1.0]]])
    return (
        means,
        quats,
        scales,
        torch.tensor(opacities),
        torch.tensor(colors),
        torch.eye(4)[None],
        K,
    )


def test_single_opaque_surfel_fills_the_image():
    scene = fronto([5.0], [1.0], [[0.2, 0.4, 0.6]])
    col, alpha, nrm, _, _, med, meta = rasterization_2dgs(*scene, 16, 12, render_mode="RGB+ED")
    torch.testing.assert_close(alpha, torch.full_like(alpha, 0.999), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        col[..., :3], 0.999 * torch.tensor([0.2, 0.4, 0.6]).expand(1, 12, 16, 3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(col[..., 3], torch.full((1, 12, 16), 5.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        nrm, 0.999 * torch.tensor([0.0, 0.0, -1.0]).expand(1, 12, 16, 3), atol=1e-6, rtol=0
    )
    assert (med == 5.0).all() and meta["backend"] == "torch"
    assert meta["radii"].shape == (1, 1, 2) and meta["radii"].dtype == torch.int32


def test_backgrounds_fill_what_is_not_covered():
    scene = fronto([5.0], [0.6], [[1.0, 0.0, 0.0]])
    bg = torch.tensor([[0.0, 0.0, 1.0]])
    col, alpha = rasterization_2dgs(*scene, 16, 12, backgrounds=bg)[:2]
    torch.testing.assert_close(col, torch.tensor([1.0, 0.0, 0.0]) * alpha + bg * (1 - alpha))
    # Nothing visible: the background everywhere; its depth channel is 0.
    means, quats, scales, op, c, V, K = scene
    col, alpha = rasterization_2dgs(
        means * -1, quats, scales, op, c, V, K, 16, 12, backgrounds=bg, render_mode="RGB+D"
    )[:2]
    assert (alpha == 0).all()
    torch.testing.assert_close(col, torch.tensor([0.0, 0.0, 1.0, 0.0]).expand(1, 12, 16, 4))


def test_occlusion_and_median_and_distortion():
    # Listed back first: compositing sorts by depth.
    scene = fronto([6.0, 4.0], [0.5, 0.55], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    col, alpha, _, _, dist, med, _ = rasterization_2dgs(
        *scene, 16, 12, render_mode="RGB+ED", distloss=True
    )
    c = col[0, 6, 8]
    torch.testing.assert_close(
        c[:3], torch.tensor([0.55, 0.0, 0.225]), atol=1e-5, rtol=0
    )  # w = .55, .225
    assert float(c[3]) == pytest.approx((0.55 * 4 + 0.225 * 6) / 0.775, abs=1e-4)
    assert float(med[0, 6, 8]) == 4.0  # T in front of the far one is 0.45: not > 0.5
    assert float(dist[0, 6, 8]) == pytest.approx(2 * 0.55 * 0.225 * (6 - 4) ** 2, abs=1e-4)
    scene = fronto([6.0, 4.0], [0.4, 0.4], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    med = rasterization_2dgs(*scene, 16, 12, render_mode="RGB+D")[5]
    assert float(med[0, 6, 8]) == 6.0  # T in front of the far one is 0.6
    # An opaque near surfel hides the far one (which would take T to 1e-6 <= 1e-4: not drawn).
    scene = fronto([6.0, 4.0], [1.0, 1.0], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    col, alpha = rasterization_2dgs(*scene, 16, 12)[:2]
    torch.testing.assert_close(col[0, 6, 8], torch.tensor([0.999, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert float(alpha[0, 6, 8]) == pytest.approx(0.999, abs=1e-6)


def test_transmittance_stop_is_exclusive():
    # Alpha 0.98 layers: T = 0.02, then 4e-4 (> 1e-4, drawn), then 8e-6 (<= 1e-4: stop, not drawn).
    scene = fronto(
        [4.0, 5.0, 6.0], [0.98, 0.98, 0.98], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    )
    for chunk_size in (1 << 20, 1):
        col, alpha = rasterization_2dgs(*scene, 16, 12, chunk_size=chunk_size)[:2]
        torch.testing.assert_close(
            col[0, 6, 8], torch.tensor([0.98, 0.0196, 0.0]), atol=1e-6, rtol=0
        )
        assert float(alpha[0, 6, 8]) == pytest.approx(1 - 4e-4, abs=1e-6)


def test_sh_degree_zero_is_constant_colour_and_sh_bands():
    scene = random_scene(n=10, n_cams=2, dtype=torch.float32)
    coeffs = torch.randn(10, 16, 3)
    base = scene[4]
    dc = (base - 0.5) / SH_C0
    coeffs[:, 0] = dc
    a = rasterization_2dgs(*scene[:4], coeffs, *scene[5:], 32, 24, sh_degree=0)[0]
    b = rasterization_2dgs(*scene[:4], base, *scene[5:], 32, 24)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Bands 1-3 at axis directions (3DGS signs): y -> -C1 c1, z -> +C1 c2, x -> -C1 c3.
    c = torch.randn(16, 3)
    C1 = 0.4886025119029199
    for d, k, sign in (([0.0, 1.0, 0.0], 1, -1), ([0.0, 0.0, 2.0], 2, 1), ([3.0, 0.0, 0.0], 3, -1)):
        v = spherical_harmonics(1, torch.tensor(d), c)
        torch.testing.assert_close(v, SH_C0 * c[0] + sign * C1 * c[k])
    # degree 3 on +z: only m = 0 terms survive.
    v = spherical_harmonics(3, torch.tensor([0.0, 0.0, 1.0]), c)
    expect = (
        SH_C0 * c[0] + C1 * c[2] + 0.31539156525252005 * 2 * c[6] + 0.3731763325901154 * 2 * c[12]
    )
    torch.testing.assert_close(v, expect)
    with pytest.raises(UserInputError):
        spherical_harmonics(2, torch.zeros(3), torch.zeros(4, 3))


def test_per_view_colours():
    scene = random_scene(n=12, n_cams=3, dtype=torch.float32)
    means, quats, scales, op, _, V, K = scene
    per_view = torch.rand(3, 12, 5)
    out = rasterization_2dgs(means, quats, scales, op, per_view, V, K, 32, 24)[0]
    assert out.shape == (3, 24, 32, 5)
    for c in range(3):
        one = rasterization_2dgs(
            means, quats, scales, op, per_view[c], V[c : c + 1], K[c : c + 1], 32, 24
        )[0]
        torch.testing.assert_close(out[c], one[0])


def plane_surfels(slope=(0.3, 0.1), extent=6.0, step=0.15, scale=0.12):
    xs = torch.arange(-extent, extent + 1e-6, step)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    gx, gy = gx.flatten(), gy.flatten()
    means = torch.stack([gx, gy, slope[0] * gx + slope[1] * gy], -1)
    n = torch.nn.functional.normalize(torch.tensor([-slope[0], -slope[1], 1.0]), dim=0)
    # Quaternion taking +z to n.
    axis = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), n)
    ang = math.acos(float(n[2]))
    axis = axis / axis.norm().clamp_min(1e-12)
    q = torch.cat([torch.tensor([math.cos(ang / 2)]), axis * math.sin(ang / 2)])
    N = len(means)
    return (
        means,
        q.expand(N, 4).clone(),
        torch.full((N, 3), scale),
        torch.full((N,), 0.9),
        torch.rand(N, 3, generator=torch.Generator().manual_seed(1)),
        n,
    )


def test_depth_to_normal_on_a_tilted_plane():
    means, quats, scales, op, cols, n = plane_surfels()
    V = look_at(torch.tensor([[1.0, -2.0, 8.0]]), torch.zeros(3))
    K = intrinsics_from_fov(48, 40, 50.0)[None]
    for mode in ("expected", "median"):
        out = rasterization_2dgs(
            means, quats, scales, op, cols, V, K, 48, 40, render_mode="RGB+ED", depth_mode=mode
        )
        alpha, nrm, surf = out[1], out[2], out[3]
        inner = alpha[0, 1:-1, 1:-1, 0] > 0.99
        assert inner.float().mean() > 0.9
        dots = (surf[0, 1:-1, 1:-1] @ n)[inner]
        assert dots.min() > 0.98, mode
        rn = torch.nn.functional.normalize(nrm[0], dim=-1)[1:-1, 1:-1][inner]
        assert (rn @ n).min() > 0.999
        assert (surf[0, 0] == 0).all() and (surf[0, :, -1] == 0).all()
    with pytest.raises(UserInputError):
        depth_to_normal(torch.zeros(1, 4, 4), V, K)


def test_cameras_from_rigs():
    means, quats, scales, op, cols, _ = plane_surfels(
        slope=(0.0, 0.0), extent=4.0, step=0.25, scale=0.2
    )
    V, K = nadir_rig([0.0, 0.0, 0.0], altitude_m=10.0, ground_width_m=6.0, width=40, height=40)
    col, alpha, nrm = rasterization_2dgs(means, quats, scales, op, cols, V, K, 40, 40)[:3]
    assert alpha.min() > 0.99
    up = torch.nn.functional.normalize(nrm, dim=-1)
    assert (up[..., 2] > 0.999).all()  # ground normals face the camera: world +z
    V, K = orbit_rig([0.0, 0.0, 0.0], radius_m=12.0, elevation_deg=40.0, n=4, width=40, height=32)
    alpha = rasterization_2dgs(means, quats, scales, op, cols, V, K, 40, 32)[1]
    assert alpha.shape == (4, 32, 40, 1)
    assert (alpha[:, 16, 20, 0] > 0.99).all()  # the orbit looks at the centre of the ground


def test_culling_and_meta():
    scene = random_scene(n=6, n_cams=1, dtype=torch.float32)
    means = scene[0].clone()
    means[0] = torch.tensor([40.0, 0.0, 0.0])  # off to the side: off-image
    out = rasterization_2dgs(means, *scene[1:], 32, 24, near_plane=0.01, far_plane=100.0)
    meta = out[-1]
    assert meta["radii"][0, 0].tolist() == [0, 0]
    assert (meta["radii"][0, 1:] > 0).all()
    assert meta["means2d"].shape == (1, 6, 2) and meta["depths"].shape == (1, 6)
    assert meta["ray_transforms"].shape == (1, 6, 3, 3) and meta["normals"].shape == (1, 6, 3)
    assert meta["width"] == 32 and meta["height"] == 24 and meta["n_cameras"] == 1
    # far plane in front of everything: nothing drawn
    out = rasterization_2dgs(*scene, 32, 24, far_plane=1.0)
    assert (out[1] == 0).all() and (out[-1]["radii"] == 0).all()
    # radius_clip larger than every surfel
    assert (rasterization_2dgs(*scene, 32, 24, radius_clip=1000.0)[1] == 0).all()


def test_no_gaussians():
    e = torch.zeros(0, 3)
    col, alpha = rasterization_2dgs(
        e,
        torch.zeros(0, 4),
        e,
        torch.zeros(0),
        e,
        torch.eye(4)[None],
        intrinsics_from_fov(8, 6, 60.0)[None],
        8,
        6,
        backgrounds=torch.tensor([[0.1, 0.2, 0.3]]),
    )[:2]
    assert (alpha == 0).all() and torch.allclose(
        col, torch.tensor([0.1, 0.2, 0.3]).expand(1, 6, 8, 3)
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"means": torch.zeros(3, 2)}, "means"),
        ({"quats": torch.zeros(2, 4)}, "quats"),
        ({"scales": torch.zeros(3)}, "scales"),
        ({"opacities": torch.full((3,), 1.5)}, "opacities"),
        ({"colors": torch.zeros(4, 3)}, "colors"),
        ({"viewmats": torch.eye(3)[None]}, "viewmats"),
        ({"Ks": torch.eye(3)}, "Ks"),
        ({"width": 0}, "width"),
        ({"height": 2.5}, "height"),
        ({"render_mode": "RGBD"}, "render_mode"),
        ({"depth_mode": "mean"}, "depth_mode"),
        ({"distloss": True}, "distloss"),
        ({"sh_degree": 1}, "sh_degree"),
        ({"sh_degree": 4, "colors": torch.zeros(3, 25, 3)}, "sh_degree"),
        ({"backgrounds": torch.zeros(2, 3)}, "backgrounds"),
        ({"near_plane": 5.0, "far_plane": 1.0}, "far_plane"),
        ({"backend": "cuda"}, "backend"),
        ({"absgrad": True}, "absgrad"),
        ({"means": torch.zeros(3, 3, dtype=torch.int64)}, "floating"),
    ],
)
def test_bad_inputs_raise_user_input_error(change, match):
    args = {
        "means": torch.zeros(3, 3),
        "quats": torch.ones(3, 4),
        "scales": torch.ones(3, 3),
        "opacities": torch.full((3,), 0.5),
        "colors": torch.zeros(3, 3),
        "viewmats": torch.eye(4)[None],
        "Ks": intrinsics_from_fov(8, 6, 60.0)[None],
        "width": 8,
        "height": 6,
    }
    args.update(change)
    with pytest.raises(UserInputError, match=match):
        rasterization_2dgs(**args)


def test_backend_gsplat_without_gsplat(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gsplat", None)  # makes `import gsplat` fail
    scene = fronto([5.0], [1.0], [[0.2, 0.4, 0.6]])
    with pytest.raises(MissingDependencyError, match="earthgen\\[gpu\\]"):
        rasterization_2dgs(*scene, 16, 12, backend="gsplat")
    out = rasterization_2dgs(*scene, 16, 12, backend="auto")
    assert out[-1]["backend"] == "torch"


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, renderers.rasterization as r; assert 'gsplat' not in sys.modules; "
        "print(r.rasterization_2dgs.__name__)"
    )
    root = str(Path(__file__).resolve().parents[1])
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "rasterization_2dgs"


# ---------------------------------------------------------------------------------------------
# 4. gsplat on CUDA
# ---------------------------------------------------------------------------------------------


def _gsplat_ok() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _gsplat_ok(), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_gsplat_on_cuda(seed):
    import gsplat

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(seed)
    n = 400
    means = ((torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([3.0, 3.0, 1.0])).to(dev)
    quats = torch.randn(n, 4, generator=g).to(dev)
    scales = (torch.rand(n, 3, generator=g) * 0.2 + 0.1).to(dev)
    opacities = (torch.rand(n, generator=g) * 0.6 + 0.3).to(dev)
    colors = torch.rand(n, 3, generator=g).to(dev)
    V, K = orbit_rig([0.0, 0.0, 0.0], radius_m=9.0, elevation_deg=50.0, n=2, width=96, height=80)
    V, K = V.to(dev), K.to(dev)
    params = [t.clone().requires_grad_(True) for t in (means, colors, opacities)]

    def run(backend):
        m, c, o = params
        out = rasterization_2dgs(
            m, quats, scales, o, c, V, K, 96, 80, render_mode="RGB+ED", backend=backend
        )
        loss = out[0][..., :3].square().sum() + out[1].sum() + out[2].square().sum()
        grads = torch.autograd.grad(loss, params)
        return [t.detach() for t in out[:3]], grads, out[-1]

    (gc, ga, gn), ggrads, gmeta = run("gsplat")
    (tc, ta, tn), tgrads, tmeta = run("torch")
    assert gmeta["backend"] == "gsplat" and tmeta["backend"] == "torch"
    assert (
        rasterization_2dgs(means, quats, scales, opacities, colors, V, K, 96, 80)[-1]["backend"]
        == "gsplat"
    )
    for a, b in ((gc[..., :3], tc[..., :3]), (ga, ta), (gn, tn)):
        diff = (a - b).abs()
        assert diff.max() < 1e-3 and diff.mean() < 1e-4, (diff.max(), diff.mean())
    covered = ta[..., 0] > 0.5
    ed = (gc[..., 3] - tc[..., 3]).abs()[covered]
    assert ed.max() < 1e-3 * float(tc[..., 3].max()), ed.max()
    ok = (gmeta["radii"] > 0).all(-1) & (tmeta["radii"] > 0).all(-1)
    torch.testing.assert_close(gmeta["means2d"][ok], tmeta["means2d"][ok], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(
        gmeta["ray_transforms"][ok], tmeta["ray_transforms"][ok], atol=1e-2, rtol=1e-4
    )
    for a, b in zip(ggrads, tgrads, strict=True):
        rel = (a - b).norm() / b.norm().clamp_min(1e-12)
        assert rel < 2e-2, rel
    assert gsplat.__version__
