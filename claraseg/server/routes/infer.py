"""``/infer/{model}``: MONAI Label's one-shot inference on a datastore image, a session or an upload.

Clicks come in ``params`` (JSON form field) as ``foreground``/``background`` lists of ``[i, j, k]``; DEXTR3D
takes ``points`` (AIAA's name) or ``foreground``. The call is stateless: it runs on a fresh object that is
discarded afterwards. The answer is MONAI Label's multipart form (``params`` JSON + the label file), or the
file alone (``output=image``), a MaskDelta (``output=delta``) or the JSON summary (``output=json``).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from claraseg.errors import (
    DatastoreNotFoundError,
    InvalidPointsError,
    RequestTooLargeError,
    SessionExpiredError,
    SessionNotFoundError,
    UnsupportedMediaTypeError,
)
from claraseg.io import Image, LabelInfo, MaskDelta, check_points_inside, write_image
from claraseg.io.maskdelta import MEDIA_TYPE

from ..context import ServerContext, get_ctx, require_token
from ..datastore import check_id
from ..schemas import ERROR_RESPONSES, MAX_POINTS
from ..sessions import SessionEntry
from ..uploads import form_file, image_from_file_bytes, media_type, parse_params, read_body
from .session import open_backend_session

router = APIRouter(prefix="/infer", tags=["infer"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
async def _params_and_upload(request: Request, ctx: ServerContext) -> tuple[dict, Image | None]:
    mt = media_type(request)
    upload = None
    if mt == "multipart/form-data":
        file, fields = await form_file(request, ("file", "image"), required=False)
        raw = fields.get("params", "{}")
        if file is not None:
            limit = ctx.settings.max_upload_bytes
            data = await ctx.pool.run(file.file.read, limit + 1)
            if len(data) > limit:
                raise RequestTooLargeError(f"the file exceeds the limit of {limit / 2**20:.0f} MiB")
            upload = await ctx.pool.run(image_from_file_bytes, data, file.filename or "", limit)
    elif mt in ("application/x-www-form-urlencoded",):
        raw = (await request.form(max_files=0, max_fields=16)).get("params", "{}")
    elif mt in ("", "application/json"):
        body = await read_body(request, ctx.settings.max_body_bytes)
        raw = body.decode("utf-8", "replace") if body else "{}"
    else:
        raise UnsupportedMediaTypeError(f"content type {mt!r} is not accepted by /infer; send a form with 'params'")
    return parse_params(raw), upload


def _points(params: dict, key: str, size, what: str) -> list[list[int]]:
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_POINTS:
        raise InvalidPointsError(f"params.{key} must be a list of at most {MAX_POINTS} [i, j, k] voxel indices")
    return check_points_inside(size, value, what).tolist()


def _slice_axis(params: dict, kind: str) -> int | None:
    """``slice_axis`` (0, 1, 2), or 2 when a 2D model gets MONAI Label's ``slice`` (an axial slice index) alone."""
    axis = params.get("slice_axis")
    if axis is None:
        return 2 if kind == "deepgrow2d" and params.get("slice") is not None else None
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in (0, 1, 2):
        raise InvalidPointsError("params.slice_axis must be 0 (i), 1 (j) or 2 (k)")
    return axis


def _run(ctx: ServerContext, entry: SessionEntry, model: str, params: dict) -> MaskDelta:
    d = ctx.model(model)
    size = entry.image_size
    fg = _points(params, "foreground", size, "foreground click")
    bg = _points(params, "background", size, "background click")
    axis = _slice_axis(params, d.kind)
    obj = f"infer-{uuid.uuid4().hex[:12]}"
    with entry.lock:
        s = entry.session
        if d.kind == "segmentation":
            return s.auto_segment(model)
        try:
            if d.kind == "dextr3d":
                pts = _points(params, "points", size, "extreme point") or fg
                if len(pts) < d.min_points:
                    raise InvalidPointsError(f"model {model!r} needs at least {d.min_points} points in params.points "
                                             "(or as foreground clicks)")
                return s.extreme_points(model, pts, object_id=obj)
            if not fg and not bg:
                raise InvalidPointsError("params needs 'foreground' and/or 'background' lists of [i, j, k]")
            return s.click(model, fg, bg, object_id=obj, slice_axis=axis)
        finally:
            s.clear(obj)


def _datastore_session(ctx: ServerContext, image_id: str) -> SessionEntry:
    sid = ctx.image_sessions.get(image_id)
    if sid:
        try:
            return ctx.sessions.get(sid)
        except (SessionExpiredError, SessionNotFoundError):
            ctx.image_sessions.pop(image_id, None)
    if ctx.datastore is None:
        raise DatastoreNotFoundError("this server has no datastore; pass session_id or upload a file")
    entry = open_backend_session(ctx, ctx.datastore.read_image(image_id), None, f"datastore:{image_id}")
    ctx.image_sessions[image_id] = entry.id
    return entry


def _result_file(delta: MaskDelta, entry: SessionEntry, ext: str, dtype: str) -> bytes:
    full = delta.to_full()
    if dtype != "uint8":
        full = full.astype(dtype)
    g = entry.geometry
    labels = {k: LabelInfo(v) for k, v in delta.labels.items()} or {1: LabelInfo("object")}
    img = Image(full, np.array(g["origin"]), np.array(g["spacing"]), np.array(g["direction"]), labels)
    with tempfile.TemporaryDirectory(prefix="claraseg-infer-") as tmp:
        path = write_image(img if ext not in (".nii", ".nii.gz") else img.with_array(full, labels={}),
                           os.path.join(tmp, "label" + ext))
        return path.read_bytes()


def _multipart(params: dict, filename: str, data: bytes) -> tuple[bytes, str]:
    """MONAI Label's infer answer: a ``params`` JSON part and the label file part."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


INFER_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "params": {"type": "string", "description": "JSON object: foreground, background, points, slice_axis, slice, "
                                                    "result_extension, result_dtype"},
        "file": {"type": "string", "format": "binary", "description": "an image to run on instead of ?image="},
        "label": {"type": "string", "format": "binary", "description": "accepted and ignored (MONAI Label's field)"},
    }}},
    "application/json": {"schema": {"type": "object"}},
}, "required": False}}


@router.post("/{model}", summary="One-shot inference (MONAI Label compatible)", openapi_extra=INFER_BODY,
             responses={200: {"content": {"multipart/form-data": {}, "application/gzip": {}, MEDIA_TYPE: {},
                                          "application/json": {}}}})
async def run_inference(model: str, request: Request, image: str = "", session_id: str = "",
                        output: Optional[str] = Query(None, pattern="^(image|delta|json|all)$"),
                        ctx: ServerContext = Depends(get_ctx)) -> Response:
    """Runs on ``?session_id=``, an uploaded ``file`` (it wins over ``?image=``, as in MONAI Label's client),
    or the datastore's ``?image=``. The answer is MONAI Label's default, a multipart form of ``params`` (JSON:
    label names, box, voxel count) and the label file (``params.result_extension``, default ``.nii.gz``;
    ``params.result_dtype``, default ``uint8``); ``output=image`` the file alone, ``output=json`` the params
    alone, ``output=delta`` a MaskDelta."""
    ctx.model(model)
    params, upload = await _params_and_upload(request, ctx)
    ext = params.get("result_extension") or ".nii.gz"
    dtype = params.get("result_dtype") or "uint8"
    if ext not in RESULT_EXTENSIONS or dtype not in RESULT_DTYPES:
        raise InvalidPointsError(f"params.result_extension must be one of {list(RESULT_EXTENSIONS)} and "
                                 f"params.result_dtype one of {list(RESULT_DTYPES)}")
    transient = None
    if session_id:
        entry = ctx.sessions.get(session_id)
    elif upload is not None:
        entry = transient = await ctx.pool.run(open_backend_session, ctx, upload, None, "infer")
    elif image:
        check_id(image, "image id")
        entry = await ctx.pool.run(_datastore_session, ctx, image)
    else:
        raise InvalidPointsError("give ?image=<datastore id>, ?session_id=<session> or a 'file' upload")
    del upload
    try:
        delta = await ctx.pool.run(_run, ctx, entry, model, params)
        if output == "delta":
            return Response(delta.encode(), media_type=MEDIA_TYPE)
        labels = delta.labels or {1: "object"}
        summary = {"model": model, "label_names": {v: int(k) for k, v in sorted(labels.items())},
                   "start": list(delta.start), "stop": list(delta.stop), "image_size": list(delta.image_size),
                   "voxels": int(np.count_nonzero(delta.mask)), "result_extension": ext, "result_dtype": dtype}
        if output == "json":
            return Response(json.dumps(summary), media_type="application/json")
        data = await ctx.pool.run(_result_file, delta, entry, ext, dtype)
        filename = f"label{ext}"
        if output == "image":
            return Response(data, media_type="application/gzip" if ext.endswith(".gz") or ext.endswith("nrrd")
                            else "application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body, content_type = _multipart(summary, filename, data)
        return Response(body, media_type=content_type)
    finally:
        if transient is not None:
            await ctx.pool.run(ctx.sessions.remove, transient.id)
