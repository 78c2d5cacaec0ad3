"""The training loop of one fine-tune job, run inside the job's own process (:mod:`claraseg.train.worker`).

Order of work: validate the config (dry run) -> check and prepare the data -> the starting model's
Dice on the held-out cases -> train, with checkpoints every ``checkpoint_interval`` iterations (model,
optimizer, scheduler, AMP scaler, RNG states, data cursor) -> final validation -> publish the best model.
Every step reports through :class:`~claraseg.train.events.EventWriter`.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from claraseg.errors import CancelledError, ClarasegError, ConfigError, ModelError
from claraseg.train import config as cfg
from claraseg.train.data import PreparedData, prepare_data
from claraseg.train.datasets import SeededItems, epoch_batches, make_dataset
from claraseg.train.events import EventWriter, read_events
from claraseg.train.spec import JobSpec
from claraseg.train.tasks import make_task


class Dist:
    """Rank and world size from torchrun's environment; process group set up when ``WORLD_SIZE > 1``."""

    def __init__(self, device_type: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1:
            import torch.distributed as td

            td.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one (cancellation must stop all ranks together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0])
        torch.distributed.all_reduce(t)
        return bool(t.item())

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def load_weights(network: torch.nn.Module, bundle: Path) -> bool:
    """Load ``models/model.pt`` (a state dict, possibly under ``model``/``state_dict``) into the network."""
    path = bundle / "models" / "model.pt"
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot read the weights ({e})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "network"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"{path}: the weights do not fit network_def ({str(e).splitlines()[0]})") from None
    return True


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process (MB); None where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Runner:
    """Runs one job in its working folder (see docs/training.md for the layout)."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir).resolve()
        self.spec = JobSpec.load(self.workdir / "job.json")
        self.ckpt_dir = self.workdir / "checkpoints"
        self.cancel_file = self.workdir / "cancel"
        self._cancel_signal = False

    # ----- entry point ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the job; returns the process exit code (0 completed, 1 internal error, 2 bad input, 3 cancelled)."""
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        device_type = "cuda" if self.spec.device.startswith("cuda") or (
            self.spec.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = Dist(device_type)
        self.events = EventWriter(self.workdir / "events.jsonl", enabled=self.dist.rank == 0)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.events.state("preparing", pid=os.getpid(), world_size=self.dist.world_size)
            result = self._run()
            self.events.state("completed", **result)
            return 0
        except CancelledError:
            self.events.state("cancelled", iteration=getattr(self, "iteration", 0))
            return 3
        except ClarasegError as e:
            self.events.emit("error", type=type(e).__name__, code=e.code, message=str(e))
            self.events.state("failed")
            return 2
        except Exception as e:
            self.events.emit("error", type=type(e).__name__, code="internal_error", message=str(e),
                             traceback=traceback.format_exc())
            self.events.state("failed")
            return 1
        finally:
            dataset = getattr(self, "dataset", None)
            if hasattr(dataset, "shutdown"):
                dataset.shutdown()
            self.dist.close()

    def _on_sigterm(self, signum, frame) -> None:
        self._cancel_signal = True

    def _check_cancel(self) -> None:
        if self.dist.any(self._cancel_signal or self.cancel_file.exists()):
            raise CancelledError("the job was cancelled")

    # ----- the job ---------------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        spec, ev = self.spec, self.events
        bundle = Path(spec.bundle).resolve()
        self.device = pick_device(spec.device, self.dist)
        meta = cfg.read_metadata(bundle)
        cmeta = meta.get("claraseg") or {}
        kind = cmeta.get("kind")
        if not kind:
            raise ConfigError(f"{bundle}/configs/metadata.json has no claraseg.kind (segmentation, deepgrow3d...)")
        parser = cfg.make_parser(bundle, spec.overrides, extra={"device": f"$torch.device('{self.device}')"})
        parser.parse(reset=True)
        self._seed(cfg.settings_from(parser))  # before the network is built: its initial weights are seeded too
        comps = cfg.validate(parser)
        settings = self.settings = comps["settings"]
        self.task = make_task(kind, comps, cmeta)
        network: torch.nn.Module = comps["network_def"].to(self.device)
        warm = load_weights(network, bundle)
        if "validation_samples" in parser and hasattr(self.task, "validation_samples"):
            self.task.validation_samples = int(cfg.parsed(parser, "validation_samples"))
        if hasattr(self.task, "attach"):
            self.task.attach(network)
        ev.emit("info", message="configuration validated", kind=kind, settings=settings, warm_start=warm,
                device=str(self.device))

        prepared_path = self.workdir / "data" / "prepared.json"
        if self.dist.rank == 0 and not prepared_path.exists():
            labels = {int(k): v for k, v in (cmeta.get("labels") or {}).items()}
            prepare_data(spec.datalist, labels, kind, self.workdir / "data", settings, spec.structures)
        self.dist.barrier()
        data = PreparedData.load(prepared_path)
        ev.emit("info", message="data prepared", train_cases=len(data.train), val_cases=len(data.val),
                notes=data.notes)

        resume = self._load_checkpoint(network, comps)
        self.iteration = resume.get("iteration", 0) if resume else 0
        epoch = resume.get("epoch", 0) if resume else 0
        cursor = resume.get("cursor", 0) if resume else 0
        self.best = resume.get("best", {"dice": None, "iteration": None}) if resume else {"dice": None, "iteration": None}
        baseline = resume.get("baseline") if resume else None

        val_items = self._val_items(comps["validate#preprocessing"], data)
        if baseline is None and self.dist.rank == 0:
            baseline = self._validate(network, val_items, data, baseline=True)
        self._check_cancel()

        self.dataset = make_dataset(settings["dataset"], self.task.items(data.train), comps["train#preprocessing"],
                                    settings, self.workdir / "cache", start_epoch=epoch)
        model = network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._train(model, network, comps, val_items, data, baseline, epoch, cursor)
        final = self._finish(network, bundle, meta, baseline)
        return final

    def _seed(self, settings: dict[str, Any]) -> None:
        seed = settings["seed"] + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if settings["deterministic"]:
            from monai.utils import set_determinism

            set_determinism(seed=seed)
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _val_items(self, transform, data: PreparedData) -> list[dict[str, Any]]:
        if self.dist.rank != 0:
            return []
        items = []
        for item in self.task.items(data.val):
            out = transform(item)
            items.append(out[0] if isinstance(out, list) else out)
        return items

    def _validate(self, network, val_items, data: PreparedData, baseline: bool = False) -> float:
        t0 = time.time()
        score, per_label = self.task.validate(network, val_items, data.val, self.device, self.settings["sw_batch_size"])
        self.events.emit("validation", iteration=self.iteration, dice=score, per_label=per_label, baseline=baseline,
                         cases=len(val_items), time_s=round(time.time() - t0, 3))
        if getattr(self, "tb", None) is not None:
            self.tb.add_scalar("val/dice", score, self.iteration)
        return score

    # ----- checkpoints -----------------------------------------------------------------------------------
    def _load_checkpoint(self, network, comps) -> dict[str, Any] | None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        network.load_state_dict(state["model"])
        comps["optimizer"].load_state_dict(state["optimizer"])
        if comps.get("lr_scheduler") is not None and state.get("lr_scheduler") is not None:
            comps["lr_scheduler"].load_state_dict(state["lr_scheduler"])
        self._scaler_state = state.get("scaler")
        _set_rng_state(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        self.events.emit("info", message="resumed from checkpoint", path=str(path), iteration=state["iteration"],
                         epoch=state["epoch"], cursor=state["cursor"])
        return state

    def _save_checkpoint(self, network, comps, scaler, epoch: int, cursor: int, baseline: float | None) -> None:
        rngs = [_rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.dist.rank != 0:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        sched = comps.get("lr_scheduler")
        state = {"model": network.state_dict(), "optimizer": comps["optimizer"].state_dict(),
                 "lr_scheduler": sched.state_dict() if sched is not None else None,
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "iteration": self.iteration, "epoch": epoch, "cursor": cursor, "best": self.best,
                 "baseline": baseline, "rng": rngs, "settings": self.settings}
        path = self.ckpt_dir / "last.pt"
        _atomic_save(state, path)
        self.events.emit("checkpoint", path=str(path), iteration=self.iteration, epoch=epoch, cursor=cursor)

    # ----- training ----------------------------------------------------------------------------------------
    def _train(self, model, network, comps, val_items, data, baseline, epoch: int, cursor: int) -> None:
        from monai.data import DataLoader, list_data_collate
        from torch.utils.tensorboard import SummaryWriter

        s, ev = self.settings, self.events
        optimizer, scheduler = comps["optimizer"], comps.get("lr_scheduler")
        amp = s["amp"] and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp else None
        if scaler is not None and getattr(self, "_scaler_state", None):
            scaler.load_state_dict(self._scaler_state)
        self.tb = SummaryWriter(str(self.workdir / "tensorboard")) if self.dist.rank == 0 else None
        items = SeededItems(self.dataset)
        accum = s["grad_accumulation"]
        max_it = s["max_iterations"]
        steps_per_epoch = max(1, len(epoch_batches(len(items), s["batch_size"], s["seed"], 0, self.dist.rank,
                                                   self.dist.world_size)) // accum)
        if s["max_epochs"] is not None:
            max_it = min(max_it, s["max_epochs"] * steps_per_epoch)
        self.max_iterations = max_it
        ev.state("training", iteration=self.iteration, max_iterations=max_it, epoch=epoch,
                 train_items=len(items), baseline_dice=baseline)
        if hasattr(self.dataset, "start"):
            self.dataset.start()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        start_iteration, t_start = self.iteration, time.time()
        rate = None
        pending: list[float] = []
        while self.iteration < max_it:
            batches = epoch_batches(len(items), s["batch_size"], s["seed"], epoch, self.dist.rank, self.dist.world_size)
            loader = DataLoader(items, batch_sampler=batches[cursor:], num_workers=s["num_workers"],
                                collate_fn=list_data_collate)
            t_epoch, epoch_losses = time.time(), []
            t_it = time.time()
            for batch in loader:
                cursor += 1
                with torch.autocast(self.device.type, enabled=amp):
                    loss = self.task.batch_loss(model, batch, self.device) / accum
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                pending.append(float(loss.detach()) * accum)
                if len(pending) < accum:
                    continue
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.iteration += 1
                value = float(np.mean(pending))
                pending = []
                epoch_losses.append(value)
                dt = time.time() - t_it
                t_it = time.time()
                rate = 1.0 / max(dt, 1e-6) if rate is None else 0.8 * rate + 0.2 / max(dt, 1e-6)
                lr = optimizer.param_groups[0]["lr"]
                if self.iteration % s["log_interval"] == 0 or self.iteration == max_it:
                    eta = (max_it - self.iteration) / rate
                    if s["max_time_s"] is not None:
                        eta = min(eta, max(0.0, s["max_time_s"] - (time.time() - t_start)))
                    ev.emit("iteration", iteration=self.iteration, max_iterations=max_it, epoch=epoch, loss=value,
                            lr=lr, its_per_s=round(rate, 4), eta_s=round(eta, 1))
                if self.tb is not None:
                    self.tb.add_scalar("train/loss", value, self.iteration)
                    self.tb.add_scalar("train/lr", lr, self.iteration)
                if self.iteration % s["val_interval"] == 0 and self.iteration < max_it:
                    self._maybe_validate(network, val_items, data)
                    t_it = time.time()
                if s["max_time_s"] is not None and time.time() - t_start >= s["max_time_s"]:
                    max_it = self.max_iterations = self.iteration  # the time budget is spent
                done = self.iteration >= max_it
                if self.iteration % s["checkpoint_interval"] == 0 and not done:
                    self._save_checkpoint(network, comps, scaler, epoch, cursor, baseline)
                    t_it = time.time()
                self._check_cancel()
                if done:
                    break
            if epoch_losses and cursor >= len(batches):
                ev.emit("epoch", epoch=epoch, iteration=self.iteration, loss=float(np.mean(epoch_losses)),
                        time_s=round(time.time() - t_epoch, 3), peak_memory_mb=_round(peak_memory_mb()))
            if self.iteration >= max_it:
                break
            epoch += 1
            cursor = 0
            if scheduler is not None:
                scheduler.step()
            if hasattr(self.dataset, "update_cache"):
                self.dataset.update_cache()
        elapsed = time.time() - t_start
        self.throughput = (self.iteration - start_iteration) / elapsed if elapsed > 0 else None
        self._maybe_validate(network, val_items, data)
        if self.tb is not None:
            self.tb.close()

    def _maybe_validate(self, network, val_items, data) -> None:
        if self.dist.rank == 0:
            score = self._validate(network, val_items, data)
            if self.best["dice"] is None or score > self.best["dice"]:
                self.best = {"dice": score, "iteration": self.iteration}
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                _atomic_save(network.state_dict(), self.ckpt_dir / "best.pt")
                self.events.emit("checkpoint", path=str(self.ckpt_dir / "best.pt"), iteration=self.iteration, best=True,
                                 dice=score)
        self.dist.barrier()

    # ----- end of the job -------------------------------------------------------------------------------
    def _finish(self, network, bundle: Path, meta: dict[str, Any], baseline: float | None) -> dict[str, Any]:
        result: dict[str, Any] = {"iteration": self.iteration, "baseline_dice": baseline, "best_dice": self.best["dice"],
                                  "best_iteration": self.best["iteration"], "its_per_s": self.throughput,
                                  "peak_memory_mb": _round(peak_memory_mb()), "published": None}
        if self.dist.rank != 0:
            return result
        from claraseg.train.plot import plot_curves

        plot_curves(read_events(self.workdir / "events.jsonl"), self.workdir / "curves.png")
        s = self.settings
        improved = baseline is None or (self.best["dice"] is not None and self.best["dice"] > baseline)
        if not s["publish"]:
            result["publish_skipped"] = "training#publish is false"
        elif s["require_improvement"] and not improved:
            result["publish_skipped"] = (f"best Dice {self.best['dice']:.4f} does not beat the starting model's "
                                         f"{baseline:.4f} (training#require_improvement)")
        else:
            from claraseg.train.publish import publish_best

            self.events.state("publishing", iteration=self.iteration)
            state = torch.load(self.ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
            published = publish_best(bundle, meta, state, self.spec, self.workdir, baseline, self.best)
            self.events.emit("published", **published)
            result["published"] = published["name"]
        return result
