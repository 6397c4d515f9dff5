"""Shared condition encoders: metadata, text, dense maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_clip_checkpoint

from earthgen.classes import CLASS_ID, NUM_CLASSES
from earthgen.conditioning import MetadataEncoder, sinusoidal_embedding
from earthgen.conditioning.dense import (
    class_boundaries,
    normalise_height,
    one_hot,
    road_map,
    sobel_edges,
)
from earthgen.errors import UserInputError


def test_sinusoidal_embedding_distinguishes_values():
    e = sinusoidal_embedding(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]), 64)
    assert e.shape == (5, 64)
    d = torch.cdist(e, e)
    assert (d + torch.eye(5) * 1e9).min() > 1.0  # distinct inputs map far apart


def test_metadata_missing_fields_use_the_null_and_any_subset_runs():
    torch.manual_seed(0)
    m = MetadataEncoder(out_dim=32)
    with torch.no_grad():
        m.null.normal_()
    full = m(
        {
            "gsd": [0.5, 2.0],
            "lat": [45.0, -10.0],
            "lon": [7.0, 120.0],
            "day_of_year": [10, 200],
            "year": [2020, 2021],
            "cloud_cover": [0.0, 0.5],
        }
    )
    assert full.shape == (2, 32)
    none = m(None, batch_size=2)
    torch.testing.assert_close(none, m.null.sum(0).expand(2, -1))
    # NaN for one sample = that sample's field is the null
    part = m({"gsd": [0.5, float("nan")]})
    only_first = m({"gsd": [0.5, 0.5]})
    torch.testing.assert_close(part[0], only_first[0])
    torch.testing.assert_close(part[1], none[1])
    # dropping everything for a sample (CFG's unconditional branch) equals passing nothing
    dropped = m({"gsd": [0.5, 2.0], "lat": [45.0, -10.0]}, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], none[0])
    assert not torch.allclose(dropped[1], none[1])
    # the embedding depends on the value
    assert not torch.allclose(m({"gsd": 0.3}), m({"gsd": 3.0}))


def test_metadata_bad_input():
    m = MetadataEncoder(out_dim=16)
    with pytest.raises(UserInputError, match="outside"):
        m({"gsd": -1.0})
    with pytest.raises(UserInputError, match="outside"):
        m({"lat": 95.0})
    with pytest.raises(UserInputError, match="not known"):
        m({"altitude": 3.0})
    with pytest.raises(UserInputError, match="values for a batch"):
        m({"gsd": [0.5, 1.0, 2.0]}, batch_size=2)
    with pytest.raises(UserInputError, match="unknown metadata field"):
        MetadataEncoder(fields=("gsd", "colour"))


def test_metadata_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    m = MetadataEncoder(fields=("gsd", "lat"), out_dim=24, freq_dim=16)
    m.save_pretrained(tmp_path / "meta")
    assert json.loads((tmp_path / "meta" / "config.json").read_text())["fields"] == ["gsd", "lat"]
    m2 = MetadataEncoder.from_pretrained(tmp_path / "meta")
    x = {"gsd": [0.5, 1.0], "lat": [10.0, float("nan")]}
    torch.testing.assert_close(m(x), m2(x))


def test_metadata_learns_to_predict_gsd():
    """The embedding carries the value: a linear probe trained with it regresses log10(gsd)."""
    torch.manual_seed(0)
    m = MetadataEncoder(fields=("gsd",), out_dim=32, freq_dim=32)
    head = torch.nn.Linear(32, 1)
    opt = torch.optim.Adam([*m.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(200):
        g = 10 ** (torch.rand(64) * 2 - 1)
        loss = ((head(m({"gsd": g})).squeeze(-1) - torch.log10(g)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.1 * np.mean(losses[:20])


def test_one_hot_road_map_and_boundaries():
    sem = torch.tensor([[[0, 1, 1], [4, 4, 7], [8, 8, 8]]])
    oh = one_hot(sem)
    assert oh.shape == (1, NUM_CLASSES, 3, 3)
    torch.testing.assert_close(oh.sum(1), torch.ones(1, 3, 3))
    assert torch.equal(oh.argmax(1), sem)
    assert torch.equal(road_map(sem)[0, 0], (sem[0] == CLASS_ID["road_minor"]).float())
    b = class_boundaries(sem)[0, 0]
    assert b[2, 0] == 1 and b[0, 1] == 1  # forest below a road; building beside background
    assert class_boundaries(torch.zeros(1, 4, 4, dtype=torch.long)).sum() == 0
    with pytest.raises(UserInputError):
        one_hot(torch.tensor([[NUM_CLASSES]]))
    with pytest.raises(UserInputError):
        one_hot(torch.zeros(2, 2))


def test_sobel_edges_and_height():
    img = torch.zeros(1, 3, 16, 16)
    assert sobel_edges(img).abs().max() == 0
    img[..., 8:] = 1.0
    e = sobel_edges(img)[0, 0]
    assert e[:, 7:9].min() > 0.9 and e[:, :6].max() == 0
    h = torch.randn(2, 1, 8, 8) * 10
    torch.testing.assert_close(normalise_height(h), normalise_height(h + 1000.0))


@pytest.mark.slow
def test_offline_sentence_encoder_ranks_captions():
    from earthgen.conditioning.text import SentenceTextEncoder

    enc = SentenceTextEncoder()
    a = enc.encode(
        [
            "many buildings and green trees are in a dense residential area",
            "lots of houses with trees around them in a residential area",
            "a large airport with several planes parked near the terminal",
        ]
    )
    assert a.tokens.shape[:2] == (3, 77) and a.tokens.shape[2] == enc.dim == 384
    sim = a.pooled @ a.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    null = enc.null(2)
    assert torch.equal(null.tokens[0], null.tokens[1])
    with pytest.raises(UserInputError):
        enc.encode([1, 2])


def test_clip_text_encoder_loads_diffusers_layout(tmp_path):
    from earthgen.conditioning.text import CLIPTextEncoder, load_text_encoder

    root = tiny_clip_checkpoint(tmp_path / "ckpt")
    enc = load_text_encoder(root)
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 32
    a = enc.encode(["dense city", "forest"])
    b = CLIPTextEncoder.from_pretrained(root).encode(["dense city", "forest"])
    assert a.tokens.shape == (2, 16, 32) and a.pooled.shape == (2, 32)
    torch.testing.assert_close(a.tokens, b.tokens)  # deterministic, same weights after reload
    assert a.mask[0].sum() > a.mask[1].sum()  # the longer prompt has more real tokens
    assert not torch.allclose(a.pooled[0], a.pooled[1])
    with pytest.raises(UserInputError, match="cannot load"):
        CLIPTextEncoder.from_pretrained(tmp_path / "missing")
