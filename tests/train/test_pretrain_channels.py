"""``claraseg pretrain --continue --channels``: a trained DEXTR3D bundle gains the click and mask
channels, keeps its weights for the old ones and records the option in its recipe (a real, tiny run on
the shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from claraseg.errors import TrainingDataError
from claraseg.models.bundle import read_bundle
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
