"""Backend settings and the remembered server history.

Values live in a key/value store with ``value(key, default)`` / ``setValue(key, value)``: in Slicer that
is ``qt.QSettings()`` itself; :class:`DictStore` is the same thing in memory (tests, scripts). QSettings
hands back strings for everything on some platforms, so every read here converts explicitly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from claraseg.errors import ConfigError

PREFIX = "ClaraAnnotate/"
MODES = ("local", "remote")
MAX_HISTORY = 10


def default_models_dir() -> str:
    """Where local fine-tuning publishes new model versions: a folder of the user's, never the extension's
    own (read-only once installed). ``CLARASEG_USER_MODELS`` overrides."""
    return os.environ.get("CLARASEG_USER_MODELS") or os.path.join(os.path.expanduser("~"), ".claraseg", "models")


class SettingsStore(Protocol):
    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...  # noqa: N802 - QSettings' spelling


class DictStore:
    """A :class:`SettingsStore` in a dict (what QSettings is, minus the file)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})

    def value(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802
        self.data[key] = value


def _to_bool(v: Any, default: bool = False) -> bool:
    if v is None:
        return default
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def normalize_url(url: str) -> str:
    """``host:8000`` -> ``http://host:8000``; trailing slashes removed. Raises :class:`ConfigError` when the
    text is not an http(s) address."""
    text = (url or "").strip()
    if not text:
        raise ConfigError("enter the annotation server's address, e.g. http://127.0.0.1:8000")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"'{url}' is not a server address; use the form http://host:port (or https://...)")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise ConfigError(f"'{url}' has an invalid port number") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def push_history(history: list[str], url: str, limit: int = MAX_HISTORY) -> list[str]:
    """Most-recently-used list: ``url`` first, no duplicates, at most ``limit`` entries."""
    return ([url] + [u for u in history if u != url])[:limit]


@dataclass
class BackendSettings:
    """Which backend to use. The token is kept only when ``remember_token`` is set (off by default:
    QSettings files are plain text)."""

    mode: str = "local"
    url: str = "http://127.0.0.1:8000"
    token: str = ""
    remember_token: bool = False
    history: list[str] = field(default_factory=list)
    device: str = "auto"
    models_dir: str = field(default_factory=default_models_dir)

    def validate(self) -> BackendSettings:
        if self.mode not in MODES:
            raise ConfigError(f"backend mode must be one of {MODES}, not '{self.mode}'")
        if self.mode == "remote":
            self.url = normalize_url(self.url)
        return self

    @classmethod
    def load(cls, store: SettingsStore) -> BackendSettings:
        raw_history = store.value(PREFIX + "history", "[]")
        try:
            history = json.loads(raw_history) if isinstance(raw_history, str) else list(raw_history or [])
        except ValueError:
            history = []
        mode = str(store.value(PREFIX + "mode", "local") or "local")
        remember = _to_bool(store.value(PREFIX + "rememberToken", False))
        return cls(
            mode=mode if mode in MODES else "local",
            url=str(store.value(PREFIX + "url", cls.url) or cls.url),
            token=str(store.value(PREFIX + "token", "") or "") if remember else "",
            remember_token=remember,
            history=[str(u) for u in history if isinstance(u, str)][:MAX_HISTORY],
            device=str(store.value(PREFIX + "device", "auto") or "auto"),
            models_dir=str(store.value(PREFIX + "modelsDir", "") or default_models_dir()),
        )

    def save(self, store: SettingsStore) -> None:
        """Persist; a remote URL that validates goes to the front of the history."""
        if self.mode == "remote":
            self.url = normalize_url(self.url)
            self.history = push_history(self.history, self.url)
        store.setValue(PREFIX + "mode", self.mode)
        store.setValue(PREFIX + "url", self.url)
        store.setValue(PREFIX + "history", json.dumps(self.history))
        store.setValue(PREFIX + "rememberToken", bool(self.remember_token))
        store.setValue(PREFIX + "token", self.token if self.remember_token else "")
        store.setValue(PREFIX + "device", self.device)
        store.setValue(PREFIX + "modelsDir", self.models_dir)
