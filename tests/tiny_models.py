"""Tiny random models built from the real classes (no download), shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_clip(hidden: int = 16, max_length: int = 16):
    """A random CLIP text model and a character-level CLIP BPE tokenizer."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=max_length)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden + 5,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return tok, CLIPTextModel(cfg)


def tiny_clip_checkpoint(root: Path, hidden: int = 32) -> Path:
    """A diffusers-style folder (``tokenizer/`` + ``text_encoder/``) with a tiny random CLIP."""
    tok, model = tiny_clip(hidden)
    tok.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "text_encoder")
    return root
