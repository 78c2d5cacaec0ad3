"""Turning request bodies into images: raw claraseg volumes, NIfTI/NRRD files (multipart or plain), gzip."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from claraseg.client.wire import VOLUME_MEDIA_TYPE, decode_volume
from claraseg.errors import ImageReadError, InvalidImageError, RequestTooLargeError, UnsupportedMediaTypeError
from claraseg.io import Image, read_image
from claraseg.io.readwrite import extension

#: File types accepted in uploads (a trailing ``.gz`` is accepted on all but ``.nii.gz``).
FILE_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
FILE_MEDIA_TYPES = ("application/octet-stream", "application/gzip", "application/x-gzip")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole body in one writable buffer, gunzipped when ``Content-Encoding: gzip``."""
    declared = request.headers.get("content-length")
    buf = bytearray()
    if declared and declared.isdigit():
        buf = bytearray(int(declared))
        n = 0
        async for chunk in request.stream():
            if n + len(chunk) > len(buf):
                raise InvalidImageError("the body is longer than its Content-Length header")
            buf[n:n + len(chunk)] = chunk
            n += len(chunk)
        if n != len(buf):
            raise InvalidImageError(f"the body ended after {n} of the {len(buf)} bytes announced")
    else:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise RequestTooLargeError(f"the request body exceeds the limit of {limit / 2**20:.0f} MiB")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        return gunzip(buf, limit)
    if encoding not in ("identity", ""):
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not accepted; send gzip or nothing")
    return buf


def gunzip(data: bytes | bytearray, limit: int) -> bytearray:
    """Decompress gzip data, refusing more than ``limit`` bytes of output (no decompression bombs)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = bytearray(d.decompress(data, limit + 1))
    except zlib.error as e:
        raise InvalidImageError(f"the gzip data is corrupt ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise RequestTooLargeError(f"the decompressed body exceeds the limit of {limit / 2**20:.0f} MiB")
    if not d.eof:
        raise InvalidImageError("the gzip data is truncated")
    return out


def check_filename(filename: str | None, default: str = "image.nii.gz") -> str:
    """A safe file name whose extension says the format; raises for unknown formats."""
    name = Path(filename or default).name or default
    low = name.lower()
    base = low[:-3] if low.endswith(".gz") and not low.endswith(".nii.gz") else low
    if extension(base) not in FILE_EXTENSIONS:
        raise UnsupportedMediaTypeError(
            f"cannot tell the format of {name!r}; upload NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd) or "
            f"MetaImage (.mha), optionally gzipped (.gz), or raw voxels as {VOLUME_MEDIA_TYPE}"
        )
    return name


def image_from_file_bytes(data: bytes | bytearray, filename: str, limit: int, *, label: bool = False) -> Image:
    """Parse uploaded file bytes (format from ``filename``) into an :class:`Image`."""
    name = check_filename(filename)
    low = name.lower()
    if low.endswith(".gz") and not low.endswith(".nii.gz"):
        data, name = gunzip(data, limit), name[:-3]
    if not data:
        raise ImageReadError(f"{name}: the upload is empty")
    suffix = extension(name)
    fd, tmp = tempfile.mkstemp(prefix="claraseg-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            image = read_image(tmp, label=label)
        except ImageReadError as e:
            raise ImageReadError(str(e).replace(tmp, name)) from None
        except InvalidImageError as e:
            raise InvalidImageError(str(e).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)
    image.metadata["source"] = name
    return image


async def form_file(request: Request, names: tuple[str, ...]) -> tuple[UploadFile, dict]:
    """The first file among form fields ``names`` and the other (text) fields of a multipart body."""
    try:
        form = await request.form(max_files=4, max_fields=32)
    except RequestTooLargeError:
        raise
    except Exception as e:  # starlette raises its own parse errors for malformed multipart bodies
        raise InvalidImageError(f"the multipart form is malformed ({e})") from None
    file = None
    for n in names:
        v = form.get(n)
        if isinstance(v, UploadFile):
            file = v
            break
    if file is None:
        raise ImageReadError(f"the form has no file field named {' or '.join(repr(n) for n in names)}")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return file, fields


async def image_from_request(request: Request, limit: int, run: Callable[..., Awaitable[Any]], *,
                             file_fields: tuple[str, ...] = ("files", "file"), label: bool = False) -> tuple[Image, dict]:
    """Read an image from any accepted body form; returns the image and the form's text fields.

    ``run(fn, *args)`` executes the blocking parsing off the event loop (the server's work pool).
    """
    mt = media_type(request)
    if mt == VOLUME_MEDIA_TYPE:
        return await run(decode_volume, await read_body(request, limit)), {}
    if mt == "multipart/form-data":
        file, fields = await form_file(request, file_fields)
        data = await file.read()
        if len(data) > limit:
            raise RequestTooLargeError(f"the file exceeds the limit of {limit / 2**20:.0f} MiB")
        return await run(image_from_file_bytes, data, file.filename or "", limit, label=label), fields
    if mt in FILE_MEDIA_TYPES:
        name = request.query_params.get("filename")
        if not name:
            raise UnsupportedMediaTypeError("a plain file upload needs ?filename=NAME.nii.gz to tell its format")
        check_filename(name)
        return await run(image_from_file_bytes, await read_body(request, limit), name, limit, label=label), {}
    raise UnsupportedMediaTypeError(
        f"content type {mt or 'none'!r} is not accepted here; send multipart/form-data with a file, "
        f"{VOLUME_MEDIA_TYPE}, or application/octet-stream with ?filename="
    )


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)
