"""Keeping what the starting model knows: guard structures, tuned layers, L2-SP (real fine-tunes of the
default DeepGrow 3D weights on a phantom, a few steps each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from claraseg.errors import ConfigError
from claraseg.train.data import prepare_data
from claraseg.train.runner import select_trainable

from .conftest import phantom_case, run_job

BUNDLES = Path(__file__).resolve().parents[2] / "claraseg" / "models" / "bundles"
#: A few cheap steps: one crop per batch, two fixed validation samples per structure.
QUICK = {"training#batch_size": 1, "crops_per_image": 1, "validation_samples": 2, "validation_clicks": 0, "replay": 0.0,
         "training#checkpoint_interval": 100, "training#deterministic": True}


@pytest.fixture(scope="module")
def deepgrow3d(tmp_path_factory) -> Path:
    """The default DeepGrow 3D bundle in a models folder of its own (jobs publish beside it)."""
    models = tmp_path_factory.mktemp("models")
    return Path(shutil.copytree(BUNDLES / "deepgrow3d", models / "deepgrow3d"))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("forget")
    (folder / "datalist.json").write_text(json.dumps([phantom_case(31, folder, size=(64, 64, 40))]))
    return folder / "datalist.json"


def test_unselected_structures_and_guard_scans_become_guard_cases(tmp_path, phantom):
    from claraseg.train.config import DEFAULT_SETTINGS

    entry = json.loads(phantom.read_text())[0]
    other = phantom_case(32, tmp_path / "other", {1: "liver", 7: "stomach"}, size=(64, 64, 40))
    datalist = {"training": [entry], "guard": [other]}
    data = prepare_data(datalist, {}, "deepgrow3d", tmp_path / "data",
                        {**DEFAULT_SETTINGS, "min_val_cases": 1, "val_fraction": 0.5}, ["liver", "spleen"])
    tuned = {c.structures[1] for c in data.train + data.val}
    guarded = [c.structures[1] for c in data.guard]
    assert tuned == {"liver", "spleen"}
    # The unselected structures of the training scan (large enough to judge) and every one of the guard scan.
    assert "liver" in guarded and "stomach" in guarded and not set(guarded) & {"spleen"}
    assert len(guarded) >= 3
    reloaded = type(data).load(tmp_path / "data" / "prepared.json")
    assert [c.label for c in reloaded.guard] == [c.label for c in data.guard]
    # Each guard structure costs a validation run: only the largest max_guard_cases are kept.
    capped = prepare_data(datalist, {}, "deepgrow3d", tmp_path / "capped",
                          {**DEFAULT_SETTINGS, "val_fraction": 0.5, "max_guard_cases": 2}, ["liver", "spleen"])
    from claraseg.io import read_image

    sizes = sorted(int(read_image(c.label, label=True).array.sum()) for c in data.guard)
    assert len(capped.guard) == 2
    assert sorted(int(read_image(c.label, label=True).array.sum()) for c in capped.guard) == sizes[-2:]
    assert any("max_guard_cases" in n for n in capped.notes)


@pytest.mark.parametrize("bad, message", [
    ({"training#l2sp": -1.0}, "training#l2sp"),
    ({"training#trainable": []}, "training#trainable"),
    ({"training#trainable": ["model.(2"]}, "not a regular expression"),
    ({"training#freeze_norm": "yes"}, "training#freeze_norm"),
])
def test_bad_forgetting_settings_are_refused(deepgrow3d, bad, message):
    from claraseg.train import config as cfg

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cfg.validate(cfg.make_parser(deepgrow3d, bad))


def test_trainable_patterns_freeze_the_rest_and_must_select_something():
    from monai.networks.nets import UNet

    net = UNet(3, 2, 1, (4, 8), (2,), num_res_units=0)
    total = sum(p.numel() for p in net.parameters())
    tuned = select_trainable(net, [r"^model\.2\."])
    assert 0 < tuned < total
    assert all(p.requires_grad == n.startswith("model.2.") for n, p in net.named_parameters())
    with pytest.raises(ConfigError, match="matches none"):
        select_trainable(net, ["^decoder"])


def _moved(start: dict, weights: dict) -> dict[str, float]:
    return {k: float((weights[k].float() - start[k].float()).norm()) for k in start if start[k].is_floating_point()}


def test_frozen_layers_stay_and_l2sp_keeps_the_weights_near_the_start(tmp_path, deepgrow3d, phantom):
    """Same seed, same batches: tuning only the last block leaves every other weight bit-identical, and the
    L2-SP penalty moves the weights less than the plain fine-tune does."""
    from claraseg.models.bundle import read_weights
    from claraseg.train.api import fine_tune

    start = {k: v.float() for k, v in read_weights(deepgrow3d / "models" / "model.pt").items()}
    runs = {}
    # Every parameter tuned, no penalty (the bundle's train.json sets both for its own fine-tunes).
    plain = {"training#l2sp": 0.0, "training#trainable": None}
    for tag, extra in (("plain", plain), ("l2sp", {**plain, "training#l2sp": 50.0}),
                       ("head", {**plain, "training#trainable": [r"^model\.2\."]})):
        result = fine_tune(deepgrow3d, phantom, tmp_path / tag, iterations=4, structures=["liver", "spleen"],
                           overrides={**QUICK, "optimizer#lr": 1e-3, "training#val_interval": 100, **extra},
                           threads=1)
        runs[tag] = _moved(start, result.weights)
    assert all(v == 0.0 for k, v in runs["head"].items() if not k.startswith("model.2."))
    assert any(v > 0.0 for k, v in runs["head"].items() if k.startswith("model.2."))
    total = {tag: sum(v ** 2 for v in moved.values()) ** 0.5 for tag, moved in runs.items()}
    assert 0.0 < total["l2sp"] < 0.8 * total["plain"], total


def test_guard_refuses_a_model_that_forgets_and_nothing_is_published(tmp_path, deepgrow3d, phantom):
    """A destructive learning rate wrecks what the model knew: the guard structures (those not selected)
    fall below the starting model's Dice by the click protocol (two clicks through the engine), no
    checkpoint qualifies and the user keeps the starting model."""
    overrides = {**QUICK, "validation_clicks": 2, "optimizer#lr": 0.05, "training#max_iterations": 3, "training#val_interval": 3,
                 "training#max_label_drop": 0.02}
    job, status = run_job(deepgrow3d, phantom, overrides, tmp_path / "job", structures=["liver", "spleen"])
    assert status["state"] == "completed", status
    events = job.events()
    vals = [e for e in events if e["event"] == "validation"]
    assert vals[0]["baseline"] and vals[0]["guard"] and vals[0]["guard_cases"] >= 2
    refused = [e for e in events if e.get("message", "").startswith("not kept as best")]
    assert refused and any(k.startswith("guard:") for k in refused[-1]["lost"])
    final = [e for e in events if e["event"] == "state" and e["state"] == "completed"][-1]
    assert final["published"] is None and "max_label_drop" in final["publish_skipped"]
    assert sorted(p.name for p in deepgrow3d.parent.iterdir()) == ["deepgrow3d"]


def test_click_validation_runs_the_protocol_and_hands_back_images_the_engine_refuses(tmp_path):
    """Validation by clicks through the engine: a Dice curve per structure; a slab thinner than the model's
    minimum comes back to be validated by ROI samples instead."""
    from monai.networks.nets import UNet

    from claraseg.io import crop, make_phantom, write_image
    from claraseg.io.image import LabelInfo
    from claraseg.train.clickval import ClickValidation
    from claraseg.train.data import Case

    from .conftest import tiny_bundle

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    image, label = make_phantom(seed=41, size_ijk=(48, 48, 32))
    liver = label.with_array((label.array == 1).astype("uint8"), labels={1: LabelInfo("liver")})
    write_image(image, tmp_path / "image.nii.gz")
    write_image(liver, tmp_path / "liver.nii.gz")
    k = int(liver.array.any(axis=(1, 2)).nonzero()[0].mean())
    write_image(crop(image, [0, 0, k], [48, 48, k + 2]), tmp_path / "thin.nii.gz")
    write_image(crop(liver, [0, 0, k], [48, 48, k + 2]), tmp_path / "thin_liver.nii.gz")
    cases = [Case(str(tmp_path / "image.nii.gz"), str(tmp_path / "liver.nii.gz"), "", {1: "liver"}),
             Case(str(tmp_path / "thin.nii.gz"), str(tmp_path / "thin_liver.nii.gz"), "", {1: "liver"})]
    validation = ClickValidation(bundle, tmp_path / "validation_models", "deepgrow3d", clicks=3)
    try:
        net = UNet(3, 4, 1, (4, 8), (2,), num_res_units=0)
        net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
        curves, rest = validation.validate(net, cases)
    finally:
        validation.close()
    assert rest == [1] and str(tmp_path / "thin.nii.gz") in validation.refused
    assert len(curves["liver"]) == 1 and len(curves["liver"][0]) == 3
    assert all(0.0 <= d <= 1.0 for d in curves["liver"][0])


def test_the_bundles_train_json_sets_the_fine_tune_settings(tmp_path, deepgrow3d):
    """A recipe train.json's ``finetune`` object becomes the job's ``training#`` settings (overrides win);
    a ``finetune`` that is not an object is refused."""
    from claraseg.train import config as cfg

    recipe = json.loads((deepgrow3d / "configs" / "train.json").read_text())
    bundle = Path(shutil.copytree(deepgrow3d, tmp_path / "deepgrow3d"))
    recipe["finetune"] = {"l2sp": 2.5, "trainable": ["^model\\.2\\."], "val_interval": 7}
    (bundle / "configs" / "train.json").write_text(json.dumps(recipe))
    settings = cfg.settings_from(cfg.make_parser(bundle, {"training#val_interval": 9}))
    assert settings["l2sp"] == 2.5 and settings["trainable"] == ["^model\\.2\\."] and settings["val_interval"] == 9
    assert settings["batch_size"] == recipe["batch_size"]
    recipe["finetune"] = ["l2sp"]
    (bundle / "configs" / "train.json").write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="finetune"):
        cfg.make_parser(bundle)


def test_a_server_job_guards_the_datastores_other_labelled_images(tmp_path):
    """Jobs started over HTTP train on the images of one label tag and guard the datastore's other
    labelled images (their latest label; unlabelled images are not used)."""
    from claraseg.io import make_phantom
    from claraseg.server.datastore import Datastore
    from claraseg.server.jobs import TrainJobs

    store = Datastore(tmp_path / "store")
    for n, tag in ((1, "final"), (2, "original"), (3, None), (4, "final")):
        image, label = make_phantom(seed=50 + n, size_ijk=(24, 24, 16))
        store.add_image(f"case{n}", image)
        if tag:
            store.save_label(f"case{n}", label, tag=tag)
    jobs = TrainJobs(tmp_path / "models", store, tmp_path / "jobs")
    training = jobs._datalist(["case1"], "final")
    guard = jobs._guard(training, "final")
    assert [Path(e["image"]).parent.name for e in guard] == ["case2", "case4"]
    assert "original" in guard[0]["label"] and "final" in guard[1]["label"]
    assert jobs._guard(jobs._datalist(None, "final"), "final")[0]["image"] == str(store.image_path("case2"))


def test_step_loss_adds_the_l2sp_penalty_and_keeps_norm_statistics_frozen():
    """The job's loss of a batch: the task's loss plus l2sp/2 * ||w - w0||^2 over the tuned weights; with
    freeze_norm a BatchNorm layer's running statistics do not move however many batches it sees."""
    from claraseg.train.runner import Runner

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2), torch.nn.Conv3d(2, 1, 1))

    class Task:
        def batch_loss(self, model, batch, device):
            return model(batch).mean()

    runner = Runner.__new__(Runner)
    runner.task, runner.device = Task(), torch.device("cpu")
    runner.anchor = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        net[2].weight.add_(0.5)  # moved away from the start by 0.5 in each of its 2 values
    batch = torch.randn(2, 1, 6, 6, 6)
    stats = net[1].running_mean.clone()
    loss = Runner._step_loss(runner, net, {"l2sp": 4.0, "freeze_norm": True})(net, batch)
    plain = Task().batch_loss(net, batch, None)
    assert float(loss - plain) == pytest.approx(0.5 * 4.0 * 2 * 0.25, rel=1e-5)
    assert torch.equal(net[1].running_mean, stats)
    net.train()
    Runner._step_loss(runner, net, {"l2sp": 0.0, "freeze_norm": False})(net, batch)
    assert not torch.equal(net[1].running_mean, stats)
