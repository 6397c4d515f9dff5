"""Packaging checks: every declared dependency is imported by the code (and every third-party
import is declared), markers parse and pick one spconv build per Python, the pins in
constraints.txt admit Python 3.10-3.13, and the Makefile and the GPU check script agree with
pyproject.toml."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli there
    tomllib = pytest.importorskip("tomli")
pytest.importorskip("packaging", reason="needs packaging (the dev extra)")

from packaging.markers import Marker  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SOURCE_DIRS = (
    "earthgen",
    "earthgen_base",
    "vae",
    "flows",
    "controls",
    "renderers",
    "apps",
    "tests",
    "benchmarks",
    "experiments",
)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# distribution name -> top-level import name, where it is not the name with '-' -> '_'
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml"}
# distributions that are command-line tools, run by the Makefile rather than imported
TOOLS = {"ruff": "ruff check", "import-linter": "lint-imports"}

# Which CPython versions have wheels of a release, read off PyPI (pip install --dry-run
# --only-binary=:all: --python-version X, Linux x86_64). spconv-cu120, the gpu extra's earlier
# choice, stops at 3.11; no spconv build has 3.14 wheels.
WHEEL_PYTHONS = {
    ("spconv", "2.3.8"): PYTHONS,
    ("spconv-cu126", "2.3.8"): PYTHONS,
    ("spconv-cu120", "2.3.6"): ("3.10", "3.11"),
}
# numpy 2.2.6 is the last release with Python 3.10 wheels (2.3.0 requires Python >= 3.11)
NUMPY_LAST_PY310 = Version("2.2.6")


def environment(python: str, extra: str = "", machine: str = "x86_64") -> dict[str, str]:
    """A marker environment: CPython ``python`` on Linux ``machine``, installing ``extra``."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "extra": extra,
    }


def declared() -> dict[str, list[Requirement]]:
    """Requirements by group: "" for the core dependencies, else the extra's name."""
    groups = {"": PYPROJECT["project"]["dependencies"]}
    groups.update(PYPROJECT["project"]["optional-dependencies"])
    return {name: [Requirement(r) for r in reqs] for name, reqs in groups.items()}


def active(reqs: list[Requirement], env: dict[str, str]) -> list[Requirement]:
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def spconv_builds(reqs: list[Requirement], env: dict[str, str]) -> list[Requirement]:
    return [r for r in active(reqs, env) if import_name(r.name) == "spconv"]


def import_name(dist: str) -> str:
    name = canonicalize_name(dist)
    if name.startswith("spconv"):  # spconv, spconv-cu126, ...: one package, `spconv`
        return "spconv"
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def constraint_pins(env: dict[str, str]) -> dict[str, list[Version]]:
    """The ``==`` pins of constraints.txt whose marker holds in ``env``, by distribution."""
    pins: dict[str, list[Version]] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier, `==`
        assert spec.operator == "==", line
        if req.marker is None or req.marker.evaluate(env):
            pins.setdefault(canonicalize_name(req.name), []).append(Version(spec.version))
    return pins


def source_imports() -> set[str]:
    """Top-level names imported by the project's sources, tests and benchmarks (absolute imports,
    and the string argument of import_module / importorskip / find_spec)."""
    names: set[str] = set()
    for d in SOURCE_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
                elif (
                    isinstance(node, ast.Call)
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and getattr(node.func, "attr", getattr(node.func, "id", None))
                    in ("import_module", "importorskip", "find_spec")
                ):
                    names.add(node.args[0].value.split(".")[0])
    return names


def local_modules() -> set[str]:
    local = set(SOURCE_DIRS)
    for d in SOURCE_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            local.add(path.stem)
            local.update(p.name for p in path.relative_to(ROOT).parents if p.name)
    return local


def test_every_declared_dependency_is_imported_or_run():
    imported = source_imports()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    unused = []
    for group, reqs in declared().items():
        for req in reqs:
            name = canonicalize_name(req.name)
            if name in TOOLS:
                if TOOLS[name] not in makefile:
                    unused.append(f"{group or 'core'}: {req.name} (tool, not run by the Makefile)")
            elif import_name(name) not in imported:
                unused.append(f"{group or 'core'}: {req.name} (import {import_name(name)})")
    assert not unused, f"declared but never imported: {unused}"
    # the two dependencies dropped as unused stay out
    all_names = {canonicalize_name(r.name) for reqs in declared().values() for r in reqs}
    assert not all_names & {"sentence-transformers", "xformers"}


def test_every_third_party_import_is_declared():
    provided = {import_name(r.name) for reqs in declared().values() for r in reqs}
    # tomli is imported by this file on Python 3.10 only (declared with that marker)
    third_party = source_imports() - set(sys.stdlib_module_names) - local_modules() - {"tomllib"}
    assert third_party - provided == set(), "imported but not declared in pyproject.toml"


def test_markers_parse_and_evaluate_for_each_python():
    groups = declared()  # Requirement() raises on a malformed requirement or marker
    for python in PYTHONS:
        for extra in groups:
            for req in groups[extra]:
                if req.marker is not None:
                    assert isinstance(req.marker.evaluate(environment(python, extra)), bool)
    assert Marker('python_version < "3.11"').evaluate(environment("3.10"))
    assert not Marker('python_version < "3.11"').evaluate(environment("3.12"))


@pytest.mark.parametrize("extra", ["gpu", "sparse"])
def test_one_spconv_build_per_python(extra):
    reqs = declared()[extra]
    for python in PYTHONS:
        spconv = spconv_builds(reqs, environment(python, extra))
        assert len(spconv) == 1, (python, [str(r) for r in spconv])
        (req,) = spconv
        # a release with wheels for this Python satisfies the requirement
        builds = [
            v
            for (dist, v), pys in WHEEL_PYTHONS.items()
            if canonicalize_name(req.name) == dist and python in pys
        ]
        assert any(req.specifier.contains(v) for v in builds), (python, str(req))
    # no spconv wheels for 3.14 or aarch64: the extra installs none there (the torch twin runs)
    assert not spconv_builds(reqs, environment("3.14", extra))
    if extra == "gpu":
        assert not spconv_builds(reqs, environment("3.12", extra, machine="aarch64"))


def test_spconv_cu120_would_not_resolve_on_312():
    """The table the test above relies on: the former gpu pin has no 3.12+ wheels."""
    assert "3.12" not in WHEEL_PYTHONS[("spconv-cu120", "2.3.6")]


def test_numpy_range_and_pin_admit_python_310():
    (numpy,) = [r for r in declared()[""] if r.name == "numpy"]
    assert numpy.specifier.contains(NUMPY_LAST_PY310)
    pins = constraint_pins(environment("3.10"))["numpy"]
    assert len(pins) == 1 and pins[0] <= NUMPY_LAST_PY310 and numpy.specifier.contains(pins[0])


@pytest.mark.parametrize("python", PYTHONS)
def test_constraints_pin_each_declared_dependency_once_within_its_range(python):
    groups = declared()
    for extra, reqs in groups.items():
        env = environment(python, extra)
        pins = constraint_pins(env)
        twice = {name: v for name, v in pins.items() if len(v) > 1}
        assert not twice, f"pinned more than once for Python {python}: {twice}"
        for req in active(reqs, env):
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} has no pin in constraints.txt for Python {python}"
            assert req.specifier.contains(pins[name][0], prereleases=True), (python, str(req))


def test_makefile_torch_matches_constraints_and_uses_the_index_variable():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    version = next(
        line.split("?=")[1].strip()
        for line in makefile.splitlines()
        if line.startswith("TORCH_VERSION")
    )
    assert constraint_pins(environment("3.11"))["torch"] == [Version(version)]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    cmd = ["make", "-n", "-B", "venv", "VENV=/nonexistent/venv", "PYTHON=python3"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={version}" in out, out
    out = subprocess.run(
        [*cmd, "TORCH_INDEX="], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"torch=={version}" in out and "--index-url" not in out, out


@pytest.mark.parametrize("python", PYTHONS)
def test_gpu_check_lists_exactly_the_gpu_extra(python):
    """benchmarks/gpu_check.sh checks the packages the gpu extra installs for that Python."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--list", python],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    want = [
        str(Requirement(f"{r.name}{r.specifier}"))
        for r in active(declared()["gpu"], environment(python, "gpu"))
    ]
    assert out.split() == want
    assert {Requirement(r).name for r in want} == {"gsplat", "spconv-cu126"}
