"""``LocalSession``: one image opened on the in-process engine, its objects, clicks, masks and undo."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from claraseg.backend import check_object_state
from claraseg.engine.masks import BoxMask
from claraseg.engine.profile import interaction, stage
from claraseg.engine.runners import (
    Volume,
    box_points,
    dextr_roi,
    honour_all_clicks,
    run_deepgrow,
    run_dextr,
)
from claraseg.engine.stages import boundary_grid, refine_mask_boundary, shape_refit
from claraseg.errors import (
    InvalidImageError,
    InvalidPointsError,
    MaskDeltaError,
    ModelError,
    SessionExpiredError,
    SessionNotFoundError,
)
from claraseg.io import Image, MaskDelta, check_finite, check_points_inside
from claraseg.models.inputs import dextr_takes_clicks
from claraseg.models.preprocess import guess_modality, intensity_params

if TYPE_CHECKING:
    from claraseg.engine.backend import LocalBackend

log = logging.getLogger("claraseg.engine")

#: Undo steps kept per object (older ones are dropped first when memory runs short).
MAX_UNDO = 50
#: Smallest image extent (voxels) along an axis a 3D model accepts; 2D models need it in-plane only.
MIN_SIZE = 4


@dataclass
class _Snapshot:
    mask: bytes  # MaskDelta.encode() of the whole mask (compressed)
    fg: list
    bg: list
    local_rel: float = 0.0
    points: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.mask) + 24 * (len(self.fg) + len(self.bg))


@dataclass
class ObjectState:
    """An object's clicks (``[i, j, k]``), current mask and undo history."""

    mask: BoxMask
    fg: list = field(default_factory=list)
    bg: list = field(default_factory=list)
    history: list = field(default_factory=list)
    #: > 0 while the mask is a DEXTR3D result: clicks then change it only near themselves (the DEXTR3D
    #: bundle's ``correction_radius_rel``, a fraction of the mask's extent).
    local_rel: float = 0.0
    #: The extreme points ``[i, j, k]`` of a mask made by DEXTR3D (empty otherwise): a DEXTR3D model
    #: that takes clicks corrects the object with them.
    points: list = field(default_factory=list)

    def snapshot(self) -> None:
        full = MaskDelta(tuple(self.mask.start), tuple(self.mask.stop), self.mask.crop, self.mask.size)
        self.history.append(_Snapshot(full.encode(), list(self.fg), list(self.bg), self.local_rel,
                                      list(self.points)))
        del self.history[:-MAX_UNDO]

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + sum(s.nbytes for s in self.history)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a configuration problem once per process instead of at every click."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


_AMINMAX_DTYPES = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64)}


def _min_max(a: np.ndarray):
    """``(a.min(), a.max())`` in one pass (torch's ``aminmax``, on the array's own memory), (0, 0) when
    empty; numpy's two reductions for dtypes torch does not reduce."""
    if not a.size:
        return 0, 0
    if a.dtype in _AMINMAX_DTYPES and a.flags.writeable and all(st >= 0 for st in a.strides):
        lo, hi = torch.aminmax(torch.from_numpy(a))
        return lo.item(), hi.item()
    return a.min().item(), a.max().item()


def compact_array(a: np.ndarray) -> np.ndarray:
    """The session's copy of the voxels in the smallest dtype that holds them exactly (int16 for CT) or
    closely (float16 for float images within its range). Never larger than the input."""
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        lo, hi = _min_max(a)
        for dt in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max and np.dtype(dt).itemsize <= a.dtype.itemsize:
                return a.astype(dt)
        return a.copy()
    lo, hi = _min_max(a)
    finite_max = max(-float(lo), float(hi))  # = max |a| (the voxels are finite)
    if finite_max < 60000 and a.dtype.itemsize > 2:
        return a.astype(np.float16)
    return a.copy()


def normaliser(params: tuple[float, float, float]):
    """:func:`~claraseg.models.preprocess.apply_intensity` with ``params`` done in place on a float32 tensor
    (the box :func:`~claraseg.guidance.roi.sample_roi` hands its transform is a copy of its own): the same
    operations in the same order, so the same values, without three temporaries of the box's size."""
    lo, hi, cmax = params

    def normalise(t: torch.Tensor) -> torch.Tensor:
        return t.sub_(lo).div_(hi - lo).clamp_(0.0, cmax)

    return normalise


class LocalSession:
    """An image preprocessed once (compact voxels, intensity statistics, device transfer), with
    per-object clicks and masks. Every method takes the session's lock, so a session may be used from
    several threads; calls on one session run one at a time."""

    def __init__(self, backend: LocalBackend, image: Image, session_id: str | None = None):
        if not isinstance(image, Image):
            raise InvalidImageError("open_session needs a claraseg.io.Image")
        if not np.issubdtype(image.array.dtype, np.number) and image.array.dtype != np.bool_:
            raise InvalidImageError(f"voxels of dtype {image.array.dtype} cannot be segmented; give numbers")
        check_finite(image)
        self._backend = backend
        self._id = session_id or uuid.uuid4().hex
        self._lock = threading.RLock()
        self._closed: str | None = None
        self.image_bytes = int(image.array.nbytes)
        self.geometry = Image(np.zeros((1, 1, 1), np.uint8), image.origin, image.spacing, image.direction,
                              metadata=dict(image.metadata))
        self._size = image.size_ijk
        self.modality = guess_modality(image)
        voxels = compact_array(image.array)
        self._numpy = voxels
        dev = backend.device
        self._voxels = torch.from_numpy(voxels).to(dev) if dev != "cpu" else voxels
        self._intensity: dict[str, tuple[float, float, float]] = {}
        for bundle in backend.interactive_bundles():
            self._params(bundle.settings["intensity"])
        self.objects: dict[str, ObjectState] = {}
        self.created = self.last_used = time.monotonic()

    # ----- Session protocol ----------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._id

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self._size

    def click(self, model: str, foreground: Sequence = (), background: Sequence = (), object_id: str = "1",
              slice_axis: int | None = None) -> MaskDelta:
        fg = check_points_inside(self._size, foreground if len(foreground) else np.zeros((0, 3)), "foreground click")
        bg = check_points_inside(self._size, background if len(background) else np.zeros((0, 3)), "background click")
        if len(fg) + len(bg) == 0:
            raise InvalidPointsError("no clicks given: pass at least one foreground or background point [i, j, k]")
        with self._lock:
            self._touch()
            obj = self.objects.get(object_id) or ObjectState(BoxMask(self._size))
            with interaction("click", model=model, first=obj.mask.is_empty):
                return self._click(model, obj, object_id, fg, bg, slice_axis)

    def _click(self, model: str, obj: ObjectState, object_id: str, fg: np.ndarray, bg: np.ndarray,
               slice_axis: int | None) -> MaskDelta:
        """The body of :meth:`click`, under the session's lock."""
        bundle = self._backend.registry.get(model)
        kind = bundle.kind
        all_fg = np.array([*obj.fg, *fg.tolist()], dtype=np.int64).reshape(-1, 3)
        all_bg = np.array([*obj.bg, *bg.tolist()], dtype=np.int64).reshape(-1, 3)
        corrector = self._corrector(model, bundle, obj)
        if corrector is not None:
            # The object is corrected by a DEXTR3D model that reads clicks and the current mask.
            self._check_size(corrector)
            new = self._correct(corrector, obj, all_fg, all_bg, (fg, bg),
                                float(bundle.settings.get("click_radius_mm", 0.0)))
            return self._commit(object_id, obj, new, fg, bg)
        if kind == "dextr3d":
            # DEXTR3D segments from extreme points; its refinement clicks go to its DeepGrow partner.
            refine = bundle.settings.get("correction_model")
            if not refine:
                raise ModelError(f"model {model!r} takes extreme points; refine its result with a DeepGrow model")
            model, bundle = refine, self._backend.registry.get(refine)
            kind = bundle.kind
        if kind not in ("deepgrow3d", "deepgrow2d"):
            raise ModelError(f"model {model!r} is a {kind} model; clicks need a deepgrow2d or deepgrow3d model")
        index = None
        if kind == "deepgrow2d":
            index = self._slice_index(slice_axis, np.concatenate([fg, bg]))
            self._check_size(model, plane_axis=slice_axis)
            all_fg = all_fg[all_fg[:, slice_axis] == index]
            all_bg = all_bg[all_bg[:, slice_axis] == index]
        else:
            self._check_size(model)
        net = self._backend.registry.network(model, self._backend.device)
        start, crop = run_deepgrow(net, kind, bundle.settings, self._volume(bundle), obj.mask, all_fg, all_bg,
                                   self._backend.device, slice_axis, index, (fg, bg),
                                   local_rel=obj.local_rel if kind == "deepgrow3d" else 0.0)
        with stage("mask_update"):
            new = obj.mask.copy()
            if crop.size:
                new.write(start, crop)
        if kind == "deepgrow3d" and not obj.local_rel:
            with stage("refit"):
                new = self._refit(bundle.settings, new, all_fg, all_bg, (fg, bg)) or new
        if kind == "deepgrow3d":
            new = self._refine_boundary(bundle.settings, new, all_fg, all_bg)
        return self._commit(object_id, obj, new, fg, bg)

    def _commit(self, object_id: str, obj: ObjectState, new: BoxMask, fg: np.ndarray, bg: np.ndarray) -> MaskDelta:
        """Make ``new`` the object's mask after a click (undo-able) and return the change."""
        with stage("undo_snapshot"):
            obj.snapshot()
        with stage("delta"):
            delta = obj.mask.delta_to(new)
        obj.mask = new
        obj.fg.extend(fg.tolist())
        obj.bg.extend(bg.tolist())
        self.objects[object_id] = obj
        self._bound_memory()
        return delta

    def _corrector(self, model: str, bundle, obj: ObjectState) -> str | None:
        """The DEXTR3D model that corrects an object made from extreme points, for a click with ``model``:
        ``model`` itself when it is that DEXTR3D model, or a DeepGrow 3D model's ``shape_refit_model``; None
        when the object has no points or the model does not take clicks (the click then runs DeepGrow)."""
        if not obj.points:
            return None
        if bundle.kind == "dextr3d":
            return model if dextr_takes_clicks(bundle.settings) else None
        name = bundle.settings.get("shape_refit_model") if bundle.kind == "deepgrow3d" else None
        if not name or name not in self._backend.registry.names():
            return None
        refit = self._backend.registry.get(name)
        return name if refit.kind == "dextr3d" and dextr_takes_clicks(refit.settings) else None

    def _correct(self, name: str, obj: ObjectState, fg: np.ndarray, bg: np.ndarray,
                 new_clicks: tuple[np.ndarray, np.ndarray], radius_mm: float) -> BoxMask:
        """The object corrected by the DEXTR3D model ``name`` from the extreme points it was made from
        (widened to take in foreground clicks beyond them), all its clicks and its current mask; clicks are
        honoured on the result, and its boundary refined when that bundle asks for it."""
        bundle = self._backend.registry.get(name)
        pts = box_points(np.asarray(obj.points, np.int64).reshape(-1, 3), fg).astype(np.float64)
        net = self._backend.registry.network(name, self._backend.device)
        start, crop = run_dextr(net, bundle.settings, self._volume(bundle), pts, self._backend.device, fg, bg, obj.mask)
        if not crop.size:
            return obj.mask.copy()
        with stage("honour"):  # ``crop`` is run_dextr's own array: honoured in place
            honour_all_clicks(crop, start, fg, bg, new_clicks, radius_mm, self.geometry.spacing)
        return self._refine_boundary(bundle.settings, BoxMask(self._size, start, crop), fg, bg,
                                     dextr_roi(bundle.settings, pts, self.geometry.spacing).spacing)

    def _refit(self, settings: dict, mask: BoxMask, fg: np.ndarray, bg: np.ndarray,
               new_clicks: tuple[np.ndarray, np.ndarray]) -> BoxMask | None:
        """The DeepGrow 3D bundle's shape re-fit (:func:`~claraseg.engine.stages.shape_refit` with its
        ``shape_refit_model``), or None when there is none, it is not on this backend, or it is refused."""
        name = settings.get("shape_refit_model")
        if not name:
            return None
        if name not in self._backend.registry.names():
            _warn_once(f"refit model {name!r} is not loaded: DeepGrow 3D clicks run without the shape re-fit")
            return None
        bundle = self._backend.registry.get(name)
        if bundle.kind != "dextr3d":
            _warn_once(f"refit model {name!r} is a {bundle.kind} model, not dextr3d: the shape re-fit is skipped")
            return None
        net = self._backend.registry.network(name, self._backend.device)
        return shape_refit(net, settings, bundle.settings, self._volume(bundle), mask, fg, bg, new_clicks,
                           self._backend.device)

    def _refine_boundary(self, settings: dict, mask: BoxMask, fg: np.ndarray, bg: np.ndarray,
                         roi_spacing=None) -> BoxMask:
        """``mask`` with its boundary re-decided at the image's resolution when the bundle's
        ``boundary_refine`` setting asks for it (:func:`~claraseg.engine.stages.refine_mask_boundary`).
        ``roi_spacing`` is the grid the mask was made on; by default (a DeepGrow 3D result) the one
        :func:`~claraseg.engine.stages.boundary_grid` gives with the bundle's ``shape_refit_model``."""
        if settings.get("boundary_refine") is None or mask.is_empty:
            return mask
        spacing = self.geometry.spacing
        if roi_spacing is None:
            refit = settings.get("shape_refit_model")
            registry = self._backend.registry
            refit_settings = registry.get(refit).settings if refit and refit in registry.names() \
                and registry.get(refit).kind == "dextr3d" else None
            roi_spacing = boundary_grid(settings, mask, spacing, refit_settings)
        return refine_mask_boundary(settings, self._numpy, spacing, mask, roi_spacing, fg, bg)

    def extreme_points(self, model: str, points: Sequence, object_id: str = "1") -> MaskDelta:
        pts = check_points_inside(self._size, points if len(points) else np.zeros((0, 3)), "extreme point")
        with self._lock:
            self._touch()
            bundle = self._backend.registry.get(model)
            if bundle.kind != "dextr3d":
                raise ModelError(f"model {model!r} is a {bundle.kind} model; extreme points need a dextr3d model")
            need = int(bundle.settings.get("min_points", 6))
            if len(pts) < need:
                raise InvalidPointsError(f"{len(pts)} extreme points given; {model} needs at least {need} "
                                         "(the outermost voxels along i, j and k)")
            self._check_size(model)
            with interaction("extreme_points", model=model):
                return self._extreme_points(model, bundle, pts, object_id)

    def _extreme_points(self, model: str, bundle, pts: np.ndarray, object_id: str) -> MaskDelta:
        """The body of :meth:`extreme_points`, under the session's lock."""
        net = self._backend.registry.network(model, self._backend.device)
        start, crop = run_dextr(net, bundle.settings, self._volume(bundle), pts, self._backend.device)
        with stage("mask_update"):
            new = BoxMask(self._size, start, crop) if crop.size else BoxMask(self._size)
        new = self._refine_boundary(bundle.settings, new, np.zeros((0, 3)), np.zeros((0, 3)),
                                    dextr_roi(bundle.settings, pts, self.geometry.spacing).spacing)
        obj = self.objects.get(object_id) or ObjectState(BoxMask(self._size))
        with stage("undo_snapshot"):
            obj.snapshot()
        with stage("delta"):
            delta = obj.mask.delta_to(new)
        obj.mask, obj.fg, obj.bg, obj.points = new, [], [], pts.tolist()
        obj.local_rel = float(bundle.settings.get("correction_radius_rel", 0.0))
        self.objects[object_id] = obj
        self._bound_memory()
        return delta

    def auto_segment(self, model: str) -> MaskDelta:
        with self._lock:
            self._touch()
            bundle = self._backend.registry.get(model)
            if bundle.kind != "segmentation":
                raise ModelError(f"model {model!r} is a {bundle.kind} model; auto-segmentation needs a segmentation model")
            self._check_size(model)
            net = self._backend.registry.network(model, self._backend.device)
            pipeline = self._backend.pipeline(model)
            image = Image(self._numpy, self.geometry.origin, self.geometry.spacing, self.geometry.direction,
                          metadata=dict(self.geometry.metadata))
            labels = pipeline.run(net, image, self._backend.device, amp=self._backend.device.startswith("cuda"))
            names = self._backend.registry.descriptor(model).labels
            return MaskDelta.from_full(labels, labels={int(v): names.get(int(v), f"label_{v}") for v in names})

    def set_mask(self, object_id: str, mask: MaskDelta, points: Sequence = (), foreground: Sequence = (),
                 background: Sequence = ()) -> None:
        """Replace the object's mask (undo-able). ``points``/``foreground``/``background`` restore the
        extreme points it was made from and its clicks (e.g. after a client re-opened an expired session),
        so that clicks take the route they would have taken; without them the mask counts as painted.
        Everything is checked before the object changes."""
        if not isinstance(mask, MaskDelta):
            raise MaskDeltaError("set_mask needs a MaskDelta (box + mask on the session image's grid)")
        if tuple(mask.image_size) != tuple(self._size):
            raise MaskDeltaError(f"the mask was made for a volume of size {list(mask.image_size)}, "
                                 f"not this session's {list(self._size)}")
        pts, fg, bg = check_object_state(self._size, points, foreground, background)
        new = BoxMask.from_delta(mask)
        with self._lock:
            self._touch()
            obj = self.objects.get(object_id) or ObjectState(BoxMask(self._size))
            obj.snapshot()
            obj.mask = new
            # The restored points make DEXTR3D the object's corrector again (``_corrector``). Which bundle
            # made them is not known here, so a DEXTR3D without click channels loses ``correction_radius_rel``.
            obj.fg, obj.bg, obj.local_rel, obj.points = fg, bg, 0.0, pts
            self.objects[object_id] = obj
            self._bound_memory()

    def undo(self, object_id: str = "1") -> MaskDelta:
        with self._lock:
            self._touch()
            obj = self.objects.get(object_id)
            if obj is None or not obj.history:
                return MaskDelta.empty(self._size)
            snap = obj.history.pop()
            old = BoxMask.from_delta(MaskDelta.decode(snap.mask))
            delta = obj.mask.delta_to(old)
            obj.mask, obj.fg, obj.bg, obj.local_rel, obj.points = old, snap.fg, snap.bg, snap.local_rel, snap.points
            return delta

    def clear(self, object_id: str = "1") -> MaskDelta:
        with self._lock:
            self._touch()
            obj = self.objects.get(object_id)
            if obj is None:
                return MaskDelta.empty(self._size)
            obj.snapshot()
            empty = BoxMask(self._size)
            delta = obj.mask.delta_to(empty)
            obj.mask, obj.fg, obj.bg, obj.local_rel, obj.points = empty, [], [], 0.0, []
            return delta

    def close(self) -> None:
        self._release("closed")
        self._backend.forget(self._id)

    # ----- helpers -------------------------------------------------------------------------------------
    def mask(self, object_id: str = "1") -> np.ndarray:
        """The object's current mask as a full ``[k, j, i]`` uint8 array (for tests and exports)."""
        with self._lock:
            self._touch()
            obj = self.objects.get(object_id)
            full = np.zeros(self._size[::-1], np.uint8)
            if obj is not None and not obj.mask.is_empty:
                full[tuple(slice(a, b) for a, b in zip(obj.mask.start[::-1], obj.mask.stop[::-1]))] = obj.mask.crop
            return full

    @property
    def memory_bytes(self) -> int:
        """Bytes held: the compact voxels plus every object's mask and undo history."""
        voxels = 0 if self._numpy is None else int(self._numpy.nbytes)
        return voxels + sum(o.nbytes for o in self.objects.values())

    def expire_if_idle(self, idle_seconds: float, now: float | None = None) -> bool:
        """Release the session if it has been idle longer than ``idle_seconds``; True if it did."""
        now = time.monotonic() if now is None else now
        if not self._lock.acquire(blocking=False):
            return False  # in use right now, so not idle
        try:
            if self._closed is None and now - self.last_used > idle_seconds:
                self._release("expired")
                return True
            return False
        finally:
            self._lock.release()

    def _release(self, why: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = why
                self._voxels = self._numpy = None
                self.objects = {}

    def _touch(self) -> None:
        if self._closed == "expired":
            raise SessionExpiredError(f"session {self._id} expired after being idle; open a new session")
        if self._closed is not None:
            raise SessionNotFoundError(f"session {self._id} was closed; open a new session")
        self.last_used = time.monotonic()

    def _params(self, spec: dict) -> tuple[float, float, float]:
        key = json.dumps(spec, sort_keys=True)
        if key not in self._intensity:
            self._intensity[key] = intensity_params(self._numpy, self.modality, spec)
        return self._intensity[key]

    def _volume(self, bundle) -> Volume:
        return Volume(self._voxels, self.geometry.spacing, normaliser(self._params(bundle.settings["intensity"])))

    def _slice_index(self, axis, points: np.ndarray) -> int:
        if axis is None or axis not in (0, 1, 2):
            raise InvalidPointsError("a 2D model needs slice_axis = 0 (i), 1 (j) or 2 (k): the axis normal to "
                                     f"the slice clicked on (got {axis!r})")
        values = np.unique(points[:, axis])
        if len(values) != 1:
            raise InvalidPointsError(f"2D clicks must all lie on one slice: along axis {axis} they have indices "
                                     f"{values.tolist()}")
        return int(values[0])

    def _check_size(self, model: str, plane_axis: int | None = None) -> None:
        axes = [a for a in range(3) if a != plane_axis]
        small = [a for a in axes if self._size[a] < MIN_SIZE]
        if small:
            raise InvalidImageError(f"the image (size {list(self._size)}) is too small for model {model!r}: it needs "
                                    f"at least {MIN_SIZE} voxels along axes {axes}")

    def _bound_memory(self) -> None:
        """Drop the oldest undo steps while the session holds more than its bound (2x the image's bytes)."""
        bound = self._backend.memory_factor * self.image_bytes
        while self.memory_bytes > bound:
            victims = [o for o in self.objects.values() if o.history]
            if not victims:
                break
            max(victims, key=lambda o: sum(s.nbytes for s in o.history)).history.pop(0)
