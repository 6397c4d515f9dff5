"""Probability paths from noise to data (docs/conventions.md, "Flow-matching time").

``t = 0`` is noise and ``t = 1`` is data. An affine path is ``x_t = sigma_t x_0 + alpha_t x_1``
with ``x_0 ~ N(0, I)``, ``alpha_0 = 0, sigma_0 = 1`` and ``alpha_1 = 1, sigma_1 = 0``; its
velocity (the regression target) is ``dx_t/dt = sigma'_t x_0 + alpha'_t x_1``.

- :class:`LinearPath`: rectified flow / conditional optimal transport, ``alpha_t = t``,
  ``sigma_t = 1 - t``, target ``x_1 - x_0``. The path EarthGen's generators use.
- :class:`AffinePath`: any :class:`Scheduler`; :class:`CosineScheduler` gives
  ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)`` (variance preserving).

``path.sample(x0, x1, t)`` gives ``x_t`` and its velocity (training); ``path.interpolate(x0, x1,
t)`` gives ``x_t`` alone (what :func:`flows.solver.inpaint_callback` pins known entries to).

Times are a number, a 0-d tensor or ``[B]``; they broadcast over ``x`` ``[B, ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from earthgen_base.errors import UserInputError


class Coefficients(NamedTuple):
    """An affine path's coefficients at some times (each shaped like the times given)."""

    alpha: torch.Tensor  # weight of the data x_1
    sigma: torch.Tensor  # weight of the noise x_0
    d_alpha: torch.Tensor  # d alpha / dt
    d_sigma: torch.Tensor  # d sigma / dt


class Scheduler:
    """``t`` -> :class:`Coefficients`; ``alpha_0 = 0, sigma_0 = 1, alpha_1 = 1, sigma_1 = 0``."""

    def __call__(self, t: torch.Tensor) -> Coefficients:
        raise NotImplementedError


class LinearScheduler(Scheduler):
    """``alpha_t = t``, ``sigma_t = 1 - t`` (rectified flow)."""

    def __call__(self, t: torch.Tensor) -> Coefficients:
        one = torch.ones_like(t)
        return Coefficients(t, 1 - t, one, -one)


class CosineScheduler(Scheduler):
    """``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``; ``alpha^2 + sigma^2 = 1``."""

    def __call__(self, t: torch.Tensor) -> Coefficients:
        a = 0.5 * math.pi
        s = torch.sin(a * t)
        c = torch.sin(a * (1 - t))  # = cos(a t), but exactly 0 at t = 1
        return Coefficients(s, c, a * c, -a * s)


def expand_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Times (a number, 0-d or ``[B]``) as ``[B, 1, ..., 1]`` in ``x``'s dtype and device."""
    if x.ndim < 1:
        raise UserInputError("x must have a batch dimension: [B, ...]")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise UserInputError(
            f"t must be a number or [B] with B = {x.shape[0]}, got shape {tuple(t.shape)}"
        )
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class PathSample:
    """A point on the path: ``x_t`` ``[B, ...]``, its velocity ``dx_t`` ``[B, ...]`` (the
    regression target) and the times ``t`` ``[B]``."""

    x_t: torch.Tensor
    dx_t: torch.Tensor
    t: torch.Tensor


class AffinePath:
    """``x_t = sigma_t x_0 + alpha_t x_1`` (a :class:`Scheduler`); ``x_0`` noise, ``x_1`` data."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.scheduler).__name__}())"

    def coefficients(self, t: float | torch.Tensor, x: torch.Tensor) -> Coefficients:
        """Coefficients at ``t`` shaped ``[B, 1, ..., 1]`` to broadcast over ``x`` ``[B, ...]``."""
        return self.scheduler(expand_time(t, x))

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: float | torch.Tensor) -> PathSample:
        """Noise ``x0`` and data ``x1`` ``[B, ...]`` at times ``t`` ``[B]`` -> the sample."""
        if x0.shape != x1.shape:
            raise UserInputError(
                f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        tt = expand_time(t, x0)  # [B, 1, ...]
        c = self.scheduler(tt)
        x_t = c.sigma * x0 + c.alpha * x1
        dx_t = c.d_sigma * x0 + c.d_alpha * x1
        return PathSample(x_t=x_t, dx_t=dx_t, t=tt.reshape(-1))

    def interpolate(
        self, x0: torch.Tensor, x1: torch.Tensor, t: float | torch.Tensor
    ) -> torch.Tensor:
        """``x_t = sigma_t x0 + alpha_t x1`` alone (no velocity), for ``x0`` ``[B, ...]`` and
        ``x1`` broadcastable to it. ``t`` is ``[B]`` (or 0-d), or a number, as solver callbacks
        get: then the coefficients are computed in float64 and applied as Python numbers, so
        ``x_t`` is ``sample(x0, x1, t).x_t`` for float64 states and ``t`` loses nothing to the
        states' precision (the linear path gives ``(1 - t) * x0 + t * x1`` exactly)."""
        if isinstance(t, torch.Tensor):
            c = self.coefficients(t, x0)
            return c.sigma * x0 + c.alpha * x1
        c = self.scheduler(torch.tensor(float(t), dtype=torch.float64))
        return float(c.sigma) * x0 + float(c.alpha) * x1


class LinearPath(AffinePath):
    """Rectified flow: ``x_t = (1 - t) x_0 + t x_1``, velocity ``x_1 - x_0``
    (docs/conventions.md)."""

    def __init__(self) -> None:
        super().__init__(LinearScheduler())

    def __repr__(self) -> str:
        return "LinearPath()"
