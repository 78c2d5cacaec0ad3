"""One site's part of a round: the project's own fine-tune training, started from the global weights.

This is the only module that reaches into :mod:`claraseg.train`; everything else of the federation
exchanges plain ``{name: numpy array}`` weights. A round is a real fine-tune job (``job.json``,
``events.jsonl``, checkpoints, the same datalists, label mapping, held-out split and validation as
``claraseg train run``) in ``<site dir>/round_<k>``, run inside the site's NVFlare process so torch and
MONAI are imported once per site:

- the global weights are staged as the bundle's ``models/model.pt`` (:func:`stage_weights`),
- the job trains ``iterations`` steps and validates once, at the end, so ``checkpoints/best.pt`` holds the
  final local weights; its baseline validation is the global model's Dice on the site's held-out split,
- the site's split is prepared in its first round and reused by the later ones (same cases, no re-reading).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.errors import CancelledError, ClarasegError, ConfigError, ModelError, TrainingDataError

Weights = dict[str, np.ndarray]


@dataclass
class LocalRound:
    """What a site's round returns: its new weights (float32) and the figures of its job."""

    weights: Weights
    iterations: int
    global_dice: float | None          # the received (global) model on the site's held-out split
    local_dice: float | None           # the locally trained model on the same split
    loss: float | None                 # mean training loss of the round
    per_label: dict[str, float] = field(default_factory=dict)
    train_items: int = 0
    val_cases: int = 0
    time_s: float = 0.0

    def metrics(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "global_dice": self.global_dice, "local_dice": self.local_dice,
                "loss": self.loss, "per_label": self.per_label, "train_items": self.train_items,
                "val_cases": self.val_cases, "time_s": round(self.time_s, 3)}


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A bundle's weights file as a state dict (unwrapping ``model``/``state_dict``/``network``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot read the weights ({e})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "network"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path}: not a state dict of weights")
    return state


def to_numpy(state: Mapping[str, Any]) -> Weights:
    """torch state dict -> float32 numpy arrays (what the sites and the server exchange)."""
    return {k: v.detach().cpu().float().numpy() for k, v in state.items()}


def to_state_dict(weights: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """Numpy (or flat decrypted) weights -> a torch state dict with ``reference``'s names, shapes and dtypes."""
    import torch

    missing = sorted(set(reference) - set(weights))
    extra = sorted(set(weights) - set(reference))
    if missing or extra:
        raise ModelError(f"the global weights do not fit the bundle's network (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    out = {}
    for key, ref in reference.items():
        value = np.asarray(weights[key], dtype=np.float64)
        if value.size != ref.numel():
            raise ModelError(f"weights {key!r}: {value.size} values for a tensor of shape {tuple(ref.shape)}")
        tensor = torch.from_numpy(value.reshape(tuple(ref.shape)))
        if ref.dtype.is_floating_point:
            tensor = tensor.to(torch.float32)
        else:
            tensor = tensor.round().to(ref.dtype)
        out[key] = tensor
    return out


def stage_weights(bundle: Path, state: Mapping[str, Any], out: Path) -> Path:
    """A copy of ``bundle`` (configs, ``scripts/``, metadata) in ``out`` whose ``models/model.pt`` is ``state``."""
    import torch

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("*.pt", "*.ts", "__pycache__", "eval", ".*"))
    (out / "models").mkdir(parents=True, exist_ok=True)
    tmp = out / "models" / "model.pt.tmp"
    torch.save(dict(state), tmp)
    os.replace(tmp, out / "models" / "model.pt")
    return out


@contextlib.contextmanager
def _job_process_signals() -> Iterator[None]:
    """The runner installs a SIGTERM handler, which Python allows in the main thread only; NVFlare calls
    executors from worker threads, where cancellation goes through the job's ``cancel`` file instead."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    import claraseg.train.runner as runner_module

    real = runner_module.signal
    runner_module.signal = types.SimpleNamespace(signal=lambda *args: None, SIGTERM=real.SIGTERM)
    try:
        yield
    finally:
        runner_module.signal = real


_ERRORS = {"config_error": ConfigError, "training_data_error": TrainingDataError, "model_error": ModelError}


def _raise_job_error(events: list[dict[str, Any]], workdir: Path) -> None:
    error = next((e for e in reversed(events) if e.get("event") == "error"), None)
    if error is None:
        raise ClarasegError(f"the site's fine-tune job in {workdir} did not complete (see its worker.log)")
    cls = _ERRORS.get(error.get("code"), ClarasegError)
    raise cls(f"site training failed: {error.get('message')}")


def round_overrides(overrides: Mapping[str, Any], iterations: int, seed: int) -> dict[str, Any]:
    """The job's overrides for one round: ``iterations`` steps, one validation at the end, no publishing."""
    out = dict(overrides)
    out.update({"training#max_iterations": iterations, "training#max_epochs": None, "training#max_time_s": None,
                "training#val_interval": iterations, "training#checkpoint_interval": iterations,
                "training#publish": False, "training#require_improvement": False, "training#seed": seed})
    return out


def fine_tune_round(bundle: str | os.PathLike, datalist: Any, weights: Mapping[str, Any] | None, iterations: int,
                    workdir: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None,
                    structures: list[str] | None = None, device: str = "cpu", threads: int | None = 1,
                    seed: int = 0, prepared: str | os.PathLike | None = None,
                    should_stop: Any = None) -> LocalRound:
    """Fine-tune ``bundle`` from ``weights`` (None: the bundle's own) on ``datalist`` for ``iterations`` steps.

    Args:
        workdir: the round's job folder (created; must not hold a job yet).
        prepared: a ``data/prepared.json`` of an earlier round of this site, to reuse its split.
        should_stop: a callable polled while training; when it returns true the job is cancelled.

    Returns the final weights and figures; raises the job's typed error when it fails
    (:class:`~claraseg.errors.CancelledError` when stopped).
    """
    from claraseg.train.config import load_overrides
    from claraseg.train.events import read_events
    from claraseg.train.runner import Runner
    from claraseg.train.spec import JobSpec

    bundle = Path(bundle).resolve()
    workdir = Path(workdir).resolve()
    if (workdir / "events.jsonl").exists():
        raise ConfigError(f"{workdir}: already holds a round's job")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    start = bundle
    if weights is not None:
        reference = read_state_dict(bundle / "models" / "model.pt")
        start = stage_weights(bundle, to_state_dict(weights, reference), workdir / "bundle")
    if prepared is not None and Path(prepared).is_file():
        (workdir / "data").mkdir(exist_ok=True)
        shutil.copyfile(prepared, workdir / "data" / "prepared.json")
    if isinstance(datalist, (str, os.PathLike)):
        datalist = str(Path(datalist).resolve())
    spec = JobSpec(str(start), datalist, round_overrides(load_overrides(overrides), iterations, seed), None, None,
                   structures, device, threads, 1)
    spec.save(workdir / "job.json")

    done = threading.Event()
    watcher = None
    if should_stop is not None:
        def watch() -> None:
            while not done.wait(0.5):
                if should_stop():
                    (workdir / "cancel").write_text(str(time.time()))
                    return
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        with _job_process_signals():
            code = Runner(workdir).run()
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
    events = read_events(workdir / "events.jsonl")
    if code == 3:
        raise CancelledError("the site's round was cancelled")
    if code != 0:
        _raise_job_error(events, workdir)

    vals = [e for e in events if e.get("event") == "validation"]
    baseline = next((e for e in vals if e.get("baseline")), None)
    final = next((e for e in reversed(vals) if not e.get("baseline")), None)
    losses = [e["loss"] for e in events if e.get("event") == "iteration" and e.get("loss") is not None]
    training = next((e for e in events if e.get("event") == "state" and e.get("state") == "training"), {})
    completed = next(e for e in reversed(events) if e.get("event") == "state" and e.get("state") == "completed")
    state = read_state_dict(workdir / "checkpoints" / "best.pt")
    return LocalRound(weights=to_numpy(state), iterations=int(completed.get("iteration") or iterations),
                      global_dice=baseline.get("dice") if baseline else None,
                      local_dice=final.get("dice") if final else None,
                      loss=float(np.mean(losses)) if losses else None,
                      per_label=(final or {}).get("per_label") or {}, train_items=int(training.get("train_items") or 0),
                      val_cases=int((final or {}).get("cases") or 0), time_s=time.time() - t0)


def evaluate_weights(bundle: str | os.PathLike, weights: Mapping[str, Any], prepared: str | os.PathLike, *,
                     overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                     threads: int | None = 1) -> tuple[float, dict[str, float]]:
    """Dice of ``weights`` on the held-out cases of a site's ``prepared.json`` (the job's own validation:
    the same preprocessing, simulated clicks or sliding window, and seeds). Returns ``(mean, per label)``."""
    import torch

    from claraseg.train import config as cfg
    from claraseg.train.data import PreparedData
    from claraseg.train.tasks import make_task

    if threads:
        torch.set_num_threads(threads)
    bundle = Path(bundle).resolve()
    meta = cfg.read_metadata(bundle)
    cmeta = meta.get("claraseg") or {}
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    parser = cfg.make_parser(bundle, dict(overrides or {}), extra={"device": f"$torch.device('{dev}')"})
    comps = cfg.validate(parser)
    task = make_task(cmeta.get("kind"), comps, cmeta)
    network = comps["network_def"].to(dev)
    network.load_state_dict(to_state_dict(weights, read_state_dict(bundle / "models" / "model.pt")))
    if "validation_samples" in parser and hasattr(task, "validation_samples"):
        task.validation_samples = int(cfg.parsed(parser, "validation_samples"))
    if hasattr(task, "attach"):
        task.attach(network)
    data = PreparedData.load(prepared)
    transform = comps["validate#preprocessing"]
    items = []
    for item in task.items(data.val):
        out = transform(item)
        items.append(out[0] if isinstance(out, list) else out)
    score, per_label = task.validate(network, items, data.val, dev, comps["settings"]["sw_batch_size"])
    return float(score), {k: float(v) for k, v in per_label.items()}


def prepared_path(site_dir: Path) -> Path | None:
    """The ``prepared.json`` of the site's first round that has one (its split), or None."""
    for path in sorted(site_dir.glob("round_*/data/prepared.json"), key=lambda p: int(p.parent.parent.name[6:])):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return path
    return None
