"""Distillation toward the starting model (``training#distill``): pseudo-structures outside the labels, the
loss of a batch, and a real tiny fine-tune whose outputs stay closer to the starting model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from claraseg.errors import ConfigError

from .conftest import phantom_case, tiny_bundle


def _volume(seed: int, keep: set[str]):
    from claraseg.io import make_phantom
    from claraseg.io.image import LabelInfo
    from claraseg.models.training import volume_from_images

    image, label = make_phantom(seed=seed, size_ijk=(40, 40, 24))
    values = [v for v, info in label.labels.items() if info.name in keep]
    array = np.where(np.isin(label.array, values), label.array, 0).astype(np.uint8)
    label = label.with_array(array, labels={v: LabelInfo(label.labels[v].name) for v in values})
    return volume_from_images(f"phantom{seed}", image, label, {"CT": {"type": "window", "window": [-250, 350]}},
                              modality="CT")


def test_unlabelled_structures_lie_outside_the_labels_and_leave_the_volume_as_it_was():
    from claraseg.train.interactive import DISTILL_MIN_VOXELS, unlabelled_structure

    volume = _volume(5, {"liver", "spleen"})
    before = volume.label.copy()
    rng = np.random.default_rng(0)
    found = [f for f in (unlabelled_structure(volume, rng) for _ in range(20)) if f is not None]
    assert len(found) >= 10
    for pseudo, structure in found:
        i, j, k = structure.coords.T
        assert len(structure.coords) >= DISTILL_MIN_VOXELS
        assert not volume.label[k, j, i].any()  # never a labelled voxel
        assert (pseudo.label[k, j, i] == structure.values[0]).all()
        assert (pseudo.label == structure.values[0]).sum() == len(structure.coords)
        assert pseudo.image is volume.image
    assert np.array_equal(volume.label, before)


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_toward_it():
    from claraseg.train.interactive import distillation_loss

    teacher = torch.randn(2, 1, 4, 4, 4) * 3
    assert float(distillation_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    student = (teacher + torch.randn_like(teacher)).requires_grad_(True)
    loss = distillation_loss(student, teacher)
    loss.backward()
    assert float(loss) > 0
    # Gradient descent moves each logit toward the teacher's.
    assert bool(((student.grad * (student - teacher)) >= 0).all())


def test_only_flagged_samples_are_distilled_and_the_others_keep_their_labels():
    from monai.losses import DiceCELoss
    from monai.transforms import Compose

    from claraseg.train.interactive import InteractiveTask

    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 1, 3, padding=1)
    task = InteractiveTask("deepgrow3d", {"loss": DiceCELoss(sigmoid=True), "train#preprocessing": Compose([])}, {})
    x = torch.randn(2, 4, 8, 8, 8)
    y = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    plain = float(task.loss(net(x), y))
    task.use_distillation(torch.nn.Conv3d(4, 1, 3, padding=1).requires_grad_(False), 2.0, 0.5, False)
    task.teacher.load_state_dict(net.state_dict())
    cpu = torch.device("cpu")
    assert float(task.batch_loss(net, {"image": x, "label": y, "distill": torch.zeros(2, 1)}, cpu)) == pytest.approx(plain)
    # The teacher is the network itself: a flagged sample costs nothing whatever its label says.
    assert float(task.batch_loss(net, {"image": x, "label": y, "distill": torch.ones(2, 1)}, cpu)) == pytest.approx(
        0.0, abs=1e-6)
    one = float(task.batch_loss(net, {"image": x, "label": y, "distill": torch.tensor([[1.0], [0.0]])}, cpu))
    assert one == pytest.approx(float(task.loss(net(x[1:]), y[1:])))


def test_distillation_needs_an_interactive_model_with_starting_weights():
    from claraseg.train.runner import use_distillation

    net = torch.nn.Conv3d(1, 1, 1)
    settings = {"distill": 1.0, "distill_fraction": 0.25, "distill_replay": False}
    with pytest.raises(ConfigError, match="training#distill applies to the interactive models"):
        use_distillation(object(), net, settings, "segmentation", True)

    class Task:
        def use_distillation(self, *args):
            self.args = args

    with pytest.raises(ConfigError, match="the bundle has no weights"):
        use_distillation(Task(), net, settings, "deepgrow3d", False)
    task = Task()
    use_distillation(task, net, settings, "deepgrow3d", True)
    teacher = task.args[0]
    assert teacher is not net and not any(p.requires_grad for p in teacher.parameters())
    assert task.args[1:] == (1.0, 0.25, False)


def test_a_distilled_fine_tune_stays_closer_to_the_starting_model(tmp_path):
    """Same seed, same learning rate: with distillation the tuned network's output on a replay sample (a
    structure of another scan it was not tuned on) moves less from the starting model's than without."""
    from claraseg.models.bundle import read_bundle
    from claraseg.models.training import make_sample
    from claraseg.train.api import fine_tune

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    (tmp_path / "datalist.json").write_text(json.dumps([phantom_case(21, tmp_path / "data")]))
    b = read_bundle(bundle)
    start = b.build_network()
    start.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    start.eval()
    replay = _volume(77, {"kidney_left", "stomach", "aorta"})
    xs = []
    for n, structure in enumerate(replay.structures):
        sample = None
        rng = np.random.default_rng(n)
        while sample is None:
            sample = make_sample("deepgrow3d", replay, structure, b.settings, rng)
        xs.append(sample[0])
    x = torch.stack(xs)
    with torch.no_grad():
        p0 = torch.sigmoid(start(x))
    moved = {}
    for tag, weight in (("plain", 0.0), ("distilled", 20.0)):
        result = fine_tune(bundle, tmp_path / "datalist.json", tmp_path / tag, iterations=6, threads=1,
                           structures=["liver", "spleen"],
                           overrides={"training#batch_size": 1, "crops_per_image": 2, "validation_clicks": 0,
                                      "validation_samples": 1, "replay": 0.0, "training#deterministic": True,
                                      "training#val_interval": 100, "training#checkpoint_interval": 100,
                                      "training#max_guard_cases": 0, "optimizer#lr": 1e-2,
                                      "training#trainable": None, "training#l2sp": 0.0,
                                      "training#distill": weight, "training#distill_fraction": 0.8})
        net = b.build_network()
        net.load_state_dict(result.weights)
        net.eval()
        with torch.no_grad():
            moved[tag] = float((torch.sigmoid(net(x)) - p0).abs().mean())
        events = [json.loads(line) for line in (tmp_path / tag / "events.jsonl").read_text().splitlines()]
        settings = next(e["settings"] for e in events if e.get("message") == "configuration validated")
        assert settings["distill"] == weight
    assert moved["plain"] > 0.0
    assert moved["distilled"] < 0.6 * moved["plain"], moved


def test_the_default_deepgrow3d_fine_tune_reads_its_distillation_settings():
    from claraseg.train import config as cfg

    bundle = Path(__file__).resolve().parents[2] / "claraseg" / "models" / "bundles" / "deepgrow3d"
    settings = cfg.settings_from(cfg.make_parser(bundle, {"training#distill": 2.5, "training#distill_replay": True}))
    assert settings["distill"] == 2.5 and settings["distill_replay"] is True
    assert 0.0 <= settings["distill_fraction"] <= 0.9
