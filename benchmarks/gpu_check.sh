#!/usr/bin/env bash
# One call that does every GPU check of the 3D stack, against exactly what
# `pip install "earthgen[gpu]"` installs, and writes its results under $OUT (or ./gpu_results).
#
# The packages checked are the [gpu] extra of pyproject.toml, read from that file for the running
# Python with its markers evaluated (today: gsplat, and spconv-cu126 on CPython 3.10-3.13 x86_64;
# `bash benchmarks/gpu_check.sh --list [PYVER]` prints them). The script
#  1. prints each with the version installed ($OUT/extra.txt) and counts it as a failure when it
#     is missing or outside the extra's range: a missing one would only make the tests skip;
#  2. looks for nvcc. gsplat's PyPI wheel holds no compiled kernels: on first use it compiles its
#     CUDA sources with nvcc from the CUDA toolkit (found through CUDA_HOME or PATH; a few
#     minutes, cached under ~/.cache/torch_extensions). Without nvcc `import gsplat` still works,
#     gsplat prints "gsplat: No CUDA toolkit found. gsplat will be disabled." and its rasterizer
#     fails on the first call. This script then prints
#       nvcc: not found -- gsplat cannot compile its CUDA kernels (install the CUDA toolkit, set CUDA_HOME); gsplat checks skipped
#     counts it as a failure, and runs the spconv checks alone;
#  3. runs the -m gpu tests (gsplat against the torch rasterizer, spconv's CUDA kernels against
#     the torch twin), the render benchmark (gsplat frames/s at 1024^2) and the sparse-vs-dense
#     VAE benchmark.
# It exits 1 when a check failed. PYTHON picks the interpreter (default python3).
#
# On a machine without network access, fetch the wheels here first (once):
#   bash benchmarks/gpu_check.sh --fetch-wheels [PYVER]   # default 3.12; writes .whl/
# It downloads what pip resolves for the [gpu] extra on that Python (constraints.txt applied),
# with the packages the tests import beside torch (diffusers, trimesh, shapely, pyproj), less
# torch, triton, numpy and NVIDIA's CUDA wheels, which the GPU machine brings. spconv-cu126's
# wheel is 70 MB and cumm-cu126's 27 MB (2.3.8 / 0.7.11, cp312). Then run this script there with
# .whl beside it: it installs into /tmp/site the wheels of packages not installed there already.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# The [gpu] extra's requirements (markers dropped) for CPython $1 (default: the running one).
gpu_extra() {
  "$PYTHON" - "${1:-}" <<'EOF'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement

py = sys.argv[1] or "%d.%d" % sys.version_info[:2]
env = {"python_version": py, "python_full_version": py + ".0", "extra": "gpu"}
if sys.argv[1]:  # another Python: the Linux x86_64 machine the wheels are for
    env.update(platform_machine="x86_64", platform_system="Linux", sys_platform="linux")
with open("pyproject.toml", "rb") as f:
    reqs = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
for r in map(Requirement, reqs):
    if r.marker is None or r.marker.evaluate(env):
        print(f"{r.name}{r.specifier}")
EOF
}

if [[ "${1:-}" == "--list" ]]; then
  gpu_extra "${2:-}"
  exit $?
fi

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  pyver="${2:-3.12}"
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # pip matches manylinux tags exactly: name every glibc 2.17-2.39 (CUDA wheels use several)
  plat=(--only-binary=:all: --python-version "$pyver" --implementation cp
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
  for n in $(seq 17 39); do plat+=(--platform "manylinux_2_${n}_x86_64"); done
  extra=$(gpu_extra "$pyver") || exit 1
  # what pip installs for the extra (and the tests' imports), resolved with constraints.txt for
  # that Python, less torch and its CUDA stack, which the GPU machine brings
  report=$(mktemp)
  scratch=$(mktemp -d)
  # shellcheck disable=SC2086  # one requirement a word
  "$PYTHON" -m pip install -q --dry-run --ignore-installed "${plat[@]}" --target "$scratch" \
    -c constraints.txt --report "$report" $extra diffusers trimesh shapely pyproj || exit 1
  mapfile -t pkgs < <("$PYTHON" - "$report" <<'EOF'
import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
    name, ver = item["metadata"]["name"], item["metadata"]["version"]
    if not re.match(r"(torch|triton|numpy|nvidia-.*|cuda-.*)$", name.lower()):
        print(f"{name}=={ver}")
EOF
)
  rm -rf "$report" "$scratch"
  for p in "${pkgs[@]}"; do
    "$PYTHON" -m pip download -q --no-deps "${plat[@]}" -d .whl "$p" || echo "could not fetch $p"
  done
  du -sh .whl
  exit 0
fi

OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
if [[ -d .whl ]]; then
  # only the wheels whose distribution is not installed already (the machine's own torch stack
  # and packages stay as they are)
  mapfile -t wheels < <("$PYTHON" - .whl/*.whl <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for wheel in sys.argv[1:]:
    try:
        version(wheel.rsplit("/", 1)[-1].split("-")[0])
    except PackageNotFoundError:
        print(wheel)
EOF
)
  if (( ${#wheels[@]} )); then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels[@]}"
  fi
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
failed=0

# 1. the [gpu] extra, as installed
extra=$(gpu_extra) || { echo "could not read the [gpu] extra from pyproject.toml"; exit 1; }
"$PYTHON" - $extra <<'EOF' 2>&1 | tee "$OUT/extra.txt"
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement

bad = 0
for r in map(Requirement, sys.argv[1:]):
    try:
        v = version(r.name)
    except PackageNotFoundError:
        print(f"{r}: MISSING")
        bad += 1
        continue
    ok = r.specifier.contains(v, prereleases=True)
    bad += not ok
    print(f"{r}: {v}" + ("" if ok else "  OUTSIDE THE RANGE"))
sys.exit(bad > 0)
EOF
(( PIPESTATUS[0] == 0 )) || failed=1

# 2. nvcc, which gsplat needs to compile its kernels
deselect=()
gsplat_ok=1
if [[ "$extra" == *gsplat* ]]; then
  nvcc_bin=""
  [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]] && nvcc_bin="${CUDA_HOME}/bin/nvcc"
  [[ -z "$nvcc_bin" ]] && nvcc_bin=$(command -v nvcc || true)
  if [[ -n "$nvcc_bin" ]]; then
    echo "nvcc: $nvcc_bin ($("$nvcc_bin" --version | tail -1))" | tee "$OUT/nvcc.txt"
  else
    msg="nvcc: not found -- gsplat cannot compile its CUDA kernels"
    echo "$msg (install the CUDA toolkit, set CUDA_HOME); gsplat checks skipped" | tee "$OUT/nvcc.txt"
    deselect=(-k "not gsplat")
    gsplat_ok=0
    failed=1
  fi
fi

# 3. the tests and benchmarks
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PYTHON" -m pytest -m gpu -q -rs "${deselect[@]}" tests 2>&1 \
  | tee "$OUT/pytest_gpu.log"
(( PIPESTATUS[0] == 0 )) || failed=1
if (( gsplat_ok )); then
  "$PYTHON" benchmarks/bench_render.py --device cuda --out "$OUT/render_gpu.json" 2>&1 \
    | tee "$OUT/bench_render.log"
  (( PIPESTATUS[0] == 0 )) || failed=1
fi
"$PYTHON" benchmarks/bench_vae3d.py --device cuda --sizes 128,256 --out "$OUT/vae3d_gpu.json" \
  2>&1 | tee "$OUT/bench_vae3d.log"
(( PIPESTATUS[0] == 0 )) || failed=1
exit "$failed"
