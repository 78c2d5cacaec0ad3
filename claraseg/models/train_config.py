"""The click-sampling part of a training config (a bundle's ``train.json``, a fine-tune job's ``train``):
its keys, their defaults per model family and their checks. Used by pre-training
(:mod:`claraseg.models.pretrain`, which records the values a stage ran with), fine-tune jobs and the
samplers in :mod:`claraseg.models.training`."""

from __future__ import annotations

import numpy as np

from claraseg.errors import TrainingDataError

#: train.json's optional [low, high] factors, with what each scales.
_TRAIN_RANGES = {
    "roi_scale_range": "the factor on an object's extent when its training ROI is sized from it",
    "box_scale_range": "DEXTR3D with clicks: the factor on the extreme points' box of a sample whose points "
                       "come from an estimate",
}


def check_train_config(train: dict | None) -> None:
    """The optional sampling keys of a training config: ``roi_scale_range`` and ``box_scale_range`` must
    be [low, high] with 0 < low <= high; the ``p_*`` keys probabilities; ``by_size_power`` in 0..2."""
    train = train or {}
    for key, what in _TRAIN_RANGES.items():
        scale = train.get(key)
        if scale is None:
            continue
        ok = isinstance(scale, (list, tuple)) and len(scale) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
        ok = ok and 0 < float(scale[0]) <= float(scale[1]) and np.isfinite(float(scale[1]))
        if not ok:
            raise TrainingDataError(f"train.json {key} {scale!r}: give [low, high] with 0 < low <= high ({what})")
    for key in _PROBABILITIES:
        v = train.get(key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
            raise TrainingDataError(f"train.json {key} {v!r}: give a probability between 0 and 1")
    v = train.get("domain_randomization")
    if v is not None and not isinstance(v, bool):
        raise TrainingDataError(f"train.json domain_randomization {v!r}: give true or false (synthetic contrasts, "
                                "bias fields, thick slices and cut fields of view in the training samples)")
    v = train.get("by_size_power")
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 2):
        raise TrainingDataError(f"train.json by_size_power {v!r}: give a number between 0 and 2 (0: uniform, "
                                "0.5: square root of the volume, 1: the volume)")
    v = train.get("max_loop_clicks")
    if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        raise TrainingDataError(f"train.json max_loop_clicks {v!r}: give an integer >= 1")
    for key in (*_PROBABILITIES, "max_loop_clicks", "box_scale_range", "domain_randomization", "by_size_power"):
        if key in train and train[key] is None:
            raise TrainingDataError(f"train.json {key} is null: give a value or leave the key out (the default "
                                    f"is {TRAIN_DEFAULTS['dextr3d'].get(key, TRAIN_DEFAULTS['deepgrow'].get(key))})")


#: The click-sampling keys of train.json and their defaults, per model family (DeepGrow 2D/3D, DEXTR3D).
#: ``roi_scale_range`` None: the object's extent times a uniform 0.85..1.4.
#: ``p_first_click_roi``: share of DeepGrow samples whose ROI takes the first click's spacing (else it is
#: sized from the object); ``p_from_scratch``: share of DeepGrow samples that start from a first click on
#: an empty mask (else from an imperfect current mask), ``p_from_scratch_cut`` the same for objects cut by
#: the ROI or the field of view under domain randomisation; ``p_by_size``: share of structure draws weighted
#: by size, in proportion to (volume in mm³) ** ``by_size_power`` (else uniform).
TRAIN_DEFAULTS: dict[str, dict] = {
    "deepgrow": {"p_model_in_loop": 0.4, "max_loop_clicks": 3, "roi_scale_range": None, "domain_randomization": False,
                 "p_first_click_roi": 0.35, "p_from_scratch": 0.4, "p_from_scratch_cut": 0.65, "p_by_size": 0.4,
                 "by_size_power": 0.5},
    "dextr3d": {"p_correction": 0.6, "p_model_in_loop": 0.5, "max_loop_clicks": 3, "box_scale_range": [0.65, 1.15],
                "domain_randomization": False, "p_by_size": 0.4, "by_size_power": 0.5},
}
#: The sampling keys a pretrain stage may set on the command line (``--train KEY=VALUE``); every stage's
#: recipe records the values it ran with, so replaying it does not depend on the bundle's train.json.
TRAIN_SAMPLING_KEYS = ("p_correction", "p_model_in_loop", "max_loop_clicks", "box_scale_range", "roi_scale_range",
                       "domain_randomization", "p_first_click_roi", "p_from_scratch", "p_from_scratch_cut", "p_by_size",
                       "by_size_power")
#: The sampling keys that are probabilities.
_PROBABILITIES = ("p_correction", "p_model_in_loop", "p_first_click_roi", "p_from_scratch", "p_from_scratch_cut",
                  "p_by_size")


def train_sampling(kind: str, train: dict | None) -> dict:
    """The click-sampling values a training run of ``kind`` uses: train.json's, else the defaults."""
    defaults = TRAIN_DEFAULTS["dextr3d" if kind == "dextr3d" else "deepgrow"]
    return {k: (train or {}).get(k, v) for k, v in defaults.items()}
