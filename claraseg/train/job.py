"""The Python API of fine-tune jobs, used by ``claraseg train``, the server and the Slicer panel.

A job lives in a working folder; the training runs in its own process (``python -m
claraseg.train.worker``, or ``torchrun`` for several processes), never in the caller's GUI or event
loop. The caller follows it through the events file, so it can also be followed after a restart of the
caller (:meth:`FineTuneJob.open`, :class:`JobManager`).

    job = FineTuneJob("models/segmentation", "datalist.json", {"training#max_iterations": 200}, "jobs/j1").start()
    for event in job.follow():
        print(event)
    job.status()["published"]   # e.g. "segmentation@v2"
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import claraseg
from claraseg.errors import ClarasegError
from claraseg.io import write_text_atomic
from claraseg.train.config import load_overrides
from claraseg.train.events import FINAL_STATES, iter_events, read_events, summarize
from claraseg.train.spec import JobSpec, check_model_name


class JobStateError(ClarasegError):
    """The job cannot do that in its current state (start twice, resume a completed job...)."""

    http_status = 409
    code = "job_state"


class FineTuneJob:
    """One fine-tune job: a model bundle + a datalist of (image, label) pairs + an overlay of overrides.

    Args:
        bundle: the model bundle folder (``configs/train.json``, ``configs/metadata.json``, ``models/model.pt``).
        datalist: a JSON datalist file, or its content (list of ``{"image", "label", "labels"?}``).
        overrides: config ids -> values (``{"optimizer#lr": 1e-3}``), or a JSON/YAML file of them.
        workdir: the job's folder (created).
        name: name of the published model (default: the bundle's).
        registry: models folder new versions are published into (default: the bundle's parent folder).
        structures: interactive kinds: train on these structure names only.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads of the job process.
        nproc: processes on this machine (> 1: DDP through torchrun; gloo on CPU, NCCL on GPUs).
    """

    def __init__(self, bundle: str | os.PathLike, datalist: Any, overrides: Mapping[str, Any] | str | os.PathLike | None = None,
                 workdir: str | os.PathLike = "jobs/job", *, name: str | None = None, registry: str | os.PathLike | None = None,
                 structures: list[str] | None = None, device: str = "auto", threads: int | None = None, nproc: int = 1) -> None:
        if name is not None:
            check_model_name(name)
        self.workdir = Path(workdir).resolve()
        if isinstance(datalist, (str, os.PathLike)):
            datalist = str(Path(datalist).resolve())
        self.spec = JobSpec(str(Path(bundle).resolve()), datalist, load_overrides(overrides), name,
                            str(Path(registry).resolve()) if registry else None, structures, device, threads, nproc)
        self._proc: subprocess.Popen | None = None

    @classmethod
    def open(cls, workdir: str | os.PathLike) -> FineTuneJob:
        """An existing job from its folder (e.g. after the caller restarted)."""
        workdir = Path(workdir).resolve()
        if not (workdir / "job.json").is_file():
            raise JobStateError(f"{workdir}: not a fine-tune job folder (no job.json)")
        job = cls.__new__(cls)
        job.workdir = workdir
        job.spec = JobSpec.load(workdir / "job.json")
        job._proc = None
        return job

    @property
    def id(self) -> str:
        return self.workdir.name

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    # ----- process control ----------------------------------------------------------------------------
    def start(self) -> FineTuneJob:
        """Write ``job.json`` and start the job process; returns at once."""
        if self.events_path.exists():
            raise JobStateError(f"{self.workdir}: this folder already holds a job; resume() it or use another folder")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spec.save(self.workdir / "job.json")
        self._spawn()
        return self

    def resume(self) -> FineTuneJob:
        """Start the job process again; it continues from its last checkpoint (after a crash, kill or cancel)."""
        if self.running():
            raise JobStateError(f"job {self.id} is still running (pid {self.pid()})")
        state = summarize(read_events(self.events_path))["state"]
        if state == "completed":
            raise JobStateError(f"job {self.id} has completed; start a new job to train further")
        (self.workdir / "cancel").unlink(missing_ok=True)
        self._spawn()
        return self

    def _spawn(self) -> None:
        env = dict(os.environ)
        root = str(Path(claraseg.__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.spec.threads:
            env["OMP_NUM_THREADS"] = str(self.spec.threads)
        if self.spec.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(self.spec.nproc), "-m", "claraseg.train.worker", str(self.workdir)]
        else:
            cmd = [sys.executable, "-m", "claraseg.train.worker", str(self.workdir)]
        with open(self.workdir / "worker.log", "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir),
                                          start_new_session=True)
        write_text_atomic(self.workdir / "process.json", json.dumps({"pid": self._proc.pid, "started": time.time(),
                                                               "command": cmd}))

    def pid(self) -> int | None:
        """Process id of the job process (torchrun's for several processes)."""
        if self._proc is not None:
            return self._proc.pid
        p = self.workdir / "process.json"
        return json.loads(p.read_text())["pid"] if p.is_file() else None

    def running(self) -> bool:
        """Whether the job process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        pid = self.pid()
        if pid is None:
            return False
        if os.name == "nt":  # os.kill would terminate the process there: trust the events instead
            return summarize(read_events(self.events_path))["state"] not in FINAL_STATES
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # A zombie or a reused pid of another program is not our job.
        try:
            return "claraseg.train.worker" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") and \
                Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return True

    def cancel(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the job to stop (it finishes the current iteration, writes a ``cancelled`` state); waits up to
        ``timeout`` seconds, then terminates the process. Returns the status."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cancel").write_text(str(time.time()))
        pid = self.pid()
        if pid is not None and self.running() and os.name != "nt":  # on Windows the cancel file alone asks
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            return self.wait(timeout)
        except TimeoutError:
            self._kill(pid)
            return self.wait(10)

    def _kill(self, pid: int | None) -> None:
        """Stop the job process (and its torchrun workers) at once."""
        with contextlib.suppress(ProcessLookupError):
            if self._proc is not None and os.name == "nt":
                self._proc.kill()
            elif pid is not None and os.name != "nt":
                os.killpg(pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> dict[str, Any]:
        """Wait until the job process exits; returns :meth:`status`. Raises ``TimeoutError`` after ``timeout``."""
        deadline = None if timeout is None else time.time() + timeout
        while self.running():
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout} s")
            time.sleep(poll)
        return self.status()

    # ----- progress -----------------------------------------------------------------------------------
    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The events written so far, from the ``since``-th on (0-based; fields in docs/training.md)."""
        return read_events(self.events_path)[since:]

    def follow(self, poll: float = 0.5, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events as the job writes them, until its process has exited and every event is read."""
        offset, deadline = 0, None if timeout is None else time.time() + timeout
        while True:
            alive = self.running()
            for event, end in iter_events(self.events_path, offset):
                offset = end
                yield event
            if not alive:
                for event, _end in iter_events(self.events_path, offset):
                    yield event
                return
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout} s")
            time.sleep(poll)

    def status(self) -> dict[str, Any]:
        """The job's state, iteration, loss, Dice (baseline and best), published model, error.

        ``state`` is ``interrupted`` when the process died without a final state (crash, ``kill -9``):
        :meth:`resume` continues it from its last checkpoint.
        """
        status = summarize(self.events())
        status["id"] = self.id
        status["workdir"] = str(self.workdir)
        status["running"] = self.running()
        if not status["running"] and status["state"] not in FINAL_STATES:
            if self.events_path.exists():
                status["state"] = "interrupted"
            elif (self.workdir / "process.json").exists():  # stopped before its first event
                status["state"] = "cancelled" if (self.workdir / "cancel").exists() else "interrupted"
        if self._proc is not None:
            status["returncode"] = self._proc.poll()
        curves = self.workdir / "curves.png"
        status["curves"] = str(curves) if curves.exists() else None
        return status


class JobManager:
    """The jobs in one folder (one sub-folder per job), as the server lists them."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, bundle: str | os.PathLike, datalist: Any, overrides: Mapping[str, Any] | str | None = None,
               job_id: str | None = None, **options: Any) -> FineTuneJob:
        """A new (not yet started) job in ``root/<job_id>``; the id defaults to a time stamp plus a random suffix."""
        job_id = job_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        if (self.root / job_id).exists():
            raise JobStateError(f"a job {job_id!r} already exists in {self.root}")
        return FineTuneJob(bundle, datalist, overrides, self.root / job_id, **options)

    def get(self, job_id: str) -> FineTuneJob:
        return FineTuneJob.open(self.root / job_id)

    def list(self) -> list[FineTuneJob]:
        """Jobs of the folder, oldest first."""
        jobs = [FineTuneJob.open(p.parent) for p in self.root.glob("*/job.json")]
        return sorted(jobs, key=lambda j: (j.workdir / "job.json").stat().st_mtime)
