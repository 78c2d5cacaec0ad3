"""One site's part of a round: the project's own fine-tune training, started from the global weights.

This is the only module that reaches into :mod:`claraseg.train`; everything else of the federation
exchanges plain ``{name: numpy array}`` weights. A round is the training part's in-process fine-tune
(:func:`claraseg.train.api.fine_tune`: the same config layering, datalists, label mapping, held-out split,
validation and events as ``claraseg train run``) in ``<site dir>/round_<k>``, run inside the site's NVFlare
process so torch and MONAI are imported once per site:

- it starts from the global weights and trains ``iterations`` steps, validating the received model first
  (the global model's Dice on the site's held-out split) and its own weights once, at the end;
- the site's split is made in its first round; the later rounds train and validate on the very same
  cases (:func:`site_split`), while their seed, hence their crops and clicks, changes from round to round.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.errors import ModelError
from claraseg.models.bundle import read_weights

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
                    seed: int = 0, should_stop: Any = None) -> LocalRound:
    """Fine-tune ``bundle`` from ``weights`` (None: the bundle's own) on ``datalist`` for ``iterations`` steps.

    Args:
        datalist: a datalist file or its content; later rounds pass :func:`site_split` of the first.
        workdir: the round's job folder (new or empty).
        should_stop: a callable polled while training; when it returns true the job is cancelled.

    Returns the final weights and figures; raises the job's typed error when it fails
    (:class:`~claraseg.errors.CancelledError` when stopped).
    """
    from claraseg.train.api import fine_tune
    from claraseg.train.config import load_overrides
    from claraseg.train.events import read_events

    bundle = Path(bundle).resolve()
    workdir = Path(workdir).resolve()
    t0 = time.time()
    state = None
    if weights is not None:
        state = to_state_dict(weights, read_weights(bundle / "models" / "model.pt"))
    done = threading.Event()
    watcher = None
    if should_stop is not None:
        def watch() -> None:
            while not done.wait(0.5):
                if should_stop() and workdir.is_dir():
                    (workdir / "cancel").write_text(str(time.time()))
                    return
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        result = fine_tune(bundle, datalist, workdir, weights=state, iterations=iterations,
                           overrides=round_overrides(load_overrides(dict(overrides or {})), iterations, seed),
                           structures=structures, device=device, threads=threads, keep="last")
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
    events = read_events(workdir / "events.jsonl")
    final = next((e for e in reversed(events) if e.get("event") == "validation" and not e.get("baseline")), {})
    losses = [e["loss"] for e in events if e.get("event") == "iteration" and e.get("loss") is not None]
    training = next((e for e in events if e.get("event") == "state" and e.get("state") == "training"), {})
    m = result.metrics
    return LocalRound(weights=to_numpy(result.weights), iterations=int(m.get("iteration") or iterations),
                      global_dice=m.get("baseline_dice"), local_dice=m.get("dice"),
                      loss=float(np.mean(losses)) if losses else None, per_label=m.get("per_label") or {},
                      train_items=int(training.get("train_items") or 0), val_cases=int(final.get("cases") or 0),
                      time_s=time.time() - t0)


def evaluate_weights(bundle: str | os.PathLike, weights: Mapping[str, Any], prepared: str | os.PathLike, *,
                     overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                     threads: int | None = 1) -> tuple[float, dict[str, float]]:
    """Dice of ``weights`` on the held-out cases of a site's ``prepared.json`` (the job's own validation:
    the same preprocessing, simulated clicks or sliding window, and seeds). Returns ``(mean, per label)``."""
    import torch

    from claraseg.backend import pick_device
    from claraseg.train import config as cfg
    from claraseg.train.data import PreparedData
    from claraseg.train.runner import configure_validation
    from claraseg.train.tasks import make_task

    if threads:
        torch.set_num_threads(threads)
    bundle = Path(bundle).resolve()
    meta = cfg.read_metadata(bundle)
    cmeta = meta.get("claraseg") or {}
    dev = torch.device(pick_device(device))
    parser = cfg.make_parser(bundle, dict(overrides or {}), extra={"device": f"$torch.device('{dev}')"})
    comps = cfg.validate(parser)
    task = make_task(cmeta.get("kind"), comps, cmeta)
    network = comps["network_def"].to(dev)
    network.load_state_dict(to_state_dict(weights, read_weights(bundle / "models" / "model.pt")))
    if hasattr(task, "attach"):
        task.attach(network)
    data = PreparedData.load(prepared)
    transform = comps["validate#preprocessing"]
    items = []
    for item in task.items(data.val):
        out = transform(item)
        items.append(out[0] if isinstance(out, list) else out)
    # Validated as the site's job validates (interactive kinds: the click protocol through the engine).
    with tempfile.TemporaryDirectory(prefix="claraseg-eval-") as folder:
        configure_validation(task, parser, bundle, cmeta.get("kind"), Path(folder) / "models", dev)
        try:
            score, per_label = task.validate(network, items, data.val, dev, comps["settings"]["sw_batch_size"])
        finally:
            if getattr(task, "clicks", None) is not None:
                task.clicks.close()
    return float(score), {k: float(v) for k, v in per_label.items()}


def site_split(site_dir: Path) -> dict[str, list[dict[str, Any]]] | None:
    """The first round's training and held-out cases as a ``{"training", "validation"}`` datalist (its label
    maps are already on the model's labels), or None before the first round prepared them."""
    path = prepared_path(site_dir)
    if path is None:
        return None
    data = json.loads(path.read_text())

    def entries(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"image": c["image"], "label": c["label"], "labels": {str(k): v for k, v in c["structures"].items()}}
                for c in cases]

    return {"training": entries(data["train"]), "validation": entries(data["val"])}


def prepared_path(site_dir: Path) -> Path | None:
    """The ``prepared.json`` of the site's first round that has one (its split), or None."""
    rounds = [p for p in site_dir.glob("round_*/data/prepared.json") if p.parent.parent.name[6:].isdigit()]
    for path in sorted(rounds, key=lambda p: int(p.parent.parent.name[6:])):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return path
    return None
