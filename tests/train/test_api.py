"""The in-process fine-tune entry point (what a federated-learning client calls) and the engine benchmark."""

from __future__ import annotations

import pytest
import torch

from claraseg.errors import ConfigError, TrainingDataError
from claraseg.train.api import fine_tune

from .conftest import tiny_bundle


def test_fine_tune_from_given_weights_returns_weights_and_metrics(tmp_path, interactive_data):
    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    start = torch.load(bundle / "models" / "model.pt", weights_only=True)
    start = {k: v.float() * 0.5 if v.is_floating_point() else v for k, v in start.items()}
    result = fine_tune(bundle, interactive_data, tmp_path / "round1", weights=start, iterations=3,
                       overrides={"training#batch_size": 1, "crops_per_image": 1, "validation_samples": 1},
                       structures=["liver", "spleen", "stomach"], threads=1)
    m = result.metrics
    assert m["iteration"] == 3 and m["train_cases"] == 2
    assert 0.0 <= m["baseline_dice"] <= 1.0 and 0.0 <= m["dice"] <= 1.0 and m["per_label"]
    assert set(result.weights) == set(start)
    changed = [k for k, v in result.weights.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert changed  # it trained from the given weights, not from the bundle's
    # Nothing is published; the packaged bundle is untouched.
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["deepgrow3d"]
    with pytest.raises(ConfigError, match="not empty"):
        fine_tune(bundle, interactive_data, tmp_path / "round1", iterations=1)
    with pytest.raises(ConfigError, match="iterations"):
        fine_tune(bundle, interactive_data, tmp_path / "round2", iterations=0)


def test_fine_tune_raises_the_jobs_typed_error(tmp_path, interactive_data):
    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    with pytest.raises(TrainingDataError, match="no label named"):
        fine_tune(bundle, interactive_data, tmp_path / "r", iterations=1, structures=["no_such_structure"])


def test_engine_benchmark_runs_both_loops():
    from claraseg.train.bench_engine import bench_engine

    r = bench_engine(iterations=2, repeats=1)
    assert set(r["median_its_per_s"]) == {"claraseg", "monai"} and all(v > 0 for v in r["median_its_per_s"].values())
