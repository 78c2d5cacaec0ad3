"""The spec of a fine-tune job (``<workdir>/job.json``); light to import (no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JobSpec:
    """What a job trains: written to ``<workdir>/job.json`` by :class:`~claraseg.train.job.FineTuneJob`."""

    bundle: str
    datalist: Any                       # a datalist file path, or the list/dict itself
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None             # name of the published model (default: the bundle's model name)
    registry: str | None = None         # models folder the new version is published into (default: the bundle's parent)
    structures: list[str] | None = None # interactive kinds: train on these structures only
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    threads: int | None = None          # torch CPU threads
    nproc: int = 1                      # processes (torchrun); > 1 runs DDP

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> JobSpec:
        return cls(**json.loads(Path(path).read_text()))
