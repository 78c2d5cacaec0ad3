"""The `Backend` interface shared by the in-process engine and the HTTP client (DESIGN.md).

The Slicer modules, the evaluation code and the contract tests use only what is declared here, so a
`LocalBackend` (claraseg.engine) and a `RemoteBackend` (claraseg.client) are interchangeable.

Conventions: points are voxel indices ``[i, j, k]`` of the session image (integers); every
interaction returns a :class:`~claraseg.io.MaskDelta` on the session image's grid.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, Protocol, runtime_checkable

from claraseg.errors import InvalidPointsError
from claraseg.io import Image, MaskDelta, check_points_inside


def pick_device(device: str = "auto") -> str:
    """The torch device name of a setting: ``auto`` -> ``cuda`` when available, else ``cpu``; any other
    name as given (the one place that decides; the engine, jobs and AutoML trials call it)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

#: Version of the remote protocol and of this interface; client and server must agree on the major part.
API_VERSION = "1.0"

#: The kinds of model a backend can host.
MODEL_KINDS = ("deepgrow2d", "deepgrow3d", "dextr3d", "segmentation")

Point = Sequence[int]  # [i, j, k]

#: Fewest extreme points that make a DEXTR3D object (the outermost voxels along i, j and k).
MIN_EXTREME_POINTS = 6


def check_voxel_list(image_size: Sequence[int], value: Any, what: str) -> list[list[int]]:
    """``value`` as a list of integer voxel indices ``[[i, j, k], ...]`` inside an image of ``image_size``.

    Stricter than :func:`~claraseg.io.check_points_inside`: a flat ``[i, j, k]`` (one level of nesting
    short), fractions, booleans and strings are refused with :class:`~claraseg.errors.InvalidPointsError`.
    ``None`` and an empty list give ``[]``."""
    if value is None:
        return []
    try:
        if isinstance(value, (str, bytes, dict)):
            raise TypeError
        items = list(value)
    except TypeError:
        raise InvalidPointsError(f"{what} must be a list of [i, j, k] voxel indices, e.g. [[10, 20, 5]]; "
                                 f"got {type(value).__name__}") from None
    out = []
    for n, p in enumerate(items):
        if isinstance(p, (str, bytes, dict)) or not hasattr(p, "__len__") or len(p) != 3:
            raise InvalidPointsError(f"{what} number {n + 1} is {_short(p)}: each must be an [i, j, k] list of "
                                     "3 integers (a list of lists, e.g. [[10, 20, 5]])")
        q = []
        for v in p:
            if isinstance(v, bool) or not isinstance(v, Real) or (not isinstance(v, Integral) and not (
                    math.isfinite(float(v)) and float(v).is_integer())):
                raise InvalidPointsError(f"{what} number {n + 1} is {_short(p)}: voxel indices must be integers")
            if abs(int(v)) > 2**62:
                raise InvalidPointsError(f"{what} number {n + 1} is {_short(p)}: it lies outside the volume "
                                         f"(valid indices are 0..{[int(x) - 1 for x in image_size]})")
            q.append(int(v))
        out.append(q)
    return check_points_inside(image_size, out, what).tolist() if out else []


def check_object_state(image_size: Sequence[int], points: Any = (), foreground: Any = (),
                       background: Any = ()) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Validate the interaction state :meth:`Session.set_mask` restores; returns ``(points, foreground,
    background)`` as lists of ``[i, j, k]``. Extreme points, when given, number at least
    :data:`MIN_EXTREME_POINTS`."""
    pts = check_voxel_list(image_size, points, "extreme point")
    if pts and len(pts) < MIN_EXTREME_POINTS:
        raise InvalidPointsError(f"{len(pts)} extreme points given; an object made from extreme points has at "
                                 f"least {MIN_EXTREME_POINTS} (the outermost voxels along i, j and k), or none")
    return (pts, check_voxel_list(image_size, foreground, "foreground click"),
            check_voxel_list(image_size, background, "background click"))


def _short(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


@dataclass
class ModelDescriptor:
    """What a client needs to know about a model; the full bundle metadata stays on the backend.

    Attributes:
        name: unique id, e.g. ``deepgrow3d`` (versions published by fine-tuning: ``deepgrow3d@v2``).
        kind: one of :data:`MODEL_KINDS`.
        labels: label value -> structure name (segmentation models); ``{1: "object"}`` for interactive ones.
        spacing: voxel spacing (mm, i j k) the model works at, or None for "the image's own".
        roi_size: network input size ``[i, j, k]`` (2D models: ``[i, j, 1]``).
        version: model version string.
        description: one line for the user.
        min_points: smallest number of points one call needs (6 for DEXTR3D, 1 for DeepGrow).
        extra: anything else from the bundle metadata worth showing (training data, Dice...).
    """

    name: str
    kind: str
    labels: dict[int, str] = field(default_factory=lambda: {1: "object"})
    spacing: list[float] | None = None
    roi_size: list[int] | None = None
    version: str = "0.1.0"
    description: str = ""
    min_points: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelDescriptor:
        known = {f for f in cls.__dataclass_fields__}
        args = {k: v for k, v in d.items() if k in known}
        args["labels"] = {int(k): v for k, v in (d.get("labels") or {}).items()}
        return cls(**args)


@runtime_checkable
class Session(Protocol):
    """An image opened once on a backend; holds per-object clicks and masks, with undo."""

    @property
    def id(self) -> str: ...

    @property
    def image_size(self) -> tuple[int, int, int]:
        """Size ``[i, j, k]`` of the session image."""
        ...

    def click(self, model: str, foreground: Sequence[Point] = (), background: Sequence[Point] = (),
              object_id: str = "1", slice_axis: int | None = None) -> MaskDelta:
        """Add foreground/background clicks to an object and return how its mask changed.

        ``foreground``/``background`` are the *new* clicks of this interaction (the session keeps the
        earlier ones). For 2D models ``slice_axis`` (0 = i, 1 = j, 2 = k) names the slice orientation;
        all new clicks must share one index along it, and only that slice changes.
        """
        ...

    def extreme_points(self, model: str, points: Sequence[Point], object_id: str = "1") -> MaskDelta:
        """Segment an object from six or more extreme points (replaces the object's mask)."""
        ...

    def auto_segment(self, model: str) -> MaskDelta:
        """Run a segmentation model on the whole image; the delta's voxels are label values, named in
        ``delta.labels`` (values of the model's descriptor)."""
        ...

    def set_mask(self, object_id: str, mask: MaskDelta, points: Sequence[Point] = (),
                 foreground: Sequence[Point] = (), background: Sequence[Point] = ()) -> None:
        """Replace an object's current mask and its interaction state; becomes an undo step.

        Without ``points``/``foreground``/``background`` the mask is a painted one: the object's extreme
        points and clicks are forgotten and the next clicks refine the mask. With them (a client re-opening
        a session that expired) the object gets back the extreme points it was made from (at least
        :data:`MIN_EXTREME_POINTS`, or none) and all its clicks, so the next click is treated as if the
        session had never gone away. Invalid input raises
        :class:`~claraseg.errors.InvalidPointsError` / :class:`~claraseg.errors.MaskDeltaError` and changes
        nothing (see :func:`check_object_state`)."""
        ...

    def undo(self, object_id: str = "1") -> MaskDelta:
        """Revert the object's last interaction; returns the delta that restores the previous mask."""
        ...

    def clear(self, object_id: str = "1") -> MaskDelta:
        """Forget the object's clicks and mask; returns the delta that empties it."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    def models(self) -> list[ModelDescriptor]: ...

    def open_session(self, image: Image) -> Session: ...

    def close(self) -> None: ...


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def share_malloc_arena() -> bool:
    """Make glibc's worker threads allocate from the main malloc arena (``mallopt(M_ARENA_MAX, 1)``);
    called by the server's work pool, whose clicks run on worker threads. It changes the allocator of the
    whole process, so the in-process engine (:class:`~claraseg.engine.LocalBackend`, e.g. inside Slicer)
    never calls it; a program that hosts the engine on threads may call it itself, before they allocate.

    A thread's own arena hands out the engine's large, short-lived arrays through fresh memory maps,
    page-faulted in on every click, which makes a click on a worker thread slower than on the main thread
    (the measurement is in docs/server.md). Returns whether it was applied (glibc only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False
