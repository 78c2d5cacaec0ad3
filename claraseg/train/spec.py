"""The spec of a fine-tune job (``<workdir>/job.json``); light to import (no torch)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError
from claraseg.io import write_text_atomic


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
        write_text_atomic(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> JobSpec:
        return cls(**json.loads(Path(path).read_text()))


#: A published model's name: one folder name inside the models folder, never a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> str:
    """``name`` if it can only name a folder inside the models folder, else :class:`ConfigError`."""
    if not isinstance(name, str) or not MODEL_NAME.match(name) or ".." in name:
        raise ConfigError(f"invalid model name {str(name)[:80]!r}: use 1-128 letters, digits, '_', '.' or '-', "
                          "not starting with '.', without '..' or '@'")
    return name
