"""Search spaces declared inside a bundle config, next to the component they change.

A ``search`` list may sit in any object of the training config (in the spirit of Clara Train's
``search`` element). Each element names one searched value and the args it drives::

    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network_def.parameters()", "lr": 1e-4,
                  "search": [{"domain": "lr", "type": "float", "args": ["lr"],
                              "targets": [1e-4, 3e-2], "log": true}]}

- ``type``: ``float`` or ``int`` (``targets`` = ``[min, max]``, optional ``log`` and ``step``) or ``enum``
  (``targets`` = a list of choices, each a list with one value per arg; optional ``labels`` name them).
- ``args``: keys of the object holding the ``search`` list (nested keys joined with ``#``); a float/int
  value drives every arg (aliases), an enum choice gives one value per arg. An arg may name a whole
  component, e.g. ``"args": ["network_def"]`` in the root object for architecture search.
- ``domain``: the kind of value (``lr``, ``net``, ``loss``, ``transform``...), also the parameter name
  unless ``name`` is given; parameter names must be unique.

The config's current values are the *default settings*; they must lie inside the search space, so that
trial 0 can run them and the best trial can be compared with them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import inspect
import json
import math
import pydoc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from claraseg.errors import ConfigError

#: The key of a search list inside a config object.
SEARCH_KEY = "search"
#: Separator of nested config ids, as the training part's overrides use it.
ID_SEP = "#"
TYPES = ("float", "int", "enum")
_ELEMENT_KEYS = {"domain", "type", "args", "targets", "log", "step", "labels", "name"}
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class SearchElement:
    """One searched value: a float/int range or an enum of choices, driving one or more config ids."""

    name: str
    domain: str
    type: str
    ids: tuple[str, ...]  # full config ids of the args, e.g. ("optimizer#lr",)
    where: str  # "search element 0 (domain 'lr') of 'optimizer'", for messages
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[tuple[Any, ...], ...] = ()  # enum: one tuple of arg values per choice
    labels: tuple[Any, ...] = ()  # enum: the Optuna categorical values naming the choices
    default: Any = None  # the config's current value (enum: its label)

    def distribution(self):
        """The Optuna distribution of this element."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return CategoricalDistribution(list(self.labels))

    def overrides(self, value: Any) -> dict[str, Any]:
        """The config overrides (``{id: value}``) for one value of this element (an enum label)."""
        if self.type == "enum":
            try:
                choice = self.choices[list(self.labels).index(value)]
            except ValueError:
                raise ConfigError(f"{self.where}: {value!r} is not one of its choices {list(self.labels)}") from None
            return {i: copy.deepcopy(v) for i, v in zip(self.ids, choice)}
        value = int(value) if self.type == "int" else float(value)
        return dict.fromkeys(self.ids, value)


@dataclass
class SearchSpace:
    """The validated search elements of a config, and the config without its ``search`` lists."""

    elements: list[SearchElement]
    config: dict[str, Any] = field(repr=False)  # the training config with every ``search`` list removed

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.elements]

    def distributions(self) -> dict[str, Any]:
        """``{parameter name: Optuna distribution}``."""
        return {e.name: e.distribution() for e in self.elements}

    @property
    def enum_only(self) -> bool:
        """True when every element is an enum (a grid search covers the space)."""
        return all(e.type == "enum" for e in self.elements)

    def grid(self) -> dict[str, list[Any]]:
        """The grid of an enum-only space, ``{name: labels}``."""
        return {e.name: list(e.labels) for e in self.elements}

    def grid_size(self) -> int:
        return math.prod(len(e.labels) for e in self.elements)

    def defaults(self) -> dict[str, Any]:
        """The parameters that reproduce the config's current settings."""
        return {e.name: e.default for e in self.elements}

    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Config overrides (``{"optimizer#lr": 0.003, ...}``) for a full set of parameters."""
        out: dict[str, Any] = {}
        for e in self.elements:
            if e.name not in params:
                raise ConfigError(f"parameter {e.name!r} is missing (the search space has {self.names})")
            out.update(e.overrides(params[e.name]))
        return out

    def fingerprint(self) -> str:
        """A short hash of the space, to refuse resuming a study with a different one."""
        desc = [[e.name, e.type, e.ids, e.low, e.high, e.log, e.step, e.labels, e.choices] for e in self.elements]
        return hashlib.sha1(json.dumps(desc, default=str).encode()).hexdigest()[:16]

    def describe(self) -> list[dict[str, Any]]:
        """A JSON-able description (for handlers and reports)."""
        out = []
        for e in self.elements:
            d: dict[str, Any] = {"name": e.name, "domain": e.domain, "type": e.type, "ids": list(e.ids),
                                 "default": e.default}
            if e.type == "enum":
                d["choices"] = list(e.labels)
            else:
                d.update(low=e.low, high=e.high, log=e.log)
            out.append(d)
        return out


def parse_search_space(config: Mapping[str, Any]) -> SearchSpace:
    """Find, validate and remove every ``search`` list of a training config.

    Raises :class:`ConfigError` naming the offending element for: a malformed element, an unknown type,
    an empty enum, ``min > max``, an arg the component does not have, a component whose ``_target_``
    cannot be found, a default value outside the space, or duplicate parameter names. Nothing is trained.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("the training config must be an object")
    clean = copy.deepcopy(dict(config))
    found: list[tuple[str, dict[str, Any], list[Any]]] = []
    _collect(clean, "", found)
    elements: list[SearchElement] = []
    seen: dict[str, str] = {}
    for path, holder, search in found:
        comp = path or "<root>"
        if not isinstance(search, list):
            raise ConfigError(f"'{SEARCH_KEY}' of {comp!r} must be a list of search elements")
        for index, raw in enumerate(search):
            element = _element(clean, path, holder, index, raw)
            if element.name in seen:
                raise ConfigError(f"{element.where}: parameter name {element.name!r} is also used by {seen[element.name]}; "
                                  "give one of them a distinct \"name\"")
            seen[element.name] = element.where
            elements.append(element)
    return SearchSpace(elements, clean)


def strip_search(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without its ``search`` lists (what a trial runs), not validated."""
    clean = copy.deepcopy(dict(config))
    _collect(clean, "", [])
    return clean


def _collect(node: Any, path: str, found: list) -> None:
    """Remove ``search`` lists from ``node`` in place, recording ``(path, holder, list)``."""
    if isinstance(node, dict):
        if SEARCH_KEY in node:
            found.append((path, node, node.pop(SEARCH_KEY)))
        for key, value in node.items():
            _collect(value, f"{path}{ID_SEP}{key}" if path else str(key), found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _collect(value, f"{path}{ID_SEP}{i}" if path else str(i), found)


def _element(config: dict, path: str, holder: dict, index: int, raw: Any) -> SearchElement:
    comp = path or "<root>"
    domain = raw.get("domain") if isinstance(raw, dict) else None
    where = f"search element {index} (domain {domain!r}) of {comp!r}" if domain else f"search element {index} of {comp!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object with domain, type, args, targets")
    unknown = sorted(set(raw) - _ELEMENT_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ELEMENT_KEYS)}")
    for key in ("domain", "type", "args", "targets"):
        if key not in raw:
            raise ConfigError(f"{where}: '{key}' is missing")
    if not isinstance(domain, str) or not domain:
        raise ConfigError(f"{where}: 'domain' must be a non-empty string")
    kind = raw["type"]
    if kind not in TYPES:
        raise ConfigError(f"{where}: type {kind!r} is not one of {list(TYPES)}")
    args = raw["args"]
    if not isinstance(args, list) or not args or not all(isinstance(a, str) and a for a in args):
        raise ConfigError(f"{where}: 'args' must be a non-empty list of arg names")
    if len(set(args)) != len(args):
        raise ConfigError(f"{where}: 'args' lists an arg twice")
    name = raw.get("name", domain)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    ids, currents = [], []
    for arg in args:
        full, current = _resolve_arg(path, holder, arg, where)
        ids.append(full)
        currents.append(current)
    targets = raw["targets"]
    if kind == "enum":
        return _enum(raw, name, domain, where, tuple(ids), targets, currents)
    return _range(raw, name, domain, kind, where, tuple(ids), targets, currents, config)


def _range(raw, name, domain, kind, where, ids, targets, currents, config) -> SearchElement:
    if not isinstance(targets, list) or len(targets) != 2:
        raise ConfigError(f"{where}: a {kind} element needs targets [min, max], got {targets!r}")
    low, high = targets
    number = int if kind == "int" else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)):
        raise ConfigError(f"{where}: targets [min, max] must be {'integers' if kind == 'int' else 'numbers'}, got {targets!r}")
    if low > high:
        raise ConfigError(f"{where}: min {low} > max {high} in targets")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs min > 0, got {low}")
    step = raw.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise ConfigError(f"{where}: 'step' must be a positive {'integer' if kind == 'int' else 'number'}")
    if step is not None and log:
        raise ConfigError(f"{where}: 'step' and 'log' cannot be combined")
    values = {json.dumps(_numeric(c, config, where, ids[i])) for i, c in enumerate(currents)}
    if len(values) > 1:
        raise ConfigError(f"{where}: its aliased args {list(ids)} have different current values; make them equal")
    default = _numeric(currents[0], config, where, ids[0])
    if default is None or isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ConfigError(f"{where}: the current value of {ids[0]!r} ({default!r}) is not a number")
    if not low <= default <= high:
        raise ConfigError(f"{where}: the config's current value {default} of {ids[0]!r} is outside [{low}, {high}]; "
                          "widen the range so that the default settings are part of the search")
    default = int(default) if kind == "int" else float(default)
    return SearchElement(name, domain, kind, ids, where, low=low, high=high, log=log, step=step, default=default)


def _enum(raw, name, domain, where, ids, targets, currents) -> SearchElement:
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"{where}: an enum needs at least one choice in 'targets' (it is empty)")
    choices = []
    for i, choice in enumerate(targets):
        if not isinstance(choice, list) or len(choice) != len(ids):
            raise ConfigError(f"{where}: choice {i} must be a list of {len(ids)} value(s), one per arg {list(ids)}, "
                              f"got {choice!r}")
        choices.append(tuple(choice))
    labels = raw.get("labels")
    if labels is None:
        labels = _auto_labels(choices)
    elif (not isinstance(labels, list) or len(labels) != len(choices) or len({json.dumps(x) for x in labels}) != len(labels)
          or not all(isinstance(x, _SCALARS) for x in labels)):
        raise ConfigError(f"{where}: 'labels' must be {len(choices)} distinct strings or numbers, one per choice")
    current = tuple(currents)
    matches = [i for i, c in enumerate(choices) if _same(c, current)]
    if not matches:
        raise ConfigError(f"{where}: the config's current value of {list(ids)} is not one of the targets; "
                          "add it as a choice so that the default settings are part of the search")
    return SearchElement(name, domain, "enum", ids, where, choices=tuple(choices), labels=tuple(labels),
                         default=labels[matches[0]])


def _auto_labels(choices: list[tuple[Any, ...]]) -> list[Any]:
    """Readable, distinct names for enum choices: the value itself, a component's target, or its JSON."""
    def one(choice: tuple[Any, ...]) -> Any:
        if len(choice) == 1 and isinstance(choice[0], _SCALARS):
            return choice[0]
        parts = []
        for v in choice:
            if isinstance(v, dict) and isinstance(v.get("_target_"), str):
                parts.append(v["_target_"].rsplit(".", 1)[-1])
            else:
                parts.append(json.dumps(v, separators=(",", ":")))
        text = "|".join(parts)
        return text if len(text) <= 60 else None

    labels = [one(c) for c in choices]
    if None not in labels and len({json.dumps(x) for x in labels}) == len(labels):
        return labels
    if all(isinstance(x, str) for x in labels):
        return [f"{i}:{x}" for i, x in enumerate(labels)]
    return [f"choice{i}" for i in range(len(choices))]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _numeric(value: Any, config: dict, where: str, full_id: str) -> Any:
    """A current value, following a plain ``@ref`` to another element (``"lr": "@learning_rate"``)."""
    seen = 0
    while isinstance(value, str) and value.startswith("@") and seen < 10:
        ref = value[1:].replace("::", ID_SEP)
        found, value = _lookup(config, ref)
        if not found:
            raise ConfigError(f"{where}: {full_id!r} refers to {ref!r}, which the config does not have")
        seen += 1
    return value


def _lookup(config: Any, full_id: str) -> tuple[bool, Any]:
    node = config
    for key in full_id.split(ID_SEP):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False, None
    return True, node


def _resolve_arg(path: str, holder: dict, arg: str, where: str) -> tuple[str, Any]:
    """The full id of ``arg`` (relative to ``holder``) and its current value; checks that it exists."""
    keys = arg.replace("::", ID_SEP).split(ID_SEP)
    node: Any = holder
    node_path = path
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        _check_component(node, node_path, where)
        if isinstance(node, dict) and key in node:
            child = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            child = node[int(key)]
        elif last and isinstance(node, dict) and "_target_" in node:
            accepted, default = _signature_default(node["_target_"], key)
            if not accepted:
                raise ConfigError(f"{where}: unknown arg {arg!r}: {node['_target_']!r} (at {node_path or '<root>'!r}) "
                                  f"has no parameter {key!r}")
            child = default
        else:
            kind = "component" if not last else "arg"
            raise ConfigError(f"{where}: unknown {kind} {arg!r}: {node_path or '<root>'!r} has no element {key!r}")
        node = child
        node_path = f"{node_path}{ID_SEP}{key}" if node_path else key
    return node_path, node


def _check_component(node: Any, node_path: str, where: str) -> None:
    if isinstance(node, dict) and isinstance(node.get("_target_"), str) and resolve_target(node["_target_"]) is None:
        raise ConfigError(f"{where}: unknown component {node['_target_']!r} at {node_path or '<root>'!r} "
                          "(no MONAI component or importable class of that name)")


def resolve_target(target: str) -> Any:
    """The class or function a ``_target_`` names (MONAI short names or dotted paths), or None."""
    if target.startswith(("$", "@")):
        return target  # an expression or reference: resolved only when the trial runs
    module = _locator().get_component_module_name(target)
    if isinstance(module, list):
        module = module[0]
    if isinstance(module, str):
        try:
            return getattr(importlib.import_module(module), target)
        except (ImportError, AttributeError):
            return None
    try:
        return pydoc.locate(target)
    except pydoc.ErrorDuringImport:
        return None


@functools.lru_cache(maxsize=1)
def _locator():
    """MONAI's component locator (it indexes every MONAI module once; keep one)."""
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()


def _signature_default(target: str, key: str) -> tuple[bool, Any]:
    """Whether ``target`` accepts keyword ``key``, and that parameter's default value (None if none)."""
    obj = resolve_target(target)
    if obj is None or isinstance(obj, str):
        return isinstance(obj, str), None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return True, None  # builtins without a signature: accept, as MONAI would try
    params = sig.parameters
    if key in params and params[key].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        default = params[key].default
        return True, None if default is inspect.Parameter.empty else default
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True, None
    return False, None


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with ``{id: value}`` overrides set (ids nested with ``#``), in order."""
    out = copy.deepcopy(dict(config))
    for full_id, value in overrides.items():
        keys = str(full_id).replace("::", ID_SEP).split(ID_SEP)
        found, parent = _lookup(out, ID_SEP.join(keys[:-1])) if len(keys) > 1 else (True, out)
        if not found or not isinstance(parent, (dict, list)):
            raise ConfigError(f"override {full_id!r}: the config has no element {ID_SEP.join(keys[:-1])!r}")
        if isinstance(parent, list):
            parent[int(keys[-1])] = copy.deepcopy(value)
        else:
            parent[keys[-1]] = copy.deepcopy(value)
    return out
