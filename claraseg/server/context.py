"""What every route needs: the hosted backend, its model list, sessions, the work pool, the datastore."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from claraseg.backend import Backend, ModelDescriptor
from claraseg.errors import AuthenticationError, UnknownModelError

from .datastore import Datastore
from .sessions import SessionRegistry, WorkPool
from .settings import ServerSettings


@dataclass
class ServerContext:
    backend: Backend
    settings: ServerSettings
    pool: WorkPool
    sessions: SessionRegistry
    datastore: Datastore | None = None
    jobs: Any = None
    descriptors: dict[str, ModelDescriptor] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    #: datastore image id -> session id, so /infer on a stored image preprocesses it once.
    image_sessions: dict[str, str] = field(default_factory=dict)

    def refresh_models(self, rescan: bool = False) -> None:
        """Re-read the backend's models; ``rescan`` asks its registry to look for newly published bundles."""
        registry = getattr(self.backend, "registry", None)
        if rescan and registry is not None and hasattr(registry, "reload"):
            registry.reload()
        self.descriptors = {d.name: d for d in self.backend.models()}

    def model(self, name: str) -> ModelDescriptor:
        d = self.descriptors.get(name)
        if d is None:
            known = ", ".join(sorted(self.descriptors)) or "none"
            raise UnknownModelError(f"no model named {name!r} on this server; available: {known}")
        return d


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


_bearer = HTTPBearer(auto_error=False, description="the server's --token")


def require_token(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Check the bearer token in constant time; a server started without ``--token`` accepts everyone."""
    expected = request.app.state.ctx.settings.token
    if not expected:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("this server requires a token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise AuthenticationError("wrong token; ask the server's administrator for the --token it was started with")
