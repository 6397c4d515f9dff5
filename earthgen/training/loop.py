"""The training loop every task shares (:func:`fit`) and its pieces: the task's loss object
(:class:`TaskLoss`), the EMA, atomic checkpoints with accelerate, resume, the loss log
(``loss.csv`` + ``loss.png``) and atomic model folders.

A task is a loss object and a batch function: ``loss = task_loss(batch, generator)`` computes one
step's loss (noise, timesteps and condition dropout drawn from ``generator``), ``batch, generator
= next_batch(step)`` is a pure function of (seed, step, rank). Everything else -- accumulation,
mixed precision, clipping, the optimizer and EMA steps, logging, checkpoints, resume -- is
:func:`fit`, the same for every task."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from earthgen.errors import UserInputError


class TaskLoss:
    """One training task's loss (DiT's ``training_losses``): ``__call__(batch, generator)`` returns
    the scalar loss of a batch. The modules that learn are attributes named in ``trains`` (in
    checkpoint order); their parameters that require gradients are what the optimizer steps
    (:meth:`param_groups`), all their parameters what the EMA tracks. Everything else the loss
    uses is frozen by the subclass's constructor, which holds the task's whole set-up."""

    trains: tuple[str, ...] = ()

    @property
    def modules(self) -> list:
        return [getattr(self, name) for name in self.trains]

    def parameters(self) -> list:
        """The parameters that learn (``requires_grad``), module by module."""
        return [p for m in self.modules for p in m.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (one, unless a task needs its own weight decay)."""
        return [{"params": self.parameters()}]

    def prepare(self, acc, *objects):
        """``accelerate``-prepare the trained modules (their attributes now hold the wrappers that
        multi-GPU training needs) together with ``objects`` (the optimizer, an LR schedule);
        returns the prepared ``objects`` (one object when given one)."""
        out = acc.prepare(*self.modules, *objects)
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        for name, module in zip(self.trains, out, strict=False):
            setattr(self, name, module)
        rest = out[len(self.trains) :]
        return rest[0] if len(rest) == 1 else tuple(rest)

    def __call__(self, batch, generator):
        raise NotImplementedError


def track_ema(acc, task_loss: TaskLoss, decay: float, **kw):
    """An EMA of every parameter of the trained modules, saved in the checkpoints (register it
    before any other custom checkpoint object)."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(ema_parameters(acc, task_loss), decay=decay, **kw)
    acc.register_for_checkpointing(ema)
    return ema


def ema_parameters(acc, task_loss: TaskLoss) -> list:
    """Every parameter of the trained modules (unwrapped): what the EMA tracks and exports."""
    return [p for m in task_loss.modules for p in acc.unwrap_model(m).parameters()]


def fit(acc, cfg, task_loss: TaskLoss, next_batch, opt, ema, lr_schedule=None, on_save=None):
    """Train ``task_loss`` for steps ``start .. cfg.steps`` (``start`` = 0, or with ``cfg.resume``
    the latest checkpoint in ``cfg.out``, which restores the modules, optimizer, EMA, schedule
    and random states); returns the run summary (:func:`run_summary`).

    Each step: ``batch, generator = next_batch(step)`` (a pure function of seed, step and rank),
    the loss ``task_loss(batch, generator)`` under accelerate's gradient accumulation and autocast,
    backward, gradient clipping at norm 1, the optimizer (and ``lr_schedule``) step, the EMA step,
    then :func:`end_step` (loss log, atomic checkpoint) and ``on_save(steps_done)`` after each
    checkpoint. Rank 0 writes ``cfg.out/train_config.json``."""
    from tqdm import tqdm

    out = Path(cfg.out)
    if not cfg.resume:
        check_fresh_out(out)
    start, rows = resume_state(acc, out) if cfg.resume else (0, [])
    ema.to(acc.device)  # accelerate restores the EMA state on the CPU
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    params, tracked = task_loss.parameters(), ema_parameters(acc, task_loss)
    bar = tqdm(
        range(start, cfg.steps),
        desc=cfg.task,
        disable=not acc.is_local_main_process,
        initial=start,
        total=cfg.steps,
    )
    t0 = time.perf_counter()
    for step in bar:
        batch, generator = next_batch(step)
        with acc.accumulate(*task_loss.modules):
            with acc.autocast():
                loss = task_loss(batch, generator)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, 1.0)
            opt.step()
            if lr_schedule is not None:
                lr_schedule.step()
            opt.zero_grad()
        if acc.sync_gradients:
            ema.step(tracked)
        end_step(acc, cfg, loss, step, rows, bar, out)
        if on_save is not None and saves_at(cfg, step + 1):
            on_save(step + 1)
        del loss  # free this step's graph before the next one is built
    bar.close()
    acc.wait_for_everyone()
    return run_summary(cfg, start, rows, t0)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete ``step_N`` folder (temporary ``.tmp-*`` ones are ignored)."""
    done = sorted(
        (p for p in Path(ckpt_dir).glob("step_*") if p.is_dir()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return done[-1] if done else None


def save_checkpoint(acc, ckpt_dir: Path, step: int, keep: int) -> None:
    """Save the accelerate state to ``ckpt_dir/.tmp-step_N`` then rename it to ``step_N``
    (atomic); keep the newest ``keep`` checkpoints."""
    acc.wait_for_everyone()
    tmp = Path(ckpt_dir) / f".tmp-step_{step}"
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every rank has written its random states before the rename
    if acc.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps({"step": step}) + "\n")
        final = Path(ckpt_dir) / f"step_{step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(Path(ckpt_dir).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for p in old[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    acc.wait_for_everyone()


def check_fresh_out(out: Path) -> None:
    """A fresh (not resumed) run must not mix its checkpoints with an earlier run's."""
    ckpt = Path(out) / "checkpoints"
    if latest_checkpoint(ckpt) is not None:
        raise UserInputError(
            f"{ckpt} holds checkpoints of an earlier run: pass --resume to continue it, "
            "or choose another --out"
        )


def resume_state(acc, out: Path) -> tuple[int, list[tuple[int, float]]]:
    """Load the latest checkpoint in ``out/checkpoints``; returns (step, loss rows up to it)."""
    ckpt_dir = Path(out) / "checkpoints"
    last = latest_checkpoint(ckpt_dir)
    if last is None:
        raise UserInputError(f"--resume: no checkpoint in {ckpt_dir}")
    acc.load_state(str(last))
    start = json.loads((last / "trainer.json").read_text())["step"]
    rows: list[tuple[int, float]] = []
    if (Path(out) / "loss.csv").exists():
        with open(Path(out) / "loss.csv") as fh:
            rows = [
                (int(r["step"]), float(r["loss"]))
                for r in csv.DictReader(fh)
                if int(r["step"]) <= start
            ]
    return start, rows


def end_step(acc, cfg, loss, step: int, rows: list[tuple[int, float]], bar, out: Path) -> float:
    """After optimisation step ``step`` (0-based): gather the loss over processes, stop on a
    non-finite one, append it to ``rows``, and by ``cfg.log_every`` / ``cfg.save_every`` write
    the loss log (rank 0) and an atomic checkpoint. Returns the loss."""
    lv = float(acc.gather(loss.detach()[None]).mean())
    if not math.isfinite(lv):
        raise RuntimeError(f"loss is {lv} at step {step}; lower --lr or use --mixed-precision no")
    done = step + 1
    rows.append((done, lv))
    bar.set_postfix(loss=f"{lv:.4f}")
    if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
        write_loss_log(out, rows)
    if saves_at(cfg, done):
        save_checkpoint(acc, Path(out) / "checkpoints", done, cfg.keep_checkpoints)
    return lv


def saves_at(cfg, done: int) -> bool:
    """Whether a checkpoint is written after ``done`` steps: every ``cfg.save_every``, and last."""
    return done % cfg.save_every == 0 or done == cfg.steps


def run_summary(cfg, start: int, rows: list[tuple[int, float]], t0: float) -> dict:
    """The summary every trainer returns: task, steps, start, seconds, first/last losses."""
    return {
        "task": cfg.task,
        "steps": cfg.steps,
        "started_at": start,
        "seconds": round(time.perf_counter() - t0, 2),
        "first_losses": [r[1] for r in rows[:5]],
        "last_losses": [r[1] for r in rows[-5:]],
    }


def write_loss_log(out: Path, rows: list[tuple[int, float]]) -> None:
    """``loss.csv`` (step, loss) and a ``loss.png`` chart, both replaced atomically."""
    tmp = Path(out) / ".loss.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["step", "loss"])
        wr.writerows(rows)
    os.replace(tmp, Path(out) / "loss.csv")
    plot_losses(rows, Path(out) / "loss.png")


def plot_losses(rows: list[tuple[int, float]], path: Path) -> None:
    """A small PNG line chart of the loss (log scale), without matplotlib."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 320, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    if len(rows) >= 2:
        steps = np.array([r[0] for r in rows], dtype=float)
        loss = np.log10(np.maximum([r[1] for r in rows], 1e-8))
        lo, hi = loss.min(), max(loss.max(), loss.min() + 1e-6)
        xs = pad + (steps - steps.min()) / max(steps.max() - steps.min(), 1) * (w - 2 * pad)
        ys = h - pad - (loss - lo) / (hi - lo) * (h - 2 * pad)
        d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(30, 90, 200), width=2)
        span = f"steps {int(steps.min())}..{int(steps.max())}"
        d.text((pad, 8), f"loss (log10) {10**hi:.4g} .. {10**lo:.4g}; {span}", fill="black")
    d.rectangle([pad, pad, w - pad, h - pad], outline=(150, 150, 150))
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)


def save_model_atomic(model, folder: Path) -> Path:
    """``model.save_pretrained`` into a temporary folder, then rename it onto ``folder``."""
    folder = Path(folder)
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
