"""Man-made layer of the world: a street lattice, city blocks and the objects on them.

Streets follow a global lattice rotated by a per-world angle: lines ``k`` of each family sit at
``k * spacing + jitter(k)`` along the rotated axes ``u`` (family 0) and ``v`` (family 1). The block
``(i, j)`` lies between u-lines ``i, i+1`` and v-lines ``j, j+1``. A block's type, its buildings,
trees and vehicles are hashed from its indices, and its settlement density and water test are
evaluated at points of the same fields as the raster, so every object is a function of world
coordinates only and tiles agree at their borders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from earthgen.classes import ROAD_WIDTH_M
from earthgen.world.config import WorldConfig
from earthgen.world.noise import Sampler, hash_uniform
from earthgen.world.terrain import subseed, terrain_fields, water_mask

# block types
RURAL, HOUSES, APARTMENTS, INDUSTRIAL, PARK, PARKING = 0, 1, 2, 3, 4, 5
BLOCK_TYPES = ("rural", "houses", "apartments", "industrial", "park", "parking")
S_LATTICE, S_BLOCK, S_LINE, S_OBJ = 20, 21, 22, 23

ROOF_TILE = np.array(
    [
        [165, 82, 60],
        [140, 70, 55],
        [120, 110, 105],
        [90, 85, 85],
        [150, 100, 75],
        [185, 120, 90],
        [70, 72, 78],
    ],
    dtype=np.float64,
)
ROOF_FLAT = np.array(
    [
        [200, 200, 198],
        [170, 170, 172],
        [140, 142, 145],
        [215, 210, 200],
        [110, 112, 118],
        [185, 180, 170],
    ],
    dtype=np.float64,
)
ROOF_SHED = np.array(
    [[205, 208, 212], [150, 160, 175], [180, 180, 180], [120, 135, 150]], dtype=np.float64
)
CAR_COLORS = np.array(
    [
        [235, 235, 235],
        [20, 20, 22],
        [120, 122, 128],
        [180, 182, 186],
        [150, 20, 25],
        [30, 50, 110],
        [200, 200, 205],
        [60, 60, 62],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Lattice:
    """The rotated street lattice of one world. ``theta`` rotates (x, y) into (u, v)."""

    seed: int
    theta: float  # radians
    spacing: tuple[float, float]  # metres, u- and v-line spacing

    @classmethod
    def for_world(cls, seed: int, cfg: WorldConfig) -> Lattice:
        s = subseed(seed, S_LATTICE)
        r = hash_uniform(np.arange(3), s)
        theta = float(r[0] * np.pi / 2)
        su = cfg.block_m * (0.8 + 0.5 * r[1])
        sv = cfg.block_m * (1.0 + 0.9 * r[2])
        return cls(s, theta, (float(su), float(sv)))

    def to_uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.theta), np.sin(self.theta)
        return x * c + y * s, -x * s + y * c

    def to_xy(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.theta), np.sin(self.theta)
        return u * c - v * s, u * s + v * c

    def line_pos(self, family: int, k: np.ndarray) -> np.ndarray:
        """Position (m along u or v) of lines ``k`` of a family."""
        k = np.asarray(k, dtype=np.int64)
        jitter = hash_uniform(k, family, self.seed) - 0.5
        return k * self.spacing[family] + 0.3 * self.spacing[family] * jitter

    def locate(self, family: int, coord: np.ndarray) -> np.ndarray:
        """Index ``k`` with ``line_pos(k) <= coord < line_pos(k + 1)``."""
        k = np.floor(np.asarray(coord) / self.spacing[family]).astype(np.int64)
        k = np.where(coord < self.line_pos(family, k), k - 1, k)
        k = np.where(coord >= self.line_pos(family, k + 1), k + 1, k)
        return k

    def road_class(self, family: int, k: np.ndarray) -> np.ndarray:
        """0 major, 1 secondary, 2 minor for each line."""
        r = hash_uniform(np.asarray(k, dtype=np.int64), family, self.seed + 7)
        return np.where(r < 0.14, 0, np.where(r < 0.4, 1, 2))


ROAD_CLASSES = ("road_major", "road_secondary", "road_minor")
ROAD_WIDTHS = np.array([ROAD_WIDTH_M[c] for c in ROAD_CLASSES])


@dataclass
class Blocks:
    """Blocks ``(i, j)`` for ``i in [i0, i0 + ni)``, ``j in [j0, j0 + nj)``; arrays ``[ni, nj]``."""

    i0: int
    j0: int
    types: np.ndarray  # block type ids
    urban: np.ndarray  # settlement density at the centre
    # lines bounding the blocks: u positions [ni + 1], v positions [nj + 1], road class per line
    u_lines: np.ndarray
    v_lines: np.ndarray
    u_class: np.ndarray
    v_class: np.ndarray

    def type_at(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        ii = np.clip(i - self.i0, 0, self.types.shape[0] - 1)
        jj = np.clip(j - self.j0, 0, self.types.shape[1] - 1)
        inside = (
            (i >= self.i0)
            & (i < self.i0 + self.types.shape[0])
            & (j >= self.j0)
            & (j < self.j0 + self.types.shape[1])
        )
        return np.where(inside, self.types[ii, jj], RURAL)


def compute_blocks(lat: Lattice, seed: int, cfg: WorldConfig, bounds_xy, gsd: float) -> Blocks:
    """Blocks whose area may touch ``bounds_xy`` (xmin, ymin, xmax, ymax) metres."""
    xmin, ymin, xmax, ymax = bounds_xy
    cx = np.array([xmin, xmax, xmax, xmin])
    cy = np.array([ymin, ymin, ymax, ymax])
    u, v = lat.to_uv(cx, cy)
    i0 = int(lat.locate(0, np.array(u.min()))) - 1
    i1 = int(lat.locate(0, np.array(u.max()))) + 1
    j0 = int(lat.locate(1, np.array(v.min()))) - 1
    j1 = int(lat.locate(1, np.array(v.max()))) + 1
    ii = np.arange(i0, i1 + 2)
    jj = np.arange(j0, j1 + 2)
    u_lines = lat.line_pos(0, ii)
    v_lines = lat.line_pos(1, jj)
    ni, nj = len(ii) - 1, len(jj) - 1
    # sample the centre and four inset corners of each block
    uc = 0.5 * (u_lines[:-1] + u_lines[1:])
    vc = 0.5 * (v_lines[:-1] + v_lines[1:])
    du = 0.35 * (u_lines[1:] - u_lines[:-1])
    dv = 0.35 * (v_lines[1:] - v_lines[:-1])
    offs = np.array([[0, 0], [-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    U = uc[:, None, None] + offs[None, None, :, 0] * du[:, None, None]
    V = vc[None, :, None] + offs[None, None, :, 1] * dv[None, :, None]
    U, V = np.broadcast_arrays(U, V)
    X, Y = lat.to_xy(U, V)
    f = terrain_fields(Sampler.from_points(X, Y, gsd), seed, cfg)
    wet = f["water"].any(axis=-1)
    steep = np.hypot(f["grad_x"][..., 0], f["grad_y"][..., 0]) > 0.18
    urban = f["urban"][..., 0]
    r = hash_uniform(ii[:-1, None], jj[None, :-1], subseed(seed, S_BLOCK))
    types = np.full((ni, nj), RURAL, dtype=np.int64)
    built = (urban > 0.35) & ~wet & ~steep
    mid = urban > 0.75
    dense = urban > 1.1
    t_houses = np.where(r < 0.08, PARK, np.where(r < 0.12, PARKING, HOUSES))
    t_mid = np.where(
        r < 0.08,
        PARK,
        np.where(
            r < 0.15,
            PARKING,
            np.where(r < 0.27, INDUSTRIAL, np.where(r < 0.55, APARTMENTS, HOUSES)),
        ),
    )
    t_dense = np.where(
        r < 0.07, PARK, np.where(r < 0.16, PARKING, np.where(r < 0.24, INDUSTRIAL, APARTMENTS))
    )
    types = np.where(built, np.where(dense, t_dense, np.where(mid, t_mid, t_houses)), types)
    return Blocks(
        i0, j0, types, urban, u_lines, v_lines, lat.road_class(0, ii), lat.road_class(1, jj)
    )


@dataclass
class CityObjects:
    """Vector objects in world metres. Corners ``[N, 4, 2]`` walk each rectangle in order."""

    road_p0: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [R, 2]
    road_p1: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [R, 2]
    road_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [R] 0..2
    bld_corners: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2)))
    bld_height: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [B] m
    bld_kind: list = field(default_factory=list)  # house/apartment/shed
    bld_roof: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [B, 3] rgb
    tank_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [T, 2]
    tank_r: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] m
    tank_height: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] m
    tree_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    tree_r: np.ndarray = field(default_factory=lambda: np.zeros(0))  # crown radius, m
    tree_height: np.ndarray = field(default_factory=lambda: np.zeros(0))
    veh_corners: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2)))
    veh_large: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    veh_color: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


def _rects_uv(lat: Lattice, uc, vc, wu, wv) -> np.ndarray:
    """Axis-aligned rectangles in (u, v) -> ``[N, 4, 2]`` corners in (x, y), counter-clockwise."""
    uc, vc, wu, wv = (np.asarray(a, dtype=np.float64) for a in (uc, vc, wu, wv))
    su = np.array([-1, 1, 1, -1]) * 0.5
    sv = np.array([-1, -1, 1, 1]) * 0.5
    U = uc[:, None] + su[None] * wu[:, None]
    V = vc[:, None] + sv[None] * wv[:, None]
    x, y = lat.to_xy(U, V)
    return np.stack([x, y], axis=-1)


def generate_objects(
    lat: Lattice, blocks: Blocks, seed: int, cfg: WorldConfig, gsd: float
) -> CityObjects:
    """Roads, buildings, tanks, trees and vehicles of all blocks in ``blocks``."""
    so = subseed(seed, S_OBJ)
    ni, nj = blocks.types.shape
    built = blocks.types != RURAL
    uL, vL = blocks.u_lines, blocks.v_lines
    p0, p1, rc = [], [], []
    # road segments on u-lines (constant u, along v) between v-lines j, j+1
    arterial = blocks.urban > -0.25
    for fam in (0, 1):
        if fam == 0:
            n_lines, n_seg = ni + 1, nj
        else:
            n_lines, n_seg = nj + 1, ni
        for a in range(1, n_lines - 1):
            cls_line = (blocks.u_class if fam == 0 else blocks.v_class)[a]
            for b in range(n_seg):
                if fam == 0:
                    left, right = built[a - 1, b], built[a, b]
                    art = arterial[a - 1, b] and arterial[a, b]
                    q0, q1 = (uL[a], vL[b]), (uL[a], vL[b + 1])
                else:
                    left, right = built[b, a - 1], built[b, a]
                    art = arterial[b, a - 1] and arterial[b, a]
                    q0, q1 = (uL[b], vL[a]), (uL[b + 1], vL[a])
                if left or right or (cls_line == 0 and art):
                    p0.append(q0)
                    p1.append(q1)
                    rc.append(cls_line)
    obj = CityObjects()
    if p0:
        P0 = np.array(p0)
        P1 = np.array(p1)
        x0, y0 = lat.to_xy(P0[:, 0], P0[:, 1])
        x1, y1 = lat.to_xy(P1[:, 0], P1[:, 1])
        obj.road_p0 = np.stack([x0, y0], -1)
        obj.road_p1 = np.stack([x1, y1], -1)
        obj.road_class = np.array(rc, dtype=np.int64)

    B_uc, B_vc, B_wu, B_wv, B_h, B_kind, B_roof = [], [], [], [], [], [], []
    T_u, T_v, T_r, T_h = [], [], [], []
    tr_u, tr_v, tr_r, tr_h = [], [], [], []
    V_uc, V_vc, V_wu, V_wv, V_large = [], [], [], [], []
    for a in range(ni):
        for b in range(nj):
            t = blocks.types[a, b]
            if t == RURAL:
                continue
            gi, gj = blocks.i0 + a, blocks.j0 + b
            rng = np.random.default_rng([so, gi & 0xFFFFFFFF, gj & 0xFFFFFFFF])
            # inner block rectangle: road half widths + sidewalk
            hw = lambda c: 0.5 * ROAD_WIDTHS[c] + 2.0  # noqa: E731
            u_lo = uL[a] + hw(blocks.u_class[a])
            u_hi = uL[a + 1] - hw(blocks.u_class[a + 1])
            v_lo = vL[b] + hw(blocks.v_class[b])
            v_hi = vL[b + 1] - hw(blocks.v_class[b + 1])
            du, dv = u_hi - u_lo, v_hi - v_lo
            if du < 20 or dv < 20:
                continue
            if t == HOUSES:
                _houses(
                    rng,
                    u_lo,
                    u_hi,
                    v_lo,
                    v_hi,
                    B_uc,
                    B_vc,
                    B_wu,
                    B_wv,
                    B_h,
                    B_kind,
                    B_roof,
                    tr_u,
                    tr_v,
                    tr_r,
                    tr_h,
                )
            elif t == APARTMENTS:
                nu = 1 + int(du > 70) + int(du > 130)
                nv = 1 + int(dv > 70) + int(dv > 130)
                cu = du / nu
                cv = dv / nv
                for x in range(nu):
                    for y in range(nv):
                        m = rng.uniform(4, 9, size=2)
                        wu_, wv_ = cu - 2 * m[0], cv - 2 * m[1]
                        if rng.random() < 0.35:  # slab building: thinner along one axis
                            if wu_ > wv_:
                                wv_ = min(wv_, rng.uniform(14, 20))
                            else:
                                wu_ = min(wu_, rng.uniform(14, 20))
                        if wu_ < 8 or wv_ < 8:
                            continue
                        B_uc.append(u_lo + (x + 0.5) * cu)
                        B_vc.append(v_lo + (y + 0.5) * cv)
                        B_wu.append(wu_)
                        B_wv.append(wv_)
                        B_h.append(float(rng.uniform(12, 45)))
                        B_kind.append("apartment")
                        B_roof.append(ROOF_FLAT[rng.integers(len(ROOF_FLAT))])
                for _ in range(int(rng.integers(0, 5))):
                    tr_u.append(rng.uniform(u_lo, u_hi))
                    tr_v.append(v_lo + rng.choice([1.5, dv - 1.5]))
                    tr_r.append(rng.uniform(2.0, 3.5))
                    tr_h.append(rng.uniform(6, 12))
            elif t == INDUSTRIAL:
                frac = rng.uniform(0.5, 0.7)
                split = u_lo + frac * du
                m = 5.0
                shed_v = min(dv - 2 * m, rng.uniform(35, 90))
                B_uc.append(0.5 * (u_lo + split))
                B_vc.append(v_lo + m + 0.5 * shed_v)
                B_wu.append(split - u_lo - 2 * m)
                B_wv.append(shed_v)
                B_h.append(float(rng.uniform(8, 15)))
                B_kind.append("shed")
                B_roof.append(ROOF_SHED[rng.integers(len(ROOF_SHED))])
                r = rng.uniform(5.0, 12.0)
                cols = max(int((u_hi - split - 4) // (2 * r + 3)), 0)
                rows = max(int((dv - 4) // (2 * r + 3)), 0)
                rows = min(rows, 3)
                for x in range(cols):
                    for y in range(rows):
                        T_u.append(split + 2 + r + x * (2 * r + 3) + 1.5)
                        T_v.append(v_lo + 2 + r + y * (2 * r + 3) + 1.5)
                        T_r.append(r)
                        T_h.append(float(rng.uniform(8, 16)))
                # trucks parked in the yard
                for k in range(int(rng.integers(0, 5))):
                    V_uc.append(u_lo + m + 6 + k * 5.0)
                    V_vc.append(min(v_hi - 8, v_lo + m + shed_v + 9))
                    V_wu.append(2.5)
                    V_wv.append(float(rng.uniform(9, 14)))
                    V_large.append(True)
            elif t == PARK:
                n = int(du * dv / rng.uniform(90, 220))
                tr_u.extend(rng.uniform(u_lo + 2, u_hi - 2, n))
                tr_v.extend(rng.uniform(v_lo + 2, v_hi - 2, n))
                tr_r.extend(rng.uniform(2.0, 5.0, n))
                tr_h.extend(rng.uniform(6, 16, n))
            elif t == PARKING:
                occ = rng.uniform(0.35, 0.9)
                row = v_lo + 3.0
                while row + 5.0 <= v_hi - 2:
                    ncar = int((du - 6) // 2.6)
                    us = u_lo + 3 + 1.3 + 2.6 * np.arange(ncar)
                    keep = rng.random(ncar) < occ
                    for uu in us[keep]:
                        V_uc.append(uu)
                        V_vc.append(row + 2.5 + rng.uniform(-0.3, 0.3))
                        V_wu.append(float(rng.uniform(1.75, 1.95)))
                        V_wv.append(float(rng.uniform(4.2, 4.9)))
                        V_large.append(False)
                    row += 5.0 + (6.5 if (int((row - v_lo) // 5.0) % 2 == 1) else 0.0)
    # vehicles on road segments (driving along the road, right-hand lanes)
    if len(obj.road_class):
        for s_idx in range(len(obj.road_class)):
            c = obj.road_class[s_idx]
            pu0, pv0 = lat.to_uv(obj.road_p0[s_idx, 0], obj.road_p0[s_idx, 1])
            pu1, pv1 = lat.to_uv(obj.road_p1[s_idx, 0], obj.road_p1[s_idx, 1])
            along_v = abs(pu1 - pu0) < 1e-6
            length = abs(pv1 - pv0) if along_v else abs(pu1 - pu0)
            key = (
                int(round(pu0 * 10)) & 0xFFFFFFFF,
                int(round(pv0 * 10)) & 0xFFFFFFFF,
                int(along_v),
            )
            rng = np.random.default_rng([so + 1, *key])
            density = (0.012, 0.009, 0.005)[c]
            n = rng.poisson(density * length)
            if n == 0 or length < 30:
                continue
            pos = rng.uniform(12, length - 12, n)
            lane = rng.choice([-1.0, 1.0], n) * ROAD_WIDTHS[c] * 0.25
            large = rng.random(n) < (0.15 if c == 0 else 0.05)
            ln = np.where(large, rng.uniform(8, 12, n), rng.uniform(4.1, 4.9, n))
            wd = np.where(large, 2.5, rng.uniform(1.75, 1.95, n))
            start_u, start_v = min(pu0, pu1), min(pv0, pv1)
            if along_v:
                V_uc.extend(pu0 + lane)
                V_vc.extend(start_v + pos)
                V_wu.extend(wd)
                V_wv.extend(ln)
            else:
                V_uc.extend(start_u + pos)
                V_vc.extend(pv0 + lane)
                V_wu.extend(ln)
                V_wv.extend(wd)
            V_large.extend(large)
    if B_uc:
        obj.bld_corners = _rects_uv(lat, B_uc, B_vc, B_wu, B_wv)
        obj.bld_height = np.array(B_h)
        obj.bld_kind = B_kind
        obj.bld_roof = np.array(B_roof)
    if T_u:
        x, y = lat.to_xy(np.array(T_u), np.array(T_v))
        obj.tank_xy = np.stack([x, y], -1)
        obj.tank_r = np.array(T_r)
        obj.tank_height = np.array(T_h)
    if tr_u:
        x, y = lat.to_xy(np.array(tr_u), np.array(tr_v))
        obj.tree_xy = np.stack([x, y], -1)
        obj.tree_r = np.array(tr_r)
        obj.tree_height = np.array(tr_h)
    if V_uc:
        obj.veh_corners = _rects_uv(lat, V_uc, V_vc, V_wu, V_wv)
        obj.veh_large = np.array(V_large, dtype=bool)
        h = hash_uniform(
            np.round(np.array(V_uc) * 10).astype(np.int64),
            np.round(np.array(V_vc) * 10).astype(np.int64),
            so,
        )
        obj.veh_color = CAR_COLORS[(h * len(CAR_COLORS)).astype(int) % len(CAR_COLORS)]
    return _drop_wet(obj, seed, cfg, gsd)


def _drop_wet(obj: CityObjects, seed: int, cfg: WorldConfig, gsd: float) -> CityObjects:
    """Remove buildings, tanks and trees standing in a lake or river (tested at the centre and
    the corners of each footprint, at points of the same fields as the raster)."""

    def wet(pts: np.ndarray) -> np.ndarray:  # [N, K, 2] -> [N]
        if len(pts) == 0:
            return np.zeros(0, bool)
        return water_mask(Sampler.from_points(pts[..., 0], pts[..., 1], gsd), seed, cfg).any(axis=1)

    if len(obj.bld_height):
        c = obj.bld_corners
        keep = ~wet(np.concatenate([c, c.mean(axis=1, keepdims=True)], axis=1))
        obj.bld_corners, obj.bld_height, obj.bld_roof = (
            c[keep],
            obj.bld_height[keep],
            obj.bld_roof[keep],
        )
        obj.bld_kind = [k for k, ok in zip(obj.bld_kind, keep, strict=False) if ok]
    ring = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float64)
    for xy, r, h in (("tank_xy", "tank_r", "tank_height"), ("tree_xy", "tree_r", "tree_height")):
        pts = getattr(obj, xy)[:, None, :] + getattr(obj, r)[:, None, None] * ring[None]
        if xy == "tree_xy":
            pts = pts[:, :1]  # trees: the trunk position is enough
        keep = ~wet(pts)
        for name in (xy, r, h):
            setattr(obj, name, getattr(obj, name)[keep])
    return obj


def _houses(
    rng, u_lo, u_hi, v_lo, v_hi, B_uc, B_vc, B_wu, B_wv, B_h, B_kind, B_roof, tr_u, tr_v, tr_r, tr_h
) -> None:
    """Detached houses on parcels along the four sides of a block, trees in the back yards."""
    du, dv = u_hi - u_lo, v_hi - v_lo
    depth = min(rng.uniform(20, 32), 0.5 * min(du, dv))
    setback = rng.uniform(2.5, 6.0)
    roof_choice = rng.integers(len(ROOF_TILE), size=3)
    sides = [
        # (axis along which parcels run, fixed coordinate of the house centre, span lo, span hi)
        ("v", u_lo + setback, v_lo, v_hi, +1),
        ("v", u_hi - setback, v_lo, v_hi, -1),
        ("u", v_lo + setback, u_lo + depth, u_hi - depth, +1),
        ("u", v_hi - setback, u_lo + depth, u_hi - depth, -1),
    ]
    for axis, edge, lo, hi, sign in sides:
        pos = lo
        while True:
            front = rng.uniform(13, 22)
            if pos + front > hi:
                break
            w_front = front * rng.uniform(0.5, 0.75)
            w_deep = min(rng.uniform(8, 13), depth - setback - 1)
            if rng.random() > 0.08 and w_deep > 5:  # a few empty parcels
                centre_along = pos + 0.5 * front + rng.uniform(-1, 1)
                centre_across = edge + sign * 0.5 * w_deep
                if axis == "v":
                    B_uc.append(centre_across)
                    B_vc.append(centre_along)
                    B_wu.append(w_deep)
                    B_wv.append(w_front)
                else:
                    B_uc.append(centre_along)
                    B_vc.append(centre_across)
                    B_wu.append(w_front)
                    B_wv.append(w_deep)
                B_h.append(float(rng.uniform(5, 9)))
                B_kind.append("house")
                B_roof.append(ROOF_TILE[roof_choice[rng.integers(3)]] * rng.uniform(0.9, 1.1))
            if rng.random() < 0.7:  # a back-yard tree
                t_across = edge + sign * rng.uniform(w_deep + 2, depth)
                t_along = pos + rng.uniform(2, front - 2)
                tr_u.append(t_across if axis == "v" else t_along)
                tr_v.append(t_along if axis == "v" else t_across)
                tr_r.append(rng.uniform(1.8, 4.0))
                tr_h.append(rng.uniform(5, 12))
            pos += front
