"""`RemoteBackend`: the HTTP client that implements :class:`~claraseg.backend.Backend` against ``claraseg serve``.

Sessions (:class:`~claraseg.client.session.RemoteSession`), the datastore and the server's info over the
plumbing of :class:`~claraseg.client.transport.HttpClient` (timeouts, retries, cancellation, errors).
"""

from __future__ import annotations

import gzip
import json
import weakref
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import claraseg
from claraseg.backend import API_VERSION, ModelDescriptor
from claraseg.errors import ApiVersionError, ClarasegError, ServerUnavailableError
from claraseg.io import Image, LabelInfo

from .session import MAX_STATE_QUERY, RemoteSession
from .transport import Body, HttpClient, image_from_bytes, is_loopback_host, nifti_bytes
from .wire import VOLUME_MEDIA_TYPE, encode_volume_parts


class RemoteBackend(HttpClient):
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
        super().__init__(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}", token, timeout=timeout,
                         verify=verify, max_connections=max_connections,
                         user_agent=f"claraseg-client/{claraseg.__version__} (api {API_VERSION})")
        self.infer_timeout, self.upload_timeout = float(infer_timeout), float(upload_timeout)
        self.compress = (not is_loopback_host(parts.hostname)) if compress is None else bool(compress)
        self._sessions: weakref.WeakSet[RemoteSession] = weakref.WeakSet()
        #: idle seconds after which the server expires new sessions (0: the server's default).
        self.session_expiry = 0
        self.server_info: dict[str, Any] = self.info()
        if check_version:
            self._check_version(self.server_info)

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
        self._close_http()

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
            data = Body([head, voxels])
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
                          params={"image": image_id}, files={"file": ("image.nii.gz", nifti_bytes(image))},
                          data={"params": json.dumps({"author": author})}).json()

    def save_label(self, image_id: str, label: Image, *, tag: str = "final", author: str = "",
                   label_names: dict[int, str] | None = None) -> dict[str, Any]:
        """Save a label for a datastore image as a new version; returns the version's record."""
        names = label_names if label_names is not None else {k: v.name for k, v in label.labels.items()}
        params = {"author": author, "label_names": {str(k): v for k, v in names.items()}}
        return self._call("PUT", "/datastore/label", "saving a label", timeout=self.upload_timeout,
                          params={"image": image_id, "tag": tag}, files={"label": ("label.nii.gz", nifti_bytes(label))},
                          data={"params": json.dumps(params)}).json()

    def download_label(self, image_id: str, *, tag: str = "final", version: int | None = None) -> Image:
        """A label version (the latest by default) as an :class:`Image`."""
        params: dict[str, Any] = {"label": image_id, "tag": tag}
        if version is not None:
            params["version"] = version
        r = self._call("GET", "/datastore/label", "downloading a label", timeout=self.upload_timeout, params=params)
        image = image_from_bytes(r.content, label=True)
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
        return image_from_bytes(r.content)


__all__ = ["MAX_STATE_QUERY", "RemoteBackend", "RemoteSession", "is_loopback_host"]
