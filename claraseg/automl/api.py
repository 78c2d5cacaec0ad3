"""Start, follow and stop a search from another program (the server's jobs, the Slicer AutoML tab).

A search runs as its own ``claraseg automl`` process; the caller follows it through files of the job
folder (``status.json``, ``trials.json``, ``summary.txt``, ``history.png``), so it can also be followed
after the caller restarts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from claraseg.automl.controller import AutoMLSettings
from claraseg.automl.scheduler import pid_alive


def automl_command(settings: AutoMLSettings) -> list[str]:
    """The ``claraseg automl`` command line that runs ``settings``."""
    s = settings
    cmd = [sys.executable, "-m", "claraseg", "automl", "--bundle", str(s.bundle), "--data", str(s.data),
           "--job-dir", str(s.job_dir), "--workers", str(s.workers), "--threads", str(s.threads_per_trial),
           "--study", s.study, "--sampler", s.sampler, "--pruner", s.pruner, "--startup-trials", str(s.startup_trials),
           "--warmup-steps", str(s.warmup_steps), "--seed", str(s.seed), "--runner", s.runner]
    for flag, value in (("--trials", s.trials), ("--timeout", s.timeout_s), ("--devices", s.devices),
                        ("--storage", s.storage), ("--trial-timeout", s.trial_timeout_s)):
        if value is not None:
            cmd += [flag, str(value)]
    if not s.default_trial:
        cmd.append("--no-default-trial")
    return cmd


def start_search(settings: AutoMLSettings) -> subprocess.Popen:
    """Start the search in its own process (its output goes to ``<job>/automl.log``); returns at once."""
    job = Path(settings.job_dir)
    job.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(job / "automl.log", "ab") as log:
        return subprocess.Popen(automl_command(settings), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(job), start_new_session=True)


def search_status(job_dir: str | os.PathLike) -> dict[str, Any]:
    """State (``starting``, ``running``, ``finished``, ``interrupted``, or ``stopped`` for a controller that
    died: run the command again to resume), the trials table rows and the summary line."""
    job = Path(job_dir)
    status: dict[str, Any] = {"state": "starting"}
    if (job / "status.json").is_file():
        status = json.loads((job / "status.json").read_text())
        if status["state"] == "running" and status.get("host") == socket.gethostname() and not pid_alive(status["pid"]):
            status["state"] = "stopped"
    status["trials"] = json.loads((job / "trials.json").read_text()) if (job / "trials.json").is_file() else []
    status["summary"] = (job / "summary.txt").read_text().strip() if (job / "summary.txt").is_file() else None
    status["history_png"] = str(job / "history.png") if (job / "history.png").is_file() else None
    return status


def stop_search(job_dir: str | os.PathLike) -> bool:
    """Ask a running search of this machine to stop (SIGTERM: running trials are queued again for a
    resume). Returns False if it is not running here."""
    status = search_status(job_dir)
    if status["state"] != "running" or status.get("host") != socket.gethostname():
        return False
    os.kill(int(status["pid"]), signal.SIGTERM)
    return True
