"""What a network request may put into a job: plain data on an allow-list, checked before any file exists.

A fine-tune job's overrides are applied to a MONAI bundle config, whose parser evaluates ``$`` expressions,
resolves ``@`` references and ``%`` macros and instantiates ``_target_`` components. None of that may come
from the network: an override is accepted only when its key is on :func:`override_rule`'s allow-list and
its value is a plain number, boolean, ``null`` or (for a few settings) a word from a fixed set. Job
names, devices and AutoML options are checked the same way (:func:`check_job_request`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from claraseg.errors import ConfigError

from .datastore import InvalidIdError, check_id

#: The job settings a client may change (``training#<name>``), with the types of their values.
TRAINING_SETTINGS: dict[str, tuple[type, ...]] = {
    "max_iterations": (int,), "max_epochs": (int, type(None)), "max_time_s": (float, int, type(None)),
    "batch_size": (int,), "grad_accumulation": (int,), "num_workers": (int,), "dataset": (str,),
    "cache_rate": (float, int), "replace_rate": (float, int), "copy_cache": (bool,), "val_interval": (int,),
    "checkpoint_interval": (int,), "log_interval": (int,), "amp": (bool,), "deterministic": (bool,),
    "seed": (int,), "val_fraction": (float, int), "min_val_cases": (int,), "publish": (bool,),
    "require_improvement": (bool,), "sw_batch_size": (int,),
    # Weight-space ensembling chooses among candidates that are each held to the bundle's max_label_drop
    # (which no client may change), and its interpolations lie between the starting and the tuned weights:
    # a request can pick how far back toward the start to step, never publish a model the guard refused.
    "wise": (float, int, str, type(None)),
}
#: The only words a string-valued override may hold.
WORDS = {"training#dataset": ("plain", "cache", "smart", "persistent"), "training#wise": ("auto",)}
#: Config sections whose numeric/boolean parameters may be set one level deep (``optimizer#lr``).
PARAMETER_SECTIONS = ("optimizer", "lr_scheduler", "loss")
_PARAM = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TRANSFORM_PROB = re.compile(r"^(train|validate)#preprocessing#transforms#[0-9]{1,3}#prob$")
MAX_OVERRIDES = 64
MAX_MAGNITUDE = 1e12
#: Devices a job may run on.
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$")


def override_rule(key: str) -> tuple[tuple[type, ...], tuple[float, float] | None] | None:
    """The allowed value types (and numeric range) of an override key, or None if the key is not allowed."""
    if not isinstance(key, str):
        return None
    section, _, rest = key.partition("#")
    if section == "training" and rest in TRAINING_SETTINGS:
        return TRAINING_SETTINGS[rest], None
    if section in PARAMETER_SECTIONS and _PARAM.match(rest) and not rest.startswith("_"):
        return (float, int, bool), None
    if _TRANSFORM_PROB.match(key):
        return (float, int), (0.0, 1.0)
    return None


def check_overrides(overrides: Any) -> dict[str, Any]:
    """Return the overrides if every key is allowed and every value plain data; raise :class:`ConfigError`."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError("'overrides' must be an object of config ids -> values, e.g. {\"optimizer#lr\": 1e-4}")
    if len(overrides) > MAX_OVERRIDES:
        raise ConfigError(f"{len(overrides)} overrides; at most {MAX_OVERRIDES} are accepted")
    allowed = ("training#<setting> (" + ", ".join(TRAINING_SETTINGS) + "), optimizer#<param>, lr_scheduler#<param>, "
               "loss#<param> (numbers and booleans), train#preprocessing#transforms#N#prob")
    for key, value in overrides.items():
        shown = key if isinstance(key, str) and len(key) <= 80 else f"{str(key)[:80]}..."
        rule = override_rule(key)
        if rule is None:
            raise ConfigError(f"override {shown!r} is not allowed from a client; allowed: {allowed}. Config "
                              "expressions ($...), references (@...), macros (%...), _target_ and imports never are")
        types, bounds = rule
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"override {shown!r}: a boolean is not a valid value")
        if not isinstance(value, types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"override {shown!r}: expected {names}, got {type(value).__name__}")
        if isinstance(value, str) and value not in WORDS.get(key, ()):
            raise ConfigError(f"override {shown!r}: {value[:40]!r} is not one of {list(WORDS.get(key, ()))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
                raise ConfigError(f"override {shown!r}: {value!r} is not a finite number of sensible size")
            if bounds and not bounds[0] <= value <= bounds[1]:
                raise ConfigError(f"override {shown!r}: {value!r} is outside {list(bounds)}")
        if key == "training#wise":
            from claraseg.models.schema import check_job_settings

            check_job_settings({"wise": value})  # a number must lie in (0, 1]: refused here, not by a failed job
    return dict(overrides)


class AutoMLOptions(BaseModel):
    """What a client may set of an AutoML search (the ``claraseg automl`` flags); types are strict."""

    model_config = ConfigDict(extra="forbid", strict=True)
    trials: Optional[int] = Field(None, ge=1, le=1000)
    timeout_s: Optional[float] = Field(None, gt=0, le=30 * 86400)
    workers: Optional[int] = Field(None, ge=1, le=64)
    sampler: Optional[str] = Field(None, pattern=r"^[a-z_]{1,32}$")
    pruner: Optional[str] = Field(None, pattern=r"^[a-z_]{1,32}$")
    startup_trials: Optional[int] = Field(None, ge=0, le=1000)
    warmup_steps: Optional[int] = Field(None, ge=0, le=10**7)
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    runner: Optional[str] = Field(None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    default_trial: Optional[bool] = None
    trial_timeout_s: Optional[float] = Field(None, gt=0, le=30 * 86400)


def check_automl_options(options: Any) -> dict[str, Any]:
    """The options a client gave, type-checked; raises :class:`ConfigError` with the first problems."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError("'automl' must be an object, e.g. {\"trials\": 8, \"workers\": 2}")
    try:
        opts = AutoMLOptions.model_validate(options)
    except ValidationError as e:
        parts = [f"{'.'.join(map(str, err['loc'])) or 'automl'}: {err['msg']}" for err in e.errors()[:5]]
        raise ConfigError("invalid AutoML options: " + "; ".join(parts)) from None
    return opts.model_dump(exclude_none=True)


def check_job_request(body: dict[str, Any]) -> dict[str, Any]:
    """Check every field of a /train or /automl body before anything touches the disk."""
    out = dict(body)
    if out.get("name") is not None:
        name = out["name"]
        if not isinstance(name, str) or "@" in name:
            raise InvalidIdError("a job's 'name' is a model name (letters, digits, '_', '.', '-'), without '@'")
        check_id(name, "model name")
    if out.get("resume") is not None:
        check_id(str(out["resume"]), "job id")
    if out.get("tag") is not None:
        check_id(str(out["tag"]), "label tag")
    images = out.get("images")
    if images is not None:
        if not isinstance(images, list) or len(images) > 100000:
            raise ConfigError("'images' must be a list of datastore image ids")
        for i in images:
            check_id(i, "image id")
    device = out.get("device")
    if device is not None and (not isinstance(device, str) or not DEVICE.match(device)):
        raise ConfigError("'device' must be auto, cpu, cuda or cuda:N")
    out["overrides"] = check_overrides(out.get("overrides"))
    if "automl" in out:
        out["automl"] = check_automl_options(out["automl"])
    return out
