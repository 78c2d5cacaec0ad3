"""The click-sampling part of a training config (a bundle's ``train.json``, a fine-tune job's ``train``):
its keys, their defaults per model family and their checks. Used by pre-training
(:mod:`claraseg.models.pretrain`, which records the values a stage ran with), fine-tune jobs and the
samplers in :mod:`claraseg.models.training`."""

from __future__ import annotations

from claraseg.models.schema import TrainSampling, check_train_sampling


def check_train_config(train: dict | None) -> None:
    """The optional sampling keys of a training config, checked by one schema
    (:class:`claraseg.models.schema.TrainSampling`): ``roi_scale_range`` and ``box_scale_range`` must be
    [low, high] with 0 < low <= high; the ``p_*`` keys probabilities; ``by_size_power`` in -1..2;
    ``max_loop_clicks`` an integer >= 1; ``domain_randomization`` true or false. A
    :class:`~claraseg.errors.TrainingDataError` names the key and what to give."""
    check_train_sampling(train, {**TRAIN_DEFAULTS["deepgrow"], **TRAIN_DEFAULTS["dextr3d"]})


#: The click-sampling keys of train.json and their defaults, per model family (DeepGrow 2D/3D, DEXTR3D).
#: ``roi_scale_range`` None: the object's extent times a uniform 0.85..1.4.
#: ``p_first_click_roi``: share of DeepGrow samples whose ROI takes the first click's spacing (else it is
#: sized from the object); ``p_from_scratch``: share of DeepGrow samples that start from a first click on
#: an empty mask (else from an imperfect current mask), ``p_from_scratch_cut`` the same for objects cut by
#: the ROI or the field of view under domain randomisation; ``p_local_errors``: share of the imperfect
#: current masks that are wrong only in patches of the boundary
#: (:func:`claraseg.models.click_sampling.local_errors`) instead of corrupted as a whole; ``p_by_size``:
#: share of structure draws weighted by size, in proportion to (volume in mm³) ** ``by_size_power`` (else uniform); a negative power favours
#: small structures.
TRAIN_DEFAULTS: dict[str, dict] = {
    "deepgrow": {"p_model_in_loop": 0.4, "max_loop_clicks": 3, "roi_scale_range": None, "domain_randomization": False,
                 "p_first_click_roi": 0.35, "p_from_scratch": 0.4, "p_from_scratch_cut": 0.65, "p_by_size": 0.4,
                 "by_size_power": 0.5, "p_local_errors": 0.0},
    "dextr3d": {"p_correction": 0.6, "p_model_in_loop": 0.5, "max_loop_clicks": 3, "box_scale_range": [0.65, 1.15],
                "domain_randomization": False, "p_by_size": 0.4, "by_size_power": 0.5, "p_local_errors": 0.0},
}
#: The sampling keys a pretrain stage may set on the command line (``--train KEY=VALUE``); every stage's
#: recipe records the values it ran with, so replaying it does not depend on the bundle's train.json.
TRAIN_SAMPLING_KEYS = tuple(TrainSampling.model_fields)


def train_sampling(kind: str, train: dict | None) -> dict:
    """The click-sampling values a training run of ``kind`` uses: train.json's, else the defaults."""
    defaults = TRAIN_DEFAULTS["dextr3d" if kind == "dextr3d" else "deepgrow"]
    return {k: (train or {}).get(k, v) for k, v in defaults.items()}
