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
    with pytest.raises(TrainingDataError, match="site training failed.*missing"):
        fine_tune_round(tiny_bundle(tmp_path / "models"), one, None, 1, tmp_path / "round_0",
                        overrides={"training#batch_size": 1, "crops_per_image": 1}, device="cpu")


def test_global_weights_must_fit_the_network(tmp_path):
    from claraseg.federated.local import read_state_dict, to_numpy, to_state_dict

    bundle = tiny_bundle(tmp_path / "models")
    reference = read_state_dict(bundle / "models" / "model.pt")
    weights = to_numpy(reference)
    flat = {k: v.ravel().tolist() for k, v in weights.items()}  # what HE decryption gives back
    restored = to_state_dict(flat, reference)
    assert all(restored[k].shape == reference[k].shape for k in reference)
    key = next(iter(weights))
    with pytest.raises(ModelError, match="values for a tensor"):
        to_state_dict({**weights, key: np.zeros(3)}, reference)
    with pytest.raises(ModelError, match="do not fit"):
        to_state_dict({k: v for k, v in weights.items() if k != key}, reference)
