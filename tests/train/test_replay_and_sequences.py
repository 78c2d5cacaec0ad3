"""Rehearsal of the datalist's replay scans, and structures judged by several click sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claraseg.errors import TrainingDataError
from claraseg.evaluate.protocol import first_click_at_depth

from .conftest import SEG_LABELS, phantom_case, run_job, tiny_bundle


def test_first_click_at_depth_is_seeded_and_well_inside():
    from scipy import ndimage

    truth = np.zeros((12, 24, 32), bool)
    truth[2:10, 4:20, 3:29] = True
    box = tuple(slice(0, n) for n in truth.shape)
    depth = ndimage.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1, 1:-1]
    clicks = [first_click_at_depth(truth, box, seed) for seed in range(6)]
    assert clicks[0] == first_click_at_depth(truth, box, 0)          # seeded
    assert len({tuple(c) for c in clicks}) > 1                         # seeds give other clicks
    for i, j, k in clicks:
        assert truth[k, j, i] and depth[k, j, i] >= 0.5 * depth.max()
    # One slice (DeepGrow 2D): the depth is measured within the slice, the click stays on it.
    plane = (slice(5, 6), slice(0, 24), slice(0, 32))
    for seed in range(4):
        i, j, k = first_click_at_depth(truth, plane, seed)
        assert k == 5 and 6 <= j <= 17 and 6 <= i <= 25


def test_replay_scans_are_the_replay_pool_and_never_validated(tmp_path):
    """A datalist's ``replay`` scans are checked, kept whole, and the job's replayed samples are drawn from
    their structures (not from the phantoms); a job without replay says it does not use them."""
    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    liver = phantom_case(51, tmp_path / "data", {1: "liver"}, size=(48, 48, 32))
    other = phantom_case(52, tmp_path / "data", {2: "spleen", 3: "kidney_right"}, size=(48, 48, 32))
    datalist = {"training": [liver], "validation": [liver], "replay": [other]}
    overrides = {"training#max_iterations": 2, "training#val_interval": 2, "training#batch_size": 1,
                 "crops_per_image": 2, "validation_clicks": 0, "validation_samples": 1, "replay": 0.5,
                 "training#publish": False}
    job, status = run_job(bundle, datalist, overrides, tmp_path / "job")
    assert status["state"] == "completed", status
    prepared = next(e for e in job.events() if e.get("message") == "data prepared")
    assert prepared["replay_cases"] == 1 and prepared["val_cases"] == 1
    assert any("2 structures of 1 replay scans" in n for n in prepared["notes"]), prepared["notes"]
    vals = [e for e in job.events() if e["event"] == "validation"]
    assert all(set(v["per_label"]) == {"liver"} for v in vals)


def test_the_sampler_draws_replay_from_the_replay_volumes(tmp_path):
    from claraseg.io import read_image
    from claraseg.models.bundle import read_bundle
    from claraseg.models.training import volume_from_images
    from claraseg.train.interactive import InteractiveSampled

    bundle = read_bundle(tiny_bundle(tmp_path / "models", "deepgrow3d"))
    other = phantom_case(52, tmp_path, {2: "spleen"}, size=(48, 48, 32))
    volume = volume_from_images("replay", read_image(other["image"]), read_image(other["label"], label=True),
                                bundle.settings["intensity"], min_voxels=60)
    sampler = InteractiveSampled("deepgrow3d", bundle.settings, replay=0.5)
    sampler.use_replay_volumes([volume])
    rng = np.random.default_rng(0)
    assert all(sampler._replay_draw(rng)[0] is volume for _ in range(5))

    # Through the task, as the job does; without replay the scans are not used, and the note says so.
    from monai.transforms import Compose

    from claraseg.train.data import Case
    from claraseg.train.interactive import InteractiveTask

    case = Case(other["image"], other["label"], other["label"], {2: "spleen"})
    for replay, note in ((0.5, "0.5 of the samples from 1 structures of 1 replay scans"), (0.0, "replay is 0")):
        sampler = InteractiveSampled("deepgrow3d", bundle.settings, replay=replay)
        task = InteractiveTask("deepgrow3d", {"train#preprocessing": Compose([sampler])}, bundle.settings)
        assert note in task.use_replay_cases([case])
        assert (sampler._pool is not None) == bool(replay)


def test_replay_scans_are_refused_for_segmentation_and_when_missing(tmp_path):
    from claraseg.train.config import DEFAULT_SETTINGS
    from claraseg.train.data import prepare_data

    case = phantom_case(53, tmp_path / "data", SEG_LABELS)
    with pytest.raises(TrainingDataError, match="replay' scans are for the interactive kinds"):
        prepare_data({"training": [case], "validation": [case], "replay": [case]}, SEG_LABELS, "segmentation",
                     tmp_path / "out", DEFAULT_SETTINGS)
    gone = {**case, "label": str(tmp_path / "nope.nii.gz")}
    with pytest.raises(TrainingDataError, match="does not exist"):
        prepare_data({"training": [case], "validation": [case], "replay": [gone]}, SEG_LABELS, "deepgrow3d",
                     tmp_path / "out2", DEFAULT_SETTINGS)
    data = prepare_data(json.loads(json.dumps({"training": [case], "validation": [case], "replay": [case]})),
                        SEG_LABELS, "deepgrow3d", tmp_path / "out3", DEFAULT_SETTINGS)
    assert [c.label for c in data.replay] == [case["label"]]


def test_click_validation_over_several_sequences_is_their_mean(tmp_path):
    import torch
    from monai.networks.nets import UNet

    from claraseg.engine.backend import LocalBackend
    from claraseg.evaluate.protocol import run_structure
    from claraseg.io import read_image
    from claraseg.train.clickval import ClickValidation, copy_shape_refit
    from claraseg.train.data import Case

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    entry = phantom_case(54, tmp_path / "data", {1: "liver"}, size=(48, 48, 32))
    cases = [Case(entry["image"], entry["label"], "", {1: "liver"})]
    net = UNet(3, 4, 1, (4, 8), (2,), num_res_units=0)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    curves = {}
    for n in (1, 3):
        validation = ClickValidation(bundle, tmp_path / f"val{n}", "deepgrow3d", clicks=2, sequences=n)
        try:
            curves[n] = validation.validate(net, cases)[0]["liver"][0]
        finally:
            validation.close()
    # The validation's clicks are re-fit by the bundle's DEXTR3D model, as a user's registry serves it.
    assert (tmp_path / "val1" / "dextr3d" / "models" / "model.pt").is_file()
    assert copy_shape_refit(bundle, tmp_path / "models") == tmp_path / "models" / "dextr3d"
    backend = LocalBackend(tmp_path / "models", device="cpu", idle_timeout=None)
    try:
        session = backend.open_session(read_image(entry["image"]))
        truth = read_image(entry["label"], label=True).array > 0
        runs = [run_structure(session, "deepgrow3d", "deepgrow3d", truth, interactions=2,
                              first_click_seed=s or None).dice for s in range(3)]
        session.close()
    finally:
        backend.close()
    assert curves[1] == pytest.approx(runs[0], abs=1e-6)
    assert curves[3] == pytest.approx(np.mean(runs, axis=0), abs=1e-6)
