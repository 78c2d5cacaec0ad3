"""`RemoteSession`: a session on the server (:class:`~claraseg.backend.Session` over HTTP). A session that
expired on the server is re-opened transparently: the image is uploaded again and the session's
interactions are replayed, once per call."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import requests

from claraseg.backend import Point, check_object_state
from claraseg.errors import (
    InvalidPointsError,
    ServerUnavailableError,
    SessionExpiredError,
    SessionNotFoundError,
)
from claraseg.io import Image, MaskDelta

from .wire import MASKDELTA_MEDIA_TYPE

if TYPE_CHECKING:
    from .remote import RemoteBackend

#: Longest query string set_mask sends (its points and clicks): the server's HTTP parser always takes a
#: request head of 16 KB.
MAX_STATE_QUERY = 15000


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
