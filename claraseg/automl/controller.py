"""The AutoML controller: an Optuna study that proposes settings, trial processes that train, results back.

One controller per machine runs ``workers`` trials at a time (ask-and-tell): it draws parameters,
turns them into bundle overrides, starts a trial process, reports each validation Dice to the study
(pruning a trial whose Dice falls below the median of finished trials at the same iteration) and tells
the study the trial's best Dice. The study lives in an Optuna storage (SQLite in the job folder by
default): running the same command again resumes it, and controllers on other machines given the same
``--storage`` URL (PostgreSQL) join it.

Trials of a controller that died (``kill -9``, power loss) stay RUNNING in the storage; the next
controller marks them failed (``interrupted``) and queues the same parameters again, so completed
trials are never repeated and the budget is still met. A trial counts as stale when its controller's
process is gone (same host) or its heartbeat is older than ``grace_s`` (any host).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from claraseg.automl import report
from claraseg.automl.bundle import read_config, write_trial_bundle
from claraseg.automl.handlers import AutoMLHandler, Dispatcher, ReportHandler, TensorBoardHandler, TrialInfo
from claraseg.automl.runners import TrialSpec, get_runner
from claraseg.automl.scheduler import Scheduler, TrialProcess, parse_devices, pid_alive
from claraseg.automl.searchspace import SearchSpace, parse_search_space
from claraseg.errors import ClarasegError, ConfigError, TrainingDataError
from claraseg.io import write_text_atomic

log = logging.getLogger(__name__)
SAMPLERS = ("auto", "tpe", "grid", "random")
PRUNERS = ("median", "percentile", "hyperband", "none")


@dataclass
class AutoMLSettings:
    """What a search runs and how; the CLI flags map one to one."""

    bundle: str
    data: str
    job_dir: str
    trials: int | None = 8  # budget: trials finished (completed, pruned or failed) in the whole study
    timeout_s: float | None = None  # budget: no new trial starts after this many seconds (this controller)
    workers: int = 1
    devices: str | None = None  # "cuda:0,cuda:1": one worker per device; default ``workers`` CPU slots
    threads_per_trial: int = 1
    storage: str | None = None  # Optuna storage URL; default sqlite:///<job_dir>/study.db
    study: str = "automl"
    sampler: str = "auto"  # auto: grid for enum-only spaces, else TPE
    pruner: str = "median"
    startup_trials: int = 2  # completed trials before the pruner (and TPE) start to act
    warmup_steps: int = 0  # iterations of a trial before it can be pruned
    seed: int = 0
    runner: str = "auto"
    default_trial: bool = True  # queue the config's own settings as the first trial
    trial_timeout_s: float | None = None  # a trial running longer is killed and recorded as failed
    heartbeat_s: float = 10.0
    grace_s: float = 60.0

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.job_dir).resolve() / 'study.db'}"


class AutoMLController:
    """Runs one search; see the module docstring. ``run()`` returns the summary of :func:`report.summarize`."""

    def __init__(self, settings: AutoMLSettings, handlers: list[AutoMLHandler] | None = None) -> None:
        self.settings = s = settings
        if s.sampler not in SAMPLERS:
            raise ConfigError(f"sampler {s.sampler!r}: choose one of {list(SAMPLERS)}")
        if s.pruner not in PRUNERS:
            raise ConfigError(f"pruner {s.pruner!r}: choose one of {list(PRUNERS)}")
        if s.trials is None and s.timeout_s is None:
            raise ConfigError("give a trial budget (--trials), a time budget (--timeout) or both")
        if s.trials is not None and s.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {s.trials}")
        if s.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {s.workers}")
        self.job_dir = Path(s.job_dir).resolve()
        self.space: SearchSpace = parse_search_space(read_config(s.bundle))
        if not self.space.elements:
            raise ConfigError(f"{s.bundle}: the training config declares no 'search' element; nothing to search")
        self.runner = get_runner(s.runner)
        self._check_data(Path(s.data), needs_validation=self.runner.name == "tiny")
        self.slots = parse_devices(s.devices, s.workers)
        self.handlers = [ReportHandler(), TensorBoardHandler()] if handlers is None else list(handlers)
        self.dispatch = Dispatcher(self.handlers)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.study = None
        self._owned: dict[int, tuple[Any, TrialProcess, TrialInfo]] = {}  # trial number -> (trial, process, info)
        self._stop = threading.Event()

    # -- set-up ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_data(path: Path, needs_validation: bool) -> None:
        """Fail before any trial on a missing or malformed datalist: a list of ``{image, label}`` (the
        fine-tune job holds some out) or ``{"training": [...], "validation": [...]}``."""
        if not path.is_file():
            raise TrainingDataError(f"{path}: the datalist does not exist")
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise TrainingDataError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, list):
            data = {"training": data}
        if not isinstance(data, dict) or not isinstance(data.get("training"), list) or not data["training"]:
            raise TrainingDataError(f"{path}: a datalist needs a non-empty list of image/label pairs "
                                    "(or an object with a 'training' list)")
        if needs_validation and not data.get("validation"):
            raise TrainingDataError(f"{path}: the tiny runner needs a 'validation' list beside 'training' "
                                    "(fine-tune jobs hold cases out by themselves)")
        for item in data["training"] + list(data.get("validation") or []):
            for key in ("image", "label"):
                if not isinstance(item, dict) or key not in item or not (path.parent / str(item[key])).exists():
                    value = item.get(key) if isinstance(item, dict) else item
                    raise TrainingDataError(f"{path}: {key} {value!r} of a case does not exist")

    def _sampler(self, seed: int):
        import optuna

        s, space = self.settings, self.space
        kind = s.sampler
        if kind == "auto":
            kind = "grid" if space.enum_only else "tpe"
        if kind == "grid":
            if not space.enum_only:
                raise ConfigError("the grid sampler needs an enum-only search space; use tpe or random")
            return _GridSampler(space.grid(), seed=seed)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # Few trials: TPE starts modelling after ``startup_trials`` random ones; the constant liar keeps
        # parallel workers from proposing the same point.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, s.startup_trials),
                                          multivariate=True, constant_liar=True)

    def _pruner(self):
        import optuna

        s = self.settings
        if s.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_steps)
        if s.pruner == "percentile":
            return optuna.pruners.PercentilePruner(33.0, n_startup_trials=s.startup_trials,
                                                   n_warmup_steps=s.warmup_steps)
        if s.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner()
        return optuna.pruners.NopPruner()

    def open_study(self):
        """Create or load the study; refuse one whose search space differs from the bundle's."""
        import optuna
        from optuna.storages import RDBStorage

        self.job_dir.mkdir(parents=True, exist_ok=True)
        url = self.settings.storage_url()
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}
        try:
            storage = RDBStorage(url, engine_kwargs=kwargs)
        except ImportError:
            raise ConfigError(f"no database driver for {_safe_url(url)}: PostgreSQL needs psycopg "
                              "(pip install 'psycopg[binary]', part of claraseg[automl-multi])") from None
        except Exception as e:  # sqlalchemy/driver errors of many types
            raise ConfigError(f"cannot open the study storage {_safe_url(url)}: {e}") from None
        self.study = optuna.create_study(storage=storage, study_name=self.settings.study, direction="maximize",
                                         sampler=self._sampler(self.settings.seed), pruner=self._pruner(),
                                         load_if_exists=True)
        existing = len(self.study.get_trials(deepcopy=False))
        if existing:
            # A resumed (or joining) controller must not replay the random draws of the first one, which
            # would propose the same parameters again: its sampler gets a seed of its own.
            self.study.sampler = self._sampler(self.settings.seed + 7919 * existing + self.pid)
        fingerprint = self.space.fingerprint()
        known = self.study.user_attrs.get("search_space_fingerprint")
        if known is None:
            self.study.set_user_attr("search_space_fingerprint", fingerprint)
            self.study.set_user_attr("search_space", self.space.describe())
            self.study.set_user_attr("bundle", str(Path(self.settings.bundle).resolve()))
        elif known != fingerprint:
            raise ConfigError(f"study {self.settings.study!r} in {_safe_url(url)} was made with a different search "
                              "space; use another --study name or job folder")
        return self.study

    # -- budget and stale trials ------------------------------------------------------------------------
    def counted(self) -> int:
        """Trials that use the budget: finished ones (but not interrupted ones, which are retried) and running ones."""
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING or (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
                continue
            n += 1
        return n

    def recover_stale(self) -> list[int]:
        """Fail RUNNING trials whose controller is gone and queue their parameters again."""
        from optuna.trial import TrialState

        now = time.time()
        recovered = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in self._owned:
                continue
            attrs = t.user_attrs
            same_host_dead = attrs.get("host") == self.host and attrs.get("controller_pid") not in (None, self.pid) \
                and not pid_alive(int(attrs["controller_pid"]))
            beat = attrs.get("heartbeat")
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            silent = beat is not None and now - float(beat) > self.settings.grace_s
            if not (same_host_dead or silent):
                continue
            if not self._interrupt(t._trial_id, t.number, t.params, attrs, "its controller stopped"):
                continue
            recovered.append(t.number)
            log.warning("trial %d was left running by a controller that stopped; queued again", t.number)
        return recovered

    def _interrupt(self, trial_id: int, number: int, params: dict[str, Any], attrs: dict[str, Any], why: str) -> bool:
        """Mark a running trial failed as interrupted and queue its parameters again; False if another
        controller already did."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.study._storage
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "error", f"interrupted: {why}")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
        except (UpdateFinishedTrialError, RuntimeError):
            return False
        retry = {"retry_of": number}
        if attrs.get("default"):
            retry["default"] = True
        if len(params) == len(self.space.elements):
            self.study.enqueue_trial(params, user_attrs=retry)
        return True

    def _queue_default(self) -> None:
        if not self.settings.default_trial:
            return
        if any(t.user_attrs.get("default") for t in self.study.get_trials(deepcopy=False)):
            return
        self.study.enqueue_trial(self.space.defaults(), user_attrs={"default": True})

    # -- the loop -------------------------------------------------------------------------------------
    def budget_left(self, started_at: float) -> int:
        s = self.settings
        if s.timeout_s is not None and time.time() - started_at >= s.timeout_s:
            return 0
        if s.trials is None:
            return len(self.slots)
        limit = s.trials
        if s.sampler in ("auto", "grid") and self.space.enum_only:
            limit = min(limit, self.space.grid_size() + (1 if s.default_trial else 0))
        return max(0, limit - self.counted())

    def request_stop(self) -> None:
        """Stop starting trials; running ones are ended and queued again for the next run."""
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Run the search until the budget is used up; returns the summary."""
        s = self.settings
        self.open_study()
        scheduler = Scheduler(self.runner, self.slots, s.threads_per_trial)
        trial_bundle = write_trial_bundle(s.bundle, self.job_dir / "bundle", self.space.config)
        self._write_settings()
        self._write_status("running")
        self.dispatch("search_start", self)
        self.dispatch("search_space_ready", self, self.space)
        self.recover_stale()
        self._queue_default()
        started_at = last_beat = last_check = time.time()
        log.info("AutoML study %r: %d parameters, budget %s trials / %s s, %d worker(s), storage %s",
                 s.study, len(self.space.elements), s.trials, s.timeout_s, len(self.slots),
                 _safe_url(s.storage_url()))
        interrupted = False
        try:
            while True:
                self._poll(scheduler)
                now = time.time()
                if now - last_beat >= s.heartbeat_s:
                    self._heartbeat()
                    last_beat = now
                if now - last_check >= s.grace_s / 2:
                    self.recover_stale()
                    last_check = now
                if self._stop.is_set():
                    interrupted = True
                    break
                self._fill(scheduler, trial_bundle, started_at)
                if not scheduler.running and self.budget_left(started_at) == 0:
                    break
                time.sleep(0.3)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("AutoML interrupted: running trials are queued again for the next run")
        finally:
            for trial, proc, info in list(self._owned.values()):
                scheduler.stop(proc)
                self._interrupt(trial._trial_id, trial.number, trial.params, trial.user_attrs,
                                "the controller was stopped")
                info.state, info.error = "fail", "interrupted: the controller was stopped"
                self.dispatch("trial_end", self, info)
            self._owned.clear()
        summary = report.summarize(self.study)
        summary["interrupted"] = interrupted
        self.dispatch("search_end", self, summary)
        self._write_status("interrupted" if interrupted else "finished", summary=summary["line"])
        log.info("%s", summary["line"])
        return summary

    def _write_status(self, state: str, **fields: Any) -> None:
        """``<job>/status.json``: what a server or the Slicer panel shows (see :mod:`claraseg.automl.api`)."""
        record = {"state": state, "host": self.host, "pid": self.pid, "time": time.time(), "study": self.settings.study,
                  "storage": _safe_url(self.settings.storage_url()), **fields}
        write_text_atomic(self.job_dir / "status.json", json.dumps(record, indent=1))

    def _write_settings(self) -> None:
        data = asdict(self.settings)
        data["storage"] = _safe_url(self.settings.storage_url())
        write_text_atomic(self.job_dir / "automl.json", json.dumps(data, indent=1))

    def _heartbeat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        now = time.time()
        for trial, _, _ in self._owned.values():
            try:
                trial.set_user_attr("heartbeat", now)
            except UpdateFinishedTrialError:
                pass  # taken over by another controller; noticed when its next Dice is reported

    def _fill(self, scheduler: Scheduler, bundle: Path, started_at: float) -> None:
        free = scheduler.free_slots()
        if not free:
            return
        n = min(len(free), self.budget_left(started_at))
        if n <= 0:
            return
        distributions = self.space.distributions()
        batch = []
        for slot in free[:n]:
            trial = self.study.ask(fixed_distributions=distributions)
            attrs = self.study._storage.get_trial(trial._trial_id).user_attrs
            info = TrialInfo(trial.number, dict(trial.params), self.space.overrides(trial.params),
                             str(self.job_dir / "trials" / f"trial_{trial.number:04d}"), slot,
                             default=bool(attrs.get("default")))
            for key, value in {"host": self.host, "controller_pid": self.pid, "heartbeat": time.time(),
                               "slot": slot, "dir": info.dir}.items():
                trial.set_user_attr(key, value)
            batch.append((trial, info))
        self.dispatch("recommendations_ready", self, [info for _, info in batch])
        for trial, info in batch:
            spec = TrialSpec(number=trial.number, dir=info.dir, bundle=str(bundle), data=str(Path(self.settings.data).resolve()),
                             overrides=info.overrides, events=str(Path(info.dir) / "events.jsonl"),
                             seed=self.settings.seed)
            if Path(info.dir).exists():  # left by an older study in this job folder: never resume its files
                shutil.rmtree(info.dir)
            try:
                proc = scheduler.start(spec, info.slot)
            except (OSError, ClarasegError) as e:
                self.study.tell(trial, state=_state("FAIL"))
                info.state, info.error = "fail", f"could not start: {e}"
                self.dispatch("trial_end", self, info)
                continue
            self._owned[trial.number] = (trial, proc, info)
            self.dispatch("trial_start", self, info)

    def _poll(self, scheduler: Scheduler) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        s = self.settings
        for proc in scheduler.poll():
            self._report(proc)
            self._finish(proc)
        for proc in list(scheduler.running.values()):
            trial, _, info = self._owned[proc.spec.number]
            try:
                prune = self._report(proc)
            except UpdateFinishedTrialError:
                # Another controller declared this trial abandoned (no heartbeat) and queued it again.
                scheduler.stop(proc)
                self._owned.pop(proc.spec.number)
                log.warning("trial %d was taken over by another controller; stopped here", trial.number)
                continue
            if prune is not None:
                scheduler.stop(proc)
                step, dice = prune
                trial.set_user_attr("pruned_at", step)
                self._end(proc, "pruned", None)
                log.info("trial %d pruned at iteration %d (Dice %.4f)", trial.number, step, dice)
            elif s.trial_timeout_s is not None and time.time() - proc.started > s.trial_timeout_s:
                scheduler.stop(proc)
                self._end(proc, "fail", f"exceeded the trial timeout of {s.trial_timeout_s:g} s")

    def _report(self, proc: TrialProcess) -> tuple[int, float] | None:
        """Report new validation Dice values to the study, one at a time, and ask the pruner after each
        (a controller that polls late must prune at the same step as one that polls often).
        Returns the (step, Dice) at which the trial should be pruned, or None."""
        trial, _, info = self._owned[proc.spec.number]
        new = proc.validations[len(info.validations):]
        running = proc.process.poll() is None
        for step, dice in new:
            if step not in dict(info.validations):
                trial.report(dice, step)
            info.validations.append((step, dice))
            if running and trial.should_prune():
                return step, dice
        return None

    def _finish(self, proc: TrialProcess) -> None:
        rc = proc.process.returncode
        score = proc.score()
        if rc == 0 and proc.final_state == "completed" and score is not None:
            self._end(proc, "complete", None, score)
            return
        if rc is not None and rc < 0:
            why = f"killed by signal {signal.Signals(-rc).name}"
        elif proc.error:
            why = proc.error
        elif score is None and rc == 0:
            why = "the trial never reported a validation Dice"
        else:
            why = f"exit code {rc}: {proc.log_tail(5)}"
        self._end(proc, "fail", why)

    def _end(self, proc: TrialProcess, state: str, error: str | None, value: float | None = None) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        trial, _, info = self._owned.pop(proc.spec.number)
        try:
            if error:
                trial.set_user_attr("error", error[-2000:])
                log.warning("trial %d failed: %s", trial.number, error.splitlines()[-1])
            if state == "complete":
                self.study.tell(trial, value, skip_if_finished=True)
            else:
                self.study.tell(trial, state=_state(state.upper()), skip_if_finished=True)
        except UpdateFinishedTrialError:
            log.warning("trial %d was taken over by another controller; its result here is dropped", trial.number)
            return
        info.state, info.error = state, error
        info.dice = value if value is not None else (proc.validations[-1][1] if state == "pruned" else None)
        info.duration_s = round(time.time() - proc.started, 1)
        self.dispatch("trial_end", self, info)


class _GridSampler:
    """Optuna's grid sampler, minus its call to ``study.stop()`` (only valid inside ``optimize``); the
    controller caps the budget at the grid size instead."""

    def __new__(cls, search_space: dict[str, list[Any]], seed: int):
        import optuna

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                return None

        return Grid(search_space, seed=seed)


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _safe_url(url: str) -> str:
    """A storage URL without its password, for logs and files."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def install_signal_handlers(controller: AutoMLController) -> None:
    """SIGTERM ends the search cleanly (running trials are queued again), as Ctrl-C does."""
    def handle(signum, frame):
        controller.request_stop()

    signal.signal(signal.SIGTERM, handle)
