"""ASGI middleware: request ids with structured (JSON-lines) access logs, and request body limits."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from claraseg.errors import RequestTooLargeError

log = logging.getLogger("claraseg.server.access")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class RequestContextMiddleware:
    """Give each request an id (the client's ``X-Request-ID`` if well-formed), echo it, and log one line
    per request with method, path, status, duration and byte counts."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _RID.match(rid):
            rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        counts = {"in": 0, "out": 0, "status": 500}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            log.info("request", extra={
                "request_id": rid, "method": scope["method"], "path": scope["path"], "status": counts["status"],
                "ms": round((time.perf_counter() - t0) * 1000, 2), "bytes_in": counts["in"], "bytes_out": counts["out"],
            })


#: Paths answered without a token: the status page and the API documentation.
PUBLIC_PATHS = ("/", "/docs", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/static-docs/",)


class AuthMiddleware:
    """Check the bearer token before anything reads, parses or buffers the request body.

    The routes declare the same check (``require_token``) for the OpenAPI schema; this one runs first, so
    an unauthenticated client cannot make the server parse a large JSON or multipart body.
    """

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.token is None or scope["method"] == "OPTIONS" \
                or scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        value = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = value.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            detail = "this server requires a token: send 'Authorization: Bearer <token>'"
        elif not hmac.compare_digest(given.strip(), self.token):
            detail = "wrong token; ask the server's administrator for the --token it was started with"
        else:
            await self.app(scope, receive, send)
            return
        await _send_json(send, 401, "unauthorized", detail, {b"www-authenticate": b"Bearer"})


#: (method, path prefix) of routes whose bodies carry images or labels.
UPLOAD_ROUTES = (("PUT", "/session"), ("PUT", "/datastore/image"), ("PUT", "/datastore/label"),
                 ("POST", "/infer/"), ("PUT", "/datastore"))


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413: at once from ``Content-Length``, else while streaming."""

    def __init__(self, app, max_upload_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.max_upload, self.max_body = int(max_upload_bytes), int(max_body_bytes)

    def limit_for(self, method: str, path: str) -> int:
        if any(method == m and path.startswith(p) for m, p in UPLOAD_ROUTES) and "/click" not in path:
            return self.max_upload
        return self.max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n < 0:
                await _send_json(send, 400, "bad_request", "the Content-Length header is not a non-negative integer")
                return
            if n > limit:
                await _send_json(send, 413, RequestTooLargeError.code, _too_large(limit))
                return
        total = 0

        async def limited_receive():
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise RequestTooLargeError(_too_large(limit))
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLargeError as e:
            if started:
                raise
            await _send_json(send, 413, e.code, str(e))


def _too_large(limit: int) -> str:
    return (f"the request body exceeds this server's limit of {limit / 2**20:.0f} MiB; crop or downsample the "
            "image, or start the server with a larger --max-upload-mb")


async def _send_json(send, status: int, code: str, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or {}).items()]})
    await send({"type": "http.response.body", "body": body})
