"""A small deterministic Backend used to exercise the server plumbing until the engine lands.

It is not a model: a click grows a ball of voxels whose intensity is close to the clicked one. It keeps
the Session semantics exactly (per-object clicks, undo history, set_mask, clear), so transport,
sessions and expiry are tested for real against it.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np

from claraseg.backend import ModelDescriptor, check_object_state
from claraseg.errors import InvalidPointsError, SessionNotFoundError, UnknownModelError
from claraseg.io import Image, MaskDelta, check_points_inside

MODELS = [
    ModelDescriptor("grow3d", "deepgrow3d", description="stand-in intensity ball"),
    ModelDescriptor("box3d", "dextr3d", min_points=6, description="stand-in box from extreme points"),
    ModelDescriptor("threshold", "segmentation", labels={1: "bright", 2: "dark"}, description="stand-in threshold"),
]


class StandInSession:
    def __init__(self, image: Image) -> None:
        self._image = image.array.astype(np.float32)
        self._id = uuid.uuid4().hex
        self._objects: dict[str, dict] = {}
        self._closed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def image_size(self):
        k, j, i = self._image.shape
        return (i, j, k)

    def _obj(self, object_id: str) -> dict:
        if self._closed:
            raise SessionNotFoundError("session closed")
        return self._objects.setdefault(object_id, {"fg": [], "bg": [], "history": [np.zeros(self._image.shape, np.uint8)]})

    def _push(self, obj: dict, new: np.ndarray) -> MaskDelta:
        old = obj["history"][-1]
        obj["history"].append(new)
        return MaskDelta.from_full(new, old)

    def click(self, model, foreground=(), background=(), object_id="1", slice_axis=None):
        if model != "grow3d":
            raise UnknownModelError(f"no model {model!r}")
        obj = self._obj(object_id)
        obj["fg"] += check_points_inside(self.image_size, foreground, "click").tolist() if len(foreground) else []
        obj["bg"] += check_points_inside(self.image_size, background, "click").tolist() if len(background) else []
        if not obj["fg"]:
            raise InvalidPointsError("no foreground click yet")
        kk, jj, ii = np.ogrid[: self._image.shape[0], : self._image.shape[1], : self._image.shape[2]]
        new = np.zeros(self._image.shape, bool)
        for i, j, k in obj["fg"]:
            ball = (ii - i) ** 2 + (jj - j) ** 2 + (kk - k) ** 2 <= 36
            new |= ball & (np.abs(self._image - self._image[k, j, i]) < 100)
        for i, j, k in obj["bg"]:
            new &= ~((ii - i) ** 2 + (jj - j) ** 2 + (kk - k) ** 2 <= 9)
        return self._push(obj, new.astype(np.uint8))

    def extreme_points(self, model, points, object_id="1"):
        p = check_points_inside(self.image_size, points, "extreme point")
        obj = self._obj(object_id)
        obj["fg"], obj["bg"] = [], []
        new = np.zeros(self._image.shape, np.uint8)
        lo, hi = p.min(0), p.max(0) + 1
        new[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = 1
        return self._push(obj, new)

    def auto_segment(self, model):
        if model != "threshold":
            raise UnknownModelError(f"no model {model!r}")
        lab = np.where(self._image > 200, 1, np.where(self._image < -500, 2, 0)).astype(np.uint8)
        return MaskDelta.from_full(lab, labels={1: "bright", 2: "dark"})

    def set_mask(self, object_id, mask, points=(), foreground=(), background=()):
        _, fg, bg = check_object_state(self.image_size, points, foreground, background)
        obj = self._obj(object_id)
        new = obj["history"][-1].copy()
        mask.paste(new)
        obj["fg"], obj["bg"] = fg, bg  # the stand-in has no use for extreme points once the box is drawn
        obj["history"].append(new)

    def undo(self, object_id="1"):
        obj = self._obj(object_id)
        if len(obj["history"]) == 1:
            return MaskDelta.empty(self.image_size)
        cur = obj["history"].pop()
        return MaskDelta.from_full(obj["history"][-1], cur)

    def clear(self, object_id="1"):
        obj = self._obj(object_id)
        cur = obj["history"][-1]
        obj.update(fg=[], bg=[])
        return self._push(obj, np.zeros_like(cur))

    def close(self):
        self._closed = True
        self._objects.clear()
        self._image = np.zeros((1, 1, 1), np.float32)


class StandInBackend:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def models(self):
        return list(MODELS)

    def open_session(self, image: Image) -> StandInSession:
        return StandInSession(image)

    def close(self) -> None:
        pass


def make(models_dir=None, device="cpu") -> StandInBackend:
    """Factory for ``claraseg serve --backend standin:make``."""
    return StandInBackend()
