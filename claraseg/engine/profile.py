"""A light per-stage timer for the click path (``claraseg bench --profile``).

Code marks its stages with ``with stage("forward"):``. While no :class:`Profiler` is active (the normal
case) :func:`stage` returns one shared no-op context and :func:`count` returns at once, so the marks cost
a context-variable lookup each. Inside ``with Profiler() as prof:`` every top-level
:func:`interaction` becomes one record in ``prof.records``: its total time and, per stage path
(``"refit/forward"`` for a forward inside a re-fit pass), the wall time spent in that stage itself (its
nested stages excluded), the process CPU time likewise (all threads; less sensitive than wall time to
other work on a shared machine) and how often it ran, plus the counters (network forwards, flipped
inputs).
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Any

_active: ContextVar[Profiler | None] = ContextVar("claraseg_profiler", default=None)
_NULL = contextlib.nullcontext()


class _Stage:
    __slots__ = ("prof", "name", "t0", "c0", "tags")

    def __init__(self, prof: Profiler, name: str, tags: dict | None = None):
        self.prof, self.name, self.tags = prof, name, tags

    def __enter__(self):
        p = self.prof
        if self.tags is not None and not p._stack:
            p._current = {"total_ms": 0.0, "cpu_ms": 0.0, "stages": {}, "counts": {}, **self.tags}
        p._stack.append(self.name)
        p._child.append([0.0, 0.0])
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        dc = time.process_time() - self.c0
        p = self.prof
        path = "/".join(p._stack)
        p._stack.pop()
        child = p._child.pop()
        p._child[-1][0] += dt
        p._child[-1][1] += dc
        rec = p._current
        if rec is not None:
            # [wall ms, calls, cpu ms] of the stage's own time
            name = path.split("/", 1)[1] if p._stack else "other"
            s = rec["stages"].setdefault(name, [0.0, 0, 0.0])
            s[0] += (dt - child[0]) * 1000.0
            s[2] += (dc - child[1]) * 1000.0
            if p._stack:
                s[1] += 1
            else:
                rec["total_ms"], rec["cpu_ms"] = dt * 1000.0, dc * 1000.0
                p.records.append(rec)
                p._current = None
        return False


class Profiler:
    """Collects one record per interaction while active (``with Profiler() as prof:``)."""

    def __init__(self):
        self.records: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self._child: list[list[float]] = [[0.0, 0.0]]
        self._current: dict[str, Any] | None = None
        self._token = None

    def __enter__(self) -> Profiler:
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc):
        _active.reset(self._token)
        return False


def stage(name: str):
    """Time the enclosed block as stage ``name`` (nested in the stages around it); no-op when off."""
    prof = _active.get()
    return _NULL if prof is None else _Stage(prof, name)


def interaction(kind: str, **tags):
    """Time one whole interaction (a click, the extreme points): the root of a profile record, tagged
    with ``kind`` and ``tags``. Nested inside another interaction it is an ordinary stage."""
    prof = _active.get()
    if prof is None:
        return _NULL
    return _Stage(prof, kind, {"kind": kind, **tags} if not prof._stack else None)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` of the interaction being profiled (no-op when off)."""
    prof = _active.get()
    if prof is not None and prof._current is not None:
        counts = prof._current["counts"]
        key = "/".join(prof._stack[1:] + [name])
        counts[key] = counts.get(key, 0) + n


def enabled() -> bool:
    """True while a :class:`Profiler` is active in this context."""
    return _active.get() is not None
