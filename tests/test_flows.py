"""Flow matching (flows/): the path and its time convention, time samplers, the loss, the ODE
solvers on closed-form velocity fields (exact answers, error orders), callbacks, guidance, and a
tiny model trained end to end."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from earthgen.errors import UserInputError
from flows import (
    STOP,
    AffinePath,
    CosineScheduler,
    FlowMatchingLoss,
    LinearPath,
    LinearScheduler,
    ODESolver,
    cfg_velocity,
    inpaint_callback,
    logit_normal_time,
    make_time_grid,
    shift_time,
)

PATHS = [LinearPath(), AffinePath(LinearScheduler()), AffinePath(CosineScheduler())]
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_import_is_lazy_and_silent():
    code = "import sys, flows; assert 'torch' not in sys.modules; assert 'ODESolver' in dir(flows)"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    import flows

    with pytest.raises(AttributeError):
        flows.NoSuchThing  # noqa: B018


# --------------------------------------------------------------------------- path


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_path_endpoints_velocity_and_interpolate(path):
    g = gen(1)
    x0, x1 = (
        torch.randn(5, 3, 2, generator=g, dtype=torch.float64),
        torch.randn(5, 3, 2, generator=g, dtype=torch.float64),
    )
    exact = not isinstance(path.scheduler, CosineScheduler)
    tol = {"atol": 0.0, "rtol": 0.0} if exact else {"atol": 1e-12, "rtol": 0.0}
    torch.testing.assert_close(path.sample(x0, x1, 0.0).x_t, x0, **tol)  # t = 0: noise
    torch.testing.assert_close(path.sample(x0, x1, 1.0).x_t, x1, **tol)  # t = 1: data
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    s = path.sample(x0, x1, t)
    assert s.x_t.shape == x0.shape and s.dx_t.shape == x0.shape and s.t.shape == (5,)
    h = 1e-6  # central finite difference of x_t in t (one-sided at the ends)
    lo, hi = (t - h).clamp(0, 1), (t + h).clamp(0, 1)
    fd = (path.sample(x0, x1, hi).x_t - path.sample(x0, x1, lo).x_t) / (hi - lo)[:, None, None]
    torch.testing.assert_close(s.dx_t, fd, atol=1e-5, rtol=0)
    assert torch.equal(path.interpolate(x0, x1, t), s.x_t)  # x_t alone
    for tn in (0.0, 0.3, 1.0):  # a number, as solver callbacks get: float64 coefficients
        assert torch.equal(path.interpolate(x0, x1, tn), path.sample(x0, x1, tn).x_t)


def test_linear_path_is_the_documented_convention():
    g = gen(2)
    x0, x1 = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    t = torch.rand(4, generator=g)
    s = LinearPath().sample(x0, x1, t)
    torch.testing.assert_close(s.x_t, (1 - t[:, None]) * x0 + t[:, None] * x1)
    assert torch.equal(s.dx_t, x1 - x0)
    generic = AffinePath(LinearScheduler()).sample(x0, x1, t)
    torch.testing.assert_close(generic.x_t, s.x_t)
    torch.testing.assert_close(generic.dx_t, s.dx_t)
    with pytest.raises(UserInputError):
        LinearPath().sample(x0, x1, torch.rand(3))  # t must be [B]
    with pytest.raises(UserInputError):
        LinearPath().sample(x0, x1[:, :3], t)


# --------------------------------------------------------------------------- time samplers


def test_logit_normal_time():
    t = logit_normal_time(20_001, generator=gen(0))
    assert bool(((t > 0) & (t < 1)).all())
    assert abs(float(t.median()) - 0.5) < 0.02
    assert torch.equal(t, logit_normal_time(20_001, generator=gen(0)))
    shifted = logit_normal_time(20_001, mean=1.0, generator=gen(0))  # towards data
    assert abs(float(shifted.median()) - 1 / (1 + math.exp(-1))) < 0.02
    wide = logit_normal_time(1000, std=50.0, generator=gen(3))  # sigmoid saturates: still inside
    assert bool(((wide > 0) & (wide < 1)).all())
    for bad in (
        lambda: logit_normal_time(4, std=0.0),
        lambda: logit_normal_time(-1),
        lambda: logit_normal_time(4, eps=0.5),
    ):
        with pytest.raises(UserInputError):
            bad()


# --------------------------------------------------------------------------- loss


def test_loss_reductions_mask_and_weights():
    g = gen(5)
    pred, target = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    for reduction in ("sample", "element"):
        loss = FlowMatchingLoss(reduction)
        assert float(loss(target, target)) == 0.0
        torch.testing.assert_close(loss(pred, target), F.mse_loss(pred, target))
    mask = torch.zeros(3, 6, dtype=torch.bool)
    n_valid = [6, 2, 4]
    for b, n in enumerate(n_valid):
        mask[b, :n] = True
    padded = pred.clone().requires_grad_(False)
    padded[~mask] = float("nan")  # garbage in the padding must not leak
    padded.requires_grad_(True)
    per_sample = torch.stack(
        [F.mse_loss(pred[b, :n], target[b, :n]) for b, n in enumerate(n_valid)]
    )
    torch.testing.assert_close(FlowMatchingLoss("sample")(padded, target, mask), per_sample.mean())
    flat = F.mse_loss(
        torch.cat([pred[b, :n] for b, n in enumerate(n_valid)]),
        torch.cat([target[b, :n] for b, n in enumerate(n_valid)]),
    )
    torch.testing.assert_close(FlowMatchingLoss("element")(padded, target, mask), flat)
    FlowMatchingLoss()(padded, target, mask).backward()
    assert bool(torch.isfinite(padded.grad).all()) and bool((padded.grad[~mask] == 0).all())
    w = torch.tensor([1.0, 0.0, 2.0])
    torch.testing.assert_close(
        FlowMatchingLoss()(pred, target, mask, weight=w), (w * per_sample).mean()
    )
    assert (
        FlowMatchingLoss()(pred, target, torch.zeros(3, 6, dtype=torch.bool)) == 0
    )  # nothing valid
    for bad in (
        lambda: FlowMatchingLoss()(pred, target[:, :5]),
        lambda: FlowMatchingLoss()(pred, target, mask.float()),
        lambda: FlowMatchingLoss()(pred, target, mask[:, :5]),
        lambda: FlowMatchingLoss()(pred, target, weight=w[:2]),
        lambda: FlowMatchingLoss("sum"),
    ):
        with pytest.raises(UserInputError):
            bad()


# --------------------------------------------------------------------------- solvers


def _error(method: str, field, x0: torch.Tensor, exact: torch.Tensor, steps: int) -> float:
    return float((ODESolver(method).sample(field, x0, steps) - exact).abs().max())


@pytest.mark.parametrize("method", list(ORDERS))
def test_solver_error_orders_on_closed_form_fields(method):
    x0 = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64)
    a = 1.5
    cases = [
        (lambda x, t: a * x, x0 * math.exp(a)),  # dx/dt = a x
        (lambda x, t: torch.cos(t)[:, None].expand_as(x), x0 + math.sin(1.0)),
    ]  # dx/dt = cos t
    for field, exact in cases:
        errs = [_error(method, field, x0, exact, n) for n in (16, 32, 64)]
        ratio = 2 ** ORDERS[method]  # error shrinks by 2^order when the steps double
        for coarse, fine in zip(errs, errs[1:], strict=False):
            assert 0.85 * ratio < coarse / fine < 1.15 * ratio, (method, errs)
        assert errs[-1] < {1: 0.2, 2: 2e-3, 4: 1e-7}[ORDERS[method]]  # at 64 steps


@pytest.mark.parametrize("method", list(ORDERS))
def test_solvers_transport_gaussian_to_gaussian(method):
    g = gen(6)
    x0 = torch.randn(20_000, 2, generator=g, dtype=torch.float64)  # N(0, I)
    mu, s = (
        torch.tensor([2.0, -1.0], dtype=torch.float64),
        torch.tensor([0.5, 2.0], dtype=torch.float64),
    )

    # the coupling x1 = mu + s x0 moves every sample on a straight line
    # x_t = ((1-t) + t s) x0 + t mu; its velocity is v = mu + (s - 1) / ((1-t) + t s) * (x - t mu)
    # and one step of any method is exact
    def straight(x, t):
        t = t[:, None]
        return mu + (s - 1) / ((1 - t) + t * s) * (x - t * mu)

    torch.testing.assert_close(
        ODESolver(method).sample(straight, x0, 1), mu + s * x0, atol=1e-12, rtol=0
    )

    # the marginal field flow matching learns for independent x0 ~ N(0, 1), x1 ~ N(mu, s^2) on the
    # linear path: x_t ~ N(t mu, sig_t^2), sig_t^2 = (1-t)^2 + t^2 s^2, and
    # v = E[x1 - x0 | x_t = x] = mu + (t s^2 - (1 - t)) / sig_t^2 * (x - t mu); curved but affine
    # in x, its flow maps x0 to mu + s x0
    def marginal(x, t):
        t = t[:, None]
        return mu + (t * s**2 - (1 - t)) / ((1 - t) ** 2 + (t * s) ** 2) * (x - t * mu)

    x1 = ODESolver(method).sample(marginal, x0, 40)
    assert float((x1 - (mu + s * x0)).abs().max()) < {1: 0.4, 2: 5e-3, 4: 2e-7}[ORDERS[method]]
    tol = 0.15 if method == "euler" else 0.05  # N(mu, s^2) up to sampling and solver error
    torch.testing.assert_close(x1.mean(0), mu, atol=tol, rtol=0)
    torch.testing.assert_close(x1.std(0), s, atol=tol, rtol=0)

    # and it is the regression target's conditional mean: Monte Carlo check at one time
    t = torch.full((20_000,), 0.3, dtype=torch.float64)
    xs1 = mu + s * torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    p = LinearPath().sample(x0, xs1, t)
    slope = ((p.dx_t - p.dx_t.mean(0)) * (p.x_t - p.x_t.mean(0))).mean(0) / p.x_t.var(0)
    torch.testing.assert_close(slope, (0.3 * s**2 - 0.7) / (0.49 + 0.09 * s**2), atol=0.03, rtol=0)


def test_time_grid_and_shift():
    torch.testing.assert_close(make_time_grid(4), torch.linspace(0, 1, 5, dtype=torch.float64))
    grid = make_time_grid(10, shift=3.0)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and bool((grid[1:] > grid[:-1]).all())
    assert grid[1] - grid[0] < grid[-1] - grid[-2]  # more steps near noise
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    sigma = 1 - u  # SD3's noise level; its shift is sigma' = shift sigma / (1 + (shift - 1) sigma)
    torch.testing.assert_close(1 - grid, 3.0 * sigma / (1 + 2.0 * sigma))
    torch.testing.assert_close(shift_time(shift_time(u, 3.0), 1 / 3.0), u)
    torch.testing.assert_close(
        make_time_grid(6, t0=float(grid[4]), shift=3.0), grid[4:]
    )  # part-way start


def test_solver_time_grid_trajectory_and_grad():
    x0 = torch.randn(3, 2, generator=gen(7))
    solver = ODESolver("heun")
    field = lambda x, t: -x * t[:, None]  # noqa: E731
    grid = make_time_grid(8, shift=2.0)
    x_shift = solver.sample(field, x0, 8, shift=2.0)
    torch.testing.assert_close(solver.sample(field, x0, time_grid=grid), x_shift)
    x, traj = solver.sample(field, x0, 8, shift=2.0, return_trajectory=True)
    assert traj.shape == (9, 3, 2) and torch.equal(traj[0], x0) and torch.equal(traj[-1], x)
    w = torch.tensor(2.0, requires_grad=True)
    assert not solver.sample(lambda x, t: w * x, x0, 2).requires_grad  # no graph by default
    solver.sample(lambda x, t: w * x, x0, 2, enable_grad=True).sum().backward()
    assert w.grad is not None


def test_callbacks():
    x0 = torch.zeros(2, 3)
    seen = []

    def record(step, t, x):
        seen.append((step, t))

    ODESolver("midpoint").sample(lambda x, t: torch.ones_like(x), x0, 5, t0=0.2, callback=record)
    assert [s for s, _ in seen] == list(range(5))
    ts = [t for _, t in seen]
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False)) and ts[-1] == 1.0
    torch.testing.assert_close(torch.tensor(ts), make_time_grid(5, t0=0.2)[1:].float())

    # a returned tensor replaces the state (e.g. re-imposing known pixels when inpainting)
    out = ODESolver("euler").sample(
        lambda x, t: torch.zeros_like(x), x0, 4, callback=lambda i, t, x: x + 1
    )
    assert torch.equal(out, x0 + 4)

    # STOP ends integration after that step
    calls = []

    def stop_at_2(step, t, x):
        calls.append(step)
        return STOP if step == 2 else None

    x, traj = ODESolver("euler").sample(
        lambda x, t: torch.ones_like(x), x0, 10, callback=stop_at_2, return_trajectory=True
    )
    assert calls == [0, 1, 2] and traj.shape[0] == 4
    torch.testing.assert_close(x, x0 + 0.3)
    with pytest.raises(UserInputError):
        ODESolver().sample(lambda x, t: x, x0, 2, callback=lambda i, t, x: x[:1])
    with pytest.raises(UserInputError):
        ODESolver().sample(lambda x, t: x, x0, 2, callback=lambda i, t, x: 1.0)


def _pinned_states(path, x0, known, mask, steps=6):
    """Run the solver with inpaint_callback(path) and record ``(t, x)`` after every step."""
    seen = []
    record = lambda i, t, x: seen.append((t, x.clone()))  # noqa: E731
    field = lambda x, t: torch.sin(3 * x) + t.reshape(-1, *[1] * (x.ndim - 1))  # noqa: E731
    cb = inpaint_callback(x0, known, mask, record, **({} if path is None else {"path": path}))
    out = ODESolver("heun").sample(field, x0, steps, shift=2.0, callback=cb)
    return out, seen


def test_inpaint_callback_default_is_the_linear_path():
    g = gen(11)
    x0, known = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    mask = torch.tensor([True, False, True, False, False])
    out, seen = _pinned_states(None, x0, known, mask)
    for t, x in seen:  # the former hard-coded formula, bit for bit
        assert torch.equal(x[mask], ((1 - t) * x0 + t * known)[mask])
    assert torch.equal(out[mask], known[mask]) and not torch.equal(out[~mask], known[~mask])
    out_lin, _ = _pinned_states(LinearPath(), x0, known, mask)
    assert torch.equal(out_lin, out)
    assert inpaint_callback(x0, None, None, user=None) is None


def test_inpaint_callback_follows_the_path_it_is_given():
    g = gen(12)
    x0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    known = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, False], [True, True]])  # [B, N] of [B, N, C]
    path = AffinePath(CosineScheduler())
    out, seen = _pinned_states(path, x0, known, mask)
    m = mask[..., None].expand_as(x0)
    for t, x in seen:  # exactly the cosine path's x_t = cos(pi t/2) x0 + sin(pi t/2) known
        assert torch.equal(x[m], path.sample(x0, known, t).x_t[m])
        linear = ((1 - t) * x0 + t * known)[m]
        assert t == 1.0 or not torch.allclose(x[m], linear)
    assert torch.equal(out[m], known[m])  # t = 1: the known values exactly


def test_progress_bar_is_off_by_default(capsys):
    ODESolver().sample(lambda x, t: x, torch.zeros(1, 2), 3)
    assert capsys.readouterr().err == ""
    ODESolver().sample(lambda x, t: x, torch.zeros(1, 2), 3, progress=True)
    assert "sampling" in capsys.readouterr().err


def test_solver_rejects_bad_arguments():
    v, x = (lambda x, t: x), torch.zeros(2, 3)
    bad = [
        lambda: ODESolver("dopri5"),
        lambda: ODESolver().sample(v, x, 0),
        lambda: ODESolver().sample(v, x, -2),
        lambda: ODESolver().sample(v, x, 2.5),
        lambda: ODESolver().sample(v, x),
        lambda: ODESolver().sample(v, x, 4, t0=0.5, t1=0.5),
        lambda: ODESolver().sample(v, x, 4, t0=0.8, t1=0.2),
        lambda: ODESolver().sample(v, x, 4, t1=1.5),
        lambda: ODESolver().sample(v, x, 4, shift=0.0),
        lambda: ODESolver().sample(v, x, 4, time_grid=[0.0, 1.0]),
        lambda: ODESolver().sample(v, x, time_grid=[0.0, 0.5, 0.4, 1.0]),
        lambda: ODESolver().sample(lambda x, t: x[:, :2], x, 4),
    ]
    for b in bad:
        with pytest.raises(UserInputError):
            b()


# --------------------------------------------------------------------------- guidance


class CountingModel:
    """v = 0.5 x + t + cond["emb"] * scale_leaf; records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        return 0.5 * x + t[:, None] + cond["emb"] * cond["gain"]


def test_cfg_velocity():
    g = gen(8)
    x, t = torch.randn(4, 3, generator=g), torch.rand(4, generator=g)
    cond = {"emb": torch.randn(4, 3, generator=g), "gain": 2.0}
    uncond = {"emb": torch.zeros(1, 3), "gain": 2.0}  # batch 1: expanded
    ref = CountingModel()
    v_c, v_u = ref(x, t, cond), ref(x, t, {"emb": torch.zeros(4, 3), "gain": 2.0})
    m = CountingModel()
    torch.testing.assert_close(cfg_velocity(m, x, t, cond, uncond, 3.0), v_u + 3.0 * (v_c - v_u))
    assert m.batches == [8]  # one batched call
    m = CountingModel()
    torch.testing.assert_close(cfg_velocity(m, x, t, cond, uncond, 1.0), v_c)
    torch.testing.assert_close(cfg_velocity(m, x, t, cond, uncond, 0.0), v_u)
    assert m.batches == [4, 4]
    s = torch.tensor([0.0, 1.0, 2.0, 5.0])  # per sample
    torch.testing.assert_close(
        cfg_velocity(m, x, t, cond, uncond, s), v_u + s[:, None] * (v_c - v_u)
    )
    m = CountingModel()
    torch.testing.assert_close(
        cfg_velocity(m, x, 0.5, cond, uncond, 3.0, batched=False),
        cfg_velocity(CountingModel(), x, 0.5, cond, uncond, 3.0),
    )
    assert m.batches == [4, 4]
    with pytest.raises(UserInputError):  # non-tensor leaves must agree
        cfg_velocity(CountingModel(), x, t, cond, {"emb": torch.zeros(1, 3), "gain": 1.0}, 3.0)
    with pytest.raises(UserInputError):  # wrong batch
        cfg_velocity(CountingModel(), x, t, cond, {"emb": torch.zeros(2, 3), "gain": 2.0}, 3.0)


# --------------------------------------------------------------------------- end to end


def test_train_and_sample_two_gaussians():
    torch.manual_seed(0)
    g = gen(10)

    def data(n):  # 1-D mixture: modes at -2 and +2, std 0.5; mean 0, std sqrt(4.25)
        sign = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
        return 2.0 * sign + 0.5 * torch.randn(n, 1, generator=g)

    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 64),
        torch.nn.SiLU(),
        torch.nn.Linear(64, 1),
    )
    model = lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1))  # noqa: E731
    path, loss_fn = LinearPath(), FlowMatchingLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        x1 = data(256)
        x0 = torch.randn(x1.shape, generator=g)
        s = path.sample(x0, x1, logit_normal_time(256, generator=g))
        loss = loss_fn(model(s.x_t, s.t), s.dx_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20
    x = ODESolver("heun").sample(model, torch.randn(4000, 1, generator=g), 20)
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - math.sqrt(4.25)) < 0.25
    assert float((x.abs() > 1).float().mean()) > 0.85  # two modes, little mass between them
