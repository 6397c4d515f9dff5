"""Write every layer of a world tile to a folder (atomically: all files appear together or none).

Files (``DIR/``):

- ``rgb.png``, ``rgb.tif``: the aerial render (GeoTIFF with CRS and transform)
- ``semantic.png`` (palette PNG, pixel value = class id), ``semantic.tif``, ``legend.json``
- ``height.tif``: band 1 terrain height, band 2 surface height (DSM: terrain + buildings, trees,
  water surface), metres, float32
- ``layout.geojson``: vector layout in WGS84 (roads, buildings with heights, tanks, trees, water)
- ``labels.json`` (rotated corners + horizontal boxes, pixels), ``labels_dota.txt`` (DOTA v1)
- ``caption.txt``, ``meta.json`` (seed, config, georeference, statistics)
- ``voxels.npz``, ``voxels.ply``: sparse voxels with semantic and colour (unless disabled)
- ``preview.png``: render | class map | render with boxes, side by side
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine

from earthgen.classes import CLASS_ID, CLASS_NAMES, PALETTE, colorize, legend
from earthgen.data.dota import write_dota_file
from earthgen.io import atomic_dir, write_geotiff, write_json, write_png

BOX_COLORS = {
    "building": (255, 60, 60),
    "storage_tank": (255, 255, 0),
    "small_vehicle": (0, 255, 255),
    "large_vehicle": (255, 0, 255),
}


def layout_geojson(tile) -> dict:
    """The tile's vector layout (objects and water) as a GeoJSON FeatureCollection in WGS84."""
    import shapely
    from rasterio.features import shapes

    from earthgen.geo.vector import Feature, features_geojson
    from earthgen.world.config import FALSE_ORIGIN

    feats = list(tile.features)
    water = (tile.semantic == CLASS_ID["water"]).astype(np.uint8)
    if water.any():
        xmin, _, _, ymax = tile.grid.bounds
        aff = Affine(tile.gsd, 0, xmin, 0, -tile.gsd, ymax)
        for geom, _ in shapes(water, mask=water.astype(bool), transform=aff):
            feats.append(Feature(shapely.geometry.shape(geom).simplify(tile.gsd), "water"))
    # world metres -> the georeferenced frame (EPSG:32633 with the world origin at FALSE_ORIGIN)
    moved = shapely.transform(
        np.array([f.geometry for f in feats], dtype=object), lambda c: c + FALSE_ORIGIN
    )
    feats = [Feature(g, f.cls, f.props) for g, f in zip(moved, feats, strict=True)]
    x0, y0, x1, y1 = tile.grid.bounds
    bounds = (
        x0 + FALSE_ORIGIN[0],
        y0 + FALSE_ORIGIN[1],
        x1 + FALSE_ORIGIN[0],
        y1 + FALSE_ORIGIN[1],
    )
    return features_geojson(feats, tile.crs, bounds)


def draw_boxes(rgb: np.ndarray, corners: np.ndarray, labels: list[str]) -> np.ndarray:
    """Draw rotated boxes ``[N, 4, 2]`` (pixels) on a copy of ``rgb`` ``[H, W, 3]``."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    for c, name in zip(corners, labels, strict=False):
        pts = [tuple(map(float, p)) for p in c]
        d.polygon(pts, outline=BOX_COLORS.get(name, (255, 255, 255)))
    return np.asarray(img)


def save_tile(tile, out_dir, voxel_size: float | None = 1.0) -> dict[str, str]:
    """Write all layers of ``tile`` into ``out_dir``; returns ``{file name: path}``."""
    out_dir = Path(out_dir)
    vox = tile.voxels(voxel_size) if voxel_size else None  # validate before writing anything
    lab = tile.labels
    files: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:

        def p(name: str) -> Path:
            files[name] = str(out_dir / name)
            return tmp / name

        write_png(p("rgb.png"), tile.rgb)
        write_geotiff(
            p("rgb.tif"),
            np.moveaxis(tile.rgb, -1, 0),
            tile.crs,
            tile.transform,
            band_descriptions=["red", "green", "blue"],
        )
        write_png(p("semantic.png"), tile.semantic, palette=PALETTE)
        write_geotiff(
            p("semantic.tif"),
            tile.semantic,
            tile.crs,
            tile.transform,
            colormap=PALETTE,
            band_descriptions=["class id (see legend.json)"],
        )
        surface = (
            np.where(tile.semantic == CLASS_ID["water"], tile.water_level, tile.height)
            + tile.object_height
        )
        write_geotiff(
            p("height.tif"),
            np.stack([tile.height, surface.astype(np.float32)]),
            tile.crs,
            tile.transform,
            band_descriptions=["terrain height (m)", "surface height, DSM (m)"],
        )
        write_json(p("legend.json"), legend())
        write_json(p("layout.geojson"), layout_geojson(tile))
        h, w = tile.grid.shape
        write_json(
            p("labels.json"),
            {
                "image": "rgb.png",
                "width": w,
                "height": h,
                "gsd_m": tile.gsd,
                "classes": lab["classes"],
                "objects": [
                    {
                        "label": n,
                        "corners": c.round(2).tolist(),
                        "hbb": b.round(2).tolist(),
                        "truncated": bool(t),
                    }
                    for c, b, n, t in zip(
                        lab["corners"], lab["hbb"], lab["labels"], lab["truncated"], strict=False
                    )
                ],
            },
        )
        write_dota_file(
            p("labels_dota.txt"), tile.boxes(), imagesource="earthgen-world", gsd=tile.gsd
        )
        p("caption.txt").write_text(tile.caption + "\n")
        boxes = draw_boxes(tile.rgb, lab["corners"], lab["labels"])
        write_png(
            p("preview.png"), np.concatenate([tile.rgb, colorize(tile.semantic), boxes], axis=1)
        )
        if vox is not None:
            vox.save_npz(p("voxels.npz"))
            vox.save_ply(p("voxels.ply"))
        meta = {
            "seed": tile.seed,
            "size": [w, h],
            "gsd_m": tile.gsd,
            "origin_m": [tile.grid.x0, tile.grid.y0],
            "crs": tile.crs,
            "transform": list(tile.transform)[:6],
            "caption": tile.caption,
            "config": tile.config.to_dict(),
            "stats": tile.stats,
            "classes": list(CLASS_NAMES),
            "voxels": None if vox is None else {"voxel_size_m": vox.voxel_size, "count": len(vox)},
        }
        write_json(p("meta.json"), meta)
    files["dir"] = str(out_dir)
    return files
