"""Every fine-tunable kind builds its pipeline, a batch and a loss step, and validates (in-process, tiny)."""

from __future__ import annotations

import pytest
import torch
from monai.data import list_data_collate

from claraseg.train import config as cfg
from claraseg.train.data import prepare_data
from claraseg.train.runner import load_weights
from claraseg.train.tasks import make_task

from .conftest import tiny_bundle


@pytest.mark.parametrize("kind", ["deepgrow2d", "dextr3d", "segmentation"])
def test_kind_trains_one_step(kind, tmp_path, interactive_data, seg_data):
    bundle = tiny_bundle(tmp_path / "models", kind)
    meta = cfg.read_metadata(bundle)["claraseg"]
    comps = cfg.validate(cfg.make_parser(bundle, {"crops_per_image": 2}))
    network = comps["network_def"]
    assert load_weights(network, bundle)
    task = make_task(kind, comps, meta)
    labels = {int(k): v for k, v in (meta.get("labels") or {}).items()}
    datalist = seg_data if kind == "segmentation" else interactive_data
    data = prepare_data(datalist, labels, kind, tmp_path / "data", comps["settings"],
                        None if kind == "segmentation" else ["liver", "spleen"])
    items = [comps["train#preprocessing"](item) for item in task.items(data.train)]
    batch = list_data_collate([s for samples in items for s in samples])
    assert batch["image"].shape[0] == 2 * len(items)
    before = [p.detach().clone() for p in network.parameters()]
    loss = task.batch_loss(network, batch, torch.device("cpu"))
    loss.backward()
    comps["optimizer"].step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))
    val = [comps["validate#preprocessing"](item) for item in task.items(data.val)]
    score, per_label = task.validate(network, val, data.val, torch.device("cpu"))
    assert 0.0 <= score <= 1.0 and per_label
