"""Following a fine-tune job from its events (JSON lines, fields in docs/training.md).

The job process appends one event per line (``claraseg.train.events``); the panel reads new lines with
a QTimer (:class:`EventTail` locally, ``GET /train/{id}/events?since=N`` remotely) and folds them into a
:class:`JobProgress`: state, iteration, loss, validation Dice before and after, time left, and the
curves the Slicer plot shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: States after which the job process has exited (plus ``interrupted``: died without a final state).
FINAL_STATES = ("completed", "failed", "cancelled", "interrupted")
RUNNING_STATES = ("queued", "preparing", "training", "publishing")


def parse_line(line: str | bytes) -> dict[str, Any] | None:
    """One event from a line, or None for a blank or corrupt line (a crash can cut the last one)."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, (bytes, bytearray)) else line
    text = text.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class EventTail:
    """Reads the complete lines appended to an events file since the last call (by byte offset)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.skipped = 0

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []  # only a line being written
        self.offset += end + 1
        events = []
        for raw in data[:end].split(b"\n"):
            e = parse_line(raw)
            if e is None:
                if raw.strip():
                    self.skipped += 1
                continue
            events.append(e)
        return events


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``1 h 02 min``; ``42`` -> ``42 s``; None -> ``-``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class JobProgress:
    """A job's status folded from its events (same meaning as ``claraseg.train.events.summarize``) plus the
    curves: ``losses`` = [(iteration, loss)], ``dices`` = [(iteration, validation Dice)]."""

    state: str = "queued"
    iteration: int = 0
    max_iterations: int | None = None
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    eta_s: float | None = None
    its_per_s: float | None = None
    baseline_dice: float | None = None
    dice: float | None = None
    best_dice: float | None = None
    checkpoint: str | None = None
    published: str | None = None
    publish_skipped: str | None = None
    error: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    dices: list[tuple[int, float]] = field(default_factory=list)
    events_seen: int = 0
    _first_t: float | None = None
    _first_it: int | None = None
    _last_t: float | None = None

    def update(self, event: dict[str, Any]) -> None:
        """Fold one event in."""
        self.events_seen += 1
        kind = event.get("event")
        t = event.get("t")
        if kind == "state":
            self.state = str(event.get("state", self.state))
            for key in ("baseline_dice", "best_dice", "published", "publish_skipped"):
                if event.get(key) is not None:
                    setattr(self, key, event[key])
            if event.get("max_iterations"):
                self.max_iterations = int(event["max_iterations"])
        elif kind == "iteration":
            self.iteration = int(event.get("iteration", self.iteration))
            self.epoch = int(event.get("epoch", self.epoch) or 0)
            if event.get("max_iterations"):
                self.max_iterations = int(event["max_iterations"])
            for key in ("loss", "lr", "eta_s", "its_per_s"):
                if event.get(key) is not None:
                    setattr(self, key, float(event[key]))
            if event.get("loss") is not None:
                self.losses.append((self.iteration, float(event["loss"])))
            if isinstance(t, (int, float)):
                if self._first_t is None:
                    self._first_t, self._first_it = float(t), self.iteration
                self._last_t = float(t)
        elif kind == "epoch":
            self.epoch = int(event.get("epoch", self.epoch) or 0)
        elif kind == "validation":
            d = event.get("dice")
            if d is not None:
                d = float(d)
                self.dice = d
                if event.get("baseline"):
                    self.baseline_dice = d
                else:
                    self.best_dice = d if self.best_dice is None else max(self.best_dice, d)
                self.dices.append((int(event.get("iteration", self.iteration) or 0), d))
        elif kind == "checkpoint":
            self.checkpoint = event.get("path", self.checkpoint)
        elif kind == "published":
            self.published = event.get("name", self.published)
        elif kind == "error":
            self.error = str(event.get("message") or event.get("code") or "the job failed")

    def update_all(self, events: list[dict[str, Any]]) -> JobProgress:
        for e in events:
            self.update(e)
        return self

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def fraction(self) -> float | None:
        if not self.max_iterations:
            return None
        return min(1.0, self.iteration / self.max_iterations)

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds left: the job's own estimate, else the average rate since the first iteration event."""
        if self.finished:
            return 0.0
        if self.eta_s is not None:
            return self.eta_s
        if (self.max_iterations and self._first_t is not None and self._last_t is not None
                and self.iteration > (self._first_it or 0) and self._last_t > self._first_t):
            rate = (self.iteration - (self._first_it or 0)) / (self._last_t - self._first_t)
            return (self.max_iterations - self.iteration) / rate
        return None

    def summary(self) -> str:
        """One status line: state, iteration, loss, Dice, time left (or the outcome)."""
        if self.state == "failed":
            return f"Failed: {self.error or 'see the job log'}"
        if self.state == "cancelled":
            return f"Stopped at iteration {self.iteration}; Resume continues from the last checkpoint"
        if self.state == "interrupted":
            return f"Interrupted at iteration {self.iteration} (process ended); Resume continues from the last checkpoint"
        if self.state == "completed":
            change = self.dice_change()
            if self.published:
                return f"Done: {self.published} published ({change}); selectable in Clara Annotate"
            return f"Done ({change}); not published: {self.publish_skipped or 'publishing was off'}"
        parts = [self.state.capitalize()]
        if self.max_iterations:
            parts.append(f"iteration {self.iteration}/{self.max_iterations}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.dice is not None:
            parts.append(f"val Dice {self.dice:.3f}")
        left = self.time_left()
        if left is not None:
            parts.append(f"{format_duration(left)} left")
        return ", ".join(parts)

    def dice_change(self) -> str:
        b, a = self.baseline_dice, self.best_dice
        if b is None and a is None:
            return "no validation Dice"
        if b is None:
            return f"validation Dice {a:.3f}"
        if a is None:
            return f"validation Dice before {b:.3f}"
        return f"validation Dice {b:.3f} -> {a:.3f}"

    def panel(self) -> dict[str, Any]:
        """What the panel shows: progress percent, the labels' texts, the status level, which buttons work."""
        return {
            "percent": int(100 * (self.fraction or 0)),
            "iteration": f"{self.iteration} / {self.max_iterations or '?'} (epoch {self.epoch})",
            "loss": f"{self.loss:.4f}" if self.loss is not None else "-",
            "dice": self.dice_change(),
            "eta": format_duration(self.time_left()),
            "status": self.summary(),
            "level": "error" if self.state == "failed" else "ok" if self.state == "completed" else "info",
            "running": not self.finished,
            "resumable": self.state in ("cancelled", "interrupted", "failed"),
        }

    def curve_table(self) -> tuple[list[str], list[list[float]]]:
        """Columns for the Slicer plot: iteration, loss, validation Dice (NaN where not measured)."""
        dice_at = dict(self.dices)
        iterations = sorted({i for i, _ in self.losses} | set(dice_at))
        loss_at = dict(self.losses)
        nan = float("nan")
        rows = [[float(i), loss_at.get(i, nan), dice_at.get(i, nan)] for i in iterations]
        return ["iteration", "loss", "validation Dice"], rows


