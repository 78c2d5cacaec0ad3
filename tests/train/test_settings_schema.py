"""The job settings' schema (claraseg.models.schema.JobSettings): types, ranges, messages, and what a
network request may not set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from claraseg.errors import ConfigError
from claraseg.models.schema import JOB_DEFAULTS, JobSettings, check_job_settings

BUNDLES = Path(__file__).resolve().parents[2] / "claraseg" / "models" / "bundles"


@pytest.mark.parametrize("given, message", [
    ({"l2sp": float("inf")}, "training#l2sp = inf must be a finite number >= 0"),
    ({"l2sp": -1}, "training#l2sp = -1 must be a finite number >= 0"),
    ({"l2sp": "1"}, "training#l2sp = '1' must be a finite number"),
    ({"trainable": []}, "training#trainable = [] must be null or a non-empty list of regular expressions"),
    ({"trainable": "(^|\\.)2\\."}, "must be null or a non-empty list of regular expressions"),
    ({"trainable": [2]}, "training#trainable = [2] must be"),
    ({"trainable": ["model.(2"]}, "training#trainable: 'model.(2' is not a regular expression"),
    ({"freeze_norm": 1}, "training#freeze_norm = 1 must be true or false"),
    ({"max_guard_cases": -1}, "training#max_guard_cases = -1 must be an integer >= 0"),
    ({"max_guard_cases": 2.0}, "training#max_guard_cases = 2.0 must be an integer"),
    ({"val_interval": 0}, "training#val_interval = 0 must be an integer >= 1"),
    ({"val_interval": True}, "training#val_interval = True must be an integer"),
    ({"max_label_drop": 1.5}, "training#max_label_drop = 1.5 must be null or a number in [0, 1]"),
    ({"max_time_s": float("nan")}, "training#max_time_s = nan must be null or a number > 0"),
    ({"dataset": "smrt"}, "training#dataset = 'smrt' must be one of \"plain\""),
    ({"val_fraction": 1}, "training#val_fraction = 1 must be a number in (0, 1)"),
    ({"max_iteration": 3}, "unknown job setting(s) ['max_iteration'] in 'training'"),
    ({"distill": -0.5}, "training#distill = -0.5 must be a number in [0, 100]"),
    ({"distill": 1000}, "training#distill = 1000 must be a number in [0, 100]"),
    ({"distill": "1"}, "training#distill = '1' must be a number in [0, 100]"),
    ({"distill_fraction": 0.95}, "training#distill_fraction = 0.95 must be a number in [0, 0.9]"),
    ({"distill_fraction": float("nan")}, "training#distill_fraction = nan must be a number in [0, 0.9]"),
    ({"distill_replay": "yes"}, "training#distill_replay = 'yes' must be true or false"),
])
def test_each_bad_setting_is_named_with_what_it_must_be(given, message):
    with pytest.raises(ConfigError) as e:
        check_job_settings(given)
    assert message in str(e.value)


def test_defaults_fill_in_and_given_values_are_kept_as_given():
    settings = check_job_settings({"l2sp": 1, "trainable": ["(^|\\.)2\\."], "max_label_drop": None, "seed": 3})
    assert settings == {**JOB_DEFAULTS, "l2sp": 1, "trainable": ["(^|\\.)2\\."], "max_label_drop": None, "seed": 3}
    assert isinstance(settings["l2sp"], int)  # not turned into 1.0
    assert check_job_settings({}) == JOB_DEFAULTS
    with pytest.raises(ConfigError, match="must be an object of job settings"):
        check_job_settings(["l2sp"])


def test_train_json_finetune_section_is_checked_by_the_schema(tmp_path):
    """A bad value in a recipe's ``finetune`` section fails the job's dry run, naming the setting."""
    from claraseg.train import config as cfg

    bundle = Path(shutil.copytree(BUNDLES / "deepgrow3d", tmp_path / "deepgrow3d"))
    recipe = json.loads((bundle / "configs" / "train.json").read_text())
    recipe["finetune"] = {"l2sp": "strong"}
    (bundle / "configs" / "train.json").write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="training#l2sp = 'strong' must be a finite number >= 0"):
        cfg.validate(cfg.make_parser(bundle))
    recipe["finetune"] = {"max_guard_cases": 3, "l2sp": 0.5}
    (bundle / "configs" / "train.json").write_text(json.dumps(recipe))
    settings = cfg.settings_from(cfg.make_parser(bundle, {"training#max_guard_cases": 1}))
    assert settings["max_guard_cases"] == 1 and settings["l2sp"] == 0.5


def test_a_request_cannot_set_the_fine_tune_settings_and_what_it_may_set_the_schema_knows():
    """The forgetting controls stay the bundle's; weight-space ensembling (each candidate held to the
    bundle's max_label_drop) may be chosen, within its range; every setting a request may change is a
    field of the schema."""
    from claraseg.server.validation import TRAINING_SETTINGS, check_overrides

    for key, value in (("l2sp", 0.0), ("trainable", None), ("freeze_norm", False), ("max_guard_cases", 0),
                       ("max_label_drop", 1.0), ("distill", 0.0), ("distill_fraction", 0.5), ("distill_replay", True)):
        with pytest.raises(ConfigError, match="not allowed from a client"):
            check_overrides({f"training#{key}": value})
    assert set(TRAINING_SETTINGS) <= set(JobSettings.model_fields)
    check_job_settings({k: JOB_DEFAULTS[k] for k in TRAINING_SETTINGS})
    for value in ("auto", 0.5, 1, None):
        assert check_overrides({"training#wise": value}) == {"training#wise": value}
    for value, message in ((0, r"training#wise = 0 must be null"), (1.5, "must be null"),
                           ("best", "'best' is not one of \\['auto'\\]"), (True, "a boolean is not a valid value"),
                           ("$__import__('os')", "is not one of")):
        with pytest.raises(ConfigError, match=message):
            check_overrides({"training#wise": value})


@pytest.mark.parametrize("train, message", [
    ({"roi_scale_range": [1.4, 0.5]}, "train.json roi_scale_range [1.4, 0.5]: give [low, high] with 0 < low <= high"),
    ({"box_scale_range": [0, 1]}, "train.json box_scale_range [0, 1]: give [low, high]"),
    ({"box_scale_range": None}, "train.json box_scale_range is null: give a value or leave the key out (the default "
                                "is [0.65, 1.15])"),
    ({"p_from_scratch": 1.5}, "train.json p_from_scratch 1.5: give a probability between 0 and 1"),
    ({"p_by_size": True}, "train.json p_by_size True: give a probability"),
    ({"by_size_power": 3}, "train.json by_size_power 3: give a number between -1 and 2"),
    ({"max_loop_clicks": 2.0}, "train.json max_loop_clicks 2.0: give an integer >= 1"),
    ({"domain_randomization": "yes"}, "train.json domain_randomization 'yes': give true or false"),
])
def test_sampling_keys_are_checked_by_the_schema(train, message):
    from claraseg.errors import TrainingDataError
    from claraseg.models.train_config import check_train_config

    with pytest.raises(TrainingDataError) as e:
        check_train_config(train)
    assert message in str(e.value)


def test_sampling_keys_pass_with_the_recipes_other_keys():
    from claraseg.models.train_config import TRAIN_DEFAULTS, check_train_config

    recipe = json.loads((BUNDLES / "deepgrow3d" / "configs" / "train.json").read_text())
    check_train_config(recipe)
    for defaults in TRAIN_DEFAULTS.values():
        check_train_config(defaults)
    check_train_config({"roi_scale_range": None, "box_scale_range": (0.5, 1.0)})
