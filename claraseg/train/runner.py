"""The training loop of one fine-tune job, run inside the job's own process (:mod:`claraseg.train.worker`).

Order of work: validate the config (dry run) -> check and prepare the data -> the starting model's
Dice on the held-out cases -> train, with checkpoints every ``checkpoint_interval`` iterations (model,
optimizer, scheduler, AMP scaler, RNG states, data cursor) -> final validation -> with ``training#wise``
the interpolations of the starting and the end weights (:meth:`Runner._choose_wise`) -> publish the best model.
Every step reports through :class:`~claraseg.train.events.EventWriter`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from claraseg.errors import CancelledError, ClarasegError, ConfigError, ModelError
from claraseg.models.bundle import read_weights
from claraseg.train import config as cfg
from claraseg.train.data import PreparedData, prepare_data
from claraseg.train.datasets import make_dataset
from claraseg.train.events import EventWriter, read_events
from claraseg.train.loop import (
    CancelHandler,
    CheckpointHandler,
    EventsHandler,
    Handler,
    LoaderSource,
    LoopState,
    TensorBoardHandler,
    TrainingLoop,
    ValidationHandler,
    atomic_torch_save,
    peak_memory_mb,
    rng_state,
    seed_everything,
    set_rng_state,
)
from claraseg.train.spec import JobSpec
from claraseg.train.tasks import make_task
from claraseg.train.wise import interpolate_weights, wise_alphas


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


def job_device(name: str, dist: Dist) -> torch.device:
    """The job's device (:func:`claraseg.backend.pick_device`); a DDP rank on CUDA takes its local GPU."""
    from claraseg.backend import pick_device

    name = pick_device(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def load_weights(network: torch.nn.Module, bundle: Path) -> bool:
    """Load ``models/model.pt`` (a state dict, possibly under ``model``/``state_dict``) into the network."""
    path = bundle / "models" / "model.pt"
    if not path.is_file():
        return False
    state = read_weights(path)
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"{path}: the weights do not fit network_def ({str(e).splitlines()[0]})") from None
    return True


#: Normalisation layers that ``training#freeze_norm`` keeps in eval mode.
NORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm,
              torch.nn.GroupNorm, torch.nn.LayerNorm)


def select_trainable(network: torch.nn.Module, patterns: list[str] | None) -> int:
    """Freeze every parameter whose name matches none of ``patterns`` (``training#trainable``; null: tune
    all); returns how many parameter values are tuned. A list that selects nothing is a :class:`ConfigError`."""
    import re

    if patterns is None:
        return sum(p.numel() for p in network.parameters() if p.requires_grad)
    tuned = 0
    for name, p in network.named_parameters():
        keep = any(re.search(pattern, name) for pattern in patterns)
        p.requires_grad_(keep)
        tuned += p.numel() if keep else 0
    if not tuned:
        names = [n for n, _ in network.named_parameters()]
        raise ConfigError(f"training#trainable {patterns} matches none of the network's parameters "
                          f"(e.g. {', '.join(names[:3])} ... {names[-1] if names else ''})")
    return tuned


def use_distillation(task, network: torch.nn.Module, settings: dict[str, Any], kind: str, warm: bool) -> None:
    """Give an interactive task a frozen copy of the starting network as the teacher of
    ``training#distill``; a :class:`ConfigError` for a kind without it or a job without starting weights."""
    import copy

    if not hasattr(task, "use_distillation"):
        raise ConfigError(f"training#distill applies to the interactive models (deepgrow3d, deepgrow2d, dextr3d), "
                          f"not to a {kind} model; set it to 0")
    if not warm:
        raise ConfigError("training#distill keeps the starting model's outputs, but the bundle has no weights "
                          "(models/model.pt); set it to 0")
    teacher = copy.deepcopy(network).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    task.use_distillation(teacher, settings["distill"], settings["distill_fraction"], settings["distill_replay"])


def configure_validation(task, parser, bundle: Path, kind: str, folder: Path, device: torch.device,
                         clicks: bool = True) -> None:
    """Set an interactive task's validation from the config: ``validation_samples`` ROI samples, and with
    ``validation_clicks`` > 0 (and ``clicks``) the click protocol through the engine, its bundle copy in
    ``folder`` (:class:`~claraseg.train.clickval.ClickValidation`; close it with ``task.clicks.close()``),
    ``validation_click_sequences`` click sequences per structure."""
    if "validation_samples" in parser and hasattr(task, "validation_samples"):
        task.validation_samples = int(cfg.parsed(parser, "validation_samples"))
    if "validation_clicks" in parser and hasattr(task, "clicks") and clicks:
        n = cfg.parsed(parser, "validation_clicks")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 20:
            raise ConfigError(f"validation_clicks must be an integer in 0..20 (0: ROI samples), got {n!r}")
        sequences = cfg.parsed(parser, "validation_click_sequences") if "validation_click_sequences" in parser else 1
        if not isinstance(sequences, int) or isinstance(sequences, bool) or not 1 <= sequences <= 10:
            raise ConfigError(f"validation_click_sequences must be an integer in 1..10, got {sequences!r}")
        if n:
            from claraseg.train.clickval import ClickValidation

            task.clicks = ClickValidation(bundle, folder, kind, n, device=str(device), sequences=sequences)


def lost_structures(baseline: dict[str, float], current: dict[str, float], drop: float) -> dict[str, float]:
    """``{structure: Dice lost}`` of the structures whose Dice fell more than ``drop`` below the baseline's."""
    return {k: round(baseline[k] - v, 4) for k, v in current.items() if k in baseline and v < baseline[k] - drop}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _EpochHooks(Handler):
    """Smart Cache replaces part of its window at the start of every new epoch."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def new_epoch(self, loop: TrainingLoop) -> None:
        if hasattr(self.dataset, "update_cache"):
            self.dataset.update_cache()


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
        from claraseg.backend import pick_device

        device_type = "cuda" if pick_device(self.spec.device).startswith("cuda") else "cpu"
        self.dist = Dist(device_type)
        self.events = EventWriter(self.workdir / "events.jsonl", enabled=self.dist.rank == 0)
        self.error: BaseException | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.events.state("preparing", pid=os.getpid(), world_size=self.dist.world_size)
            result = self._run()
            self.events.state("completed", **result)
            return 0
        except CancelledError as e:
            self.error = e
            loop = getattr(self, "loop", None)
            self.events.state("cancelled", iteration=loop.state.iteration if loop else getattr(self, "iteration", 0))
            return 3
        except ClarasegError as e:
            self.error = e
            self.events.emit("error", type=type(e).__name__, code=e.code, message=str(e))
            self.events.state("failed")
            return 2
        except Exception as e:
            self.error = e
            self.events.emit("error", type=type(e).__name__, code="internal_error", message=str(e),
                             traceback=traceback.format_exc())
            self.events.state("failed")
            return 1
        finally:
            dataset = getattr(self, "dataset", None)
            if hasattr(dataset, "shutdown"):
                dataset.shutdown()
            clicks = getattr(getattr(self, "task", None), "clicks", None)
            if clicks is not None:
                clicks.close()
            self.dist.close()

    def _on_sigterm(self, signum, frame) -> None:
        self._cancel_signal = True

    def _cancel_requested(self) -> bool:
        """True on every rank when one was asked to stop (all ranks must stop together)."""
        return self.dist.any(self._cancel_signal or self.cancel_file.exists())

    def _check_cancel(self) -> None:
        if self._cancel_requested():
            raise CancelledError("the job was cancelled")

    # ----- the job ---------------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        spec, ev = self.spec, self.events
        bundle = Path(spec.bundle).resolve()
        self.device = job_device(spec.device, self.dist)
        meta = cfg.read_metadata(bundle)
        cmeta = meta.get("claraseg") or {}
        kind = cmeta.get("kind")
        if not kind:
            raise ConfigError(f"{bundle}/configs/metadata.json has no claraseg.kind (segmentation, deepgrow3d...)")
        parser = cfg.make_parser(bundle, spec.overrides, extra={"device": f"$torch.device('{self.device}')"})
        parser.parse(reset=True)
        s0 = cfg.settings_from(parser)
        # Before the network is built: its initial weights are seeded too.
        seed_everything(s0["seed"] + self.dist.rank, s0["deterministic"])
        comps = cfg.validate(parser)
        settings = self.settings = comps["settings"]
        self.task = make_task(kind, comps, cmeta)
        network: torch.nn.Module = comps["network_def"].to(self.device)
        warm = load_weights(network, bundle)
        if settings["wise"] is not None and not warm:
            raise ConfigError("training#wise interpolates toward the starting weights, but the bundle has none "
                              "(models/model.pt); set it to null")
        # WiSE-FT interpolates from the starting weights (read before a resumed checkpoint).
        self.start_state = {k: v.detach().clone() for k, v in network.state_dict().items()} \
            if settings["wise"] is not None else None
        tuned = select_trainable(network, settings["trainable"])
        # L2-SP pulls the tuned weights toward the starting model's (read before a resumed checkpoint).
        self.anchor = {n: p.detach().clone() for n, p in network.named_parameters()
                       if p.requires_grad} if settings["l2sp"] > 0 else {}
        if settings["distill"] > 0:
            use_distillation(self.task, network, settings, kind, warm)
        configure_validation(self.task, parser, bundle, kind, self.workdir / "validation_models", self.device,
                             clicks=self.dist.rank == 0)
        if hasattr(self.task, "attach"):
            self.task.attach(network)
        ev.emit("info", message="configuration validated", kind=kind, settings=settings, warm_start=warm,
                device=str(self.device), tuned_parameters=tuned)

        prepared_path = self.workdir / "data" / "prepared.json"
        if self.dist.rank == 0 and not prepared_path.exists():
            labels = {int(k): v for k, v in (cmeta.get("labels") or {}).items()}
            prepare_data(spec.datalist, labels, kind, self.workdir / "data", settings, spec.structures)
        self.dist.barrier()
        data = PreparedData.load(prepared_path)
        notes = list(data.notes)
        if data.replay and hasattr(self.task, "use_replay_cases"):
            note = self.task.use_replay_cases(data.replay)
            notes += [note] if note else []
        ev.emit("info", message="data prepared", train_cases=len(data.train), val_cases=len(data.val),
                guard_cases=len(data.guard), replay_cases=len(data.replay), notes=notes)

        resume = self._load_checkpoint(network, comps) or {}
        self.iteration = resume.get("iteration", 0)
        best = resume.get("best", {"dice": None, "iteration": None})
        baseline = resume.get("baseline")
        if resume.get("baseline_per_label"):
            self.baseline_per_label = resume["baseline_per_label"]
        if resume.get("baseline_guard"):
            self.baseline_guard = resume["baseline_guard"]

        val_items = self._val_items(comps["validate#preprocessing"], data.val)
        self.guard_items = self._val_items(comps["validate#preprocessing"], data.guard)
        if baseline is None and self.dist.rank == 0:
            baseline = self._validate(network, val_items, data, baseline=True)
        self._check_cancel()
        self.network = network

        epoch = resume.get("epoch", 0)
        self.dataset = make_dataset(settings["dataset"], self.task.items(data.train), comps["train#preprocessing"],
                                    settings, self.workdir / "cache", start_epoch=epoch)
        model = network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        loop = self._make_loop(model, network, comps, val_items, data, baseline, best, resume)
        self.loop = loop
        if hasattr(self.dataset, "start"):
            self.dataset.start()
        loop.run()
        self.iteration = loop.state.iteration
        self.throughput = loop.throughput
        self.best = self.validation.best
        if self.start_state is not None and self.dist.rank == 0:
            self.best = self._choose_wise(network, val_items, data)
        return self._finish(network, bundle, meta, baseline)

    def _choose_wise(self, network, val_items, data: PreparedData) -> dict[str, Any]:
        """WiSE-FT (``training#wise``): validate the interpolations ``start + alpha * (end - start)`` of the
        starting weights and the weights at the end of training (alpha 1: the end's own final validation)
        and keep the best score at which no held-out or guard structure lost more than ``max_label_drop``
        (``best.pt``; the end's weights are kept as ``end.pt``); the training's own checkpoints are not
        candidates. Returns the new best (dice None when no interpolation qualified: nothing is published)."""
        end = {k: v.detach().clone() for k, v in network.state_dict().items()}
        atomic_torch_save(end, self.ckpt_dir / "end.pt")  # what the interpolations start from, for audits
        history = self.validation.history
        validated_end = bool(history) and history[-1]["iteration"] == self.iteration
        best: dict[str, Any] = {"dice": None, "iteration": None, "alpha": None}
        tried = []
        # From alpha 1 down: the end's own final validation is the last one run, so it is judged first.
        for alpha in sorted(wise_alphas(self.settings["wise"]), reverse=True):
            if alpha == 1.0 and validated_end:
                score = float(self.last_score)
            else:
                network.load_state_dict(interpolate_weights(self.start_state, end, alpha))
                score = self._validate(network, val_items, data, alpha=alpha)
            lost = self._lost()
            tried.append({"alpha": alpha, "dice": round(score, 4), "lost": lost})
            if not lost and (best["dice"] is None or score > best["dice"]):
                best = {"dice": score, "iteration": self.iteration, "alpha": alpha}
                self._save_best(network, score, alpha=alpha)
        network.load_state_dict(end)
        self.events.emit("info", message="weight-space ensembling", candidates=tried, chosen_alpha=best["alpha"],
                         dice=best["dice"])
        return best

    def _lost(self) -> dict[str, float]:
        """The held-out and guard structures of the last validation that lost more than ``max_label_drop``
        against the starting model (``guard:`` names the guard ones); empty without that rule."""
        drop = self.settings["max_label_drop"]
        if drop is None:
            return {}
        worse = lost_structures(getattr(self, "baseline_per_label", None) or {}, self.last_per_label, drop)
        worse.update({f"guard:{k}": v for k, v in lost_structures(
            getattr(self, "baseline_guard", None) or {}, getattr(self, "last_guard", {}), drop).items()})
        return worse

    def _val_items(self, transform, cases) -> list[dict[str, Any]]:
        if self.dist.rank != 0:
            return []
        items = []
        for item in self.task.items(cases):
            out = transform(item)
            items.append(out[0] if isinstance(out, list) else out)
        return items

    def _validate(self, network, val_items, data: PreparedData, baseline: bool = False,
                  alpha: float | None = None) -> float:
        t0 = time.time()
        score, per_label = self.task.validate(network, val_items, data.val, self.device, self.settings["sw_batch_size"])
        guard: dict[str, float] = {}
        if data.guard:
            _, guard = self.task.validate(network, self.guard_items, data.guard, self.device,
                                          self.settings["sw_batch_size"])
        self.last_per_label, self.last_guard, self.last_score = per_label, guard, score
        if baseline:
            self.baseline_per_label, self.baseline_guard = per_label, guard
        extra = {"guard": guard, "guard_cases": len(self.guard_items)} if data.guard else {}
        if alpha is not None:
            extra["wise_alpha"] = alpha
        refused = getattr(getattr(self.task, "clicks", None), "refused", None)
        if baseline and refused:
            self.events.emit("info", message="validated by ROI samples, not by clicks: the engine cannot take "
                                             "these images", images=refused)
        self.events.emit("validation", iteration=self.iteration, dice=score, per_label=per_label, baseline=baseline,
                         cases=len(val_items), time_s=round(time.time() - t0, 3), **extra)
        if getattr(self, "tb", None) is not None:
            self.tb.scalar("val/dice", score, self.iteration)
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
        set_rng_state(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        self.events.emit("info", message="resumed from checkpoint", path=str(path), iteration=state["iteration"],
                         epoch=state["epoch"], cursor=state["cursor"])
        return state

    def _save_checkpoint(self, loop: TrainingLoop, network, comps, baseline: float | None) -> None:
        rngs = [rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.dist.rank != 0:
            return
        s = loop.state
        sched = comps.get("lr_scheduler")
        state = {"model": network.state_dict(), "optimizer": comps["optimizer"].state_dict(),
                 "lr_scheduler": sched.state_dict() if sched is not None else None,
                 "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
                 "iteration": s.iteration, "epoch": s.epoch, "cursor": s.cursor, "best": self.validation.best,
                 "baseline": baseline, "baseline_per_label": getattr(self, "baseline_per_label", None),
                 "baseline_guard": getattr(self, "baseline_guard", None),
                 "rng": rngs, "settings": self.settings}
        path = self.ckpt_dir / "last.pt"
        atomic_torch_save(state, path)
        self.events.emit("checkpoint", path=str(path), iteration=s.iteration, epoch=s.epoch, cursor=s.cursor)

    def _save_best(self, network, score: float, alpha: float | None = None) -> None:
        atomic_torch_save(network.state_dict(), self.ckpt_dir / "best.pt")
        self.events.emit("checkpoint", path=str(self.ckpt_dir / "best.pt"), iteration=self.iteration, best=True,
                         dice=score, **({"wise_alpha": alpha} if alpha is not None else {}))

    # ----- training ----------------------------------------------------------------------------------------
    def _make_loop(self, model, network, comps, val_items, data, baseline, best, resume) -> TrainingLoop:
        """The job as a :class:`~claraseg.train.loop.TrainingLoop`: events, TensorBoard, validation (rank 0,
        best checkpoint), resumable checkpoints, cancellation, the per-epoch scheduler and Smart Cache."""
        s, ev, dist = self.settings, self.events, self.dist
        source = LoaderSource(self.dataset, s["batch_size"], s["seed"], dist.rank, dist.world_size, s["num_workers"])
        accum = s["grad_accumulation"]
        max_it = s["max_iterations"]
        if s["max_epochs"] is not None:
            max_it = min(max_it, s["max_epochs"] * max(1, source.epoch_length(0) // accum))
        self.tb = TensorBoardHandler(self.workdir / "tensorboard") if dist.rank == 0 else None

        def validate(loop: TrainingLoop) -> float | None:
            self.iteration = loop.state.iteration
            return self._validate(network, val_items, data) if dist.rank == 0 else None

        def on_best(loop: TrainingLoop, score: float) -> None:
            self._save_best(network, score)

        def eligible(loop: TrainingLoop, score: float) -> bool:
            worse = self._lost()
            if worse:
                ev.emit("info", message="not kept as best: structures lost more than training#max_label_drop",
                        iteration=loop.state.iteration, dice=score, lost=worse)
            return not worse

        self.validation = ValidationHandler(validate, every=s["val_interval"], on_best=on_best, best=best,
                                            barrier=dist.barrier, eligible=eligible)
        handlers: list[Handler] = [EventsHandler(ev, s["log_interval"])]
        if self.tb is not None:
            handlers.append(self.tb)
        handlers += [self.validation,
                     CheckpointHandler(lambda loop: self._save_checkpoint(loop, network, comps, baseline),
                                       every=s["checkpoint_interval"]),
                     CancelHandler(self._cancel_requested), _EpochHooks(self.dataset)]
        state = LoopState(iteration=resume.get("iteration", 0), epoch=resume.get("epoch", 0),
                          cursor=resume.get("cursor", 0))
        loop = TrainingLoop(model, comps["optimizer"], self._step_loss(network, s), source, device=self.device, max_iterations=max_it, max_time_s=s["max_time_s"],
                            grad_accumulation=accum, amp=s["amp"], epoch_scheduler=comps.get("lr_scheduler"),
                            handlers=handlers, state=state)
        if loop.scaler is not None and resume.get("scaler"):
            loop.scaler.load_state_dict(resume["scaler"])
        ev.state("training", iteration=state.iteration, max_iterations=max_it, epoch=state.epoch,
                 train_items=len(self.dataset), baseline_dice=baseline)
        return loop

    def _step_loss(self, network, s: dict[str, Any]):
        """The loss of a batch: the task's, plus the L2-SP penalty ``l2sp / 2 * sum((w - w0)^2)`` over the
        tuned weights; with ``freeze_norm`` the normalisation layers stay in eval mode (their running
        statistics are not updated by the few fine-tune batches)."""
        alpha, anchor = float(s["l2sp"]), self.anchor
        params = [(p, anchor[n]) for n, p in network.named_parameters() if n in anchor]
        norms = [m for m in network.modules() if isinstance(m, NORM_TYPES)] if s["freeze_norm"] else []

        def step_loss(model, batch):
            for m in norms:
                m.eval()
            loss = self.task.batch_loss(model, batch, self.device)
            if params:
                loss = loss + 0.5 * alpha * sum(((p - p0) ** 2).sum() for p, p0 in params)
            return loss

        return step_loss

    # ----- end of the job -------------------------------------------------------------------------------
    def _finish(self, network, bundle: Path, meta: dict[str, Any], baseline: float | None) -> dict[str, Any]:
        result: dict[str, Any] = {"iteration": self.iteration, "baseline_dice": baseline, "best_dice": self.best["dice"],
                                  "best_iteration": self.best["iteration"], "its_per_s": self.throughput,
                                  **({"wise_alpha": self.best.get("alpha")} if self.start_state is not None else {}),
                                  "peak_memory_mb": _round(peak_memory_mb()), "published": None}
        if self.dist.rank != 0:
            return result
        from claraseg.train.plot import plot_curves

        plot_curves(read_events(self.workdir / "events.jsonl"), self.workdir / "curves.png")
        s = self.settings
        improved = baseline is None or (self.best["dice"] is not None and self.best["dice"] > baseline)
        if not s["publish"]:
            result["publish_skipped"] = "training#publish is false"
        elif self.best["dice"] is None:
            which = "interpolation (training#wise)" if self.start_state is not None else "validation"
            result["publish_skipped"] = (f"no {which} kept every label within training#max_label_drop "
                                         f"({s['max_label_drop']}) of the starting model's Dice")
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
