"""Search elements in bundle configs: parsing, aliases, overrides, and rejection of invalid spaces."""

from __future__ import annotations

import copy
import json

import pytest
from monai.bundle import ConfigParser

from claraseg.automl.bundle import read_config
from claraseg.automl.searchspace import apply_overrides, parse_search_space
from claraseg.cli import main
from claraseg.errors import ConfigError

from .conftest import TINY


def tiny_config() -> dict:
    return read_config(TINY)


def test_tiny_bundle_space_defaults_and_aliases():
    space = parse_search_space(tiny_config())
    assert space.names == ["net", "loss", "lr", "flip_prob", "intensity_prob"]
    assert not space.enum_only
    assert space.defaults() == {"net": "unet-4", "loss": "DiceLoss", "lr": 0.0003, "flip_prob": 0.0,
                                "intensity_prob": 0.0}
    overrides = space.overrides(dict(space.defaults(), flip_prob=0.3, net="segresnet-4"))
    # One searched value drives both flips (aliases); the network choice replaces the whole component.
    assert overrides["train#preprocessing#transforms#3#prob"] == 0.3
    assert overrides["train#preprocessing#transforms#4#prob"] == 0.3
    assert overrides["network_def"]["_target_"] == "SegResNet"
    assert "search" not in json.dumps(space.config)


def test_overrides_build_the_chosen_components():
    space = parse_search_space(tiny_config())
    params = {"net": "segresnet-4", "loss": "DiceFocalLoss", "lr": 0.02, "flip_prob": 0.5, "intensity_prob": 0.1}
    parser = ConfigParser(apply_overrides(space.config, space.overrides(params)))
    assert type(parser.get_parsed_content("network_def")).__name__ == "SegResNet"
    assert type(parser.get_parsed_content("loss")).__name__ == "DiceFocalLoss"
    assert parser.get_parsed_content("optimizer").param_groups[0]["lr"] == 0.02
    flips = parser.get_parsed_content("train#preprocessing").transforms[3:5]
    assert [f.prob for f in flips] == [0.5, 0.5]


def with_search(path: str, element: dict) -> dict:
    """The tiny config with its search lists removed and ``element`` put in the object at ``path``."""
    config = parse_search_space(tiny_config()).config
    node = config
    for key in [k for k in path.split("#") if k]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node["search"] = [element]
    return config


INVALID = {
    "empty enum": ("loss", {"domain": "loss", "type": "enum", "args": ["_target_"], "targets": []},
                   ["domain 'loss'", "'loss'", "empty"]),
    "min > max": ("optimizer", {"domain": "lr", "type": "float", "args": ["lr"], "targets": [0.1, 0.001]},
                  ["domain 'lr'", "'optimizer'", "min 0.1 > max 0.001"]),
    "unknown arg": ("optimizer", {"domain": "lr", "type": "float", "args": ["learning_rate"], "targets": [1e-4, 1e-2]},
                    ["domain 'lr'", "unknown arg 'learning_rate'", "torch.optim.Adam"]),
    "unknown nested arg": ("train#preprocessing", {"domain": "transform", "type": "float",
                                                   "args": ["transforms#3#probability"], "targets": [0, 1]},
                           ["domain 'transform'", "unknown arg", "RandFlipd", "'probability'"]),
    "unknown component path": ("train#preprocessing", {"domain": "transform", "type": "float",
                                                       "args": ["transforms#42#prob"], "targets": [0, 1]},
                               ["unknown component", "'42'"]),
    "unknown type": ("optimizer", {"domain": "lr", "type": "double", "args": ["lr"], "targets": [0, 1]},
                     ["type 'double'"]),
    "default outside range": ("optimizer", {"domain": "lr", "type": "float", "args": ["lr"], "targets": [0.1, 0.5]},
                              ["outside [0.1, 0.5]"]),
    "default not a choice": ("loss", {"domain": "loss", "type": "enum", "args": ["_target_"],
                                      "targets": [["DiceCELoss"], ["DiceFocalLoss"]]}, ["not one of the targets"]),
    "choice arity": ("loss", {"domain": "loss", "type": "enum", "args": ["_target_", "softmax"],
                              "targets": [["DiceLoss"]]}, ["choice 0 must be a list of 2"]),
    "log needs min > 0": ("optimizer", {"domain": "lr", "type": "float", "args": ["lr"], "targets": [0, 0.1], "log": True},
                          ["log range needs min > 0"]),
    "missing targets": ("optimizer", {"domain": "lr", "type": "float", "args": ["lr"]}, ["'targets' is missing"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_elements_are_rejected_with_their_name(case):
    path, element, needles = INVALID[case]
    with pytest.raises(ConfigError) as info:
        parse_search_space(with_search(path, element))
    for needle in needles:
        assert needle in str(info.value), (case, str(info.value))


def test_unknown_component_target_is_rejected():
    config = parse_search_space(tiny_config()).config
    config["loss"]["_target_"] = "NoSuchLoss"
    config["loss"]["search"] = [{"domain": "loss", "type": "enum", "args": ["softmax"], "targets": [[True], [False]]}]
    with pytest.raises(ConfigError, match="unknown component 'NoSuchLoss' at 'loss'"):
        parse_search_space(config)


def test_duplicate_parameter_names_are_rejected():
    config = with_search("optimizer", {"domain": "lr", "type": "float", "args": ["lr"], "targets": [1e-4, 0.1]})
    config["search"] = [{"domain": "lr", "type": "enum", "args": ["num_classes"], "targets": [[2]]}]
    with pytest.raises(ConfigError, match="parameter name 'lr' is also used"):
        parse_search_space(config)


def test_arg_from_the_signature_default():
    # weight_decay is not written in the config: Adam's own default (0) is the default setting.
    config = with_search("optimizer", {"domain": "wd", "type": "float", "args": ["weight_decay"], "targets": [0, 0.01]})
    space = parse_search_space(config)
    assert space.defaults() == {"wd": 0.0}
    assert space.overrides({"wd": 0.005}) == {"optimizer#weight_decay": 0.005}


def test_cli_rejects_an_invalid_space_before_any_trial(tmp_path, phantom_datalist, capsys):
    bundle = tmp_path / "bundle"
    import shutil

    shutil.copytree(TINY, bundle)
    config = copy.deepcopy(tiny_config())
    config["loss"]["search"][0]["targets"] = []
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    job = tmp_path / "job"
    code = main(["automl", "--bundle", str(bundle), "--data", str(phantom_datalist), "--trials", "2",
                 "--job-dir", str(job), "--runner", "tiny"])
    err = capsys.readouterr().err
    assert code == 1
    assert "search element 0 (domain 'loss') of 'loss'" in err and "empty" in err
    assert not job.exists()


def test_cli_validate_only_prints_the_space(tmp_path, phantom_datalist, capsys):
    code = main(["automl", "--bundle", str(TINY), "--data", str(phantom_datalist), "--validate-only",
                 "--job-dir", str(tmp_path / "job"), "--runner", "tiny", "--workers", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [e["name"] for e in out["search_space"]] == ["net", "loss", "lr", "flip_prob", "intensity_prob"]
    assert out["slots"] == ["cpu:0", "cpu:1"]


def test_worker_slots_and_storage_urls():
    from claraseg.automl.controller import _safe_url
    from claraseg.automl.scheduler import parse_devices

    assert parse_devices(None, 3) == ["cpu:0", "cpu:1", "cpu:2"]
    assert parse_devices("cuda:0,cuda:1", 1) == ["cuda:0", "cuda:1"]
    with pytest.raises(ConfigError, match="device 'gpu0'"):
        parse_devices("gpu0", 1)
    assert _safe_url("postgresql://bob:secret@db:5432/automl") == "postgresql://bob:***@db:5432/automl"
    assert _safe_url("postgresql://bob@db/automl") == "postgresql://bob@db/automl"


def test_optimiser_choice_with_a_learning_rate_inside_it():
    # The root element replaces the whole optimizer; the lr element inside it is applied after, to the choice.
    config = with_search("optimizer", {"domain": "lr", "type": "float", "args": ["lr"], "targets": [1e-4, 0.1],
                                       "log": True})
    adam = config["optimizer"].copy()
    adam.pop("search")
    sgd = {"_target_": "torch.optim.SGD", "params": "$@network_def.parameters()", "lr": 0.01, "momentum": 0.9}
    config["search"] = [{"domain": "optimizer", "type": "enum", "args": ["optimizer"], "labels": ["adam", "sgd"],
                         "targets": [[adam], [sgd]]}]
    space = parse_search_space(config)
    assert space.names == ["optimizer", "lr"] and space.defaults() == {"optimizer": "adam", "lr": 0.0003}
    overrides = space.overrides({"optimizer": "sgd", "lr": 0.05})
    assert list(overrides) == ["optimizer", "optimizer#lr"]
    optimizer = ConfigParser(apply_overrides(space.config, overrides)).get_parsed_content("optimizer")
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.param_groups[0]["lr"] == 0.05 and optimizer.param_groups[0]["momentum"] == 0.9


def test_handlers_load_by_name():
    from claraseg.automl.handlers import ReportHandler, load_handler

    assert isinstance(load_handler("claraseg.automl.handlers:ReportHandler"), ReportHandler)
    with pytest.raises(ConfigError, match="module.path:ClassName"):
        load_handler("ReportHandler")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_handler("claraseg.automl.handlers:NoSuchHandler")
    with pytest.raises(ConfigError, match="must subclass"):
        load_handler("collections:OrderedDict")


def test_cli_rejects_a_broken_datalist(tmp_path, capsys):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "missing_label.nii.gz"}]}))
    code = main(["automl", "--bundle", str(TINY), "--data", str(datalist), "--job-dir", str(tmp_path / "job"),
                 "--runner", "train"])
    assert code == 1 and "image 'missing.nii.gz' of a case does not exist" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()
