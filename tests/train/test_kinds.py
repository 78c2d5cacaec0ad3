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


def test_replay_mixes_in_other_structures(interactive_data, tmp_path):
    """With ``replay`` a share of the samples comes from the replay pool (phantoms by default), so a
    fine-tune on a few structures keeps training on others; without it none does."""
    import json as _json

    import numpy as np

    from claraseg.models.defaults import SETTINGS
    from claraseg.train.interactive import InteractiveSampled, LoadTrainingVolumed

    settings = {**SETTINGS["deepgrow3d"], "roi_size": [32, 32, 32], "train_roi_size": [24, 24, 24]}
    entry = _json.loads(interactive_data.read_text())[0]
    item = LoadTrainingVolumed(settings["intensity"])({"image": entry["image"], "label": entry["label"]})
    own = item["volume"].name

    def sources(replay: float) -> list[str]:
        sampler = InteractiveSampled("deepgrow3d", settings, num_samples=1, replay=replay)
        sampler.set_random_state(7)
        names = []
        real = sampler._replay_draw

        def spy(rng):
            vol, st = real(rng)
            names.append(vol.name)
            return vol, st

        sampler._replay_draw = spy
        for _ in range(12):
            out = sampler(item)
            assert out[0]["image"].shape[0] == 4 and np.isfinite(out[0]["image"].numpy()).all()
        return names

    assert sources(0.0) == []
    drawn = sources(0.6)
    assert 2 <= len(drawn) <= 11 and all(n.startswith("phantom_") and n != own for n in drawn)


@pytest.mark.parametrize("override, message", [
    ({"replay": 1.5}, "replay must lie in"),
    ({"replay": "lots"}, "replay must lie in"),
    ({"replay_data": "/nonexistent/folder"}, r"not the pre-training data folder \(missing ct_abdomen_3mm/image.nii.gz"),
])
def test_bad_replay_settings_fail_before_training(tmp_path, override, message):
    from claraseg.errors import ClarasegError

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    with pytest.raises(ClarasegError, match=message):
        cfg.validate(cfg.make_parser(bundle, override))
