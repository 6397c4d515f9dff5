"""Classifier-free guidance (CFG) for velocity models.

``model_fn(x [B', ...], t [B'], cond) -> v [B', ...]``. Conditions are tensors with the batch
first (a batch of 1 is expanded to ``B``, handy for null embeddings) or nested dicts, tuples and
lists of them; any other leaf (a string, a flag) must be equal in every branch and is passed as
is. Both branches go through the model in one call on a ``2 B`` batch (``batched=False`` calls
it once per branch, for memory).

- :func:`cfg_velocity`: ``v = v_u + s (v_c - v_u)``; ``s = 1`` is the conditional model,
  ``s = 0`` the unconditional one. A model whose null condition is a drop flag (the structure
  flow's ``drop_semantic`` / ``drop_image``) passes the flag as a ``[B]`` bool tensor in ``cond``
  (all False) and ``uncond`` (all True).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from earthgen_base.errors import UserInputError

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, t [B], cond) -> v


def _concat(items: list, b: int, where: str = "cond") -> Any:
    """Concatenate the same structure of conditions along the batch (tensors ``[B or 1, ...]``)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        out = []
        for it in items:
            if not isinstance(it, torch.Tensor) or it.ndim < 1 or it.shape[0] not in (1, b):
                got = tuple(it.shape) if isinstance(it, torch.Tensor) else type(it).__name__
                raise UserInputError(
                    f"condition {where} must be a tensor with batch {b} (or 1) first, got {got}"
                )
            out.append(it.expand(b, *it.shape[1:]) if it.shape[0] != b else it)
        return torch.cat(out)
    if isinstance(first, Mapping):
        if any(not isinstance(it, Mapping) or set(it) != set(first) for it in items):
            raise UserInputError(
                f"condition {where}: every branch needs the same keys {sorted(first)}"
            )
        return {k: _concat([it[k] for it in items], b, f"{where}[{k!r}]") for k in first}
    if isinstance(first, (tuple, list)):
        if any(type(it) is not type(first) or len(it) != len(first) for it in items):
            raise UserInputError(
                f"condition {where}: every branch needs a {type(first).__name__} of {len(first)}"
            )
        return type(first)(
            _concat([it[i] for it in items], b, f"{where}[{i}]") for i in range(len(first))
        )
    if any(isinstance(it, torch.Tensor) or it != first for it in items):
        raise UserInputError(
            f"condition {where}: leaves that are not tensors (here {first!r}) must be the same "
            "in every branch; encode them to tensors first"
        )
    return first


def _branches(
    model_fn: ModelFn, x: torch.Tensor, t: float | torch.Tensor, conds: list, batched: bool
) -> list[torch.Tensor]:
    """Velocities ``[B, ...]`` of ``model_fn`` for each condition in ``conds``."""
    if x.ndim < 1:
        raise UserInputError("x must have a batch dimension: [B, ...]")
    b, k = x.shape[0], len(conds)
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(b) if t.ndim == 0 else t
    if t.shape != (b,):
        raise UserInputError(f"t must be a number or [B] with B = {b}, got shape {tuple(t.shape)}")
    if not batched or k == 1:
        return [_check_out(model_fn(x, t, _concat([c], b)), x, 1) for c in conds]
    v = model_fn(torch.cat([x] * k), torch.cat([t] * k), _concat(conds, b))  # [k B, ...]
    return list(_check_out(v, x, k).chunk(k))


def _check_out(v: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    want = (k * x.shape[0], *x.shape[1:])
    if not isinstance(v, torch.Tensor) or v.shape != want:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise UserInputError(f"model_fn returned {got} for a batch of {want[0]}, expected {want}")
    return v


def _scale(s: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    if isinstance(s, torch.Tensor) and s.ndim == 1:  # per sample [B]
        return s.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return s


def cfg_velocity(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: float | torch.Tensor,
    cond: Any,
    uncond: Any,
    scale: float | torch.Tensor,
    *,
    batched: bool = True,
) -> torch.Tensor:
    """Guided velocity ``v_u + scale (v_c - v_u)`` ``[B, ...]`` at ``(x [B, ...], t [B])``.

    ``scale`` is a number or per sample ``[B]``; a number equal to 1 (or 0) calls only the
    conditional (unconditional) branch.
    """
    if not isinstance(scale, torch.Tensor):
        if scale == 1:
            return _branches(model_fn, x, t, [cond], batched)[0]
        if scale == 0:
            return _branches(model_fn, x, t, [uncond], batched)[0]
    v_c, v_u = _branches(model_fn, x, t, [cond, uncond], batched)
    return v_u + _scale(scale, x) * (v_c - v_u)
