"""In-process fine-tuning for other programs (a federated-learning client, a notebook):

    from claraseg.train.api import fine_tune
    result = fine_tune("models/deepgrow3d", "site_datalist.json", "rounds/r3", weights=global_state, iterations=50)
    result.weights            # state dict after the last step (or the best validated one: keep="best")
    result.metrics            # {"baseline_dice", "dice", "best_dice", "per_label", "iteration", ...}

It is the same job as ``claraseg train run`` (the same config layering, data checks, simulated clicks,
validation and events in ``<workdir>/events.jsonl``) run in the calling process, without publishing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claraseg.errors import ClarasegError, ConfigError


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns."""

    weights: dict[str, Any]  # state dict (float32 tensors on the CPU)
    metrics: dict[str, Any]
    workdir: Path


def fine_tune(bundle: str | os.PathLike, datalist: Any, workdir: str | os.PathLike, *,
              weights: Mapping[str, Any] | str | os.PathLike | None = None, iterations: int = 100,
              overrides: Mapping[str, Any] | None = None, structures: list[str] | None = None,
              device: str = "cpu", threads: int | None = None, keep: str = "last") -> FineTuneResult:
    """Train ``bundle`` on ``datalist`` for ``iterations`` optimizer steps, starting from ``weights`` (a
    state dict or a ``.pt`` file; default: the bundle's ``models/model.pt``), in this process.

    ``datalist`` is a datalist file or its content, as for ``claraseg train run`` (a ``{"training",
    "validation"}`` dict fixes the validation cases; a plain list is split by ``training#val_fraction``).
    ``workdir`` must be new or empty (each call, e.g. each federated round, gets its own). ``overrides``
    are config ids (``{"optimizer#lr": 5e-5}``). ``keep`` = ``last`` returns the weights after the last
    step, ``best`` those of the best validation. Raises the job's error (:class:`~claraseg.errors.ClarasegError`
    for bad data or config, :class:`~claraseg.errors.CancelledError` on SIGTERM/cancel file).
    """
    import torch

    from claraseg.train.config import load_overrides
    from claraseg.train.events import read_events
    from claraseg.train.runner import Runner
    from claraseg.train.spec import JobSpec

    if keep not in ("last", "best"):
        raise ConfigError(f"keep must be 'last' or 'best', got {keep!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ConfigError(f"iterations must be an integer >= 1, got {iterations!r}")
    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"{workdir}: not empty; every fine_tune call needs a new working folder")
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle).resolve()
    if weights is not None:
        # A copy of the bundle holding the starting weights (the job reads models/model.pt).
        start = workdir / "start" / bundle.name
        shutil.copytree(bundle, start, ignore=shutil.ignore_patterns("model.pt", "*.ts"))
        state = torch.load(weights, map_location="cpu", weights_only=True) if isinstance(weights, (str, os.PathLike)) \
            else dict(weights)
        (start / "models").mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state.items()},
                   start / "models" / "model.pt")
        bundle = start
    if isinstance(datalist, (str, os.PathLike)):
        datalist = str(Path(datalist).resolve())
    settings = {**load_overrides(dict(overrides or {})), "training#max_iterations": iterations,
                "training#publish": False}
    JobSpec(str(bundle), datalist, settings, structures=structures, device=device, threads=threads).save(
        workdir / "job.json")
    runner = Runner(workdir)
    code = runner.run()
    if code != 0:
        error = runner.error
        if isinstance(error, BaseException):
            raise error
        raise ClarasegError(f"the fine-tune in {workdir} failed (exit code {code}); see events.jsonl")
    if keep == "best" and (workdir / "checkpoints" / "best.pt").is_file():
        state = torch.load(workdir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    else:
        state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                 for k, v in runner.network.state_dict().items()}
    events = read_events(workdir / "events.jsonl")
    vals = [e for e in events if e["event"] == "validation"]
    final = [e for e in events if e["event"] == "state" and e["state"] == "completed"][-1]
    metrics = {"iteration": final["iteration"], "baseline_dice": final.get("baseline_dice"),
               "best_dice": final.get("best_dice"), "best_iteration": final.get("best_iteration"),
               "dice": vals[-1]["dice"] if vals else None, "per_label": vals[-1].get("per_label") if vals else None,
               "baseline_per_label": next((v.get("per_label") for v in vals if v.get("baseline")), None),
               "train_cases": next((e["train_cases"] for e in events if e.get("message") == "data prepared"), None),
               "its_per_s": final.get("its_per_s")}
    return FineTuneResult(weights=state, metrics=metrics, workdir=workdir)


__all__ = ["FineTuneResult", "fine_tune"]
