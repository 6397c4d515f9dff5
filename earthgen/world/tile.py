"""One world tile: all layers of the procedural world over a rectangle of the ground.

Coordinates: world metres, ``x`` east, ``y`` north; a tile is given by its top-left corner
(``origin``), its size in pixels and its ground sampling distance (metres/pixel). Georeferenced
outputs place the world in UTM zone 33N (``EPSG:32633``) with the world origin at easting
500 000 m, northing 5 000 000 m (a synthetic location, documented so GIS tools can open the files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earthgen.classes import CLASS_ID
from earthgen.errors import UserInputError
from earthgen.geo.vector import Feature
from earthgen.world.city import (
    APARTMENTS,
    BLOCK_TYPES,
    HOUSES,
    INDUSTRIAL,
    PARK,
    PARKING,
    ROAD_CLASSES,
    ROAD_WIDTHS,
    RURAL,
    CityObjects,
    Lattice,
    compute_blocks,
    generate_objects,
)
from earthgen.world.config import FALSE_ORIGIN, WORLD_CRS, WorldConfig
from earthgen.world.noise import Grid, Sampler, hash_uniform
from earthgen.world.render import render_rgb, sun_vector
from earthgen.world.terrain import subseed, terrain_fields

DETECTION_CLASSES = ("building", "storage_tank", "small_vehicle", "large_vehicle")
MAX_PIXELS = 8192 * 8192
PAD = 3  # pixels computed around the tile so neighbourhood ops agree across tile borders
OBJECT_MARGIN_M = 70.0  # objects this far outside still cast shadows into the tile


@dataclass
class WorldTile:
    """All layers of one tile. Rasters are north-up, row 0 = north edge."""

    seed: int
    config: WorldConfig
    grid: Grid
    height: np.ndarray  # [H, W] float32, metres above the world datum
    semantic: np.ndarray  # [H, W] uint8, ids of earthgen.classes
    rgb: np.ndarray  # [H, W, 3] uint8
    water_level: np.ndarray  # [H, W] float32, metres (meaningful where semantic == water)
    object_height: np.ndarray  # [H, W] float32, metres above ground (buildings, tanks, trees)
    building_index: np.ndarray  # [H, W] int32, 1 + index into objects.bld_* (0 = none)
    objects: CityObjects
    features: list[Feature]  # vector layout in world metres (roads, buildings, tanks, trees)
    labels: dict  # detection labels, see :meth:`detection_labels`
    caption: str
    stats: dict = field(default_factory=dict)

    @property
    def gsd(self) -> float:
        return self.grid.gsd

    @property
    def crs(self) -> str:
        return WORLD_CRS

    @property
    def transform(self) -> Any:
        """Affine pixel -> georeferenced (EPSG:32633) map transform."""
        from affine import Affine

        return Affine(
            self.gsd,
            0.0,
            self.grid.x0 + FALSE_ORIGIN[0],
            0.0,
            -self.gsd,
            self.grid.y0 + FALSE_ORIGIN[1],
        )

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """World metres ``[..., 2]`` -> pixel (col, row) ``[..., 2]`` of this tile (float)."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack(
            [(xy[..., 0] - self.grid.x0) / self.gsd, (self.grid.y0 - xy[..., 1]) / self.gsd], -1
        )

    def boxes(self):
        """The detection labels as an :class:`earthgen.boxes.BoxSet` (``difficult`` = truncated)."""
        from earthgen.boxes import BoxSet

        lab = self.labels
        return BoxSet(
            lab["corners"],
            list(lab["labels"]),
            difficult=np.asarray(lab["truncated"]),
            extra={"imagesource": "earthgen-world", "gsd": self.gsd},
        )

    def voxels(self, voxel_size: float = 1.0):
        """Sparse voxel occupancy with semantic and colour:
        :class:`earthgen.world.voxels.VoxelGrid`."""
        from earthgen.world.voxels import voxelize

        return voxelize(self, voxel_size)

    def save(self, out_dir, voxel_size: float | None = 1.0) -> dict[str, str]:
        from earthgen.world.export import save_tile

        return save_tile(self, out_dir, voxel_size)


@dataclass
class _Context:
    """Everything the renderer needs on the padded grid."""

    sampler: Sampler
    fields: dict
    semantic: np.ndarray
    height: np.ndarray
    gsd: float
    u: np.ndarray
    v: np.ndarray
    block_i: np.ndarray
    block_j: np.ndarray
    strip: np.ndarray
    built: np.ndarray
    line_dist: np.ndarray
    line_along: np.ndarray
    road_half: np.ndarray
    obj: CityObjects
    tree_idx: np.ndarray
    bld_idx: np.ndarray
    tank_idx: np.ndarray
    veh_idx: np.ndarray
    shadow: np.ndarray
    sun: np.ndarray
    haze: float
    tex_seed: int


def check_tile_args(size: tuple[int, int], gsd: float) -> None:
    w, h = size
    if not (gsd > 0 and np.isfinite(gsd)):
        raise UserInputError(f"GSD must be a finite number > 0 metres/pixel, got {gsd}")
    if w <= 0 or h <= 0:
        raise UserInputError(f"tile size must be positive, got {w}x{h}")
    if w * h > MAX_PIXELS:
        raise UserInputError(
            f"tile of {w}x{h} pixels is too large for one piece (max {MAX_PIXELS} pixels, about "
            f"{MAX_PIXELS * 60 // 2**30} GiB of working memory); generate it as several tiles "
            "with --origin (tiles are seamless)"
        )
    if gsd < 0.05 or gsd > 100:
        raise UserInputError(f"GSD {gsd} m/px is outside the supported range 0.05..100 m/px")


def generate_world(
    seed: int = 0,
    size: int | tuple[int, int] = 512,
    gsd: float = 0.5,
    origin: tuple[float, float] | None = None,
    config: WorldConfig | None = None,
) -> WorldTile:
    """Generate a deterministic world tile.

    Args:
        seed: world seed; the same seed gives the same world everywhere.
        size: pixels, ``N`` or ``(width, height)``.
        gsd: ground sampling distance, metres/pixel.
        origin: world (x, y) metres of the tile's top-left corner; default centres the tile on
            the world origin (where the default config puts a town).
        config: :class:`WorldConfig` (defaults: a mixed landscape).
    """
    cfg = config or WorldConfig()
    w, h = (size, size) if isinstance(size, int) else size
    check_tile_args((w, h), gsd)
    if origin is None:
        origin = (-0.5 * w * gsd, 0.5 * h * gsd)
    grid = Grid(float(origin[0]), float(origin[1]), float(gsd), (h, w))
    pg = grid.padded(PAD)
    s = Sampler.from_grid(pg)
    f = terrain_fields(s, seed, cfg)

    lat = Lattice.for_world(seed, cfg)
    xmin, ymin, xmax, ymax = pg.bounds
    m = OBJECT_MARGIN_M
    blocks = compute_blocks(lat, seed, cfg, (xmin - m, ymin - m, xmax + m, ymax + m), gsd)
    obj = generate_objects(lat, blocks, seed, cfg, gsd)

    # per-pixel position in the street lattice
    u, v = lat.to_uv(s.x, s.y)
    bi = lat.locate(0, u)
    bj = lat.locate(1, v)
    btype = blocks.type_at(bi, bj)
    ia = np.clip(bi - blocks.i0, 0, len(blocks.u_lines) - 2)
    ja = np.clip(bj - blocks.j0, 0, len(blocks.v_lines) - 2)
    u_lo, u_hi = blocks.u_lines[ia], blocks.u_lines[ia + 1]
    v_lo, v_hi = blocks.v_lines[ja], blocks.v_lines[ja + 1]
    n_strips = 2 + (hash_uniform(bi, bj, subseed(seed, 30)) * 4).astype(np.int64)
    strip = np.floor((u - u_lo) / (u_hi - u_lo) * n_strips).astype(np.int64)
    d4 = np.stack([u - u_lo, u_hi - u, v - v_lo, v_hi - v])
    nearest = d4.argmin(axis=0)
    line_dist = d4.min(axis=0)
    line_along = np.where(nearest < 2, v, u)
    cls4 = np.stack(
        [blocks.u_class[ia], blocks.u_class[ia + 1], blocks.v_class[ja], blocks.v_class[ja + 1]]
    )
    road_half = 0.5 * ROAD_WIDTHS[np.take_along_axis(cls4, nearest[None], 0)[0]]

    sem = _land_cover(s, f, seed, btype, bi, bj, strip)
    transform = _affine(pg)
    feats = _features(obj)
    sem = _burn_features(sem, feats, transform)

    idx = {
        name: _index_raster(geoms, transform, pg.shape)
        for name, geoms in _object_geoms(obj).items()
    }
    shadow = _shadow_mask(obj, cfg, transform, pg.shape)
    ctx = _Context(
        sampler=s,
        fields=f,
        semantic=sem,
        height=f["height"],
        gsd=gsd,
        u=u,
        v=v,
        block_i=bi,
        block_j=bj,
        strip=strip,
        built=btype != RURAL,
        line_dist=line_dist,
        line_along=line_along,
        road_half=road_half,
        obj=obj,
        tree_idx=idx["trees"],
        bld_idx=idx["buildings"],
        tank_idx=idx["tanks"],
        veh_idx=idx["vehicles"],
        shadow=shadow,
        sun=sun_vector(cfg.sun_azimuth_deg, cfg.sun_elevation_deg),
        haze=cfg.haze,
        tex_seed=subseed(seed, 40),
    )
    obj_h = _object_height(ctx, seed)
    rgb = render_rgb(ctx)
    rgb = _psf(rgb)
    crop = (slice(PAD, PAD + h), slice(PAD, PAD + w))
    rgb8 = np.clip(np.rint(rgb[crop]), 0, 255).astype(np.uint8)
    tile = WorldTile(
        seed=seed,
        config=cfg,
        grid=grid,
        height=f["height"][crop].astype(np.float32),
        semantic=sem[crop].copy(),
        rgb=rgb8,
        water_level=f["water_level"][crop].astype(np.float32),
        object_height=obj_h[crop].astype(np.float32),
        building_index=idx["buildings"][crop].copy(),
        objects=obj,
        features=feats,
        labels={},
        caption="",
    )
    tile.labels = detection_labels(tile)
    from earthgen.world.caption import caption_for, tile_stats

    tile.stats = tile_stats(
        tile, _block_type_counts(btype[crop], bi[crop], bj[crop]), bool(f["river"][crop].any())
    )
    tile.caption = caption_for(tile)
    return tile


def _affine(g: Grid):
    from affine import Affine

    return Affine(g.gsd, 0.0, g.x0, 0.0, -g.gsd, g.y0)


def _land_cover(s: Sampler, f: dict, seed: int, btype, bi, bj, strip) -> np.ndarray:
    """Class ids from the natural fields and the block types (before vector features)."""
    n = s.noise(25.0, subseed(seed, 31))
    slope = np.hypot(f["grad_x"], f["grad_y"])
    sem = np.full(s.shape, CLASS_ID["grass"], dtype=np.uint8)
    field_on = hash_uniform(bi, bj, strip, subseed(seed, 32)) < 0.8
    farm = (f["urban"] < 0.2) & (f["moisture"] < 0.45) & (slope < 0.12) & field_on
    sem[farm] = CLASS_ID["farmland"]
    forest = f["moisture"] + 0.25 * n > 0.6
    forest |= (slope > 0.25) & (f["moisture"] + 0.25 * n > -0.2)
    sem[forest & ~farm] = CLASS_ID["forest"]
    bare = (f["rock"] > 0.5) | ((f["shore"] > 0.55) & (n > -0.4))
    sem[bare] = CLASS_ID["bare"]
    # built blocks
    sem[(btype == HOUSES) | (btype == APARTMENTS) | (btype == PARK)] = CLASS_ID["grass"]
    paved = (btype == APARTMENTS) & (s.noise(18.0, subseed(seed, 33)) > -0.3)
    sem[paved | (btype == INDUSTRIAL)] = CLASS_ID["background"]
    sem[btype == PARKING] = CLASS_ID["parking"]
    sem[f["water"]] = CLASS_ID["water"]
    return sem


def _features(obj: CityObjects) -> list[Feature]:
    import shapely

    feats: list[Feature] = []
    if len(obj.road_class):
        lines = shapely.linestrings(np.stack([obj.road_p0, obj.road_p1], axis=1))
        for g, c in zip(lines, obj.road_class, strict=False):
            feats.append(Feature(g, ROAD_CLASSES[c], {"width": float(ROAD_WIDTHS[c])}))
    if len(obj.tree_r):
        for g, r, hgt in zip(
            shapely.points(obj.tree_xy), obj.tree_r, obj.tree_height, strict=False
        ):
            feats.append(
                Feature(g, "forest", {"radius": float(r), "height": float(hgt), "kind": "tree"})
            )
    if len(obj.bld_height):
        polys = shapely.polygons(obj.bld_corners)
        for g, hgt, kind in zip(polys, obj.bld_height, obj.bld_kind, strict=False):
            feats.append(Feature(g, "building", {"height": float(hgt), "kind": kind}))
    if len(obj.tank_r):
        circles = shapely.buffer(shapely.points(obj.tank_xy), obj.tank_r, quad_segs=8)
        for g, hgt in zip(circles, obj.tank_height, strict=False):
            feats.append(Feature(g, "building", {"height": float(hgt), "kind": "storage_tank"}))
    return feats


def _burn_features(sem: np.ndarray, feats: list[Feature], transform) -> np.ndarray:
    from earthgen.geo.vector import rasterize_features

    over = rasterize_features(feats, transform, sem.shape, background=255)
    return np.where(over == 255, sem, over).astype(np.uint8)


def _circles(xy: np.ndarray, r: np.ndarray, n: int = 16) -> np.ndarray:
    """Regular ``n``-gons ``[N, n, 2]`` approximating circles (centres ``[N, 2]``, radii
    ``[N]``)."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], -1)
    return xy[:, None, :] + r[:, None, None] * ring[None]


def _polygon_dicts(rings: np.ndarray) -> list[dict]:
    """GeoJSON-like polygons from rings ``[N, K, 2]`` (fast path for rasterio, no shapely)."""
    closed = np.concatenate([rings, rings[:, :1]], axis=1)
    return [{"type": "Polygon", "coordinates": [ring]} for ring in closed.tolist()]


def _object_geoms(obj: CityObjects) -> dict[str, list]:
    return {
        "buildings": _polygon_dicts(obj.bld_corners) if len(obj.bld_height) else [],
        "tanks": _polygon_dicts(_circles(obj.tank_xy, obj.tank_r)) if len(obj.tank_r) else [],
        "trees": _polygon_dicts(_circles(obj.tree_xy, obj.tree_r, 12)) if len(obj.tree_r) else [],
        "vehicles": _polygon_dicts(obj.veh_corners) if len(obj.veh_large) else [],
    }


def _index_raster(geoms: list, transform, shape) -> np.ndarray:
    """``[H, W]`` int32: 1 + index of the (last) geometry covering each pixel centre, 0 = none."""
    from rasterio.features import rasterize

    if not geoms:
        return np.zeros(shape, dtype=np.int32)
    return rasterize(
        ((g, i + 1) for i, g in enumerate(geoms)),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype="int32",
    )


def _convex_hulls(points: np.ndarray) -> list[dict]:
    """Convex hulls of point sets ``[N, K, 2]`` as GeoJSON-like polygons."""
    import shapely

    hulls = shapely.convex_hull(shapely.multipoints(points))
    coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(hulls), return_index=True)
    splits = np.flatnonzero(np.diff(idx)) + 1
    return [
        {"type": "Polygon", "coordinates": [c.tolist()]}
        for c in np.split(coords, splits)
        if len(c) >= 4
    ]


def _shadow_mask(obj: CityObjects, cfg: WorldConfig, transform, shape) -> np.ndarray:
    """Ground pixels in the cast shadow of buildings, tanks and trees (flat-ground model): the
    hull of each footprint and its copy moved away from the sun by ``height / tan(elevation)``."""
    from rasterio.features import rasterize

    a = np.radians(cfg.sun_azimuth_deg)
    away = -np.array([np.sin(a), np.cos(a)]) / np.tan(np.radians(cfg.sun_elevation_deg))  # per m
    geoms: list[dict] = []
    if len(obj.bld_height):
        c = obj.bld_corners
        geoms += _convex_hulls(
            np.concatenate([c, c + obj.bld_height[:, None, None] * away], axis=1)
        )
    for xy, r, hgt in (
        (obj.tank_xy, obj.tank_r, obj.tank_height),
        (obj.tree_xy, obj.tree_r, obj.tree_height),
    ):
        if len(r):
            base = _circles(xy, r, 12)
            geoms += _convex_hulls(np.concatenate([base, base + hgt[:, None, None] * away], axis=1))
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return (
        rasterize(
            ((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8"
        )
        > 0
    )


def _object_height(ctx: _Context, seed: int) -> np.ndarray:
    """Height above ground (m) of what stands on each pixel: roofs, tanks, tree crowns (domes)
    and forest canopy; 0 on open ground. This is the nDSM of the tile."""
    o = ctx.obj
    s = ctx.sampler
    out = np.zeros(ctx.semantic.shape)
    canopy = 11.0 + 4.0 * s.noise(7.0, subseed(seed, 34))
    out = np.where(ctx.semantic == CLASS_ID["forest"], canopy, out)
    m = ctx.tree_idx > 0
    if m.any():
        k = ctx.tree_idx[m] - 1
        d2 = ((s.x[m] - o.tree_xy[k, 0]) ** 2 + (s.y[m] - o.tree_xy[k, 1]) ** 2) / o.tree_r[k] ** 2
        out[m] = o.tree_height[k] * (0.6 + 0.4 * np.sqrt(np.clip(1 - d2, 0, 1)))
    for idx, hgt in ((ctx.bld_idx, o.bld_height), (ctx.tank_idx, o.tank_height)):
        m = idx > 0
        if m.any():
            out[m] = hgt[idx[m] - 1]
    return out


def _psf(rgb: np.ndarray) -> np.ndarray:
    """A mild sensor blur (3x3 binomial), keeps the 1-pixel pad consistent across tiles."""
    k = np.array([0.25, 0.5, 0.25])
    out = rgb.copy()
    out[1:-1] = k[0] * rgb[:-2] + k[1] * rgb[1:-1] + k[2] * rgb[2:]
    res = out.copy()
    res[:, 1:-1] = k[0] * out[:, :-2] + k[1] * out[:, 1:-1] + k[2] * out[:, 2:]
    return res


def _block_type_counts(btype, bi, bj) -> dict[str, int]:
    """Number of distinct blocks of each type visible in the tile."""
    bi0, bj0 = bi.min(), bj.min()
    key = ((bi - bi0) * (bj.max() - bj0 + 1) + (bj - bj0)).ravel()
    _, first = np.unique(key, return_index=True)
    counts = np.bincount(btype.ravel()[first], minlength=len(BLOCK_TYPES))
    return {BLOCK_TYPES[i]: int(counts[i]) for i in range(len(BLOCK_TYPES))}


def detection_labels(tile: WorldTile) -> dict:
    """Objects whose centre is inside the tile, as pixel corners ``[N, 4, 2]`` (clockwise on
    screen), class names from :data:`DETECTION_CLASSES`, ``truncated`` when a corner lies
    outside the image, and the enclosing horizontal boxes ``hbb`` ``[N, 4]`` clipped to it."""
    from earthgen.boxes import corners_to_hbb, hbb_to_corners

    o = tile.objects
    parts, names = [], []
    if len(o.bld_height):
        parts.append(tile.to_pixels(o.bld_corners))
        names += ["building"] * len(o.bld_height)
    if len(o.tank_r):
        px = tile.to_pixels(o.tank_xy)
        r = o.tank_r / tile.gsd
        parts.append(
            hbb_to_corners(np.stack([px[:, 0] - r, px[:, 1] - r, px[:, 0] + r, px[:, 1] + r], 1))
        )
        names += ["storage_tank"] * len(o.tank_r)
    if len(o.veh_large):
        parts.append(tile.to_pixels(o.veh_corners))
        names += ["large_vehicle" if lg else "small_vehicle" for lg in o.veh_large]
    h, w = tile.grid.shape
    if not parts:
        return {
            "classes": list(DETECTION_CLASSES),
            "corners": np.zeros((0, 4, 2)),
            "labels": [],
            "hbb": np.zeros((0, 4)),
            "truncated": np.zeros(0, bool),
        }
    corners = np.concatenate(parts)
    centre = corners.mean(axis=1)
    keep = (centre[:, 0] >= 0) & (centre[:, 0] < w) & (centre[:, 1] >= 0) & (centre[:, 1] < h)
    corners = corners[keep]
    labels = [n for n, k in zip(names, keep, strict=False) if k]
    truncated = ((corners < 0) | (corners > np.array([w, h]))).any(axis=(1, 2))
    hbb = corners_to_hbb(corners)
    hbb = np.clip(hbb, 0, [w, h, w, h])
    return {
        "classes": list(DETECTION_CLASSES),
        "corners": corners,
        "labels": labels,
        "hbb": hbb,
        "truncated": truncated,
    }


__all__ = ["DETECTION_CLASSES", "FALSE_ORIGIN", "WORLD_CRS", "WorldTile", "generate_world"]
