"""Fine-tune job settings, training data from Slicer, and the two ways to run a job.

:class:`FineTuneSettings` are the panel's choices; :meth:`FineTuneSettings.overrides` turns them into
the job's config overrides (``training#max_iterations``, ``optimizer#lr``... see docs/training.md).
:class:`LocalJob` runs ``claraseg.train.FineTuneJob`` (its own process) on this machine;
:class:`RemoteJob` drives the server's ``/train/`` routes. Both expose ``start``, ``new_events``,
``stop``, ``resume`` and a :class:`~.progress.JobProgress`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError, TrainingDataError

from .progress import EventTail, JobProgress

#: Model kinds a job can adapt, and what the panel calls them.
TRAINABLE_KINDS = {"deepgrow2d": "DeepGrow 2D", "deepgrow3d": "DeepGrow 3D", "dextr3d": "DEXTR3D",
                   "segmentation": "Segmentation bundle"}
DEVICES = ("auto", "cpu", "cuda")
#: Polls without a new event after which a remote job's status is read (to notice a dead job process).
QUIET_POLLS = 15


@dataclass
class FineTuneSettings:
    """What the user chose in the panel. ``iterations`` counts optimizer steps; ``epochs`` (optional)
    stops earlier after that many passes over the training cases."""

    model: str
    kind: str
    iterations: int = 200
    epochs: int | None = None
    learning_rate: float = 1e-4
    val_split: float = 0.2
    amp: bool = True
    smart_cache: bool = False
    device: str = "auto"
    where: str = "local"
    seed: int = 0
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> FineTuneSettings:
        problems = []
        if not self.model:
            problems.append("pick the model to adapt")
        if self.kind not in TRAINABLE_KINDS:
            problems.append(f"'{self.kind}' models cannot be fine-tuned here (choose {', '.join(TRAINABLE_KINDS.values())})")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            problems.append("iterations must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            problems.append("epochs must be at least 1 (or empty)")
        if not (0 < self.learning_rate < 1):
            problems.append(f"learning rate {self.learning_rate:g} is out of range; use e.g. 1e-4")
        if not (0 < self.val_split < 1):
            problems.append("validation split must lie between 0 and 1 (e.g. 0.2)")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"device must be one of {DEVICES} or cuda:N")
        if self.where not in ("local", "server"):
            problems.append("run the job 'local' or on the 'server'")
        if problems:
            raise ConfigError("Fine-tune settings: " + "; ".join(problems) + ".")
        return self

    def overrides(self) -> dict[str, Any]:
        """Config overrides of the job (the names ``claraseg.train`` reads)."""
        out: dict[str, Any] = {
            "training#max_iterations": int(self.iterations),
            "optimizer#lr": float(self.learning_rate),
            "training#val_fraction": float(self.val_split),
            "training#amp": bool(self.amp),
            "training#dataset": "smart" if self.smart_cache else "cache",
            "training#seed": int(self.seed),
        }
        if self.epochs is not None:
            out["training#max_epochs"] = int(self.epochs)
        out.update(self.extra)
        return out


@dataclass
class Case:
    """One training pair exported from Slicer: image and label map files plus label names."""

    image: str
    label: str
    labels: dict[int, str] = field(default_factory=dict)
    name: str = ""


def settings_from_panel(models: Sequence[Any], model_name: str, *, iterations: int, epochs: int, learning_rate: float,
                        val_split: float, amp: bool, smart_cache: bool, device: str, on_server: bool,
                        extra: dict[str, Any] | None = None) -> FineTuneSettings:
    """The panel's values as settings (``epochs`` 0 = no epoch limit; the model's kind looked up)."""
    model = next((m for m in models if m.name == model_name), None)
    return FineTuneSettings(model=model_name or "", kind=model.kind if model else "", iterations=int(iterations),
                            epochs=int(epochs) or None, learning_rate=float(learning_rate), val_split=float(val_split),
                            amp=bool(amp), smart_cache=bool(smart_cache), device=str(device),
                            where="server" if on_server else "local", extra=dict(extra or {}))


def write_datalist(cases: Sequence[Case], folder: str | os.PathLike) -> Path:
    """Write ``datalist.json`` (a list of ``{image, label, labels}``, paths relative to it)."""
    if not cases:
        raise TrainingDataError("select at least one volume with a segmentation (or datastore item) to train on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for c in cases:
        for p in (c.image, c.label):
            if not Path(p).is_file():
                raise TrainingDataError(f"{p}: the exported file is missing")
        if c.labels and not any(int(v) != 0 for v in c.labels):
            raise TrainingDataError(f"{c.name or c.label}: the segmentation has no segments")
        entries.append({"image": os.path.relpath(c.image, folder), "label": os.path.relpath(c.label, folder),
                        "labels": {str(k): v for k, v in c.labels.items()}, **({"name": c.name} if c.name else {})})
    path = folder / "datalist.json"
    from claraseg.io import write_text_atomic

    write_text_atomic(path, json.dumps(entries, indent=1))
    return path


def check_enough_cases(n_cases: int, kind: str, val_split: float) -> None:
    """Segmentation bundles hold out whole cases: they need two or more. Interactive kinds hold out
    structures and can train on a single volume."""
    if n_cases < 1:
        raise TrainingDataError("select at least one volume with a segmentation to train on")
    if kind == "segmentation" and n_cases < 2:
        raise TrainingDataError(
            f"a segmentation bundle holds out {val_split:.0%} of the cases for validation: select at least two "
            "segmented volumes (interactive models can train on one, holding out structures instead)")


def bundle_for(model: Any, models_dir: str | os.PathLike | None = None) -> Path:
    """The bundle folder of a model descriptor: ``extra['bundle']`` (local backends say where), else
    ``models_dir/<name>``."""
    extra = getattr(model, "extra", {}) or {}
    for key in ("bundle", "path", "bundle_path"):
        if extra.get(key):
            return Path(extra[key])
    if models_dir is None:
        raise ConfigError(f"the backend does not say where model '{model.name}' is stored; set the models folder")
    return Path(models_dir) / model.name


class LocalJob:
    """A ``claraseg.train.FineTuneJob`` in its own process on this machine, followed through its events file."""

    def __init__(self, bundle: str | os.PathLike, datalist: str | os.PathLike, settings: FineTuneSettings,
                 workdir: str | os.PathLike, registry: str | os.PathLike | None = None) -> None:
        from claraseg.train.job import FineTuneJob

        self.settings = settings
        self.job = FineTuneJob(bundle, datalist, settings.overrides(), workdir, name=settings.name or None,
                               registry=registry, device=settings.device)
        self.tail = EventTail(self.job.events_path)
        self.progress = JobProgress()

    @classmethod
    def open(cls, workdir: str | os.PathLike) -> LocalJob:
        """Follow (or resume) a job started earlier, e.g. before Slicer was restarted."""
        from claraseg.train.job import FineTuneJob

        self = cls.__new__(cls)
        self.job = FineTuneJob.open(workdir)
        self.settings = None
        self.tail = EventTail(self.job.events_path)
        self.progress = JobProgress()
        return self

    @property
    def id(self) -> str:
        return self.job.id

    def start(self) -> LocalJob:
        self.job.start()
        return self

    def new_events(self) -> list[dict[str, Any]]:
        events = self.tail.read_new()
        self.progress.update_all(events)
        if not events and not self.progress.finished and self.progress.events_seen and not self.job.running():
            self.progress.state = "interrupted"
        return events

    def stop(self) -> None:
        """Ask the job to stop after its current iteration (returns at once; the events say when it did)."""
        (self.job.workdir / "cancel").write_text(str(time.time()))

    def resume(self) -> LocalJob:
        self.job.resume()
        self.progress.state = "preparing"
        return self


class RemoteJob:
    """A job on the annotation server (``/train/`` routes), polled with ``GET /train/{id}/events?since=N``."""

    def __init__(self, url: str, token: str | None, model: str, settings: FineTuneSettings,
                 images: Sequence[str] = (), session: Any = None, timeout: float = 30.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.model = model
        self.settings = settings
        self.images = list(images)
        self.http = session or requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.job_id: str | None = None
        self.progress = JobProgress()
        self._since = 0
        self._quiet = 0

    @property
    def id(self) -> str:
        return self.job_id or ""

    def _check(self, r) -> Any:
        if r.status_code >= 400:
            try:
                detail = r.json()
                message = detail.get("message") or detail.get("detail") or r.text
            except ValueError:
                message = r.text
            raise ConfigError(f"the server refused ({r.status_code}): {message}")
        return r.json()

    def start(self) -> RemoteJob:
        body = {"name": self.settings.name or None, "overrides": self.settings.overrides(),
                "images": self.images, "device": self.settings.device}
        answer = self._check(self.http.post(f"{self.url}/train/{self.model}", json=body, timeout=self.timeout))
        self.job_id = str(answer.get("id") or answer.get("job_id") or answer.get("name"))
        return self

    def new_events(self) -> list[dict[str, Any]]:
        answer = self._check(self.http.get(f"{self.url}/train/{self.job_id}/events", params={"since": self._since},
                                           timeout=self.timeout))
        events = [e for e in answer.get("events", []) if isinstance(e, dict)]
        self._since += len(events)
        self.progress.update_all(events)
        self._quiet = 0 if events else self._quiet + 1
        if self.progress.finished or self._quiet >= QUIET_POLLS:
            # The job's status also tells a process that died without a final event ("interrupted"),
            # and reading it makes the server rescan its models for the version just published.
            self._quiet = 0
            status = self.status()
            if status.get("state") == "interrupted" and not self.progress.finished:
                self.progress.state = "interrupted"
        return events

    def status(self) -> dict[str, Any]:
        return self._check(self.http.get(f"{self.url}/train/{self.job_id}", timeout=self.timeout))

    def stop(self) -> None:
        # The server waits for the job to write its final state (up to a minute) before answering.
        self._check(self.http.delete(f"{self.url}/train/{self.job_id}", timeout=max(self.timeout, 90.0)))

    def resume(self) -> RemoteJob:
        body = {"name": self.settings.name or None, "overrides": self.settings.overrides(), "images": self.images,
                "resume": self.job_id}
        self._check(self.http.post(f"{self.url}/train/{self.model}", json=body, timeout=self.timeout))
        self.progress.state = "preparing"
        return self
