"""Turning request bodies into images: raw claraseg volumes, NIfTI/NRRD files (multipart or plain), gzip."""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from claraseg.client.wire import VOLUME_MEDIA_TYPE, decode_volume
from claraseg.errors import (
    ImageReadError,
    InvalidImageError,
    InvalidPointsError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from claraseg.io import Image
from claraseg.io.safe import UPLOAD_FORMATS, gunzip_bounded, read_upload, upload_format

#: File types accepted in uploads (a trailing ``.gz`` is accepted on all but ``.nii.gz``).
FILE_EXTENSIONS = tuple(UPLOAD_FORMATS)
FILE_MEDIA_TYPES = ("application/octet-stream", "application/gzip", "application/x-gzip")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


#: Largest text field of a multipart form (``params``).
MAX_FIELD_BYTES = 1 << 20


async def read_body(request: Request, limit: int, run: Callable[..., Awaitable[Any]] | None = None) -> bytearray:
    """The whole body, gunzipped when ``Content-Encoding: gzip`` (off the event loop when ``run`` is given).

    The body is collected chunk by chunk as it arrives, bounded by ``limit``; ``Content-Length`` is never
    trusted for an allocation (a client may announce a gigabyte and send a hundred bytes).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip"):
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not accepted; send gzip or nothing")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise RequestTooLargeError(f"the request body exceeds the limit of {limit / 2**20:.0f} MiB")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) != len(buf):
        raise InvalidImageError(f"the body ended after {len(buf)} of the {int(declared)} bytes announced")
    if encoding == "gzip":
        return await run(gunzip, buf, limit) if run is not None else gunzip(buf, limit)
    return buf


def gunzip(data: bytes | bytearray, limit: int) -> bytearray:
    """Decompress one gzip stream, refusing more than ``limit`` bytes of output (no decompression bombs)."""
    return bytearray(gunzip_bounded(data, limit, "the gzip body"))


def check_filename(filename: str | None, default: str = "image.nii.gz") -> str:
    """A safe file name whose extension says the format; raises for unknown formats."""
    name = Path(filename or default).name or default
    upload_format(name)
    return name


def image_from_file_bytes(data: bytes | bytearray, filename: str, limit: int, *, label: bool = False) -> Image:
    """Parse uploaded file bytes (format from ``filename``) into an :class:`Image` (:func:`read_upload`)."""
    return read_upload(data, check_filename(filename), limit, label=label)


async def form_file(request: Request, names: tuple[str, ...], *, required: bool = True) -> tuple[UploadFile | None, dict]:
    """The first file among form fields ``names`` and the other (text) fields of a multipart body."""
    try:
        form = await request.form(max_files=4, max_fields=32, max_part_size=MAX_FIELD_BYTES)
    except RequestTooLargeError:
        raise
    except Exception as e:  # starlette raises its own parse errors for malformed multipart bodies
        raise InvalidImageError(f"the multipart form is malformed ({str(e)[:200]})") from None
    file = None
    for n in names:
        v = form.get(n)
        if isinstance(v, UploadFile):
            file = v
            break
    if file is None and required:
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
        return await run(decode_volume, await read_body(request, limit, run)), {}
    if mt == "multipart/form-data":
        file, fields = await form_file(request, file_fields)
        data = await run(file.file.read, limit + 1)
        if len(data) > limit:
            raise RequestTooLargeError(f"the file exceeds the limit of {limit / 2**20:.0f} MiB")
        return await run(image_from_file_bytes, data, file.filename or "", limit, label=label), fields
    if mt in FILE_MEDIA_TYPES:
        name = request.query_params.get("filename")
        if not name:
            raise UnsupportedMediaTypeError("a plain file upload needs ?filename=NAME.nii.gz to tell its format")
        check_filename(name)
        return await run(image_from_file_bytes, await read_body(request, limit, run), name, limit, label=label), {}
    raise UnsupportedMediaTypeError(
        f"content type {mt or 'none'!r} is not accepted here; send multipart/form-data with a file, "
        f"{VOLUME_MEDIA_TYPE}, or application/octet-stream with ?filename="
    )


def parse_params(raw, what: str = "params", error: type = InvalidPointsError) -> dict:
    """A JSON object from a form field; malformed, deeply nested or non-object input is a 400."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str) or len(raw) > MAX_FIELD_BYTES:
        raise error(f"'{what}' must be a JSON object of at most {MAX_FIELD_BYTES:,} characters")
    try:
        params = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise error(f"'{what}' is not valid JSON ({type(e).__name__})") from None
    if not isinstance(params, dict):
        raise error(f"'{what}' must be a JSON object")
    return params


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)
