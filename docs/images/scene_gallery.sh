#!/usr/bin/env bash
# Remakes the README's 3D scene gallery (docs/images/scenes/) with the packaged models, CPU.
# Each picture is the oblique.png of exactly one command below, the one the README prints.
# Run from the repository root after `make venv`: bash docs/images/scene_gallery.sh
# FIXTURES / DATA override ../shared/fixtures and ../shared/data. About 10-20 min a scene on 2 cores.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
OUT=docs/images/scenes
FIXTURES=${FIXTURES:-../shared/fixtures}
DATA=${DATA:-../shared/data}
TMP=$(mktemp -d)
mkdir -p "$OUT"

# Monaco and Helsinki, 256 m at 1 m voxels from their OSM extracts: heights from the tags (and
# per-type defaults), an orthophoto generated from the same layout by the image model
earthgen scene --layout $FIXTURES/osm/monaco-latest.osm.pbf --center 43.7384,7.4246 --size-m 256 \
    --steps 8 --seed 0 --out $TMP/monaco
earthgen scene --layout $FIXTURES/osm/Helsinki.osm.pbf --center 60.1715,24.944 --size-m 256 \
    --steps 8 --seed 0 --out $TMP/helsinki
cp $TMP/monaco/oblique.png $OUT/monaco_256m.png
cp $TMP/helsinki/oblique.png $OUT/helsinki_256m.png

# Alexandria (VA), 256 m: footprints, building heights from the lidar nDSM (dsm - dtm), the
# ground from the DTM (real data, ../shared/data/alexandria_dsm_dtm), an orthophoto generated
# from the footprints
python - "$DATA/alexandria_dsm_dtm" "$OUT/alexandria_256m.png" <<'PY'
import sys
import numpy as np
import torch
from earthgen.export3d import render_views
from earthgen.geo.heights import height_caps, read_alexandria
from earthgen.io import write_png
from earthgen.pipelines.scene import load_scene_pipeline
from earthgen.prior import orthophoto

a = read_alexandria(sys.argv[1], gsd=1.0)
H, W = a["semantic"].shape
r0, c0 = (H - 256) // 2, (W - 256) // 2
win = (slice(r0, r0 + 256), slice(c0, c0 + 256))
sem, fp = a["semantic"][win], a["footprints"][win]
heights = np.where(fp, np.nan_to_num(a["ndsm"][win]).clip(2.0, None), np.nan).astype(np.float32)
dtm = a["dtm"][win]
dtm = np.where(np.isfinite(dtm), dtm, np.nanmedian(dtm)).astype(np.float32)
ortho = orthophoto(sem, 1.0, 0, steps=20)  # colours: generated from the footprints, as the CLI does
out = load_scene_pipeline()(semantic=sem, image=ortho, gsd=1.0, heights=heights, height_cap=height_caps(sem), dem=dtm,
                            num_inference_steps=8, generator=torch.Generator().manual_seed(0))
c = out.coords
ctr = (c.min(0) + c.max(0) + 1) / 2 * out.voxel_size + out.origin
write_png(sys.argv[2], render_views(out.surfels, ctr, 0.8 * 256.0, 512, 1, elevation_deg=45.0)[0])  # as oblique.png
PY
rm -rf "$TMP"
