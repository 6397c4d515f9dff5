"""2D Gaussian Splatting (2DGS, surfels) rasterizer in plain torch, with the call signature and
outputs of ``gsplat.rasterization_2dgs`` (gsplat 1.5.x), and a dispatcher that uses gsplat's CUDA
kernels when the tensors live on a GPU and gsplat is installed.

A surfel is a flat Gaussian disc: centre ``means`` (m), orientation ``quats`` (wxyz), tangent
scales ``scales[:, :2]`` (m; the third scale is ignored), ``opacities`` in [0, 1] and a colour (or
spherical-harmonic coefficients). Each camera pixel ray is intersected exactly with the surfel's
plane, the Gaussian is evaluated in the surfel's own coordinates, and surfels are alpha-composited
front to back in order of the camera-space depth of their centres. docs/rendering.md gives the
equations; conventions are those of :mod:`renderers.cameras` (OpenCV/gsplat: camera looks along
+z, x right, y down; ``viewmats`` world-to-camera ``[C, 4, 4]``; ``Ks`` ``[C, 3, 3]`` in pixels;
pixel ``(col, row)`` has its centre at ``(col + 0.5, row + 0.5)``). The torch backend draws
each surfel exactly where its alpha can reach 1/255 (gsplat: on the 16-px tiles its 3.33-sigma
box touches) and renders the L2 form of the depth distortion; docs/rendering.md lists the
differences from gsplat.

Importing this module builds nothing and does not import gsplat.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from earthgen_base.errors import MissingDependencyError, UserInputError

__all__ = [
    "RENDER_MODES",
    "depth_to_normal",
    "rasterization_2dgs",
    "rasterization_2dgs_torch",
    "render_surfels",
    "spherical_harmonics",
]

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
DEPTH_MODES = ("expected", "median")
BACKENDS = ("auto", "gsplat", "torch")

ALPHA_MIN = 1.0 / 255.0  # a surfel whose alpha at a pixel is below this is skipped there
ALPHA_MAX = 0.999  # alpha is clamped to this, so log(1 - alpha) stays finite
T_MIN = 1e-4  # a pixel stops at the first surfel that would take its transmittance to <= this
BOX_SIGMAS = 3.33  # projected box half-size = ceil(3.33 x the 1-sigma half-extent), per axis
FILTER_INV_SQUARE = 2.0  # screen-space low-pass filter: rho2d = 2 |pixel - means2d|^2 (px^2)
DEGENERATE_EPS = 1e-12  # |d| (m^2) at or below this: the surfel's image conic is degenerate
DEFAULT_CHUNK_SIZE = 1 << 20  # (surfel, pixel) pairs per chunk

_LOG_T_MIN = math.log(T_MIN)
_LOG_HALF = math.log(0.5)

# Real spherical harmonics (the 3DGS basis and sign conventions), degrees 0 to 3.
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
_SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


# ---------------------------------------------------------------------------------------------
# Small public helpers
# ---------------------------------------------------------------------------------------------


def spherical_harmonics(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluate real spherical harmonics of degree ``degree`` (0 to 3) along ``dirs``.

    Args:
        degree: highest band used; ``coeffs`` may hold more bands (the extra ones are ignored).
        dirs: viewing directions ``[..., 3]`` (any length; normalised here).
        coeffs: coefficients ``[..., K, 3]`` with ``K >= (degree + 1) ** 2``; leading dims
            broadcast with those of ``dirs``.

    Returns:
        ``[..., 3]`` values (no offset or clamp; the rasterizer adds 0.5 and clamps at 0).
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= 3:
        raise UserInputError(f"sh_degree must be an integer in 0..3, got {degree!r}")
    if dirs.shape[-1:] != (3,):
        raise UserInputError(f"dirs must be [..., 3], got {tuple(dirs.shape)}")
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3:
        raise UserInputError(f"SH coefficients must be [..., K, 3], got {tuple(coeffs.shape)}")
    need = (degree + 1) ** 2
    if coeffs.shape[-2] < need:
        raise UserInputError(
            f"sh_degree={degree} needs at least {need} coefficients per colour, "
            f"got K={coeffs.shape[-2]}"
        )
    c = coeffs
    out = _SH_C0 * c[..., 0, :]
    if degree == 0:
        return out
    d = F.normalize(dirs, dim=-1)
    x, y, z = (d[..., i : i + 1] for i in range(3))
    out = out - _SH_C1 * y * c[..., 1, :] + _SH_C1 * z * c[..., 2, :] - _SH_C1 * x * c[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + _SH_C2[0] * xy * c[..., 4, :]
        + _SH_C2[1] * yz * c[..., 5, :]
        + _SH_C2[2] * (2 * zz - xx - yy) * c[..., 6, :]
        + _SH_C2[3] * xz * c[..., 7, :]
        + _SH_C2[4] * (xx - yy) * c[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + _SH_C3[0] * y * (3 * xx - yy) * c[..., 9, :]
        + _SH_C3[1] * xy * z * c[..., 10, :]
        + _SH_C3[2] * y * (4 * zz - xx - yy) * c[..., 11, :]
        + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * c[..., 12, :]
        + _SH_C3[4] * x * (4 * zz - xx - yy) * c[..., 13, :]
        + _SH_C3[5] * z * (xx - yy) * c[..., 14, :]
        + _SH_C3[6] * x * (xx - 3 * yy) * c[..., 15, :]
    )


def depth_to_normal(depths: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """World-frame surface normals from a z-depth map.

    Every pixel centre is unprojected to a world point (``depth * K^-1 (x, y, 1)`` in the camera,
    then to the world); the normal is the normalised cross product of the central differences
    down and across the image, so it faces the camera. The one-pixel border is zero.

    Args:
        depths: camera z-depth (m) ``[C, H, W, 1]``.
        viewmats: world-to-camera ``[C, 4, 4]``.
        Ks: intrinsics ``[C, 3, 3]`` (pixels).

    Returns:
        Unit normals ``[C, H, W, 3]`` (world frame; zero on the border and where degenerate).
    """
    if depths.dim() != 4 or depths.shape[-1] != 1:
        raise UserInputError(f"depths must be [C, H, W, 1], got {tuple(depths.shape)}")
    C, H, W, _ = depths.shape
    if tuple(viewmats.shape) != (C, 4, 4) or tuple(Ks.shape) != (C, 3, 3):
        raise UserInputError(
            f"depth_to_normal needs viewmats [{C}, 4, 4] and Ks [{C}, 3, 3], got "
            f"{tuple(viewmats.shape)} and {tuple(Ks.shape)}"
        )
    dt, dev = depths.dtype, depths.device
    viewmats, Ks = viewmats.to(dt), Ks.to(dt)
    ys, xs = torch.meshgrid(
        torch.arange(H, device=dev, dtype=dt) + 0.5,
        torch.arange(W, device=dev, dtype=dt) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [H, W, 3]
    rays = torch.einsum("cij,hwj->chwi", torch.linalg.inv(Ks), pix)  # [C, H, W, 3], z = 1
    cam = rays * depths  # [C, H, W, 3] camera-frame points
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    world = torch.einsum("cji,chwj->chwi", R, cam - t[:, None, None, :])  # R^T (p - t)
    out = torch.zeros(C, H, W, 3, dtype=dt, device=dev)
    if H < 3 or W < 3:
        return out
    down = world[:, 2:, 1:-1] - world[:, :-2, 1:-1]
    right = world[:, 1:-1, 2:] - world[:, 1:-1, :-2]
    n = F.normalize(torch.linalg.cross(down, right, dim=-1), dim=-1)
    return F.pad(n, (0, 0, 1, 1, 1, 1))


# ---------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------


def _quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` (wxyz, normalised here)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*q.shape[:-1], 3, 3)


def _project(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, radius_clip):
    """Per (camera, surfel): camera-frame centre, ray transform, projected box, normal.

    Returns a dict of tensors shaped ``[C, N, ...]``; ``radii`` is 0 for culled surfels.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    p_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    rot = _quat_to_rotmat(quats)  # [N, 3, 3]
    rot_c = torch.einsum("cij,njk->cnik", R, rot)  # [C, N, 3, 3] surfel frame in the camera
    a = rot_c[..., 0] * scales[None, :, 0:1]  # [C, N, 3] tangent axis u (m)
    b = rot_c[..., 1] * scales[None, :, 1:2]  # [C, N, 3] tangent axis v (m)
    n = rot_c[..., 2]  # [C, N, 3] unit normal
    flip = ((n * p_c).sum(-1, keepdim=True) > 0).detach()
    normals = torch.where(flip, -n, n)  # faces the camera
    # T = K [a | b | p_c]: local (u, v, 1) -> homogeneous pixel (x w, y w, w).
    T = torch.einsum("cij,cnjk->cnik", Ks, torch.stack([a, b, p_c], -1))  # [C, N, 3, 3]
    T0, T1, T2 = T[..., 0, :], T[..., 1, :], T[..., 2, :]
    sgn = T.new_tensor([1.0, 1.0, -1.0])
    # The 1-sigma ellipse u^2 + v^2 = 1 maps to a conic whose dual is T diag(1,1,-1) T^T; its
    # vertical/horizontal tangent lines give the bounding box centre and half-extents.
    d = (T2 * T2 * sgn).sum(-1)  # [C, N]
    ok_d = d.abs() > DEGENERATE_EPS
    inv_d = 1.0 / torch.where(ok_d, d, torch.ones_like(d))
    mx = (T0 * T2 * sgn).sum(-1) * inv_d
    my = (T1 * T2 * sgn).sum(-1) * inv_d
    ex2 = mx * mx - (T0 * T0 * sgn).sum(-1) * inv_d
    ey2 = my * my - (T1 * T1 * sgn).sum(-1) * inv_d
    means2d = torch.stack([mx, my], -1) * ok_d[..., None]  # [C, N, 2]
    with torch.no_grad():
        ext = torch.stack([ex2, ey2], -1).clamp_min(1e-4).sqrt()  # [C, N, 2] px
        rad = torch.ceil(BOX_SIGMAS * ext).clamp_max(float(1 << 30))
        z = p_c[..., 2]
        m2 = means2d.detach()
        valid = (
            ok_d
            & (z >= near_plane)
            & (z <= far_plane)
            & torch.isfinite(rad).all(-1)
            & (rad.amax(-1) > radius_clip)
            & (m2[..., 0] + rad[..., 0] > 0)
            & (m2[..., 0] - rad[..., 0] < width)
            & (m2[..., 1] + rad[..., 1] > 0)
            & (m2[..., 1] - rad[..., 1] < height)
        )
        radii = torch.where(valid[..., None], rad, torch.zeros_like(rad)).to(torch.int32)
    return {
        "p_c": p_c,
        "ray_transforms": T,
        "means2d": means2d,
        "radii": radii,
        "depths": p_c[..., 2],
        "normals": normals,
    }


# ---------------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _footprints(
    T: torch.Tensor, means2d: torch.Tensor, opacities: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel boxes outside which a surfel's alpha is below 1/255.

    alpha >= 1/255 needs ``rho <= k2 = 2 ln(255 opacity)``: either inside the surfel ellipse
    ``u^2 + v^2 <= k2`` (its image is the conic with dual ``T diag(1, 1, -1/k2) T^T``, whose
    tangent lines give the exact bounding box; the whole image when that ellipse reaches the
    camera plane) or inside the screen-filter disc ``|pixel - means2d|^2 <= k2 / 2``.

    Args:
        T: ray transforms ``[M, 3, 3]``; means2d: ``[M, 2]`` px; opacities: ``[M]``.

    Returns:
        ``(lo [M, 2], size [M, 2])`` int64: first pixel column/row and number of columns/rows
        (0 when nothing can be drawn).
    """
    k2 = 2.0 * torch.log((255.0 * opacities).clamp_min(1e-30))  # [M]
    drawable = k2 > 0
    k2 = torch.where(drawable, k2, torch.ones_like(k2))
    sgn = torch.stack([torch.ones_like(k2), torch.ones_like(k2), -1.0 / k2], -1)  # [M, 3]
    T0, T1, T2 = T[:, 0], T[:, 1], T[:, 2]
    d = (T2 * T2 * sgn).sum(-1)
    inside = d < -DEGENERATE_EPS  # the ellipse's image is a bounded ellipse
    inv_d = 1.0 / torch.where(inside, d, -torch.ones_like(d))
    cx, cy = (T0 * T2 * sgn).sum(-1) * inv_d, (T1 * T2 * sgn).sum(-1) * inv_d
    ex = (cx * cx - (T0 * T0 * sgn).sum(-1) * inv_d).clamp_min(0).sqrt()
    ey = (cy * cy - (T1 * T1 * sgn).sum(-1) * inv_d).clamp_min(0).sqrt()
    r2d = (0.5 * k2).sqrt()
    big = torch.full_like(cx, float(4 * max(width, height)))
    x_lo = torch.where(inside, torch.minimum(cx - ex, means2d[:, 0] - r2d), -big)
    x_hi = torch.where(inside, torch.maximum(cx + ex, means2d[:, 0] + r2d), big)
    y_lo = torch.where(inside, torch.minimum(cy - ey, means2d[:, 1] - r2d), -big)
    y_hi = torch.where(inside, torch.maximum(cy + ey, means2d[:, 1] + r2d), big)
    lo = torch.stack([x_lo, y_lo], -1).nan_to_num(0.0)
    hi = torch.stack([x_hi, y_hi], -1).nan_to_num(0.0)
    pad = 1e-3 + 1e-6 * (lo.abs() + hi.abs())  # rounding margin (px); alpha is below 1/255 there
    lo = torch.ceil((lo - pad - 0.5).clamp(-1.0, float(max(width, height))))
    hi = torch.floor((hi + pad - 0.5).clamp(-1.0, float(max(width, height))))
    lo = lo.clamp_min(0)
    hi = torch.minimum(hi, hi.new_tensor([width - 1, height - 1]))
    size = (hi - lo + 1).clamp_min(0).long() * drawable[:, None]
    return lo.long(), size


def _surfel_coeffs(T: torch.Tensor, means2d: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """Per-surfel coefficients ``[12, M]`` of the pair alpha (see :func:`_pair_alpha`).

    With rows t0, t1, t2 of the ray transform T, the planes of constant pixel x and y are
    ``h_u = x t2 - t0`` and ``h_v = y t2 - t1`` in the surfel's (u, v, 1) coordinates; their
    intersection ``h_u x h_v = t0 x t1 + x (t1 x t2) + y (t2 x t0)`` is linear in (x, y).
    """
    t0, t1, t2 = T[:, 0], T[:, 1], T[:, 2]  # [M, 3]
    cross = torch.linalg.cross
    return torch.cat(
        [
            cross(t0, t1, dim=-1),
            cross(t1, t2, dim=-1),
            cross(t2, t0, dim=-1),
            means2d,
            opacities[:, None],
        ],
        -1,
    ).T.contiguous()


def _pair_alpha(
    cols: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha of (surfel, pixel) pairs.

    ``cols``: the 12 per-pair coefficient columns ``[P]`` (from :func:`_surfel_coeffs`); ``x, y``
    ``[P]`` pixel centres. Returns ``(alpha [P], ok [P])``; ``ok`` is false where the pixel ray
    is parallel to the surfel plane (alpha is then meaningless).
    """
    a0, a1, a2, b0, b1, b2, e0, e1, e2, mx, my, op = cols
    c0 = torch.addcmul(torch.addcmul(a0, x, b0), y, e0)
    c1 = torch.addcmul(torch.addcmul(a1, x, b1), y, e1)
    c2 = torch.addcmul(torch.addcmul(a2, x, b2), y, e2)
    ok = c2 != 0
    c2 = torch.where(ok, c2, torch.ones_like(c2))
    u, v = c0 / c2, c1 / c2
    rho3d = u * u + v * v  # squared distance from the centre in surfel sigmas
    dx, dy = x - mx, y - my
    rho2d = FILTER_INV_SQUARE * (dx * dx + dy * dy)  # screen-space low-pass filter
    alpha = (op * torch.exp(-0.5 * torch.minimum(rho3d, rho2d))).clamp_max(ALPHA_MAX)
    return alpha, ok


def _gather(cols: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """Rows ``idx`` of each column of ``cols [K, M]`` -> K tensors ``[P]``."""
    return [c.index_select(0, idx) for c in cols]


def _segment_exclusive_sum(vals: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Exclusive running sum of ``vals`` (float64) within runs of equal ``pix`` (sorted)."""
    cs = torch.cumsum(vals, 0)
    excl = cs - vals
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    seg = torch.cumsum(first, 0) - 1
    return excl - excl[first].index_select(0, seg)


def _free_counts(notdone: torch.Tensor, x0, y0, bw, bh, width, height) -> torch.Tensor:
    """Number of not-finished pixels in each box (integral image of ``notdone [H*W]``)."""
    S = torch.zeros(height + 1, width + 1, dtype=torch.int32, device=notdone.device)
    S[1:, 1:] = notdone.view(height, width).to(torch.int32).cumsum(0).cumsum(1)
    S = S.view(-1)
    W1 = width + 1
    xa, xb, ya, yb = x0, x0 + bw, y0 * W1, (y0 + bh) * W1
    return (
        S.index_select(0, yb + xb)
        - S.index_select(0, ya + xb)
        - S.index_select(0, yb + xa)
        + S.index_select(0, ya + xa)
    )


def _composite_view(coef, feat, x0, y0, bw, bh, width, height, chunk_size, need_grad, want_median):
    """Front-to-back compositing of the depth-sorted surfels of one view.

    Surfels are taken in depth order, in chunks of at most ``chunk_size`` (surfel, pixel) pairs.
    Per chunk, without autograd: enumerate the pairs of each surfel's pixel box, drop pairs at
    finished pixels, compute alphas, drop alpha < 1/255, sort the pairs by pixel (stable, so
    depth order holds within a pixel), take the exclusive per-pixel sum of log(1 - alpha) plus
    the pixel's log transmittance carried from earlier chunks, and keep the pairs whose
    transmittance after them stays above 1e-4 (a prefix of each pixel's run; a pixel whose run
    is cut is finished). Then, differentiably, the weights alpha * T of the kept pairs are
    recomputed and summed into the images.

    Args:
        coef: ``[12, M]`` surfel coefficients (:func:`_surfel_coeffs`), in depth order.
        feat: ``[M, F]`` features to composite.
        x0, y0, bw, bh: ``[M]`` int64 pixel boxes (first column/row, width, height).

    Returns:
        ``(acc [H*W, F], median_index [H*W] int64, -1 where none)``.
    """
    dev, dt = feat.device, feat.dtype
    HW = width * height
    M = feat.shape[0]
    acc = feat.new_zeros(HW, feat.shape[1])
    logT = torch.zeros(HW, dtype=torch.float64, device=dev)  # log transmittance so far
    done = torch.zeros(HW, dtype=torch.bool, device=dev)
    med = torch.full((HW,), -1, dtype=torch.long, device=dev)
    cnt = bw * bh
    coef_d = coef.detach()
    pixbase = y0 * width + x0
    any_done = False
    s = 0
    while s < M:
        # Pair budget for this chunk, counting only surfels that still touch unfinished pixels.
        cnt_r = cnt[s:]
        if any_done:
            free = _free_counts(~done, x0[s:], y0[s:], bw[s:], bh[s:], width, height)
            cnt_r = torch.where(free > 0, cnt_r, torch.zeros_like(cnt_r))
        cum_r = cnt_r.cumsum(0)
        e = s + max(int(torch.searchsorted(cum_r, chunk_size, right=True)), 1)
        npairs = int(cum_r[e - s - 1])
        cnt_c, start = cnt_r[: e - s], cum_r[: e - s] - cnt_r[: e - s]
        s0, s = s, e
        if npairs == 0:
            continue
        with torch.no_grad():
            gl = torch.repeat_interleave(torch.arange(e - s0, device=dev), cnt_c)  # local surfel
            local = torch.arange(npairs, device=dev) - start.index_select(0, gl)
            g = gl + s0
            wg = bw.index_select(0, g)
            q = torch.div(local, wg, rounding_mode="floor")
            pix = pixbase.index_select(0, g) + q * width + (local - q * wg)
            del gl, local, wg, q
            if any_done:
                keep = (~done).index_select(0, pix).nonzero().squeeze(1)
                g, pix = g.index_select(0, keep), pix.index_select(0, keep)
            yq = torch.div(pix, width, rounding_mode="floor")
            xf, yf = (pix - yq * width).to(dt) + 0.5, yq.to(dt) + 0.5
            alpha, ok = _pair_alpha(_gather(coef_d, g), xf, yf)
            hit = ((alpha >= ALPHA_MIN) & ok).nonzero().squeeze(1)
            if hit.numel() == 0:
                continue
            pix, order = torch.sort(pix.index_select(0, hit), stable=True)
            sel = hit.index_select(0, order)
            g, alpha = g.index_select(0, sel), alpha.index_select(0, sel)
            l1m = torch.log1p(-alpha.to(torch.float64))  # finite: alpha <= 0.999
            lb = logT.detach().index_select(0, pix) + _segment_exclusive_sum(l1m, pix)
            inc = (lb + l1m) > _LOG_T_MIN  # monotone along each pixel's run: a prefix
            stop = (~inc).nonzero().squeeze(1)
            if stop.numel():
                done.index_fill_(0, pix.index_select(0, stop), True)
                any_done = True
                inc = inc.nonzero().squeeze(1)
                pix, g, alpha, l1m, lb = (t.index_select(0, inc) for t in (pix, g, alpha, l1m, lb))
            if pix.numel() == 0:
                continue
        if need_grad:
            yq = torch.div(pix, width, rounding_mode="floor")
            xf, yf = (pix - yq * width).to(dt) + 0.5, yq.to(dt) + 0.5
            alpha = _pair_alpha(_gather(coef, g), xf, yf)[0]
            l1m = torch.log1p(-alpha.to(torch.float64))
            lb = logT.index_select(0, pix) + _segment_exclusive_sum(l1m, pix)
        w = alpha * torch.exp(lb).to(dt)  # blending weight alpha_i T_i
        contrib = w[:, None] * feat.index_select(0, g)
        if need_grad:
            acc = acc.index_add(0, pix, contrib)
            logT = logT.index_add(0, pix, l1m)
        else:
            acc.index_add_(0, pix, contrib)
            logT.index_add_(0, pix, l1m)
        if want_median:
            m = (lb.detach() > _LOG_HALF).nonzero().squeeze(1)
            med.scatter_reduce_(0, pix.index_select(0, m), g.index_select(0, m), reduce="amax")
    return acc, med


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise UserInputError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _validate(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    near_plane,
    far_plane,
    radius_clip,
    eps2d,
    sh_degree,
    tile_size,
    backgrounds,
    render_mode,
    distloss,
    depth_mode,
) -> dict:
    """Check shapes and scalar arguments (no device synchronisation). Returns sizes."""
    named = {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "viewmats": viewmats,
        "Ks": Ks,
    }
    for k, v in named.items():
        if not isinstance(v, torch.Tensor):
            raise UserInputError(f"{k} must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise UserInputError(f"{k} must be a floating-point tensor, got {v.dtype}")
    if backgrounds is not None and not isinstance(backgrounds, torch.Tensor):
        raise UserInputError(
            f"backgrounds must be a torch.Tensor or None, got {type(backgrounds).__name__}"
        )
    devices = {v.device for v in named.values()} | (
        {backgrounds.device} if backgrounds is not None else set()
    )
    if len(devices) > 1:
        raise UserInputError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise UserInputError(f"means must be [N, 3] (m), got {_shape(means)}")
    N = means.shape[0]
    if tuple(quats.shape) != (N, 4):
        raise UserInputError(f"quats must be [N, 4] = [{N}, 4] (wxyz), got {_shape(quats)}")
    if tuple(scales.shape) != (N, 3):
        raise UserInputError(f"scales must be [N, 3] = [{N}, 3] (m), got {_shape(scales)}")
    if tuple(opacities.shape) != (N,):
        raise UserInputError(f"opacities must be [N] = [{N}], got {_shape(opacities)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise UserInputError(f"viewmats must be [C, 4, 4] world-to-camera, got {_shape(viewmats)}")
    C = viewmats.shape[0]
    if C == 0:
        raise UserInputError("viewmats must hold at least one camera")
    if tuple(Ks.shape) != (C, 3, 3):
        raise UserInputError(f"Ks must be [C, 3, 3] = [{C}, 3, 3] (pixels), got {_shape(Ks)}")
    _check_int("width", width)
    _check_int("height", height)
    _check_int("tile_size", tile_size)
    if render_mode not in RENDER_MODES:
        raise UserInputError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if depth_mode not in DEPTH_MODES:
        raise UserInputError(f"depth_mode must be one of {DEPTH_MODES}, got {depth_mode!r}")
    if distloss and render_mode == "RGB":
        raise UserInputError(
            "distloss needs a depth channel: use render_mode D, ED, RGB+D or RGB+ED"
        )
    for k, v in (
        ("near_plane", near_plane),
        ("far_plane", far_plane),
        ("radius_clip", radius_clip),
        ("eps2d", eps2d),
    ):
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise UserInputError(f"{k} must be a number, got {v!r}")
    if not far_plane > near_plane:
        raise UserInputError(
            f"far_plane must be greater than near_plane, got {near_plane} and {far_plane}"
        )
    if radius_clip < 0 or eps2d < 0:
        raise UserInputError(f"radius_clip and eps2d must be >= 0, got {radius_clip} and {eps2d}")
    if sh_degree is None:
        if colors.dim() == 2 and colors.shape[0] == N:
            per_view = False
        elif colors.dim() == 3 and colors.shape[:2] == (C, N):
            per_view = True
        else:
            raise UserInputError(
                f"colors must be [N, D] or per view [C, N, D] with N={N}, C={C}, "
                f"got {_shape(colors)} (SH coefficients need sh_degree)"
            )
        D = colors.shape[-1]
    else:
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
            raise UserInputError(f"sh_degree must be None or an integer in 0..3, got {sh_degree!r}")
        if colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3:
            per_view = False
        elif colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[3] == 3:
            per_view = True
        else:
            raise UserInputError(
                f"with sh_degree set, colors must be SH coefficients [N, K, 3] or "
                f"[C, N, K, 3] with N={N}, C={C}, got {_shape(colors)}"
            )
        if colors.shape[-2] < (sh_degree + 1) ** 2:
            raise UserInputError(
                f"sh_degree={sh_degree} needs K >= {(sh_degree + 1) ** 2} coefficients, "
                f"got K={colors.shape[-2]}"
            )
        D = 3
    if D == 0:
        raise UserInputError("colors must have at least one channel")
    if backgrounds is not None:
        want = D if render_mode in ("RGB", "RGB+D", "RGB+ED") else 1
        if tuple(backgrounds.shape) != (C, want):
            raise UserInputError(
                f"backgrounds must be [C, {want}] = [{C}, {want}] for render_mode "
                f"{render_mode!r}, got {_shape(backgrounds)}"
            )
        if not backgrounds.is_floating_point():
            raise UserInputError(f"backgrounds must be floating point, got {backgrounds.dtype}")
    return {"N": N, "C": C, "D": D, "per_view": per_view}


# ---------------------------------------------------------------------------------------------
# Public rasterizers
# ---------------------------------------------------------------------------------------------


def rasterization_2dgs_torch(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    distloss: bool = False,
    depth_mode: str = "expected",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, dict
]:
    """Rasterize N surfels into C images, in plain (differentiable) torch, on any device.

    Same arguments and outputs as ``gsplat.rasterization_2dgs`` (gsplat 1.5.x). Units: means,
    scales and depths in metres (scene units); Ks, widths, radii and means2d in pixels.
    Differentiable with autograd with respect to every floating-point input.

    Args:
        means, quats, scales, opacities: surfel centres ``[N, 3]``, rotations ``[N, 4]`` (wxyz, not
            necessarily normalised), scales ``[N, 3]`` (only the first two, the tangent axes, are
            used) and opacities ``[N]`` in [0, 1].
        colors: ``[N, D]`` or per view ``[C, N, D]``; with ``sh_degree`` SH coefficients
            ``[N, K, 3]`` or ``[C, N, K, 3]`` (colour = max(SH(dir) + 0.5, 0), dir from the camera
            centre to the surfel centre).
        viewmats, Ks: world-to-camera ``[C, 4, 4]`` and intrinsics ``[C, 3, 3]``.
        width, height: image size (pixels).
        near_plane, far_plane: surfels whose centre depth is outside [near, far] are culled.
        radius_clip: surfels whose projected radius (px) is <= this are culled.
        eps2d, packed, sparse_grad, tile_size: accepted for signature compatibility; they change
            nothing here (the torch backend has no tiles, packed layout or sparse gradients;
            degenerate surfels are culled with a fixed tiny epsilon, not ``eps2d``).
        backgrounds: ``[C, D]`` colours composited behind (``[C, 1]`` for render modes D/ED).
        render_mode: "RGB", "D" (accumulated depth), "ED" (expected depth), "RGB+D", "RGB+ED".
        absgrad: not supported by this backend (raises).
        distloss: also render the depth distortion (needs a depth render mode).
        depth_mode: depth used for ``surf_normals``: "expected" (the depth channel) or "median".
        chunk_size: keyword only, not in gsplat: the most (surfel, pixel) pairs processed at once;
            it bounds peak memory (roughly 150 bytes a pair without autograd).

    Returns:
        ``(render_colors [C, H, W, X], render_alphas [C, H, W, 1], render_normals [C, H, W, 3]
        (world frame), surf_normals [C, H, W, 3] or None, render_distort [C, H, W, 1],
        render_median [C, H, W, 1], meta)``; X is D, 1 or D + 1 by render mode. ``meta`` holds
        ``radii [C, N, 2]`` (int32, 0 = culled), ``means2d [C, N, 2]``, ``depths [C, N]``,
        ``ray_transforms [C, N, 3, 3]`` (K [a | b | p_c]), ``normals [C, N, 3]`` (camera frame),
        ``opacities [C, N]``, ``width``, ``height``, ``tile_size``, ``n_cameras`` and a few more.
    """
    info = _validate(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        radius_clip,
        eps2d,
        sh_degree,
        tile_size,
        backgrounds,
        render_mode,
        distloss,
        depth_mode,
    )
    _check_int("chunk_size", chunk_size)
    if absgrad:
        raise UserInputError(
            "absgrad=True is not supported by the torch backend; call "
            "meta['means2d'].retain_grad() and take abs of the gradient yourself"
        )
    with torch.no_grad():
        bad = ~((opacities >= 0) & (opacities <= 1))
        if bool(bad.any()):
            raise UserInputError("opacities must lie in [0, 1] (apply a sigmoid to logits first)")
    N, C = info["N"], info["C"]
    dt = means.dtype
    quats, scales, opacities, colors = quats.to(dt), scales.to(dt), opacities.to(dt), colors.to(dt)
    viewmats, Ks = viewmats.to(dt), Ks.to(dt)
    if backgrounds is not None:
        backgrounds = backgrounds.to(dt)

    proj = _project(
        means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, radius_clip
    )
    depths, normals, radii = proj["depths"], proj["normals"], proj["radii"]

    if sh_degree is not None:
        R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
        cam_centres = -torch.einsum("cji,cj->ci", R, t)  # [C, 3] = -R^T t
        dirs = means[None] - cam_centres[:, None]  # [C, N, 3]
        shs = colors if info["per_view"] else colors[None].expand(C, -1, -1, -1)
        cols = torch.clamp_min(spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)  # [C, N, 3]
    else:
        cols = colors if info["per_view"] else colors[None].expand(C, -1, -1)  # [C, N, D]

    has_depth = render_mode != "RGB"
    if render_mode in ("D", "ED"):
        cols = depths[..., None]
    elif has_depth:
        cols = torch.cat([cols, depths[..., None]], -1)
    X = cols.shape[-1]
    want_median = True  # render_median is always returned, as gsplat does
    tensors = (means, quats, scales, opacities, colors, viewmats, Ks)
    need_grad = torch.is_grad_enabled() and any(v.requires_grad for v in tensors)

    outs, meds = [], []
    for c in range(C):
        vis = torch.nonzero(radii[c].amax(-1) > 0).squeeze(1)
        sel = vis[torch.argsort(depths[c, vis].detach(), stable=True)]  # front to back
        z = depths[c, sel]
        feats = [cols[c, sel], normals[c, sel], torch.ones_like(z)[:, None]]
        if distloss:
            shift = z.detach().median() if z.numel() else z.new_zeros(())
            zs = z - shift  # distortion is shift-invariant; centring keeps float32 accurate
            feats += [zs[:, None], (zs * zs)[:, None]]
        feat = torch.cat(feats, -1)
        coef = _surfel_coeffs(
            proj["ray_transforms"][c, sel], proj["means2d"][c, sel], opacities[sel]
        )
        lo, size = _footprints(
            proj["ray_transforms"][c, sel].detach(),
            proj["means2d"][c, sel].detach(),
            opacities[sel].detach(),
            width,
            height,
        )
        acc, med = _composite_view(
            coef,
            feat,
            lo[:, 0],
            lo[:, 1],
            size[:, 0],
            size[:, 1],
            width,
            height,
            chunk_size,
            need_grad,
            want_median,
        )
        outs.append(acc.reshape(height, width, -1))
        zpad = torch.cat([z, z.new_zeros(1)])
        meds.append(zpad[torch.where(med >= 0, med, z.numel())].reshape(height, width, 1))
    acc = torch.stack(outs)  # [C, H, W, F]
    render_colors = acc[..., :X]
    render_normals_c = acc[..., X : X + 3]
    render_alphas = acc[..., X + 3 : X + 4]
    if distloss:
        m1, m2s = acc[..., X + 4 : X + 5], acc[..., X + 5 : X + 6]
        render_distort = (2.0 * (render_alphas * m2s - m1 * m1)).clamp_min(0.0)
    else:
        render_distort = torch.zeros_like(render_alphas)
    render_median = torch.stack(meds)

    if backgrounds is not None:
        bg = backgrounds  # [C, X]: colours, or the depth channel's background for D/ED
        if render_mode in ("RGB+D", "RGB+ED"):
            bg = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
        render_colors = render_colors + bg[:, None, None, :] * (1.0 - render_alphas)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp_min(1e-10)], -1
        )
    surf_normals = None
    if render_mode in ("RGB+D", "RGB+ED"):
        dmap = render_colors[..., -1:] if depth_mode == "expected" else render_median
        surf_normals = depth_to_normal(dmap, viewmats, Ks)
    render_normals = torch.einsum("cji,chwj->chwi", viewmats[:, :3, :3], render_normals_c)  # R^T n

    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": proj["means2d"],
        "depths": depths,
        "ray_transforms": proj["ray_transforms"],
        "normals": normals,
        "opacities": opacities[None].expand(C, N),
        "tile_width": math.ceil(width / tile_size),
        "tile_height": math.ceil(height / tile_size),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "render_distort": render_distort,
        "backend": "torch",
    }
    return (
        render_colors,
        render_alphas,
        render_normals,
        surf_normals,
        render_distort,
        render_median,
        meta,
    )


def _gsplat_importable() -> bool:
    """gsplat imports, and its CUDA kernels exist (prebuilt, or compiled on first use: without
    nvcc gsplat imports but has none, and ``backend="auto"`` must fall back to torch)."""
    try:
        import gsplat  # noqa: F401
        from gsplat.cuda import _backend
    except Exception:  # ImportError, or a failed kernel build at import
        return False
    return getattr(_backend, "_C", None) is not None


def rasterization_2dgs(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    distloss: bool = False,
    depth_mode: str = "expected",
    *,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """2DGS rasterization with gsplat's signature, on the best available backend.

    ``backend``: "auto" uses gsplat's CUDA kernels when the tensors are on a CUDA device and
    gsplat imports, else the torch implementation; "gsplat" insists on gsplat (raises
    :class:`MissingDependencyError` when it is not installed, :class:`UserInputError` when the
    tensors are not on CUDA); "torch" always uses :func:`rasterization_2dgs_torch`.
    ``chunk_size`` only affects the torch backend. Arguments and returns: see
    :func:`rasterization_2dgs_torch`; ``meta["backend"]`` names the backend used.
    """
    if backend not in BACKENDS:
        raise UserInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    kwargs = {
        "near_plane": near_plane,
        "far_plane": far_plane,
        "radius_clip": radius_clip,
        "eps2d": eps2d,
        "sh_degree": sh_degree,
        "packed": packed,
        "tile_size": tile_size,
        "backgrounds": backgrounds,
        "render_mode": render_mode,
        "sparse_grad": sparse_grad,
        "absgrad": absgrad,
        "distloss": distloss,
        "depth_mode": depth_mode,
    }
    _validate(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        radius_clip,
        eps2d,
        sh_degree,
        tile_size,
        backgrounds,
        render_mode,
        distloss,
        depth_mode,
    )
    on_cuda = means.device.type == "cuda"
    if backend == "gsplat":
        try:
            import gsplat  # noqa: F401
        except ImportError:
            raise MissingDependencyError("gsplat", "gpu", "the CUDA 2DGS rasterizer") from None
        if not on_cuda:
            raise UserInputError(
                f"backend='gsplat' needs CUDA tensors, got tensors on {means.device}; "
                "use backend='torch' (or 'auto') on the CPU"
            )
        use_gsplat = True
    elif backend == "auto":
        use_gsplat = on_cuda and _gsplat_importable()
    else:
        use_gsplat = False
    if not use_gsplat:
        return rasterization_2dgs_torch(*args, **kwargs, chunk_size=chunk_size)
    import gsplat

    out = gsplat.rasterization_2dgs(*args, **kwargs)
    out[-1]["backend"] = "gsplat"
    return out


def render_surfels(
    surfels: dict, viewmats: torch.Tensor, Ks: torch.Tensor, size: int, background=(0.0, 0.0, 0.0)
) -> torch.Tensor:
    """Render a surfel dict (``means [M, 3]``, ``quats [M, 4]``, ``scales [M, 2|3]``,
    ``opacities [M]``, ``colors [M, 3]``) with :func:`rasterization_2dgs` from cameras
    ``viewmats [C, 4, 4]``, ``Ks [C, 3, 3]`` into ``[C, size, size, 3]`` over a ``background``
    colour. Two scales mean 2D surfels: the unused third is 1e-3 of the smaller one."""
    scales = surfels["scales"]
    if scales.shape[1] == 2:
        scales = torch.cat([scales, 1e-3 * scales.min(1, keepdim=True).values], 1)
    colors = surfels["colors"]
    bg = torch.tensor(background, dtype=colors.dtype, device=colors.device).expand(len(viewmats), 3)
    return rasterization_2dgs(
        surfels["means"],
        surfels["quats"],
        scales,
        surfels["opacities"],
        colors,
        viewmats,
        Ks,
        size,
        size,
        backgrounds=bg,
    )[0]
