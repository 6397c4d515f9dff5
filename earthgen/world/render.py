"""Render a world tile as an RGB aerial image (nadir, orthographic): per-class textures, roofs,
tree crowns, vehicles, cast shadows of buildings/trees/tanks, hill-shading and a little haze.

All textures are noise in world metres, so the image is as seamless across tiles as the fields.
"""

from __future__ import annotations

import numpy as np

from earthgen.classes import CLASS_ID
from earthgen.world.noise import Sampler, hash_uniform

C = CLASS_ID
FIELD_COLORS = np.array(
    [
        [172, 160, 96],
        [118, 140, 70],
        [138, 112, 82],
        [186, 176, 122],
        [100, 128, 62],
        [150, 150, 90],
        [160, 130, 95],
    ],
    dtype=np.float64,
)


def sun_vector(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector towards the sun in (x east, y north, z up)."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.sin(a) * np.cos(e), np.cos(a) * np.cos(e), np.sin(e)])


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def render_rgb(ctx) -> np.ndarray:
    """``ctx`` is the :class:`earthgen.world.tile._Context` of a padded tile; returns float RGB
    ``[H, W, 3]`` in 0..255 on the padded grid."""
    s: Sampler = ctx.sampler
    f = ctx.fields
    sem = ctx.semantic
    seed = ctx.tex_seed
    h, w = sem.shape
    n_fine = s.noise(1.3, seed + 1)
    n_mid = s.noise(6.0, seed + 2)
    n_big = s.fbm(40.0, seed + 3, 3)
    rgb = np.zeros((h, w, 3))

    def paint(mask: np.ndarray, color: np.ndarray) -> None:
        rgb[mask] = color[mask] if np.ndim(color) == 3 else color

    tex = (1.0 + 0.05 * n_fine + 0.05 * n_mid + 0.06 * n_big)[..., None]
    # grass: greener where moist, dry patches elsewhere
    moist = np.clip(0.5 + 0.3 * f["moisture"], 0, 1)
    grass = _mix(np.array([128.0, 132, 84]), np.array([78.0, 112, 52]), moist) * tex
    paint(sem == C["grass"], grass)
    paint(
        sem == C["background"],
        np.array([152.0, 149, 141]) * (1 + 0.04 * n_fine + 0.05 * n_mid)[..., None],
    )
    # forest: clumpy crowns
    crowns = s.noise(3.2, seed + 4) + 0.6 * s.noise(1.6, seed + 5)
    t = np.clip(0.5 + 0.35 * crowns, 0, 1)
    forest = (
        _mix(np.array([24.0, 40, 26]), np.array([66.0, 92, 50]), t) * (1 + 0.08 * n_big)[..., None]
    )
    paint(sem == C["forest"], forest)
    # farmland: one colour per strip of a rural block, with furrows
    fid = hash_uniform(ctx.block_i, ctx.block_j, ctx.strip, seed + 6)
    fcol = FIELD_COLORS[(fid * len(FIELD_COLORS)).astype(int) % len(FIELD_COLORS)]
    furrow_along_u = hash_uniform(ctx.block_i, ctx.block_j, seed + 7) < 0.5
    phase = np.where(furrow_along_u, ctx.v, ctx.u)
    furrows = 1.0 + 0.07 * np.clip(1.5 / ctx.gsd - 1.0, 0, 1) * np.sin(2 * np.pi * phase / 3.0)
    paint(sem == C["farmland"], fcol * (furrows * (1 + 0.03 * n_fine + 0.05 * n_big))[..., None])
    # bare: sand near water, rock on steep ground
    sand = np.array([205.0, 190, 152])
    rock = np.array([142.0, 134, 122])
    bare = _mix(sand, rock, np.clip(f["rock"] * 1.5, 0, 1))
    paint(sem == C["bare"], bare * tex)
    # water: deep vs shallow, rivers a bit greener
    depth = np.clip(f["depth"] / 4.0, 0, 1)
    water = _mix(np.array([62.0, 92, 92]), np.array([26.0, 52, 68]), depth)
    water = water * (1 + 0.03 * n_mid)[..., None]
    water[f["river"]] = water[f["river"]] * np.array([1.0, 1.05, 0.9])
    paint(sem == C["water"], water)
    # roads, paths, railways, parking
    asphalt = (1 + 0.03 * n_fine + 0.04 * n_mid)[..., None]
    paint(sem == C["road_major"], np.array([82.0, 82, 86]) * asphalt)
    paint(sem == C["road_secondary"], np.array([96.0, 96, 99]) * asphalt)
    paint(sem == C["road_minor"], np.array([112.0, 111, 112]) * asphalt)
    paint(sem == C["path"], np.array([178.0, 165, 145]) * asphalt)
    paint(sem == C["railway"], np.array([105.0, 95, 88]) * asphalt)
    paint(sem == C["parking"], np.array([108.0, 108, 111]) * asphalt)
    # lane markings: dashed centre lines on major and secondary roads
    line = (ctx.line_dist < max(0.12, 0.35 * ctx.gsd)) & (np.mod(ctx.line_along, 9.0) < 4.5)
    mark = line & ((sem == C["road_major"]) | (sem == C["road_secondary"]))
    cover = min(1.0, 0.25 / ctx.gsd)
    rgb[mark] = rgb[mark] * (1 - cover) + np.array([230.0, 230, 225]) * cover
    # sidewalks: a light strip along the streets of built blocks
    side = (ctx.line_dist < ctx.road_half + 2.0) & (ctx.line_dist >= ctx.road_half) & ctx.built
    side &= (sem == C["grass"]) | (sem == C["background"]) | (sem == C["parking"])
    rgb[side] = np.array([176.0, 172, 165]) * (1 + 0.03 * n_fine[side])[..., None]

    # objects: trees, buildings, tanks, vehicles (index rasters, 0 = none)
    sun = ctx.sun
    if ctx.tree_idx.any():
        k = ctx.tree_idx[ctx.tree_idx > 0] - 1
        m = ctx.tree_idx > 0
        dx = (s.x[m] - ctx.obj.tree_xy[k, 0]) / ctx.obj.tree_r[k]
        dy = (s.y[m] - ctx.obj.tree_xy[k, 1]) / ctx.obj.tree_r[k]
        dz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
        lit = np.clip(dx * sun[0] + dy * sun[1] + dz * sun[2], 0, 1)
        base = np.array([40.0, 66, 36]) * (0.95 + 0.1 * hash_uniform(k, seed + 8))[:, None]
        rgb[m] = base * (0.55 + 0.75 * lit)[:, None] * (1 + 0.08 * n_fine[m])[:, None]
    if ctx.bld_idx.any():
        m = ctx.bld_idx > 0
        k = ctx.bld_idx[m] - 1
        c = ctx.obj.bld_corners  # [B, 4, 2]
        centre = c.mean(axis=1)
        e0 = c[:, 1] - c[:, 0]
        e1 = c[:, 3] - c[:, 0]
        long0 = np.linalg.norm(e0, axis=1) >= np.linalg.norm(e1, axis=1)
        short = np.where(long0[:, None], e1, e0)  # ridge runs along the long axis
        px = np.stack([s.x[m], s.y[m]], -1) - centre[k]
        across = (px * short[k]).sum(-1) / (short[k] ** 2).sum(-1)  # [-0.5, 0.5]
        roof = ctx.obj.bld_roof[k]
        gable = np.array([kd == "house" for kd in ctx.obj.bld_kind])[k]
        nrm = short[k] / np.linalg.norm(short[k], axis=1, keepdims=True) * np.sign(across)[:, None]
        face = 0.85 + 0.35 * (nrm[:, 0] * sun[0] + nrm[:, 1] * sun[1]) / max(
            np.hypot(sun[0], sun[1]), 1e-6
        )
        shade = np.where(gable, face, 1.0)
        edge = np.minimum(0.5 - np.abs(across), 1.0)  # darker parapet on flat roofs
        shade = shade * np.where(~gable & (edge * np.linalg.norm(short[k], axis=1) < 0.8), 0.8, 1.0)
        rgb[m] = roof * shade[:, None] * (1 + 0.03 * n_fine[m])[:, None]
    if ctx.tank_idx.any():
        m = ctx.tank_idx > 0
        k = ctx.tank_idx[m] - 1
        dx = (s.x[m] - ctx.obj.tank_xy[k, 0]) / ctx.obj.tank_r[k]
        dy = (s.y[m] - ctx.obj.tank_xy[k, 1]) / ctx.obj.tank_r[k]
        r2 = dx**2 + dy**2
        lit = 0.92 + 0.12 * (dx * sun[0] + dy * sun[1]) - 0.08 * r2
        rim = np.where(r2 > 0.85, 0.8, 1.0)
        rgb[m] = np.array([212.0, 212, 208]) * (lit * rim)[:, None]
    if ctx.veh_idx.any():
        m = ctx.veh_idx > 0
        k = ctx.veh_idx[m] - 1
        rgb[m] = ctx.obj.veh_color[k] * (1 + 0.04 * n_fine[m])[:, None]

    # cast shadows on the ground, then terrain hill-shading and haze
    shadow = ctx.shadow & ~(ctx.bld_idx > 0) & ~(ctx.tank_idx > 0)
    rgb[shadow] *= np.array([0.48, 0.5, 0.58])
    gy, gx = np.gradient(ctx.height, ctx.gsd)
    gy = -gy  # rows go south
    nrm = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    hill = (nrm @ sun) / sun[2]
    rgb *= np.clip(1.0 + 0.8 * (hill - 1.0), 0.35, 1.4)[..., None]
    rgb = rgb * (1 - ctx.haze) + ctx.haze * np.array([205.0, 212, 222])
    return rgb
