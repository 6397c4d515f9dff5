"""Read OpenStreetMap data (.osm, .osm.pbf, .osm.bz2, .osm.gz) or GeoJSON into :class:`Feature` s.

Reading happens in two steps:

* :func:`load_source` parses the whole file once (cached per path/mtime) into shapely geometries
  in the file's own CRS (WGS84 for OSM), each tagged with a class of :mod:`earthgen.classes`.
* :func:`select_features` picks the features touching a window of a metric CRS (STRtree query),
  reprojects them, clips them to the window plus a margin, and adds sea polygons built from
  ``natural=coastline`` (OSM convention: land on the left of the way direction, sea on the right).

Tag rules (see :func:`classify_area` / :func:`classify_line` and docs/classes.md):

* Anything in a tunnel (``tunnel`` not ``no``), ``covered=yes``, ``indoor=yes`` or
  ``location=underground/indoor`` is skipped: it is not visible from above. A negative ``layer``
  alone is kept (open cuts and underpasses are visible); within a class, features are ordered by
  ``layer`` so bridges paint over what they cross.
* Road width (metres): ``width`` tag, else ``lanes`` x 3.5 m, else the class default of
  :data:`earthgen.classes.ROAD_WIDTH_M` (x 0.6 for ``oneway=yes`` carriageways of motor roads).
  Railways: 4 m per track (``tracks``). Waterways: ``width`` tag, else river 20 m, canal 10 m,
  tidal channel 5 m, stream/brook 3 m, ditch/drain 1.5 m. Tree rows: forest, 5 m.
* Buildings keep ``height`` (m; ``height`` tag, else ``building:levels`` x 3 m) and
  ``height_source`` ('height' / 'levels') in ``props``, plus ``levels``, ``min_height`` (m)
  and ``min_level``; :mod:`earthgen.geo.heights` turns them into building tops
  (type defaults where untagged, docs/heights.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS

from earthgen.classes import CLASS_ID, ROAD_WIDTH_M
from earthgen.errors import UserInputError
from earthgen.geo.crs import WGS84, BBox, Bounds, as_crs, project_geometries, transform_bounds
from earthgen.geo.vector import Feature

log = logging.getLogger(__name__)

OSM_SUFFIXES = (".osm", ".osm.pbf", ".pbf", ".osm.bz2", ".osm.gz", ".o5m")
GEOJSON_SUFFIXES = (".geojson", ".json")

# Only objects with one of these keys are turned into Python objects (speed).
_KEYS = (
    "building",
    "highway",
    "railway",
    "waterway",
    "natural",
    "landuse",
    "leisure",
    "water",
    "amenity",
    "area:highway",
    "public_transport",
)

# --- tag tables -------------------------------------------------------------------------------

HIGHWAY_CLASS: dict[str, str] = {
    **dict.fromkeys(("motorway", "trunk", "primary"), "road_major"),
    **dict.fromkeys(("secondary", "tertiary"), "road_secondary"),
    **dict.fromkeys(
        ("residential", "unclassified", "service", "living_street", "road", "busway"), "road_minor"
    ),
    **dict.fromkeys(
        ("footway", "cycleway", "path", "track", "pedestrian", "steps", "bridleway", "trail"),
        "path",
    ),
}
RAILWAY_KINDS = frozenset(
    ("rail", "light_rail", "tram", "narrow_gauge", "subway", "monorail", "funicular", "preserved")
)
WATERWAY_WIDTH_M: dict[str, float] = {
    "river": 20.0,
    "canal": 10.0,
    "tidal_channel": 5.0,
    "stream": 3.0,
    "brook": 3.0,
    "ditch": 1.5,
    "drain": 1.5,
}
LANE_WIDTH_M = 3.5
TRACK_WIDTH_M = ROAD_WIDTH_M["railway"]
TREE_ROW_WIDTH_M = 5.0
LEVEL_HEIGHT_M = 3.0
ONEWAY_FACTOR = 0.6

_AREA_RULES: tuple[tuple[str, str, frozenset[str] | None], ...] = (
    # (class, key, values; None = any value)
    ("water", "natural", frozenset(("water", "bay", "strait"))),
    ("water", "water", None),
    ("water", "waterway", frozenset(("riverbank", "dock"))),
    ("water", "landuse", frozenset(("reservoir", "basin", "pond"))),
    ("water", "leisure", frozenset(("swimming_pool",))),
    ("water", "amenity", frozenset(("fountain",))),
    ("parking", "amenity", frozenset(("parking",))),
    ("bare", "natural", frozenset(("sand", "beach", "bare_rock", "scree", "shingle"))),
    ("bare", "landuse", frozenset(("quarry", "construction", "brownfield", "landfill"))),
    ("forest", "landuse", frozenset(("forest",))),
    ("forest", "natural", frozenset(("wood", "scrub"))),
    (
        "farmland",
        "landuse",
        frozenset(("farmland", "orchard", "vineyard", "allotments", "plant_nursery")),
    ),
    ("grass", "leisure", frozenset(("park", "garden", "pitch", "golf_course", "dog_park"))),
    (
        "grass",
        "landuse",
        frozenset(
            (
                "grass",
                "meadow",
                "recreation_ground",
                "cemetery",
                "village_green",
                "greenfield",
                "flowerbed",
            )
        ),
    ),
    ("grass", "natural", frozenset(("grassland", "heath"))),
    ("path", "railway", frozenset(("platform",))),
    ("path", "public_transport", frozenset(("platform",))),
)

_NUM_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(m|meters?|metres?|ft|feet|'|km)?\s*$", re.I)
_FEET_INCH_RE = re.compile(r"^\s*(\d+)\s*'\s*(\d+(?:\.\d+)?)\s*\"\s*$")
_HSTORE_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*"((?:[^"\\]|\\.)*)"')


def parse_length(text: Any) -> float | None:
    """An OSM length value ('12', '12 m', '40 ft', "10'6\"", '3,5') in metres; None if
    unparsable."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
        return v if math.isfinite(v) else None
    s = str(text).strip().replace(",", ".") if str(text).count(",") == 1 else str(text).strip()
    m = _FEET_INCH_RE.match(s)
    if m:
        return (float(m.group(1)) * 12 + float(m.group(2))) * 0.0254
    m = _NUM_RE.match(s)
    if not m:
        return None
    v = float(m.group(1))
    unit = (m.group(2) or "m").lower()
    if unit in ("ft", "feet", "'"):
        v *= 0.3048
    elif unit == "km":
        v *= 1000.0
    return v


def _parse_count(text: Any) -> float | None:
    """'2', '2;3', '2.5' -> the largest number; None if unparsable."""
    if text is None:
        return None
    vals = []
    for part in str(text).split(";"):
        try:
            vals.append(float(part.strip()))
        except ValueError:
            continue
    return max(vals) if vals else None


def _layer(tags: dict[str, Any]) -> int:
    try:
        return int(float(tags.get("layer", 0)))
    except (TypeError, ValueError):
        return 0


def _hidden(tags: dict[str, str]) -> bool:
    """True for things not visible from above: tunnels, covered/indoor, underground."""
    tunnel = tags.get("tunnel")
    return bool(
        (tunnel is not None and tunnel != "no")
        or tags.get("covered") == "yes"
        or tags.get("indoor") == "yes"
        or tags.get("location") in ("underground", "indoor")
    )


def _common_props(tags: dict[str, str]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if "name" in tags:
        props["name"] = tags["name"]
    layer = _layer(tags)
    if layer:
        props["layer"] = layer
    if tags.get("bridge") not in (None, "no"):
        props["bridge"] = True
    return props


def _building_props(tags: dict[str, str]) -> dict[str, Any]:
    props = _common_props(tags)
    props["kind"] = tags["building"]
    height = parse_length(tags.get("height"))
    levels = _parse_count(tags.get("building:levels"))
    if levels is not None and 0 <= levels < 300:
        props["levels"] = levels
    if height is not None and 0 < height < 1000:
        props["height"] = height
        props["height_source"] = "height"
    elif levels is not None and 0 < levels < 300:
        props["height"] = levels * LEVEL_HEIGHT_M
        props["height_source"] = "levels"
    min_height = parse_length(tags.get("min_height"))
    if min_height is not None and 0 < min_height < 1000:
        props["min_height"] = min_height
    min_level = _parse_count(tags.get("building:min_level"))
    if min_level is not None and 0 < min_level < 300:
        props["min_level"] = min_level
    return props


def _valid_width(w: float | None) -> float | None:
    return w if w is not None and 0.3 <= w <= 200.0 else None


def classify_area(tags: dict[str, str], from_way: bool = True) -> tuple[str, dict[str, Any]] | None:
    """Class and props of a polygon with OSM ``tags``; None if it maps to no class.

    ``from_way`` is False for multipolygon relations: a closed ``highway=*`` way is an area
    only with ``area=yes``, while a highway multipolygon always is."""
    if not tags:
        return None
    b = tags.get("building")
    if b is not None and b not in ("no", "underground") and tags.get("location") != "underground":
        return "building", _building_props(tags)
    if _hidden(tags) or tags.get("parking") == "underground":
        return None
    for cls, key, values in _AREA_RULES:
        v = tags.get(key)
        if v is not None and v != "no" and (values is None or v in values):
            return cls, {**_common_props(tags), "kind": f"{key}={v}"}
    hw = tags.get("highway")
    if hw is not None and (tags.get("area") == "yes" or not from_way):
        if hw in ("pedestrian", "footway", "platform"):
            return "path", {**_common_props(tags), "kind": f"highway={hw}"}
        cls = HIGHWAY_CLASS.get(hw.removesuffix("_link"))
        if cls:
            return cls, {**_common_props(tags), "kind": f"highway={hw}"}
    ahw = tags.get("area:highway")
    if ahw is not None:
        cls = (
            "path"
            if ahw in ("pedestrian", "footway")
            else HIGHWAY_CLASS.get(ahw.removesuffix("_link"))
        )
        if cls:
            return cls, {**_common_props(tags), "kind": f"area:highway={ahw}"}
    return None


def classify_line(tags: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    """Class and props (with ``width`` in metres) of a linear OSM way; None if not mapped."""
    if not tags or _hidden(tags) or tags.get("area") == "yes":
        return None
    width = _valid_width(parse_length(tags.get("width")))
    hw = tags.get("highway")
    if hw is not None:
        cls = HIGHWAY_CLASS.get(hw.removesuffix("_link"))
        if cls is None:
            return None
        if width is None and cls != "path":
            lanes = _parse_count(tags.get("lanes"))
            if lanes is not None and 1 <= lanes <= 20:
                width = lanes * LANE_WIDTH_M
            elif tags.get("oneway") in ("yes", "1", "-1") and cls != "road_minor":
                width = ROAD_WIDTH_M[cls] * ONEWAY_FACTOR
        return cls, {
            **_common_props(tags),
            "kind": f"highway={hw}",
            "width": width or ROAD_WIDTH_M[cls],
        }
    rw = tags.get("railway")
    if rw is not None:
        if rw not in RAILWAY_KINDS:
            return None
        tracks = _parse_count(tags.get("tracks"))
        if width is None:
            width = TRACK_WIDTH_M * (tracks if tracks and 1 <= tracks <= 20 else 1)
        return "railway", {**_common_props(tags), "kind": f"railway={rw}", "width": width}
    ww = tags.get("waterway")
    if ww is not None:
        if ww not in WATERWAY_WIDTH_M:
            return None
        return "water", {
            **_common_props(tags),
            "kind": f"waterway={ww}",
            "width": width or WATERWAY_WIDTH_M[ww],
        }
    if tags.get("natural") == "tree_row":
        return "forest", {
            **_common_props(tags),
            "kind": "natural=tree_row",
            "width": width or TREE_ROW_WIDTH_M,
        }
    return None


# --- the parsed source ------------------------------------------------------------------------


@dataclass(eq=False)
class VectorSource:
    """A parsed vector file: classified geometries in ``crs`` (WGS84 degrees for OSM)."""

    path: Path
    crs: CRS
    geoms: np.ndarray  # [N] shapely geometries in ``crs``
    classes: tuple[str, ...]  # [N] class names
    props: tuple[dict, ...]  # [N] feature attributes (osm_id, kind, width, height, ...)
    coastlines: np.ndarray  # [M] natural=coastline LineStrings in ``crs``, way direction kept
    extent: BBox | None  # lon/lat extent of the data (file header, else the geometries)
    read_seconds: float  # time taken to parse the file

    def __post_init__(self) -> None:
        self.tree = shapely.STRtree(self.geoms)
        self.coast_tree = shapely.STRtree(self.coastlines)

    def __len__(self) -> int:
        return len(self.geoms)

    def class_counts(self) -> dict[str, int]:
        """Number of features of each class in the whole file."""
        out: dict[str, int] = {}
        for c in self.classes:
            out[c] = out.get(c, 0) + 1
        return out


def source_kind(path: str | os.PathLike) -> str:
    """'osm' or 'geojson' from the file name; :class:`UserInputError` for anything else."""
    name = Path(path).name.lower()
    if name.endswith(OSM_SUFFIXES):
        return "osm"
    if name.endswith(GEOJSON_SUFFIXES):
        return "geojson"
    raise UserInputError(
        f"{path}: unknown file type; expected an OSM file ({', '.join(OSM_SUFFIXES)}) "
        f"or GeoJSON ({', '.join(GEOJSON_SUFFIXES)})"
    )


def load_source(path: str | os.PathLike, source_crs: Any = None) -> VectorSource:
    """Parse an OSM or GeoJSON file (cached by path, size and modification time).

    ``source_crs`` overrides the CRS of GeoJSON coordinates (its ``crs`` member, else WGS84).
    """
    p = Path(path).expanduser()
    kind = source_kind(p)
    if not p.exists():
        raise UserInputError(f"{p}: file not found")
    if not p.is_file():
        raise UserInputError(f"{p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise UserInputError(f"{p}: file is not readable (permission denied)")
    st = p.stat()
    crs_key = as_crs(source_crs, "source CRS").to_wkt() if source_crs is not None else ""
    if kind == "osm" and source_crs is not None:
        raise UserInputError("a source CRS applies to GeoJSON input only; OSM data is always WGS84")
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, kind, crs_key)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int, kind: str, crs_key: str) -> VectorSource:
    t0 = time.perf_counter()
    if kind == "osm":
        src = _read_osm(Path(path))
    else:
        src = _read_geojson(Path(path), CRS.from_wkt(crs_key) if crs_key else None)
    src.read_seconds = time.perf_counter() - t0
    log.info(
        "read %s: %d features, %d coastline ways in %.2f s",
        path,
        len(src),
        len(src.coastlines),
        src.read_seconds,
    )
    return src


def _finish(
    path: Path,
    crs: CRS,
    geoms: list,
    classes: list[str],
    props: list[dict],
    coast: list,
    header_extent: BBox | None,
) -> VectorSource:
    garr = np.array(geoms, dtype=object) if geoms else np.empty(0, dtype=object)
    if len(garr):
        garr = shapely.from_wkb(garr) if isinstance(geoms[0], (bytes, str)) else garr
        bad = ~shapely.is_valid(garr)
        if bad.any():
            garr[bad] = shapely.make_valid(garr[bad])
    carr = np.array(coast, dtype=object) if coast else np.empty(0, dtype=object)
    if len(carr) and isinstance(coast[0], (bytes, str)):
        carr = shapely.from_wkb(carr)
    extent = header_extent
    if extent is None:
        allg = np.concatenate([garr, carr]) if len(carr) else garr
        if len(allg):
            b = shapely.total_bounds(allg)
            if np.all(np.isfinite(b)):
                extent = transform_bounds(tuple(b), crs, WGS84) if crs != WGS84 else tuple(b)
    return VectorSource(
        path,
        crs,
        garr,
        tuple(classes),
        tuple(props),
        carr,
        tuple(float(v) for v in extent) if extent else None,
        0.0,
    )


# --- OSM ----------------------------------------------------------------------------------------


def _read_osm(path: Path) -> VectorSource:
    try:
        return _read_osm_sorted(path, path)
    except RuntimeError as e:
        if "out of order" not in str(e):
            raise UserInputError(f"{path}: cannot read OSM data: {e}") from None
    # libosmium's area assembler needs id-sorted input (API/JOSM downloads often are not).
    log.info("%s is not sorted by id; sorting a temporary copy", path)
    with tempfile.TemporaryDirectory(prefix="earthgen-osm-") as tmp:
        sorted_path = Path(tmp) / "sorted.osm.pbf"
        try:
            _write_sorted_copy(path, sorted_path)
            return _read_osm_sorted(sorted_path, path)
        except RuntimeError as e:
            raise UserInputError(f"{path}: cannot read OSM data: {e}") from None


def _write_sorted_copy(src: Path, dst: Path) -> None:
    import osmium
    from osmium.osm import mutable

    nodes, ways, rels = [], [], []
    for o in osmium.FileProcessor(str(src)):
        tags = dict(o.tags)
        if o.is_node():
            loc = o.location
            if loc.valid():
                nodes.append(mutable.Node(id=o.id, location=(loc.lon, loc.lat), tags=tags))
        elif o.is_way():
            ways.append(mutable.Way(id=o.id, nodes=[n.ref for n in o.nodes], tags=tags))
        elif o.is_relation():
            members = [(m.type, m.ref, m.role) for m in o.members]
            rels.append(mutable.Relation(id=o.id, members=members, tags=tags))
    with osmium.SimpleWriter(str(dst)) as w:
        for group in (nodes, ways, rels):
            for obj in sorted(group, key=lambda x: x.id):
                w.add(obj)


def _way_pieces_wkb(way: Any) -> bytes | None:
    """WKB of the parts of a way whose node locations are known (ways cut by the extract)."""
    parts, cur = [], []
    for n in way.nodes:
        loc = n.location
        if loc.valid():
            xy = (loc.lon, loc.lat)
            if not cur or cur[-1] != xy:
                cur.append(xy)
        else:
            if len(cur) >= 2:
                parts.append(cur)
            cur = []
    if len(cur) >= 2:
        parts.append(cur)
    if not parts:
        return None
    geom = shapely.LineString(parts[0]) if len(parts) == 1 else shapely.MultiLineString(parts)
    return shapely.to_wkb(geom)


def _read_osm_sorted(path: Path, display: Path) -> VectorSource:
    import osmium
    from osmium.geom import WKBFactory

    header_extent: BBox | None = None
    box = osmium.io.Reader(str(display), osmium.osm.NOTHING).header().box()
    if box.valid():
        bl, tr = box.bottom_left, box.top_right
        header_extent = (bl.lon, bl.lat, tr.lon, tr.lat)

    fp = (
        osmium.FileProcessor(str(path))
        .with_areas(osmium.filter.KeyFilter(*_KEYS))
        .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY | osmium.osm.AREA))
        .with_filter(osmium.filter.KeyFilter(*_KEYS))
    )
    fab = WKBFactory()
    geoms: list[bytes] = []
    classes: list[str] = []
    props: list[dict] = []
    coast: list[bytes] = []
    n_bad = 0
    geom_errors = (RuntimeError, ValueError, osmium.InvalidLocationError)
    for obj in fp:
        tags = dict(obj.tags)
        if obj.is_area():
            from_way = obj.from_way()
            res = classify_area(tags, from_way=from_way)
            if res is None:
                continue
            try:
                wkb = fab.create_multipolygon(obj)
            except geom_errors:
                n_bad += 1
                continue
            osm_id = f"{'way' if from_way else 'relation'}/{obj.orig_id()}"
        else:
            is_coast = tags.get("natural") == "coastline"
            res = classify_line(tags)
            if res is None and not is_coast:
                continue
            try:
                wkb = fab.create_linestring(obj)
            except geom_errors:
                wkb = _way_pieces_wkb(obj)
                if wkb is None:
                    n_bad += 1
                    continue
            if is_coast:
                coast.append(wkb)
            if res is None:
                continue
            osm_id = f"way/{obj.id}"
        cls, p = res
        geoms.append(wkb)
        classes.append(cls)
        props.append({"osm_id": osm_id, **p})
    if n_bad:
        log.info("%s: %d objects without a usable geometry skipped", display, n_bad)
    if coast:
        # split multi-part coastline pieces (ways cut by the extract) into single lines
        carr = shapely.get_parts(shapely.from_wkb(np.array(coast, dtype=object)))
        coast = list(carr[shapely.get_num_coordinates(carr) >= 2])
    return _finish(display, WGS84, geoms, classes, props, coast, header_extent)


# --- GeoJSON ------------------------------------------------------------------------------------


def _geojson_tags(props: dict | None) -> dict[str, str]:
    """OSM-style tags from GeoJSON properties: empty values dropped, an hstore ``tags`` string
    (osm2pgsql exports) or a ``tags`` object merged in."""
    tags: dict[str, str] = {}
    for k, v in (props or {}).items():
        if v is None or v == "" or isinstance(v, (dict, list)):
            continue
        tags[str(k)] = str(v)
    extra = (props or {}).get("tags")
    if isinstance(extra, dict):
        for k, v in extra.items():
            if v not in (None, ""):
                tags.setdefault(str(k), str(v))
    elif isinstance(extra, str) and "=>" in extra:
        tags.pop("tags", None)
        for k, v in _HSTORE_RE.findall(extra):
            tags.setdefault(k, v)
    return tags


def _read_geojson(path: Path, source_crs: CRS | None) -> VectorSource:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserInputError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: cannot read file: {e}") from None
    if not isinstance(data, dict) or data.get("type") not in ("FeatureCollection", "Feature"):
        raise UserInputError(f"{path}: expected a GeoJSON FeatureCollection or Feature")
    feats = data.get("features") if data["type"] == "FeatureCollection" else [data]
    if not isinstance(feats, list):
        raise UserInputError(f"{path}: 'features' must be a list")

    crs = source_crs
    member = data.get("crs")
    if crs is None and isinstance(member, dict):
        name = (member.get("properties") or {}).get("name")
        crs = as_crs(name, f"{path}: 'crs' member")
    crs = crs or WGS84

    geoms: list = []
    classes: list[str] = []
    props: list[dict] = []
    coast: list = []
    for i, f in enumerate(feats):
        if not isinstance(f, dict) or not f.get("geometry"):
            continue
        try:
            g = shapely.geometry.shape(f["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as e:
            raise UserInputError(f"{path}: feature {i} has an invalid geometry: {e}") from None
        if g.is_empty:
            continue
        raw = f.get("properties") or {}
        tags = _geojson_tags(raw)
        osm_id = raw.get("osm_id", raw.get("id", f.get("id", f"feature/{i}")))
        gtype = g.geom_type
        res: tuple[str, dict] | None
        explicit = raw.get("class")
        if isinstance(explicit, str) and explicit in CLASS_ID:
            keep = {k: v for k, v in raw.items() if k != "class" and v not in (None, "")}
            for k in ("width", "height", "min_height", "radius"):
                if k in keep:
                    v = parse_length(keep.pop(k))
                    if v is not None and v > 0:
                        keep[k] = v
            res = (explicit, keep)
        elif gtype in ("Polygon", "MultiPolygon"):
            res = classify_area(tags, from_way=True)
        elif gtype in ("LineString", "MultiLineString"):
            if tags.get("natural") == "coastline":
                coast.extend(shapely.get_parts(g))
            res = classify_line(tags)
            if res is None and gtype == "LineString" and g.is_closed and len(g.coords) >= 4:
                res = classify_area(tags, from_way=True)
                if res is not None:
                    g = shapely.Polygon(g.coords)
        else:
            res = None
        if res is None:
            continue
        cls, p = res
        geoms.append(g)
        classes.append(cls)
        props.append({"osm_id": osm_id, **p})

    allg = np.array(geoms + coast, dtype=object)
    if len(allg) and crs.is_geographic:
        b = shapely.total_bounds(allg)
        if b[0] < -180.5 or b[2] > 360.5 or b[1] < -90.5 or b[3] > 90.5:
            raise UserInputError(
                f"{path}: coordinates (x {b[0]:.1f}..{b[2]:.1f}, y {b[1]:.1f}..{b[3]:.1f}) are not "
                "longitude/latitude; give their CRS with --source-crs (e.g. EPSG:32616) or a "
                "GeoJSON 'crs' member"
            )
    return _finish(path, crs, geoms, classes, props, coast, None)


# --- selection, reprojection, clipping ----------------------------------------------------------


def _pad(bounds: Bounds, d: float) -> Bounds:
    return (bounds[0] - d, bounds[1] - d, bounds[2] + d, bounds[3] + d)


def _region_in_source(src: VectorSource, bounds: Bounds, crs: CRS) -> Any:
    b = transform_bounds(bounds, crs, src.crs)
    pad = 0.01 * max(b[2] - b[0], b[3] - b[1])
    return shapely.box(*_pad(b, pad))


def _keep_dim(geom: Any, dim: int) -> Any:
    """Parts of ``geom`` of dimension ``dim`` (1 lines, 2 polygons); None if none."""
    if geom is None or geom.is_empty:
        return None
    if shapely.get_dimensions(geom) == dim and geom.geom_type != "GeometryCollection":
        return geom
    parts = [
        p for p in shapely.get_parts(geom) if shapely.get_dimensions(p) == dim and not p.is_empty
    ]
    if not parts:
        return None
    return shapely.union_all(parts) if len(parts) > 1 else parts[0]


def select_features(
    src: VectorSource, bounds: Bounds, crs: Any, margin: float = 64.0, sea: bool = True
) -> list[Feature]:
    """Features of ``src`` touching ``bounds`` (min_x, min_y, max_x, max_y in ``crs`` metres),
    reprojected to ``crs`` and clipped to the window grown by ``margin`` metres (wide enough for
    half the widest buffered line). With ``sea``, adds ``water`` polygons of the sea side of
    nearby coastlines. Within a class, features are ordered by ``layer`` (then file order)."""
    crs = as_crs(crs)
    window = _pad(bounds, margin)
    wbox = shapely.box(*window)
    idx = np.sort(src.tree.query(_region_in_source(src, window, crs), predicate="intersects"))
    feats: list[Feature] = []
    if len(idx):
        geoms = project_geometries(src.geoms[idx], src.crs, crs)
        clipped = shapely.intersection(geoms, wbox)
        for i, g in zip(idx, clipped, strict=True):
            dim = shapely.get_dimensions(src.geoms[i])
            g = _keep_dim(g, max(int(dim), 1))
            if g is None:
                continue
            feats.append(Feature(g, src.classes[i], dict(src.props[i])))
    feats.sort(key=lambda f: _layer(f.props))
    if sea and len(src.coastlines):
        try:
            polys = _sea_for_window(src, bounds, crs, feats)
        except (shapely.errors.GEOSException, ValueError) as e:  # be robust: log and go on
            log.warning("coastline processing failed (%s); no sea polygons added", e)
            polys = []
        feats = [Feature(p, "water", {"osm_id": None, "kind": "sea"}) for p in polys] + feats
    return feats


def _sea_for_window(src: VectorSource, bounds: Bounds, crs: CRS, feats: list[Feature]) -> list:
    size = max(bounds[2] - bounds[0], bounds[3] - bounds[1])
    search = _pad(bounds, max(10_000.0, size))
    idx = np.sort(src.coast_tree.query(_region_in_source(src, search, crs), predicate="intersects"))
    if not len(idx):
        return []
    lines = project_geometries(src.coastlines[idx], src.crs, crs)
    polys = sea_polygons(lines, bounds)
    if not polys:
        return []
    # Sanity check against reversed/broken coastline data: the sea must not hold buildings.
    bld = [f.geometry for f in feats if f.cls == "building"]
    if bld:
        b = shapely.intersection(shapely.union_all(bld), shapely.box(*bounds))
        wet = shapely.intersection(b, shapely.union_all(polys)).area
        if b.area > 0 and wet > 0.1 * b.area:
            log.warning(
                "coastline data puts %.0f%% of the building area in the sea; "
                "ignoring the coastline here",
                100 * wet / b.area,
            )
            return []
    return polys


def sea_polygons(coastlines: Any, bounds: Bounds) -> list:
    """Sea parts of the box ``bounds`` from directed coastline LineStrings (same CRS, y up).

    The box is cut by the coastlines into faces; each face is sea when a point inside it lies
    on the right of the nearest coastline (OSM: land on the left). Works for boxes the
    coastline does not cross (all sea or all land) and for coastlines cut by the extract."""
    lines = [
        g for g in np.asarray(coastlines, dtype=object).ravel() if g is not None and not g.is_empty
    ]
    if not lines:
        return []
    merged = shapely.line_merge(
        shapely.MultiLineString([c for g in lines for c in shapely.get_parts(g)]), directed=True
    )
    box = shapely.box(*bounds)
    parts = [_extend_open_ends(p, box) for p in shapely.get_parts(merged) if p.length > 0]
    if not parts:
        return []
    parts_arr = np.array(parts, dtype=object)
    inside = _keep_dim(
        shapely.intersection(
            shapely.MultiLineString([c for p in parts for c in shapely.get_parts(p)]), box
        ),
        1,
    )
    if inside is None:
        faces = [box]
    else:
        noded = shapely.union_all([box.exterior, inside])
        faces = list(shapely.get_parts(shapely.polygonize(shapely.get_parts(noded))))
    sea = []
    for face in faces:
        if face.area <= 0:
            continue
        p = face.point_on_surface()
        k = int(np.argmin(shapely.distance(parts_arr, p)))
        if _right_of(parts[k], p):
            sea.append(face)
    if not sea:
        return []
    merged_sea = shapely.union_all(sea)
    return [g for g in shapely.get_parts(merged_sea) if g.area > 0]


def _extend_open_ends(line: Any, box: Any) -> Any:
    """Prolong an open coastline whose ends lie inside ``box`` (an extract cuts coastlines at
    its border) straight to the nearest box edge and 1 m beyond, so that it splits the box."""
    if line.is_closed:
        return line
    coords = np.asarray(line.coords)[:, :2]
    minx, miny, maxx, maxy = box.bounds
    ends: list[np.ndarray] = []
    for pt in (coords[0], coords[-1]):
        if not (minx < pt[0] < maxx and miny < pt[1] < maxy):
            ends.append(np.empty((0, 2)))
            continue
        # distances to the left, right, bottom, top edges and the outward unit vectors
        dists = (pt[0] - minx, maxx - pt[0], pt[1] - miny, maxy - pt[1])
        k = int(np.argmin(dists))
        step = np.array(((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))[k])
        ends.append((pt + step * (dists[k] + 1.0))[None])
    if not len(ends[0]) and not len(ends[1]):
        return line
    return shapely.LineString(np.concatenate([ends[0], coords, ends[1]]))


def _right_of(line: Any, p: Any) -> bool:
    """True if point ``p`` lies on the right of the directed ``line`` at its nearest point."""
    d = line.project(p)
    q = line.interpolate(d)
    dist = p.distance(q)
    delta = max(min(dist / 2.0, 5.0, line.length / 2.0), 1e-6)
    a = line.interpolate(max(d - delta, 0.0))
    b = line.interpolate(min(d + delta, line.length))
    vx, vy = b.x - a.x, b.y - a.y
    wx, wy = p.x - q.x, p.y - q.y
    return vx * wy - vy * wx < 0.0


def read_features(
    path: str | os.PathLike, bbox: BBox | None = None, crs: Any = None, source_crs: Any = None
) -> list[Feature]:
    """Convenience: features of ``path`` inside the lon/lat ``bbox`` (default: the data's extent)
    in ``crs`` (default: the UTM zone of the box centre), coordinates in metres."""
    from earthgen.geo.crs import bbox_to_bounds, check_bbox, check_metric, utm_crs

    src = load_source(path, source_crs)
    if bbox is None:
        if src.extent is None:
            raise UserInputError(f"{path}: no mapped features in the file")
        bbox = src.extent
    bbox = check_bbox(bbox)
    crs = (
        check_metric(as_crs(crs))
        if crs is not None
        else utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    )
    return select_features(src, bbox_to_bounds(bbox, crs), crs)
