"""Texture flow: map sampling alignment, column context, conditions, inpainting, save/load, fitting,
and the train command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flows.structure import StructureFlowDiT, sample_structure
from flows.texture import TextureFlowNet, column_pool, column_sample, sample_texture
from vae.sparse import SparseTensor

K = 13


def scene(batch: int = 2, X: int = 8, Y: int = 8, seed: int = 0) -> SparseTensor:
    """A 2.5D voxel batch: every column has voxels from 0 up to a random height."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        h = torch.randint(1, 4, (X, Y), generator=g)
        for x in range(X):
            for y in range(Y):
                for z in range(int(h[x, y])):
                    rows.append((b, x, y, z))
    c = torch.tensor(rows, dtype=torch.int32)
    return SparseTensor.from_coords(c, torch.randn(len(c), 8, generator=g), (X, Y, 4), batch)


def tiny(**kw) -> TextureFlowNet:
    torch.manual_seed(0)
    net = TextureFlowNet(
        latent_channels=8,
        channels=16,
        num_blocks=2,
        num_classes=K,
        context_stride=2,
        backend="torch",
        **kw,
    )
    with torch.no_grad():  # non-trivial zero-initialised heads
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_column_sample_reads_the_north_up_pixel_of_each_column():
    X, Y = 6, 4
    # a map of X x Y pixels whose value is (row, col): row 0 is the northern edge (y = Y - 1)
    rows, cols = torch.meshgrid(torch.arange(Y), torch.arange(X), indexing="ij")
    m = torch.stack([rows, cols]).float()[None]  # [1, 2, Y, X]
    c = torch.tensor([[0, x, y, 0] for x in range(X) for y in range(Y)], dtype=torch.int32)
    got = column_sample(m, c, (X, Y), 1, "nearest")
    assert torch.equal(got[:, 0], (Y - 1 - c[:, 2]).float())
    assert torch.equal(got[:, 1], c[:, 1].float())
    # 2 x 2 samples per column on a map of 2X x 2Y pixels read the column's own 4 pixels
    big = torch.arange(4 * X * Y, dtype=torch.float32).reshape(1, 1, 2 * Y, 2 * X)
    s = column_sample(big, c, (X, Y), 2, "nearest").reshape(-1, 2, 2)
    for i, (_, x, y, _) in enumerate(c.tolist()):
        r0 = 2 * (Y - 1 - y)
        assert torch.equal(s[i], big[0, 0, r0 : r0 + 2, 2 * x : 2 * x + 2])


def test_column_pool_is_the_mean_per_cell():
    x = scene(2, 8, 8)
    m, cell = column_pool(x.feats, x.coords, 2, (8, 8), 4)
    assert m.shape == (2, 8, 2, 2)
    c = x.coords.long()
    sel = (c[:, 0] == 1) & (c[:, 1] // 4 == 1) & (c[:, 2] // 4 == 0)
    assert torch.allclose(m[1, :, 1, 0], x.feats[sel].mean(0), atol=1e-6)
    assert torch.allclose(
        m.permute(0, 2, 3, 1).reshape(-1, 8)[cell][sel],
        x.feats[sel].mean(0).expand(int(sel.sum()), -1),
    )


def test_forward_shapes_conditions_and_batch_independence():
    net = tiny()
    x = scene(2)
    sem = (
        torch.nn.functional.one_hot(torch.randint(0, K, (2, 16, 16)), K).permute(0, 3, 1, 2).float()
    )
    img = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0.2, 0.8])
    v = net(x, t, semantic=sem, image=img)
    assert v.shape == x.feats.shape and torch.isfinite(v).all()
    # a dropped condition is the same as no condition
    drop = torch.ones(2, dtype=torch.bool)
    assert torch.allclose(net(x, t, semantic=sem, drop_semantic=drop), net(x, t), atol=1e-6)
    # conditions matter
    assert not torch.allclose(net(x, t, image=img), net(x, t), atol=1e-4)
    # scene 0's velocity does not depend on scene 1
    keep = x.coords[:, 0] == 0
    one = x.select(keep)
    one.batch_size = 1
    v1 = net(one, t[:1], semantic=sem[:1], image=img[:1])
    assert torch.allclose(v1, v[keep], atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    from earthgen.errors import UserInputError

    net = tiny()
    x = scene(2)
    with pytest.raises(UserInputError, match="semantic condition"):
        net(x, torch.tensor([0.5, 0.5]), semantic=torch.rand(2, K + 1, 8, 8))
    with pytest.raises(UserInputError, match="t must be"):
        net(x, torch.rand(3))
    with pytest.raises(UserInputError, match="texture latents"):
        net(x.replace(torch.randn(len(x), 5)), torch.tensor(0.5))


def test_save_load_round_trip(tmp_path):
    net = tiny(latent_scale=1.7)
    net.save_pretrained(tmp_path / "tf")
    back = TextureFlowNet.from_pretrained(tmp_path / "tf").eval()
    x = scene(1)
    assert back.config.latent_scale == pytest.approx(1.7)
    assert torch.equal(net(x, torch.tensor(0.3)), back(x, torch.tensor(0.3)))


def test_sampling_is_deterministic_and_inpainting_pins_known_voxels():
    net = tiny(latent_scale=2.0)
    x = scene(1)
    img = torch.rand(1, 3, 16, 16)
    a = sample_texture(net, x, image=img, steps=2, generator=torch.Generator().manual_seed(1))
    b = sample_texture(net, x, image=img, steps=2, generator=torch.Generator().manual_seed(1))
    c = sample_texture(net, x, image=img, steps=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    known = torch.randn(len(x), 8) * 2.0
    mask = x.coords[:, 1] < 4
    out = sample_texture(
        net,
        x,
        image=img,
        steps=2,
        generator=torch.Generator().manual_seed(1),
        known=known,
        known_mask=mask,
    )
    assert torch.allclose(out[mask], known[mask], atol=1e-5)
    assert not torch.allclose(out[~mask], known[~mask], atol=1e-2)


def test_structure_inpainting_pins_known_columns():
    torch.manual_seed(0)
    model = StructureFlowDiT(
        grid_size=(4, 4, 4),
        latent_channels=4,
        patch_size=2,
        num_classes=K,
        hidden_size=16,
        depth=1,
        num_heads=2,
        latent_scale=1.5,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    known = torch.randn(1, 5, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 1, dtype=torch.bool)
    mask[:, :, :2] = True
    out = sample_structure(
        model, 1, steps=2, generator=torch.Generator().manual_seed(0), known=known, known_mask=mask
    )
    assert torch.allclose(out[:, :, :2], known[:, :, :2], atol=1e-5)
    assert not torch.allclose(out[:, :, 2:], known[:, :, 2:], atol=1e-2)


def test_training_lowers_the_flow_matching_loss():
    from flows.loss import FlowMatchingLoss
    from flows.path import LinearPath

    torch.manual_seed(0)
    net = TextureFlowNet(
        latent_channels=8, channels=16, num_blocks=1, num_classes=K, backend="torch"
    )
    x1 = scene(1)
    img = torch.rand(1, 3, 16, 16)
    target = x1.feats.clone()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    path, loss_fn = LinearPath(), FlowMatchingLoss()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        x0 = torch.randn(target.shape, generator=g)
        t = torch.rand(1, generator=g)
        ps = path.sample(x0, target, t.expand(len(target)))
        loss = loss_fn(net(x1.replace(ps.x_t), t, image=img), ps.dx_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_train_texture_flow_command(tmp_path):
    from earthgen.cli import main
    from vae.texture import TextureVAE

    TextureVAE(channels=8, latent_channels=8, num_res_blocks=1, backend="torch").save_pretrained(
        tmp_path / "tvae"
    )
    rc = main(
        [
            "train",
            "texture-flow",
            "--vae",
            str(tmp_path / "tvae"),
            "--test-run",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["steps"] == 4 and set(s["eval"]) >= {"vae", "image", "semantic", "both", "none"}
    net = TextureFlowNet.from_pretrained(tmp_path / "run" / "model")
    assert net.config.latent_scale == pytest.approx(s["latent_scale"])
    assert (
        main(["train", "texture-flow", "--test-run", "--out", str(tmp_path / "r2")]) == 2
    )  # no --vae
