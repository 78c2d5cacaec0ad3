"""Translate a Clara Train MMAR ``config/config_train.json`` into a MONAI bundle training config.

Clara (v3/v4) wrote components as ``{"name": "ClassName", "args": {...}}`` (a class looked up in Clara's
or MONAI's packages) or ``{"path": "my.module.Class", "args": {...}}`` (bring your own code), and
variables as ``"{name}"`` strings filled from the file's top level. A bundle writes the same component
as ``{"_target_": "ClassName", ...args}``; ``@id`` references and ``$`` expressions replace the variables.
The mapping (docs/training.md has the table):

==============================================  ==================================================
MMAR                                             bundle config id
==============================================  ==================================================
``train.model``                                  ``network_def``
``train.loss``                                   ``loss``
``train.optimizer`` (``params`` implied)         ``optimizer`` (``params: $@network_def.parameters()``)
``train.lr_scheduler``                           ``lr_scheduler``
``train.pre_transforms`` (list)                  ``train#preprocessing`` (a ``Compose``)
``validate.pre_transforms``                      ``validate#preprocessing``
``epochs``, ``train.dataloader.args.batch_size`` ``training#max_epochs``, ``training#batch_size``
``train.dataset.name`` (Cache/SmartCache...)    ``training#dataset`` (+ ``cache_rate``/``replace_rate``)
``amp``, ``determinism.random_seed``            ``training#amp``, ``training#deterministic``/``seed``
==============================================  ==================================================

Handlers, metrics, inferers and the trainer have no counterpart (the job runner provides them); they
are listed in :attr:`MmarTranslation.dropped`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from claraseg.errors import ConfigError

#: Clara class names whose MONAI name differs.
RENAMED = {"AddChanneld": "EnsureChannelFirstd", "MeanDice": "DiceMetric", "Dice": "DiceLoss"}
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class MmarTranslation:
    """The translated config, the MMAR elements with no counterpart, and notes for the user."""

    config: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Fill ``"{var}"`` strings from the MMAR's top-level variables (a whole-string match keeps the type)."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def component(element: Any, where: str) -> dict[str, Any]:
    """``{"name"|"path": ..., "args": {...}}`` -> ``{"_target_": ..., **args}``."""
    if not isinstance(element, dict) or not ({"name", "path"} & set(element)):
        raise ConfigError(f"MMAR element {where!r}: expected {{'name' or 'path': ..., 'args': {{...}}}}, got {element!r}")
    target = element.get("path") or element["name"]
    target = RENAMED.get(target, target)
    args = element.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"MMAR element {where!r}: 'args' must be an object")
    return {"_target_": target, **args}


def translate_mmar(mmar: dict[str, Any]) -> MmarTranslation:
    """Translate an MMAR training config (see the module docstring for the mapping)."""
    if "train" not in mmar or not isinstance(mmar["train"], dict):
        raise ConfigError("not an MMAR config_train.json: no 'train' section")
    variables = {k: v for k, v in mmar.items() if not isinstance(v, (dict, list))}
    m = _substitute(mmar, variables)
    train, validate = m["train"], m.get("validate") or {}
    out: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    result = MmarTranslation(out)
    if "model" in train:
        out["network_def"] = component(train["model"], "train.model")
    if "loss" in train:
        out["loss"] = component(train["loss"], "train.loss")
    if "optimizer" in train:
        opt = component(train["optimizer"], "train.optimizer")
        if "." not in opt["_target_"]:
            opt["_target_"] = f"torch.optim.{opt['_target_']}"
        opt.setdefault("params", "$@network_def.parameters()")
        out["optimizer"] = opt
    if "lr_scheduler" in train:
        sched = component(train["lr_scheduler"], "train.lr_scheduler")
        if "." not in sched["_target_"]:
            sched["_target_"] = f"torch.optim.lr_scheduler.{sched['_target_']}"
        sched.setdefault("optimizer", "@optimizer")
        out["lr_scheduler"] = sched
    for section, key in ((train, "train"), (validate, "validate")):
        if "pre_transforms" in section:
            steps = [component(t, f"{key}.pre_transforms[{i}]") for i, t in enumerate(section["pre_transforms"])]
            out[key] = {"preprocessing": {"_target_": "Compose", "transforms": steps}}
    if "epochs" in m:
        settings["max_epochs"] = int(m["epochs"])
        settings["max_iterations"] = 10**9  # the epochs decide
    loader_args = (train.get("dataloader") or {}).get("args") or {}
    if "batch_size" in loader_args:
        settings["batch_size"] = int(loader_args["batch_size"])
    if "num_workers" in loader_args:
        settings["num_workers"] = int(loader_args["num_workers"])
    dataset = train.get("dataset") or {}
    name = str(dataset.get("name") or dataset.get("path") or "")
    args = dataset.get("args") or {}
    if name:
        settings["dataset"] = ("smart" if "SmartCache" in name else "persistent" if "Persistent" in name
                               else "cache" if "Cache" in name else "plain")
        for k in ("cache_rate", "replace_rate"):
            if k in args:
                settings[k] = float(args[k])
        if dataset.get("data_list_file_path"):
            result.notes.append(f"the MMAR's datalist {dataset['data_list_file_path']!r} is not read: give the job its datalist")
    if "amp" in m:
        settings["amp"] = bool(m["amp"])
    det = m.get("determinism") or {}
    if "random_seed" in det:
        settings["seed"] = int(det["random_seed"])
        settings["deterministic"] = True
    if "val_interval" in m:
        result.notes.append("val_interval counts epochs in an MMAR and iterations here; set training#val_interval")
    if settings:
        out["training"] = settings
    handled = {"model", "loss", "optimizer", "lr_scheduler", "pre_transforms", "dataloader", "dataset"}
    result.dropped = [f"train.{k}" for k in train if k not in handled]
    result.dropped += [f"validate.{k}" for k in validate if k != "pre_transforms"]
    return result
