"""Reading images that arrive over the network: self-contained files only, sizes checked before allocating.

:func:`read_upload` takes the bytes sent and the name they came with and answers an :class:`Image` or a
typed error, never a read of another file and never an allocation the header did not justify:

- the format comes from the name (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.seg.nrrd``, MetaImage
  ``.mha``; other formats may be gzipped as a whole, ``.nrrd.gz``), and the bytes must be that format:
  SimpleITK is told which reader to use, so a DICOM or NRRD file named ``.nii`` is refused;
- the header is parsed here first. Anything that names another file is refused: NIfTI pairs
  (``ni1``/``ni2`` magic, Analyze), NRRD ``data file:`` (and ``LIST``), MetaImage ``ElementDataFile``
  other than ``LOCAL``. So are encodings and types the server does not read;
- voxel count x voxel size from the header must fit ``max_bytes`` and :data:`MAX_VOXELS` before any
  voxel is decompressed or allocated; gzip is decompressed with a bound derived from the header, and a
  stream of several gzip members (or trailing bytes) is refused rather than cut to its first member;
- NIfTI spacing (``pixdim``) must be finite and positive (ITK would store 0/NaN as 1.0 and turn a negative
  one into a flipped direction), scaling finite, and float voxels finite (checked on the raw bytes).
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import zlib

import numpy as np

from claraseg.errors import (
    ImageReadError,
    InvalidImageError,
    RequestTooLargeError,
    StorageFullError,
    UnsupportedMediaTypeError,
)
from claraseg.io.image import MAX_VOXELS, Image

#: Upload formats and the SimpleITK reader each must be read with.
UPLOAD_FORMATS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".seg.nrrd": "NrrdImageIO",
                  ".nrrd": "NrrdImageIO", ".mha": "MetaImageIO"}
MAX_TEXT_HEADER = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def upload_format(filename: str) -> tuple[str, bool]:
    """(format extension, whether the whole file is gzipped) of an upload's name; raises for other names."""
    low = os.path.basename(filename or "").lower()
    outer = low.endswith(".gz") and not low.endswith(".nii.gz")
    base = low[:-3] if outer else low
    for ext in UPLOAD_FORMATS:
        if base.endswith(ext):
            return ext, outer
    raise UnsupportedMediaTypeError(
        f"cannot tell the format of {os.path.basename(filename or '')[:80]!r}; upload NIfTI (.nii, .nii.gz), NRRD "
        "(.nrrd, .seg.nrrd) or MetaImage (.mha, with its voxels inside: ElementDataFile = LOCAL), optionally gzipped"
    )


def gunzip_bounded(data: bytes | bytearray | memoryview, limit: int, what: str = "the gzip data") -> bytes:
    """Decompress one gzip member of at most ``limit`` bytes; refuse more, several members or trailing bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise InvalidImageError(f"{what} is corrupt ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise RequestTooLargeError(f"{what} inflates beyond {limit:,} bytes, more than its header announces or the "
                                   "server accepts")
    if not d.eof:
        raise InvalidImageError(f"{what} is truncated (the gzip stream ends early)")
    if d.unused_data.strip(b"\x00"):
        raise InvalidImageError(f"{what} holds several gzip members or trailing bytes; re-compress it as one stream")
    return out


def _gunzip_prefix(data: bytes | bytearray | memoryview, n: int, what: str) -> bytes:
    """The first ``n`` decompressed bytes (or fewer, if the stream is shorter)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, n)
    except zlib.error as e:
        raise InvalidImageError(f"{what} is corrupt ({e})") from None


def _check_size(name: str, sizes: list[int], itemsize: int, max_bytes: int) -> int:
    if any(s < 1 for s in sizes):
        raise InvalidImageError(f"{name}: the header declares an empty or negative size {sizes}")
    voxels = math.prod(sizes)
    nbytes = voxels * itemsize
    if voxels > MAX_VOXELS:
        raise InvalidImageError(f"{name}: the header declares {voxels:,} voxels, more than the {MAX_VOXELS:,} "
                                "supported; crop or downsample it first")
    if nbytes > max_bytes:
        raise RequestTooLargeError(f"{name}: the header declares {nbytes:,} bytes of voxels ({sizes}), more than "
                                   f"this server's limit of {max_bytes:,}; crop or downsample it first")
    return nbytes


# ----- NIfTI -----------------------------------------------------------------------------------------
#: NIfTI datatype code -> (numpy type, bytes per voxel); complex, RGB and 128-bit types are refused.
NIFTI_TYPES = {2: ("u1", 1), 4: ("i2", 2), 8: ("i4", 4), 16: ("f4", 4), 64: ("f8", 8), 256: ("i1", 1),
               512: ("u2", 2), 768: ("u4", 4), 1024: ("i8", 8), 1280: ("u8", 8)}


def _nifti_header(head: bytes, name: str) -> dict:
    """The fields of a single-file NIfTI-1/2 header needed to size and check it."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack_from(e + "i", head, 0)[0] == 348:
            magic = head[344:348]
            dims = struct.unpack_from(e + "8h", head, 40)
            dtype, bitpix = struct.unpack_from(e + "2h", head, 70)
            pixdim = struct.unpack_from(e + "8f", head, 76)
            (offset,) = struct.unpack_from(e + "f", head, 108)
            slope, inter = struct.unpack_from(e + "2f", head, 112)
            single, pair, hsize = b"n+1\x00", b"ni1\x00", 348
            break
        if len(head) >= 540 and struct.unpack_from(e + "i", head, 0)[0] == 540:
            magic = head[4:8]
            dtype, bitpix = struct.unpack_from(e + "2h", head, 12)
            dims = struct.unpack_from(e + "8q", head, 16)
            pixdim = struct.unpack_from(e + "8d", head, 104)
            (offset,) = struct.unpack_from(e + "q", head, 168)
            slope, inter = struct.unpack_from(e + "2d", head, 176)
            single, pair, hsize = b"n+2\x00", b"ni2\x00", 540
            break
    else:
        raise InvalidImageError(f"{name}: not a NIfTI file (no NIfTI-1/2 header); is it DICOM or another format "
                                "under a .nii name? Convert it to NIfTI, or upload it under its own extension")
    if magic[:3] == pair[:3]:
        raise InvalidImageError(f"{name}: a NIfTI header whose voxels live in a separate .img file; upload a "
                                "single-file .nii/.nii.gz")
    if magic[:3] != single[:3]:
        raise InvalidImageError(f"{name}: no NIfTI magic (an Analyze .hdr/.img pair?); upload a single-file .nii")
    return {"endian": e, "dims": dims, "dtype": dtype, "bitpix": bitpix, "pixdim": pixdim, "offset": offset,
            "slope": slope, "inter": inter, "hsize": hsize}


def _check_nifti(raw: bytes | memoryview, name: str, max_bytes: int, head: bytes | None = None) -> int:
    """Check a NIfTI header (and, with ``raw``, its voxels); returns the file's expected length."""
    h = _nifti_header(bytes(head if head is not None else raw[:540]), name)
    ndim = int(h["dims"][0])
    if not 2 <= ndim <= 7:
        raise InvalidImageError(f"{name}: the NIfTI header declares {ndim} dimensions")
    sizes = [int(v) for v in h["dims"][1:1 + ndim]]
    if any(s != 1 for s in sizes[3:]):
        raise InvalidImageError(f"{name}: a {ndim}D image of size {sizes}; a 3D volume is required")
    if h["dtype"] not in NIFTI_TYPES:
        raise InvalidImageError(f"{name}: NIfTI datatype {h['dtype']} is not supported (complex or RGB?); a scalar "
                                "integer or float volume is required")
    np_type, itemsize = NIFTI_TYPES[h["dtype"]]
    nbytes = _check_size(name, sizes, itemsize, max_bytes)
    spacing = [float(v) for v in h["pixdim"][1:1 + min(ndim, 3)]]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise InvalidImageError(f"{name}: voxel spacing (pixdim) {spacing} must be finite and positive")
    if h["slope"] != 0 and not (math.isfinite(h["slope"]) and math.isfinite(h["inter"])):
        raise InvalidImageError(f"{name}: the intensity scaling (scl_slope/scl_inter) is not finite")
    offset = int(h["offset"]) if math.isfinite(h["offset"]) else -1
    if offset < h["hsize"] or offset > MAX_TEXT_HEADER:
        raise InvalidImageError(f"{name}: implausible voxel offset {h['offset']}")
    end = offset + nbytes
    if raw is not None and head is None:
        if len(raw) < end:
            raise ImageReadError(f"{name}: the file is truncated ({len(raw):,} of {end:,} bytes); get it again")
        if np_type[0] == "f":
            _check_finite_bytes(raw[offset:end], np.dtype(h["endian"] + np_type), name)
    return end


def _check_finite_bytes(buf, dtype: np.dtype, name: str) -> None:
    """Refuse NaN/inf voxels, checked in slices of the raw buffer (no copy of the volume)."""
    a = np.frombuffer(buf, dtype=dtype)
    step = 1 << 22
    for i in range(0, a.size, step):
        if not np.isfinite(a[i:i + step]).all():
            raise InvalidImageError(f"{name}: the image holds NaN or infinite voxels; replace them (e.g. with the "
                                    "minimum intensity) before uploading")


# ----- NRRD and MetaImage (text headers) ---------------------------------------------------------------
NRRD_TYPES = {}
for _names, _size in ((("signed char", "int8", "int8_t"), 1), (("uchar", "unsigned char", "uint8", "uint8_t"), 1),
                      (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
                      (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
                      (("int", "signed int", "int32", "int32_t"), 4), (("uint", "unsigned int", "uint32", "uint32_t"), 4),
                      (("longlong", "long long", "long long int", "signed long long", "signed long long int",
                        "int64", "int64_t"), 8),
                      (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), 8),
                      (("float",), 4), (("double",), 8)):
    for _n in _names:
        NRRD_TYPES[_n] = _size
META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _text_header(raw: bytes | memoryview, name: str, end_marker: bytes | None) -> str:
    head = bytes(raw[:MAX_TEXT_HEADER])
    if end_marker is not None:
        cut = head.find(end_marker)
        if cut < 0:
            raise InvalidImageError(f"{name}: no end of the header within {MAX_TEXT_HEADER:,} bytes")
        head = head[:cut]
    return head.decode("latin-1")


def _floats(text: str, name: str, what: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[\s,()]+", text.strip()) if v]
    except ValueError:
        raise InvalidImageError(f"{name}: the header's {what} is not a list of numbers") from None


def _check_nrrd(raw: bytes | memoryview, name: str, max_bytes: int) -> None:
    if not bytes(raw[:4]) == b"NRRD":
        raise InvalidImageError(f"{name}: not an NRRD file (no NRRD magic)")
    text = _text_header(raw, name, b"\n\n" if b"\n\n" in bytes(raw[:MAX_TEXT_HEADER]) else b"\r\n\r\n")
    fields: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line and ":" not in line.split(":=", 1)[0]:  # a key/value pair (metadata), not a field
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise InvalidImageError(f"{name}: malformed NRRD header line {line[:60]!r}")
        fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise InvalidImageError(f"{name}: a detached NRRD header (data file: ...) names another file; upload a "
                                "single .nrrd with its voxels inside")
    for k in ("line skip", "lineskip", "byte skip", "byteskip"):
        if k in fields:
            raise InvalidImageError(f"{name}: NRRD '{k}' is not accepted in uploads")
    enc = fields.get("encoding", "").lower()
    if enc not in ("raw", "gzip", "gz"):
        raise InvalidImageError(f"{name}: NRRD encoding {enc!r} is not accepted; save it raw or gzip-compressed")
    itemsize = NRRD_TYPES.get(fields.get("type", "").lower())
    if itemsize is None:
        raise InvalidImageError(f"{name}: NRRD type {fields.get('type', '')!r} is not a scalar voxel type")
    try:
        dim = int(fields.get("dimension", "0"))
        sizes = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        raise InvalidImageError(f"{name}: the NRRD dimension/sizes fields are not integers") from None
    if not 2 <= dim <= 4 or len(sizes) != dim:
        raise InvalidImageError(f"{name}: NRRD dimension {dim} with sizes {sizes}; a 3D volume is required")
    _check_size(name, sizes, itemsize, max_bytes)
    if "spacings" in fields:
        spacing = _floats(fields["spacings"], name, "spacings")
        spatial = [v for v in spacing if not math.isnan(v)] if dim > 3 else spacing
        if len(spatial) < 3 or not all(math.isfinite(v) and v > 0 for v in spatial):
            raise InvalidImageError(f"{name}: NRRD spacings {fields['spacings'][:80]!r} must be finite and positive")
    if "space directions" in fields:
        for vec in re.findall(r"\(([^)]*)\)", fields["space directions"]):
            v = _floats(vec, name, "space directions")
            norm = math.sqrt(sum(x * x for x in v)) if all(math.isfinite(x) for x in v) else float("nan")
            if not (math.isfinite(norm) and norm > 0):
                raise InvalidImageError(f"{name}: an NRRD space direction {vec[:60]!r} is zero or not finite")


def _check_mha(raw: bytes | memoryview, name: str, max_bytes: int) -> None:
    head = bytes(raw[:MAX_TEXT_HEADER])
    m = re.search(rb"^\s*ElementDataFile\s*[=:]\s*([^\r\n]*)", head, re.MULTILINE | re.IGNORECASE)
    if m is None:
        raise InvalidImageError(f"{name}: not a MetaImage file (no ElementDataFile line in its header)")
    if m.group(1).strip().upper() != b"LOCAL":
        raise InvalidImageError(f"{name}: the MetaImage header names another file for its voxels (ElementDataFile = "
                                f"{m.group(1).strip()[:60].decode('latin-1')!r}); upload a .mha with "
                                "ElementDataFile = LOCAL")
    fields: dict[str, str] = {}
    for line in head[:m.start()].decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("headersize", "0").strip() not in ("0", ""):
        raise InvalidImageError(f"{name}: MetaImage HeaderSize is not accepted in uploads")
    itemsize = META_TYPES.get(fields.get("elementtype", "").upper())
    if itemsize is None:
        raise InvalidImageError(f"{name}: MetaImage ElementType {fields.get('elementtype', '')!r} is not supported")
    try:
        ndims = int(fields.get("ndims", "0"))
        sizes = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise InvalidImageError(f"{name}: MetaImage NDims/DimSize/ElementNumberOfChannels are not integers") from None
    if not 2 <= ndims <= 4 or len(sizes) != ndims or channels < 1:
        raise InvalidImageError(f"{name}: MetaImage NDims {ndims} with DimSize {sizes}; a 3D volume is required")
    _check_size(name, sizes + [channels], itemsize, max_bytes)
    for key in ("elementspacing", "elementsize"):
        if key in fields:
            spacing = _floats(fields[key], name, key)
            if not all(math.isfinite(v) and v > 0 for v in spacing):
                raise InvalidImageError(f"{name}: MetaImage {key} {fields[key][:60]!r} must be finite and positive")


# ----- entry point -------------------------------------------------------------------------------------
def read_upload(data: bytes | bytearray | memoryview, filename: str, max_bytes: int, *, label: bool = False) -> Image:
    """An :class:`Image` from an upload's bytes; every check of the module docstring first."""
    from claraseg.io.readwrite import read_image

    ext, outer = upload_format(filename)
    name = os.path.basename(filename)[:120] or f"upload{ext}"
    raw: bytes | bytearray | memoryview = data
    if not len(raw):
        raise ImageReadError(f"{name}: the upload is empty")
    if outer:
        raw = gunzip_bounded(raw, max_bytes + MAX_TEXT_HEADER, f"{name} (gzip)")
    if ext == ".nii.gz":
        if bytes(raw[:2]) != _GZIP_MAGIC:
            raise InvalidImageError(f"{name}: a .nii.gz name but the bytes are not gzip; name it .nii or compress it")
        end = _check_nifti(None, name, max_bytes, head=_gunzip_prefix(raw, 540, name))
        raw, ext = gunzip_bounded(raw, end + 4, name), ".nii"
    if ext == ".nii":
        _check_nifti(memoryview(raw), name, max_bytes)
    elif ext in (".nrrd", ".seg.nrrd"):
        _check_nrrd(raw, name, max_bytes)
    else:
        _check_mha(raw, name, max_bytes)
    try:
        fd, tmp = tempfile.mkstemp(prefix="claraseg-upload-", suffix=ext)
    except OSError as e:
        raise StorageFullError(f"{name}: no room for the upload's temporary file ({e.strerror})") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        except OSError as e:
            raise StorageFullError(f"{name}: no room for the upload's temporary file ({e.strerror})") from None
        del raw
        try:
            image = read_image(tmp, label=label, imageio=UPLOAD_FORMATS[ext], sidecar=False)
        except (ImageReadError, InvalidImageError) as e:
            raise type(e)(str(e).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)
    image.metadata["source"] = name
    return image
