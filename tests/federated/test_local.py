"""One site's round outside NVFlare: bad data fails with the fine-tune job's typed error, weights that do
not fit the bundle are refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from claraseg.errors import ModelError, TrainingDataError

from .conftest import tiny_bundle


def test_a_site_with_bad_data_fails_with_the_jobs_error(site_datalists, tmp_path):
    from claraseg.federated.local import fine_tune_round

    entry = json.loads(Path(site_datalists["site-a"]).read_text())[0]
    folder = Path(site_datalists["site-a"]).parent
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"image": str(folder / entry["image"]), "label": str(tmp_path / "missing.nii.gz"),
                                "labels": {"1": "spleen"}}]))
    with pytest.raises(TrainingDataError, match="missing"):
        fine_tune_round(tiny_bundle(tmp_path / "models"), one, None, 1, tmp_path / "round_0",
                        overrides={"training#batch_size": 1, "crops_per_image": 1}, device="cpu")


def test_global_weights_must_fit_the_network(tmp_path):
    from claraseg.federated.local import to_numpy, to_state_dict
    from claraseg.models.bundle import read_weights

    bundle = tiny_bundle(tmp_path / "models")
    reference = read_weights(bundle / "models" / "model.pt")
    weights = to_numpy(reference)
    flat = {k: v.ravel().tolist() for k, v in weights.items()}  # what HE decryption gives back
    restored = to_state_dict(flat, reference)
    assert all(restored[k].shape == reference[k].shape for k in reference)
    key = next(iter(weights))
    with pytest.raises(ModelError, match="values for a tensor"):
        to_state_dict({**weights, key: np.zeros(3)}, reference)
    with pytest.raises(ModelError, match="do not fit"):
        to_state_dict({k: v for k, v in weights.items() if k != key}, reference)


SEG_LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "stomach"}


@pytest.mark.parametrize("kind", ["segmentation", "deepgrow2d", "dextr3d"])
def test_a_round_of_every_kind_and_its_evaluation_agree(kind, tmp_path):
    """A site's round works for every kind the project fine-tunes, and evaluating its final weights
    (what each site does with the final global model) gives the job's own final validation Dice."""
    from claraseg.federated.local import evaluate_weights, fine_tune_round
    from claraseg.io import make_phantom, write_image
    from claraseg.models.testing import make_tiny_bundle

    entries = []
    for seed in (31, 32, 33) if kind == "segmentation" else (31,):
        image, label = make_phantom(seed=seed, size_ijk=(40, 40, 24))
        if kind == "segmentation":  # only the structures the segmentation model knows
            keep = {v: i for v, i in label.labels.items() if i.name in SEG_LABELS.values()}
            label = label.with_array(np.where(np.isin(label.array, list(keep)), label.array, 0).astype(np.uint8),
                                     labels=keep)
        write_image(image, tmp_path / f"image{seed}.nii.gz")
        write_image(label, tmp_path / f"label{seed}.nii.gz")
        entries.append({"image": f"image{seed}.nii.gz", "label": f"label{seed}.nii.gz",
                        "labels": {str(v): i.name for v, i in label.labels.items()}})
    (tmp_path / "datalist.json").write_text(json.dumps(entries))
    if kind == "segmentation":
        settings = {"labels": SEG_LABELS, "roi_size": [32, 32, 32], "spacing": [8.0, 8.0, 8.0]}
    else:
        settings = {"roi_size": [32, 32, 1] if kind == "deepgrow2d" else [32, 32, 32]}
    bundle = make_tiny_bundle(kind, tmp_path / "models" / kind, settings=settings)
    overrides = {"training#batch_size": 1, "crops_per_image": 1, "validation_samples": 2, "replay": 0}
    result = fine_tune_round(bundle, tmp_path / "datalist.json", None, 2, tmp_path / "round_0", overrides=overrides,
                             device="cpu")
    assert result.iterations == 2 and result.local_dice is not None and result.global_dice is not None
    dice, _ = evaluate_weights(bundle, result.weights, tmp_path / "round_0" / "data" / "prepared.json",
                               overrides=overrides, device="cpu")
    assert dice == pytest.approx(result.local_dice, abs=1e-6)
