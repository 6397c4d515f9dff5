"""Layout priors: a class-id layout rendered to a plausible (if flat) RGB aerial image, which the
image pipeline then refines (image-to-image at ``strength``): "render, then refine".

Per class the renderer paints the measured mean colour plus correlated colour noise whose
luminance power spectrum follows the class's measured power law, in physical units (cycles per
metre), so the texture scale follows the GSD (metres/pixel). Class borders are blended over a
few pixels. The statistics are MEASURED from the real training sets (:mod:`earthgen.datasets`,
split "train" only) by :func:`measure_prior_stats` and shipped in
``earthgen/assets/prior_stats.json`` (rendering needs no data)::

    python -m earthgen.prior measure --out earthgen/assets/prior_stats.json
    prior = render_prior(ids, gsd=2.0, seed=0)          # [H, W, 3] uint8
    kw = layout_prior_inputs(ids, gsd=2.0, seed=0, strength=0.7)
    pipe(prompt=..., layout=ids, **kw)                 # image=prior, strength=0.7

Texture model: the luminance PSD ``S(k) = A (k / K0) ** -beta`` (DN^2 m^2, ``k`` in cycles/m,
``K0`` = 0.1 cycles/m), flat below ``k_min`` (the lowest measured frequency: no texture is
invented at scales larger than the measured patches); the RGB noise is ``chol(cov) @ z`` with
``z`` three independent fields of that spectrum, normalized so that their variance is 1 at the
measurement's reference patch (``ref_gsd`` metres/pixel, ``ref_size`` pixels): at a coarser GSD
less of the fine texture is visible, at a finer one the power law is extrapolated.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from earthgen.classes import CLASS_ID, CLASS_NAMES, NUM_CLASSES
from earthgen.errors import UserInputError

STATS_PATH = Path(__file__).resolve().parent / "assets" / "prior_stats.json"
DEFAULT_STRENGTH = 0.7  # render-then-refine strength for layouts (1.0 = pure noise, no prior)
DEFAULT_GSD = 1.0  # metres/pixel assumed when a layout has no GSD
K0 = 0.1  # cycles/metre: reference frequency of the power-law amplitude
BLEND_SIGMA = 1.5  # pixels: Gaussian blending width at class borders
# Amplitude of the rendered noise relative to the measured texture: a Gaussian field cannot make
# the edges and shadows behind much of the measured variance, and at full amplitude its grain
# hides the layout; half the standard deviation keeps the classes legible (a rendering choice,
# the statistics stay as measured).
TEXTURE = 0.5
_LUMA = np.array([0.299, 0.587, 0.114])

# Where each class's statistics come from: (set, what) with what = "mask:<class name>" (masked
# pixels of that earthgen class), "dubai_unlabeled" (Dubai palette 5 pixels), "image" (whole
# images of a mask-less set) or "ucm:<scene>" (whole UC Merced images of that scene class).
# Every source weighs the same within a class (the colour covariance is the mean of the
# sources' own covariances, so differences between sets do not count as texture). See
# docs/image.md for the reasoning.
SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "background": (("dubai", "dubai_unlabeled"), ("ucmerced", "ucm:sparseresidential")),
    "building": (("dubai", "mask:building"),),
    "road_major": (("ucmerced", "ucm:freeway"),),
    "road_secondary": (("dubai", "mask:road_minor"), ("ucmerced", "ucm:intersection")),
    "road_minor": (("dubai", "mask:road_minor"),),
    "path": (("dubai", "mask:bare"), ("dubai", "mask:road_minor")),
    "railway": (("ucmerced", "ucm:freeway"), ("dubai", "mask:bare")),
    "water": (("ucmerced", "ucm:river"), ("ucmerced", "ucm:harbor"), ("dubai", "mask:water")),
    "forest": (("ucmerced", "ucm:forest"), ("neon", "image")),
    "grass": (("ucmerced", "ucm:golfcourse"), ("dubai", "mask:grass")),
    "farmland": (("ucmerced", "ucm:agricultural"), ("naip", "image")),
    "bare": (("ucmerced", "ucm:beach"), ("ucmerced", "ucm:chaparral"), ("dubai", "mask:bare")),
    "parking": (("ucmerced", "ucm:parkinglot"),),
}
# SpaceNet is not used: its 8-bit pan-sharpened tile is not radiometrically stretched (image mean
# ~50 DN, roads ~15 DN), so its colours are not comparable with the other sets'.


# --- measuring -----------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB -> ``[...]`` float luminance (Rec. 601)."""
    return rgb.astype(np.float64) @ _LUMA


def patch_psd(lum: np.ndarray, gsd: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial power spectral density of a square luminance patch ``[n, n]`` at ``gsd``
    metres/pixel: ``(k [m] cycles/metre, S [m] DN^2 m^2)`` over the non-zero frequency bins
    (mean removed, Hann window; white noise of variance v gives S = v gsd^2)."""
    n = lum.shape[0]
    w1 = np.hanning(n + 2)[1:-1]
    w = np.outer(w1, w1)
    x = (lum - lum.mean()) * w
    p = np.abs(np.fft.fft2(x)) ** 2 * gsd**2 / (w**2).sum()
    f = np.fft.fftfreq(n)
    kr = np.hypot(f[:, None], f[None, :])
    r = np.rint(kr * n).astype(int)  # radial bin, cycles per patch
    nb = n // 2
    sums = np.bincount(r.ravel(), p.ravel(), minlength=nb + 1)[1 : nb + 1]
    cnt = np.bincount(r.ravel(), minlength=nb + 1)[1 : nb + 1]
    k = np.arange(1, nb + 1) / (n * gsd)
    return k, sums / np.maximum(cnt, 1)


def _windows(
    sem: np.ndarray, cls: int, n: int, min_frac: float, stride: int
) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` x ``n`` windows (on a ``stride`` grid) with >= ``min_frac`` of
    their pixels of class ``cls``."""
    m = (sem == cls).astype(np.int64)
    ii = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = m.shape
    if h < n or w < n:
        return []
    ys, xs = np.arange(0, h - n + 1, stride), np.arange(0, w - n + 1, stride)
    s = (
        ii[ys[:, None] + n, xs[None, :] + n]
        - ii[ys[:, None], xs[None, :] + n]
        - ii[ys[:, None] + n, xs[None, :]]
        + ii[ys[:, None], xs[None, :]]
    )
    yy, xx = np.nonzero(s >= min_frac * n * n)
    return list(zip(ys[yy].tolist(), xs[xx].tolist(), strict=True))


class _Acc:
    """Per-source accumulator: RGB first/second moments and PSD samples."""

    def __init__(self) -> None:
        self.n = 0
        self.s1 = np.zeros(3)
        self.s2 = np.zeros((3, 3))
        self.t2 = np.zeros((3, 3))  # within-patch (texture) second moment, patch means removed
        self.tn = 0
        self.k: list[np.ndarray] = []
        self.psd: list[np.ndarray] = []
        self.patches = 0
        self.images = 0
        self.gsd: list[float] = []
        self.size: list[int] = []

    def pixels(self, px: np.ndarray) -> None:
        px = px.reshape(-1, 3).astype(np.float64)
        self.n += len(px)
        self.s1 += px.sum(0)
        self.s2 += px.T @ px

    def patch(self, rgb: np.ndarray, gsd: float) -> None:
        k, s = patch_psd(_luma(rgb), gsd)
        d = rgb.reshape(-1, 3).astype(np.float64)
        d -= d.mean(0)
        self.t2 += d.T @ d
        self.tn += len(d)
        self.gsd.append(gsd)
        self.size.append(rgb.shape[0])
        self.k.append(k)
        self.psd.append(s)
        self.patches += 1


def _measure_source(
    samples: list,
    what: str,
    rng: np.random.Generator,
    root: str | Path | None = None,
    max_images: int = 48,
    max_patches: int = 400,
) -> _Acc:
    acc = _Acc()
    if what.startswith("ucm:"):
        samples = [s for s in samples if s.label == what[4:]]
    samples = (
        samples[:max_images]
        if len(samples) <= max_images
        else [samples[i] for i in sorted(rng.choice(len(samples), max_images, replace=False))]
    )
    for s in samples:
        img = s.image
        if what in ("image",) or what.startswith("ucm:"):
            acc.images += 1
            acc.pixels(img[::2, ::2])
            n = 1 << int(math.log2(min(256, *img.shape[:2])))
            h, w = img.shape[:2]
            for y in range(0, h - n + 1, n):
                for x in range(0, w - n + 1, n):
                    acc.patch(img[y : y + n, x : x + n], s.gsd)
            continue
        if what == "dubai_unlabeled":
            from earthgen.datasets import SET_DIRS, _dubai_ids, data_root

            tile, stem = s.name.split("/")[1:]
            mpath = data_root(root) / SET_DIRS["dubai"] / tile / "masks" / f"{stem}.png"
            cls, sem = 5, _dubai_ids(mpath)
        else:
            cls, sem = CLASS_ID[what.split(":", 1)[1]], s.semantic
        sel = sem == cls
        if not sel.any():
            continue
        acc.images += 1
        acc.pixels(img[sel][::3])
        for n in (32, 16):  # the largest windows the class fills
            wins = _windows(sem, cls, n, 0.9, n // 2)
            if wins:
                break
        for y, x in wins:
            acc.patch(img[y : y + n, x : x + n], s.gsd)
    if acc.patches > max_patches:  # keep a random subset so no source dominates in count
        keep = sorted(rng.choice(acc.patches, max_patches, replace=False))
        acc.k = [acc.k[i] for i in keep]
        acc.psd = [acc.psd[i] for i in keep]
        acc.patches = max_patches
    return acc


def _fit_class(accs: list[_Acc]) -> dict[str, Any]:
    """Equal-weight pooling of the sources' moments and log-PSDs; power-law fit of the PSD."""
    accs = [a for a in accs if a.n > 0]
    if not accs:
        raise UserInputError("no pixels found for a class: the data sets look incomplete")
    means = [a.s1 / a.n for a in accs]
    mean = np.mean(means, 0)
    cov = np.mean([a.s2 / a.n - np.outer(m, m) for a, m in zip(accs, means, strict=True)], 0)
    tex = np.mean([a.t2 / a.tn for a in accs if a.tn], 0)
    # log-spaced bins of physical frequency; per source the mean log PSD, then sources averaged
    edges = np.logspace(-3, 1, 41)  # cycles/metre, 1 mm .. 1 km wavelengths
    per_src = []
    for a in accs:
        if not a.k:
            continue
        k = np.concatenate(a.k)
        ls = np.log(np.concatenate(a.psd) + 1e-12)
        # skip the lowest bin (window leakage) and the top fifth below Nyquist (JPEG, resampling)
        kmax = max(kk[-1] for kk in a.k)
        kmin = min(kk[1] for kk in a.k)
        ok = (k >= kmin) & (k <= 0.8 * kmax)
        b = np.digitize(k[ok], edges)
        sums = np.bincount(b, ls[ok], minlength=len(edges) + 1)
        cnt = np.bincount(b, minlength=len(edges) + 1)
        per_src.append(np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan))
    table = np.array(per_src)
    have = ~np.isnan(table)
    n_have = have.sum(0)
    logs = np.where(n_have > 0, np.nansum(table, 0) / np.maximum(n_have, 1), np.nan)
    centers = np.sqrt(edges[:-1] * edges[1:])
    idx = np.arange(1, len(edges))
    valid = ~np.isnan(logs[idx])
    kc, ly = centers[valid], logs[idx][valid]
    slope, icpt = np.polyfit(np.log(kc / K0), ly, 1)
    k_lo, k_hi = float(kc.min()), float(kc.max())
    # reference patch of the colour covariance: geometric mean GSD and mean size of the patches
    ref_gsd = math.exp(np.mean([np.log(a.gsd).mean() for a in accs if a.gsd]))
    ref_size = int(round(np.mean([np.mean(a.size) for a in accs if a.size])))
    bands = {
        f"{1 / hi:.3g}-{1 / lo:.3g} m": float(np.exp(ly[(kc >= lo) & (kc < hi)]).mean())
        for lo, hi in zip(kc[::4], kc[4::4], strict=False)
        if ((kc >= lo) & (kc < hi)).any()
    }
    return {
        "mean_rgb": [round(float(v), 3) for v in mean],
        "cov_rgb": [[round(float(v), 3) for v in row] for row in tex],  # within patches
        "cov_rgb_pixels": [[round(float(v), 3) for v in row] for row in cov],  # all pixels
        "psd_beta": round(float(-slope), 4),
        "psd_log_amp": round(float(icpt), 4),  # ln S(K0), S in DN^2 m^2
        "k_min": round(k_lo, 6),
        "k_max": round(k_hi, 6),
        "ref_gsd": round(float(ref_gsd), 4),
        "ref_size": ref_size,
        "band_psd": {k: round(v, 4) for k, v in bands.items()},  # mean S per wavelength band
        "sources": [],
    }


def measure_prior_stats(
    root: str | Path | None = None,
    seed: int = 0,
    verbose: bool = False,
    classes: list[str] | None = None,
) -> dict:
    """Measure per-class colour and texture statistics from the real sets' "train" splits.

    Returns ``{"classes": {name: {mean_rgb [3] (DN 0..255), cov_rgb [3x3] (DN^2, within the texture
    patches, patch means removed: the renderer's noise), cov_rgb_pixels [3x3] (over all pixels),
    psd_beta, psd_log_amp (ln DN^2 m^2 at K0 cycles/m), k_min / k_max (cycles/m), ref_gsd
    (metres/pixel), ref_size (px), band_psd, sources}}, "k0": K0, ...}``; ``classes``: only these
    (default all). UserInputError when data are missing."""
    from earthgen.datasets import read_set

    rng = np.random.default_rng(seed)
    names = list(CLASS_NAMES) if classes is None else list(classes)
    needed = sorted({s for c in names for s, _ in SOURCES[c]})
    sets = {}
    for name in needed:
        sets[name] = read_set(name, root, "train")
        if verbose:
            print(f"read {name}: {len(sets[name])} train samples", flush=True)
    cache: dict[tuple[str, str], _Acc] = {}
    out: dict[str, Any] = {}
    for cname in names:
        accs = []
        for key in SOURCES[cname]:
            if key not in cache:
                cache[key] = _measure_source(sets[key[0]], key[1], rng, root)
            accs.append(cache[key])
        st = _fit_class(accs)
        st["sources"] = [
            f"{s}:{w} ({a.images} images, {a.patches} patches)"
            for (s, w), a in zip(SOURCES[cname], accs, strict=True)
        ]
        out[cname] = st
        if verbose:
            print(f"{cname}: mean {st['mean_rgb']} beta {st['psd_beta']:.2f}", flush=True)
    return {
        "description": "per-class colour / texture statistics for earthgen.prior.render_prior, "
        "measured by earthgen.prior.measure_prior_stats on the train splits",
        "k0": K0,
        "luma": _LUMA.tolist(),
        "classes": out,
    }


def dump_stats(stats: dict) -> str:
    """The statistics as JSON text, one line per class field."""
    head = {k: v for k, v in stats.items() if k != "classes"}
    lines = [json.dumps(head)[:-1] + ', "classes": {']
    names = list(stats["classes"])
    for i, name in enumerate(names):
        fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in stats["classes"][name].items()]
        end = "}," if i < len(names) - 1 else "}"
        lines.append(f" {json.dumps(name)}: {{\n" + ",\n".join(fields) + f"\n {end}")
    return "\n".join(lines) + "\n}}\n"


# --- rendering -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _default_stats() -> dict:
    return json.loads(STATS_PATH.read_text(encoding="utf-8"))


def load_stats(path: str | Path | None = None) -> dict:
    """The statistics JSON (default: the packaged ``earthgen/assets/prior_stats.json``)."""
    if path is None:
        return _default_stats()
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"cannot read prior statistics {path}: {e}") from None


def class_psd(st: dict, k: np.ndarray, k0: float = K0) -> np.ndarray:
    """Luminance PSD ``S(k)`` (DN^2 m^2) of one class's stats at ``k`` cycles/metre (flat below
    the lowest measured frequency)."""
    kk = np.maximum(k, st["k_min"])
    return np.exp(st["psd_log_amp"] - st["psd_beta"] * np.log(kk / k0))


def _grid_k(h: int, w: int, gsd: float) -> np.ndarray:
    """Radial frequency ``[h, w//2+1]`` in cycles/metre of an rfft2 grid at ``gsd`` m/px."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.hypot(fy, fx) / gsd


def _field_variance(st: dict, h: int, w: int, gsd: float, k0: float) -> float:
    """Variance of a synthesized field (``sum S dk^2`` over the non-zero frequencies)."""
    k = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) / gsd
    s = class_psd(st, k, k0)
    s[0, 0] = 0.0
    return float(s.sum() / (h * w * gsd * gsd))


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[H, W]`` (reflect border)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    p = np.pad(x, r, mode="reflect") if min(x.shape) > r else np.pad(x, r, mode="edge")
    y = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 0, p)
    return np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 1, y)


def render_prior(
    semantic: np.ndarray,
    gsd: float,
    seed: int | None = None,
    stats: dict | None = None,
    blend_sigma: float = BLEND_SIGMA,
    texture: float = TEXTURE,
) -> np.ndarray:
    """Render a class-id layout ``[H, W]`` (uint8 ids of :mod:`earthgen.classes`) at ``gsd``
    metres/pixel to an RGB prior ``[H, W, 3]`` uint8: per class the measured mean colour plus
    correlated colour noise with the class's luminance spectrum, blended over ``blend_sigma``
    pixels at class borders; ``texture`` scales the noise's standard deviation (1 = as measured,
    0 = flat class colours). Deterministic given ``seed``."""
    sem = np.asarray(semantic)
    if sem.ndim != 2 or sem.size == 0:
        raise UserInputError(
            f"layout must be a non-empty [H, W] class-id map, got shape {sem.shape}"
        )
    if int(sem.max()) >= NUM_CLASSES:
        raise UserInputError(f"class id {int(sem.max())} outside the table (0..{NUM_CLASSES - 1})")
    gsd = float(gsd)
    if not (gsd > 0 and math.isfinite(gsd)):
        raise UserInputError(f"gsd must be a finite number > 0 metres/pixel, got {gsd}")
    stats = load_stats() if stats is None else stats
    k0 = float(stats.get("k0", K0))
    h, w = sem.shape
    rng = np.random.default_rng(seed)
    white = np.fft.rfft2(rng.standard_normal((3, h, w)))  # shared by all classes
    kgrid = _grid_k(h, w, gsd)
    present = np.unique(sem)
    acc = np.zeros((h, w, 3))
    wsum = np.zeros((h, w))
    for c in present:
        st = stats["classes"][CLASS_NAMES[int(c)]]
        weight = (
            _blur((sem == c).astype(np.float64), blend_sigma)
            if blend_sigma > 0
            else ((sem == c).astype(np.float64))
        )
        amp = np.sqrt(class_psd(st, kgrid, k0)) / gsd
        amp[0, 0] = 0.0
        ref = _field_variance(st, st["ref_size"], st["ref_size"], st["ref_gsd"], k0)
        z = np.fft.irfft2(white * amp, s=(h, w)) / math.sqrt(max(ref, 1e-12))  # [3, H, W]
        cov = np.asarray(st["cov_rgb"], np.float64)
        chol = np.linalg.cholesky(cov + 1e-6 * np.eye(3))
        rgb = np.asarray(st["mean_rgb"], np.float64) + texture * np.einsum("ij,jhw->hwi", chol, z)
        acc += weight[..., None] * rgb
        wsum += weight
    img = acc / np.maximum(wsum, 1e-12)[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- pipeline inputs -----------------------------------------------------------------------------


def check_strength(strength: Any, what: str = "strength") -> float:
    """``strength`` as a float in (0, 1]; UserInputError otherwise (nan included)."""
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise UserInputError(f"{what} must be a number in (0, 1], got {strength!r}") from None
    if not (0.0 < s <= 1.0):
        raise UserInputError(f"{what} must be in (0, 1] (1 = pure noise), got {strength}")
    return s


def resize_ids(sem: np.ndarray, width: int, height: int) -> np.ndarray:
    """Class ids ``[H, W]`` resized (nearest) to ``[height, width]``."""
    if sem.shape == (height, width):
        return sem
    from PIL import Image

    return np.asarray(
        Image.fromarray(sem.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST)
    )


def layout_prior_inputs(
    semantic: np.ndarray,
    gsd: float | None,
    seed: int | None,
    strength: float = DEFAULT_STRENGTH,
    size: tuple[int, int] | None = None,
    stats: dict | None = None,
) -> dict[str, Any]:
    """Pipeline keyword arguments for render-then-refine of a layout ``[H, W]`` class ids at
    ``gsd`` metres/pixel (None: DEFAULT_GSD): ``{"image": prior [h, w, 3] uint8, "strength": s}``
    for ``strength`` < 1, ``{"strength": 1.0}`` (pure noise, no prior) for 1. ``size``: the
    output (width, height) in pixels, the layout resized (nearest) to it; default its own."""
    s = check_strength(strength)
    if s >= 1.0:
        return {"strength": 1.0}
    sem = np.asarray(semantic)
    if size is not None:
        sem = resize_ids(sem, int(size[0]), int(size[1]))
    g = DEFAULT_GSD if gsd is None else float(gsd)
    return {"image": render_prior(sem, g, seed, stats), "strength": s}


def orthophoto(
    semantic: np.ndarray,
    gsd: float,
    seed: int,
    *,
    model: str = "default",
    steps: int = 20,
    guidance: float = 4.0,
    prompt: str | None = None,
    device: str | None = None,
    strength: float = DEFAULT_STRENGTH,
) -> np.ndarray:
    """An orthophoto ``[H, W, 3]`` uint8 of a layout ``[H, W]`` (class ids, ``gsd`` metres/pixel)
    generated by the image pipeline ``model`` (render-then-refine, :func:`layout_prior_inputs`;
    the prompt defaults to the layout's class caption). Used as the 3D scene's colours."""
    import torch

    from earthgen.datasets import caption_from_classes
    from earthgen.models import float32_on_cpu, resolve_model
    from earthgen.pipelines.image import load_pipeline

    sem = np.asarray(semantic)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = float32_on_cpu(load_pipeline(resolve_model(model, "image")).to(dev))
    m = pipe.size_multiple
    h, w = sem.shape
    H, W = -(-h // m) * m, -(-w // m) * m  # the model's sizes; cropped back after
    big = np.pad(sem, ((0, H - h), (0, W - w)), mode="edge")
    kw = layout_prior_inputs(big, gsd, seed, strength)
    img = pipe(
        prompt if prompt is not None else caption_from_classes(sem),
        gsd=gsd,
        layout=big,
        height=H,
        width=W,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kw,
    ).images[0]
    return np.clip(np.rint(np.asarray(img)[:h, :w] * 255), 0, 255).astype(np.uint8)


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m earthgen.prior measure --out PATH [--root DIR]`` /
    ``render LAYOUT.png --gsd G --out PRIOR.png``."""
    p = argparse.ArgumentParser(prog="python -m earthgen.prior", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measure the per-class statistics from the real data")
    m.add_argument(
        "--root", default=None, help="data root (default: $EARTHGEN_DATA or ../shared/data)"
    )
    m.add_argument("--out", default=str(STATS_PATH))
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("render", help="render a class-id PNG layout to a prior")
    r.add_argument("layout")
    r.add_argument("--gsd", type=float, default=DEFAULT_GSD)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "measure":
            stats = measure_prior_stats(a.root, a.seed, verbose=True)
            Path(a.out).write_text(dump_stats(stats), encoding="utf-8")
            print(f"wrote {a.out}")
        else:
            from PIL import Image

            from earthgen.io import write_png

            ids = np.asarray(Image.open(a.layout))
            write_png(a.out, render_prior(ids, a.gsd, a.seed))
            print(f"wrote {a.out}")
    except UserInputError as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
