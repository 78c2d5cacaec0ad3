"""The AutoML acceptance run: a real search on the sample CT that survives ``kill -9`` of its controller.

    python -m claraseg.automl.demo --out results/automl/ct_kidney [--trials 8 --workers 2 --kill-after 3]

1. Cuts a kidney task from the sample CT (:func:`claraseg.automl.data.write_ct_kidney_datalist`).
2. Runs ``claraseg automl`` on the tiny bundle (its search space: network, loss, learning rate,
   augmentation probabilities) with ``--workers`` parallel trials.
3. Once ``--kill-after`` trials have finished and others are running, kills the controller with SIGKILL,
   checks that its trial processes died with it, and runs the same command again to finish the budget.
4. Checks: the budget is met, completed trials were not repeated, the interrupted trials were re-run with
   the same parameters, at least one trial was pruned, the best trial beats the default settings. Writes
   the report files and ``verification.json`` to ``--out``; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from claraseg.automl.data import write_ct_kidney_datalist
from claraseg.automl.scheduler import pid_alive

TINY_BUNDLE = Path(__file__).parent / "bundles" / "tiny_seg"
REPORT_FILES = ("trials.csv", "trials.json", "trials.md", "history.png", "best_overlay.json", "best_trial.json",
                "best_train.json", "summary.txt", "automl.json")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _trials(storage: str, study: str) -> list[Any]:
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).exists():
        return []  # not created yet: opening it here would race the controller creating it
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def run(out: Path, work: Path, trials: int, workers: int, kill_after: int, runner: str, data_dir: Path,
        timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run the acceptance scenario; returns the verification record (also written to ``out``)."""

    out.mkdir(parents=True, exist_ok=True)
    job = work / "job"
    if job.exists():
        shutil.rmtree(job)
    datalist = write_ct_kidney_datalist(data_dir, work / "data")
    storage = f"sqlite:///{job.resolve() / 'study.db'}"
    cmd = [sys.executable, "-m", "claraseg", "automl", "--bundle", str(TINY_BUNDLE), "--data", str(datalist),
           "--trials", str(trials), "--workers", str(workers), "--job-dir", str(job), "--runner", runner,
           "--seed", "0", "--startup-trials", "2"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    t0 = time.time()
    killed: dict[str, Any] = {}
    with open(out / "run1.log", "w") as log1:
        first = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env)
        try:
            killed = _kill_when_ready(first, storage, kill_after, t0, timeout_s)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    if not killed:
        raise RuntimeError(f"the first run ended before it could be killed (exit {first.returncode}); see run1.log")
    before = {t.number: (t.state.name, t.value, t.params) for t in _trials(storage, "automl")}
    with open(out / "run2.log", "w") as log2:
        second = subprocess.run(cmd, stdout=log2, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
    elapsed = round(time.time() - t0, 1)
    ts = _trials(storage, "automl")
    for name in REPORT_FILES:
        if (job / name).exists():
            shutil.copy2(job / name, out / name)
    shutil.copy2(job / "study.db", out / "study.db")
    return verify(out, ts, before, killed, trials, second.returncode, elapsed)


def _kill_when_ready(first: subprocess.Popen, storage: str, kill_after: int, t0: float,
                     timeout_s: float) -> dict[str, Any]:
    """SIGKILL the controller once ``kill_after`` trials finished while others run; what was killed."""
    from optuna.trial import TrialState

    while first.poll() is None and time.time() - t0 < timeout_s:
        ts = _trials(storage, "automl")
        done = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        running = [t for t in ts if t.state == TrialState.RUNNING]
        if len(done) >= kill_after and running:
            trial_pids = _children(first.pid)
            first.send_signal(signal.SIGKILL)
            first.wait()
            time.sleep(3.0)
            return {"after_s": round(time.time() - t0, 1), "finished_before": sorted(t.number for t in done),
                    "running_at_kill": sorted(t.number for t in running), "trial_pids": trial_pids,
                    "trial_pids_alive_3s_later": [p for p in trial_pids if pid_alive(p)]}
        time.sleep(0.5)
    return {}


def verify(out: Path, ts: list[Any], before: dict[int, tuple], killed: dict[str, Any], budget: int,
           resumed_exit: int, elapsed: float) -> dict[str, Any]:
    """Check the Done-when conditions on the final trials; write and return ``verification.json``."""
    from optuna.trial import TrialState

    interrupted = [t for t in ts if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")]
    counted = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))]
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    completed_before = [n for n, (state, _, _) in before.items() if state == "COMPLETE"]
    params_key = [json.dumps(t.params, sort_keys=True) for t in complete]
    retries = {t.user_attrs["retry_of"]: t.number for t in ts if "retry_of" in t.user_attrs}
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    best = max(complete, key=lambda t: t.value) if complete else None
    checks = {
        "budget_met": len(counted) == budget,
        "no_completed_trial_repeated": len(set(params_key)) == len(params_key)
        and all(before[n][1] == next(t.value for t in ts if t.number == n) for n in completed_before),
        "interrupted_trials_rerun_with_same_params": bool(interrupted) and all(
            t.number in retries and next(r.params for r in ts if r.number == retries[t.number]) == t.params
            for t in interrupted),
        "trial_processes_died_with_controller": not killed["trial_pids_alive_3s_later"],
        "at_least_one_pruned": any(t.state == TrialState.PRUNED for t in ts),
        "best_beats_default": bool(best and default and best.value > default.value),
        "resumed_run_exit_0": resumed_exit == 0,
    }
    record = {"checks": checks, "passed": all(checks.values()), "elapsed_s": elapsed, "kill": killed,
              "best": {"trial": best.number, "dice": best.value, "params": best.params} if best else None,
              "default": {"trial": default.number, "dice": default.value} if default else None,
              "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                          "retry_of": t.user_attrs.get("retry_of"), "interrupted": bool(t.user_attrs.get("interrupted")),
                          "pruned_at": t.user_attrs.get("pruned_at")} for t in ts]}
    from claraseg.io import write_text_atomic

    write_text_atomic(out / "verification.json", json.dumps(record, indent=1, default=str))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m claraseg.automl.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/automl/ct_kidney")
    p.add_argument("--work", default=None, help="scratch folder for data and trials (default: a temporary one)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=3, help="finished trials before the controller is killed")
    p.add_argument("--runner", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("CLARASEG_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data")))
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="claraseg-automl-"))
    record = run(Path(args.out), work, args.trials, args.workers, args.kill_after, args.runner, Path(args.data_dir))
    print(json.dumps({k: record[k] for k in ("checks", "passed", "elapsed_s", "best", "default")}, indent=1))
    print((Path(args.out) / "summary.txt").read_text().strip() if (Path(args.out) / "summary.txt").exists() else "")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
