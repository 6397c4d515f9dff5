"""Fixed-step ODE solvers for sampling: integrate ``dx/dt = v(x, t)`` from noise (``t = 0``) to
data (``t = 1``), the time convention of docs/conventions.md.

- ``euler``: ``x + h v(x, t)``; 1 velocity call per step, global error order 1.
- ``midpoint``: ``x + h v(x + h/2 v(x, t), t + h/2)``; 2 calls, order 2.
- ``heun``: ``x + h/2 (k1 + k2)`` with ``k1 = v(x, t)``, ``k2 = v(x + h k1, t + h)``; 2 calls,
  order 2.
- ``rk4``: the classic Runge-Kutta method; 4 calls, order 4.

Time grids: ``steps`` uniform intervals of ``[t0, t1]``, optionally warped towards noise by
``shift`` (SD3's timestep shift, see :func:`shift_time`), or any increasing ``time_grid``.

The solver knows no path: it integrates whatever velocity it is given. :func:`inpaint_callback`
asks the path it is given (``path.interpolate``) where known entries lie at each time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from earthgen_base.errors import UserInputError
from flows.path import AffinePath, LinearPath

METHODS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}  # velocity evaluations per step


class _Stop:
    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()
"""Return this from a solver callback to end integration after the current step."""

# (x [B, ...], t [B]) -> v [B, ...]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], "torch.Tensor | _Stop | None"]


def shift_time(t: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    """Warp times towards noise: ``t' = t / (shift - (shift - 1) t)``.

    SD3's shift in its own convention (``s = 1 - t`` the noise level) is
    ``s' = shift s / (1 + (shift - 1) s)``; rewritten with ``t = 1 - s`` it is the formula above.
    ``shift > 1`` spends more steps near noise, ``shift = 1`` is the identity; 0 and 1 are fixed.
    The inverse is ``shift_time(., 1 / shift)``.
    """
    if not shift > 0:
        raise UserInputError(f"time shift must be > 0, got {shift}")
    return t / (shift - (shift - 1) * t)


def make_time_grid(
    steps: int, t0: float = 0.0, t1: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """``steps + 1`` increasing times ``[steps + 1]`` (float64) from ``t0`` to ``t1`` exactly.

    Uniform in the unshifted time: ``t_i = shift_time(u_i, shift)`` with ``u_i`` uniform between
    ``shift_time(t0, 1/shift)`` and ``shift_time(t1, 1/shift)``, so a grid that starts part-way
    (``t0 > 0``, e.g. image-to-image) has the same local spacing as the full one.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise UserInputError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t0 < t1 <= 1.0:
        raise UserInputError(
            f"need 0 <= t0 < t1 <= 1 (t = 0 noise, t = 1 data), got t0={t0}, t1={t1}"
        )
    if not shift > 0:
        raise UserInputError(f"time shift must be > 0, got {shift}")
    u0, u1 = shift_time(float(t0), 1.0 / shift), shift_time(float(t1), 1.0 / shift)
    grid = shift_time(torch.linspace(u0, u1, steps + 1, dtype=torch.float64), shift)
    grid[0], grid[-1] = t0, t1
    return grid


def _check_grid(grid: Sequence[float] | torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64).cpu()
    if g.ndim != 1 or g.numel() < 2:
        raise UserInputError(
            f"time_grid must be 1-D with at least 2 times, got shape {tuple(g.shape)}"
        )
    if not bool(torch.isfinite(g).all()) or not bool((g[1:] > g[:-1]).all()):
        raise UserInputError(
            "time_grid must be finite and strictly increasing (t = 0 noise, t = 1 data)"
        )
    if g[0] < 0 or g[-1] > 1:
        raise UserInputError(f"time_grid must lie in [0, 1], got [{float(g[0])}, {float(g[-1])}]")
    return g


class ODESolver:
    """Integrates a velocity field with a fixed-step method (``euler``, ``midpoint``, ``heun``,
    ``rk4``; see the module docstring). Deterministic: all randomness is in ``x_init``."""

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise UserInputError(
                f"unknown ODE method {method!r}; choose one of {', '.join(METHODS)}"
            )
        self.method = method

    def __repr__(self) -> str:
        return f"ODESolver({self.method!r})"

    @staticmethod
    def _velocity(fn: VelocityFn, x: torch.Tensor, t: float) -> torch.Tensor:
        # t as [B]: float64 for float64 states, else float32 (bf16 would round t near 1)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        v = fn(x, torch.full((x.shape[0],), t, dtype=dtype, device=x.device))
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise UserInputError(
                f"velocity_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}"
            )
        return v

    def step(
        self, velocity_fn: VelocityFn, x: torch.Tensor, t: float, t_next: float
    ) -> torch.Tensor:
        """One step of the method from ``t`` to ``t_next``: ``x`` ``[B, ...]`` -> ``[B, ...]``."""
        f = self._velocity
        h = float(t_next) - float(t)
        if self.method == "euler":
            return x + h * f(velocity_fn, x, t)
        k1 = f(velocity_fn, x, t)
        if self.method == "midpoint":
            return x + h * f(velocity_fn, x + 0.5 * h * k1, t + 0.5 * h)
        if self.method == "heun":
            k2 = f(velocity_fn, x + h * k1, t_next)
            return x + 0.5 * h * (k1 + k2)
        k2 = f(velocity_fn, x + 0.5 * h * k1, t + 0.5 * h)
        k3 = f(velocity_fn, x + 0.5 * h * k2, t + 0.5 * h)
        k4 = f(velocity_fn, x + h * k3, t_next)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    def sample(
        self,
        velocity_fn: VelocityFn,
        x_init: torch.Tensor,
        steps: int | None = None,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        shift: float = 1.0,
        time_grid: Sequence[float] | torch.Tensor | None = None,
        callback: Callback | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
        enable_grad: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrate from ``x_init`` ``[B, ...]`` at ``t0`` (0: noise) to ``t1`` (1: data).

        Args:
            velocity_fn: ``(x [B, ...], t [B]) -> v [B, ...]``.
            steps: number of steps on :func:`make_time_grid` ``(steps, t0, t1, shift)``; or give
                ``time_grid`` (increasing times in [0, 1]) instead, which overrides t0/t1/shift.
            callback: ``callback(step, t, x)`` after each step (``step`` from 0, ``t`` a float,
                the time reached, ``x`` the state there); it may return a replacement state
                (same shape), ``None`` to go on, or :data:`STOP` to end integration there.
            progress: show a tqdm bar (off by default).
            return_trajectory: also return the states ``[n + 1, B, ...]`` (``x_init`` first).
            enable_grad: keep autograd on (off by default: sampling builds no graph).

        Returns the final state ``[B, ...]`` (at ``t1``, or where a callback stopped), and the
        trajectory when asked.
        """
        if time_grid is not None:
            if steps is not None:
                raise UserInputError("give either steps or time_grid, not both")
            grid = _check_grid(time_grid).tolist()
        else:
            if steps is None:
                raise UserInputError("give the number of steps (or a time_grid)")
            grid = make_time_grid(steps, t0, t1, shift).tolist()
        if not isinstance(x_init, torch.Tensor) or x_init.ndim < 1:
            raise UserInputError("x_init must be a tensor with a batch dimension: [B, ...]")
        n = len(grid) - 1
        x = x_init
        states = [x] if return_trajectory else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"sampling ({self.method})", leave=False)
        try:
            with torch.set_grad_enabled(enable_grad):
                for i in range(n):
                    x = self.step(velocity_fn, x, grid[i], grid[i + 1])
                    out = callback(i, grid[i + 1], x) if callback is not None else None
                    if isinstance(out, torch.Tensor):
                        if out.shape != x.shape:
                            raise UserInputError(
                                f"callback returned shape {tuple(out.shape)}, "
                                f"expected {tuple(x.shape)}"
                            )
                        x = out
                    elif out is not None and out is not STOP:
                        raise UserInputError(
                            f"callback must return a tensor, None or STOP, got {type(out).__name__}"
                        )
                    if states is not None:
                        states.append(x)
                    if bar is not None:
                        bar.update(1)
                    if out is STOP:
                        break
        finally:
            if bar is not None:
                bar.close()
        return (x, torch.stack(states)) if states is not None else x


def inpaint_callback(
    x0: torch.Tensor,
    known: torch.Tensor | None,
    known_mask: torch.Tensor | None,
    user: Callback | None = None,
    path: AffinePath | None = None,
) -> Callback | None:
    """Solver callback that pins known entries to the point of ``path`` (default the linear path,
    ``x_t = (1 - t) x0 + t x1``) between their noise ``x0`` and their known value after every
    step, ``path.interpolate(x0, known, t)``: inpainting by replacement. Give the path the model
    was trained on; the solver itself assumes none. ``known_mask`` is bool, broadcastable to
    ``x0`` once trailing singleton dims are added (``[N]`` for ``[N, C]`` states,
    ``[B, 1, X, Y, 1]`` for columns of a grid); ``user`` is called after the replacement and may
    still replace or STOP. With ``known=None`` this is ``user`` itself."""
    if known is None:
        return user
    path = LinearPath() if path is None else path
    m = known_mask.to(device=x0.device, dtype=torch.bool)
    while m.ndim < x0.ndim:
        m = m.unsqueeze(-1)

    def cb(step: int, t: float, x: torch.Tensor):
        x = torch.where(m, path.interpolate(x0, known, t), x)
        if user is not None:
            r = user(step, t, x)
            if r is not None:
                return r
        return x

    return cb
