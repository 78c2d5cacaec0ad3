"""Segments <-> label values: names and colours for model labels, per-label deltas, object state.

A backend object id is the Slicer segment id the clicks belong to; an auto-segmentation delta holds
label values that become one segment each, named after the model's labels and coloured.
"""

from __future__ import annotations

import colorsys
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from claraseg.io import MaskDelta, bounding_box
from claraseg.io.geometry import box_slices

#: Display colours (RGB 0..1) of common structures, close to the conventions of anatomy colour tables,
#: so that a spleen is the same colour whichever model found it.
KNOWN_COLORS: dict[str, tuple[float, float, float]] = {
    "spleen": (0.616, 0.424, 0.635),
    "liver": (0.867, 0.510, 0.396),
    "kidney": (0.725, 0.400, 0.325),
    "stomach": (0.847, 0.518, 0.404),
    "pancreas": (0.976, 0.706, 0.435),
    "gallbladder": (0.545, 0.588, 0.384),
    "aorta": (0.878, 0.380, 0.298),
    "inferior_vena_cava": (0.0, 0.592, 0.808),
    "bladder": (0.847, 0.729, 0.561),
    "urinary_bladder": (0.847, 0.729, 0.561),
    "esophagus": (0.827, 0.671, 0.588),
    "duodenum": (1.0, 0.992, 0.898),
    "colon": (0.800, 0.659, 0.557),
    "small_bowel": (0.804, 0.655, 0.608),
    "lung": (0.773, 0.667, 0.616),
    "heart": (0.808, 0.431, 0.365),
    "vertebrae": (0.945, 0.839, 0.569),
    "rib": (0.945, 0.839, 0.569),
    "femur": (0.945, 0.839, 0.569),
    "hip": (0.945, 0.839, 0.569),
    "adrenal_gland": (0.863, 0.961, 0.078),
    "hippocampus": (0.863, 0.847, 0.078),
    "object": (0.2, 0.8, 0.2),
}


@dataclass(frozen=True)
class SegmentSpec:
    """A segment to create or update from a model label."""

    label_value: int
    name: str
    color: tuple[float, float, float]


def _canonical(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return re.sub(r"_(left|right|l|r)$", "", s)


def palette_color(index: int) -> tuple[float, float, float]:
    """A distinct, stable colour for the ``index``-th structure without a known colour (golden-angle hues)."""
    hue = (0.11 + index * 0.618033988749895) % 1.0
    return tuple(round(c, 3) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.9))  # type: ignore[return-value]


def _side(name: str) -> str:
    m = re.search(r"_(left|right|l|r)$", re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_"))
    return {"l": "left", "r": "right"}.get(m.group(1), m.group(1)) if m else ""


def _shade(rgb: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    """Lighter (factor > 1, towards white) or darker (< 1) version of a colour."""
    if factor >= 1:
        return tuple(round(c + (1 - c) * (factor - 1), 3) for c in rgb)  # type: ignore[return-value]
    return tuple(round(c * factor, 3) for c in rgb)  # type: ignore[return-value]


def color_for(name: str, index: int = 0) -> tuple[float, float, float]:
    """Colour of a structure: the known one for its name, a lighter shade for a left and a darker one for
    a right structure (``kidney_left`` and ``kidney_right`` differ), else :func:`palette_color`."""
    key = _canonical(name)
    side = {"left": 1.25, "right": 0.8}.get(_side(name), 1.0)
    if key in KNOWN_COLORS:
        return _shade(KNOWN_COLORS[key], side)
    for known, rgb in KNOWN_COLORS.items():
        if key.startswith(known + "_") or key.endswith("_" + known):
            return _shade(rgb, side)
    return palette_color(index)


def distinct_color(color: tuple[float, float, float], used, index: int) -> tuple[float, float, float]:
    """``color``, or palette colours from ``index`` on until one is not in ``used``."""
    n = index
    while tuple(color) in used:
        color = palette_color(n)
        n += 1
    return color


def display_name(name: str) -> str:
    """``kidney_left`` -> ``kidney left`` (segment names read like words; the model label stays the key)."""
    return name.replace("_", " ").strip() or "segment"


def segments_for_labels(labels: Mapping[int, str]) -> list[SegmentSpec]:
    """One :class:`SegmentSpec` per non-zero label value, ordered by value, each with its own colour."""
    specs: list[SegmentSpec] = []
    used: set[tuple[float, float, float]] = set()
    for n, value in enumerate(sorted(int(v) for v in labels)):
        if value == 0:
            continue
        name = str(labels[value]) or f"label {value}"
        color = distinct_color(color_for(name, n), used, n)  # e.g. ribs and vertebrae share a known colour
        used.add(color)
        specs.append(SegmentSpec(value, display_name(name), color))
    return specs


def split_labels(delta: MaskDelta) -> dict[int, MaskDelta]:
    """Split a multi-label delta into one binary delta per label value present in ``delta.labels`` or in the
    voxels. Each keeps the whole box: inside it the segment is exactly that label (so an older segment of
    the same name is replaced, not merged)."""
    values = set(int(v) for v in np.unique(delta.mask)) | set(delta.labels)
    values.discard(0)
    out = {}
    for v in sorted(values):
        out[v] = MaskDelta(delta.start, delta.stop, (delta.mask == v).astype(np.uint8), delta.image_size,
                           {1: delta.labels.get(v, f"label {v}")})
    return out


class ObjectMask:
    """The current mask of one object, kept as a tight box (memory grows with the object, not the volume).

    The controller applies every delta it receives here, so an expired remote session can be re-opened
    and the object's mask handed back to it (``Session.set_mask``) without asking Slicer for it.
    """

    def __init__(self, image_size) -> None:
        self.image_size = tuple(int(v) for v in image_size)
        self.delta = MaskDelta.empty(self.image_size)

    def apply(self, delta: MaskDelta) -> None:
        """Apply a delta (inside its box the object becomes exactly the delta's mask)."""
        if delta.image_size != self.image_size:
            self.image_size = delta.image_size
            self.delta = MaskDelta.empty(self.image_size)
        if delta.is_empty:
            return
        cur = self.delta
        if cur.is_empty:
            lo, hi = np.array(delta.start), np.array(delta.stop)
        else:
            lo = np.minimum(cur.start, delta.start)
            hi = np.maximum(cur.stop, delta.stop)
        region = np.zeros(tuple((hi - lo)[::-1]), dtype=np.uint8)
        if not cur.is_empty:
            region[box_slices(np.array(cur.start) - lo, np.array(cur.stop) - lo)] = cur.mask != 0
        region[box_slices(np.array(delta.start) - lo, np.array(delta.stop) - lo)] = delta.mask != 0
        box = bounding_box(region)
        if box is None:
            self.delta = MaskDelta.empty(self.image_size)
            return
        s, e = box
        self.delta = MaskDelta(tuple(lo + s), tuple(lo + e), np.ascontiguousarray(region[box_slices(s, e)]),
                               self.image_size)

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.delta.mask))


def label_key(segment_name: str) -> str:
    """Segment name -> model label name (the inverse of :func:`display_name`: ``kidney left`` -> ``kidney_left``)."""
    return "_".join(segment_name.split())


def object_id(segmentation_id: str, segment_id: str) -> str:
    """The backend object id of a segment: ``<segmentation node id>.<segment id>`` made safe for the server
    (letters, digits, ``_ . -``, at most 128 characters); a checksum keeps ids that needed changes unique."""
    raw = f"{segmentation_id}.{segment_id}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).replace("..", "._").lstrip(".") or "object"
    if safe != raw or len(safe) > 128:
        safe = f"{safe[:119]}-{zlib.crc32(raw.encode()):08x}"
    return safe


def same_mask(a: MaskDelta, b: MaskDelta | None) -> bool:
    """Whether two tight-box masks (``MaskDelta.from_full``, :class:`ObjectMask`) hold the same voxels;
    ``None`` counts as empty."""
    if b is None or b.is_empty:
        return a.is_empty or not a.mask.any()
    return a.start == b.start and a.stop == b.stop and np.array_equal(a.mask != 0, b.mask != 0)
