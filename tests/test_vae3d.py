"""3D VAEs: structure VAE (sparse occupancy <-> coarse latent), texture VAE (appearance <-> latent
-> 2DGS surfels), the world scenes they train on, and the training command."""

import json

import numpy as np
import pytest
import torch

from earthgen.errors import UserInputError
from earthgen.training.vae3d import batch_of, structure_crop, texture_input
from earthgen.world.scene3d import appearance_channels, world_scene
from earthgen.world.tile import generate_world
from renderers.cameras import intrinsics_from_fov, look_at
from renderers.metrics import psnr
from renderers.rasterization import render_surfels
from vae.sparse import SparseTensor
from vae.structure import StructureVAE, downsample_coords, voxel_metrics
from vae.texture import TextureVAE

TINY_S = {
    "channels": (8, 16, 16, 16),
    "latent_channels": 4,
    "num_res_blocks": 1,
    "backend": "torch",
}


@pytest.fixture(scope="module")
def crop():
    vox = generate_world(3, 64, 1.0, origin=(400.0, -800.0)).voxels(1.0)
    c = (vox.coords - vox.coords.min(0)).astype(np.int32)
    return structure_crop(c, 32, np.random.default_rng(0))


@pytest.fixture(scope="module")
def scene():
    return world_scene(generate_world(5, 32, 0.5, origin=(300.0, -200.0)), 1.0)


def test_voxel_metrics_on_constructed_sets():
    a = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [0, 3, 0, 0]])
    b = torch.tensor([[0, 2, 0, 0], [0, 3, 0, 0], [0, 4, 0, 0]])
    m = voxel_metrics(a, b)
    assert m["iou"] == pytest.approx(2 / 5) and m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert voxel_metrics(b, b)["iou"] == 1.0


def test_structure_vae_shapes_and_teacher_forcing(crop):
    torch.manual_seed(0)
    vae = StructureVAE(**TINY_S)
    x = batch_of([crop, crop[::2]], 32, "cpu")
    post = vae.encode(x)
    coarse = downsample_coords(x.coords, 3)
    assert post.mean.spatial_shape == (4, 4, 4) and post.mean.feats.shape == (len(coarse), 4)
    assert torch.equal(post.mean.sorted().coords, coarse)  # latent lives on the active coarse cells
    out = vae.decode(post.mode(), target=x)
    # kept by the truth at every level: the fine output is exactly the input voxels
    assert torch.equal(out["occupancy"].sorted().coords, x.sorted().coords)
    assert [len(lg) for lg in out["logits"]] == [
        8 * len(downsample_coords(x.coords, k)) for k in (3, 2, 1)
    ]
    loss = vae(x)["loss"]
    assert torch.isfinite(loss) and loss.item() > 0


def test_structure_vae_rejects_bad_grids():
    vae = StructureVAE(**TINY_S)
    with pytest.raises(UserInputError):
        vae.encode(SparseTensor.from_coords(torch.tensor([[0, 1, 1, 1]]), None, (12, 12, 12)))
    with pytest.raises(UserInputError):
        StructureVAE(channels=(8, 8))


def test_structure_vae_round_trip_and_determinism(tmp_path, crop):
    torch.manual_seed(1)
    vae = StructureVAE(**TINY_S)
    x = batch_of([crop], 32, "cpu")
    g = torch.Generator().manual_seed(5)
    a = vae(x, generator=g)["loss"]
    g.manual_seed(5)
    assert vae(x, generator=g)["loss"].item() == a.item()  # seeded sampling
    vae.save_pretrained(tmp_path / "svae")
    again = StructureVAE.from_pretrained(tmp_path / "svae")
    r1, r2 = vae.reconstruct(x), again.reconstruct(x)
    assert torch.equal(r1.sorted().coords, r2.sorted().coords)
    assert (
        again.config.channels == list(TINY_S["channels"])
        or tuple(again.config.channels) == TINY_S["channels"]
    )


def test_structure_vae_learns_a_scene(crop):
    """40 Adam steps on one crop: the loss falls below half its start and reconstruction
    (no teacher forcing) recovers most voxels."""
    torch.manual_seed(0)
    vae = StructureVAE(channels=(8, 16, 24, 32), latent_channels=8, backend="torch")
    x = batch_of([crop], 32, "cpu")
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    losses = []
    for _ in range(40):
        loss = vae(x, kl_weight=1e-4)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    m = voxel_metrics(vae.reconstruct(x).coords, x.coords)
    assert m["recall"] > 0.5 and m["precision"] > 0.5


def test_world_scene_features_and_reference(scene):
    p = 2
    assert scene.appearance.shape == (len(scene), appearance_channels(p))
    tops = scene.appearance[:, 7] > 0
    assert tops.sum() >= 16 * 16  # one top voxel per column at least
    np.testing.assert_allclose(
        scene.appearance[tops, 8 : 8 + 3 * p * p].max(), 1.0, atol=0.9
    )  # colours in [0, 1]
    ref = scene.reference
    n = len(ref["means"])
    assert n >= 32 * 32 and ref["quats"].shape == (n, 4) and ref["scales"].shape == (n, 2)
    np.testing.assert_allclose(np.linalg.norm(ref["quats"], axis=1), 1.0, atol=1e-5)
    assert (ref["colors"] >= 0).all() and (ref["colors"] <= 1).all()


def test_reference_scene_renders_the_tile_from_above():
    """A nadir render of the reference surfels at the tile's GSD reproduces the tile image."""
    tile = generate_world(8, 48, 0.5, origin=(1200.0, 900.0))
    sc = world_scene(tile, 1.0)
    ctr = torch.tensor(
        [1200.0 + 12, 900.0 - 12, float(tile.height.max() + tile.object_height.max())]
    )
    alt = 600.0
    W = 48
    f = alt / 0.5  # focal length (px) so a pixel covers 0.5 m on the ground
    K = torch.tensor([[f, 0, W / 2], [0, f, W / 2], [0, 0, 1.0]])[None]
    vm = look_at(ctr + torch.tensor([0, 0, alt]), ctr)[None]
    ref = {k: torch.from_numpy(v) for k, v in sc.reference.items()}
    img = render_surfels(ref, vm, K, W)[0]
    target = torch.from_numpy(tile.rgb).float() / 255
    assert psnr(img, target, channels_last=True).item() > 24.0


def test_texture_vae_decodes_surfels_inside_their_voxels(scene, tmp_path):
    torch.manual_seed(0)
    vae = TextureVAE(
        in_channels=scene.appearance.shape[1], channels=16, num_res_blocks=1, backend="torch"
    )
    x = texture_input([scene], "cpu")
    g, post = vae(x, scene.voxel_size, tuple(scene.origin), sample=False)
    K = vae.config.gaussians_per_voxel
    assert g["means"].shape == (len(scene) * K, 3) and g["scales"].shape == (len(scene) * K, 3)
    centre = (x.coords[g["voxel"], 1:].float() + 0.5) * scene.voxel_size + torch.tensor(
        scene.origin
    ).float()
    assert ((g["means"] - centre).abs() <= vae.config.offset_range * scene.voxel_size + 1e-5).all()
    assert ((g["opacities"] > 0) & (g["opacities"] < 1)).all()
    torch.testing.assert_close(g["quats"].norm(dim=1), torch.ones(len(g["quats"])))
    vae.save_pretrained(tmp_path / "tvae")
    again = TextureVAE.from_pretrained(tmp_path / "tvae")
    g2, _ = again(x, scene.voxel_size, tuple(scene.origin), sample=False)
    torch.testing.assert_close(g2["colors"], g["colors"])
    with pytest.raises(UserInputError):
        vae.encode(x.replace(x.feats[:, :5]))


def test_texture_vae_rendering_loss_falls(scene):
    """Gradients flow from renders through the surfels into the VAE: 60 steps cut the L1 by a
    third."""
    torch.manual_seed(0)
    vae = TextureVAE(
        in_channels=scene.appearance.shape[1], channels=16, num_res_blocks=1, backend="torch"
    )
    x = texture_input([scene], "cpu")
    ctr = torch.tensor(scene.center, dtype=torch.float32)
    eye = ctr[None] + torch.tensor([[0.0, -20.0, 40.0], [15.0, 10.0, 45.0]])
    vm, K = look_at(eye, ctr.expand(2, 3)), intrinsics_from_fov(32, 32, 45.0).expand(2, 3, 3)
    ref = render_surfels({k: torch.from_numpy(v) for k, v in scene.reference.items()}, vm, K, 32)
    opt = torch.optim.Adam(vae.parameters(), 5e-3)
    losses = []
    for _ in range(60):
        g, _ = vae(x, scene.voxel_size, tuple(scene.origin), sample=False)
        g.pop("voxel")
        loss = (render_surfels(g, vm, K, 32) - ref).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.67 * losses[0], losses[::10]


@pytest.mark.parametrize("task", ["structure-vae", "texture-vae"])
def test_train_command_test_run_and_resume(tmp_path, task):
    from earthgen.cli import main

    out = tmp_path / task
    assert (
        main(["train", task, "--test-run", "--steps", "4", "--save-every", "2", "--out", str(out)])
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert (out / "model" / "config.json").exists() and (out / "loss.png").exists()
    assert set(s["eval"]) >= (
        {"iou", "precision", "recall"} if task == "structure-vae" else {"psnr_db", "ssim"}
    )
    assert (
        main(
            [
                "train",
                task,
                "--test-run",
                "--steps",
                "6",
                "--save-every",
                "2",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["started_at"] == 4 and s2["steps"] == 6
    rows = (out / "loss.csv").read_text().splitlines()
    assert len(rows) == 1 + 6


def test_torch_backend_under_bf16_autocast(crop, scene):
    """Mixed precision: sparse layers accumulate in the features' dtype, and surfel positions
    stay float32 (world coordinates are hundreds of metres)."""
    torch.manual_seed(0)
    vae = StructureVAE(**TINY_S)
    x = batch_of([crop], 32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vae(x)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    tex = TextureVAE(
        in_channels=scene.appearance.shape[1], channels=16, num_res_blocks=1, backend="torch"
    )
    origin = (123456.0, 987654.0, 10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g, _ = tex(texture_input([scene], "cpu"), scene.voxel_size, origin, sample=False)
    assert g["means"].dtype == torch.float32
    centre = (texture_input([scene], "cpu").coords[g["voxel"], 1:].float() + 0.5) + torch.tensor(
        origin
    )
    assert (g["means"] - centre).abs().max() <= 0.76


def test_fresh_run_refuses_an_out_folder_with_checkpoints(tmp_path):
    from earthgen.cli import main

    out = tmp_path / "svae"
    assert main(["train", "structure-vae", "--test-run", "--steps", "2", "--out", str(out)]) == 0
    assert main(["train", "structure-vae", "--test-run", "--steps", "2", "--out", str(out)]) == 2
    assert (
        main(
            [
                "train",
                "structure-vae",
                "--test-run",
                "--steps",
                "2",
                "--grad-accum",
                "2",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_save_scene_writes_viewable_files(tmp_path, scene):
    import trimesh

    from earthgen.export3d import save_scene
    from renderers.export import load_gaussians_ply

    paths = save_scene(
        tmp_path / "s",
        scene.coords,
        scene.voxel_size,
        scene.origin,
        scene.color,
        scene.reference,
        semantic=scene.semantic,
        image_size=64,
        views=2,
    )
    mesh = trimesh.load(paths["glb"], force="mesh")
    assert len(mesh.faces) > 2 * len(scene)  # at least the top faces
    g = load_gaussians_ply(paths["gaussians"])
    assert len(g["means"]) == len(scene.reference["means"])
    # local coordinates: the surfels sit inside the scene's box around the origin
    assert float(g["means"][:, :2].min()) > -1.0 and float(g["means"][:, :2].max()) < 17.0
    from PIL import Image

    img = np.asarray(Image.open(paths["render"]))
    assert img.shape == (64, 128, 3) and img.std() > 10  # two views, not blank
    pts = trimesh.load(paths["voxels"])
    assert len(pts.vertices) == len(scene)


def test_structure_decode_of_an_all_empty_prediction(crop):
    vae = StructureVAE(**TINY_S)
    x = batch_of([crop], 32, "cpu")
    out = vae.decode(vae.encode(x).mode(), threshold=1e9)["occupancy"]  # the head keeps nothing
    assert len(out) == 0 and out.spatial_shape == (32, 32, 32)
