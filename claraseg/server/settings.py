"""Server settings: one dataclass, filled by ``claraseg serve`` or by tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from claraseg.errors import ConfigError

MB = 1024 * 1024


@dataclass
class ServerSettings:
    """Everything the app needs besides the backend; the CLI maps its flags onto these fields.

    Attributes:
        host: interface to bind; anything but loopback requires ``token``.
        token: bearer token every API request must carry (None: no auth, loopback only).
        datastore: folder of the on-disk datastore (None: no datastore routes).
        models_dir: folder of model bundles; with a datastore it enables fine-tuning jobs (/train/).
        workers: worker threads for blocking work (CPU inference, decoding uploads).
        max_queue: requests allowed to wait for a worker before the server answers 503.
        serialize_device: run inference one request at a time (a GPU).
        idle_timeout: seconds after which an unused session expires.
        max_sessions: open sessions kept; the least recently used one expires beyond that.
        max_session_bytes: memory all open sessions may hold together (image + working copies); beyond it
            sessions idle for 30 s are evicted, else a new session is refused with 503 + Retry-After.
        max_upload_bytes: largest body of an image/label upload (after gzip decompression too).
        max_body_bytes: largest body of any other request.
        cors_origins: origins allowed by CORS; empty = CORS off.
        ssl_certfile, ssl_keyfile: TLS, passed to uvicorn.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    datastore: Path | None = None
    models_dir: Path | None = None
    sample_data: Path | None = None
    workers: int = 2
    max_queue: int = 16
    serialize_device: bool = False
    device: str = "cpu"
    idle_timeout: float = 1800.0
    max_sessions: int = 32
    max_session_bytes: int = 8192 * MB
    max_upload_bytes: int = 2048 * MB
    max_body_bytes: int = 16 * MB
    cors_origins: list[str] = field(default_factory=list)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    name: str = "claraseg"
    web_url: str | None = None  # Clara Annotate Web beside the API (linked from the status page)

    def check(self) -> None:
        """Refuse unsafe or inconsistent settings with a message that says what to change."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host!r} without a token: anyone on the network could use the server. "
                "Pass --token SECRET (clients send it as 'Authorization: Bearer SECRET'), or bind 127.0.0.1"
            )
        if self.token is not None and (not self.token.isprintable() or any(c.isspace() for c in self.token)
                                       or not self.token.isascii()):
            raise ConfigError("the token must be printable ASCII without spaces (e.g. `python -c 'import secrets; "
                              "print(secrets.token_urlsafe())'`)")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the token is too short; use at least 8 characters (e.g. `python -c 'import secrets; "
                              "print(secrets.token_urlsafe())'`)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
        for f in (self.ssl_certfile, self.ssl_keyfile):
            if f and not Path(f).is_file():
                raise ConfigError(f"TLS file {f} does not exist")
        if self.workers < 1 or self.max_queue < 0 or self.max_sessions < 1 or self.idle_timeout <= 0:
            raise ConfigError("workers, max_sessions and idle_timeout must be positive and max_queue >= 0")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
