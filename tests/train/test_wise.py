"""Weight-space ensembling (``training#wise``, WiSE-FT): the setting's schema, the interpolation, and real
tiny fine-tunes whose published weights are the validated interpolation of the start and the end."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from claraseg.errors import ConfigError

from .conftest import phantom_case, run_job, tiny_bundle


@pytest.mark.parametrize("value", [None, 0.5, 1, 1.0, "auto"])
def test_wise_accepts_off_a_weight_or_auto(value):
    from claraseg.models.schema import check_job_settings

    assert check_job_settings({"wise": value})["wise"] == value


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, float("nan"), "best", "0.5", True, [0.5]])
def test_wise_refuses_other_values_naming_the_setting(value):
    from claraseg.models.schema import check_job_settings

    with pytest.raises(ConfigError, match=r"training#wise .*must be null, a number in \(0, 1\] or \"auto\""):
        check_job_settings({"wise": value})


def test_interpolation_goes_from_the_start_to_the_end_and_keeps_counters():
    from claraseg.train.wise import WISE_ALPHAS, interpolate_weights, wise_alphas

    start = {"w": torch.zeros(3), "b": torch.ones(2, dtype=torch.float16), "n": torch.tensor(4)}
    end = {"w": torch.tensor([4.0, -4.0, 8.0]), "b": torch.full((2,), 3.0, dtype=torch.float16),
           "n": torch.tensor(9)}
    half = interpolate_weights(start, end, 0.25)
    assert torch.equal(half["w"], torch.tensor([1.0, -1.0, 2.0]))
    assert half["b"].dtype == torch.float16 and torch.equal(half["b"], torch.full((2,), 1.5, dtype=torch.float16))
    assert int(half["n"]) == 9
    assert all(torch.equal(interpolate_weights(start, end, 1.0)[k], end[k]) for k in end)
    assert wise_alphas(None) == () and wise_alphas(0.6) == (0.6,) and wise_alphas("auto") == WISE_ALPHAS
    assert WISE_ALPHAS[-1] == 1.0


def _events(workdir):
    return [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]


FAST_WISE = {"training#max_iterations": 4, "training#val_interval": 100, "training#checkpoint_interval": 100,
             "training#batch_size": 1, "crops_per_image": 1, "validation_clicks": 0, "validation_samples": 2,
             "replay": 0.0, "training#deterministic": True, "training#max_guard_cases": 0, "optimizer#lr": 1e-2,
             "training#trainable": None, "training#l2sp": 0.0}


def test_a_fixed_wise_weight_keeps_the_interpolation_of_the_start_and_the_end(tmp_path):
    """In-process fine-tune with ``wise`` 0.5 and no drop rule: ``best.pt`` is exactly start + 0.5 x (end -
    start), validated (its validation event names the weight); the end's own final validation is alpha 1."""
    from claraseg.models.bundle import read_weights
    from claraseg.train.api import fine_tune

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    (tmp_path / "datalist.json").write_text(json.dumps([phantom_case(21, tmp_path / "data")]))
    result = fine_tune(bundle, tmp_path / "datalist.json", tmp_path / "job", iterations=4, threads=1,
                       structures=["liver", "spleen"],
                       overrides={**FAST_WISE, "training#wise": 0.5, "training#max_label_drop": None})
    start = read_weights(bundle / "models" / "model.pt")
    best = torch.load(tmp_path / "job" / "checkpoints" / "best.pt", weights_only=True)
    moved = 0.0
    for key, w0 in start.items():
        if not w0.is_floating_point():
            continue
        end = result.weights[key].float()
        moved += float((end - w0.float()).abs().sum())
        assert torch.allclose(best[key].float(), w0.float() + 0.5 * (end - w0.float()), atol=1e-6), key
    assert moved > 0  # the fine-tune moved the weights, so the interpolation is neither end
    events = _events(tmp_path / "job")
    wise = [e for e in events if e["event"] == "validation" and "wise_alpha" in e]
    assert [e["wise_alpha"] for e in wise] == [0.5]
    info = next(e for e in events if e.get("message") == "weight-space ensembling")
    assert [c["alpha"] for c in info["candidates"]] == [0.5] and info["chosen_alpha"] == 0.5
    final = next(e for e in events if e["event"] == "state" and e["state"] == "completed")
    assert final["wise_alpha"] == 0.5 and final["best_dice"] == pytest.approx(wise[0]["dice"])


def test_auto_publishes_the_best_interpolation_no_structure_of_which_fell_too_far(tmp_path):
    """A real job with ``wise`` "auto" under the drop rule validates the four weights (1 = the end's final
    validation) and publishes the best-scoring one that lost no structure; the version records it."""
    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    (tmp_path / "datalist.json").write_text(json.dumps([phantom_case(21, tmp_path / "data")]))
    job, status = run_job(bundle, tmp_path / "datalist.json",
                          {**FAST_WISE, "training#wise": "auto", "training#max_label_drop": 0.3,
                           "training#seed": 3}, tmp_path / "job", structures=["liver", "spleen", "kidney_left"])
    assert status["state"] == "completed", status
    events = _events(tmp_path / "job")
    info = next(e for e in events if e.get("message") == "weight-space ensembling")
    assert sorted(c["alpha"] for c in info["candidates"]) == [0.25, 0.5, 0.75, 1.0]
    assert [e["wise_alpha"] for e in events if e["event"] == "validation" and "wise_alpha" in e] == [0.75, 0.5, 0.25]
    kept = [c for c in info["candidates"] if not c["lost"]]
    if not kept:
        assert status["published"] is None
        return
    chosen = max(kept, key=lambda c: (c["dice"], c["alpha"]))
    assert info["chosen_alpha"] == chosen["alpha"]
    meta = json.loads((tmp_path / "models" / status["published"] / "configs" / "metadata.json").read_text())
    assert meta["claraseg"]["fine_tune"]["wise_alpha"] == chosen["alpha"]
    assert meta["claraseg"]["fine_tune"]["best_dice"] == pytest.approx(chosen["dice"], abs=1e-4)


def test_wise_needs_starting_weights(tmp_path):
    from claraseg.train.api import fine_tune

    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    (bundle / "models" / "model.pt").unlink()
    (tmp_path / "datalist.json").write_text(json.dumps([phantom_case(21, tmp_path / "data")]))
    with pytest.raises(ConfigError, match="training#wise interpolates toward the starting weights"):
        fine_tune(bundle, tmp_path / "datalist.json", tmp_path / "job", iterations=2, threads=1,
                  overrides={**FAST_WISE, "training#wise": "auto"})


def test_the_benchmark_tests_an_interpolation_with_the_re_fit_model_beside_it(tmp_path):
    """``bench-adapt --test-alphas``: the interpolation at 0 is the starting model (no change on any
    structure), the one at 1 the job's end weights; the models folder it runs in holds the re-fit model."""
    from claraseg.engine.backend import LocalBackend
    from claraseg.evaluate.protocol import run_structure
    from claraseg.io import read_image
    from claraseg.models.bundle import read_weights
    from claraseg.train.bench import evaluate_interpolations
    from claraseg.train.clickval import copy_shape_refit

    models = tmp_path / "models"
    bundle = tiny_bundle(models, "deepgrow3d")
    assert copy_shape_refit(bundle, models) == models / "dextr3d"
    entry = phantom_case(54, tmp_path / "data", {1: "liver"}, size=(48, 48, 32))
    shutil.copy(entry["image"], tmp_path / "heldout_liver_image.nii.gz")
    shutil.copy(entry["label"], tmp_path / "heldout_liver_label.nii.gz")
    start = read_weights(bundle / "models" / "model.pt")
    torch.manual_seed(0)
    end = {k: v.float() + 0.3 * torch.randn(v.shape) if v.is_floating_point() else v for k, v in start.items()}
    torch.save(end, tmp_path / "end.pt")
    backend = LocalBackend(models, device="cpu", idle_timeout=None)
    try:
        session = backend.open_session(read_image(entry["image"]))
        truth = read_image(entry["label"], label=True).array > 0
        before = run_structure(session, "deepgrow3d", "deepgrow3d", truth, interactions=2, object_id="eval-0").dice
        session.close()
    finally:
        backend.close()
    per = {"liver": {"tuned": True, "before": [round(float(d), 4) for d in before]}}
    out = evaluate_interpolations(models, "deepgrow3d", "deepgrow3d", tmp_path, tmp_path / "end.pt", ["liver"], per,
                                  2, (0.0, 1.0))
    assert (tmp_path / "interpolated" / "dextr3d" / "models" / "model.pt").is_file()
    assert out["0"]["change_at_last_mean"]["liver"] == pytest.approx(0.0, abs=1e-4)
    assert out["0"]["tuned_mean_curve"] == pytest.approx(per["liver"]["before"], abs=1e-4)
    assert len(out["1"]["sequences"]["liver"]) == 1 and len(out["1"]["sequences"]["liver"][0]) == 2
    missing = evaluate_interpolations(models, "deepgrow3d", "deepgrow3d", tmp_path, tmp_path / "none.pt", ["liver"],
                                      per, 2, (0.5,))
    assert "training#wise" in missing["error"]


@pytest.mark.parametrize("text", ["abc", "0.5,2", "0,0.5", "nan"])
def test_bench_adapt_refuses_bad_test_alphas(text):
    from claraseg.train.cli import _alphas

    with pytest.raises(argparse.ArgumentTypeError):
        _alphas(text)
    assert _alphas("0.25, 0.5,") == (0.25, 0.5)
