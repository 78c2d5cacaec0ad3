"""`RemoteBackend`: the HTTP client that implements :class:`~claraseg.backend.Backend` against ``claraseg serve``.

One ``requests.Session`` (a keep-alive connection pool) per backend; every call has a timeout; GETs and
DELETEs are retried on connection errors and 502/504, other calls only when the connection failed before
anything was sent, or when the server said it was busy (503: nothing was run). Calls are thread-safe and
cancellable: :meth:`RemoteBackend.cancel` makes every call in flight raise
:class:`~claraseg.errors.CancelledError` at once. A session that expired on the server is re-opened
transparently: the image is uploaded again and the session's interactions are replayed, once per call.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import claraseg
from claraseg.backend import API_VERSION, ModelDescriptor, Point, check_object_state
from claraseg.errors import (
    ApiVersionError,
    CancelledError,
    ClarasegError,
    InvalidPointsError,
    ServerBusyError,
    ServerUnavailableError,
    SessionExpiredError,
    SessionNotFoundError,
)
from claraseg.io import Image, LabelInfo, MaskDelta, read_image, write_image

from .wire import MASKDELTA_MEDIA_TYPE, VOLUME_MEDIA_TYPE, encode_volume_parts

#: Longest query string set_mask sends (its points and clicks): the server's HTTP parser always takes a
#: request head of 16 KB.
MAX_STATE_QUERY = 15000


def _error_classes() -> dict[str, type[ClarasegError]]:
    out: dict[str, type[ClarasegError]] = {}
    todo = [ClarasegError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo += cls.__subclasses__()
    return out


class _Body:
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


class RemoteBackend:
    """A :class:`~claraseg.backend.Backend` served over HTTP by ``claraseg serve``.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000``.
        token: the server's bearer token, if it has one.
        timeout: seconds allowed for connecting and for small calls.
        infer_timeout: seconds allowed for one interaction (inference).
        upload_timeout: seconds allowed for opening a session (uploading an image).
        compress: gzip uploads; None = only when the server is not on this machine.
        verify: TLS certificate check (``True``, ``False`` or a CA bundle path).
        check_version: compare API versions on connect (:class:`~claraseg.errors.ApiVersionError` if they differ).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 10.0, infer_timeout: float = 300.0,
                 upload_timeout: float = 600.0, compress: bool | None = None, verify: bool | str = True,
                 check_version: bool = True, max_connections: int = 8) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerUnavailableError(f"{url!r} is not a server address; use e.g. http://127.0.0.1:8000")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.timeout, self.infer_timeout, self.upload_timeout = float(timeout), float(infer_timeout), float(upload_timeout)
        self.compress = (not is_loopback_host(parts.hostname)) if compress is None else bool(compress)
        self._http = requests.Session()
        retry = Retry(total=3, connect=3, read=2, status=2, other=0, backoff_factor=0.2, raise_on_status=False,
                      allowed_methods=frozenset({"GET", "HEAD", "DELETE"}), status_forcelist=(502, 504),
                      respect_retry_after_header=True)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=retry)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        self._http.verify = self._verify = verify
        self._http.headers["User-Agent"] = f"claraseg-client/{claraseg.__version__} (api {API_VERSION})"
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="claraseg-http")
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()
        self._sessions: weakref.WeakSet[RemoteSession] = weakref.WeakSet()
        self._errors = _error_classes()
        self._closed = False
        #: idle seconds after which the server expires new sessions (0: the server's default).
        self.session_expiry = 0
        self.server_info: dict[str, Any] = self.info()
        if check_version:
            self._check_version(self.server_info)

    # ----- plumbing -------------------------------------------------------------------------------
    def _check_version(self, info: dict[str, Any]) -> None:
        theirs = info.get("api_version")
        if not theirs:
            raise ApiVersionError(
                f"{self.url} answered /info/ without an api_version: it is not a claraseg server (a MONAI Label "
                f"server?). This client speaks claraseg API {API_VERSION}."
            )
        if str(theirs).split(".")[0] != API_VERSION.split(".")[0]:
            raise ApiVersionError(
                f"the server at {self.url} speaks API {theirs}, this client speaks API {API_VERSION}; install the "
                f"same claraseg version on both sides (server {info.get('version', '?')}, client {claraseg.__version__})"
            )

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
                f"{what}: the TLS certificate of {self.url} was not accepted ({_short(e)}); pass verify=<CA or "
                "certificate file> for a self-signed certificate"
            ) from None
        except requests.Timeout:
            raise ServerUnavailableError(f"{what}: the server at {self.url} did not answer in time") from None
        except requests.ConnectionError as e:
            raise ServerUnavailableError(f"{what}: cannot reach the server at {self.url} ({_short(e)})") from None
        except requests.RequestException as e:
            raise ServerUnavailableError(f"{what}: request failed ({_short(e)})") from None

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
            if isinstance(body, _Body):
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

    # ----- Backend --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The server's ``/info/``: versions, models, devices, datastore summary."""
        return self._call("GET", "/info/", "reading server info").json()

    def models(self) -> list[ModelDescriptor]:
        self.server_info = self.info()
        return [ModelDescriptor.from_dict(m["descriptor"]) for m in self.server_info.get("models", {}).values()
                if isinstance(m, dict) and "descriptor" in m]

    def open_session(self, image: Image) -> RemoteSession:
        """Upload the image once and open a session on it."""
        s = RemoteSession(self, image)
        self._sessions.add(s)
        return s

    def close(self) -> None:
        """Close this backend's sessions on the server and the connections."""
        if self._closed:
            return
        for s in list(self._sessions):
            try:
                s.close()
            except ClarasegError:
                pass
        self._closed = True
        self._http.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- uploads ---------------------------------------------------------------------------------
    def _upload_session(self, image: Image) -> dict[str, Any]:
        head, voxels = encode_volume_parts(image)
        headers = {"Content-Type": VOLUME_MEDIA_TYPE}
        if self.compress:
            data: Any = gzip.compress(head + bytes(voxels), compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        else:
            data = _Body([head, voxels])
        params = {"expiry": int(self.session_expiry)} if self.session_expiry else None
        return self._call("PUT", "/session/", "opening a session", timeout=self.upload_timeout,
                          data=data, headers=headers, params=params, on_cancel=self._discard_session).json()

    def _discard_session(self, fut: Future) -> None:
        """A cancelled upload may still open a session on the server: close it when it does."""
        def done(f: Future) -> None:
            try:
                r = f.result()
                if r.status_code == 200:
                    self._executor.submit(self._http.delete, f"{self.url}/session/{r.json()['session_id']}",
                                          verify=self._verify, timeout=self.timeout)
            except Exception:  # nothing was opened, or the backend is closing: nothing to clean up
                pass

        fut.add_done_callback(done)

    # ----- datastore ---------------------------------------------------------------------------------
    def datastore(self, full: bool = True) -> dict[str, Any]:
        """The datastore listing (``full``) or its summary."""
        return self._call("GET", "/datastore/", "listing the datastore", params={"output": "all" if full else "status"}).json()

    def upload_image(self, image: Image, image_id: str, *, author: str = "") -> dict[str, Any]:
        """Store an image in the server's datastore under ``image_id``."""
        return self._call("PUT", "/datastore/image", "uploading an image", timeout=self.upload_timeout,
                          params={"image": image_id}, files={"file": ("image.nii.gz", _nifti_bytes(image))},
                          data={"params": json.dumps({"author": author})}).json()

    def save_label(self, image_id: str, label: Image, *, tag: str = "final", author: str = "",
                   label_names: dict[int, str] | None = None) -> dict[str, Any]:
        """Save a label for a datastore image as a new version; returns the version's record."""
        names = label_names if label_names is not None else {k: v.name for k, v in label.labels.items()}
        params = {"author": author, "label_names": {str(k): v for k, v in names.items()}}
        return self._call("PUT", "/datastore/label", "saving a label", timeout=self.upload_timeout,
                          params={"image": image_id, "tag": tag}, files={"label": ("label.nii.gz", _nifti_bytes(label))},
                          data={"params": json.dumps(params)}).json()

    def download_label(self, image_id: str, *, tag: str = "final", version: int | None = None) -> Image:
        """A label version (the latest by default) as an :class:`Image`."""
        params: dict[str, Any] = {"label": image_id, "tag": tag}
        if version is not None:
            params["version"] = version
        r = self._call("GET", "/datastore/label", "downloading a label", timeout=self.upload_timeout, params=params)
        image = _image_from_bytes(r.content, label=True)
        try:
            if "X-Label-Names" in r.headers:
                names = json.loads(r.headers["X-Label-Names"])
            else:  # a long list of names travels in the version's record, not in a header
                params["version"] = int(r.headers.get("X-Label-Version", version or 0)) or version
                names = self._call("GET", "/datastore/label/info", "reading label names",
                                   params={k: v for k, v in params.items() if v is not None}).json()["label_names"]
            image.labels = {int(k): LabelInfo(str(v)) for k, v in names.items()}
        except (ValueError, AttributeError, KeyError, TypeError):
            pass
        return image

    def download_image(self, image_id: str) -> Image:
        r = self._call("GET", "/datastore/image", "downloading an image", timeout=self.upload_timeout,
                       params={"image": image_id})
        return _image_from_bytes(r.content)


class RemoteSession:
    """A session on the server; see :class:`claraseg.backend.Session` for the methods' meaning."""

    def __init__(self, backend: RemoteBackend, image: Image) -> None:
        self._backend = backend
        self._image = image
        self._lock = threading.RLock()
        self._log: list[tuple[str, Any]] = []
        self._pending: tuple[Future, str, dict] | None = None
        self._closed = False
        self.reopened = 0
        self._id = self._backend._upload_session(image)["session_id"]

    @property
    def id(self) -> str:
        return self._id

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self._image.size_ijk

    # ----- plumbing --------------------------------------------------------------------------------
    def _post(self, op: str, payload: Any, on_cancel=None) -> requests.Response:
        if op == "set_mask":
            object_id, body, state = payload
            # The mask is the binary body; the points and clicks ride along as JSON query parameters.
            params = {"object_id": object_id, **{k: json.dumps(v, separators=(",", ":")) for k, v in state.items()}}
            return self._backend._call("POST", f"/session/{self._id}/set_mask", "set_mask",
                                       params=params, data=body, headers={"Content-Type": MASKDELTA_MEDIA_TYPE})
        return self._backend._call("POST", f"/session/{self._id}/{op}", op.replace("_", " "),
                                   timeout=self._backend.infer_timeout, json=payload, on_cancel=on_cancel)

    def _reopen(self) -> None:
        """Upload the image again and replay every interaction, so the new session is in the same state."""
        self._id = self._backend._upload_session(self._image)["session_id"]
        self.reopened += 1
        for op, payload in self._log:
            self._post(op, payload)

    def _settle_pending(self) -> None:
        """A cancelled click/extreme-points call may still have run on the server: undo it there."""
        if self._pending is None:
            return
        fut, op, payload = self._pending
        self._pending = None
        try:
            r = fut.result(timeout=self._backend.infer_timeout)
        except Exception:  # the cancelled request failed: nothing changed on the server
            return
        if r.status_code == 200:
            self._log.append((op, payload))
            self._interact("undo", {"object_id": payload.get("object_id", "1")})

    def _interact(self, op: str, payload: Any) -> MaskDelta | None:
        if self._closed:
            raise SessionNotFoundError("this session was closed; open a new one")
        with self._lock:
            self._settle_pending()
            on_cancel = None
            if op in ("click", "extreme_points"):
                def on_cancel(fut: Future) -> None:
                    self._pending = (fut, op, payload)
            try:
                r = self._post(op, payload, on_cancel)
            except (SessionExpiredError, SessionNotFoundError):  # expired, or the server restarted
                self._reopen()
                r = self._post(op, payload, on_cancel)
            self._log.append((op, payload))
            if op == "set_mask":
                return None
            if r.headers.get("content-type", "").split(";")[0] != MASKDELTA_MEDIA_TYPE:
                raise ServerUnavailableError(f"{op}: the server answered {r.headers.get('content-type')!r}, "
                                             "not a mask delta")
            delta = MaskDelta.decode(r.content)
            self.last_compute_ms = float(r.headers.get("X-Compute-Ms", "nan"))
            self.last_bytes = len(r.content)
            return delta

    # ----- Session ---------------------------------------------------------------------------------
    def click(self, model: str, foreground: Sequence[Point] = (), background: Sequence[Point] = (),
              object_id: str = "1", slice_axis: int | None = None) -> MaskDelta:
        return self._interact("click", {"model": model, "foreground": _pts(foreground), "background": _pts(background),
                                        "object_id": str(object_id), "slice_axis": slice_axis})

    def extreme_points(self, model: str, points: Sequence[Point], object_id: str = "1") -> MaskDelta:
        return self._interact("extreme_points", {"model": model, "points": _pts(points), "object_id": str(object_id)})

    def auto_segment(self, model: str) -> MaskDelta:
        return self._interact("auto_segment", {"model": model})

    def set_mask(self, object_id: str, mask: MaskDelta, points: Sequence[Point] = (),
                 foreground: Sequence[Point] = (), background: Sequence[Point] = ()) -> None:
        pts, fg, bg = check_object_state(self.image_size, points, foreground, background)
        state = {k: v for k, v in (("points", pts), ("foreground", fg), ("background", bg)) if v}
        query = len(urlencode({k: json.dumps(v, separators=(",", ":")) for k, v in state.items()}))
        if query > MAX_STATE_QUERY:
            raise InvalidPointsError(
                f"{len(pts) + len(fg) + len(bg)} points and clicks are too many to hand over with set_mask "
                f"({query} characters of query string; at most {MAX_STATE_QUERY}, some 600 points)")
        self._interact("set_mask", (str(object_id), mask.encode(), state))

    def undo(self, object_id: str = "1") -> MaskDelta:
        return self._interact("undo", {"object_id": str(object_id)})

    def clear(self, object_id: str = "1") -> MaskDelta:
        return self._interact("clear", {"object_id": str(object_id)})

    def info(self) -> dict[str, Any]:
        """The server's record of this session."""
        return self._backend._call("GET", f"/session/{self._id}", "reading the session").json()

    def close(self) -> None:
        """Close the session on the server (an expired or unknown session is already closed)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._backend._call("DELETE", f"/session/{self._id}", "closing the session")
        except (SessionExpiredError, SessionNotFoundError):
            pass

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pts(points: Sequence[Point]) -> list[list[int]]:
    out = []
    for p in points:
        q = [int(round(float(v))) for v in p]
        out.append(q)
    return out


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _short(e: Exception) -> str:
    s = str(e)
    return s if len(s) < 200 else s[:200] + "..."


def _nifti_bytes(image: Image) -> bytes:
    with tempfile.TemporaryDirectory(prefix="claraseg-client-") as tmp:
        p = write_image(image, os.path.join(tmp, "x.nii.gz"))
        return p.read_bytes()


def _image_from_bytes(data: bytes, *, label: bool = False) -> Image:
    with tempfile.TemporaryDirectory(prefix="claraseg-client-") as tmp:
        p = os.path.join(tmp, "x.nii.gz")
        with open(p, "wb") as f:
            f.write(data)
        return read_image(p, label=label)


__all__ = ["RemoteBackend", "RemoteSession"]
