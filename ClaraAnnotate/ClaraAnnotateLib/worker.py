"""One background thread for all model and network work; results handed back on the caller's thread.

The GUI thread submits tasks and calls :meth:`TaskQueue.poll` from a timer; callbacks (``on_done``,
``on_error``, ``on_progress``, ``on_cancelled``) run inside ``poll``, i.e. on the GUI thread, which is
the only thread allowed to touch MRML and Qt. A single persistent thread (not one per task) keeps
per-thread state such as the cuDNN plan cache warm and runs interactions in the order they were made.

Cancelling a queued task drops it; cancelling a running task sets its token, which the task checks
(``token.check()``) between steps, and its result is discarded either way.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from claraseg.errors import CancelledError

log = logging.getLogger(__name__)


class CancelToken:
    """Handed to a task: ``check()`` raises :class:`CancelledError` once cancel was requested;
    ``progress(fraction, message)`` reports progress to the GUI."""

    def __init__(self, report: Callable[[float | None, str], None]) -> None:
        self._event = threading.Event()
        self._report = report

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled")

    def progress(self, fraction: float | None, message: str = "") -> None:
        self._report(fraction, message)


@dataclass
class Task:
    """A unit of background work. ``state`` is one of queued, running, done, failed, cancelled."""

    id: int
    label: str
    fn: Callable[..., Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[[float | None, str], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    state: str = "queued"
    result: Any = None
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    token: CancelToken | None = None
    _finished: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        """True once the task's outcome was delivered by :meth:`TaskQueue.poll`."""
        return self._finished.is_set()


class TaskQueue:
    """A FIFO of :class:`Task` run by one daemon thread; see the module docstring."""

    def __init__(self, name: str = "ClaraWorker") -> None:
        self._pending: queue.Queue[Task | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[Task, str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Task | None = None
        self._queued: list[Task] = []
        self._undelivered: list[Task] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ----- GUI side ------------------------------------------------------------------------------
    def submit(self, fn: Callable[[CancelToken], Any], *, label: str = "", on_done=None, on_error=None,
               on_progress=None, on_cancelled=None) -> Task:
        """Queue ``fn(token)``; callbacks are called later from :meth:`poll`."""
        if self._closed:
            raise RuntimeError("the task queue was shut down")
        task = Task(next(self._ids), label or getattr(fn, "__name__", "task"), fn, on_done, on_error,
                    on_progress, on_cancelled)
        task.token = CancelToken(lambda f, m, t=task: self._outbox.put((t, "progress", (f, m))))
        with self._lock:
            self._queued.append(task)
            self._undelivered.append(task)
        self._pending.put(task)
        return task

    def cancel(self, task: Task) -> None:
        """Cancel one task (queued: never runs; running: token set, result discarded)."""
        with self._lock:
            if task.state == "queued":
                task.state = "cancelled"
                if task in self._queued:
                    self._queued.remove(task)
                self._outbox.put((task, "cancelled", None))
            elif task.state == "running" and task.token is not None:
                task.token.cancel()

    def cancel_all(self) -> int:
        """Cancel everything queued or running; returns how many tasks were affected."""
        with self._lock:
            tasks = list(self._queued) + ([self._current] if self._current else [])
        for t in tasks:
            self.cancel(t)
        return len(tasks)

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._queued) or self._current is not None

    @property
    def current(self) -> Task | None:
        with self._lock:
            return self._current

    def poll(self) -> int:
        """Deliver finished tasks' callbacks on the calling thread; returns how many events were handled."""
        n = 0
        while True:
            try:
                task, kind, payload = self._outbox.get_nowait()
            except queue.Empty:
                return n
            n += 1
            self._deliver(task, kind, payload)

    def wait(self, task: Task, timeout: float | None = None, pump: Callable[[], None] | None = None) -> Task:
        """Poll until ``task`` is delivered (tests, scripts and self-tests); ``pump`` e.g. processes Qt
        events. Raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not task.finished:
            self.poll()
            if task.finished:
                break
            if pump is not None:
                pump()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"'{task.label}' did not finish within {timeout} s")
            time.sleep(0.01)
        return task

    def wait_idle(self, timeout: float | None = None, pump: Callable[[], None] | None = None) -> None:
        """Poll until every task submitted so far is delivered (its callback has run)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._undelivered)
            if not pending:
                return
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.wait(pending[0], left, pump)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the thread."""
        self._closed = True
        self.cancel_all()
        self._pending.put(None)
        self._thread.join(timeout)

    # ----- internals -----------------------------------------------------------------------------
    def _deliver(self, task: Task, kind: str, payload: Any) -> None:
        cb: Callable[..., Any] | None
        try:
            if kind == "progress":
                if task.on_progress and task.state != "cancelled":
                    task.on_progress(*payload)
                return
            if kind == "done":
                cb, args = task.on_done, (payload,)
            elif kind == "error":
                cb, args = task.on_error, (payload,)
            else:
                cb, args = task.on_cancelled, ()
            if cb is not None:
                cb(*args)
            elif kind == "error":
                log.error("background task '%s' failed: %s", task.label, payload)
        finally:
            if kind != "progress":
                task._finished.set()
                with self._lock:
                    if task in self._undelivered:
                        self._undelivered.remove(task)

    def _run(self) -> None:
        while True:
            task = self._pending.get()
            if task is None:
                return
            with self._lock:
                if task.state != "queued":
                    continue
                self._queued.remove(task)
                task.state = "running"
                self._current = task
            try:
                result = task.fn(task.token)
            except CancelledError:
                outcome, payload = "cancelled", None
            except Exception as e:  # every failure goes back to the GUI as a message, never kills the thread
                outcome, payload = "error", e
            else:
                outcome, payload = ("cancelled", None) if task.token.cancelled else ("done", result)
            with self._lock:
                task.state = {"done": "done", "error": "failed", "cancelled": "cancelled"}[outcome]
                task.result = payload if outcome == "done" else None
                task.error = payload if outcome == "error" else None
                self._current = None
            self._outbox.put((task, outcome, payload))
