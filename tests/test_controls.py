"""The fused multi-condition control branch (controls.FusedControlNet) with tiny real models."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from controls import FusedControlNet
from earthgen.errors import UserInputError

CONDS = {"layout": 13, "roads": 1, "height": 1}


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def randomize(model: torch.nn.Module) -> None:
    """Give every parameter (zero convs included) random values so equalities are meaningful."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


@pytest.fixture(scope="module")
def parts():
    unet = tiny_unet()
    cn = FusedControlNet.from_unet(unet, CONDS, fusion_widths=(8, 8, 16, 16))
    return unet, cn


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(3)
    return (
        torch.randn(b, 4, 8, 8, generator=g),
        torch.randn(b, 5, 16, generator=g),
        {
            "layout": torch.rand(b, 13, 64, 64, generator=g),
            "roads": torch.rand(b, 1, 64, 64, generator=g),
            "height": torch.rand(b, 1, 64, 64, generator=g),
        },
    )


def test_residuals_fit_the_unet_and_start_at_zero(parts):
    unet, cn = parts
    lat, txt, conds = inputs()
    down, mid = cn(lat, 10, txt, cn.pack(conds))
    assert (
        all(float(d.detach().abs().max()) == 0 for d in down)
        and float(mid.detach().abs().max()) == 0
    )
    out = unet(
        lat, 10, txt, down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample
    torch.testing.assert_close(
        out, unet(lat, 10, txt).sample
    )  # an untrained branch changes nothing
    assert torch.equal(
        cn.controlnet.conv_in.weight, unet.conv_in.weight
    )  # initialised from the UNet


def test_dropped_or_missing_condition_contributes_nothing():
    unet = tiny_unet()
    cn = FusedControlNet.from_unet(unet, CONDS, fusion_widths=(8, 8, 16, 16))
    randomize(cn)
    lat, txt, conds = inputs()
    run = lambda packed: cn(lat, 10, txt, packed)[1]  # noqa: E731
    only_roads = run(cn.pack({"roads": conds["roads"]}))
    dropped = run(
        cn.pack(
            conds, drop={"layout": torch.tensor([True, True]), "height": torch.tensor([True, True])}
        )
    )
    zero_scale = run(cn.pack(conds, scales={"layout": 0.0, "height": 0.0}))
    torch.testing.assert_close(dropped, only_roads)
    torch.testing.assert_close(zero_scale, only_roads)
    full = run(cn.pack(conds))
    assert not torch.allclose(full, only_roads)
    # CFG's unconditional branch: every condition dropped for sample 0 only
    mixed = run(cn.pack(conds, drop=torch.tensor([True, False])))
    nothing = run(cn.pack({}, batch_size=2, size=(64, 64)))
    torch.testing.assert_close(mixed[0], nothing[0])
    torch.testing.assert_close(mixed[1], full[1])
    # scales act per condition
    assert not torch.allclose(run(cn.pack(conds, scales={"layout": 2.0})), full)


def test_save_load_round_trip(tmp_path, parts):
    _, cn = parts
    randomize(cn)
    cn.save_pretrained(tmp_path / "cn")
    cn2 = FusedControlNet.from_pretrained(tmp_path / "cn")
    assert cn2.condition_names == tuple(sorted(CONDS))
    lat, txt, conds = inputs()
    for a, b in zip(
        cn(lat, 5, txt, cn.pack(conds))[0], cn2(lat, 5, txt, cn2.pack(conds))[0], strict=True
    ):
        torch.testing.assert_close(a, b)


def test_bad_inputs(parts):
    _, cn = parts
    _, _, conds = inputs()
    with pytest.raises(UserInputError, match="unknown control"):
        cn.pack({"depth": conds["height"]})
    with pytest.raises(UserInputError, match="expected"):
        cn.pack({"layout": conds["roads"]})
    with pytest.raises(UserInputError, match="divisible by 8"):
        cn.pack({"roads": torch.rand(2, 1, 60, 60)})
    with pytest.raises(UserInputError, match="batch_size and size"):
        cn.pack({})
    with pytest.raises(UserInputError, match="positive channel"):
        FusedControlNet(conditions={"layout": 0})


def test_training_the_branch_lowers_the_loss():
    """With the UNet frozen, 30 Adam steps on the control branch alone learn to push the UNet's
    output towards a target that only the layout tells: the loss falls."""
    unet = tiny_unet().requires_grad_(False)
    cn = FusedControlNet.from_unet(unet, {"layout": 13}, fusion_widths=(8, 8, 16, 16))
    opt = torch.optim.Adam(cn.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        ids = torch.randint(0, 13, (4, 64, 64), generator=g)
        layout = torch.nn.functional.one_hot(ids, 13).permute(0, 3, 1, 2).float()
        target = torch.nn.functional.avg_pool2d((ids == 1).float()[:, None], 8).expand(
            -1, 4, -1, -1
        )
        lat = torch.randn(4, 4, 8, 8, generator=g)
        txt = torch.zeros(4, 3, 16)
        down, mid = cn(lat, 500, txt, cn.pack({"layout": layout}))
        pred = unet(
            lat, 500, txt, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
