"""Real searches with tiny networks on phantoms: pruning, handlers, reports, failures, kill -9 and resume."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from claraseg.automl import AutoMLController, AutoMLHandler, AutoMLSettings
from claraseg.automl.api import search_status, start_search, stop_search
from claraseg.automl.handlers import ReportHandler, TensorBoardHandler
from claraseg.automl.scheduler import pid_alive


def lr_enum(*values: float) -> list[dict]:
    return [{"domain": "lr", "type": "enum", "args": ["lr"], "targets": [[v] for v in values]}]


class Recorder(AutoMLHandler):
    """Records the lifecycle events it receives."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def search_start(self, ctx):
        self.events.append(("search_start",))

    def search_space_ready(self, ctx, space):
        self.events.append(("search_space_ready", tuple(space.names)))

    def recommendations_ready(self, ctx, trials):
        self.events.append(("recommendations_ready", tuple(t.number for t in trials)))

    def trial_start(self, ctx, trial):
        self.events.append(("trial_start", trial.number))

    def trial_end(self, ctx, trial):
        self.events.append(("trial_end", trial.number, trial.state, trial.dice))

    def search_end(self, ctx, summary):
        self.events.append(("search_end", summary["line"]))


def test_search_prunes_a_bad_trial_reports_and_exports(tmp_path, make_bundle, phantom_datalist):
    # lr 0 never learns: after the default trial (lr 0.01) completes, it is pruned at its first validation.
    bundle = make_bundle(optimizer_search=lr_enum(0.01, 0.0), lr=0.01, iterations=20, val_interval=10)
    recorder = Recorder()
    settings = AutoMLSettings(bundle=str(bundle), data=str(phantom_datalist), job_dir=str(tmp_path / "job"), trials=3,
                              workers=1, runner="tiny", startup_trials=1, seed=0)
    summary = AutoMLController(settings, [ReportHandler(), TensorBoardHandler(), recorder]).run()

    study = optuna.load_study(study_name="automl", storage=settings.storage_url())
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.PRUNED) == 1
    pruned = next(t for t in trials if t.state == TrialState.PRUNED)
    assert pruned.params == {"lr": 0.0} and pruned.user_attrs["pruned_at"] == 10
    default = trials[0]
    assert default.user_attrs["default"] and default.params == {"lr": 0.01} and default.state == TrialState.COMPLETE
    assert default.value > 0.3  # a real network learnt the phantom liver
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)

    kinds = [e[0] for e in recorder.events]
    assert kinds[:2] == ["search_start", "search_space_ready"] and kinds[-1] == "search_end"
    assert kinds.count("trial_start") == kinds.count("trial_end") == 3 == kinds.count("recommendations_ready")
    assert ("trial_end", pruned.number, "pruned", pruned.intermediate_values[10]) in recorder.events

    job = tmp_path / "job"
    rows = list(csv.DictReader((job / "trials.csv").read_text().splitlines()))
    assert [r["state"] for r in rows].count("pruned") == 1 and all(r["duration_s"] for r in rows)
    assert {"param:lr", "dice", "state", "duration_s"} <= set(rows[0])
    assert (job / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = json.loads((job / "best_overlay.json").read_text())
    assert overlay == {"optimizer#lr": 0.01}
    assert json.loads((job / "best_train.json").read_text())["optimizer"]["lr"] == 0.01
    assert "vs default settings" in summary["line"] and summary["line"] == (job / "summary.txt").read_text().strip()
    assert list((job / "tensorboard").glob("events.out.tfevents.*"))


def _trials(storage: str) -> list:
    if not Path(storage[len("sqlite:///"):]).exists():
        return []
    try:
        return optuna.load_study(study_name="automl", storage=storage).get_trials(deepcopy=False)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):
        return []  # the controller is still creating the study's tables (opening them now races it)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:  # a thread that just ended
            continue
    return out


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_kill9_of_the_controller_then_sigterm_then_resume(tmp_path, make_bundle, phantom_datalist):
    bundle = make_bundle(optimizer_search=[{"domain": "lr", "type": "float", "args": ["lr"],
                                            "targets": [0.003, 0.03], "log": True}], iterations=20, val_interval=10)
    job = tmp_path / "job"
    settings = AutoMLSettings(bundle=str(bundle), data=str(phantom_datalist), job_dir=str(job), trials=2, workers=2,
                              runner="tiny", pruner="none")
    storage = settings.storage_url()

    def two_running(controller) -> bool:
        # Both trials asked and their processes started (checked before either could finish).
        return sum(t.state == TrialState.RUNNING for t in _trials(storage)) == 2 and len(_children(controller.pid)) == 2

    # 1. kill -9 of the controller while two trials run: they die with it, the study keeps them RUNNING.
    first = start_search(settings)
    try:
        _wait(lambda: two_running(first), 180, "two running trials")
        workers = _children(first.pid)
        assert len(workers) == 2
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    time.sleep(1.0)
    assert not [p for p in workers if pid_alive(p)], "trial processes outlived their controller"
    killed = {t.number: t.params for t in _trials(storage) if t.state == TrialState.RUNNING}
    assert killed, "no trial was running when the controller was killed"
    assert search_status(job)["state"] == "stopped"

    # 2. Resume, then stop cleanly (SIGTERM) while the re-queued trials run.
    second = start_search(settings)
    _wait(lambda: two_running(second) and search_status(job)["state"] == "running", 180, "the resumed trials")
    assert stop_search(job)
    assert second.wait(60) == 130
    assert search_status(job)["state"] == "interrupted"

    # 3. Resume again: the budget is finished with the same parameters.
    third = start_search(settings)
    assert third.wait(180) == 0
    status = search_status(job)
    assert status["state"] == "finished" and "vs default settings" in status["summary"]
    ts = _trials(storage)
    interrupted = [t for t in ts if t.user_attrs.get("interrupted")]
    assert set(killed) <= {t.number for t in interrupted} and all(t.state == TrialState.FAIL for t in interrupted)
    retries = {t.user_attrs["retry_of"]: t for t in ts if "retry_of" in t.user_attrs}
    for t in interrupted:  # every interrupted trial ran again with the same parameters
        assert retries[t.number].params == t.params
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == 2  # the budget, not counting interrupted trials
    assert {json.dumps(t.params) for t in complete} == {json.dumps(p) for p in killed.values()}
    assert sum(bool(t.user_attrs.get("default")) for t in complete) == 1  # the default trial stays the default
    assert [r["state"] for r in status["trials"]].count("fail (retried)") == len(interrupted)


def test_fine_tune_job_trials_and_a_crashing_trial(tmp_path, make_bundle, phantom_datalist):
    # Each trial is a claraseg.train fine-tune job; a choice that breaks the network (dropout 2) fails its
    # trial with the job's own error, and the search goes on.
    bundle = make_bundle(root_search=[{"domain": "net", "name": "dropout", "type": "enum", "args": ["network_def#dropout"],
                                       "targets": [[0.0], [2.0]]}],
                         edit=lambda c: c["network_def"].update(dropout=0.0), iterations=10, val_interval=10)
    # A 3-trial budget, but a 5 s time budget: both trials start at once, no third starts after 5 s.
    settings = AutoMLSettings(bundle=str(bundle), data=str(phantom_datalist), job_dir=str(tmp_path / "job"), trials=3,
                              timeout_s=5, workers=2, runner="train", default_trial=False, seed=0)
    controller = AutoMLController(settings, [ReportHandler()])
    assert controller.runner.name == "train" and controller.study is None
    summary = controller.run()
    assert len(controller.study.get_trials()) == 2
    trials = {t.params["dropout"]: t for t in controller.study.get_trials()}
    assert trials[0.0].state == TrialState.COMPLETE and 0.0 <= trials[0.0].value <= 1.0
    assert trials[2.0].state == TrialState.FAIL and "dropout" in trials[2.0].user_attrs["error"]
    job_dir = Path(trials[0.0].user_attrs["dir"])
    assert (job_dir / "job.json").is_file()
    assert json.loads((job_dir / "job.json").read_text())["overrides"]["training#publish"] is False
    assert summary["counts"] == {"complete": 1, "fail": 1}


def test_a_silent_trial_of_another_host_is_taken_over(tmp_path, make_bundle, phantom_datalist):
    # A trial left RUNNING by a controller on another machine that stopped sending heartbeats.
    bundle = make_bundle(optimizer_search=[{"domain": "lr", "type": "float", "args": ["lr"], "targets": [0.003, 0.03]}])
    settings = AutoMLSettings(bundle=str(bundle), data=str(phantom_datalist), job_dir=str(tmp_path / "job"), trials=2,
                              runner="tiny", grace_s=60)
    controller = AutoMLController(settings, [])
    study = controller.open_study()
    silent, alive = study.ask({"lr": optuna.distributions.FloatDistribution(0.003, 0.03)}), study.ask(
        {"lr": optuna.distributions.FloatDistribution(0.003, 0.03)})
    for trial, beat in ((silent, time.time() - 600), (alive, time.time())):
        trial.set_user_attr("host", "elsewhere")
        trial.set_user_attr("controller_pid", 1)
        trial.set_user_attr("heartbeat", beat)
    assert controller.recover_stale() == [silent.number]
    states = {t.number: t for t in study.get_trials()}
    assert states[silent.number].state == TrialState.FAIL and states[silent.number].user_attrs["interrupted"]
    assert states[alive.number].state == TrialState.RUNNING
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == silent.number
    assert queued[0].system_attrs["fixed_params"] == silent.params  # the same parameters run again
    assert controller.counted() == 1  # the interrupted trial does not use the budget; the live one does
