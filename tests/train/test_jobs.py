"""Real tiny fine-tune jobs in their own processes: events, TensorBoard, curves, cancel, kill -9 + resume,
determinism, interactive kinds, DDP."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from claraseg.train.events import EVENT_TYPES, STATES
from claraseg.train.job import FineTuneJob, JobManager

from .conftest import FAST, run_job, tiny_bundle, wait_for_event


def check_events(events: list[dict]) -> None:
    """Every event is well-formed: a known type, a time, the fields its type promises."""
    assert events and events[0] == {**events[0], "event": "state", "state": "preparing"}
    required = {"iteration": {"iteration", "max_iterations", "epoch", "loss", "lr", "its_per_s", "eta_s"},
                "validation": {"iteration", "dice", "per_label", "baseline"}, "checkpoint": {"path", "iteration"},
                "state": {"state"}, "error": {"type", "code", "message"}, "epoch": {"epoch", "loss", "time_s"}}
    for e in events:
        assert e["event"] in EVENT_TYPES and isinstance(e["t"], float) and e["time"].endswith("+00:00")
        assert required.get(e["event"], set()) <= set(e), e
        if e["event"] == "state":
            assert e["state"] in STATES


def losses(events: list[dict]) -> dict[int, float]:
    return {e["iteration"]: e["loss"] for e in events if e["event"] == "iteration"}


def test_segmentation_job(tmp_path, seg_bundle, seg_data):
    # A bring-your-own loss from the bundle's scripts/ (claraseg is not touched).
    (seg_bundle / "scripts").mkdir()
    (seg_bundle / "scripts" / "__init__.py").write_text("")
    (seg_bundle / "scripts" / "loss.py").write_text(
        "from monai.losses import DiceCELoss\n\n\nclass WeightedDiceCE(DiceCELoss):\n"
        "    def __init__(self):\n        super().__init__(to_onehot_y=True, softmax=True, lambda_ce=0.5)\n")
    overrides = {**FAST, "training#max_iterations": 10, "training#dataset": "smart", "training#cache_rate": 0.5,
                 "training#replace_rate": 0.5, "optimizer#lr": 0.01, "loss": {"_target_": "scripts.loss.WeightedDiceCE"}}
    job, status = run_job(seg_bundle, seg_data, overrides, tmp_path / "job")
    assert status["state"] == "completed", status
    # Published as version 2 beside version 1; the engine's registry serves both.
    from claraseg.models.registry import ModelRegistry

    registry = ModelRegistry(seg_bundle.parent)
    assert status["published"] == "segmentation@v2" and registry.versions("segmentation") == [1, 2]
    meta = registry.get("segmentation@v2").metadata
    assert meta["claraseg"]["fine_tune"]["best_dice"] == status["best_dice"]
    assert meta["claraseg"]["fine_tune"]["baseline_dice"] == status["baseline_dice"]
    # Every client (a remote one reads only descriptors) sees the before/after Dice of the new version.
    shown = registry.descriptor("segmentation@v2").extra["fine_tune"]
    assert (shown["baseline_dice"], shown["best_dice"]) == (status["baseline_dice"], status["best_dice"])
    assert "fine_tune" not in registry.descriptor("segmentation@v1").extra
    assert registry.network("segmentation@v2") is not None and (seg_bundle.parent / "segmentation@v2" / "scripts").is_dir()
    assert registry.descriptor("segmentation").version == "0.0.2"  # the starting bundle is 0.0.1
    events = job.events()
    check_events(events)
    curve = losses(events)
    assert sorted(curve) == list(range(1, 11))
    assert np.mean([curve[i] for i in (8, 9, 10)]) < np.mean([curve[i] for i in (1, 2, 3)])
    vals = [e for e in events if e["event"] == "validation"]
    assert vals[0]["baseline"] and vals[0]["iteration"] == 0 and vals[-1]["iteration"] == 10
    assert set(vals[0]["per_label"]) <= {"liver", "spleen", "kidney_right", "kidney_left", "stomach"}
    assert status["baseline_dice"] == vals[0]["dice"] and status["best_dice"] == max(v["dice"] for v in vals[1:])
    assert list((tmp_path / "job" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "job" / "curves.png").stat().st_size > 5000
    assert JobManager(tmp_path).list()[0].id == "job"


def test_cancel(tmp_path, seg_bundle, seg_data):
    job = FineTuneJob(seg_bundle, seg_data, {**FAST, "training#max_iterations": 100000}, tmp_path / "job",
                      threads=1, device="cpu").start()
    wait_for_event(job, lambda e: e["event"] == "iteration" and e["iteration"] >= 2)
    status = job.cancel(timeout=60)
    assert status["state"] == "cancelled" and not status["running"]
    assert status["returncode"] == 3
    assert status["published"] is None and sorted(p.name for p in seg_bundle.parent.iterdir()) == ["segmentation"]
    assert not any(e["event"] == "published" for e in job.events())


def test_kill9_resume_and_determinism(tmp_path, seg_bundle, seg_data):
    overrides = {**FAST, "training#max_iterations": 24, "training#checkpoint_interval": 5, "training#val_interval": 100,
                 "training#deterministic": True, "training#publish": False}
    # The reference run and the run to be killed go side by side.
    ref_job = FineTuneJob(seg_bundle, seg_data, overrides, tmp_path / "ref", threads=1, device="cpu").start()
    job = FineTuneJob(seg_bundle, seg_data, overrides, tmp_path / "killed", threads=1, device="cpu").start()
    wait_for_event(job, lambda e: e["event"] == "iteration" and e["iteration"] >= 12)
    os.kill(job.pid(), signal.SIGKILL)
    job.wait(30)
    assert job.status()["state"] == "interrupted"
    before = job.events()
    last_ckpt = max(e["iteration"] for e in before if e["event"] == "checkpoint")
    done = max(e["iteration"] for e in before if e["event"] == "iteration")
    # Checkpoints every 5 iterations; killed at iteration 12 or, on a loaded machine, a little later.
    assert last_ckpt % 5 == 0 and 10 <= last_ckpt < 25 and done - last_ckpt <= 5
    status = job.resume().wait(120)
    assert ref_job.wait(60)["state"] == "completed"
    reference = losses(ref_job.events())
    assert status["state"] == "completed" and status["iteration"] == 24
    after = job.events()[len(before):]
    resumed = [e for e in after if e["event"] == "info" and e["message"] == "resumed from checkpoint"]
    assert resumed and resumed[0]["iteration"] == last_ckpt
    its = [e["iteration"] for e in after if e["event"] == "iteration"]
    assert its == list(range(last_ckpt + 1, 25))  # nothing lost, nothing repeated beyond the checkpoint
    # Deterministic mode: the interrupted run and the resumed one reproduce the reference curve exactly.
    first = losses(before)
    assert all(first[i] == reference[i] for i in first)
    assert all(losses(after)[i] == pytest.approx(reference[i], rel=1e-6) for i in its)


def test_interactive_job(tmp_path, interactive_data):
    bundle = tiny_bundle(tmp_path / "models", "deepgrow3d")
    overrides = {**FAST, "training#max_iterations": 6, "training#val_interval": 3, "validation_samples": 2,
                 "validation_clicks": 2}
    job, status = run_job(bundle, interactive_data, overrides, tmp_path / "job", structures=["liver", "spleen", "stomach"])
    assert status["state"] == "completed", status
    events = job.events()
    check_events(events)
    data = [e for e in events if e.get("message") == "data prepared"][0]
    assert data["train_cases"] == 2 and data["val_cases"] == 1
    vals = [e for e in events if e["event"] == "validation"]
    assert len(vals) == 3 and all(0.0 <= v["dice"] <= 1.0 for v in vals)
    assert sorted(losses(events)) == list(range(1, 7))
    from claraseg.models.registry import ModelRegistry

    assert status["published"] == "deepgrow3d@v2"
    assert ModelRegistry(bundle.parent).descriptor("deepgrow3d").extra["versions"] == ["deepgrow3d@v1", "deepgrow3d@v2"]


def test_ddp_two_gloo_processes(tmp_path, seg_bundle, seg_data):
    # Also: gradient accumulation (2 batches per step) and the on-disk PersistentDataset.
    overrides = {**FAST, "training#max_iterations": 4, "training#checkpoint_interval": 2, "training#publish": False,
                 "training#grad_accumulation": 2, "training#dataset": "persistent"}
    job, status = run_job(seg_bundle, seg_data, overrides, tmp_path / "job", nproc=2, timeout=180)
    assert status["state"] == "completed", (status, (tmp_path / "job" / "worker.log").read_text()[-3000:])
    events = job.events()
    check_events(events)
    assert events[0]["world_size"] == 2
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [1, 2, 3, 4]  # rank 0 writes alone
    assert list((tmp_path / "job" / "cache").glob("*.pt"))
    # 2 training cases on 2 ranks, 1 per batch: 1 batch per rank and epoch, 2 batches per step -> 2 epochs per step.
    assert [e["epoch"] for e in events if e["event"] == "iteration"] == [1, 3, 5, 7]
