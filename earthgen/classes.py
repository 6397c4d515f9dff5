"""The fixed semantic class table shared by OSM layouts, the procedural world engine, the
control maps of the image generator and the 3D generators.

Ids are stable (they index one-hot layout channels and saved checkpoints): never renumber,
only append. See docs/classes.md for the OSM tags behind each class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticClass:
    id: int
    name: str
    color: tuple[int, int, int]  # palette colour of the PNG layout
    description: str


CLASSES: tuple[SemanticClass, ...] = (
    SemanticClass(0, "background", (0, 0, 0), "unmapped or other land"),
    SemanticClass(1, "building", (220, 20, 60), "building footprints (building=*)"),
    SemanticClass(2, "road_major", (255, 160, 0), "motorway, trunk, primary (+ links); ~14 m wide"),
    SemanticClass(3, "road_secondary", (255, 220, 80), "secondary, tertiary (+ links); ~10 m wide"),
    SemanticClass(
        4,
        "road_minor",
        (250, 250, 250),
        "residential, unclassified, service, living street; ~6 m wide",
    ),
    SemanticClass(
        5, "path", (190, 170, 150), "footway, cycleway, path, track, pedestrian, steps; ~2-3 m wide"
    ),
    SemanticClass(
        6, "railway", (120, 60, 160), "rail, light rail, tram, subway at surface; ~4 m per track"
    ),
    SemanticClass(7, "water", (30, 110, 220), "sea, lakes, rivers, canals, reservoirs, basins"),
    SemanticClass(8, "forest", (20, 110, 40), "forest, wood, tree rows, scrub"),
    SemanticClass(
        9, "grass", (130, 210, 100), "park, grass, meadow, garden, pitch, golf course, cemetery"
    ),
    SemanticClass(10, "farmland", (210, 200, 120), "farmland, orchard, vineyard, allotments"),
    SemanticClass(
        11, "bare", (200, 180, 150), "sand, beach, bare rock, scree, quarry, construction"
    ),
    SemanticClass(12, "parking", (140, 140, 150), "parking lots (amenity=parking)"),
)

NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_ID: dict[str, int] = {c.name: c.id for c in CLASSES}
PALETTE = np.array([c.color for c in CLASSES], dtype=np.uint8)  # [K, 3]

# Nominal road widths in metres, used to buffer OSM/world centre lines before rasterizing.
ROAD_WIDTH_M: dict[str, float] = {
    "road_major": 14.0,
    "road_secondary": 10.0,
    "road_minor": 6.0,
    "path": 2.5,
    "railway": 4.0,
}

# Paint order when rasterizing vector layers: later classes overwrite earlier ones.
PAINT_ORDER: tuple[str, ...] = (
    "farmland",
    "grass",
    "forest",
    "bare",
    "water",
    "parking",
    "path",
    "road_minor",
    "road_secondary",
    "road_major",
    "railway",
    "building",
)


def colorize(semantic: np.ndarray) -> np.ndarray:
    """Map a class-id map ``[H, W]`` (uint8) to an RGB image ``[H, W, 3]`` (uint8)."""
    sem = np.asarray(semantic)
    if sem.size and int(sem.max()) >= NUM_CLASSES:
        raise ValueError(f"class id {int(sem.max())} outside the table (0..{NUM_CLASSES - 1})")
    return PALETTE[sem]


def class_fractions(semantic: np.ndarray) -> dict[str, float]:
    """Fraction of pixels of each class in a class-id map."""
    counts = np.bincount(np.asarray(semantic).ravel(), minlength=NUM_CLASSES).astype(np.float64)
    total = max(counts.sum(), 1.0)
    return {name: float(counts[i] / total) for i, name in enumerate(CLASS_NAMES)}


def legend() -> dict:
    """JSON-serialisable legend of the class table."""
    return {
        "classes": [
            {"id": c.id, "name": c.name, "color": list(c.color), "description": c.description}
            for c in CLASSES
        ],
        "road_width_m": ROAD_WIDTH_M,
    }
