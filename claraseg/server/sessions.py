"""Server-side sessions and the bounded inference pool.

A :class:`SessionRegistry` maps the server's session ids to sessions of the hosted backend, expires idle
ones (remembering their ids, so a late client is told "expired" with status 440 rather than "unknown"
with 404) and serialises the interactions of one session. A :class:`WorkPool` runs blocking work
(decoding uploads, opening sessions, inference) on worker threads, never on the event loop; when its
queue is full it refuses at once with :class:`~claraseg.errors.ServerBusyError` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from claraseg.backend import Session, share_malloc_arena
from claraseg.errors import RequestTooLargeError, ServerBusyError, SessionExpiredError, SessionNotFoundError

from .datastore import check_id

log = logging.getLogger("claraseg.server")
T = TypeVar("T")


class WorkPool:
    """A fixed number of worker threads and a bounded queue in front of them.

    Args:
        workers: threads running blocking work concurrently (CPU inference).
        max_queue: requests allowed to wait beyond those running; one more is refused with 503.
        serialize: hold one lock around every call (a single GPU: requests run one at a time).
    """

    def __init__(self, workers: int = 2, max_queue: int = 16, serialize: bool = False) -> None:
        self.workers, self.max_queue = max(1, int(workers)), max(0, int(max_queue))
        share_malloc_arena()  # before the workers allocate: their clicks then run as fast as the main thread's
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="claraseg-work")
        self._slots = threading.BoundedSemaphore(self.workers + self.max_queue)
        self._device_lock = threading.Lock() if serialize else None
        self._pending = 0
        self._count_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests running or waiting."""
        return self._pending

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        try:
            if self._device_lock is None:
                return fn(*args, **kwargs)
            with self._device_lock:
                return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self._pending -= 1
            self._slots.release()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a worker; raise :class:`ServerBusyError` at once when the queue is full."""
        if not self._slots.acquire(blocking=False):
            raise ServerBusyError(
                f"the server is busy ({self.workers} running, {self.max_queue} waiting); retry in a moment"
            )
        with self._count_lock:
            self._pending += 1
        try:
            fut = self._executor.submit(self._call, fn, args, kwargs)
        except RuntimeError:  # shutting down
            with self._count_lock:
                self._pending -= 1
            self._slots.release()
            raise ServerBusyError("the server is shutting down") from None
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class SessionEntry:
    """One open session: the backend's session and what the server knows about it."""

    id: str
    session: Session
    image_size: tuple[int, int, int]
    dtype: str
    nbytes: int
    expiry: float
    source: str = "upload"
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    interactions: int = 0
    geometry: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: bytes counted against the registry's memory budget (:meth:`SessionRegistry.reserve`).
    cost: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.id, "image_size": list(self.image_size), "dtype": self.dtype, "nbytes": self.nbytes,
            "source": self.source, "create_ts": round(self.created, 3), "last_access_ts": round(self.last_used, 3),
            "expiry": self.expiry, "interactions": self.interactions,
        }


class SessionRegistry:
    """Open sessions by id, idle expiry, and a bounded memory of expired ids."""

    def __init__(self, idle_timeout: float = 1800.0, max_sessions: int = 64, remember_expired: int = 4096,
                 max_bytes: int = 8 << 30, evict_idle_s: float = 30.0) -> None:
        self.idle_timeout = float(idle_timeout)
        self.max_sessions = int(max_sessions)
        self.max_bytes = int(max_bytes)
        self.evict_idle_s = float(evict_idle_s)
        self._reserved = 0
        self._sessions: OrderedDict[str, SessionEntry] = OrderedDict()
        self._expired: OrderedDict[str, float] = OrderedDict()
        self._remember = remember_expired
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def bytes_used(self) -> int:
        """Memory counted for open sessions plus sessions being opened."""
        with self._lock:
            return sum(e.cost for e in self._sessions.values()) + self._reserved

    @contextlib.contextmanager
    def reserve(self, cost: int):
        """Hold ``cost`` bytes of the budget while a session opens; evicts sessions idle for
        ``evict_idle_s`` (least recently used first) to make room, else refuses with 503 (retry later)."""
        cost = int(cost)
        if cost > self.max_bytes:
            raise RequestTooLargeError(
                f"a session on this image needs about {cost / 2**20:,.0f} MiB, more than the server's session memory "
                f"of {self.max_bytes / 2**20:,.0f} MiB; crop or downsample the image")
        evicted: list[SessionEntry] = []
        now = time.time()
        with self._lock:
            used = sum(e.cost for e in self._sessions.values()) + self._reserved
            for e in list(self._sessions.values()):
                if used + cost <= self.max_bytes:
                    break
                if now - e.last_used >= self.evict_idle_s and not e.lock.locked():
                    del self._sessions[e.id]
                    self._mark_expired(e.id)
                    evicted.append(e)
                    used -= e.cost
            fits = used + cost <= self.max_bytes
            if fits:
                self._reserved += cost
        for e in evicted:
            log.info("session evicted", extra={"session_id": e.id, "reason": "memory"})
            _close_quietly(e)
        if evicted:
            release_memory()
        if not fits:
            raise ServerBusyError(
                f"the server's session memory is in use ({used / 2**20:,.0f} of {self.max_bytes / 2**20:,.0f} MiB by "
                f"active sessions; this image needs {cost / 2**20:,.0f} MiB); retry when a session closes")
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= cost

    def add(self, session: Session, *, image_size, dtype: str, nbytes: int, expiry: float | None = None,
            source: str = "upload", cost: int = 0) -> SessionEntry:
        """Register a backend session under a new id; evicts the least recently used one when full."""
        sid = uuid.uuid4().hex
        entry = SessionEntry(sid, session, tuple(int(v) for v in image_size), dtype, int(nbytes),
                             float(expiry) if expiry and expiry > 0 else self.idle_timeout, source, cost=int(cost))
        evicted = []
        with self._lock:
            self._sessions[sid] = entry
            while len(self._sessions) > self.max_sessions:
                old_id, old = self._sessions.popitem(last=False)
                self._mark_expired(old_id)
                evicted.append(old)
        for old in evicted:
            log.info("session evicted", extra={"session_id": old.id, "reason": "max_sessions"})
            _close_quietly(old)
        return entry

    def _mark_expired(self, sid: str) -> None:
        self._expired[sid] = time.time()
        while len(self._expired) > self._remember:
            self._expired.popitem(last=False)

    def get(self, sid: str, *, touch: bool = True) -> SessionEntry:
        """The session ``sid``; :class:`SessionExpiredError` if it expired, :class:`SessionNotFoundError`
        if it never existed or was closed."""
        check_id(sid, "session id")
        with self._lock:
            entry = self._sessions.get(sid)
            if entry is not None:
                if time.time() - entry.last_used <= entry.expiry:
                    if touch:
                        entry.last_used = time.time()
                        self._sessions.move_to_end(sid)
                    return entry
                del self._sessions[sid]
                self._mark_expired(sid)
            elif sid not in self._expired:
                raise SessionNotFoundError(f"no session {sid!r} on this server; open one with PUT /session/")
        if entry is not None:
            _close_quietly(entry)
        raise SessionExpiredError(f"session {sid!r} expired after being idle; open a new session (re-upload the image)")

    def remove(self, sid: str) -> SessionEntry:
        """Close and forget a session (DELETE)."""
        check_id(sid, "session id")
        with self._lock:
            entry = self._sessions.pop(sid, None)
            expired = sid in self._expired
        if entry is None:
            if expired:
                raise SessionExpiredError(f"session {sid!r} had already expired")
            raise SessionNotFoundError(f"no session {sid!r} on this server")
        _close_quietly(entry)
        release_memory()
        return entry

    def expire_idle(self) -> int:
        """Close sessions idle longer than their expiry; returns how many. Called periodically."""
        now = time.time()
        with self._lock:
            stale = [e for e in self._sessions.values() if now - e.last_used > e.expiry and not e.lock.locked()]
            for e in stale:
                del self._sessions[e.id]
                self._mark_expired(e.id)
        for e in stale:
            log.info("session expired", extra={"session_id": e.id})
            _close_quietly(e)
        if stale:
            release_memory()
        return len(stale)

    def entries(self) -> list[SessionEntry]:
        with self._lock:
            return list(self._sessions.values())

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
        for e in entries:
            _close_quietly(e)
        release_memory()


def _close_quietly(entry: SessionEntry) -> None:
    try:
        entry.session.close()
    except Exception:  # a failing close must not keep the others open
        log.exception("closing session %s failed", entry.id)


def release_memory() -> None:
    """Give freed session memory back to the OS (glibc keeps large freed blocks otherwise)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

