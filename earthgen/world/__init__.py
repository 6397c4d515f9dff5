"""Procedural worlds: deterministic, seamless synthetic tiles with height, land cover, an
OSM-like vector layout, an RGB aerial render, a caption, detection labels and sparse voxels.

>>> from earthgen.world import generate_world
>>> tile = generate_world(seed=3, size=256, gsd=0.5)
>>> tile.rgb.shape, tile.semantic.shape
((256, 256, 3), (256, 256))
"""

from earthgen.world.config import PRESETS, WorldConfig, preset
from earthgen.world.tile import DETECTION_CLASSES, WORLD_CRS, WorldTile, generate_world

__all__ = [
    "DETECTION_CLASSES",
    "PRESETS",
    "WORLD_CRS",
    "WorldConfig",
    "WorldTile",
    "generate_world",
    "preset",
]
