"""Bad input fails before training, with a typed error that says what to do, and nothing is published."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claraseg.errors import ConfigError, GeometryMismatchError, TrainingDataError
from claraseg.io import Image, read_image, write_image
from claraseg.train import config as cfg
from claraseg.train.config import DEFAULT_SETTINGS
from claraseg.train.data import fit_label_to_image, prepare_data

from .conftest import SEG_LABELS, phantom_case


def prep(entries, folder, kind="segmentation", **settings):
    return prepare_data(entries, SEG_LABELS, kind, folder, {**DEFAULT_SETTINGS, **settings})


def test_missing_file(tmp_path, seg_data):
    entries = json.loads(seg_data.read_text())
    entries[1]["image"] = str(tmp_path / "nowhere.nii.gz")
    with pytest.raises(TrainingDataError, match=r"entry 1: the image file .*nowhere.nii.gz does not exist"):
        prep(entries, tmp_path / "out")
    with pytest.raises(TrainingDataError, match="datalist file does not exist"):
        prep(str(tmp_path / "missing.json"), tmp_path / "out")


def test_label_resampled_when_only_sampling_differs(phantom_pair):
    image, label = phantom_pair
    from claraseg.io import resample_to_spacing

    coarse = resample_to_spacing(label, label.spacing * 2, is_label=True)
    fitted = fit_label_to_image(coarse, image)
    assert fitted.same_grid(image)
    agree = np.mean(fitted.array == label.array)
    assert agree > 0.9


def test_mismatched_grid_rejected_with_how(tmp_path, seg_data):
    entries = json.loads(seg_data.read_text())
    label = read_image(entries[0]["label"], label=True)
    shifted = Image(label.array, label.origin + 40.0, label.spacing, label.direction, label.labels, {"is_label": True})
    write_image(shifted, tmp_path / "shifted.nii.gz")
    entries[0]["label"] = str(tmp_path / "shifted.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"origin .* differs from the image's by up to .* mm.*reference"):
        prep(entries, tmp_path / "out")


def test_unknown_label_name(tmp_path, seg_data):
    entries = json.loads(seg_data.read_text())
    entries[2]["labels"] = {**entries[2]["labels"], "1": "tumour"}
    with pytest.raises(TrainingDataError, match=r"label 1 'tumour' is none of the model's labels .*rename"):
        prep(entries, tmp_path / "out")


def test_names_mapped_onto_model_values(tmp_path):
    # Slicer exports its own values: "Kidney Left" = 1 must become the model's kidney_left (4).
    entry = phantom_case(31, tmp_path, {1: "liver", 4: "kidney_left"})
    lab = read_image(entry["label"], label=True)
    names = {int(k): v for k, v in entry["labels"].items()}
    kidney = [v for v, n in names.items() if n == "kidney_left"][0]
    swapped = np.where(lab.array == kidney, 9, lab.array).astype(np.uint8)
    write_image(lab.with_array(swapped, labels={}), tmp_path / "slicer.nii.gz")
    entries = [{**entry, "label": str(tmp_path / "slicer.nii.gz"), "labels": {"1": "Liver", "9": "Kidney Left"}}] * 2
    data = prep(entries, tmp_path / "out")
    mapped = read_image(data.train[0].label, label=True).array
    assert set(np.unique(mapped)) == {0, 1, 4}
    assert np.array_equal(mapped == 4, swapped == 9)


def test_empty_labels(tmp_path, seg_data):
    entries = json.loads(seg_data.read_text())
    entries[0]["labels"] = {**entries[0]["labels"], "9": "aorta"}  # named but no voxels
    with pytest.raises(TrainingDataError, match=r"label 9 'aorta' is empty \(no voxels\)"):
        prepare_data(entries, {**SEG_LABELS, 9: "aorta"}, "segmentation", tmp_path / "out", DEFAULT_SETTINGS)
    entries = json.loads(seg_data.read_text())
    label = read_image(entries[1]["label"], label=True)
    write_image(label.with_array(np.zeros_like(label.array), labels={}), tmp_path / "empty.nii.gz")
    entries[1] = {"image": entries[1]["image"], "label": str(tmp_path / "empty.nii.gz")}
    with pytest.raises(TrainingDataError, match="the label map is empty"):
        prep(entries, tmp_path / "out2")


def test_too_few_cases(tmp_path, seg_data):
    entries = json.loads(seg_data.read_text())[:1]
    with pytest.raises(TrainingDataError, match=r"too few cases .* 1 given, 1 needed for validation"):
        prep(entries, tmp_path / "out")
    with pytest.raises(TrainingDataError, match="too few cases"):
        prep(json.loads(seg_data.read_text()), tmp_path / "out2", min_val_cases=3)


def test_wrong_target_names_the_element(seg_bundle):
    parser = cfg.make_parser(seg_bundle, {"loss#_target_": "monai.losses.DiceCELosss"})
    with pytest.raises(ConfigError, match=r"config element 'loss#_target_'.*DiceCELosss"):
        cfg.validate(parser)


def test_broken_reference_names_the_element(seg_bundle):
    parser = cfg.make_parser(seg_bundle, {"optimizer#params": "$@network_deff.parameters()"})
    with pytest.raises(ConfigError, match=r"config element 'optimizer#params'.*network_deff"):
        cfg.validate(parser)


def test_bad_settings_and_override_typos(seg_bundle):
    with pytest.raises(ConfigError, match=r"unknown job setting\(s\) \['max_iteration'\]"):
        cfg.validate(cfg.make_parser(seg_bundle, {"training": {"max_iteration": 3}}))
    with pytest.raises(ConfigError, match="the config has no element 'optimiser'"):
        cfg.make_parser(seg_bundle, {"optimiser#lr": 0.1})
    with pytest.raises(ConfigError, match="training#dataset"):
        cfg.validate(cfg.make_parser(seg_bundle, {"training#dataset": "smrt"}))


def test_bad_job_fails_before_training_and_publishes_nothing(tmp_path, seg_bundle, seg_data, capsys):
    # Through the command line: the job process reports the error, the command exits with it.
    from claraseg.cli import main
    from claraseg.models.registry import ModelRegistry
    from claraseg.train.job import FineTuneJob

    entries = json.loads(seg_data.read_text())
    entries[0]["labels"] = {"1": "appendix"}
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    code = main(["train", "run", str(seg_bundle), str(tmp_path / "bad.json"), "-w", str(tmp_path / "job"),
                 "-o", "training#max_iterations=2", "--threads", "1", "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "claraseg: error: train entry 0 (label11.nii.gz): label 1 'appendix' is none of the model's labels" in err
    job = FineTuneJob.open(tmp_path / "job")
    status = job.status()
    assert status["state"] == "failed" and status["error"]["code"] == "training_data_error"
    kinds = [e["event"] for e in job.events()]
    assert "iteration" not in kinds and "published" not in kinds
    assert not (tmp_path / "job" / "checkpoints").exists()
    assert ModelRegistry(seg_bundle.parent).versions("segmentation") == [1]
