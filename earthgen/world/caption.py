"""Captions of world tiles built from their statistics (class fractions, object counts, GSD),
in the style of remote-sensing caption sets (RSICD, Git-10M): one sentence, what dominates
first, then notable objects."""

from __future__ import annotations

import numpy as np

from earthgen.classes import class_fractions
from earthgen.world.noise import hash_uniform


def tile_stats(tile, blocks_in_tile: dict[str, int] | None = None, river: bool = False) -> dict:
    """Class fractions, object counts, height range of a tile (JSON-serialisable)."""
    labels = tile.labels.get("labels", [])
    counts = {c: int(sum(1 for n in labels if n == c)) for c in tile.labels.get("classes", [])}
    return {
        "class_fractions": class_fractions(tile.semantic),
        "object_counts": counts,
        "blocks": blocks_in_tile or {},
        "height_m": {
            "min": float(tile.height.min()),
            "max": float(tile.height.max()),
            "mean": float(tile.height.mean()),
        },
        "river": bool(river),
        "gsd_m": tile.gsd,
        "extent_m": [tile.grid.shape[1] * tile.gsd, tile.grid.shape[0] * tile.gsd],
    }


def _count(n: int, one: str, many: str) -> str:
    if n == 0:
        return ""
    if n == 1:
        return f"a {one}"
    if n < 4:
        return f"{('two', 'three')[n - 2]} {many}"
    if n < 12:
        return f"several {many}"
    return f"many {many}"


SCENE_PHRASES: dict[str, str] = {
    "dense_urban": "a dense urban district",
    "residential": "a residential neighbourhood",
    "industrial": "an industrial area",
    "town_edge": "the edge of a town",
    "suburban": "a suburban area",
    "lake": "a lake",
    "open_water": "open water",
    "forest": "a dense forest",
    "farmland": "farmland with fields of different crops",
    "bare": "bare rocky ground",
    "countryside": "countryside with meadows",
}


def scene_of(stats: dict) -> str:
    """The kind of scene a tile shows (a key of :data:`SCENE_PHRASES`), from its statistics:
    what is built up first, then water, forest, farmland, bare ground."""
    fr = stats["class_fractions"]
    blk = stats.get("blocks", {})
    built = (
        fr["building"] + fr["road_major"] + fr["road_secondary"] + fr["road_minor"] + fr["parking"]
    )
    if built > 0.35:
        if blk.get("industrial", 0) >= max(blk.get("apartments", 0), blk.get("houses", 0), 1):
            return "industrial"
        return "dense_urban" if blk.get("apartments", 0) > blk.get("houses", 0) else "residential"
    if built > 0.1:
        return "town_edge" if fr["farmland"] + fr["forest"] > 0.2 else "suburban"
    if fr["water"] > 0.45:
        return "open_water" if stats.get("river") else "lake"
    if fr["forest"] > 0.5:
        return "forest"
    if fr["farmland"] > 0.4:
        return "farmland"
    if fr["bare"] > 0.3:
        return "bare"
    return "countryside"


# --- coarse scene classes (the tile classifier's, :mod:`earthgen.evaluation.tilenet`) ---------

SCENES: tuple[str, ...] = (
    "dense_urban",
    "residential",
    "industrial",
    "farmland",
    "forest",
    "water",
    "countryside",
)


# fine scene kinds of the captions -> the classifier's scenes
_SCENE_OF_KIND = {
    "town_edge": "residential",
    "suburban": "residential",
    "lake": "water",
    "open_water": "water",
    "bare": "countryside",
}


def scene_label(stats: dict) -> int:
    """Scene id of a world tile from its statistics (the rules of its caption, coarser)."""
    kind = scene_of(stats)
    return SCENES.index(_SCENE_OF_KIND.get(kind, kind))


def caption_for(tile) -> str:
    """One sentence describing the tile, e.g. ``"Aerial image at 0.5 m/px of a residential area
    with many houses, several cars along the streets and trees in the gardens."``."""
    st = tile.stats
    fr = st["class_fractions"]
    oc = st["object_counts"]
    blk = st.get("blocks", {})
    rng_pick = hash_uniform(
        np.arange(4), tile.seed, int(tile.grid.x0 * 8) & 0xFFFFFF, int(tile.grid.y0 * 8) & 0xFFFFFF
    )
    scene = SCENE_PHRASES[scene_of(st)]
    parts = []
    n_b = oc.get("building", 0)
    kind = "buildings" if blk.get("apartments", 0) or blk.get("industrial", 0) else "houses"
    if n_b:
        parts.append(_count(n_b, kind[:-1], kind))
    if oc.get("storage_tank", 0):
        parts.append(_count(oc["storage_tank"], "storage tank", "storage tanks"))
    n_v = oc.get("small_vehicle", 0) + oc.get("large_vehicle", 0)
    if n_v:
        where = (
            " in a parking lot"
            if blk.get("parking", 0) and fr["parking"] > 0.05
            else " on the roads"
        )
        parts.append(_count(n_v, "vehicle", "vehicles") + where)
    if fr["water"] > 0.02 and fr["water"] <= 0.45:
        parts.append("a river" if rng_pick[0] < 0.5 and fr["water"] < 0.15 else "water")
    if fr["forest"] > 0.08 and scene != "a dense forest":
        parts.append("patches of forest" if fr["forest"] > 0.2 else "trees")
    if fr["farmland"] > 0.08 and "farmland" not in scene:
        parts.append("farm fields")
    if fr["road_major"] > 0.03:
        parts.append("a main road")
    parts = [p for p in parts if p]
    lead = ("Aerial image", "Satellite image", "Overhead view")[int(rng_pick[1] * 3)]
    text = f"{lead} at {tile.gsd:g} m/px of {scene}"
    if parts:
        text += " with " + (
            ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        )
    return text + "."
