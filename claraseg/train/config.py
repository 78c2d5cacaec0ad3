"""MONAI bundle training configs: loading, overrides, bring-your-own ``scripts/``, dry-run validation.

A fine-tune job reads these ids of the bundle's ``configs/train.json`` (see docs/training.md):

- ``network_def`` (the network; the bundle's ``models/model.pt`` weights are loaded into it),
- ``loss`` (segmentation bundles), ``optimizer`` (may reference ``@network_def``),
  ``lr_scheduler`` (optional, may reference ``@optimizer``),
- ``train#preprocessing`` and ``validate#preprocessing`` (dictionary transforms on ``image``/``label``),
- ``training`` (optional): the job settings of :data:`DEFAULT_SETTINGS`.

Everything is resolved by MONAI's :class:`~monai.bundle.ConfigParser` (``_target_``, ``@ref``,
``$expr``, ``%file#ref``); the bundle's metadata is readable as ``@_meta_#...``, its folder as
``@bundle_root``. Components a bundle brings in ``scripts/`` are named ``scripts.<module>.<Name>``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from claraseg.errors import ClarasegError, ConfigError
from claraseg.models.schema import JOB_DEFAULTS, check_job_settings

#: Job settings and their defaults (:class:`claraseg.models.schema.JobSettings`, which also checks them);
#: a bundle's ``training`` section, its ``train.json`` ``finetune`` section and the overrides change them.
DEFAULT_SETTINGS: dict[str, Any] = dict(JOB_DEFAULTS)
#: Config ids a job instantiates; ``lr_scheduler`` and ``loss`` are optional (see :func:`validate`).
REQUIRED_IDS = ("network_def", "optimizer", "train#preprocessing", "validate#preprocessing")
OPTIONAL_IDS = ("loss", "lr_scheduler")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML file into a dict, with a :class:`ConfigError` naming the file on failure."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text())
        else:
            data = json.loads(p.read_text())
    except (ValueError, ImportError) as e:  # yaml.YAMLError derives from Exception; caught below
        raise ConfigError(f"{p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'} ({e})") from None
    except Exception as e:
        raise ConfigError(f"{p}: cannot parse ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be an object (a mapping of config ids)")
    return data


def load_overrides(overrides: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """Overrides as a dict of config ids (``"optimizer#lr": 1e-3``) from a dict, or a JSON/YAML file."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return read_config_file(overrides)


def bundle_train_config_path(bundle: str | os.PathLike) -> Path | None:
    """The bundle's training config: ``configs/train.{json,yaml}``, an MMAR's ``config/config_train.json``,
    or None (the kind's defaults are used)."""
    b = Path(bundle)
    if not b.is_dir():
        raise ConfigError(f"{b}: the model bundle folder does not exist")
    for name in ("configs/train.json", "configs/train.yaml", "configs/train.yml", "config/config_train.json"):
        if (b / name).is_file():
            return b / name
    return None


def read_metadata(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (its ``claraseg`` section names the kind, labels, spacing)."""
    p = Path(bundle) / "configs" / "metadata.json"
    if not p.is_file():
        raise ConfigError(f"{bundle}: configs/metadata.json is missing; a model bundle needs it")
    return read_config_file(p)


def bundle_config(bundle: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The layered training config of a bundle before overrides: ``configs/inference.json`` <
    the kind's defaults (:mod:`claraseg.train.defaults`) < ``configs/train.json`` (or a translated MMAR)."""
    from claraseg.train.defaults import default_config, merge, recipe_config

    b = Path(bundle)
    inference: dict[str, Any] = {}
    if (b / "configs" / "inference.json").is_file():
        inference = read_config_file(b / "configs" / "inference.json")
    config = merge(inference, default_config(kind, read_metadata(b), inference))
    path = bundle_train_config_path(b)
    if path is not None:
        train = read_config_file(path)
        if path.name == "config_train.json":
            from claraseg.train.mmar import translate_mmar

            train = translate_mmar(train).config
        elif "claraseg_recipe" in train:
            train = recipe_config(train)
        else:
            # AutoML ``search`` lists are for `claraseg automl`; a plain job trains the values written beside them.
            from claraseg.automl.searchspace import strip_search

            train = strip_search(train)
        config = merge(config, train)
    return config


def make_parser(bundle: str | os.PathLike, overrides: Mapping[str, Any] | str | os.PathLike | None = None,
                extra: Mapping[str, Any] | None = None, kind: str | None = None):
    """A MONAI ``ConfigParser`` for the bundle's training config (:func:`bundle_config`) with the overrides applied.

    The bundle folder is put on ``sys.path`` (so ``scripts.*`` components import) and ``bundle_root``,
    ``_meta_`` (metadata.json) and ``extra`` ids (e.g. ``device``) are defined before the overrides.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle).resolve()
    meta = read_metadata(bundle)
    kind = kind or (meta.get("claraseg") or {}).get("kind", "segmentation")
    add_scripts_path(bundle)
    parser = ConfigParser(bundle_config(bundle, kind))
    parser["_meta_"] = meta
    parser["bundle_root"] = str(bundle)
    for key, value in (extra or {}).items():
        parser[key] = value
    for key, value in load_overrides(overrides).items():
        _set(parser, str(key), value)
    return parser


def _set(parser, key: str, value: Any) -> None:
    """Set one override; the parent of a nested id must exist (a typo would otherwise add a new id)."""
    parts = key.split("#")
    if len(parts) > 1:
        parent = "#".join(parts[:-1])
        try:
            container = parser[parent]
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"override {key!r}: the config has no element {parent!r}") from None
        if not isinstance(container, (dict, list)):
            raise ConfigError(f"override {key!r}: {parent!r} is a {type(container).__name__}, not an object")
    parser[key] = value


def add_scripts_path(bundle: str | os.PathLike) -> None:
    """Make the bundle's ``scripts`` package importable (bring-your-own components)."""
    root = str(Path(bundle).resolve())
    if (Path(root) / "scripts").is_dir() and root not in sys.path:
        sys.path.insert(0, root)
        # A previously imported ``scripts`` package of another bundle must not shadow this one.
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]


def settings_from(parser) -> dict[str, Any]:
    """The job settings: :data:`DEFAULT_SETTINGS` updated by the config's ``training`` element, checked by
    :func:`claraseg.models.schema.check_job_settings` (a :class:`ConfigError` names the setting)."""
    return check_job_settings(_parsed(parser, "training") if "training" in parser else {})


def _parsed(parser, key: str) -> Any:
    """``parser.get_parsed_content(key)`` with MONAI's errors turned into a :class:`ConfigError`."""
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except ConfigError:
        raise
    except Exception as e:  # MONAI raises ValueError/ModuleNotFoundError/RuntimeError/... for bad configs
        # A component of ours that refused its arguments says why; keep that message.
        cause, seen = e, set()
        while cause is not None and not isinstance(cause, ClarasegError) and id(cause) not in seen:
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, ClarasegError):
            cause = None
        if cause is not None:
            raise ConfigError(f"config element {key!r}: {cause}") from None
        raise ConfigError(_describe(parser, key, e)) from None


def _describe(parser, key: str, error: Exception) -> str:
    message = " ".join(str(error).split())
    where = key
    # Point at the exact element holding a bad reference or _target_, not only the top-level id.
    needle = None
    if "referring item `" in message:
        needle = "@" + message.split("referring item `", 1)[1].split("`", 1)[0].lstrip("@")
    elif "Cannot locate class or function path: '" in message:
        needle = message.split("Cannot locate class or function path: '", 1)[1].split("'", 1)[0]
    if needle:
        hits = _find(parser.get(key), needle, key)
        if hits:
            where = hits[0]
    if len(message) > 600:
        message = message[:600] + "..."
    return f"config element {where!r}: {message}"


def _find(node: Any, needle: str, path: str) -> list[str]:
    if isinstance(node, str):
        return [path] if needle in node else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out: list[str] = []
    for k, v in items:
        out += _find(v, needle, f"{path}#{k}")
    return out


def parsed(parser, key: str) -> Any:
    """Instantiate one config element, raising :class:`ConfigError` that names the element on failure."""
    if key not in parser:
        hint = (" (the default pipelines need claraseg.intensity in metadata.json, or a ScaleIntensityRanged in "
                "inference.json's preprocessing)") if key.endswith("#preprocessing") else ""
        raise ConfigError(f"the training config has no element {key!r}; a fine-tune job needs it{hint}")
    return _parsed(parser, key)


def validate(parser) -> dict[str, Any]:
    """Dry run: instantiate every component a job uses, before any data is touched or any epoch runs.

    Returns the instantiated components (``network_def``, ``optimizer``, ``loss``/``lr_scheduler`` when
    present, the two preprocessing pipelines) and ``settings``. Raises :class:`ConfigError` naming the
    failing element (wrong ``_target_``, broken ``@reference``, bad expression, missing element).
    """
    parser.parse(reset=True)
    out: dict[str, Any] = {"settings": settings_from(parser)}
    for key in REQUIRED_IDS:
        out[key] = parsed(parser, key)
    for key in OPTIONAL_IDS:
        out[key] = parsed(parser, key) if key in parser else None
    import torch

    if not isinstance(out["network_def"], torch.nn.Module):
        raise ConfigError(f"config element 'network_def' must build a torch.nn.Module, got {type(out['network_def']).__name__}")
    if not isinstance(out["optimizer"], torch.optim.Optimizer):
        raise ConfigError(f"config element 'optimizer' must build a torch optimizer, got {type(out['optimizer']).__name__}")
    for key in ("train#preprocessing", "validate#preprocessing"):
        if not callable(out[key]):
            raise ConfigError(f"config element {key!r} must build a callable transform, got {type(out[key]).__name__}")
    return out
