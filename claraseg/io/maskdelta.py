"""`MaskDelta`: what every interaction returns - the box that changed and the mask inside it.

Semantics: inside the box ``[start, stop)`` (voxel indices ``[i, j, k]``) the object's mask is exactly
``mask`` (``[k, j, i]``, uint8); outside the box nothing changed. For an auto-segmentation the voxels
are label values and ``labels`` names them; for one object they are 0/1.

Binary encoding (little-endian), version 1::

    magic b"CSMD" | u8 version | u8 codec | u8 packing | u8 reserved
    3 x i32 start_ijk | 3 x i32 stop_ijk | 3 x i32 image_size_ijk | u32 labels_json_len | u32 payload_len
    labels_json (UTF-8) | payload

``packing`` 1 = one bit per voxel (``np.packbits``, masks of 0/1), 0 = one byte per voxel.
``codec`` 0 = raw, 1 = zlib. Decoding reads voxels with ``np.frombuffer`` (no copy for raw payloads).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from claraseg.errors import MaskDeltaError
from claraseg.io.geometry import bounding_box, box_slices

MAGIC = b"CSMD"
VERSION = 1
CODEC_RAW, CODEC_ZLIB = 0, 1
_HEADER = struct.Struct("<4sBBBB3i3i3iII")
MEDIA_TYPE = "application/x-claraseg-maskdelta"


@dataclass(frozen=True, eq=False)
class MaskDelta:
    """A changed box and the mask inside it; see the module docstring."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    mask: np.ndarray
    image_size: tuple[int, int, int]
    labels: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = tuple(int(v) for v in self.start)
        stop = tuple(int(v) for v in self.stop)
        size = tuple(int(v) for v in self.image_size)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "image_size", size)
        if len(start) != 3 or len(stop) != 3 or len(size) != 3:
            raise MaskDeltaError("start, stop and image_size must each have three values [i, j, k]")
        if any(s < 0 or e < s or e > n for s, e, n in zip(start, stop, size)):
            raise MaskDeltaError(f"box start {list(start)} stop {list(stop)} does not fit a volume of size {list(size)}")
        expected = (stop[2] - start[2], stop[1] - start[1], stop[0] - start[0])
        m = np.asarray(self.mask)
        if m.shape != expected:
            raise MaskDeltaError(f"mask shape {m.shape} does not match the box (expected [k, j, i] = {expected})")
        if m.dtype != np.uint8:
            if m.dtype.kind not in "biuf":
                raise MaskDeltaError(f"mask voxels of type {m.dtype} are not supported; use uint8")
            if m.size and (m.min() < 0 or m.max() > 255):
                raise MaskDeltaError("mask values must fit in uint8 (0..255)")
            if m.dtype.kind == "f" and not np.array_equal(m, np.round(m)):
                raise MaskDeltaError("mask values must be whole numbers (threshold probabilities first)")
            m = m.astype(np.uint8)
        object.__setattr__(self, "mask", m)
        object.__setattr__(self, "labels", {int(k): str(v) for k, v in self.labels.items()})

    # ----- construction -----------------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size) -> MaskDelta:
        """A delta that changes nothing in a volume of ``image_size`` ``[i, j, k]``."""
        return cls((0, 0, 0), (0, 0, 0), np.zeros((0, 0, 0), np.uint8), tuple(image_size))

    @classmethod
    def from_full(cls, new: np.ndarray, old: np.ndarray | None = None, labels: dict[int, str] | None = None) -> MaskDelta:
        """The smallest delta that turns ``old`` into ``new`` (both ``[k, j, i]``); with no ``old``,
        the bounding box of ``new``."""
        new = np.asarray(new)
        if new.ndim != 3 or (old is not None and np.shape(old) != new.shape):
            raise MaskDeltaError(f"from_full needs two [k, j, i] volumes of one shape, got {new.shape} and "
                                 f"{None if old is None else np.shape(old)}")
        size = tuple(new.shape[::-1])
        changed = new != 0 if old is None else new != old
        box = bounding_box(changed)
        if box is None:
            return cls.empty(size) if not labels else cls((0, 0, 0), (0, 0, 0), np.zeros((0, 0, 0), np.uint8), size, labels)
        start, stop = box
        return cls(tuple(start), tuple(stop), np.ascontiguousarray(new[box_slices(start, stop)]), size, labels or {})

    # ----- use --------------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        """True when the box holds no voxels."""
        return self.mask.size == 0

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """numpy slices ``[k, j, i]`` of the box."""
        return box_slices(self.start, self.stop)

    def paste(self, into: np.ndarray, value: int | None = None) -> np.ndarray:
        """Apply the delta to a full ``[k, j, i]`` array in place and return it.

        With ``value`` the delta is one object written into a multi-label map: inside the box, voxels
        of the mask become ``value`` and voxels that were ``value`` but are no longer masked become 0
        (other labels are kept). Without ``value`` the box is overwritten with the mask's values.
        """
        if tuple(into.shape[::-1]) != self.image_size:
            raise MaskDeltaError(
                f"the delta was made for a volume of size [i, j, k] = {list(self.image_size)}, "
                f"not {list(into.shape[::-1])}"
            )
        if self.is_empty:
            return into
        region = into[self.slices]
        if value is None:
            region[...] = self.mask
        else:
            on = self.mask != 0
            region[(region == value) & ~on] = 0
            region[on] = value
        return into

    def to_full(self, dtype=np.uint8) -> np.ndarray:
        """The delta pasted into a zero volume of ``image_size`` (``[k, j, i]``)."""
        out = np.zeros(self.image_size[::-1], dtype=dtype)
        return self.paste(out)

    # ----- encoding ---------------------------------------------------------------------------------
    def encode(self, *, level: int = 1) -> bytes:
        """Compact binary form (bit-packed when the mask is 0/1, zlib-compressed)."""
        m = self.mask
        binary = m.size == 0 or int(m.max()) <= 1
        raw = np.packbits(m.ravel()).tobytes() if binary else m.tobytes()
        payload = zlib.compress(raw, level)
        codec = CODEC_ZLIB
        if len(payload) >= len(raw):
            payload, codec = raw, CODEC_RAW
        lab = json.dumps({str(k): v for k, v in self.labels.items()}).encode() if self.labels else b""
        header = _HEADER.pack(MAGIC, VERSION, codec, 1 if binary else 0, 0, *self.start, *self.stop,
                              *self.image_size, len(lab), len(payload))
        return header + lab + payload

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, *, max_voxels: int | None = None) -> MaskDelta:
        """Parse :meth:`encode`'s bytes; any corrupt, truncated or foreign input raises :class:`MaskDeltaError`.

        ``max_voxels`` refuses a box holding more voxels (e.g. the receiving volume's size) before anything
        is decompressed.
        """
        buf = memoryview(data)
        if len(buf) < _HEADER.size:
            raise MaskDeltaError(f"mask delta too short ({len(buf)} bytes; the header alone is {_HEADER.size})")
        magic, version, codec, packing, _, *rest = _HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise MaskDeltaError("not a claraseg mask delta (bad magic bytes)")
        if version != VERSION:
            raise MaskDeltaError(f"mask delta version {version} is not supported (this claraseg reads version {VERSION}); "
                                 "update claraseg on the client or the server")
        start, stop, size = tuple(rest[0:3]), tuple(rest[3:6]), tuple(rest[6:9])
        nlab, npay = rest[9], rest[10]
        off = _HEADER.size
        if len(buf) != off + nlab + npay:
            raise MaskDeltaError(f"mask delta length {len(buf)} does not match its header ({off + nlab + npay})")
        labels = {}
        if nlab:
            try:
                labels = {int(k): str(v) for k, v in json.loads(bytes(buf[off:off + nlab])).items()}
            except (ValueError, AttributeError, TypeError, RecursionError) as e:
                raise MaskDeltaError(f"mask delta label names are corrupt ({type(e).__name__})") from None
        payload = buf[off + nlab:]
        if any(s < 0 or e < s or e > n for s, e, n in zip(start, stop, size)) or min(size) < 0:
            raise MaskDeltaError(f"mask delta box {list(start)}..{list(stop)} does not fit size {list(size)}")
        shape = (stop[2] - start[2], stop[1] - start[1], stop[0] - start[0])
        n = int(np.prod(shape, dtype=np.int64))
        if n > 1024**3 or (max_voxels is not None and n > max_voxels):
            raise MaskDeltaError(f"mask delta box of {n:,} voxels is larger than the volume it is meant for")
        if codec == CODEC_ZLIB:
            try:
                d = zlib.decompressobj()
                raw = d.decompress(payload, n + 16)
            except zlib.error as e:
                raise MaskDeltaError(f"mask delta payload is corrupt ({e})") from None
        elif codec == CODEC_RAW:
            raw = payload
        else:
            raise MaskDeltaError(f"unknown mask delta codec {codec}")
        if packing not in (0, 1):
            raise MaskDeltaError(f"unknown mask delta packing {packing}")
        if packing == 1:
            if len(raw) != (n + 7) // 8:
                raise MaskDeltaError("mask delta payload size does not match its box")
            flat = np.unpackbits(np.frombuffer(raw, np.uint8), count=n)
        else:
            if len(raw) != n:
                raise MaskDeltaError("mask delta payload size does not match its box")
            flat = np.frombuffer(raw, np.uint8)
        return cls(start, stop, flat.reshape(shape), size, labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskDelta):
            return NotImplemented
        return (self.start == other.start and self.stop == other.stop and self.image_size == other.image_size
                and self.labels == other.labels and np.array_equal(self.mask, other.mask))

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload

    def __repr__(self) -> str:
        return f"MaskDelta(start={list(self.start)}, stop={list(self.stop)}, voxels={int(np.count_nonzero(self.mask))})"
