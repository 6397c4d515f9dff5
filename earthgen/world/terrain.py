"""Natural fields of the world: height (m), lakes, rivers, moisture, settlement density.

All formulas run on a :class:`~earthgen.world.noise.Sampler`, i.e. identically on a raster and
at points (object placement), and depend only on world coordinates and the seed.
"""

from __future__ import annotations

import numpy as np

from earthgen.world.config import WorldConfig
from earthgen.world.noise import Sampler, hash_u64


def subseed(seed: int, stream: int) -> int:
    """An independent 31-bit seed for one random stream of a world."""
    return int(hash_u64(np.int64(seed), np.int64(stream)) >> np.uint64(33))


# stream ids
S_TERRAIN, S_MOUNT, S_RIVER, S_RIVER2, S_RIVER_WIDTH, S_RIVER_ON = 1, 2, 3, 4, 5, 6
S_MOIST, S_URBAN, S_SAND, S_ROCK = 7, 8, 9, 10


def smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def urban_field(s: Sampler, seed: int, cfg: WorldConfig) -> np.ndarray:
    """Settlement density (dimensionless, > 0.35 built up, > 1.0 dense centre)."""
    u = 0.75 * np.tanh(s.fbm(cfg.urban_wavelength_m, subseed(seed, S_URBAN), octaves=3)) - 0.5
    if cfg.town_at_origin:
        r2 = (s.x**2 + s.y**2) / cfg.town_radius_m**2
        u = u + cfg.town_at_origin * np.exp(-r2)
    return u + cfg.urban_bias


def _water(s: Sampler, seed: int, cfg: WorldConfig, urban: np.ndarray) -> dict[str, np.ndarray]:
    """Normalised height, lakes and rivers: the part of the fields that decides where water is."""
    hn, hx, hy = s.eroded_fbm(
        cfg.terrain_wavelength_m, subseed(seed, S_TERRAIN), erosion=cfg.erosion
    )
    lift = np.clip(urban / 0.6, 0.0, 1.0)  # settled ground is kept above the lakes
    hn_eff = hn + lift * np.maximum(cfg.lake_level + 0.35 - hn, 0.0)
    lake = hn_eff < cfg.lake_level
    # rivers: centre lines are zero crossings of a smooth field; |r| / |grad r| ~ distance (m)
    r, rx, ry = s.noise(cfg.river_wavelength_m, subseed(seed, S_RIVER), derivatives=True)
    r2, r2x, r2y = s.noise(cfg.river_wavelength_m / 3.0, subseed(seed, S_RIVER2), derivatives=True)
    r, rx, ry = r + 0.25 * r2, rx + 0.25 * r2x, ry + 0.25 * r2y
    dist = np.abs(r) / np.maximum(np.hypot(rx, ry), 1e-9)
    on = s.fbm(4.0 * cfg.river_wavelength_m, subseed(seed, S_RIVER_ON), 2) > cfg.river_presence
    lo, hi = cfg.river_width_m
    width = lo + (hi - lo) * smoothstep(-1.0, 1.0, s.noise(3000.0, subseed(seed, S_RIVER_WIDTH)))
    dist = np.where(on, dist, 1e6)
    river = (dist < 0.5 * width) & ~lake
    return {
        "hx": hx,
        "hy": hy,
        "hn_eff": hn_eff,
        "lake": lake,
        "river": river,
        "water": lake | river,
        "river_dist": dist,
        "river_width": width,
    }


def water_mask(s: Sampler, seed: int, cfg: WorldConfig) -> np.ndarray:
    """Where lakes and rivers are (bool, the sampler's shape); cheaper than
    :func:`terrain_fields`."""
    return _water(s, seed, cfg, urban_field(s, seed, cfg))["water"]


def terrain_fields(s: Sampler, seed: int, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Evaluate the natural fields. Returns arrays of the sampler's shape:

    ``height`` (m), ``grad_x``/``grad_y`` (m/m), ``lake``/``river``/``water`` (bool),
    ``water_level`` (m, surface height where water), ``depth`` (m, approximate), ``river_dist``
    (m to the nearest river centre line, large where none), ``river_width`` (m), ``moisture``
    (about N(0,1)), ``urban`` (see :func:`urban_field`), ``shore`` (0..1 closeness to a lake
    shore), ``rock`` (0..1).
    """
    urban = urban_field(s, seed, cfg)
    w = _water(s, seed, cfg, urban)
    lake, river, dist, width, hn_eff = (
        w["lake"],
        w["river"],
        w["river_dist"],
        w["river_width"],
        w["hn_eff"],
    )
    town = np.clip(urban, 0.0, 1.5) / 1.5
    mount = 0.35 + 1.3 * np.clip(
        0.5 + 0.5 * s.fbm(4.0 * cfg.terrain_wavelength_m, subseed(seed, S_MOUNT), 2), 0, 1
    )
    relief = cfg.relief_m * mount * (1.0 - 0.75 * town)  # towns sit on gentler ground
    height = relief * np.maximum(hn_eff, cfg.lake_level)
    gx = np.where(lake, 0.0, relief * w["hx"])
    gy = np.where(lake, 0.0, relief * w["hy"])
    # carve a valley: the river runs a few metres below its banks
    carve = np.minimum(0.08 * relief + 2.0, 10.0) * np.exp(-((dist / (2.5 * width)) ** 2))
    bank = height - carve
    water_level = np.where(lake, height, bank - 0.5)
    height = np.where(lake, height, bank)
    depth = np.where(
        lake, (cfg.lake_level - hn_eff) * relief, np.where(river, 0.5 * width - dist, 0.0)
    )

    moisture = s.fbm(900.0, subseed(seed, S_MOIST), 4) + 1.2 * np.exp(-dist / 80.0)
    shore = np.where(lake, 0.0, np.exp(-np.maximum(hn_eff - cfg.lake_level, 0.0) / 0.02))
    rock = smoothstep(0.45, 0.9, np.hypot(gx, gy)) * (
        0.6 + 0.4 * s.noise(60.0, subseed(seed, S_ROCK))
    )
    return {
        "height": height,
        "grad_x": gx,
        "grad_y": gy,
        "lake": lake,
        "river": river,
        "water": w["water"],
        "water_level": water_level,
        "depth": depth,
        "river_dist": dist,
        "river_width": width,
        "moisture": moisture,
        "urban": urban,
        "shore": shore,
        "rock": rock,
    }
