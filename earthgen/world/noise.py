"""Seamless value noise on a hashed global lattice.

Every value is a pure function of *world* coordinates (metres) and a seed: lattice values come
from an integer hash of (lattice index, seed), never from a random stream, so a tile computed on
its own equals the same window of a larger tile bit for bit (same operands, same order). That is
what makes unbounded worlds by tiling seamless.

Interpolation is the uniform cubic B-spline (C2-smooth, so analytic first derivatives are
continuous, which hill-shading and the erosion-like fBm need). Grids are evaluated separably with
four-tap gathers: cost O(4 * (lattice_rows * W + H * W)), independent of the wavelength.

Coordinates: ``x`` east, ``y`` north, metres. Grids are row-major with row 0 at the north edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)
_PS = np.uint64(0x165667B19E3779F9)


def hash_u64(*keys: np.ndarray | int) -> np.ndarray:
    """SplitMix64-style hash of integer keys (broadcast together) -> uint64 array."""
    primes = (_PX, _PY, _PS, np.uint64(0x27D4EB2F165667C5), np.uint64(0xD6E8FEB86659FD93))
    h = np.zeros(np.broadcast_shapes(*(np.shape(k) for k in keys)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            k64 = np.asarray(k, dtype=np.int64).astype(np.uint64)
            h = (h ^ (k64 * primes[i % len(primes)])) + np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(30)
            h *= _M1
            h ^= h >> np.uint64(27)
            h *= _M2
            h ^= h >> np.uint64(31)
    return h


def hash_uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1) (float64) from integer keys."""
    return (hash_u64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _bspline_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights ``[..., 4]`` for lattice points i-1..i+2 and their d/dt."""
    t2, t3 = t * t, t * t * t
    w = (
        np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1)
        / 6.0
    )
    dw = np.stack([-3 * (1 - t) ** 2, 9 * t2 - 12 * t, -9 * t2 + 6 * t + 3, 3 * t2], axis=-1) / 6.0
    return w, dw


# Standard deviation of B-spline smoothed uniform(-1, 1) lattice noise at a random point,
# used to bring octaves to unit variance.
_STD = 0.2769


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a north-up raster: ``x0``/``y0`` is the top-left corner in
    metres, ``gsd`` metres/pixel, ``shape`` (height, width)."""

    x0: float
    y0: float
    gsd: float
    shape: tuple[int, int]

    @property
    def xs(self) -> np.ndarray:  # [W] metres
        return self.x0 + (np.arange(self.shape[1]) + 0.5) * self.gsd

    @property
    def ys(self) -> np.ndarray:  # [H] metres (decreasing: row 0 is north)
        return self.y0 - (np.arange(self.shape[0]) + 0.5) * self.gsd

    def padded(self, pad: int) -> Grid:
        return Grid(
            self.x0 - pad * self.gsd,
            self.y0 + pad * self.gsd,
            self.gsd,
            (self.shape[0] + 2 * pad, self.shape[1] + 2 * pad),
        )

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X, Y)`` each ``[H, W]`` metres."""
        return np.meshgrid(self.xs, self.ys)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) metres."""
        h, w = self.shape
        return (self.x0, self.y0 - h * self.gsd, self.x0 + w * self.gsd, self.y0)


def _axis(coords: np.ndarray, spacing: float):
    u = coords / spacing
    i = np.floor(u)
    w, dw = _bspline_weights(u - i)
    i = i.astype(np.int64)
    lo = int(i.min()) - 1
    hi = int(i.max()) + 2
    return i - 1 - lo, w, dw / spacing, lo, hi


def value_noise_grid(
    grid: Grid, wavelength: float, seed: int, derivatives: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-variance value noise ``[H, W]`` (float64) with lattice spacing ``wavelength`` metres.

    With ``derivatives=True`` also returns ``d/dx`` and ``d/dy`` (per metre, y north).
    """
    ix, wx, dwx, lox, hix = _axis(grid.xs, wavelength)
    iy, wy, dwy, loy, hiy = _axis(grid.ys, wavelength)
    ly = np.arange(loy, hiy + 1)
    lx = np.arange(lox, hix + 1)
    lattice = (hash_uniform(ly[:, None], lx[None, :], seed) * 2.0 - 1.0) / _STD  # [Ly, Lx]

    def along_x(weights: np.ndarray) -> np.ndarray:  # [Ly, W]
        out = lattice[:, ix] * weights[:, 0]
        for k in range(1, 4):
            out = out + lattice[:, ix + k] * weights[:, k]
        return out

    def along_y(t: np.ndarray, weights: np.ndarray) -> np.ndarray:  # [H, W]
        out = t[iy] * weights[:, 0:1]
        for k in range(1, 4):
            out = out + t[iy + k] * weights[:, k : k + 1]
        return out

    tx = along_x(wx)
    value = along_y(tx, wy)
    if not derivatives:
        return value
    ddx = along_y(along_x(dwx), wy)
    ddy = along_y(tx, dwy)
    return value, ddx, ddy


def value_noise_points(
    x: np.ndarray, y: np.ndarray, wavelength: float, seed: int, derivatives: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same noise as :func:`value_noise_grid` at arbitrary points ``x``, ``y`` (any equal
    shapes, metres); with ``derivatives=True`` also ``d/dx`` and ``d/dy``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ux, uy = x / wavelength, y / wavelength
    ix, iy = np.floor(ux), np.floor(uy)
    wx, dwx = _bspline_weights(ux - ix)
    wy, dwy = _bspline_weights(uy - iy)
    ix = ix.astype(np.int64)
    iy = iy.astype(np.int64)
    k = np.arange(-1, 3)
    lat = (
        hash_uniform(iy[..., None, None] + k[:, None], ix[..., None, None] + k[None, :], seed) * 2.0
        - 1.0
    ) / _STD  # [..., 4, 4]
    rows = (lat * wx[..., None, :]).sum(-1)  # [..., 4] interpolated along x, per lattice row
    drows = (lat * dwx[..., None, :]).sum(-1)
    val = (rows * wy).sum(-1)
    ddx = (drows * wy).sum(-1)
    ddy = (rows * dwy).sum(-1)
    if not derivatives:
        return val
    return val, ddx / wavelength, ddy / wavelength


class Sampler:
    """Where fields are evaluated: a raster :class:`Grid` or a set of points. Field formulas
    written against a sampler run unchanged on both, so vector decisions (is this block's centre
    under water?) agree with the raster."""

    def __init__(self, x: np.ndarray, y: np.ndarray, gsd: float, grid: Grid | None = None):
        self.x = x
        self.y = y
        self.gsd = gsd  # octaves shorter than 2 * gsd are skipped, as on the raster
        self.grid = grid

    @classmethod
    def from_grid(cls, grid: Grid) -> Sampler:
        x, y = grid.mesh()
        return cls(x, y, grid.gsd, grid)

    @classmethod
    def from_points(cls, x: np.ndarray, y: np.ndarray, gsd: float) -> Sampler:
        return cls(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), gsd)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def noise(self, wavelength: float, seed: int, derivatives: bool = False):
        if self.grid is not None:
            return value_noise_grid(self.grid, wavelength, seed, derivatives)
        return value_noise_points(self.x, self.y, wavelength, seed, derivatives)

    def fbm(self, wavelength: float, seed: int, octaves: int = 5, gain: float = 0.5) -> np.ndarray:
        """Fractal sum of octaves (lacunarity 2), about unit variance."""
        total = np.zeros(self.shape)
        norm = 0.0
        amp, wl = 1.0, wavelength
        for o in range(octaves):
            if wl < 2.0 * self.gsd and o > 0:
                break
            total += amp * self.noise(wl, seed * 131 + o)
            norm += amp * amp
            amp *= gain
            wl /= 2.0
        return total / np.sqrt(norm)

    def eroded_fbm(
        self,
        wavelength: float,
        seed: int,
        octaves: int = 8,
        gain: float = 0.5,
        erosion: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Derivative-damped fBm: each octave's amplitude is divided by ``1 + erosion*|g|^2``
        where ``g`` is the gradient of the octaves before it, so slopes get little fine detail
        and valleys stay smooth (the look of eroded terrain). Returns ``(h, dh/dx, dh/dy)``:
        ``h`` dimensionless (about [-1.5, 1.5]), gradients per metre."""
        h = np.zeros(self.shape)
        gx = np.zeros(self.shape)
        gy = np.zeros(self.shape)
        acc_x = np.zeros(self.shape)
        acc_y = np.zeros(self.shape)
        amp, wl, norm = 1.0, wavelength, 0.0
        for o in range(octaves):
            if wl < 2.0 * self.gsd and o > 0:
                break
            n, dx, dy = self.noise(wl, seed * 131 + o, derivatives=True)
            acc_x += dx * wavelength * amp * 0.5  # scale-free: per base wavelength
            acc_y += dy * wavelength * amp * 0.5
            damp = 1.0 / (1.0 + erosion * (acc_x**2 + acc_y**2))
            h += amp * damp * n
            gx += amp * damp * dx  # the damping's own derivative is neglected (small, smooth)
            gy += amp * damp * dy
            norm += amp
            amp *= gain
            wl /= 2.0
        scale = 1.0 / (0.5 * norm + 0.5)
        return h * scale, gx * scale, gy * scale
