"""The annotation controller: one backend, one session per image, per-object masks, silent re-open.

Runs on the worker thread (never touches MRML or Qt). The Slicer widget and the Segment Editor effect
hand it voxel indices and claraseg images and get :class:`~claraseg.io.MaskDelta` results back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from claraseg.backend import API_VERSION, MODEL_KINDS, Backend, ModelDescriptor, Session
from claraseg.errors import (
    ApiVersionError,
    ClarasegError,
    InvalidPointsError,
    SessionExpiredError,
    SessionNotFoundError,
    UnknownModelError,
)
from claraseg.io import Image, MaskDelta

from . import install
from .geometry import check_same_slice, extreme_point_count_message
from .prompts import PromptRecord
from .segments import ObjectMask
from .settings import BackendSettings

log = logging.getLogger(__name__)

#: Human names of the model kinds, in the order the model list shows them.
KIND_TITLES = {
    "deepgrow2d": "DeepGrow 2D (clicks, one slice)",
    "deepgrow3d": "DeepGrow 3D (clicks)",
    "dextr3d": "DEXTR3D (extreme points)",
    "segmentation": "Automatic segmentation",
}
#: Which tool each kind serves.
CLICK_KINDS = ("deepgrow3d", "deepgrow2d")  # first = the default kind
EXTREME_KINDS = ("dextr3d",)
AUTO_KINDS = ("segmentation",)


#: The parameter-node field holding each tool's model, and the kinds it accepts.
TOOL_FIELDS = (("clickModel", CLICK_KINDS), ("extremeModel", EXTREME_KINDS), ("autoModel", AUTO_KINDS))
#: Status line colours by level.
STATUS_COLORS = {"error": "#c0392b", "warning": "#b9770e", "ok": "#1e8449"}


def status_style(level: str) -> str:
    """The style sheet of the status line for a message level ('' for plain info)."""
    color = STATUS_COLORS.get(level)
    return f"color: {color}" if color else ""


class NotConnectedError(ClarasegError):
    """An operation needs a backend but none is connected."""

    code = "not_connected"


class LocalModeUnavailableError(ClarasegError):
    """The local engine cannot be imported (PyTorch or MONAI missing in Slicer's Python)."""

    code = "local_unavailable"


@dataclass
class ConnectionInfo:
    """What the backend panel shows after connecting."""

    mode: str
    url: str = ""
    api_version: str = API_VERSION
    server_version: str = ""
    models: list[ModelDescriptor] = field(default_factory=list)

    @property
    def summary(self) -> str:
        where = "in Slicer" if self.mode == "local" else self.url
        ver = f", server {self.server_version}" if self.server_version else ""
        return f"Connected ({where}): API {self.api_version}{ver}, {len(self.models)} model(s)"


def group_models(models: Sequence[ModelDescriptor]) -> dict[str, list[ModelDescriptor]]:
    """Models grouped by kind, kinds in :data:`MODEL_KINDS` order (unknown kinds last), names sorted."""
    groups: dict[str, list[ModelDescriptor]] = {}
    order = list(MODEL_KINDS) + sorted({m.kind for m in models} - set(MODEL_KINDS))
    for kind in order:
        ms = sorted((m for m in models if m.kind == kind), key=lambda m: m.name)
        if ms:
            groups[kind] = ms
    return groups


def default_model(models: Sequence[ModelDescriptor], kinds: Sequence[str]) -> ModelDescriptor | None:
    """The model a tool starts with: the first of ``kinds`` present, preferring unversioned defaults
    (``deepgrow3d`` over ``deepgrow3d@v2``)."""
    for kind in kinds:
        ms = [m for m in models if m.kind == kind]
        if ms:
            return sorted(ms, key=lambda m: ("@" in m.name, m.name))[0]
    return None


def choose_model(models: Sequence[ModelDescriptor], kinds: Sequence[str], current: str) -> tuple[list[str], str]:
    """(names a tool can use, the one it uses): ``current`` when still offered, else the default."""
    names = [m.name for m in models if m.kind in kinds]
    if current in names:
        return names, current
    default = default_model(models, kinds)
    return names, default.name if default else ""


def points_text(n: int) -> str:
    return f"{n} of at least 6 points placed"


def expand_versions(models: Sequence[ModelDescriptor]) -> list[ModelDescriptor]:
    """Every selectable model: backends list the newest version of each model and name the older ones in
    ``extra['versions']`` (``deepgrow3d@v1``...); fine-tuning publishes versions, the old stay selectable."""
    out = list(models)
    names = {m.name for m in out}
    for m in models:
        current = f"{m.name}@v{m.extra.get('revision')}"
        for v in m.extra.get("versions", []) or []:
            if isinstance(v, str) and v not in names and v != current and v.split("@")[0] == m.name:
                out.append(dataclasses.replace(m, name=v, extra={**m.extra, "older_version_of": m.name}))
                names.add(v)
    return out


def enrich_from_registry(backend: Any, models: Sequence[ModelDescriptor]) -> None:
    """Local backends know each model's bundle folder and fine-tuning record: add them to ``extra``
    (``bundle``: where ClaraTrainModule finds the model to adapt; ``fine_tune``: Dice before/after)."""
    registry = getattr(backend, "registry", None)
    if registry is None or not hasattr(registry, "get"):
        return
    for m in models:
        try:
            bundle = registry.get(m.name)
        except ClarasegError:
            continue
        m.extra["bundle"] = str(bundle.path)
        record = (getattr(bundle, "settings", None) or {}).get("fine_tune")
        if isinstance(record, dict):
            m.extra["fine_tune"] = record


def model_scores(model: ModelDescriptor) -> str:
    """``Dice 0.712 -> 0.804`` for a fine-tuned model (from its record, or its changelog line)."""
    record = model.extra.get("fine_tune")
    before = after = None
    if isinstance(record, dict):
        before, after = record.get("baseline_dice"), record.get("best_dice")
    else:
        m = re.search(r"validation Dice ([0-9.]+|None) -> ([0-9.]+)", model.description or "")
        if m:
            before = None if m.group(1) == "None" else float(m.group(1))
            after = float(m.group(2))
    if after is None:
        return ""
    return f"Dice {before:.3f} -> {after:.3f}" if before is not None else f"Dice {after:.3f}"


def make_backend(settings: BackendSettings) -> Backend:
    """Build the backend the settings ask for. Imports are lazy: the remote mode needs no torch."""
    settings.validate()
    if settings.mode == "remote":
        from claraseg.client import RemoteBackend

        return RemoteBackend(settings.url, settings.token or None)
    try:
        from claraseg.engine import LocalBackend
        from claraseg.models.registry import ModelRegistry, default_dirs
    except ImportError as e:  # torch or monai missing in Slicer's Python
        raise LocalModeUnavailableError(
            f"Local mode needs PyTorch and MONAI in Slicer's Python ({e}). Click 'Install PyTorch and MONAI' "
            "in the Backend section, or switch to Remote and connect to an annotation server."
        ) from None
    # The packaged default models plus the user's folder, where fine-tuned versions are published.
    os.makedirs(settings.models_dir, exist_ok=True)
    dirs = [d for d in default_dirs() if os.path.abspath(d) != os.path.abspath(settings.models_dir)]
    registry = ModelRegistry([*dirs, settings.models_dir], publish_dir=settings.models_dir)
    return LocalBackend(registry, device=settings.device)


def _remote_versions(backend: Any) -> tuple[str, str]:
    """(api_version, server_version) a backend reports, if it says."""
    info = getattr(backend, "server_info", None) or getattr(backend, "info", None)
    if callable(info):
        info = info()
    if isinstance(info, dict):
        return str(info.get("api_version", API_VERSION)), str(info.get("version", info.get("server_version", "")))
    return str(getattr(backend, "api_version", API_VERSION)), str(getattr(backend, "server_version", ""))


def check_api_version(version: str) -> None:
    """Raise :class:`ApiVersionError` when the major version differs from ours."""
    if str(version).split(".")[0] != API_VERSION.split(".")[0]:
        raise ApiVersionError(
            f"the server speaks API {version}, this Slicer extension speaks {API_VERSION}; "
            "update the extension or the server so that their major versions match"
        )


class AnnotationController:
    """See the module docstring. Not thread-safe: call it from one thread (the task queue's)."""

    def __init__(self, backend_factory: Callable[[BackendSettings], Backend] = make_backend) -> None:
        self._factory = backend_factory
        self.backend: Backend | None = None
        self.info: ConnectionInfo | None = None
        self._session: Session | None = None
        self._image: Image | None = None
        self._image_key: Hashable | None = None
        self.objects: dict[str, ObjectMask] = {}
        #: Each object's extreme points and clicks as the session holds them (handed back on re-open).
        self.prompts: dict[str, PromptRecord] = {}
        self.reopened = 0

    # ----- backend ---------------------------------------------------------------------------------
    def connect(self, settings: BackendSettings) -> ConnectionInfo:
        """(Re)connect; closes the previous backend and session."""
        self.disconnect()
        backend = self._factory(settings)
        try:
            api, server = _remote_versions(backend) if settings.mode == "remote" else (API_VERSION, "")
            check_api_version(api)
            models = self._list_models(backend)
        except BaseException:
            backend.close()
            raise
        self.backend = backend
        self.info = ConnectionInfo(settings.mode, settings.url if settings.mode == "remote" else "", api, server,
                                   models)
        return self.info

    def disconnect(self) -> None:
        self.close_session()
        if self.backend is not None:
            try:
                self.backend.close()
            finally:
                self.backend = None
                self.info = None

    @property
    def connected(self) -> bool:
        return self.backend is not None

    @staticmethod
    def _list_models(backend: Backend) -> list[ModelDescriptor]:
        models = expand_versions(list(backend.models()))
        enrich_from_registry(backend, models)
        return models

    def refresh_models(self) -> list[ModelDescriptor]:
        """Ask the backend again (e.g. after a fine-tune job published a model)."""
        backend = self._require_backend()
        registry = getattr(backend, "registry", None)
        if registry is not None and hasattr(registry, "reload"):
            registry.reload()  # a local job published into the folders this backend serves
        models = self._list_models(backend)
        if self.info is not None:
            self.info.models = models
        return models

    def model(self, name: str) -> ModelDescriptor:
        for m in self.info.models if self.info else []:
            if m.name == name:
                return m
        raise UnknownModelError(f"model '{name}' is not offered by the backend; pick one from the model list "
                                "(click Refresh if it was just published)")

    # ----- session ---------------------------------------------------------------------------------
    def needs_image(self, key: Hashable) -> bool:
        """True when the image identified by ``key`` (volume id + modification time) has no open session:
        the caller then exports the voxels (on the GUI thread) and calls :meth:`open`."""
        return self._session is None or key != self._image_key

    def open(self, image: Image, key: Hashable) -> Session:
        """Open a session for a new image (closing the previous one)."""
        backend = self._require_backend()
        self.close_session()
        self._session = backend.open_session(image)
        self._image, self._image_key = image, key
        self.objects, self.prompts = {}, {}
        return self._session

    def close_session(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except ClarasegError as e:  # an expired session is already gone: nothing to do
                log.info("closing session: %s", e)
            finally:
                self._session = None
                self._image = self._image_key = None
                self.objects, self.prompts = {}, {}

    def _require_backend(self) -> Backend:
        if self.backend is None:
            raise NotConnectedError("not connected to a backend: choose Local or Remote and click Connect")
        return self.backend

    def _call(self, op: Callable[[Session], Any]) -> Any:
        """Run ``op(session)``; an expired or vanished session is re-opened with the same image, the
        objects handed back (mask, extreme points and clicks, so the next click takes the same route and
        sees the earlier clicks), and ``op`` retried once, without bothering the user."""
        if self._session is None or self._image is None:
            raise NotConnectedError("no image is open: select a volume first")
        try:
            return op(self._session)
        except (SessionExpiredError, SessionNotFoundError) as e:
            log.info("session lost (%s); re-opening", e)
        backend = self._require_backend()
        self._session = backend.open_session(self._image)
        self.reopened += 1
        for oid in sorted(set(self.objects) | set(self.prompts)):
            mask = self.objects.get(oid)
            record = self.prompts.setdefault(oid, PromptRecord())
            hand_back = (mask is not None and not mask.delta.is_empty) or not record.current.empty
            kept = True
            if hand_back:
                delta = mask.delta if mask is not None else MaskDelta.empty(self._image.size_ijk)
                try:
                    self._session.set_mask(oid, delta, **record.current.set_mask_args())
                except InvalidPointsError as e:  # e.g. too many clicks for one request: the mask alone
                    log.warning("object %s handed back without its points and clicks: %s", oid, e)
                    self._session.set_mask(oid, delta)
                    kept = False
            record.reopened(hand_back, kept)
        return op(self._session)

    def _record(self, object_id: str) -> PromptRecord:
        return self.prompts.setdefault(object_id, PromptRecord())

    def _track(self, object_id: str, delta: MaskDelta) -> MaskDelta:
        self.objects.setdefault(object_id, ObjectMask(delta.image_size)).apply(delta)
        return delta

    # ----- interactions ----------------------------------------------------------------------------
    def click(self, object_id: str, model: str, foreground: Sequence[Sequence[int]] = (),
              background: Sequence[Sequence[int]] = (), slice_axis: int | None = None) -> MaskDelta:
        """Foreground/background clicks (voxel ``[i, j, k]``) for one object."""
        desc = self.model(model)
        fg = np.asarray(foreground, dtype=np.int64).reshape(-1, 3)
        bg = np.asarray(background, dtype=np.int64).reshape(-1, 3)
        if len(fg) + len(bg) == 0:
            raise InvalidPointsError("place a foreground or background point first")
        if desc.kind not in CLICK_KINDS:
            raise InvalidPointsError(f"'{model}' is a {desc.kind} model; clicks need a DeepGrow model")
        if desc.kind == "deepgrow2d":
            if slice_axis is None:
                raise InvalidPointsError("a 2D model needs the slice view the click was made in; click in a slice view")
            check_same_slice(np.concatenate([fg, bg]), slice_axis)
        else:
            slice_axis = None
        delta = self._call(lambda s: s.click(model, fg.tolist(), bg.tolist(), object_id, slice_axis))
        self._record(object_id).click(fg.tolist(), bg.tolist())  # 2D clicks too, as the engine keeps them
        return self._track(object_id, delta)

    def extreme_points(self, object_id: str, model: str, points: Sequence[Sequence[int]]) -> MaskDelta:
        desc = self.model(model)
        if desc.kind not in EXTREME_KINDS:
            raise InvalidPointsError(f"'{model}' is a {desc.kind} model; extreme points need a DEXTR3D model")
        pts = np.asarray(points, dtype=np.int64).reshape(-1, 3)
        msg = extreme_point_count_message(len(pts), max(6, desc.min_points))
        if msg:
            raise InvalidPointsError(msg[0].upper() + msg[1:])
        delta = self._call(lambda s: s.extreme_points(model, pts.tolist(), object_id))
        self._record(object_id).extreme_points(pts.tolist())
        return self._track(object_id, delta)

    def auto_segment(self, model: str) -> MaskDelta:
        desc = self.model(model)
        if desc.kind not in AUTO_KINDS:
            raise InvalidPointsError(f"'{model}' is a {desc.kind} model; auto-segmentation needs a segmentation model")
        missing = install.missing_for("auto-segmentation") if self.info is not None and self.info.mode == "local" else []
        if missing:
            raise LocalModeUnavailableError(
                f"auto-segmentation in Local mode needs {', '.join(missing)} (MONAI's orientation transform reads "
                "the image with it). Click 'Install PyTorch and MONAI' in the Backend section, or use Remote mode.")
        delta = self._call(lambda s: s.auto_segment(model))
        if not delta.labels:
            delta = MaskDelta(delta.start, delta.stop, delta.mask, delta.image_size, dict(desc.labels))
        return delta

    def set_mask(self, object_id: str, mask: MaskDelta) -> None:
        """Hand a painted segment to the backend before refining it by clicks."""
        self._call(lambda s: s.set_mask(object_id, mask))
        obj = ObjectMask(mask.image_size)
        obj.apply(mask)
        self.objects[object_id] = obj
        self._record(object_id).painted()

    def undo(self, object_id: str) -> MaskDelta:
        delta = self._call(lambda s: s.undo(object_id))
        self._record(object_id).undo()
        return self._track(object_id, delta)

    def clear(self, object_id: str) -> MaskDelta:
        delta = self._call(lambda s: s.clear(object_id))
        self._record(object_id).clear()
        return self._track(object_id, delta)

    def close(self) -> None:
        self.disconnect()


def _import_error_in(error: BaseException) -> BaseException | None:
    """The ImportError behind an error, if any (MONAI wraps a transform's missing package in a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImportError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_message(error: BaseException, context: str = "") -> str:
    """The one line the status area shows for a failure: what happened and what to do, no traceback."""
    prefix = f"{context}: " if context else ""
    if isinstance(error, ClarasegError):
        return prefix + str(error)
    name = type(error).__name__
    module = type(error).__module__ or ""
    missing = _import_error_in(error)
    if missing is not None:
        return (prefix + f"a Python package is missing ({missing}). Install it with the 'Install' button in the "
                "Backend section, or use Remote mode.")
    if isinstance(error, (ConnectionError, TimeoutError)) or module.startswith(("requests", "urllib3", "httpx")):
        return (prefix + f"cannot reach the annotation server ({name}: {error}). Check the address and that "
                "`claraseg serve` is running, then click Connect.")
    if isinstance(error, MemoryError):
        return prefix + "out of memory. Crop the volume (Crop Volume module) or use a server with more memory."
    return (prefix + f"unexpected error ({name}: {error}). Details are in the Python console; please report them "
            "with the steps that led here.")
