"""Training side of flow matching: the time sampler and the velocity-regression loss.

Times follow docs/conventions.md (``t = 0`` noise, ``t = 1`` data).
:func:`logit_normal_time` draws them from a ``torch.Generator`` (reproducible draws):
``t = sigmoid(mean + std * n)``, ``n ~ N(0, 1)`` (SD3's logit-normal), kept in ``[eps, 1 - eps]``
so strictly inside (0, 1). ``mean = 0`` puts the mass around ``t = 0.5``; a positive ``mean``
moves it towards data, a negative one towards noise (SD3 writes time the other way round, so its
``m`` is our ``-mean``).
"""

from __future__ import annotations

import torch

from earthgen_base.errors import UserInputError


def _check(b: int, eps: float) -> None:
    if b < 0:
        raise UserInputError(f"number of times must be >= 0, got {b}")
    if not 0.0 < eps < 0.5:
        raise UserInputError(f"eps must be in (0, 0.5), got {eps}")


def _draw(fn, b: int, generator: torch.Generator | None, device) -> torch.Tensor:
    # draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move
    src = generator.device if generator is not None else (device or "cpu")
    out = fn(b, generator=generator, device=src, dtype=torch.float32)
    return out if device is None else out.to(device)


def logit_normal_time(
    b: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``b`` times ``[b]`` float32: ``sigmoid(mean + std * N(0, 1))`` in ``[eps, 1 - eps]``."""
    _check(b, eps)
    if not std > 0:
        raise UserInputError(f"logit-normal std must be > 0, got {std}")
    z = mean + std * _draw(torch.randn, b, generator, device)
    return torch.sigmoid(z).clamp(eps, 1 - eps)


class FlowMatchingLoss:
    """Mean squared error between predicted and target velocities ``[B, ...]``.

    ``mask`` (bool, the leading dims of ``pred``, e.g. ``[B, N]`` for ``[B, N, C]`` tokens) marks
    the entries that count; masked-out entries are ignored even when they hold NaN. ``weight``
    ``[B]`` scales each sample's error (e.g. a time-dependent weighting).

    Reductions (both equal ``F.mse_loss(pred, target)`` without mask and weights):

    - ``"sample"`` (default): ``mean_b(w_b * mean of sample b's valid squared errors)``; every
      sample counts the same, however many valid tokens it has (one with none contributes 0).
    - ``"element"``: ``sum_b(w_b * sum of b's valid squared errors) / (number of valid entries)``;
      every valid token counts the same.

    Returns a 0-d float32 tensor (errors are squared in float32 whatever ``pred``'s dtype).
    """

    REDUCTIONS = ("sample", "element")

    def __init__(self, reduction: str = "sample"):
        if reduction not in self.REDUCTIONS:
            raise UserInputError(
                f"unknown reduction {reduction!r}; choose one of {', '.join(self.REDUCTIONS)}"
            )
        self.reduction = reduction

    def __repr__(self) -> str:
        return f"FlowMatchingLoss(reduction={self.reduction!r})"

    def __call__(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if pred.shape != target.shape:
            raise UserInputError(
                f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        if pred.ndim < 1:
            raise UserInputError("pred must have a batch dimension: [B, ...]")
        b = pred.shape[0]
        diff = (pred.float() - target.float()).reshape(b, -1)  # [B, D]
        if mask is None:
            count = torch.full((b,), float(diff.shape[1]), device=diff.device)  # [B]
        else:
            if (
                mask.dtype != torch.bool
                or mask.ndim < 1
                or tuple(mask.shape) != tuple(pred.shape[: mask.ndim])
            ):
                raise UserInputError(
                    f"mask must be bool with the leading dims of pred {tuple(pred.shape)}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            m = (
                mask.reshape(*mask.shape, *([1] * (pred.ndim - mask.ndim)))
                .expand(pred.shape)
                .reshape(b, -1)
            )
            diff = torch.where(
                m, diff, torch.zeros((), device=diff.device)
            )  # NaN padding: no value, no grad
            count = m.sum(1).float()  # [B]
        err = diff.square()  # [B, D]
        total = err.sum(1)  # [B]
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32, device=err.device)
            if weight.shape != (b,):
                raise UserInputError(f"weight must be [B] with B = {b}, got {tuple(weight.shape)}")
            total = weight * total
        if self.reduction == "sample":
            return (total / count.clamp_min(1)).mean()
        return total.sum() / count.sum().clamp_min(1)
