"""The schemas of a bundle's settings, as pydantic models.

- ``claraseg`` settings (``configs/metadata.json``), one model per kind: :func:`check_settings` validates a
  section when the bundle is read (so a bad constant is reported with the key it is under, not inside a
  click) and leaves the section as it is: the engine and training read the plain dict. Keys the schema
  does not name (``intensity`` details, ``labels``, ``training``...) pass through.
- A fine-tune job's settings (the ``training`` element of its config: the kind's defaults, ``train.json``
  and its ``finetune`` section, the job's ``training#...`` overrides): :class:`JobSettings`, checked by
  :func:`check_job_settings`, which returns them with the defaults filled in.

A key a schema names must have the type and range given in its ``description``, which is also what the
error message says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from claraseg.errors import ConfigError

#: The input channels a DEXTR3D network may have: the points alone, or also clicks and the current mask.
DEXTR_CHANNELS = (["image", "extreme_points"], ["image", "extreme_points", "foreground", "background", "mask"])


def _num(description: str, **limits) -> Any:
    """A finite number (an int or a float, never a bool or a string) within ``limits``; optional (an
    absent key is fine, an explicit null is not)."""
    return Annotated[float, Strict(), Field(default=None, allow_inf_nan=False, description=description, **limits)]


def _int(description: str, **limits) -> Any:
    return Annotated[int, Strict(), Field(default=None, description=description, **limits)]


class BoundaryRefine(BaseModel):
    """:func:`claraseg.engine.boundary.refine_boundary`'s keywords, each optional."""

    model_config = ConfigDict(extra="forbid")
    band: _num("a number > 0", gt=0)
    tau: _num("a number > 0", gt=0)
    ring: _num("a number > 0", gt=0)
    bins: _int("an integer >= 2", ge=2)


class Guidance(BaseModel):
    """How clicks are encoded: Gaussian heat maps of ``sigma_mm`` (DeepGrow) or ``sigma_vox`` (DEXTR3D)."""

    model_config = ConfigDict(extra="allow")
    sigma_mm: _num("a number > 0", gt=0)
    sigma_vox: _num("a number > 0", gt=0)
    min_sigma_vox: _num("a number >= 0", ge=0)


class Settings(BaseModel):
    """The constants every kind may set (all optional here; the kinds below require some)."""

    model_config = ConfigDict(extra="allow")
    kind: Annotated[str, Strict(), Field(default=None, description="a model kind")]
    tta_flips: _int("an integer >= 1", ge=1)
    click_radius_mm: _num("a number >= 0", ge=0)
    threshold: _num("a number between 0 and 1 (exclusive)", gt=0, lt=1)
    fill: _num("a number in (0, 1]", gt=0, le=1)
    correction_fill: _num("a number in (0, 1]", gt=0, le=1)
    first_click_spacing_mm: _num("a number > 0", gt=0)
    margin_mm: _num("a number >= 0", ge=0)
    margin_rel: _num("a number >= 0", ge=0)
    correction_model: Annotated[str, Strict(), Field(default=None, description="a model name (a string)")]
    correction_radius_rel: _num("a number >= 0 (0: off)", ge=0)
    shape_refit_model: Annotated[str, Strict(), Field(default=None, description="a model name (a string)")]
    shape_refit_min_agreement: _num("a number between 0 and 1", ge=0, le=1)
    shape_refit_passes: _int("an integer >= 1", ge=1)
    shape_refit_tta_flips: _int("an integer >= 1", ge=1)
    shape_refit_threshold: _num("a number between 0 and 1 (exclusive)", gt=0, lt=1)
    shape_refit_contradiction: Annotated[Literal["refuse", "honour", "merge"],
                                   Field(default=None, description='"refuse", "honour" or "merge"')]
    keep_mask_detail: Annotated[bool, Strict(), Field(default=None, description="true or false")]
    boundary_refine: Annotated[Optional[BoundaryRefine], Field(
        default=None, description='null or an object of "band", "tau", "ring" (numbers > 0) and "bins" '
                                  '(an integer >= 2), each optional')]
    first_click_grow_passes: _int("an integer >= 0", ge=0)
    first_click_grow: Annotated[Literal["wider", "from_result"],
                                Field(default=None, description='"wider" or "from_result"')]
    min_points: _int("an integer >= 1", ge=1)
    spacing_range_mm: Annotated[list[Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]],
                                Field(default=None, min_length=2, max_length=2,
                                      description="[low, high] with 0 < low <= high")]
    roi_size: Annotated[list[Annotated[int, Strict(), Field(ge=1)]],
                        Field(default=None, min_length=3, max_length=3, description="three positive integers [i, j, k]")]
    guidance: Annotated[Guidance, Field(default=None, description="an object")]
    intensity: Annotated[dict[str, Any], Field(default=None, description="an object (per modality)")]
    runtime: Annotated[Literal["torch", "onnxruntime", "openvino", "auto"], Field(
        default=None, description='"torch", "onnxruntime", "openvino" or "auto"')]
    amp_dtype: Annotated[Literal["float16", "bfloat16"], Field(
        default=None, description='"float16" or "bfloat16"')]

    @field_validator("spacing_range_mm")
    @classmethod
    def _ordered(cls, v):
        if v is not None and v[0] > v[1]:
            raise ValueError("low > high")
        return v


class DeepGrowSettings(Settings):
    """DeepGrow 2D/3D: these keys are required."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("roi_size", "fill", "spacing_range_mm", "first_click_spacing_mm",
                                           "threshold", "guidance", "intensity")
    GUIDANCE: ClassVar[Optional[str]] = "sigma_mm"


class DextrSettings(Settings):
    """DEXTR3D: these keys are required; ``channels`` is one of :data:`DEXTR_CHANNELS`."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("roi_size", "margin_mm", "threshold", "guidance", "intensity")
    GUIDANCE: ClassVar[Optional[str]] = "sigma_vox"
    channels: Annotated[list[str], Field(
        default=None, description=" or ".join(map(str, DEXTR_CHANNELS)))]

    @field_validator("channels")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in [list(c) for c in DEXTR_CHANNELS]:
            raise ValueError("unknown channel list")
        return v


class SegmentationSettings(Settings):
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    GUIDANCE: ClassVar[Optional[str]] = None


SCHEMAS: dict[str, type[Settings]] = {"deepgrow3d": DeepGrowSettings, "deepgrow2d": DeepGrowSettings,
                                      "dextr3d": DextrSettings, "segmentation": SegmentationSettings}


def _description(model: type[BaseModel], key: str) -> str:
    info = model.model_fields.get(key)
    return (info.description if info is not None else None) or "valid"


def check_settings(settings: dict[str, Any], kind: str, where: str | Path) -> None:
    """Refuse a ``claraseg`` section whose constants the engine could not use (a missing key, a string
    where a number belongs, a threshold of 2 ...) with a :class:`ConfigError` naming the key."""
    schema = SCHEMAS.get(kind, Settings)
    missing = [k for k in getattr(schema, "REQUIRED", ()) if k not in settings]
    if missing:
        raise ConfigError(f"{where}: claraseg section of a {kind} model lacks {', '.join(missing)}")
    try:
        schema.model_validate(settings)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = loc[0]
        if key == "guidance" and len(loc) > 1:
            sub = loc[1]
            raise ConfigError(f"{where}: claraseg.guidance.{sub} must be {_description(Guidance, sub)}, "
                              f"got {settings['guidance'].get(sub)!r}") from None
        if key == "channels":
            raise ConfigError(f"{where}: claraseg.channels of a {kind} model must be one of "
                              f"{_description(schema, key)}, got {settings.get(key)!r}") from None
        raise ConfigError(f"{where}: claraseg.{key} must be {_description(schema, key)}, "
                          f"got {settings.get(key)!r}") from None
    need = getattr(schema, "GUIDANCE", None)
    if need and need not in settings["guidance"]:
        raise ConfigError(f"{where}: claraseg.guidance of a {kind} model lacks {need}")



def _setting(default: Any, description: str, **limits) -> Any:
    return Field(default=default, description=description, **limits)


class JobSettings(BaseModel):
    """A fine-tune job's settings (``training#<name>``; docs/training.md), with their defaults. Types are
    strict: ``"3"`` or ``true`` is not an integer, a float is not an integer."""

    model_config = ConfigDict(extra="forbid")
    max_iterations: Annotated[int, Strict(), _setting(100, "an integer >= 1 (optimizer steps of the whole job)", ge=1)]
    max_epochs: Annotated[Optional[Annotated[int, Strict(), Field(ge=1)]], _setting(
        None, "null or an integer >= 1 (stop earlier after this many passes over the training set)")]
    max_time_s: Annotated[Optional[Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]], _setting(
        None, "null or a number > 0 (stop earlier after this much training time, in seconds)")]
    batch_size: Annotated[int, Strict(), _setting(2, "an integer >= 1 (images per batch)", ge=1)]
    grad_accumulation: Annotated[int, Strict(), _setting(
        1, "an integer >= 1 (batches whose gradients are summed before one optimizer step)", ge=1)]
    num_workers: Annotated[int, Strict(), _setting(0, "an integer >= 0 (DataLoader worker processes)", ge=0)]
    dataset: Annotated[Literal["plain", "cache", "smart", "persistent"], _setting(
        "cache", 'one of "plain", "cache", "smart", "persistent"')]
    cache_rate: Annotated[float, Strict(), _setting(
        1.0, "a number in (0, 1] (cache: fraction of cases cached; smart: fraction in the window)", gt=0, le=1)]
    replace_rate: Annotated[float, Strict(), _setting(
        0.25, "a number in (0, 1] (smart: fraction of the window replaced per epoch)", gt=0, le=1)]
    copy_cache: Annotated[bool, Strict(), _setting(
        False, "true or false (cache/smart: deep-copy cached items per access, for in-place transforms)")]
    val_interval: Annotated[int, Strict(), _setting(50, "an integer >= 1 (iterations between validations)", ge=1)]
    checkpoint_interval: Annotated[int, Strict(), _setting(
        10, "an integer >= 1 (iterations between checkpoints)", ge=1)]
    log_interval: Annotated[int, Strict(), _setting(1, "an integer >= 1 (iterations between iteration events)", ge=1)]
    amp: Annotated[Union[Annotated[bool, Strict()], Literal["auto", "float16", "bfloat16"]], _setting(
        True, 'true, false, "auto", "float16" or "bfloat16" (mixed precision, on CUDA only; true = "auto": '
              'bfloat16 where the GPU has it natively, else float16)')]
    deterministic: Annotated[bool, Strict(), _setting(
        False, "true or false (seeded, deterministic algorithms: identical loss curves run to run)")]
    seed: Annotated[int, Strict(), _setting(0, "an integer >= 0", ge=0)]
    val_fraction: Annotated[float, Strict(), _setting(
        0.2, "a number in (0, 1) (held-out part of the cases, or structures for interactive kinds)", gt=0, lt=1)]
    min_val_cases: Annotated[int, Strict(), _setting(1, "an integer >= 1", ge=1)]
    publish: Annotated[bool, Strict(), _setting(True, "true or false (publish the best model as a new version)")]
    require_improvement: Annotated[bool, Strict(), _setting(
        False, "true or false (publish only when the best Dice beats the starting model's)")]
    max_label_drop: Annotated[Optional[Annotated[float, Strict(), Field(ge=0, le=1)]], _setting(
        None, "null or a number in [0, 1] (a validation counts as best only if no label or structure lost "
              "more Dice than this)")]
    l2sp: Annotated[float, Strict(), _setting(
        0.0, "a finite number >= 0 (L2-SP: loss + l2sp/2 * sum of squared differences to the starting "
             "weights)", ge=0, allow_inf_nan=False)]
    trainable: Annotated[Optional[list[Annotated[str, Strict()]]], _setting(
        None, "null or a non-empty list of regular expressions (parameter names)", min_length=1)]
    distill: Annotated[float, Strict(), _setting(
        0.0, "a number in [0, 100] (weight of the distillation loss toward the starting model's outputs on "
             "clicks outside the job's labels; 0: off; interactive models only)", ge=0, le=100,
        allow_inf_nan=False)]
    distill_fraction: Annotated[float, Strict(), _setting(
        0.25, "a number in [0, 0.9] (with distill > 0: the share of training samples whose clicks fall outside "
              "the job's labels and whose target is the starting model's output)", ge=0, le=0.9,
        allow_inf_nan=False)]
    distill_replay: Annotated[bool, Strict(), _setting(
        False, "true or false (with distill > 0: replayed samples also take the starting model's output as "
               "their target instead of their labels)")]
    wise: Annotated[Optional[Union[Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)],
                                   Literal["auto"]]], _setting(
        None, 'null, a number in (0, 1] or "auto" (weight-space ensembling, WiSE-FT: the candidate to publish '
              'is the starting weights + wise x (the weights at the end of training - the starting ones), '
              'validated and held to max_label_drop like a checkpoint; "auto": the best validated of 0.25, '
              '0.5, 0.75 and 1; null: the best validated checkpoint of the training)')]
    freeze_norm: Annotated[bool, Strict(), _setting(
        False, "true or false (normalisation layers keep their running statistics while training)")]
    max_guard_cases: Annotated[int, Strict(), _setting(
        8, "an integer >= 0 (guard structures checked, the largest ones)", ge=0)]
    sw_batch_size: Annotated[int, Strict(), _setting(1, "an integer >= 1 (sliding-window validation)", ge=1)]

    @field_validator("trainable")
    @classmethod
    def _regexes(cls, v):
        for pattern in v or ():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
        return v


#: The job settings' defaults (:class:`JobSettings`).
JOB_DEFAULTS: dict[str, Any] = JobSettings().model_dump()


def check_job_settings(given: Any, where: str = "'training'") -> dict[str, Any]:
    """The job settings: :data:`JOB_DEFAULTS` updated by ``given`` (a mapping of setting names), checked
    by :class:`JobSettings`; a :class:`ConfigError` names the setting, its value and what it must be. The
    values are returned as given (an integer stays an integer where a number is asked for)."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"config element {where} must be an object of job settings, got {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in JobSettings.model_fields)
    if unknown:
        raise ConfigError(f"unknown job setting(s) {unknown} in {where}; known: {sorted(JobSettings.model_fields)}")
    settings = {**JOB_DEFAULTS, **given}
    try:
        JobSettings.model_validate(settings)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0])
        value = settings.get(key)
        if err["type"] == "value_error":
            raise ConfigError(f"job setting training#{key}: {str(err['msg']).removeprefix('Value error, ')}") from None
        raise ConfigError(f"job setting training#{key} = {value!r} must be {_description(JobSettings, key)}") from None
    return settings


_Scale = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
_Range = Annotated[list[_Scale], Field(min_length=2, max_length=2)]
_Probability = Annotated[float, Strict(), Field(ge=0, le=1, description="give a probability between 0 and 1")]


class TrainSampling(BaseModel):
    """The click-sampling keys of a training config (a bundle's ``train.json``, a fine-tune job's ``recipe``):
    each optional, and (but ``roi_scale_range``) never null; other keys of the file pass through. The
    descriptions are what the error message asks for."""

    model_config = ConfigDict(extra="allow")
    roi_scale_range: Annotated[Optional[_Range], Field(
        default=None, description="give [low, high] with 0 < low <= high (the factor on an object's extent "
                                  "when its training ROI is sized from it)")]
    box_scale_range: Annotated[_Range, Field(
        default=None, description="give [low, high] with 0 < low <= high (DEXTR3D with clicks: the factor on "
                                  "the extreme points' box of a sample whose points come from an estimate)")]
    p_correction: _Probability = None
    p_model_in_loop: _Probability = None
    p_first_click_roi: _Probability = None
    p_from_scratch: _Probability = None
    p_from_scratch_cut: _Probability = None
    p_by_size: _Probability = None
    p_local_errors: _Probability = None
    domain_randomization: Annotated[bool, Strict(), Field(
        default=None, description="give true or false (synthetic contrasts, bias fields, thick slices and cut "
                                  "fields of view in the training samples)")]
    by_size_power: Annotated[float, Strict(), Field(
        default=None, ge=-1, le=2, description="give a number between -1 and 2 (0: uniform, 0.5: square root "
                                               "of the volume, 1: the volume, -0.5: small structures first)")]
    max_loop_clicks: Annotated[int, Strict(), Field(default=None, ge=1, description="give an integer >= 1")]

    @field_validator("roi_scale_range", "box_scale_range")
    @classmethod
    def _ordered(cls, v):
        if v is not None and v[0] > v[1]:
            raise ValueError("low > high")
        return v


def check_train_sampling(train: Any, defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse a training config whose click-sampling keys (:class:`TrainSampling`) a sampler could not use,
    with a :class:`~claraseg.errors.TrainingDataError` naming the key, its value and what to give;
    ``defaults`` (key -> default) are named when a key is null."""
    from claraseg.errors import TrainingDataError

    train = train or {}
    if not isinstance(train, Mapping):
        raise TrainingDataError(f"a training config must be an object of settings, got {type(train).__name__}")
    for key in TrainSampling.model_fields:
        if key != "roi_scale_range" and key in train and train[key] is None:
            raise TrainingDataError(f"train.json {key} is null: give a value or leave the key out (the default "
                                    f"is {(defaults or {}).get(key)})")
    try:
        TrainSampling.model_validate({k: list(v) if isinstance(v, tuple) else v for k, v in train.items()})
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0])
        raise TrainingDataError(f"train.json {key} {train.get(key)!r}: {_description(TrainSampling, key)}") from None


__all__ = ["DEXTR_CHANNELS", "JOB_DEFAULTS", "SCHEMAS", "JobSettings", "TrainSampling", "check_job_settings",
           "check_settings", "check_train_sampling"]
