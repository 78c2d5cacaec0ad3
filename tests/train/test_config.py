"""Bundle configs: layering, overrides (dict, JSON, YAML), bring-your-own scripts/, MMAR translation."""

from __future__ import annotations

import json

import pytest
import torch

from claraseg.cli import main
from claraseg.errors import ConfigError
from claraseg.train import config as cfg
from claraseg.train.mmar import translate_mmar

MMAR = {
    "epochs": 5, "learning_rate": 2e-4, "amp": True, "determinism": {"random_seed": 7},
    "DATASET_JSON": "dataset_0.json",
    "train": {
        "loss": {"name": "DiceLoss", "args": {"to_onehot_y": True, "softmax": True}},
        "optimizer": {"name": "Adam", "args": {"lr": "{learning_rate}"}},
        "lr_scheduler": {"name": "StepLR", "args": {"step_size": 2, "gamma": 0.5}},
        "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                                           "channels": [4, 8, 16], "strides": [2, 2]}},
        "pre_transforms": [
            {"name": "LoadImaged", "args": {"keys": ["image", "label"]}},
            {"name": "AddChanneld", "args": {"keys": ["image", "label"]}},
            {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
                                                      "b_max": 1.0, "clip": True}},
            {"name": "RandCropByPosNegLabeld", "args": {"keys": ["image", "label"], "label_key": "label",
                                                        "spatial_size": [32, 32, 32], "num_samples": 4}},
        ],
        "dataset": {"name": "SmartCacheDataset", "data_list_file_path": "{DATASET_JSON}",
                    "args": {"replace_rate": 0.2, "cache_rate": 0.5}},
        "dataloader": {"name": "DataLoader", "args": {"batch_size": 2, "shuffle": True, "num_workers": 0}},
        "inferer": {"name": "SimpleInferer"},
        "handlers": [{"name": "CheckpointSaver", "args": {"save_dir": "{MMAR_CKPT_DIR}"}}],
        "trainer": {"name": "SupervisedTrainer", "args": {"max_epochs": "{epochs}"}},
    },
    "validate": {
        "pre_transforms": [{"name": "LoadImaged", "args": {"keys": ["image", "label"]}},
                           {"path": "monai.transforms.EnsureChannelFirstd", "args": {"keys": ["image", "label"]}}],
        "metrics": [{"name": "MeanDice", "args": {"include_background": False}}],
    },
}


def test_mmar_translation_mapping():
    result = translate_mmar(MMAR)
    c = result.config
    assert c["network_def"]["_target_"] == "UNet" and c["network_def"]["out_channels"] == 6
    assert c["optimizer"] == {"_target_": "torch.optim.Adam", "lr": 2e-4, "params": "$@network_def.parameters()"}
    assert c["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.StepLR" and c["lr_scheduler"]["optimizer"] == "@optimizer"
    steps = c["train"]["preprocessing"]["transforms"]
    assert [s["_target_"] for s in steps][:2] == ["LoadImaged", "EnsureChannelFirstd"]
    assert c["validate"]["preprocessing"]["transforms"][1]["_target_"] == "monai.transforms.EnsureChannelFirstd"
    assert c["training"] == {"max_epochs": 5, "max_iterations": 10**9, "batch_size": 2, "num_workers": 0,
                             "dataset": "smart", "replace_rate": 0.2, "cache_rate": 0.5, "amp": True, "seed": 7,
                             "deterministic": True}
    assert set(result.dropped) == {"train.inferer", "train.handlers", "train.trainer", "validate.metrics"}
    assert any("dataset_0.json" in n for n in result.notes)


def test_mmar_bundle_validates_and_instantiates(tmp_path, seg_bundle):
    # An MMAR folder (config/config_train.json) beside a bundle's metadata: translated on the fly.
    bundle = tmp_path / "mmar"
    (bundle / "config").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "configs" / "metadata.json").write_text((seg_bundle / "configs" / "metadata.json").read_text())
    (bundle / "config" / "config_train.json").write_text(json.dumps(MMAR))
    comps = cfg.validate(cfg.make_parser(bundle))
    assert type(comps["network_def"]).__name__ == "UNet"
    assert comps["optimizer"].param_groups[0]["lr"] == 2e-4
    assert type(comps["lr_scheduler"]).__name__ == "StepLR" and comps["lr_scheduler"].optimizer is comps["optimizer"]
    assert comps["settings"]["dataset"] == "smart" and comps["settings"]["max_epochs"] == 5


def test_mmar_cli(tmp_path, capsys):
    src = tmp_path / "config_train.json"
    src.write_text(json.dumps(MMAR))
    assert main(["train", "mmar", str(src), str(tmp_path / "configs" / "train.json")]) == 0
    assert json.loads((tmp_path / "configs" / "train.json").read_text()) == translate_mmar(MMAR).config
    assert "not translated (the job runner provides it): train.trainer" in capsys.readouterr().out


def test_byoc_scripts_and_yaml_overrides(tmp_path, seg_bundle):
    scripts = seg_bundle / "scripts"
    scripts.mkdir()
    (scripts / "__init__.py").write_text("")
    (scripts / "net.py").write_text(
        "import torch\n\n\nclass TinyNet(torch.nn.Module):\n"
        "    def __init__(self, out_channels, width=4):\n        super().__init__()\n"
        "        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, width, 3, padding=1), torch.nn.ReLU(),\n"
        "                                        torch.nn.Conv3d(width, out_channels, 1))\n\n"
        "    def forward(self, x):\n        return self.body(x)\n")
    (scripts / "losses.py").write_text(
        "import torch\n\n\nclass SoftDice(torch.nn.Module):\n"
        "    def forward(self, logits, label):\n"
        "        p = torch.softmax(logits, 1)\n"
        "        y = torch.nn.functional.one_hot(label[:, 0].long(), p.shape[1]).movedim(-1, 1).float()\n"
        "        return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)\n")
    (seg_bundle / "configs" / "train.json").write_text(json.dumps({
        "network_def": {"_target_": "scripts.net.TinyNet", "out_channels": 6},
        "loss": {"_target_": "scripts.losses.SoftDice"}}))
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("optimizer#lr: 0.005\nnetwork_def#width: 3\ntraining:\n  max_iterations: 7\n")
    comps = cfg.validate(cfg.make_parser(seg_bundle, overrides))
    assert type(comps["network_def"]).__name__ == "TinyNet" and comps["network_def"].body[0].out_channels == 3
    assert comps["optimizer"].param_groups[0]["lr"] == 0.005 and comps["settings"]["max_iterations"] == 7
    logits = comps["network_def"](torch.zeros(1, 1, 8, 8, 8))
    assert comps["loss"](logits, torch.zeros(1, 1, 8, 8, 8)).item() > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer#lr: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse"):
        cfg.make_parser(seg_bundle, bad)


def test_plain_job_ignores_automl_search_lists():
    """A bundle whose train.json declares AutoML ``search`` lists still fine-tunes as a plain job, with the
    values written beside the lists."""
    from pathlib import Path

    from claraseg.train import config as cfg

    bundle = Path(__file__).resolve().parents[2] / "claraseg" / "automl" / "bundles" / "tiny_seg"
    comps = cfg.validate(cfg.make_parser(bundle, {}))
    assert comps["optimizer"].param_groups[0]["lr"] == 0.0003


def test_adaptation_plot_is_written(tmp_path):
    from claraseg.train.plot import plot_adaptation

    result = {"interactions": 3, "published": "m@v2", "iterations": 10, "budget_s": 60.0,
              "mean_dice_curve": {"before": [0.2, 0.4, 0.5], "after": [0.4, 0.6, 0.7]},
              "per_structure": {"a": {"before": [0.2, 0.4, 0.5], "after": [0.4, 0.6, 0.7]}}}
    out = plot_adaptation(result, tmp_path / "adapt.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_amp_setting_takes_a_flag_or_a_dtype_name():
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[2] / "claraseg" / "automl" / "bundles" / "tiny_seg"
    for amp in (True, False, "auto", "float16", "bfloat16"):
        assert cfg.settings_from(cfg.make_parser(bundle, {"training#amp": amp}))["amp"] == amp
    for bad in ("int8", 1, None):
        with pytest.raises(ConfigError, match=f"training#amp = {bad!r} must be true, false, \"auto\""):
            cfg.settings_from(cfg.make_parser(bundle, {"training#amp": bad}))
