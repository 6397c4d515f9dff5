"""Argument checks shared by the subcommands (docs/limits.md).

Every numeric flag goes through a ranged parser (:func:`number`, :func:`size_pair` ...): a
malformed, non-finite or out-of-range value is an argparse error, which :mod:`earthgen.cli`
prints as one line naming the flag and the allowed range (exit 2, no traceback), before any
work. Output paths are checked with :func:`check_output` before a model loads. The thread count
comes from :func:`default_threads` unless ``--threads`` is given.

Nothing here imports numpy or torch: parsing the command line stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from earthgen.errors import UserInputError
from earthgen_base.io import check_output  # noqa: F401  (re-exported: commands import it here)

# --- limits (docs/limits.md) -----------------------------------------------------------------

#: Seeds: what numpy's and torch's generators both take.
SEED_MAX = 2**63 - 1
#: Memory assumed when the machine does not say (os.sysconf unavailable).
FALLBACK_MEMORY = 16 * 2**30
#: Share of the machine's memory one command may plan to use.
MEMORY_FRACTION = 0.5
#: ``earthgen generate``: host bytes per output pixel. Sampling and VAE decoding are tiled, so the
#: UNet's memory is that of one window; what grows with the area is the decoded image and its
#: blend weights (float32, [1, 3, H, W] + [1, 1, H, W]), its numpy copies (float32 and uint8),
#: the layout / prior / mask at full size and the latents (1/64 of the pixels or fewer). The
#: issue's failed 100000x100000 run asked for 520 GB, 52 B/px; 64 leaves a margin.
GENERATE_BYTES_PER_PIXEL = 64
#: Largest side of any image (pixels): PNG and the tiled sampler handle more, nobody means more.
MAX_SIDE = 65536
#: ``earthgen world``: voxel columns of the 3D export (one column per voxel footprint, at least
#: one voxel each, ~150 B of working memory per column in the voxelizer): 4096 x 4096, the
#: largest tile (8192 px at the default 0.5 m/px) at the default 1 m voxels.
MAX_VOXEL_COLUMNS = 2**24
#: ``earthgen scene`` / ``eval scene``: largest side in metres. The scene pipeline refuses more
#: than 4096 windows (earthgen.pipelines.scene.MAX_WINDOWS); with the default models' 64 m windows
#: and 16 m overlap (48 m stride) that is 64 x 64 windows = 64 + 63 * 48 = 3088 m.
SCENE_MAX_SIZE_M = 3072.0
#: Thread counts accepted by --threads.
MAX_THREADS = 1024


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else f"{v}"


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "-inf" if lo is None else _fmt(lo)
    right = "inf" if hi is None else _fmt(hi)
    return (
        f"{'(' if lo_open or lo is None else '['}{left}, "
        f"{right}{')' if hi_open or hi is None else ']'}"
    )


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[str], float | int]:
    """An argparse ``type=`` that takes a finite number (an integer with ``integer``) in the range
    ``lo..hi`` (ends excluded with ``lo_open`` / ``hi_open``; ``None``: unbounded)."""
    rng = _range(lo, hi, lo_open, hi_open)
    kind = "an integer" if integer else "a finite number"

    def parse(text: str) -> float | int:
        try:
            v: float | int = int(text) if integer else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {kind} in {rng}, got {text!r}") from None
        ok = (
            math.isfinite(v)
            and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi))
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {kind} in {rng}, got {text}")
        return v

    parse.__name__ = "integer" if integer else "number"
    return parse


def check_number(
    flag: str,
    value: float | int | None,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """The range check of :func:`number` on a parsed value, as a UserInputError naming ``flag``
    (for commands that check ranges after parsing; None passes)."""
    if value is None:
        return
    try:
        number(lo, hi, integer=integer, lo_open=lo_open, hi_open=hi_open)(str(value))
    except argparse.ArgumentTypeError as e:
        raise UserInputError(f"{flag} {e}") from None


def parse_int(text: str) -> int:
    """An integer of any value (the range is checked later with :func:`check_number`)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    """A number of any value, nan included (the range is checked later with
    :func:`check_number`)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def positive_int(text: str) -> int:
    """An integer > 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {v}")
    return v


#: Seeds of the random generators: integers in [0, 2**63 - 1].
seed_int = number(0, SEED_MAX, integer=True)
#: Guidance scales (classifier-free guidance): [0, 100].
guidance_float = number(0.0, 100.0)
#: Fractions and probabilities: [0, 1].
fraction = number(0.0, 1.0)
#: Sampling steps: [1, 1000].
steps_int = number(1, 1000, integer=True)
#: Ground sampling distance, metres/pixel: (0, 10000].
gsd_float = number(0.0, 10000.0, lo_open=True)


def threads_int(text: str) -> int:
    """``--threads``: an integer in [1, MAX_THREADS]."""
    return number(1, MAX_THREADS, integer=True)(text)


def size_pair(
    text: str, max_pixels: int | None = None, max_side: int = MAX_SIDE, unit: str = "pixels"
) -> tuple[int, int]:
    """``512`` or ``640x480`` (width x height) in pixels -> (width, height); each side in
    [1, max_side], and at most ``max_pixels`` pixels in all when given."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(
            f"size must be N or WxH with integers in [1, {max_side}], got {text!r}"
        )
    vals: list[int] = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"size must be N or WxH with integers in [1, {max_side}]: {p!r} is not an integer"
            ) from None
        if v < 1:
            raise argparse.ArgumentTypeError(
                f"size must be N or WxH with integers in [1, {max_side}], got {text!r}"
            )
        if v > max_side:
            raise argparse.ArgumentTypeError(
                f"size {text!r} is too large: each side must be in [1, {max_side}] {unit}"
            )
        vals.append(v)
    w, h = (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
    if max_pixels is not None and w * h > max_pixels:
        raise argparse.ArgumentTypeError(
            f"{w}x{h} = {w * h} pixels is too large: the limit is "
            f"{max_pixels} pixels (docs/limits.md)"
        )
    return w, h


def sized(max_pixels: int | Callable[[], int], what: str = "") -> Callable[[str], tuple[int, int]]:
    """:func:`size_pair` with a pixel limit (a number, or a function computing it)."""

    def parse(text: str) -> tuple[int, int]:
        limit = max_pixels() if callable(max_pixels) else max_pixels
        try:
            return size_pair(text, limit)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e}{what}") from None

    parse.__name__ = "size"
    return parse


def float_list(
    n: int, what: str, bounds: Iterable[tuple[float, float]] | None = None
) -> Callable[[str], tuple[float, ...]]:
    """``n`` comma-separated finite numbers; ``bounds``: an inclusive (lo, hi) per number.
    ``what`` (the flag) is kept for callers; argparse names the flag in its message."""
    lims = list(bounds) if bounds is not None else None

    def parse(text: str) -> tuple[float, ...]:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(parts) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
        try:
            vals = tuple(float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {n} comma-separated numbers, not numbers: {text!r}"
            ) from None
        for i, v in enumerate(vals):
            lo, hi = lims[i] if lims else (-math.inf, math.inf)
            if not (math.isfinite(v) and lo <= v <= hi):
                rng = "finite" if lims is None else f"in [{lo:g}, {hi:g}]"
                raise argparse.ArgumentTypeError(
                    f"number {i + 1} of {n} must be {rng}, got {text!r}"
                )
        return vals

    return parse


def bbox_list(text: str) -> tuple[float, ...]:
    """``MIN_LON,MIN_LAT,MAX_LON,MAX_LAT`` in degrees, min < max."""
    v = float_list(4, "--bbox", [(-180, 180), (-90, 90), (-180, 180), (-90, 90)])(text)
    if not (v[0] < v[2] and v[1] < v[3]):
        raise argparse.ArgumentTypeError(
            f"needs MIN_LON < MAX_LON and MIN_LAT < MAX_LAT, got {text!r}"
        )
    return v


#: ``LAT,LON`` in degrees.
center_list = float_list(2, "--center", [(-90, 90), (-180, 180)])


# --- memory and threads ----------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def available_memory() -> int:
    """Bytes of memory this process may use: the physical memory (os.sysconf), capped by a cgroup
    limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``); FALLBACK_MEMORY if unknown."""
    try:
        mem = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        mem = 0
    if mem <= 0:
        mem = FALLBACK_MEMORY
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read(path)
        if text and text.isdigit() and 0 < int(text) < mem:
            mem = int(text)
    return mem


def generate_max_pixels(memory: int | None = None) -> int:
    """Largest ``earthgen generate`` image (pixels) on this machine:
    ``MEMORY_FRACTION * available_memory() / GENERATE_BYTES_PER_PIXEL`` (docs/limits.md)."""
    mem = available_memory() if memory is None else memory
    return int(MEMORY_FRACTION * mem / GENERATE_BYTES_PER_PIXEL)


def generate_size(text: str) -> tuple[int, int]:
    """``earthgen generate --size``: :func:`size_pair` under :func:`generate_max_pixels`."""
    mem = available_memory()
    return sized(
        lambda: generate_max_pixels(mem),
        f" (half of this machine's {mem / 2**30:.0f} GiB at "
        f"{GENERATE_BYTES_PER_PIXEL} B/pixel); generate adjacent tiles instead",
    )(text)


def cpu_quota() -> int | None:
    """CPUs of a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up; None if
    there is none."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if text:
        q, _, period = text.partition(" ")
        if q.isdigit() and period.isdigit() and int(period) > 0:
            return max(1, math.ceil(int(q) / int(period)))
        return None
    q, period = (
        _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    if q and period and q.isdigit() and period.isdigit() and int(period) > 0:
        return max(1, math.ceil(int(q) / int(period)))
    return None


def default_threads() -> int:
    """Threads when no ``--threads`` is given: ``OMP_NUM_THREADS`` when set to an integer >= 1,
    else the CPUs this process may run on (``os.sched_getaffinity``), capped by a cgroup quota."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = cpu_quota()
    return max(1, min(n, q) if q else n)
