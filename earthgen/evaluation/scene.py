"""Metrics of generated 3D scenes against the procedural scenes whose maps conditioned them.

- **height error**: mean absolute difference (metres) of the generated surface height and the true
  one (the top voxel of each column of the voxelized world tile; both above the scene's base);
- **building IoU**: columns standing more than 2.5 m above their 21 m neighbourhood's lowest
  surface (a geometric building detector, no network) against the map's building class;
- **semantic mIoU** (with an evaluator, :class:`earthgen.evaluation.tilenet.TileNet`): the
  evaluator's segmentation of a nadir render of the generated surfels against the input map
  (classes present in the map);
- **FID / KID** (with an evaluator): TileNet features of nadir renders of generated scenes against
  nadir renders of the reference scenes (not comparable with Inception FID; FID only with more
  scenes than feature dimensions);
- **diversity**: between two seeds, the mean absolute height difference (m) and 1 - voxel IoU;
- **seams**: mean height step (m) between neighbouring columns across window borders divided by
  the same at the other coarse-cell borders (1 = no visible seam).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from earthgen.classes import CLASS_ID, NUM_CLASSES


def building_columns(
    height: np.ndarray, voxel_size: float, min_height_m: float = 2.5, window_m: float = 21.0
) -> np.ndarray:
    """Bool ``[Y, X]``: columns more than ``min_height_m`` above the lowest surface within
    ``window_m`` (a geometric building detector)."""
    h = np.nan_to_num(height, nan=0.0)
    k = max(3, int(round(window_m / voxel_size)) | 1)
    return (h - ndimage.minimum_filter(h, size=k, mode="nearest")) > min_height_m


def resample_classes(semantic: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """Nearest-neighbour resampling of a north-up class map to ``[ny, nx]``."""
    s = np.asarray(semantic)
    r = ((np.arange(ny) + 0.5) * s.shape[0] / ny).astype(int)
    c = ((np.arange(nx) + 0.5) * s.shape[1] / nx).astype(int)
    return s[r][:, c]


def seam_ratio(height: np.ndarray, windows: list, window: int, overlap: int) -> float | None:
    """Mean ``|height step|`` between neighbouring columns across the borders where windows'
    kept columns meet, over the same across the other borders between coarse (8-voxel) cells at
    the same place in the cell. None for a single window."""
    xs = sorted({w[0] for w in windows})
    ys = sorted({w[1] for w in windows})
    if len(xs) * len(ys) < 2:
        return None
    h = np.nan_to_num(height[::-1], nan=0.0)  # rows = y
    dx = np.abs(np.diff(h, axis=1))  # between columns x and x + 1
    dy = np.abs(np.diff(h, axis=0))
    from earthgen.pipelines.scene import core_cuts

    bx = np.zeros(dx.shape[1], bool)
    by = np.zeros(dy.shape[0], bool)
    for lo, _ in core_cuts(xs, window, h.shape[1])[1:]:  # where the windows' kept columns meet
        if 0 < lo <= len(bx):
            bx[lo - 1] = True
    for lo, _ in core_cuts(ys, window, h.shape[0])[1:]:
        if 0 < lo <= len(by):
            by[lo - 1] = True
    # the control: steps at the same place within a coarse (8-voxel) cell, away from window borders
    # (steps between coarse cells are larger than within them, seam or not)
    phase = (overlap // 2) % 8
    sx = (np.arange(dx.shape[1]) + 1) % 8 == phase
    sy = (np.arange(dy.shape[0]) + 1) % 8 == phase
    parts = [
        (dx[:, bx], dx[:, sx & ~bx]) if bx.any() else None,
        (dy[by], dy[sy & ~by]) if by.any() else None,
    ]
    border = np.concatenate([b.ravel() for b, _ in filter(None, parts)])
    rest = np.concatenate([r.ravel() for _, r in filter(None, parts)])
    return float(border.mean() / max(rest.mean(), 1e-6)) if len(border) and len(rest) else None


def seam_steps(height: np.ndarray, windows: list, window: int) -> dict:
    """Height steps (metres) between neighbouring columns of a scene's surface ``height``
    ``[Y, X]`` (north-up) across the borders where windows' kept columns meet
    (:func:`earthgen.pipelines.scene.core_cuts`), against the control: the steps across every
    other column border at the same place in the 8-voxel coarse lattice (steps between coarse
    cells are larger than within them, seam or not). Mean and 99th percentile of each, their
    counts, and the same for all other borders (``any_*``). Seamless: seam = control."""
    from earthgen.pipelines.scene import core_cuts

    h = np.nan_to_num(np.asarray(height, dtype=np.float64)[::-1], nan=0.0)  # rows = y (north)
    ny, nx = h.shape
    xs = sorted({w[0] for w in windows})
    ys = sorted({w[1] for w in windows})
    dx = np.abs(np.diff(h, axis=1))  # [ny, nx - 1]: between columns x and x + 1
    dy = np.abs(np.diff(h, axis=0))
    cut_x = [lo for lo, _ in core_cuts(xs, window, nx)[1:]]
    cut_y = [lo for lo, _ in core_cuts(ys, window, ny)[1:]]
    bx = np.isin(np.arange(1, nx), cut_x)  # border between x - 1 and x is at index x - 1
    by = np.isin(np.arange(1, ny), cut_y)
    px = np.isin(np.arange(1, nx) % 8, [c % 8 for c in cut_x]) & ~bx
    py = np.isin(np.arange(1, ny) % 8, [c % 8 for c in cut_y]) & ~by
    seam = np.concatenate([dx[:, bx].ravel(), dy[by].ravel()])
    ctrl = np.concatenate([dx[:, px].ravel(), dy[py].ravel()])
    rest = np.concatenate([dx[:, ~bx].ravel(), dy[~by].ravel()])

    def stats(a: np.ndarray) -> tuple[float | None, float | None]:
        return (float(a.mean()), float(np.percentile(a, 99))) if len(a) else (None, None)

    (sm, sp), (cm, cp), (am, ap) = stats(seam), stats(ctrl), stats(rest)
    return {
        "seam_mean_m": sm,
        "seam_p99_m": sp,
        "interior_mean_m": cm,
        "interior_p99_m": cp,
        "any_mean_m": am,
        "any_p99_m": ap,
        "n_seam": int(len(seam)),
        "n_interior": int(len(ctrl)),
    }


def nadir_render(result, gsd: float, device="cpu") -> np.ndarray:
    """A straight-down orthographic-like render (narrow field of view from high up) of a
    generated scene at ``gsd`` metres/pixel, north-up: ``[H, W, 3]`` float in [0, 1]."""
    from renderers.cameras import nadir_rig
    from renderers.rasterization import render_surfels

    ny, nx = result.height.shape
    vs = result.voxel_size
    size = int(round(max(nx, ny) * vs / gsd))
    ctr = torch.tensor(
        [nx * vs / 2, ny * vs / 2, float(np.nanmax(result.height)) if len(result.coords) else 0.0]
    )
    vm, Ks = nadir_rig(
        ctr + torch.as_tensor(result.origin, dtype=torch.float32),
        2000.0,
        max(nx, ny) * vs,
        size,
        size,
    )
    g = {
        k: torch.as_tensor(v, dtype=torch.float32, device=device)
        for k, v in result.surfels.items()
        if k != "voxel"
    }
    with torch.no_grad():
        img = render_surfels(g, vm.to(device), Ks.to(device), size, (0.5, 0.5, 0.5))
    return img[0].clamp(0, 1).cpu().numpy()


def reference_render(scene, gsd: float, size_px: int) -> np.ndarray:
    """The same nadir render of a reference :class:`~earthgen.world.scene3d.Scene3D`."""
    from renderers.cameras import nadir_rig
    from renderers.rasterization import render_surfels

    ext = scene.extent
    ctr = torch.tensor(
        [*(scene.origin[:2] + ext[:2] / 2), scene.origin[2] + ext[2]], dtype=torch.float32
    )
    vm, Ks = nadir_rig(ctr, 2000.0, float(max(ext[:2])), size_px, size_px)
    g = {k: torch.from_numpy(v).float() for k, v in scene.reference.items()}
    with torch.no_grad():
        return render_surfels(g, vm, Ks, size_px, (0.5, 0.5, 0.5))[0].clamp(0, 1).numpy()


def evaluate_scene(
    pipe,
    n: int = 4,
    size_m: float = 112.0,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 2.0,
    evaluator=None,
    modes: tuple[str, ...] = ("semantic", "image", "none"),
    data_seed: int = 777,
    progress: bool = True,
) -> dict:
    """Generate scenes from ``n`` held-out procedural tiles of ``size_m`` metres per condition
    mode (two seeds each) and measure them (see the module docstring)."""
    from tqdm import tqdm

    from earthgen.metrics import fid_from_features, kid_from_features
    from earthgen.pipelines.scene import surface_height
    from earthgen.training.vae3d import world_tile
    from earthgen.world.scene3d import world_scene

    vs = pipe.voxel_size
    nx = ny = int(round(size_m / vs))
    eval_gsd = 0.5
    tiles = [world_tile(data_seed, i, size_m, eval_gsd, vs) for i in range(n)]
    scenes = [world_scene(t, vs) for t in tiles]
    truth_h = [surface_height(s.coords, nx, ny, vs) for s in scenes]
    sem_vox = [resample_classes(t.semantic, nx, ny) for t in tiles]
    ref_feats = None
    if evaluator is not None:
        refs = np.stack(
            [reference_render(s, eval_gsd, int(round(size_m / eval_gsd))) for s in scenes]
        )
        rf = _features(evaluator, refs)
        ref_feats = rf["features"]
    res: dict = {"n": n, "size_m": size_m, "steps": steps, "guidance": guidance, "voxel_size_m": vs}
    if evaluator is not None:  # the ceiling: the evaluator on renders of the true scenes
        res["reference"] = {"semantic_miou": _miou(rf["segmentation"], [t.semantic for t in tiles])}
    bar = tqdm(total=len(modes) * n * 2, desc="eval scene", disable=not progress)
    for mode in modes:
        m: dict = {
            "height_mae_m": [],
            "building_iou": [],
            "diversity_height_m": [],
            "diversity_voxels": [],
            "seam_ratio": [],
        }
        renders, segs = [], []
        for i, tile in enumerate(tiles):
            kw = {
                "semantic": tile.semantic if mode in ("semantic", "both") else None,
                "image": tile.rgb if mode in ("image", "both") else None,
            }
            cond = kw["semantic"] is not None or kw["image"] is not None
            outs = []
            for k in range(2):
                g = torch.Generator().manual_seed(seed * 1000 + i * 2 + k)
                outs.append(
                    pipe(
                        **kw,
                        gsd=eval_gsd if cond else None,
                        size_m=None if cond else size_m,
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        generator=g,
                    )
                )
                bar.update()
            o = outs[0]
            h = o.height
            m["height_mae_m"].append(float(np.nanmean(np.abs(h - truth_h[i]))))
            b_pred = building_columns(h, vs)
            b_true = sem_vox[i] == CLASS_ID["building"]
            union = (b_pred | b_true).sum()
            m["building_iou"].append(float((b_pred & b_true).sum() / union) if union else 1.0)
            h2 = outs[1].height
            m["diversity_height_m"].append(float(np.nanmean(np.abs(h - h2))))
            a = {tuple(c) for c in o.coords.tolist()}
            b = {tuple(c) for c in outs[1].coords.tolist()}
            m["diversity_voxels"].append(1.0 - len(a & b) / max(len(a | b), 1))
            sr = seam_ratio(h, o.windows, pipe.window, int(round(16.0 / vs / 8)) * 8)
            if sr is not None:
                m["seam_ratio"].append(sr)
            if evaluator is not None:
                img = nadir_render(o, eval_gsd)
                renders.append(img)
                segs.append(tile.semantic)
        out = {k: float(np.mean(v)) for k, v in m.items() if v}
        if evaluator is not None and renders:
            f = _features(evaluator, np.stack(renders))
            out["semantic_miou"] = _miou(f["segmentation"], segs)
            if len(renders) > f["features"].shape[1]:  # a full-rank covariance
                out["fid_tilenet"] = fid_from_features(f["features"], ref_feats)
            if len(renders) >= 2:
                kid = kid_from_features(f["features"], ref_feats, subset_size=min(len(renders), 50))
                out["kid_tilenet"], out["kid_tilenet_std"] = kid
        res[mode] = out
    bar.close()
    return res


def _miou(pred: np.ndarray, maps: list) -> float:
    """Mean IoU over the classes present in the input maps ``maps`` of class maps ``pred``."""
    from earthgen.metrics import miou

    target = np.concatenate([np.asarray(m).ravel() for m in maps])
    cm = miou(np.concatenate([p.ravel() for p in pred]), target, NUM_CLASSES)
    ious = [
        cm["per_class_iou"][c] for c in np.unique(target) if not math.isnan(cm["per_class_iou"][c])
    ]
    return float(np.mean(ious)) if ious else float("nan")


def _features(evaluator, images: np.ndarray) -> dict:
    """TileNet on ``[B, H, W, 3]`` renders -> pooled features ``[B, F]`` and class maps
    ``[B, H, W]``."""
    dev = next(evaluator.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().to(dev)
    with torch.no_grad():
        o = evaluator.eval()(x)
    return {
        "features": o["features"].cpu().numpy().astype(np.float64),
        "segmentation": o["segmentation"].argmax(1).cpu().numpy(),
    }
