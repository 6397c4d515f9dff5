"""EarthScenePipeline end to end with tiny random models: condition modes, determinism, large
extents (window partition, map crops, pinned borders), save/load, the CLI and the evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from earthgen.classes import NUM_CLASSES
from earthgen.errors import UserInputError
from earthgen.pipelines.scene import (
    EarthScenePipeline,
    core_cuts,
    coverage_ratio,
    fill_columns,
    load_scene_pipeline,
    window_starts,
)


def get_scene_components(seed: int = 0) -> dict:
    """Tiny components: 32-voxel windows (4^3 coarse grid), 8-channel latents."""
    from flows.structure import StructureFlowDiT
    from flows.texture import TextureFlowNet
    from vae.structure import StructureVAE
    from vae.texture import TextureVAE

    torch.manual_seed(seed)
    comps = {
        "structure_vae": StructureVAE(channels=(8, 8, 8, 8), latent_channels=4),
        "structure_flow": StructureFlowDiT(
            grid_size=(4, 4, 4),
            latent_channels=4,
            patch_size=2,
            num_classes=NUM_CLASSES,
            hidden_size=16,
            depth=1,
            num_heads=2,
        ),
        "texture_vae": TextureVAE(channels=8, latent_channels=4, num_res_blocks=1),
        "texture_flow": TextureFlowNet(
            latent_channels=4, channels=8, num_blocks=1, num_classes=NUM_CLASSES
        ),
    }
    with torch.no_grad():
        for m in comps.values():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            m.eval()
    return comps


@pytest.fixture(scope="module")
def pipe():
    p = EarthScenePipeline(**get_scene_components())
    p.set_progress_bar_config(disable=True)
    return p


def semantic_map(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, NUM_CLASSES, (n // 8, n // 8)), np.ones((8, 8), int)).astype(
        np.uint8
    )


def test_windows_partition_the_scene():
    for n, W, ov in (
        (32, 32, 16),
        (33, 32, 16),
        (80, 32, 16),
        (100, 64, 8),
        (10, 32, 0),
        (128, 64, 16),
        (512, 64, 16),
        (1000, 64, 16),
    ):
        starts = window_starts(n, W, ov)
        assert starts[0] == 0 and n <= starts[-1] + W and all(s % 8 == 0 for s in starts)
        assert len(starts) == 1 or starts[-1] < n - ov  # the last window adds columns of its own
        assert (np.diff(starts) == W - ov).all(), (n, W, ov)  # exactly the requested overlap
        owned = np.zeros(n, int)
        for lo, hi in core_cuts(starts, W, n):
            owned[lo:hi] += 1
        assert (owned == 1).all(), (n, W, ov)  # every column kept by exactly one window
        for (lo, hi), s in zip(core_cuts(starts, W, n), starts, strict=True):
            assert s <= lo and hi <= s + W  # a window keeps columns it generated
    # no work beyond the requested overlap: the windows cover the area plus the overlaps exactly
    for n in (128, 200, 256, 512, 1000, 1024):
        assert coverage_ratio(n, 64, 16) == pytest.approx(1.0), n


def test_fill_columns_closes_holes_and_builds_walls():
    vox = torch.tensor(
        [[0, x, y, 3] for x in range(6) for y in range(6) if (x, y) not in {(2, 2), (5, 5)}],
        dtype=torch.int32,
    )
    out = fill_columns(vox, (6, 6))
    assert len(out) == 36 and len({(int(a), int(b)) for a, b in out[:, 1:3]}) == 36
    assert (out[:, 3] == 3).all() and torch.equal(out[:34], vox)  # flat: nothing but the two holes
    # a floating top 5 voxels above flat ground gets a wall down to just above its neighbours
    tower = torch.cat([vox, torch.tensor([[0, 2, 2, 8]], dtype=torch.int32)])
    out = fill_columns(tower, (6, 6))
    col = sorted(int(z) for b, x, y, z in out.tolist() if (x, y) == (2, 2))
    assert col == [4, 5, 6, 7, 8]
    assert len(out) == 35 + 4 + 1  # the tower's wall (4) and the hole at (5, 5)


def test_every_condition_mode_runs(pipe):
    sem = semantic_map(32)
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for kw in (
        {"semantic": sem, "gsd": 1.0},
        {"image": img, "gsd": 1.0},
        {"semantic": sem, "image": img, "gsd": 1.0},
        {"size_m": 32},
    ):
        out = pipe(**kw, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
        n = len(out.coords)
        assert (
            n > 0
            and out.coords.shape == (n, 3)
            and out.colors.shape == (n, 3)
            and out.colors.dtype == np.uint8
        )
        assert (
            out.coords[:, :2].min() >= 0
            and out.coords[:, 0].max() < 32
            and out.coords[:, 1].max() < 32
        )
        K = pipe.texture_vae.config.gaussians_per_voxel
        assert out.surfels["voxel"].max() == n - 1 and out.surfels["voxel"].min() == 0
        if "image" not in kw:
            assert out.surfels["means"].shape == (K * n, 3)
        else:  # the orthophoto's flat surfels on column tops (1 m voxels, 1 m/px: one + one under)
            level = (out.surfels["quats"] == [1, 0, 0, 0]).all(1) & (
                out.surfels["opacities"] == 1.0
            )
            assert level.sum() >= 2 * len(np.unique(out.coords[:, :2], axis=0))
        assert out.height.shape == (32, 32) and not np.isnan(out.height).any()  # holes filled


def test_seeded_generation_is_deterministic(pipe):
    sem = semantic_map(32)
    a = pipe(
        semantic=sem, gsd=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(3)
    )
    b = pipe(
        semantic=sem, gsd=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(3)
    )
    c = pipe(
        semantic=sem, gsd=1.0, num_inference_steps=2, generator=torch.Generator().manual_seed(4)
    )
    assert np.array_equal(a.coords, b.coords) and np.array_equal(
        a.surfels["means"], b.surfels["means"]
    )
    assert not (
        len(a.coords) == len(c.coords)
        and np.array_equal(a.coords, c.coords)
        and np.allclose(a.surfels["colors"], c.surfels["colors"])
    )


def test_large_extent_is_stitched_from_windows_with_shared_structure(pipe):
    """48 m at 1 m voxels with 32-voxel windows and 16 of overlap: 2 x 2 windows. Each column is
    generated once; the coarse structure is one sample of the whole extent (the windows'
    velocities blended), and the maps each window sees are the right crops."""
    sem = semantic_map(48)
    seen: dict = {}
    crops = []
    orig = pipe._crop

    def spy(m, nx, ny, x0, y0, w):
        out = orig(m, nx, ny, x0, y0, w)
        if m is not None and m.shape[1] == NUM_CLASSES:
            crops.append(((x0, y0), out.argmax(1)[0].numpy()))
        return out

    def cb(p, step, t, kw):
        if kw["stage"] == "structure":
            seen[step] = (kw["window"], kw["latents"].clone())
        return {}

    pipe._crop = spy
    try:
        out = pipe(
            semantic=sem,
            gsd=1.0,
            overlap_m=16,
            num_inference_steps=1,
            callback_on_step_end=cb,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        pipe._crop = orig
    assert out.windows == [(x, y) for y in (0, 16) for x in (0, 16)]
    assert len(np.unique(out.coords[:, :2], axis=0)) == 48 * 48  # every column, no gaps
    assert len(np.unique(out.coords, axis=0)) == len(out.coords)  # no voxel twice
    # map crops: window (x0, y0) sees rows north-up from the map's top
    assert {c[0] for c in crops} == set(out.windows)
    for (x0, y0), crop in crops:
        assert np.array_equal(crop, sem[48 - y0 - 32 : 48 - y0, x0 : x0 + 32])
    # one structure state for the whole extent: 48 voxels = 6 coarse cells a side
    window, lat = seen[0]
    assert window is None and lat.shape[2:4] == (6, 6)


def test_windows_decode_like_one_piece(pipe):
    """No seams by construction: one structure state for the whole extent, and each window's
    columns decoded with a margin of context equal the whole extent decoded in one piece."""
    from earthgen.evaluation.scene import seam_steps
    from earthgen.pipelines.scene import surface_height

    sem = np.full((48, 96), 9, np.uint8)
    sem[:, 40:56] = 1
    canvases = []
    orig = pipe._decode_region

    def spy(canvas, core, *a, **k):
        canvases.append(canvas)
        return orig(canvas, core, *a, **k)

    pipe._decode_region = spy
    try:
        out = pipe(
            semantic=sem,
            gsd=1.0,
            overlap_m=16,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
    finally:
        pipe._decode_region = orig
    assert len(out.windows) == 5 * 2 and all(c is canvases[0] for c in canvases)
    whole = orig(canvases[0], (0, 0, 96, 48), 0.0, True).numpy()
    assert np.array_equal(surface_height(whole, 96, 48, 1.0), out.height)
    r = seam_steps(out.height, out.windows, pipe.window)
    assert r["n_seam"] == 4 * 48 + 96 and r["n_interior"] > r["n_seam"]


def test_bad_inputs(pipe):
    with pytest.raises(UserInputError, match="size_m"):
        pipe()
    with pytest.raises(UserInputError, match="gsd"):
        pipe(semantic=semantic_map(32))
    with pytest.raises(UserInputError, match="class ids"):
        pipe(semantic=np.full((32, 32), 99), gsd=1.0)
    with pytest.raises(UserInputError, match="overlap"):
        pipe(size_m=32, overlap_m=17)
    with pytest.raises(UserInputError, match="same area"):
        pipe(semantic=semantic_map(32), image=np.zeros((16, 16, 3), np.uint8), gsd=1.0)
    with pytest.raises(UserInputError, match="positive integer"):
        pipe(size_m=32, num_inference_steps=0)


def test_save_load_and_cli(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "pipe")
    back = load_scene_pipeline(str(tmp_path / "pipe"), "cpu")
    back.set_progress_bar_config(disable=True)
    a = pipe(size_m=32, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    b = back(size_m=32, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(a.coords, b.coords) and np.allclose(
        a.surfels["means"], b.surfels["means"]
    )

    from earthgen.cli import main

    out = tmp_path / "out"
    rc = main(
        [
            "scene",
            "--model",
            str(tmp_path / "pipe"),
            "--world",
            "3",
            "--size-m",
            "48",
            "--steps",
            "1",
            "--seed",
            "5",
            "--render-size",
            "64",
            "--views",
            "2",
            "--turntable",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for f in (
        "scene.glb",
        "scene_mesh.ply",
        "gaussians.ply",
        "voxels.ply",
        "render.png",
        "turntable.gif",
        "dem.tif",
        "condition_semantic.png",
        "scene.json",
    ):
        assert (out / f).stat().st_size > 0, f
    meta = json.loads((out / "scene.json").read_text())
    assert meta["seed"] == 5 and meta["windows"] == 4 and meta["condition"] == ["semantic"]
    import rasterio

    with rasterio.open(out / "dem.tif") as ds:
        dem = ds.read(1)
        assert dem.shape == (48, 48) and ds.res == (1.0, 1.0)
        assert np.nanmax(dem) > 0
    # user mistakes: exit 2, no traceback
    assert (
        main(
            [
                "scene",
                "--model",
                str(tmp_path / "pipe"),
                "--world",
                "1",
                "--semantic",
                "x.png",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert main(["scene", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "bad")]) == 2
    assert (
        main(
            [
                "scene",
                "--model",
                str(tmp_path / "pipe"),
                "--size-m",
                "32",
                "--overlap-m",
                "-1",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_eval_scene_metrics(pipe):
    from earthgen.evaluation.scene import evaluate_scene, seam_ratio

    m = evaluate_scene(pipe, n=1, size_m=32, steps=1, modes=("semantic",), progress=False)
    for mode in ("semantic",):
        r = m[mode]
        assert set(r) >= {"height_mae_m", "building_iou", "diversity_height_m", "diversity_voxels"}
        assert all(np.isfinite(v) for v in r.values())
        assert 0 <= r["building_iou"] <= 1 and 0 <= r["diversity_voxels"] <= 1
    # with an evaluator network: semantic mIoU of nadir renders, KID, and the reference ceiling
    from earthgen.evaluation.tilenet import TileNet

    torch.manual_seed(0)
    m = evaluate_scene(
        pipe, n=2, size_m=32, steps=1, modes=("none",), evaluator=TileNet(width=8), progress=False
    )
    assert 0 <= m["none"]["semantic_miou"] <= 1 and 0 <= m["reference"]["semantic_miou"] <= 1
    assert np.isfinite(m["none"]["kid_tilenet"])
    # the seam metric: a step at a window border shows, a smooth ramp does not
    windows = [(0, 0), (16, 0)]
    ramp = np.tile(np.arange(48, dtype=np.float32) * 0.5, (32, 1))
    assert seam_ratio(ramp, windows, 32, 16) == pytest.approx(1.0)
    step = ramp.copy()
    step[:, 24:] += 5.0  # columns 24.. (x0 = 16 + overlap / 2) come from the second window
    assert seam_ratio(step, windows, 32, 16) > 5


def test_dem_keeps_the_maps_north_west_corner(tmp_path):
    import rasterio
    from affine import Affine

    from earthgen.pipelines.scene import save_dem, surface_height

    coords = np.array(
        [[0, 0, 2], [3, 1, 0], [3, 1, 4]]
    )  # columns (0, 0) and (3, 1) of a 4 x 2 scene
    h = surface_height(coords, 4, 2, 0.5)
    assert h.shape == (2, 4) and h[1, 0] == 1.5 and h[0, 3] == 2.5 and np.isnan(h).sum() == 6
    save_dem(tmp_path / "d.tif", h, 0.5, 32632, Affine(2.0, 0, 373107.0, 0, -2.0, 4844056.0))
    with rasterio.open(tmp_path / "d.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.transform == Affine(
            0.5, 0, 373107.0, 0, -0.5, 4844056.0
        )
        assert np.array_equal(ds.read(1), h, equal_nan=True)
