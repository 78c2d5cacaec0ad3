"""``/infer/{model}``: MONAI Label's one-shot inference on a datastore image, a session or an upload.

Clicks come in ``params`` (JSON form field) as ``foreground``/``background`` lists of ``[i, j, k]``; DEXTR3D
takes ``points`` (AIAA's name) or ``foreground``. The call is stateless: it runs on a fresh object that is
discarded afterwards. The answer is the full label as NIfTI (``output=image``, MONAI Label's default),
or a MaskDelta (``output=delta``), or a JSON summary (``output=json``).
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
    SessionExpiredError,
    SessionNotFoundError,
    UnsupportedMediaTypeError,
)
from claraseg.io import Image, LabelInfo, MaskDelta, check_points_inside, write_image
from claraseg.io.maskdelta import MEDIA_TYPE

from ..context import ServerContext, get_ctx, require_token
from ..datastore import check_id
from ..schemas import ERROR_RESPONSES
from ..sessions import SessionEntry
from ..uploads import form_file, image_from_file_bytes, media_type
from .session import open_backend_session

router = APIRouter(prefix="/infer", tags=["infer"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


async def _params_and_upload(request: Request, ctx: ServerContext) -> tuple[dict, Image | None]:
    mt = media_type(request)
    if mt == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=16)
        raw = form.get("params", "{}")
        upload = None
        if form.get("file") is not None and not isinstance(form.get("file"), str):
            file, _ = await form_file(request, ("file",))
            upload = await ctx.pool.run(image_from_file_bytes, await file.read(), file.filename or "",
                                        ctx.settings.max_upload_bytes)
    elif mt in ("application/x-www-form-urlencoded",):
        raw = (await request.form()).get("params", "{}")
        upload = None
    elif mt in ("", "application/json"):
        body = await request.body()
        raw = body.decode("utf-8", "replace") if body else "{}"
        upload = None
    else:
        raise UnsupportedMediaTypeError(f"content type {mt!r} is not accepted by /infer; send a form with 'params'")
    try:
        params = json.loads(raw if isinstance(raw, str) else "{}")
    except ValueError as e:
        raise InvalidPointsError(f"'params' is not valid JSON ({e})") from None
    if not isinstance(params, dict):
        raise InvalidPointsError("'params' must be a JSON object")
    return params, upload


def _run(ctx: ServerContext, entry: SessionEntry, model: str, params: dict) -> MaskDelta:
    d = ctx.model(model)
    size = entry.image_size
    fg = check_points_inside(size, params.get("foreground") or [], "foreground click").tolist()
    bg = check_points_inside(size, params.get("background") or [], "background click").tolist()
    obj = f"infer-{uuid.uuid4().hex[:12]}"
    with entry.lock:
        s = entry.session
        if d.kind == "segmentation":
            return s.auto_segment(model)
        try:
            if d.kind == "dextr3d":
                pts = check_points_inside(size, params.get("points") or fg, "extreme point").tolist()
                if len(pts) < d.min_points:
                    raise InvalidPointsError(f"model {model!r} needs at least {d.min_points} points in params.points")
                return s.extreme_points(model, pts, object_id=obj)
            if not fg and not bg:
                raise InvalidPointsError("params needs 'foreground' and/or 'background' lists of [i, j, k]")
            axis = params.get("slice_axis")
            return s.click(model, fg, bg, object_id=obj, slice_axis=int(axis) if axis is not None else None)
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


def _nifti(delta: MaskDelta, entry: SessionEntry) -> bytes:
    full = delta.to_full()
    g = entry.geometry
    labels = {k: LabelInfo(v) for k, v in delta.labels.items()} or {1: LabelInfo("object")}
    img = Image(full, np.array(g["origin"]), np.array(g["spacing"]), np.array(g["direction"]), labels)
    with tempfile.TemporaryDirectory(prefix="claraseg-infer-") as tmp:
        return open(write_image(img, os.path.join(tmp, "label.nii.gz")), "rb").read()


@router.post("/{model}", summary="One-shot inference (MONAI Label compatible)",
             responses={200: {"content": {"application/gzip": {}, MEDIA_TYPE: {}, "application/json": {}}}})
async def run_inference(model: str, request: Request, image: str = "", session_id: str = "",
                        output: Optional[str] = Query(None, pattern="^(image|delta|json)$"),
                        ctx: ServerContext = Depends(get_ctx)) -> Response:
    ctx.model(model)
    params, upload = await _params_and_upload(request, ctx)
    transient = None
    if session_id:
        entry = ctx.sessions.get(session_id)
    elif image:
        check_id(image, "image id")
        entry = await ctx.pool.run(_datastore_session, ctx, image)
    elif upload is not None:
        entry = transient = await ctx.pool.run(open_backend_session, ctx, upload, None, "infer")
    else:
        raise InvalidPointsError("give ?image=<datastore id>, ?session_id=<session> or a 'file' upload")
    try:
        delta = await ctx.pool.run(_run, ctx, entry, model, params)
        if output == "delta":
            return Response(delta.encode(), media_type=MEDIA_TYPE)
        if output == "json":
            return Response(json.dumps({"model": model, "start": list(delta.start), "stop": list(delta.stop),
                                        "image_size": list(delta.image_size), "voxels": int(np.count_nonzero(delta.mask)),
                                        "label_names": {str(k): v for k, v in delta.labels.items()}}),
                            media_type="application/json")
        body = await ctx.pool.run(_nifti, delta, entry)
        return Response(body, media_type="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="label.nii.gz"'})
    finally:
        if transient is not None:
            await ctx.pool.run(ctx.sessions.remove, transient.id)
