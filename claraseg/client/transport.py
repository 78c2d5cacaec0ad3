"""The HTTP plumbing of the client: one ``requests.Session`` (a keep-alive connection pool), timeouts,
retries, cancellation and the mapping of the server's error answers onto claraseg's exception classes.

GETs and DELETEs are retried on connection errors and 502/504, other calls only when the connection failed
before anything was sent, or when the server said it was busy (503: nothing was run). Calls are
thread-safe and cancellable: :meth:`HttpClient.cancel` makes every call in flight raise
:class:`~claraseg.errors.CancelledError` at once.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from claraseg.errors import (
    CancelledError,
    ClarasegError,
    ServerBusyError,
    ServerUnavailableError,
    SessionExpiredError,
)
from claraseg.io import Image, read_image, write_image


def _error_classes() -> dict[str, type[ClarasegError]]:
    out: dict[str, type[ClarasegError]] = {}
    todo = [ClarasegError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo += cls.__subclasses__()
    return out


class Body:
    """A request body made of several buffers, read without joining them (large uploads)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._len = sum(len(p) for p in self._parts)
        self._i = self._off = 0

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        out = []
        want = self._len if n is None or n < 0 else n
        while want > 0 and self._i < len(self._parts):
            p = self._parts[self._i]
            take = p[self._off:self._off + want]
            out.append(bytes(take))
            want -= len(take)
            self._off += len(take)
            if self._off >= len(p):
                self._i, self._off = self._i + 1, 0
        return b"".join(out)


class HttpClient:
    """Requests to one server: ``url`` (already checked), the bearer ``token``, ``timeout`` for connecting
    and small calls, TLS ``verify`` (``True``, ``False`` or a CA bundle path), at most ``max_connections``
    calls at once."""

    def __init__(self, url: str, token: str | None, *, timeout: float, verify: bool | str, max_connections: int,
                 user_agent: str) -> None:
        self.url = url
        self.timeout = float(timeout)
        self._http = requests.Session()
        retry = Retry(total=3, connect=3, read=2, status=2, other=0, backoff_factor=0.2, raise_on_status=False,
                      allowed_methods=frozenset({"GET", "HEAD", "DELETE"}), status_forcelist=(502, 504),
                      respect_retry_after_header=True)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=retry)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        self._http.verify = self._verify = verify
        self._http.headers["User-Agent"] = user_agent
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="claraseg-http")
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()
        self._errors = _error_classes()
        self._closed = False

    def cancel(self) -> None:
        """Make every call now in flight raise :class:`~claraseg.errors.CancelledError` (from any thread).
        Later calls are not affected."""
        with self._active_lock:
            events = list(self._active)
        for ev in events:
            ev.cancelled = True  # type: ignore[attr-defined]
            ev.set()

    def _submit(self, method: str, path: str, timeout: float, **kwargs: Any) -> tuple[Future, threading.Event]:
        if self._closed:
            raise ServerUnavailableError("this RemoteBackend was closed; create a new one")
        ev = threading.Event()
        ev.cancelled = False  # type: ignore[attr-defined]
        # verify per request: requests would let REQUESTS_CA_BUNDLE override the session's setting.
        fut = self._executor.submit(self._http.request, method, self.url + path, verify=self._verify,
                                    timeout=(min(self.timeout, timeout), timeout), **kwargs)
        fut.add_done_callback(lambda _: ev.set())
        return fut, ev

    def _wait(self, fut: Future, ev: threading.Event, what: str) -> requests.Response:
        with self._active_lock:
            self._active.add(ev)
        try:
            ev.wait()
        finally:
            with self._active_lock:
                self._active.discard(ev)
        if ev.cancelled and not fut.done():  # type: ignore[attr-defined]
            raise CancelledError(f"{what} was cancelled")
        try:
            return fut.result()
        except requests.exceptions.SSLError as e:
            raise ServerUnavailableError(
                f"{what}: the TLS certificate of {self.url} was not accepted ({short_error(e)}); pass verify=<CA or "
                "certificate file> for a self-signed certificate"
            ) from None
        except requests.Timeout:
            raise ServerUnavailableError(f"{what}: the server at {self.url} did not answer in time") from None
        except requests.ConnectionError as e:
            raise ServerUnavailableError(f"{what}: cannot reach the server at {self.url} ({short_error(e)})") from None
        except requests.RequestException as e:
            raise ServerUnavailableError(f"{what}: request failed ({short_error(e)})") from None

    def _raise_for(self, r: requests.Response, what: str) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
            detail, code = str(body.get("detail")), str(body.get("code", ""))
        except (ValueError, AttributeError):
            raise ServerUnavailableError(
                f"{what}: the server answered HTTP {r.status_code} without a claraseg message: {r.text[:200]!r}"
            ) from None
        if r.status_code == 440:
            code = SessionExpiredError.code
        cls = self._errors.get(code)
        err = cls(detail) if cls is not None else ClarasegError(detail)
        if cls is None:
            err.http_status = r.status_code
        if isinstance(err, ServerBusyError):
            err.retry_after = float(r.headers.get("Retry-After", "1") or 1)  # type: ignore[attr-defined]
        raise err

    def _call(self, method: str, path: str, what: str, *, timeout: float | None = None,
              on_cancel: Callable[[Future], None] | None = None, **kwargs: Any) -> requests.Response:
        """One request, with busy-retries, error mapping and cancellation."""
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(4):
            body = kwargs.get("data")
            if isinstance(body, Body):
                body._i = body._off = 0
            fut, ev = self._submit(method, path, timeout, **kwargs)
            try:
                r = self._wait(fut, ev, what)
            except CancelledError:
                if on_cancel is not None:
                    on_cancel(fut)
                raise
            try:
                self._raise_for(r, what)
                return r
            except ServerBusyError as e:
                if attempt == 3:
                    raise
                pause = threading.Event()
                with self._active_lock:
                    self._active.add(pause)
                pause.cancelled = False  # type: ignore[attr-defined]
                pause.wait(min(5.0, getattr(e, "retry_after", 1.0)))
                with self._active_lock:
                    self._active.discard(pause)
                if pause.cancelled:  # type: ignore[attr-defined]
                    raise CancelledError(f"{what} was cancelled") from None
        raise AssertionError("unreachable")

    def _close_http(self) -> None:
        self._closed = True
        self._http.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def short_error(e: Exception) -> str:
    s = str(e)
    return s if len(s) < 200 else s[:200] + "..."


def nifti_bytes(image: Image) -> bytes:
    with tempfile.TemporaryDirectory(prefix="claraseg-client-") as tmp:
        p = write_image(image, os.path.join(tmp, "x.nii.gz"))
        return p.read_bytes()


def image_from_bytes(data: bytes, *, label: bool = False) -> Image:
    with tempfile.TemporaryDirectory(prefix="claraseg-client-") as tmp:
        p = os.path.join(tmp, "x.nii.gz")
        with open(p, "wb") as f:
            f.write(data)
        return read_image(p, label=label)
