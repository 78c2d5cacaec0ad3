"""Trial runners: how one trial (bundle + datalist + overrides) becomes a process that reports Dice.

A runner only builds the command of a trial's process. The process must append JSON-lines events to
``spec.events`` in the training part's schema: ``{"event": "validation", "iteration": n, "dice": d}``
for each validation (``"baseline": true`` marks the starting model's, which is not a trial result),
``{"event": "state", "state": "completed"|"failed"|"cancelled", ...}`` at the end and optionally
``{"event": "error", "message": ...}``. The controller follows the file, prunes from the Dice values and
scores a trial by its best validation Dice.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from claraseg.errors import ConfigError
from claraseg.io import write_text_atomic


@dataclass
class TrialSpec:
    """Everything a trial process needs; written to ``<trial dir>/trial.json``."""

    number: int
    dir: str
    bundle: str  # the search's bundle copy, without ``search`` lists
    data: str  # the datalist JSON
    overrides: dict[str, Any]  # config ids -> values, e.g. {"optimizer#lr": 0.003}
    events: str  # the JSON-lines file the process appends to
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self) -> Path:
        path = Path(self.dir) / "trial.json"
        write_text_atomic(path, json.dumps(asdict(self), indent=1, default=str))
        return path


class TrialRunner(Protocol):
    """Builds the process of one trial."""

    name: str

    def prepare(self, spec: TrialSpec) -> None:
        """Write what the trial process reads (called once the trial folder exists)."""
        ...

    def command(self, spec: TrialSpec) -> list[str]:
        """The argv of the trial process (run with the trial dir as working directory)."""
        ...

    def environment(self, spec: TrialSpec) -> dict[str, str]:
        """Extra environment variables of the trial process (device selection, threads)."""
        ...


def _device_env(spec: TrialSpec) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
    if spec.device.startswith("cuda:"):
        # One GPU per worker: the trial sees only its own device, as cuda:0.
        env["CUDA_VISIBLE_DEVICES"] = spec.device.split(":", 1)[1]
    return env


def _visible_device(spec: TrialSpec) -> str:
    return "cuda:0" if spec.device.startswith("cuda") else spec.device


class TinyLoopRunner:
    """Runs :mod:`claraseg.automl.tinyloop`: a plain training loop in one process, no checkpoints."""

    name = "tiny"

    def prepare(self, spec: TrialSpec) -> None:
        spec.write()

    def command(self, spec: TrialSpec) -> list[str]:
        return [sys.executable, "-m", "claraseg.automl.tinyloop", str(Path(spec.dir) / "trial.json")]

    def environment(self, spec: TrialSpec) -> dict[str, str]:
        env = _device_env(spec)
        env["CLARASEG_TRIAL_DEVICE"] = _visible_device(spec)
        return env


class FineTuneJobRunner:
    """Each trial is a fine-tune job of :mod:`claraseg.train` (``python -m claraseg.train.worker``) in the
    trial folder, with the trial's overrides and publishing turned off (the search exports the best
    overlay instead; a fine-tune job with it publishes the model)."""

    name = "train"

    def prepare(self, spec: TrialSpec) -> None:
        from claraseg.train.job import FineTuneJob

        spec.write()
        overrides = {**spec.overrides, "training#publish": False}
        job = FineTuneJob(spec.bundle, spec.data, overrides, spec.dir, device=_visible_device(spec),
                          threads=spec.threads)
        job.spec.save(Path(spec.dir) / "job.json")

    def command(self, spec: TrialSpec) -> list[str]:
        return [sys.executable, "-m", "claraseg.train.worker", str(Path(spec.dir))]

    def environment(self, spec: TrialSpec) -> dict[str, str]:
        return _device_env(spec)


RUNNERS: dict[str, type] = {"tiny": TinyLoopRunner, "train": FineTuneJobRunner}


def get_runner(name: str) -> TrialRunner:
    """The runner registered as ``name``; ``auto`` is the fine-tune job runner when :mod:`claraseg.train`
    can be imported, else the tiny loop."""
    if name == "auto":
        try:
            import claraseg.train.job  # noqa: F401

            name = "train"
        except ImportError:
            name = "tiny"
    if name not in RUNNERS:
        raise ConfigError(f"unknown trial runner {name!r}; choose one of {sorted(RUNNERS)} or 'auto'")
    return RUNNERS[name]()


def environment_for(runner: TrialRunner, spec: TrialSpec) -> dict[str, str]:
    """The full environment of a trial process: this one plus the runner's variables."""
    env = dict(os.environ)
    env.update(runner.environment(spec))
    return env
