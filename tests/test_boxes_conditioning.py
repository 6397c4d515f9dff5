"""Rotated-box geometry against shapely, box tokens, and the box-conditioned image pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from tiny_models import get_dummy_components

from earthgen.boxes import (
    BoxSet,
    box_iou,
    corners_to_obb,
    hbb_to_corners,
    obb_to_corners,
    polygon_area,
)
from earthgen.conditioning.boxes import BoxTokenEncoder, drop_boxes, fourier_embed, pack_boxes
from earthgen.errors import UserInputError


def _random_obb(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[
        rng.uniform(0, 100, (n, 2)), rng.uniform(1, 30, (n, 2)), rng.uniform(-np.pi, np.pi, n)
    ]


def test_rotated_area_and_iou_agree_with_shapely():
    obb = _random_obb(30)
    c = obb_to_corners(obb)
    assert np.allclose(polygon_area(c), obb[:, 2] * obb[:, 3])
    assert np.allclose(polygon_area(c), [shapely.Polygon(p).area for p in c])
    iou = box_iou(c[:15], c[15:])
    for i in range(15):
        for j in range(15):
            a, b = shapely.Polygon(c[i]), shapely.Polygon(c[15 + j])
            ref = a.intersection(b).area / a.union(b).area
            assert iou[i, j] == pytest.approx(ref, abs=1e-9)
    assert np.allclose(np.diag(box_iou(c, c)), 1.0)
    back = corners_to_obb(c)
    assert np.allclose(obb_to_corners(back), c)


def test_horizontal_and_rotated_share_one_format():
    hb = BoxSet(hbb_to_corners(np.array([[10, 20, 30, 60]])), ["car"])
    rb = BoxSet(obb_to_corners(np.array([[20, 40, 20, 40, 0.0]])), ["car"])
    assert np.allclose(hb.normalized(100, 200), rb.normalized(100, 200))
    assert hb.normalized(100, 200).shape == (1, 8)


def test_box_tokens_null_padding_and_many_boxes():
    enc = BoxTokenEncoder(text_dim=16, out_dim=24, hidden_dim=32)
    with torch.no_grad():
        enc.null_position.normal_()
        enc.null_text.normal_()
    sets = [BoxSet(obb_to_corners(_random_obb(70)), ["car"] * 70), BoxSet(np.zeros((0, 4, 2)), [])]
    corners, names, mask = pack_boxes(sets, 100, 100)
    assert (
        corners.shape == (2, 70, 8) and mask.sum() == 70 and names[1] == [""] * 70
    )  # no cap at 15
    cls = torch.randn(2, 70, 16)
    tok = enc(corners, cls, mask)
    assert tok.shape == (2, 70, 24)
    # a null slot does not depend on what is under it: padding and dropped boxes are one token
    assert torch.allclose(tok[1], tok[1, :1].expand(70, -1))
    dropped = enc(corners, cls, drop_boxes(mask, torch.tensor([True, False])))
    assert torch.allclose(dropped[0], tok[1])
    assert not torch.allclose(tok[0, 0], tok[0, 1])
    assert fourier_embed(corners, 8).shape == (2, 70, 8 * 16)


def grounded_components() -> dict:
    from controls.boxes import GroundedUNet2DConditionModel

    c = get_dummy_components(control=False, metadata=True)
    c["unet"] = GroundedUNet2DConditionModel.from_unet(c["unet"])
    torch.manual_seed(1)
    c["box_encoder"] = BoxTokenEncoder(text_dim=16, out_dim=16, hidden_dim=32)
    for m in c["unet"].modules():  # open the gates so the boxes act (they start closed, at 0)
        if hasattr(m, "alpha_attn"):
            m.alpha_attn.data.fill_(1.0)
            m.alpha_dense.data.fill_(1.0)
    return c


@pytest.fixture(scope="module")
def box_pipe():
    from earthgen.pipelines.image import EarthImagePipeline

    p = EarthImagePipeline(**grounded_components())
    p.set_progress_bar_config(disable=True)
    return p


BOXES = BoxSet(
    np.concatenate(
        [
            hbb_to_corners(np.array([[4, 4, 30, 20]])),
            obb_to_corners(np.array([[40, 40, 20, 8, 0.7]])),
        ]
    ),
    ["car", "storage_tank"],
)


def _run(pipe, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(
        "a town", gsd=0.5, generator=torch.Generator().manual_seed(0), output_type="np", **kw
    ).images


def test_grounded_unet_starts_as_the_plain_unet():
    from controls.boxes import GroundedUNet2DConditionModel

    c = get_dummy_components(control=False, metadata=False)
    g = GroundedUNet2DConditionModel.from_unet(c["unet"])
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 16)
    objs = torch.randn(1, 3, 16)
    with torch.no_grad():
        a = c["unet"](x, t, e).sample
        b = g(x, t, e, cross_attention_kwargs={"gligen": {"objs": objs}}).sample
    assert torch.allclose(a, b, atol=1e-5)  # gates at 0: no effect until trained


def test_boxes_change_the_image_and_are_deterministic(box_pipe):
    a = _run(box_pipe, boxes=BOXES)
    assert a.shape == (1, 64, 64, 3)
    assert np.allclose(a, _run(box_pipe, boxes=BOXES))
    assert np.abs(a - _run(box_pipe)).max() > 1e-3
    moved = BoxSet(BOXES.corners + 10, BOXES.labels)
    assert np.abs(a - _run(box_pipe, boxes=moved)).max() > 1e-3
    # one set per image, and the tiled path with boxes
    assert _run(
        box_pipe, boxes=[BOXES, moved], num_images_per_prompt=2, num_inference_steps=1
    ).shape == (2, 64, 64, 3)
    tiled = _run(
        box_pipe,
        boxes=BOXES,
        height=80,
        width=64,
        tile_size=8,
        tile_overlap=6,
        num_inference_steps=1,
    )
    assert tiled.shape == (1, 80, 64, 3)


def test_cfg_unconditional_branch_has_no_boxes(box_pipe):
    sets = box_pipe.prepare_boxes(BOXES, 1, 1)
    other = box_pipe.prepare_boxes(BoxSet(BOXES.corners[:1] + 7, ["car"]), 1, 1)
    with torch.no_grad():
        u1 = box_pipe._grounding(sets, True, 0, 0, 64, 64)[:1]
        u2 = box_pipe._grounding(other, True, 0, 0, 64, 64)[:1]
        c1 = box_pipe._grounding(sets, True, 0, 0, 64, 64)[1:]
    assert torch.allclose(u1[:, :1], u2[:, :1]) and torch.allclose(u1[:, 0], u1[:, 1])
    assert not torch.allclose(u1, c1)


def test_save_load_round_trip_with_boxes(tmp_path, box_pipe):
    from earthgen.pipelines.image import EarthImagePipeline, load_pipeline

    box_pipe.save_pretrained(tmp_path / "p")
    p2 = load_pipeline(str(tmp_path / "p"))
    p2.set_progress_bar_config(disable=True)
    assert type(p2.unet).__name__ == "GroundedUNet2DConditionModel" and p2.box_encoder is not None
    assert np.allclose(_run(box_pipe, boxes=BOXES), _run(p2, boxes=BOXES), atol=1e-6)
    plain = EarthImagePipeline(**get_dummy_components(control=False))
    plain.set_progress_bar_config(disable=True)
    with pytest.raises(UserInputError, match="no box conditioning"):
        _run(plain, boxes=BOXES)


@pytest.mark.parametrize(
    "boxes, msg",
    [
        ("car", "BoxSet"),
        ([BOXES, BOXES, BOXES], "3 box sets for 1"),
        (BoxSet(np.full((1, 4, 2), np.nan), ["car"]), "finite"),
    ],
)
def test_bad_boxes(box_pipe, boxes, msg):
    with pytest.raises(UserInputError, match=msg):
        _run(box_pipe, boxes=boxes)


# --- the dense box map (BoxTokenEncoder(raster_dim=k) + UNet input channels) ----------------------


def test_box_coverage_agrees_with_shapely():
    from earthgen.conditioning.boxes import box_coverage

    c = obb_to_corners(_random_obb(12, seed=3)) / 100.0  # normalised, some boxes cross the border
    cover = box_coverage(torch.from_numpy(c.reshape(1, 12, 8)).float(), 16, 16, supersample=8)[
        0
    ]  # [12, 16, 16]
    unit = shapely.box(0, 0, 1, 1)
    for k in range(12):
        poly = shapely.Polygon(c[k])
        # total covered area (in cells) = area of the box inside the image
        assert float(cover[k].sum()) / 256 == pytest.approx(poly.intersection(unit).area, abs=0.004)
        for i, j in [(4, 4), (8, 3), (12, 12)]:  # single cells against exact intersections
            cell = shapely.box(j / 16, i / 16, (j + 1) / 16, (i + 1) / 16)
            assert float(cover[k, i, j]) == pytest.approx(
                poly.intersection(cell).area * 256, abs=0.13
            )
    # winding does not matter; a degenerate box covers nothing
    rev = torch.from_numpy(c[:, ::-1].copy().reshape(1, 12, 8)).float()
    assert torch.allclose(box_coverage(rev, 16, 16, supersample=8)[0], cover)
    assert box_coverage(torch.full((1, 1, 8), 0.5), 8, 8).sum() == 0


def test_box_raster_channels_and_null():
    enc = BoxTokenEncoder(text_dim=16, out_dim=24, hidden_dim=32, raster_dim=3)
    assert (
        enc.raster_channels == 4 and BoxTokenEncoder(text_dim=16, out_dim=24).raster_channels == 0
    )
    corners, _, mask = pack_boxes([BOXES], 64, 64)
    cls = torch.randn(1, 2, 16)
    tokens, r = enc(corners, cls, mask, raster_size=(8, 8))
    assert tokens.shape == (1, 2, 24) and r.shape == (1, 4, 8, 8)
    assert torch.allclose(tokens, enc(corners, cls, mask))
    from earthgen.conditioning.boxes import box_coverage

    cover = box_coverage(corners, 8, 8)[0]  # [2, 8, 8]
    assert torch.allclose(r[0, 0], cover.sum(0))
    proj = enc.raster_proj(enc.text_norm(cls))[0]  # [2, 3]
    assert torch.allclose(r[0, 1:], torch.einsum("nhw,nc->chw", cover, proj), atol=1e-6)
    assert (
        enc.raster(corners, cls, torch.zeros_like(mask), 8, 8).abs().max() == 0
    )  # null boxes paint nothing


def test_grounded_unet_with_box_map_channels_starts_as_the_plain_unet():
    from controls.boxes import GroundedUNet2DConditionModel

    c = get_dummy_components(control=False, metadata=False)
    g = GroundedUNet2DConditionModel.from_unet(c["unet"], raster_channels=3)
    assert g.config.in_channels == 7 and g.config.out_channels == 4 and g.raster_channels == 3
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 16)
    with torch.no_grad():
        a = c["unet"](x, t, e).sample
        b = g(
            torch.cat([x, torch.randn(1, 3, 8, 8)], 1),
            t,
            e,
            cross_attention_kwargs={"gligen": {"objs": torch.randn(1, 2, 16)}},
        ).sample
    assert torch.allclose(a, b, atol=1e-5)  # new input channels start at zero
    with pytest.raises(ValueError, match="raster_channels"):
        GroundedUNet2DConditionModel.from_unet(c["unet"], raster_channels=-1)


def test_pipeline_with_box_map(tmp_path):
    from earthgen.pipelines.image import EarthImagePipeline, load_pipeline
    from earthgen.training.image import add_box_conditioning

    c = add_box_conditioning(
        get_dummy_components(control=False, metadata=True), hidden_dim=32, raster_dim=2
    )
    assert c["unet"].raster_channels == 3 and c["box_encoder"].raster_channels == 3
    torch.manual_seed(2)
    with torch.no_grad():  # as if trained: the map reaches the output
        c["unet"].conv_in.weight[:, 4:].normal_(0, 0.5)
    pipe = EarthImagePipeline(**c)
    pipe.set_progress_bar_config(disable=True)
    a = _run(pipe, boxes=BOXES)
    assert a.shape == (1, 64, 64, 3) and np.allclose(a, _run(pipe, boxes=BOXES))
    moved = BoxSet(BOXES.corners + 12, BOXES.labels)
    assert np.abs(a - _run(pipe, boxes=moved)).max() > 1e-3
    # the unconditional half of CFG and a call without boxes get an empty map
    r = pipe.box_raster(pipe.prepare_boxes(BOXES, 1, 1), True, 1, 64, 64)
    assert r.shape == (2, 3, 8, 8) and r[0].abs().max() == 0 and r[1, 0].max() > 0.99
    assert pipe.box_raster(None, False, 2, 64, 64).abs().max() == 0 and _run(pipe).shape == (
        1,
        64,
        64,
        3,
    )
    tiled = _run(
        pipe, boxes=BOXES, height=80, width=64, tile_size=8, tile_overlap=6, num_inference_steps=1
    )
    assert tiled.shape == (1, 80, 64, 3)
    # a separate metadata guidance (three branches: tokens and map of the null boxes in the first
    # two) equal to the guidance scale gives the two-branch images, untiled and tiled
    for kw in (
        {},
        {"height": 80, "width": 64, "tile_size": 8, "tile_overlap": 6, "num_inference_steps": 1},
    ):
        two = _run(pipe, boxes=BOXES, guidance_scale=3.0, **kw)
        np.testing.assert_allclose(
            _run(pipe, boxes=BOXES, guidance_scale=3.0, metadata_guidance_scale=3.0, **kw),
            two,
            atol=1e-5,
        )
    pipe.save_pretrained(tmp_path / "p")
    p2 = load_pipeline(str(tmp_path / "p"))
    p2.set_progress_bar_config(disable=True)
    assert p2.unet.raster_channels == 3 and np.allclose(_run(p2, boxes=BOXES), a, atol=1e-6)


def test_box_map_channel_check():
    from types import SimpleNamespace

    from earthgen.conditioning.boxes import check_box_map

    unet = SimpleNamespace(raster_channels=4)
    check_box_map(unet, BoxTokenEncoder(text_dim=16, out_dim=16, raster_dim=3))
    check_box_map(SimpleNamespace(), None)  # a UNet without a box map needs no encoder
    for enc in (None, BoxTokenEncoder(text_dim=16, out_dim=16, raster_dim=2)):
        with pytest.raises(UserInputError, match="4-channel box map"):
            check_box_map(unet, enc)
