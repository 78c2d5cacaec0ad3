"""The background task queue: order, delivery on the polling thread, errors, cancel, progress."""

from __future__ import annotations

import threading
import time

import pytest
from ClaraAnnotateLib.worker import TaskQueue

from claraseg.errors import CancelledError, InvalidPointsError


@pytest.fixture
def q():
    queue = TaskQueue()
    yield queue
    queue.shutdown()


def test_results_arrive_in_order_on_the_polling_thread(q):
    ran_on, delivered_on, results = [], [], []

    def job(n):
        def fn(token):
            ran_on.append(threading.get_ident())
            time.sleep(0.01)
            return n * n
        return fn

    tasks = [q.submit(job(n), on_done=lambda r: (results.append(r), delivered_on.append(threading.get_ident())))
             for n in range(5)]
    time.sleep(0.2)
    assert results == []  # nothing is delivered until the GUI thread polls
    for t in tasks:
        q.wait(t, timeout=5)
    assert results == [0, 1, 4, 9, 16]
    assert set(delivered_on) == {threading.get_ident()}
    assert len(set(ran_on)) == 1 and ran_on[0] != threading.get_ident()
    assert all(t.state == "done" for t in tasks) and not q.busy


def test_errors_are_delivered_not_raised_and_the_thread_survives(q):
    errors = []

    def bad(token):
        raise InvalidPointsError("place a point first")

    t = q.wait(q.submit(bad, on_error=errors.append), timeout=5)
    assert t.state == "failed" and isinstance(errors[0], InvalidPointsError)
    assert q.wait(q.submit(lambda token: 42), timeout=5).result == 42


def test_cancel_queued_and_running_tasks(q):
    started, release = threading.Event(), threading.Event()
    cancelled, done = [], []

    def long(token):
        started.set()
        while not release.is_set():
            token.check()
            time.sleep(0.01)
        return "finished"

    running = q.submit(long, on_done=done.append, on_cancelled=lambda: cancelled.append("running"))
    queued = q.submit(lambda token: "never", on_done=done.append, on_cancelled=lambda: cancelled.append("queued"))
    assert started.wait(5)
    assert q.cancel_all() == 2
    q.wait(running, timeout=5)
    q.wait(queued, timeout=5)
    assert sorted(cancelled) == ["queued", "running"] and done == []
    assert running.state == queued.state == "cancelled"


def test_result_of_a_task_cancelled_too_late_is_discarded(q):
    gate = threading.Event()
    done = []

    def ignores_token(token):
        gate.wait(5)
        return 1

    t = q.submit(ignores_token, on_done=done.append)
    time.sleep(0.05)
    q.cancel(t)
    gate.set()
    q.wait(t, timeout=5)
    assert t.state == "cancelled" and done == []


def test_progress_is_reported_while_running(q):
    seen = []

    def steps(token):
        for i in range(3):
            token.progress((i + 1) / 3, f"step {i + 1}")
        return "ok"

    q.wait(q.submit(steps, on_progress=lambda f, m: seen.append((round(f, 2), m))), timeout=5)
    assert seen == [(0.33, "step 1"), (0.67, "step 2"), (1.0, "step 3")]


def test_token_check_raises_cancelled_error():
    q = TaskQueue()
    try:
        t = q.submit(lambda token: None)
        q.wait(t, timeout=5)
        t.token.cancel()
        with pytest.raises(CancelledError):
            t.token.check()
    finally:
        q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.submit(lambda token: None)
