#!/usr/bin/env bash
# One call that does every GPU check of the 3D stack and writes its results under $OUT (or
# ./gpu_results): the -m gpu tests (gsplat vs the torch rasterizer, spconv CUDA vs the torch
# twin), the render benchmark (gsplat frames/s at 1024^2) and the sparse-vs-dense VAE benchmark.
#
# On a lent machine that lacks our dependencies, first fetch wheels here (once):
#   bash benchmarks/gpu_check.sh --fetch-wheels      # writes .whl/ (git-ignored via .git/info/exclude)
# then run it there with .whl carried:  bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
PKGS="diffusers==0.42.1 gsplat==1.5.3 spconv-triton trimesh==4.8.3 shapely pyproj jaxtyping"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for p in $PKGS; do
    python3 -m pip download -q --no-deps --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$p" || echo "could not fetch $p"
  done
  du -sh .whl
  exit 0
fi

if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pytest -m gpu -q -rs tests 2>&1 | tee "$OUT/pytest_gpu.log"
python3 benchmarks/bench_render.py --device cuda --out "$OUT/render_gpu.json" 2>&1 | tee "$OUT/bench_render.log"
python3 benchmarks/bench_vae3d.py --device cuda --sizes 128,256 --out "$OUT/vae3d_gpu.json" 2>&1 | tee "$OUT/bench_vae3d.log"
