"""The one training loop of claraseg: pre-training (``claraseg pretrain``), fine-tune jobs
(:mod:`claraseg.train.runner`) and AutoML's in-process trials (:mod:`claraseg.automl.tinyloop`).

:class:`TrainingLoop` counts optimizer steps (``iteration``, from 1), with gradient accumulation over
``grad_accumulation`` batches, AMP on CUDA (:func:`amp_dtype`: ``torch.autocast`` in bfloat16, or in float16
with a ``GradScaler``; float32 on CPU), an iteration and a
wall-time budget, and a per-iteration learning-rate schedule and/or a per-epoch scheduler. Everything
else is a handler (:class:`Handler`): events, TensorBoard, validation with the best checkpoint, the
resumable checkpoint, cancellation, progress logs. The data is a :class:`BatchSource`: the batches of one
epoch from a cursor on, so a resumed run continues with the very batch the interrupted one would have
taken next (:class:`LoaderSource` for MONAI datasets with a seeded order, :class:`StreamSource` for an
endless stream of samples drawn from a seeded generator, as pre-training draws them).

``claraseg train bench-engine`` measures this loop against MONAI's ``SupervisedTrainer`` on the same
tiny task (results/train/engine_benchmark.json, docs/training.md).
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from claraseg.errors import CancelledError


# ----- small shared helpers ------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` written atomically (:func:`claraseg.io.atomic_path`)."""
    from claraseg.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (and with ``deterministic`` MONAI and torch's deterministic algorithms)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        from monai.utils import set_determinism

        set_determinism(seed=seed)
        torch.use_deterministic_algorithms(True, warn_only=True)


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process (MB); None where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


#: The mixed-precision dtypes a training run may name (``amp``); ``True`` or ``"auto"`` choose per device.
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(device: torch.device | str, amp: bool | str | None, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of a training run on ``device``, or None for float32: always None on CPU (results
    stay identical run to run) and with ``amp`` false. ``True`` or ``"auto"``: bfloat16 where the GPU
    computes it natively (``bf16_supported``, asked of torch when None), else float16; ``"float16"`` or
    ``"bfloat16"`` name it. float16 steps go through a ``GradScaler`` (its small range underflows
    gradients), bfloat16 ones need none."""
    if amp is None or amp is False or torch.device(device).type != "cuda":
        return None
    if amp is True or amp == "auto":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if bf16_supported else torch.float16
    if isinstance(amp, str) and amp in AMP_DTYPES:
        return AMP_DTYPES[amp]
    from claraseg.errors import ConfigError

    raise ConfigError(f"amp = {amp!r}: choose true, false, 'auto', 'float16' or 'bfloat16'")


def cosine_schedule(lr0: float, floor: float = 0.05) -> Callable[[float], float]:
    """Learning rate at training progress ``p`` in [0, 1]: cosine from ``lr0`` down to ``floor`` x ``lr0``."""
    return lambda p: lr0 * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


# ----- data ----------------------------------------------------------------------------------------------
class BatchSource(abc.ABC):
    """The batches of an epoch: :meth:`batches` yields them from batch ``cursor`` on; :meth:`epoch_length`
    is their number (None: an endless stream, one epoch)."""

    @abc.abstractmethod
    def epoch_length(self, epoch: int) -> int | None: ...

    @abc.abstractmethod
    def batches(self, epoch: int, cursor: int) -> Iterable[Any]: ...


class LoaderSource(BatchSource):
    """A MONAI dataset in the seeded, resumable order of :func:`claraseg.train.datasets.epoch_batches`:
    the order is a function of ``(seed, epoch)`` and each item's random transforms are re-seeded by its
    position, so the batches after a cursor do not depend on what ran before."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> None:
        from claraseg.train.datasets import SeededItems

        self.items = SeededItems(dataset)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers = num_workers

    def _plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        from claraseg.train.datasets import epoch_batches

        return epoch_batches(len(self.items), self.batch_size, self.seed, epoch, self.rank, self.world_size)

    def epoch_length(self, epoch: int) -> int:
        return len(self._plan(epoch))

    def batches(self, epoch: int, cursor: int) -> Iterable[Any]:
        from monai.data import DataLoader, list_data_collate

        return DataLoader(self.items, batch_sampler=self._plan(epoch)[cursor:], num_workers=self.num_workers,
                          collate_fn=list_data_collate)


class StreamSource(BatchSource):
    """An endless stream: ``draw()`` makes the next batch (from the caller's seeded generators)."""

    def __init__(self, draw: Callable[[], Any]) -> None:
        self.draw = draw

    def epoch_length(self, epoch: int) -> None:
        return None

    def batches(self, epoch: int, cursor: int) -> Iterator[Any]:
        while True:
            yield self.draw()


# ----- the loop ------------------------------------------------------------------------------------------
@dataclass
class LoopState:
    """Where the loop is; handlers read it (and may set ``stop``)."""

    iteration: int = 0  # optimizer steps done
    epoch: int = 0
    cursor: int = 0  # batches of the epoch consumed
    max_iterations: float = math.inf
    loss: float | None = None  # of the last step (mean over its accumulated batches)
    lr: float | None = None
    its_per_s: float | None = None  # smoothed
    epoch_losses: list[float] = field(default_factory=list)
    epoch_started: float = 0.0
    started: float = 0.0
    start_iteration: int = 0
    stop: bool = False  # set by a handler: finish after this iteration

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.started

    @property
    def done(self) -> bool:
        return self.stop or self.iteration >= self.max_iterations


class Handler:
    """Called by :class:`TrainingLoop` at its events; override what you need. Handlers run in order."""

    def started(self, loop: TrainingLoop) -> None:
        pass

    def iteration_completed(self, loop: TrainingLoop) -> None:
        pass

    def epoch_completed(self, loop: TrainingLoop) -> None:
        pass

    def new_epoch(self, loop: TrainingLoop) -> None:
        """After an epoch's end, before the next one's first batch (not before the run's first epoch)."""

    def completed(self, loop: TrainingLoop) -> None:
        pass


class TrainingLoop:
    """Optimizer steps over a :class:`BatchSource` until ``max_iterations`` or ``max_time_s``.

    ``step_loss(model, batch)`` returns the loss of one batch (the caller moves data to its device).
    ``lr_schedule(progress)`` (progress in [0, 1] of the iteration or time budget, whichever is further)
    sets the learning rate before each step; ``epoch_scheduler`` (a torch LR scheduler) is stepped after
    each epoch. ``state`` resumes a run (iteration, epoch, cursor of a checkpoint). ``amp``: mixed
    precision on CUDA, see :func:`amp_dtype` (``self.amp_dtype``; ``self.scaler`` for float16).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 step_loss: Callable[[torch.nn.Module, Any], torch.Tensor], data: BatchSource, *,
                 device: torch.device | str = "cpu", max_iterations: float = math.inf,
                 max_time_s: float | None = None, grad_accumulation: int = 1, amp: bool | str = False,
                 lr_schedule: Callable[[float], float] | None = None, epoch_scheduler: Any = None,
                 handlers: Sequence[Handler] = (), state: LoopState | None = None) -> None:
        self.model, self.optimizer, self.step_loss, self.data = model, optimizer, step_loss, data
        self.device = torch.device(device)
        self.max_time_s = max_time_s
        self.accum = max(1, int(grad_accumulation))
        self.amp_dtype = amp_dtype(self.device, amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.lr_schedule, self.epoch_scheduler = lr_schedule, epoch_scheduler
        self.handlers = list(handlers)
        self.state = state or LoopState()
        self.state.max_iterations = max_iterations

    def progress(self) -> float:
        """Fraction of the budget spent: iterations or wall time, whichever is further along."""
        s, p = self.state, 0.0
        if math.isfinite(s.max_iterations) and s.max_iterations > 0:
            p = s.iteration / s.max_iterations
        if self.max_time_s:
            p = max(p, s.elapsed_s / self.max_time_s)
        return min(p, 1.0)

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _fire(self, name: str) -> None:
        for h in self.handlers:
            getattr(h, name)(self)

    def run(self) -> LoopState:
        s = self.state
        s.started = time.time()
        s.start_iteration = s.iteration
        self._fire("started")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        pending: list[float] = []
        while not s.done and self.progress() < 1.0:
            n_batches = self.data.epoch_length(s.epoch)
            s.epoch_started, s.epoch_losses = time.time(), []
            t_it = time.time()
            for batch in self.data.batches(s.epoch, s.cursor):
                s.cursor += 1
                if self.lr_schedule is not None and not pending:
                    lr = self.lr_schedule(self.progress())
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                with self._autocast():
                    loss = self.step_loss(self.model, batch) / self.accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                pending.append(float(loss.detach()) * self.accum)
                if len(pending) < self.accum:
                    continue
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                s.iteration += 1
                s.loss = float(np.mean(pending))
                pending = []
                s.epoch_losses.append(s.loss)
                s.lr = self.optimizer.param_groups[0]["lr"]
                dt = max(time.time() - t_it, 1e-6)
                s.its_per_s = 1.0 / dt if s.its_per_s is None else 0.8 * s.its_per_s + 0.2 / dt
                if self.max_time_s is not None and s.elapsed_s >= self.max_time_s:
                    s.max_iterations = s.iteration  # the time budget is spent
                self._fire("iteration_completed")
                t_it = time.time()
                if s.done:
                    break
            if s.epoch_losses and n_batches is not None and s.cursor >= n_batches:
                self._fire("epoch_completed")
            if s.done:
                break
            s.epoch += 1
            s.cursor = 0
            if self.epoch_scheduler is not None:
                self.epoch_scheduler.step()
            self._fire("new_epoch")
        self._fire("completed")
        return s

    @property
    def throughput(self) -> float | None:
        """Iterations per second of this run (resumed iterations not counted)."""
        elapsed = self.state.elapsed_s
        n = self.state.iteration - self.state.start_iteration
        return n / elapsed if elapsed > 0 and n else None


# ----- handlers ------------------------------------------------------------------------------------------
class EventsHandler(Handler):
    """Writes ``iteration`` (every ``log_interval`` steps and the last) and ``epoch`` events with a
    :class:`claraseg.train.events.EventWriter` (or anything with its ``emit``)."""

    def __init__(self, events, log_interval: int = 1, round_loss: int | None = None) -> None:
        self.events, self.log_interval, self.round_loss = events, max(1, int(log_interval)), round_loss

    def iteration_completed(self, loop: TrainingLoop) -> None:
        s = loop.state
        if s.iteration % self.log_interval and not s.done:
            return
        rate = s.its_per_s or 0.0
        remaining = s.max_iterations - s.iteration
        eta = remaining / rate if rate and math.isfinite(remaining) else math.inf
        if loop.max_time_s is not None:
            eta = min(eta, max(0.0, loop.max_time_s - s.elapsed_s))
        loss = round(s.loss, self.round_loss) if self.round_loss is not None else s.loss
        max_it = s.max_iterations if math.isfinite(s.max_iterations) else None
        self.events.emit("iteration", iteration=s.iteration, max_iterations=max_it, epoch=s.epoch, loss=loss,
                         lr=s.lr, its_per_s=round(rate, 4), eta_s=round(eta, 1) if math.isfinite(eta) else None)

    def epoch_completed(self, loop: TrainingLoop) -> None:
        s = loop.state
        mem = peak_memory_mb()
        self.events.emit("epoch", epoch=s.epoch, iteration=s.iteration, loss=float(np.mean(s.epoch_losses)),
                         time_s=round(time.time() - s.epoch_started, 3),
                         peak_memory_mb=None if mem is None else round(mem, 1))


class TensorBoardHandler(Handler):
    """``train/loss`` and ``train/lr`` per step (and ``val/dice`` through :meth:`scalar`) in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def iteration_completed(self, loop: TrainingLoop) -> None:
        self.writer.add_scalar("train/loss", loop.state.loss, loop.state.iteration)
        self.writer.add_scalar("train/lr", loop.state.lr, loop.state.iteration)

    def completed(self, loop: TrainingLoop) -> None:
        self.writer.close()


class ValidationHandler(Handler):
    """``validate(loop) -> score`` every ``every`` iterations (and/or every ``every_s`` seconds) and once at
    the end; keeps the best score (``best``: dice, iteration) and calls ``on_best(loop, score)`` when it
    improves. ``eligible(loop, score)`` (optional) can refuse a validation as best (early stopping under a
    constraint, e.g. no structure worse than the starting model's by more than a margin)."""

    def __init__(self, validate: Callable[[TrainingLoop], float], every: int | None = None,
                 every_s: float | None = None, on_best: Callable[[TrainingLoop, float], None] | None = None,
                 best: dict[str, Any] | None = None, final: bool = True, barrier: Callable[[], None] | None = None,
                 eligible: Callable[[TrainingLoop, float], bool] | None = None) -> None:
        self.validate, self.every, self.every_s, self.on_best = validate, every, every_s, on_best
        self.eligible = eligible
        self.best = best or {"dice": None, "iteration": None}
        self.final, self.barrier = final, barrier
        self.last_t = time.time()
        self.history: list[dict[str, Any]] = []

    def _run(self, loop: TrainingLoop) -> None:
        score = self.validate(loop)
        self.last_t = time.time()
        if score is not None:
            self.history.append({"iteration": loop.state.iteration, "minutes": round(loop.state.elapsed_s / 60, 1),
                                 "val_dice": round(float(score), 4)})
            if (self.best["dice"] is None or score > self.best["dice"]) and (
                    self.eligible is None or self.eligible(loop, score)):
                self.best = {"dice": score, "iteration": loop.state.iteration}
                if self.on_best is not None:
                    self.on_best(loop, score)
        if self.barrier is not None:
            self.barrier()

    def started(self, loop: TrainingLoop) -> None:
        self.last_t = time.time()

    def iteration_completed(self, loop: TrainingLoop) -> None:
        s = loop.state
        if s.done:
            return  # the final validation follows
        due = (self.every and s.iteration % self.every == 0) or (
            self.every_s is not None and time.time() - self.last_t >= self.every_s)
        if due:
            self._run(loop)

    def completed(self, loop: TrainingLoop) -> None:
        if self.final:
            self._run(loop)


class CheckpointHandler(Handler):
    """Calls ``save(loop)`` every ``every`` iterations and/or ``every_s`` seconds (not on the last step,
    unless ``at_end``)."""

    def __init__(self, save: Callable[[TrainingLoop], None], every: int | None = None, every_s: float | None = None,
                 at_end: bool = False) -> None:
        self.save, self.every, self.every_s, self.at_end = save, every, every_s, at_end
        self.last_t = time.time()

    def started(self, loop: TrainingLoop) -> None:
        self.last_t = time.time()

    def iteration_completed(self, loop: TrainingLoop) -> None:
        s = loop.state
        if s.done:
            return
        if (self.every and s.iteration % self.every == 0) or (
                self.every_s is not None and time.time() - self.last_t >= self.every_s):
            self.save(loop)
            self.last_t = time.time()

    def completed(self, loop: TrainingLoop) -> None:
        if self.at_end:
            self.save(loop)


class CancelHandler(Handler):
    """Raises :class:`~claraseg.errors.CancelledError` after a step when ``requested()`` is true."""

    def __init__(self, requested: Callable[[], bool]) -> None:
        self.requested = requested

    def iteration_completed(self, loop: TrainingLoop) -> None:
        if self.requested():
            raise CancelledError("the job was cancelled")


class ProgressHandler(Handler):
    """A log line (``progress(text)``) at most every ``every_s`` seconds: iteration, loss, lr, minutes."""

    def __init__(self, progress: Callable[[str], None], prefix: str, every_s: float = 60.0) -> None:
        self.progress, self.prefix, self.every_s = progress, prefix, every_s
        self.last_t = time.time()
        self.losses: list[float] = []

    def iteration_completed(self, loop: TrainingLoop) -> None:
        s = loop.state
        self.losses = (self.losses + [s.loss])[-50:]
        if time.time() - self.last_t > self.every_s:
            self.progress(f"{self.prefix}: it {s.iteration} loss {np.mean(self.losses):.4f} lr {s.lr:.2e} "
                          f"{s.elapsed_s / 60:.1f} min")
            self.last_t = time.time()


__all__ = ["AMP_DTYPES", "BatchSource", "CancelHandler", "CheckpointHandler", "EventsHandler", "Handler", "LoaderSource",
           "LoopState", "ProgressHandler", "StreamSource", "TensorBoardHandler", "TrainingLoop", "ValidationHandler",
           "amp_dtype", "atomic_torch_save", "cosine_schedule", "peak_memory_mb", "rng_state", "seed_everything", "set_rng_state"]
