"""``claraseg pretrain --continue --channels``: a trained DEXTR3D bundle gains the click and mask
channels, keeps its weights for the old ones and records the option in its recipe (a real, tiny run on
the shared data)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from claraseg.errors import ConfigError, TrainingDataError
from claraseg.models.bundle import read_bundle
from claraseg.models.cli import parse_train_options
from claraseg.models.pretrain import default_data_dir, pretrain, set_input_channels
from claraseg.models.testing import make_tiny_bundle
from claraseg.models.training import DEXTR_CLICK_CHANNELS, dextr_takes_clicks


def test_continue_with_click_channels_widens_a_trained_dextr_bundle(tmp_path):
    data = default_data_dir()
    if not (Path(data) / "ct_abdomen_3mm" / "image.nii.gz").exists():
        pytest.skip(f"shared sample data not found at {data}")
    path = make_tiny_bundle("dextr3d", tmp_path / "dextr3d", settings={"channels": ["image", "extreme_points"]})
    state = torch.load(read_bundle(path).weights_path, weights_only=True)
    key = next(k for k, v in state.items() if v.ndim == 5)  # the first convolution
    before = state[key]
    assert before.shape[1] == 2
    records = pretrain(["dextr3d"], tmp_path, data, iterations=2, seed=5, evaluate=False, warm_start=True,
                       lr_scale=0.01, channels=list(DEXTR_CLICK_CHANNELS))
    bundle = read_bundle(path)
    assert dextr_takes_clicks(bundle.settings) and bundle.inference["network_def"]["in_channels"] == 5
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 5
    after = torch.load(bundle.weights_path, weights_only=True)[key].float()
    assert after.shape[1] == 5
    # Two small steps from the trained weights, not a fresh start.
    assert torch.allclose(after[:, :2], before.float(), atol=0.05)
    rec = records["dextr3d"]
    assert "--continue" in rec["recipe"] and "--channels " + ",".join(DEXTR_CLICK_CHANNELS) in rec["recipe"]
    assert rec["iterations"] == 2 and rec["previous_stages"]


def test_unknown_channel_lists_are_refused(tmp_path):
    path = make_tiny_bundle("dextr3d", tmp_path / "dextr3d")
    with pytest.raises(TrainingDataError, match="takes image,extreme_points"):
        set_input_channels(path, "dextr3d", ["image", "clicks"])
    dg = make_tiny_bundle("deepgrow3d", tmp_path / "deepgrow3d")
    with pytest.raises(TrainingDataError, match="deepgrow3d model takes"):
        set_input_channels(dg, "deepgrow3d", list(DEXTR_CLICK_CHANNELS))
    assert not set_input_channels(dg, "deepgrow3d", ["image", "foreground", "background", "mask"])


def test_train_options_run_and_are_recorded_so_a_stage_replays_without_train_json(tmp_path):
    data = default_data_dir()
    if not (Path(data) / "ct_abdomen_3mm" / "image.nii.gz").exists():
        pytest.skip(f"shared sample data not found at {data}")
    path = make_tiny_bundle("dextr3d", tmp_path / "dextr3d")
    train_json = path / "configs" / "train.json"
    before = json.loads(train_json.read_text())
    records = pretrain(["dextr3d"], tmp_path, data, iterations=2, seed=6, evaluate=False, warm_start=True,
                       lr_scale=0.01, train_overrides={"max_loop_clicks": 1, "box_scale_range": [0.8, 1.1]})
    rec = records["dextr3d"]
    assert rec["max_loop_clicks"] == 1 and rec["box_scale_range"] == [0.8, 1.1]
    # The bundle's own train.json is not changed by a run's options.
    assert json.loads(train_json.read_text()) == before
    # The recipe names every sampling key the stage ran with; parsed back, they are the values used.
    words = shlex.split(rec["recipe"])
    options = parse_train_options([words[i + 1] for i, w in enumerate(words) if w == "--train"])
    assert options["max_loop_clicks"] == 1 and options["box_scale_range"] == [0.8, 1.1]
    assert options["p_correction"] == before["p_correction"]


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": 1.0}, "not a sampling key"),
    ({"max_loop_clicks": 0}, "integer >= 1"),
    ({"max_loop_clicks": 2.5}, "integer >= 1"),
    ({"p_model_in_loop": None}, "is null"),
    ({"p_correction": 1.5}, "probability"),
    ({"box_scale_range": [1.2, 0.8]}, "low <= high"),
])
def test_bad_train_options_are_refused_before_training(tmp_path, overrides, message):
    path = make_tiny_bundle("dextr3d", tmp_path / "dextr3d")
    weights = read_bundle(path).weights_path.read_bytes()
    with pytest.raises(TrainingDataError, match=message):
        pretrain(["dextr3d"], tmp_path, tmp_path / "no-data", iterations=1, evaluate=False, warm_start=True,
                 train_overrides=overrides)
    assert read_bundle(path).weights_path.read_bytes() == weights


def test_train_option_text_is_parsed_or_refused_with_the_option_named():
    assert parse_train_options(["max_loop_clicks=8", "box_scale_range=[0.6,1.2]"]) == {
        "max_loop_clicks": 8, "box_scale_range": [0.6, 1.2]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_train_options(["max_loop_clicks"])
    with pytest.raises(ConfigError, match="not JSON"):
        parse_train_options(["p_correction=high"])
