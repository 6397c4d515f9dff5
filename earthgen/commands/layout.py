"""``earthgen layout``: rasterize OpenStreetMap (or GeoJSON) data into a semantic layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from earthgen.commands._args import (
    check_output,
    float_list,
    gsd_float,
    number,
    size_pair,
)
from earthgen.errors import UserInputError

# --max-pixels: at most a 1 GiB uint8 class map (rasterizing needs several bytes per pixel more)
MAX_PIXELS_CAP = 2**30

DESCRIPTION = """\
Rasterize OpenStreetMap data into a north-up semantic layout (one class id per pixel, the
EarthGen class table: building, roads, path, railway, water, forest, grass, farmland, bare,
parking) on a metric UTM grid, plus oriented building boxes.

Area: --bbox (with --gsd, or with --size: the GSD then follows from the larger side), or
--center with --size (GSD default 1 m/px), or nothing: the data's whole extent.

Writes into --out (a new or empty folder, which appears complete or not at all): layout.png
(palette PNG, pixel value = class id), layout.tif (GeoTIFF with CRS, transform and colour map),
legend.json (classes, grid, class fractions), features.geojson (the features used, WGS84) and
buildings.json (oriented boxes in pixels, heights in metres). A killed run leaves only a hidden
.<name>.partial-* folder beside --out, which can be deleted.
"""

EXAMPLES = """\
examples:
  earthgen layout monaco-latest.osm.pbf --center 43.7384,7.4246 --size 512 --gsd 1 --out out/monaco
  earthgen layout Helsinki.osm.pbf --bbox=24.935,60.164,24.953,60.179 --gsd 2 --out out/helsinki
  earthgen layout city.osm.bz2 --bbox=-122.303,37.806,-122.298,37.809 --size 1024x768
  earthgen layout labels.geojson --source-crs EPSG:32616 --center 33.638,-84.479 --size 900 \\
      --gsd 0.5 --crs EPSG:32616

Negative coordinates: write --bbox=-122.3,... or --center=-33.9,151.2 (with '=').
Inputs: .osm, .osm.pbf, .osm.bz2, .osm.gz, or a GeoJSON FeatureCollection whose properties are
OSM tags (or a 'class' property naming an EarthGen class).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``layout`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "layout",
        help="rasterize OSM data into a semantic layout (PNG, GeoTIFF, boxes)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, help="OSM file (.osm/.osm.pbf/.osm.bz2/.osm.gz) or GeoJSON")
    area = p.add_argument_group("area and resolution")
    area.add_argument(
        "--bbox",
        type=float_list(4, "--bbox"),
        metavar="MIN_LON,MIN_LAT,MAX_LON,MAX_LAT",
        help="area in degrees (WGS84)",
    )
    area.add_argument(
        "--center",
        type=float_list(2, "--center"),
        metavar="LAT,LON",
        help="centre of the layout in degrees; needs --size",
    )
    area.add_argument(
        "--size",
        type=size_pair,
        metavar="N|WxH",
        help="layout size in pixels (square N, or width x height)",
    )
    area.add_argument(
        "--gsd",
        type=gsd_float,
        metavar="M",
        help="ground sampling distance in metres/pixel (default 1 unless derived)",
    )
    area.add_argument(
        "--crs",
        metavar="CRS",
        help="metric CRS of the layout, e.g. EPSG:32632 (default: the area's UTM zone)",
    )
    area.add_argument(
        "--source-crs",
        metavar="CRS",
        help="CRS of GeoJSON coordinates when not lon/lat and the file has no 'crs' member",
    )
    area.add_argument(
        "--max-pixels",
        type=number(1, MAX_PIXELS_CAP, integer=True),
        default=None,
        metavar="N",
        help="refuse layouts larger than N pixels (default 16384x16384, at most 2**30)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/layout"),
        help="output folder, new or empty (default: outputs/layout)",
    )
    p.set_defaults(func=run, check=check_args)
    return p


def check_args(args: argparse.Namespace) -> None:
    """The size, the output folder and the source file, before the source is read
    (UserInputError: one line)."""
    from earthgen.geo.layout import MAX_PIXELS
    from earthgen.inputs import VECTOR_SUFFIXES, require_input

    limit = args.max_pixels or MAX_PIXELS
    if args.size is not None and args.size[0] * args.size[1] > limit:
        w, h = args.size
        raise UserInputError(
            f"--size {w}x{h}: {w * h} pixels, more than the limit of {limit} pixels (--max-pixels)"
        )
    check_output(args.out, "--out", folder=True, empty=True)
    require_input(args.source, "source", VECTOR_SUFFIXES, "an OSM or GeoJSON")


def run(args: argparse.Namespace) -> int:
    """Build the layout, write it, print a short summary. Returns the exit status."""
    from earthgen.geo.layout import MAX_PIXELS, build_layout
    from earthgen.inputs import user_errors

    out = Path(args.out)
    check_args(args)
    with user_errors("source", args.source):
        layout = build_layout(
            args.source,
            bbox=args.bbox,
            center=args.center,
            size=args.size,
            gsd=args.gsd,
            crs=args.crs,
            source_crs=args.source_crs,
            max_pixels=args.max_pixels or MAX_PIXELS,
        )
    paths = layout.save(
        out
    )  # a new or empty folder: renamed into place whole (earthgen.io.atomic_dir)
    fr = sorted(layout.class_fractions().items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{name} {100 * v:.1f}%" for name, v in fr[:6] if v > 0)
    b = layout.bbox
    print(
        f"layout {layout.width}x{layout.height} px at {layout.gsd:.3g} m/px, "
        f"{layout.crs.to_string()}, lon {b[0]:.5f}..{b[2]:.5f} lat {b[1]:.5f}..{b[3]:.5f}"
    )
    print(f"classes: {top}")
    print(f"{len(layout.features)} features, {len(layout.building_corners)} building boxes")
    for path in paths.values():
        print(f"wrote {path}")
    return 0
