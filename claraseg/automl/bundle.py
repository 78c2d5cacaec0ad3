"""The bundle an AutoML search runs: its training config and the copy trials use."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError
from claraseg.io import write_text_atomic

#: Where a bundle keeps its training config, in the order they are looked for.
TRAIN_CONFIGS = ("configs/train.json", "configs/train.yaml", "configs/train.yml")


def train_config_path(bundle: str | os.PathLike) -> Path:
    """The bundle's ``configs/train.{json,yaml}``; :class:`ConfigError` if there is none."""
    b = Path(bundle)
    if not b.is_dir():
        raise ConfigError(f"{b}: the bundle folder does not exist")
    for name in TRAIN_CONFIGS:
        if (b / name).is_file():
            return b / name
    raise ConfigError(f"{b}: no training config (expected one of {list(TRAIN_CONFIGS)})")


def read_config(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's training config as a dict."""
    path = train_config_path(bundle)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except Exception as e:  # json/yaml parse errors of several types
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object of config ids")
    return data


def write_trial_bundle(bundle: str | os.PathLike, dest: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Copy ``bundle`` to ``dest`` with its training config replaced by ``config`` (search lists removed).

    Trials run this copy, so components never see a ``search`` key and nothing a trial writes into its
    bundle (a published model) reaches the original. An existing copy (a resumed search) is refreshed.
    """
    src, dst = Path(bundle).resolve(), Path(dest)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for name in TRAIN_CONFIGS:
        (dst / name).unlink(missing_ok=True)
    write_text_atomic(dst / "configs" / "train.json", json.dumps(config, indent=1))
    return dst
