"""The `Backend` interface shared by the in-process engine and the HTTP client (DESIGN.md).

The Slicer modules, the evaluation code and the contract tests use only what is declared here, so a
`LocalBackend` (claraseg.engine) and a `RemoteBackend` (claraseg.client) are interchangeable.

Conventions: points are voxel indices ``[i, j, k]`` of the session image (integers); every
interaction returns a :class:`~claraseg.io.MaskDelta` on the session image's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from claraseg.io import Image, MaskDelta

#: Version of the remote protocol and of this interface; client and server must agree on the major part.
API_VERSION = "1.0"

#: The kinds of model a backend can host.
MODEL_KINDS = ("deepgrow2d", "deepgrow3d", "dextr3d", "segmentation")

Point = Sequence[int]  # [i, j, k]


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

    def set_mask(self, object_id: str, mask: MaskDelta) -> None:
        """Replace an object's current mask (e.g. a segment the user painted) before refining it by clicks.
        Becomes an undo step; clicks already recorded for the object are forgotten."""
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
