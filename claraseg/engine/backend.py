"""``LocalBackend``: the engine in-process (Slicer's local mode, the server's worker, evaluation)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from claraseg.backend import ModelDescriptor, pick_device
from claraseg.engine.session import LocalSession
from claraseg.errors import SessionExpiredError, SessionNotFoundError
from claraseg.io import Image
from claraseg.models.registry import ModelRegistry


class LocalBackend:
    """The :class:`~claraseg.backend.Backend` that runs models in this process.

    Args:
        models: a :class:`ModelRegistry`, or models folder(s) to build one from (default: the packaged
            bundles plus ``$CLARASEG_MODELS``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        idle_timeout: seconds after which an unused session is released (its calls then raise
            :class:`~claraseg.errors.SessionExpiredError`); ``None`` keeps sessions until closed.
        memory_factor: a session holds at most this multiple of its image's bytes (older undo steps are
            dropped beyond it).
    """

    def __init__(self, models: ModelRegistry | str | os.PathLike | Sequence | None = None, *, device: str = "auto",
                 idle_timeout: float | None = 1800.0, memory_factor: float = 2.0):
        self.registry = models if isinstance(models, ModelRegistry) else ModelRegistry(models)
        self.device = pick_device(device)
        self.idle_timeout = idle_timeout
        self.memory_factor = memory_factor
        self._sessions: dict[str, LocalSession] = {}
        self._expired: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pipelines: dict[tuple[str, int], object] = {}
        self._reaper = None
        if idle_timeout is not None:
            self._reaper = threading.Thread(target=self._reap, name="claraseg-session-reaper", daemon=True)
            self._reaper.start()

    # ----- Backend protocol ----------------------------------------------------------------------------
    def models(self) -> list[ModelDescriptor]:
        return self.registry.descriptors()

    def open_session(self, image: Image) -> LocalSession:
        session = LocalSession(self, image)
        with self._lock:
            self._sessions[session.id] = session
        return session

    def warmup(self) -> None:
        """Load every model's network now (the first call otherwise pays for importing MONAI and loading)."""
        for name in self.registry.names():
            self.registry.network(name, self.device)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.close()

    # ----- for the server and the engine -----------------------------------------------------------------
    def session(self, session_id: str) -> LocalSession:
        """A session by id; raises :class:`SessionExpiredError` or :class:`SessionNotFoundError`."""
        self.expire_idle()
        with self._lock:
            s = self._sessions.get(session_id)
            expired = session_id in self._expired
        if s is None:
            if expired:
                raise SessionExpiredError(f"session {session_id} expired after being idle; open a new session")
            raise SessionNotFoundError(f"no session {session_id!r} (never opened, or closed)")
        return s

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def interactive_bundles(self):
        """Bundles of the interactive kinds (their intensity statistics are computed at session open)."""
        out = []
        for name in self.registry.names():
            b = self.registry.get(name)
            if b.kind != "segmentation":
                out.append(b)
        return out

    def pipeline(self, model: str):
        """The parsed model-zoo pipeline of a segmentation bundle (cached per version)."""
        from claraseg.models.zoo import ZooPipeline

        key = self.registry.resolve(model)
        with self._lock:
            p = self._pipelines.get(key)
        if p is None:
            p = ZooPipeline(self.registry.get(model).inference)
            with self._lock:
                self._pipelines[key] = p
        return p

    def reload(self) -> None:
        """Reload the models (after a publish); open sessions use the new versions from their next call."""
        self.registry.reload()
        with self._lock:
            self._pipelines = {}

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def expire_idle(self) -> list[str]:
        """Release sessions idle longer than ``idle_timeout``; returns their ids."""
        if self.idle_timeout is None:
            return []
        with self._lock:
            sessions = list(self._sessions.values())
        gone = [s.id for s in sessions if s.expire_if_idle(self.idle_timeout)]
        with self._lock:
            for sid in gone:
                self._sessions.pop(sid, None)
                self._expired.add(sid)
        return gone

    def _reap(self) -> None:
        interval = max(0.05, min(30.0, (self.idle_timeout or 30.0) / 4))
        while not self._stop.wait(interval):
            self.expire_idle()
