#!/usr/bin/env bash
# Remakes the README gallery (docs/images/gallery/) with the packaged default image model.
# Each image is made by exactly one `earthgen generate` command below, the one the README prints
# under it. Run from the repository root after `make venv`: bash docs/images/gallery.sh
# The OSM extracts of Helsinki and Kotka and the UC Merced image come from ../shared
# (fixtures/osm and data/; FIXTURES and DATA override); Monaco's is embedded in the package.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
OUT=docs/images/gallery
FIXTURES=${FIXTURES:-../shared/fixtures}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"

# text -> image: 8 UC Merced class captions at 0.3 m/px (256 px = 77 m)
earthgen generate --prompt "a satellite image of agricultural fields" --gsd 0.3 --seed 0 --out $OUT/agricultural.png
earthgen generate --prompt "a satellite image of a beach" --gsd 0.3 --seed 0 --out $OUT/beach.png
earthgen generate --prompt "a satellite image of a dense residential area" --gsd 0.3 --seed 0 --out $OUT/denseresidential.png
earthgen generate --prompt "a satellite image of a forest" --gsd 0.3 --seed 0 --out $OUT/forest.png
earthgen generate --prompt "a satellite image of a freeway" --gsd 0.3 --seed 0 --out $OUT/freeway.png
earthgen generate --prompt "a satellite image of a golf course" --gsd 0.3 --seed 0 --out $OUT/golfcourse.png
earthgen generate --prompt "a satellite image of a harbor" --gsd 0.3 --seed 0 --out $OUT/harbor.png
earthgen generate --prompt "a satellite image of a river" --gsd 0.3 --seed 0 --out $OUT/river.png

# OSM layout -> image: 256 px at 2 m/px (512 m), render-then-refine (default strength 0.7)
earthgen generate --layout earthgen/assets/monaco-latest.osm.pbf --center 43.7384,7.4246 --gsd 2 --size 256 \
    --prompt "a satellite image of buildings, roads and water" --seed 0 --prior-out $OUT/monaco_prior.png --out $OUT/monaco.png
earthgen generate --layout $FIXTURES/osm/Helsinki.osm.pbf --center 60.1715,24.944 --gsd 2 --size 256 \
    --prompt "a satellite image of buildings and roads" --seed 0 --prior-out $OUT/helsinki_prior.png --out $OUT/helsinki.png
earthgen generate --layout $FIXTURES/osm/pyrosm-test.osm.pbf --center 60.53,26.95 --gsd 2 --size 256 \
    --prompt "a satellite image of buildings, roads and forest" --seed 0 --prior-out $OUT/kotka_prior.png --out $OUT/kotka.png

# editing a real held-apart UC Merced image (test split): inpaint the centre, outpaint to the right
python -c "import numpy as np; from PIL import Image; m = np.zeros((256, 256), np.uint8); m[80:176, 80:176] = 255; Image.fromarray(m).save('$OUT/mask_centre.png')"
earthgen generate --image $DATA/ucmerced_landuse_subset/mediumresidential/mediumresidential59.jpg \
    --mask $OUT/mask_centre.png --prompt "a satellite image of a golf course" --gsd 0.3 --seed 0 --out $OUT/inpaint.png
earthgen generate --image $DATA/ucmerced_landuse_subset/mediumresidential/mediumresidential59.jpg \
    --extend 0,128,0,0 --prompt "a satellite image of a medium-density residential area" --gsd 0.3 --seed 0 \
    --out $OUT/outpaint.png
