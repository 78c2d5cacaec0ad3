"""An object's mask stored as its bounding box only (a full-size uint8 volume per object would break the
session's memory bound), and the deltas between two such masks."""

from __future__ import annotations

import numpy as np

from claraseg.io import MaskDelta
from claraseg.io.geometry import box_slices


def nonzero_box(a: np.ndarray):
    """``(start, stop)`` ``[i, j, k]`` of the non-zero voxels of a ``[k, j, i]`` array, or None: the same box
    as :func:`claraseg.io.geometry.bounding_box`, from reductions along the axes (no list of voxels)."""
    k = np.flatnonzero(a.any(axis=(1, 2)))
    if not len(k):
        return None
    plane = a[k[0]:k[-1] + 1].any(axis=0)  # [j, i]
    j = np.flatnonzero(plane.any(axis=1))
    i = np.flatnonzero(plane.any(axis=0))
    return (np.array([i[0], j[0], k[0]], np.int64), np.array([i[-1] + 1, j[-1] + 1, k[-1] + 1], np.int64))


class BoxMask:
    """A 0/1 mask of a volume of ``size`` (``[i, j, k]``), stored as ``start`` + the crop ``[k, j, i]`` of
    its non-zero bounding box. Supports ``shape`` and box slicing, so it can be resampled like a volume."""

    def __init__(self, size_ijk, start=None, crop: np.ndarray | None = None):
        self.size = tuple(int(v) for v in size_ijk)
        self.start = np.zeros(3, np.int64) if start is None else np.asarray(start, np.int64)
        self.crop = np.zeros((0, 0, 0), np.uint8) if crop is None else crop
        self._shrink()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[::-1]

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.asarray(self.crop.shape[::-1], np.int64)

    @property
    def is_empty(self) -> bool:
        return self.crop.size == 0

    @property
    def nbytes(self) -> int:
        return int(self.crop.nbytes)

    def _shrink(self) -> None:
        box = nonzero_box(self.crop) if self.crop.size else None
        if box is None:
            self.start, self.crop = np.zeros(3, np.int64), np.zeros((0, 0, 0), np.uint8)
            return
        lo, hi = box
        self.crop = np.ascontiguousarray(self.crop[box_slices(lo, hi)], dtype=np.uint8)
        self.start = self.start + lo

    def region(self, start, stop) -> np.ndarray:
        """The dense mask ``[k, j, i]`` of the box ``[start, stop)`` (may extend past the mask's box)."""
        start, stop = np.asarray(start, np.int64), np.asarray(stop, np.int64)
        out = np.zeros(tuple((stop - start)[::-1]), np.uint8)
        if self.is_empty:
            return out
        lo, hi = np.maximum(start, self.start), np.minimum(stop, self.stop)
        if np.all(hi > lo):
            out[box_slices(lo - start, hi - start)] = self.crop[box_slices(lo - self.start, hi - self.start)]
        return out

    def __getitem__(self, key) -> np.ndarray:
        ks, js, is_ = key
        start = [is_.start or 0, js.start or 0, ks.start or 0]
        stop = [is_.stop if is_.stop is not None else self.size[0], js.stop if js.stop is not None else self.size[1],
                ks.stop if ks.stop is not None else self.size[2]]
        return self.region(start, stop)

    def write(self, start, crop: np.ndarray) -> None:
        """Set the mask inside the box at ``start`` to ``crop`` (outside it nothing changes)."""
        start = np.asarray(start, np.int64)
        stop = start + np.asarray(crop.shape[::-1], np.int64)
        if self.is_empty:
            self.start, self.crop = start, (crop != 0).astype(np.uint8)
        else:
            lo, hi = np.minimum(start, self.start), np.maximum(stop, self.stop)
            dense = self.region(lo, hi)
            dense[box_slices(start - lo, stop - lo)] = crop != 0
            self.start, self.crop = lo, dense
        self._shrink()

    def copy(self) -> BoxMask:
        return BoxMask(self.size, self.start.copy(), self.crop.copy())

    def delta_to(self, new: BoxMask) -> MaskDelta:
        """The smallest :class:`MaskDelta` that turns this mask into ``new``."""
        boxes = [(m.start, m.stop) for m in (self, new) if not m.is_empty]
        if not boxes:
            return MaskDelta.empty(self.size)
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        old_d, new_d = self.region(lo, hi), new.region(lo, hi)
        changed = nonzero_box(old_d != new_d)
        if changed is None:
            return MaskDelta.empty(self.size)
        a, b = changed
        return MaskDelta(tuple(lo + a), tuple(lo + b), new_d[box_slices(a, b)], self.size)

    @classmethod
    def from_delta(cls, delta: MaskDelta) -> BoxMask:
        """The mask that is ``delta``'s box content (non-zero = 1) and empty elsewhere."""
        return cls(delta.image_size, np.asarray(delta.start), (np.asarray(delta.mask) != 0).astype(np.uint8))
