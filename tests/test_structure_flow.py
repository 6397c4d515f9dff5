"""Structure flow network (flows.structure): grid <-> sparse latent, column tokens, condition
alignment and dropping, a short flow-matching fit, save/load."""

import pytest
import torch

from earthgen.errors import UserInputError
from flows.guidance import cfg_velocity
from flows.loss import FlowMatchingLoss, logit_normal_time
from flows.path import LinearPath
from flows.solver import ODESolver
from flows.structure import StructureFlowDiT, grid_to_structure, structure_to_grid

TINY = {
    "grid_size": (8, 8, 4),
    "latent_channels": 3,
    "patch_size": 2,
    "num_classes": 5,
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 2,
}


def test_grid_round_trip():
    coords = torch.tensor([[0, 1, 2, 3], [1, 7, 0, 0], [1, 2, 2, 1]], dtype=torch.int32)
    feats = torch.randn(3, 3)
    g = structure_to_grid(coords, feats, (8, 8, 4), 2)
    assert g.shape == (2, 4, 8, 8, 4) and int((g[:, 0] > 0).sum()) == 3
    c2, f2 = grid_to_structure(g)
    order = torch.argsort(c2[:, 0] * 1000 + c2[:, 1] * 100 + c2[:, 2] * 10 + c2[:, 3])
    ref = torch.argsort(coords[:, 0] * 1000 + coords[:, 1] * 100 + coords[:, 2] * 10 + coords[:, 3])
    assert torch.equal(c2[order], coords[ref]) and torch.equal(f2[order], feats[ref])


def test_tokens_invert_and_maps_align_with_the_grid():
    m = StructureFlowDiT(**TINY)
    x = torch.randn(2, 4, 8, 8, 4)
    assert torch.equal(m._untokens(m._tokens(x)), x)
    sem = torch.zeros(1, 5, 16, 16)
    sem[0, 2, 0, 0] = 1.0  # north-west pixel: grid x = 0, y = Y - 1 -> token (0, 3)
    tok = m._map_tokens(sem, 1)  # [1, 16, 5 * 4]
    hot = tok.abs().sum(-1)[0].nonzero()[:, 0].tolist()
    assert hot == [0 * 4 + 3]


def test_zero_init_and_condition_dropping():
    torch.manual_seed(0)
    m = StructureFlowDiT(**TINY)
    x, t = torch.randn(2, 4, 8, 8, 4), torch.rand(2)
    assert m(x, t).abs().max() == 0  # adaLN-Zero: the untrained net predicts zero velocity
    for p in m.parameters():  # give it weights
        torch.nn.init.normal_(p, std=0.05)
    sem = torch.rand(2, 5, 16, 16)
    img = torch.rand(2, 3, 32, 32)
    full = m(x, t, semantic=sem, image=img)
    none = m(x, t)
    dropped = m(
        x,
        t,
        semantic=sem,
        image=img,
        drop_semantic=torch.tensor([True, True]),
        drop_image=torch.tensor([True, True]),
    )
    torch.testing.assert_close(dropped, none)
    assert (full - none).abs().max() > 1e-4
    mixed = m(x, t, semantic=sem, drop_semantic=torch.tensor([False, True]))
    torch.testing.assert_close(mixed[1], none[1])
    torch.testing.assert_close(mixed[0], m(x, t, semantic=sem)[0])
    with pytest.raises(UserInputError):
        m(torch.randn(2, 4, 8, 8, 5), t)
    with pytest.raises(UserInputError):
        StructureFlowDiT(**{**TINY, "grid_size": (7, 8, 4)})


def test_flow_matching_fit_and_conditional_sampling(tmp_path):
    """Two kinds of scenes, told apart only by the semantic map: after a short fit the guided
    samples follow the map (the occupancy of the generated grid matches the kind)."""
    torch.manual_seed(0)
    m = StructureFlowDiT(**TINY)
    path, loss_fn = LinearPath(), FlowMatchingLoss()

    def data(b, g):
        kind = torch.randint(0, 2, (b,), generator=g)
        x1 = torch.full((b, 4, 8, 8, 4), -1.0)
        x1[:, 1:] = 0
        x1[kind == 0, 0, :, :, 0] = 1.0  # flat ground at z = 0
        x1[kind == 1, 0, :, :, 2] = 1.0  # a plateau at z = 2
        sem = torch.zeros(b, 5, 16, 16)
        sem[torch.arange(b), kind] = 1.0
        return x1, sem

    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(m.parameters(), 2e-3)
    losses = []
    for _ in range(150):
        x1, sem = data(8, g)
        x0 = torch.randn(x1.shape, generator=g)
        t = logit_normal_time(8, generator=g)
        ps = path.sample(x0, x1, t)
        drop = torch.rand(8, generator=g) < 0.1
        loss = loss_fn(m(ps.x_t, t, semantic=sem, drop_semantic=drop), ps.dx_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    m.save_pretrained(tmp_path / "sflow")
    m2 = StructureFlowDiT.from_pretrained(tmp_path / "sflow").eval()
    _, sem = data(2, torch.Generator().manual_seed(5))
    sem = torch.zeros(2, 5, 16, 16)
    sem[0, 0], sem[1, 1] = 1.0, 1.0
    x0 = torch.randn(2, 4, 8, 8, 4, generator=torch.Generator().manual_seed(3))

    def v(x, t):
        return cfg_velocity(
            lambda xx, tt, c: m2(xx, tt, semantic=c["s"], drop_semantic=c["d"]),
            x,
            t,
            {"s": sem, "d": torch.zeros(2, dtype=torch.bool)},
            {"s": sem, "d": torch.ones(2, dtype=torch.bool)},
            2.0,
        )

    with torch.no_grad():
        out = ODESolver("heun").sample(v, x0, 16)
    occ = out[:, 0] > 0
    assert occ[0, :, :, 0].float().mean() > 0.9 and occ[0, :, :, 2].float().mean() < 0.1
    assert occ[1, :, :, 2].float().mean() > 0.9 and occ[1, :, :, 0].float().mean() < 0.1


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotated_scene_keeps_maps_aligned(k):
    from flows.structure import rotate_scene

    m = StructureFlowDiT(**TINY)
    grid = torch.zeros(1, 4, 8, 8, 4)
    grid[0, 0, 0, 7, 0] = 1.0  # north-west column
    sem = torch.zeros(1, 5, 16, 16)
    sem[0, 1, 0, 0] = 1.0  # north-west pixel
    g2, s2 = rotate_scene(grid, [sem], k)
    grid_hot = m._tokens(g2).abs().sum(-1)[0].nonzero()[:, 0].tolist()
    map_hot = m._map_tokens(s2, 1).abs().sum(-1)[0].nonzero()[:, 0].tolist()
    assert grid_hot == map_hot


def test_train_structure_flow_command(tmp_path):
    import json

    from earthgen.cli import main
    from vae.structure import StructureVAE

    StructureVAE(channels=(8, 8, 8, 8), latent_channels=4).save_pretrained(tmp_path / "svae")
    out = tmp_path / "sflow"
    args = [
        "train",
        "structure-flow",
        "--test-run",
        "--vae",
        str(tmp_path / "svae"),
        "--save-every",
        "3",
    ]
    assert main(args + ["--steps", "3", "--out", str(out)]) == 0
    assert main(args + ["--steps", "5", "--out", str(out), "--resume"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["started_at"] == 3 and s["steps"] == 5 and s["latent_scale"] > 0
    m = StructureFlowDiT.from_pretrained(out / "model")
    assert m.config.latent_channels == 4 and tuple(m.config.grid_size) == (4, 4, 4)
    assert (
        main(["train", "structure-flow", "--test-run", "--out", str(tmp_path / "x")]) == 2
    )  # no --vae


def test_evaluate_structure_flow_reports_every_condition_mode():
    from earthgen.training.flow3d import evaluate_structure_flow

    torch.manual_seed(0)
    m = StructureFlowDiT(**TINY)
    x1 = torch.full((2, 4, 8, 8, 4), -1.0)
    x1[:, 1:] = 0
    x1[:, 0, :, :, 1] = 1.0
    data = {"grid": x1, "semantic": torch.rand(2, 5, 16, 16), "image": torch.rand(2, 3, 32, 32)}
    r = evaluate_structure_flow(m, data, steps=2)
    assert set(r) == {"semantic", "image", "both", "none"}
    for v in r.values():
        assert 0.0 <= v["coarse_iou"] <= 1.0 and v["top_error_cells"] >= 0.0
