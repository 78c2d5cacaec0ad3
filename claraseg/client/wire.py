"""What travels between :class:`~claraseg.client.RemoteBackend` and the server, besides JSON.

An image is sent once per session as raw voxels plus geometry (``application/x-claraseg-volume``),
little-endian::

    magic b"CSVL" | u8 version | 3 x u8 reserved | u32 header_len | header JSON (UTF-8) | voxels

The header holds ``dtype`` (numpy name), ``size_ijk``, ``origin``, ``spacing`` and ``direction``
(row-major 3x3, LPS); the voxels are the C-ordered ``[k, j, i]`` array. Either side may gzip the whole
body (``Content-Encoding: gzip``). Interaction results come back as :class:`~claraseg.io.MaskDelta`
bytes (``application/x-claraseg-maskdelta``).

This module has no server dependency, so the client (Slicer's Python) needs only numpy and requests.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from claraseg.errors import InvalidImageError
from claraseg.io import Image
from claraseg.io.maskdelta import MEDIA_TYPE as MASKDELTA_MEDIA_TYPE

VOLUME_MEDIA_TYPE = "application/x-claraseg-volume"
_MAGIC = b"CSVL"
_VERSION = 1
_PREFIX = struct.Struct("<4sB3xI")
#: Voxel types accepted on the wire (anything else is converted by the sender).
WIRE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_MAX_HEADER = 64 * 1024

__all__ = ["MASKDELTA_MEDIA_TYPE", "VOLUME_MEDIA_TYPE", "WIRE_DTYPES", "decode_volume", "encode_volume_parts"]


def encode_volume_parts(image: Image) -> tuple[bytes, memoryview]:
    """The body of a volume upload as (prefix + header, voxel buffer); sent back to back without a copy."""
    a = image.array
    if a.dtype.name not in WIRE_DTYPES:
        a = a.astype(np.int32 if np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 4 else np.float32)
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    header = json.dumps({
        "dtype": a.dtype.name,
        "size_ijk": list(image.size_ijk),
        "origin": [float(v) for v in image.origin],
        "spacing": [float(v) for v in image.spacing],
        "direction": [float(v) for v in image.direction.ravel()],
    }).encode()
    # Pad the header with spaces so the voxels start 64-byte aligned in the body (numpy reads them in place).
    header += b" " * (-(_PREFIX.size + len(header)) % 64)
    return _PREFIX.pack(_MAGIC, _VERSION, len(header)) + header, memoryview(a).cast("B")


def decode_volume(data: bytes | bytearray | memoryview) -> Image:
    """Parse a volume body (already un-gzipped); raises :class:`InvalidImageError` with the reason."""
    buf = memoryview(data)
    if len(buf) < _PREFIX.size:
        raise InvalidImageError(f"volume body too short ({len(buf)} bytes); expected a claraseg volume header")
    magic, version, nheader = _PREFIX.unpack_from(buf)
    if magic != _MAGIC:
        raise InvalidImageError("not a claraseg volume (bad magic bytes); send NIfTI/NRRD as a file upload instead")
    if version != _VERSION:
        raise InvalidImageError(f"volume encoding version {version} is not supported (this server reads {_VERSION})")
    if nheader > _MAX_HEADER or _PREFIX.size + nheader > len(buf):
        raise InvalidImageError(f"volume header length {nheader} is invalid for a body of {len(buf)} bytes")
    try:
        h = json.loads(bytes(buf[_PREFIX.size:_PREFIX.size + nheader]))
        dtype = np.dtype(str(h["dtype"]))
        size = [int(v) for v in h["size_ijk"]]
        origin, spacing = [float(v) for v in h["origin"]], [float(v) for v in h["spacing"]]
        direction = [float(v) for v in h["direction"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidImageError(f"volume header is malformed ({type(e).__name__}: {e})") from None
    if dtype.name not in WIRE_DTYPES:
        raise InvalidImageError(f"voxel type {dtype.name!r} is not accepted; use one of {', '.join(WIRE_DTYPES)}")
    if len(size) != 3 or any(n < 1 or n > 4096 for n in size):
        raise InvalidImageError(f"size_ijk {size} is invalid: three sizes, each 1..4096")
    if len(origin) != 3 or len(spacing) != 3 or len(direction) != 9:
        raise InvalidImageError("origin and spacing need 3 values and direction 9 (row-major 3x3)")
    payload = buf[_PREFIX.size + nheader:]
    expected = int(np.prod(size, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise InvalidImageError(
            f"the volume holds {len(payload):,} bytes of voxels but size {size} of {dtype.name} needs {expected:,}"
        )
    arr = np.frombuffer(payload, dtype=dtype.newbyteorder("<")).reshape(size[::-1])
    if not arr.flags.aligned:  # a sender that did not pad its header: copy once rather than compute misaligned
        arr = arr.copy()
    image = Image(arr, np.array(origin), np.array(spacing), np.array(direction).reshape(3, 3))
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InvalidImageError("the volume holds NaN or infinite voxels; replace them before uploading")
    return image
