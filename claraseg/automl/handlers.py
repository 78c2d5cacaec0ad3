"""Lifecycle callbacks of an AutoML search, and the two built in: reports and TensorBoard.

A handler subclasses :class:`AutoMLHandler` and overrides the events it needs. Each method receives
the controller (``ctx``: ``ctx.study``, ``ctx.space``, ``ctx.job_dir``, ``ctx.settings``). A handler
that raises is logged and the search goes on: a broken plot must not waste hours of training.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claraseg.automl import report
from claraseg.errors import ConfigError
from claraseg.io import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class TrialInfo:
    """A trial as handlers see it."""

    number: int
    params: dict[str, Any]
    overrides: dict[str, Any]
    dir: str
    slot: str = ""
    default: bool = False
    state: str = "running"  # running | complete | pruned | fail
    dice: float | None = None
    validations: list[tuple[int, float]] = field(default_factory=list)
    duration_s: float | None = None
    error: str | None = None


class AutoMLHandler:
    """Base class: every event is a no-op."""

    def search_start(self, ctx) -> None:
        """The controller is set up (study opened or resumed), before the search space is announced."""

    def search_space_ready(self, ctx, space) -> None:
        """The search space has been parsed and validated (:class:`~claraseg.automl.searchspace.SearchSpace`)."""

    def recommendations_ready(self, ctx, trials: list[TrialInfo]) -> None:
        """The controller has drawn settings for the trials about to start."""

    def trial_start(self, ctx, trial: TrialInfo) -> None:
        """A trial's process has started."""

    def trial_end(self, ctx, trial: TrialInfo) -> None:
        """A trial has completed, been pruned or failed (``trial.state``)."""

    def search_end(self, ctx, summary: dict[str, Any]) -> None:
        """The search is over (budget or time used up, or interrupted); ``summary`` from :func:`report.summarize`."""


class ReportHandler(AutoMLHandler):
    """Keeps ``trials.{csv,json,md}`` current; at the end adds ``history.png``, the best overlay, ``summary.txt``."""

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir else None

    def _dir(self, ctx) -> Path:
        return self.out_dir or Path(ctx.job_dir)

    def trial_end(self, ctx, trial: TrialInfo) -> None:
        report.write_tables(report.trial_rows(ctx.study), self._dir(ctx))

    def search_end(self, ctx, summary: dict[str, Any]) -> None:
        write_report(ctx.study, ctx.space, self._dir(ctx), summary)


def write_report(study, space, out_dir: str | Path, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every report file into ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or report.summarize(study)
    report.write_tables(report.trial_rows(study), out)
    report.plot_history(study, out / "history.png")
    report.export_best(study, space, out)
    write_text_atomic(out / "summary.txt", summary["line"] + "\n")
    return summary


class TensorBoardHandler(AutoMLHandler):
    """Writes each trial's Dice curve, its result and the best-so-far to ``<job>/tensorboard``."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self._writer = None
        self._best: float | None = None

    def _w(self, ctx):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir or Path(ctx.job_dir) / "tensorboard"))
        return self._writer

    def search_space_ready(self, ctx, space) -> None:
        self._w(ctx).add_text("automl/search_space", "\n".join(f"    {d}" for d in space.describe()))

    def trial_end(self, ctx, trial: TrialInfo) -> None:
        w = self._w(ctx)
        for step, dice in trial.validations:
            w.add_scalar(f"trials/{trial.number:04d}/val_dice", dice, step)
        if trial.dice is not None:
            w.add_scalar(f"automl/dice_{trial.state}", trial.dice, trial.number)
            if trial.state == "complete":
                self._best = trial.dice if self._best is None else max(self._best, trial.dice)
        if self._best is not None:
            w.add_scalar("automl/best_dice", self._best, trial.number)
        w.flush()

    def search_end(self, ctx, summary: dict[str, Any]) -> None:
        if self._writer is not None:
            self._w(ctx).add_text("automl/summary", summary["line"])
            self._writer.close()
            self._writer = None


def load_handler(spec: str) -> AutoMLHandler:
    """A handler from ``module:Class`` (instantiated without arguments)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"handler {spec!r}: write it as module.path:ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"handler {spec!r} cannot be loaded: {e}") from None
    handler = cls()
    if not isinstance(handler, AutoMLHandler):
        raise ConfigError(f"handler {spec!r} must subclass claraseg.automl.handlers.AutoMLHandler")
    return handler


class Dispatcher:
    """Calls an event on every handler; an exception in one is logged, not raised."""

    def __init__(self, handlers: list[AutoMLHandler]) -> None:
        self.handlers = list(handlers)

    def __call__(self, event: str, *args: Any) -> None:
        for h in self.handlers:
            try:
                getattr(h, event)(*args)
            except Exception:  # a handler must not end the search
                log.exception("AutoML handler %s failed on %s", type(h).__name__, event)
