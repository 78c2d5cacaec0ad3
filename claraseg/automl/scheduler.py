"""Parallel trial processes: one per worker slot (a GPU or a CPU slot), followed through their events.

The scheduler starts a trial's process in a free slot, reads the new lines of its events file on each
poll, and reports its end. Trial processes die with the controller (Linux parent-death signal), so a
killed controller leaves no orphan training behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claraseg.automl.runners import TrialRunner, TrialSpec, environment_for
from claraseg.errors import ConfigError

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class TrialProcess:
    """A running trial: its process, slot, events read so far and outcome."""

    spec: TrialSpec
    slot: str
    process: subprocess.Popen
    started: float
    log_path: Path
    offset: int = 0
    validations: list[tuple[int, float]] = field(default_factory=list)  # (iteration, dice), not baseline
    final_state: str | None = None
    best_dice: float | None = None
    error: str | None = None

    @property
    def events_path(self) -> Path:
        return Path(self.spec.events)

    def read_events(self) -> list[dict[str, Any]]:
        """New complete event lines since the last call (a partly written last line waits)."""
        path = self.events_path
        if not path.exists():
            return []
        out = []
        with open(path, "rb") as f:
            f.seek(self.offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                self.offset += len(raw)
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                out.append(event)
                self._fold(event)
        return out

    def _fold(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "validation" and not event.get("baseline") and isinstance(event.get("dice"), (int, float)):
            self.validations.append((int(event.get("iteration", len(self.validations))), float(event["dice"])))
        elif kind == "state" and event.get("state") in ("completed", "failed", "cancelled"):
            self.final_state = event["state"]
            if isinstance(event.get("best_dice"), (int, float)):
                self.best_dice = float(event["best_dice"])
        elif kind == "error":
            self.error = str(event.get("message") or event.get("type") or "error")

    def score(self) -> float | None:
        """The trial's result: its best validation Dice (None if it never validated)."""
        values = [d for _, d in self.validations]
        if self.best_dice is not None:
            values.append(self.best_dice)
        return max(values) if values else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Scheduler:
    """Runs trial processes in a fixed set of slots (``cpu:0``, ``cpu:1``... or ``cuda:0``...)."""

    def __init__(self, runner: TrialRunner, slots: list[str], threads_per_trial: int = 1) -> None:
        if not slots:
            raise ValueError("at least one worker slot is needed")
        self.runner = runner
        self.slots = list(slots)
        self.threads = threads_per_trial
        self.running: dict[str, TrialProcess] = {}

    def free_slots(self) -> list[str]:
        return [s for s in self.slots if s not in self.running]

    def start(self, spec: TrialSpec, slot: str) -> TrialProcess:
        """Start the process of ``spec`` in ``slot`` (which must be free)."""
        if slot in self.running:
            raise RuntimeError(f"slot {slot} is busy")
        spec.device = "cpu" if slot.startswith("cpu") else slot
        spec.threads = self.threads
        Path(spec.dir).mkdir(parents=True, exist_ok=True)
        self.runner.prepare(spec)
        log_path = Path(spec.dir) / "trial.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                self.runner.command(spec), cwd=spec.dir, env=environment_for(self.runner, spec),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        trial = TrialProcess(spec, slot, process, time.time(), log_path)
        self.running[slot] = trial
        log.info("trial %d started in slot %s (pid %d)", spec.number, slot, process.pid)
        return trial

    def poll(self) -> list[TrialProcess]:
        """Read new events of every running trial; return (and release) the trials whose process ended."""
        ended = []
        for slot, trial in list(self.running.items()):
            trial.read_events()
            if trial.process.poll() is not None:
                trial.read_events()
                del self.running[slot]
                ended.append(trial)
        return ended

    def stop(self, trial: TrialProcess, grace_s: float = 5.0) -> None:
        """Terminate a trial's process (SIGTERM, then SIGKILL after ``grace_s``) and release its slot."""
        if trial.process.poll() is None:
            trial.process.terminate()
            try:
                trial.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                trial.process.kill()
                trial.process.wait()
        trial.read_events()
        self.running.pop(trial.slot, None)

    def stop_all(self) -> list[TrialProcess]:
        trials = list(self.running.values())
        for trial in trials:
            self.stop(trial)
        return trials


def cpu_slots(workers: int) -> list[str]:
    """``workers`` CPU slots."""
    return [f"cpu:{i}" for i in range(max(1, workers))]


def parse_devices(text: str | None, workers: int) -> list[str]:
    """Slots from ``--devices cuda:0,cuda:1`` (one worker per device), else ``workers`` CPU slots."""
    if not text:
        return cpu_slots(workers)
    slots = [d.strip() for d in text.split(",") if d.strip()]
    for d in slots:
        if not (d == "cpu" or d.startswith(("cpu:", "cuda:"))):
            raise ConfigError(f"device {d!r}: use cpu, cpu:N or cuda:N (comma-separated, one worker each)")
    return [f"cpu:{i}" if d == "cpu" else d for i, d in enumerate(slots)]


def pid_alive(pid: int) -> bool:
    """Whether a process of that id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
