"""Building-height baselines on the real Alexandria (VA) DSM/DTM set (JSON results).

Reference: the nDSM = dsm - dtm (metres above ground, 2 m pixels, EPSG:26918) of
``../shared/data/alexandria_dsm_dtm`` (lidar-derived; SOURCES.md there), scored inside the
building footprints of its ``buildings.geojson`` (84 buildings, 82 with a surveyed ``HEIGHT``).

Height maps scored (RMSE, bias = mean(map - nDSM), MAE in metres; n pixels):

* ``tags``: the footprints' HEIGHT rasterized (tagged pixels only): what perfect conditioning on
  height tags gives.
* ``tags_with_defaults``: :func:`earthgen.geo.heights.height_map` of the set's layout (HEIGHT as
  ``height`` tags, the 2 untagged buildings at the ``yes`` default): the conditioning map.
* ``type_default``: every building untagged, type ``yes`` (6 m).
* ``flat``: 0 m everywhere.
* ``best_constant``: the median nDSM inside the footprints (an oracle constant, for scale).
* ``hag_as_shipped``: the set's own hag.tif (it is not dsm - dtm; for reference).

Per building: RMSE of HEIGHT against the building's median nDSM (buildings with >= 4 pixels).
The generated-scene numbers (today / with height conditioning) are added by the scene benchmark.

Usage: python benchmarks/bench_alexandria_heights.py [--root ../shared/data/alexandria_dsm_dtm]
       [--out benchmarks/results/alexandria_heights.json]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from earthgen.geo.heights import (
    DEFAULT_HEIGHTS_M,
    SOURCE_HEIGHT,
    height_map,
    height_rmse,
    read_alexandria,
)
from earthgen.io import write_json

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "alexandria_dsm_dtm"


def _r(d: dict) -> dict:
    return {
        k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()
    }


def per_building(a: dict) -> dict:
    """HEIGHT vs the median nDSM of each building's footprint pixels (metres)."""
    from rasterio.features import rasterize

    from earthgen.geo.vector import geojson_like

    feats = a["features"]
    ids = rasterize(
        zip(
            geojson_like(np.array([f.geometry for f in feats], dtype=object)),
            range(1, len(feats) + 1),
            strict=True,
        ),
        out_shape=a["ndsm"].shape,
        transform=a["transform"],
        fill=0,
        dtype="int32",
    )
    diffs = []
    for i, f in enumerate(feats, start=1):
        h = f.props.get("height")
        vals = a["ndsm"][ids == i]
        vals = vals[np.isfinite(vals)]
        if h is None or len(vals) < 4:
            continue
        diffs.append(float(h) - float(np.median(vals)))
    d = np.asarray(diffs)
    return {
        "rmse": float(np.sqrt(np.mean(d * d))),
        "bias": float(d.mean()),
        "mae": float(np.abs(d).mean()),
        "buildings": len(d),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--out", default="benchmarks/results/alexandria_heights.json")
    args = ap.parse_args()

    a = read_alexandria(args.root)
    nd, fp = a["ndsm"], a["footprints"]
    tagged = height_map(a["layout"])
    untagged = height_map(a["layout"], ignore_tags=True)
    best = float(np.nanmedian(nd[fp]))
    maps = {
        "tags": a["building_height"],
        "tags_with_defaults": tagged.top,
        "type_default": untagged.top,
        "flat": np.zeros_like(nd),
        "best_constant": np.full_like(nd, best),
        "hag_as_shipped": a["hag"],
    }
    scores = {k: _r(height_rmse(v, nd, fp)) for k, v in maps.items()}
    out = {
        "data": "alexandria_dsm_dtm (opengeos/data, MIT): nDSM = dsm - dtm, 2 m px, EPSG:26918",
        "reference": "nDSM inside building footprints (pixel centre inside, NaN DTM excluded)",
        "grid": {"shape": list(nd.shape), "gsd_m": a["gsd"], "crs": a["crs"].to_string()},
        "buildings": len(a["features"]),
        "buildings_with_height": int(np.isfinite(a["heights"]).sum()),
        "footprint_pixels": int(fp.sum()),
        "tagged_pixels": int((tagged.source == SOURCE_HEIGHT).sum()),
        "ndsm_in_footprints_m": _r(
            {
                "median": float(np.nanmedian(nd[fp])),
                "mean": float(np.nanmean(nd[fp])),
                "p10": float(np.nanpercentile(nd[fp], 10)),
                "p90": float(np.nanpercentile(nd[fp], 90)),
            }
        ),
        "height_tag_m": _r(
            {
                "median": float(np.nanmedian(a["heights"])),
                "min": float(np.nanmin(a["heights"])),
                "max": float(np.nanmax(a["heights"])),
            }
        ),
        "type_default_yes_m": DEFAULT_HEIGHTS_M["yes"],
        "best_constant_m": round(best, 3),
        "pixel_scores_m": scores,
        "per_building_tag_vs_median_ndsm_m": _r(per_building(a)),
        "generated_scenes": "added by the scene benchmark (today vs with height conditioning)",
    }
    write_json(args.out, out)
    for k, v in scores.items():
        print(f"{k:20s} rmse {v['rmse']:6.2f} m  bias {v['bias']:+6.2f} m  n {v['n']}")
    print("per building", out["per_building_tag_vs_median_ndsm_m"])


if __name__ == "__main__":
    main()
