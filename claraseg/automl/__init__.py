"""AutoML: search spaces declared in bundle configs, an Optuna controller, parallel trial processes,
lifecycle handlers and reports. Each trial is a fine-tune job (see docs/automl.md)."""

from claraseg.automl.controller import AutoMLController, AutoMLSettings
from claraseg.automl.handlers import AutoMLHandler, ReportHandler, TensorBoardHandler, TrialInfo
from claraseg.automl.runners import TrialRunner, TrialSpec, get_runner
from claraseg.automl.searchspace import SearchElement, SearchSpace, apply_overrides, parse_search_space

__all__ = [
    "AutoMLController", "AutoMLHandler", "AutoMLSettings", "ReportHandler", "SearchElement", "SearchSpace",
    "TensorBoardHandler", "TrialInfo", "TrialRunner", "TrialSpec", "apply_overrides", "get_runner",
    "parse_search_space",
]
