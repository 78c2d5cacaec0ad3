"""``/session/``: upload an image once, then interact; each answer is a compressed MaskDelta."""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from claraseg.backend import check_object_state
from claraseg.client.wire import VOLUME_MEDIA_TYPE
from claraseg.errors import (
    DatastoreNotFoundError,
    InvalidPointsError,
    MaskDeltaError,
    UnsupportedMediaTypeError,
)
from claraseg.io import Image, MaskDelta, check_points_inside
from claraseg.io.maskdelta import MEDIA_TYPE

from ..context import ServerContext, get_ctx, require_token
from ..datastore import check_id
from ..schemas import (
    ERROR_RESPONSES,
    MAX_POINTS,
    AutoSegmentRequest,
    ClickRequest,
    ExtremePointsRequest,
    ObjectRequest,
    SessionCreated,
)
from ..sessions import SessionEntry
from ..uploads import image_from_request, media_type, read_body

router = APIRouter(prefix="/session", tags=["session"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)
DELTA_RESPONSE = {200: {"content": {MEDIA_TYPE: {}}, "description": "a MaskDelta (MaskDelta.decode)"}}


#: Bytes a session holds per voxel besides the image itself (a float32 copy, the objects' masks, caches).
SESSION_BYTES_PER_VOXEL = 8


def session_cost(image: Image) -> int:
    """The memory a session on ``image`` is counted for in the server's session budget."""
    return int(image.array.nbytes) + int(image.array.size) * SESSION_BYTES_PER_VOXEL


def open_backend_session(ctx: ServerContext, image: Image, expiry: float | None, source: str) -> SessionEntry:
    """Open a backend session on a worker thread's behalf and register it."""
    cost = session_cost(image)
    with ctx.sessions.reserve(cost):
        session = ctx.backend.open_session(image)
        entry = ctx.sessions.add(session, image_size=image.size_ijk, dtype=str(image.array.dtype),
                                 nbytes=int(image.array.nbytes), expiry=expiry, source=source, cost=cost)
    entry.geometry = {"origin": image.origin.tolist(), "spacing": image.spacing.tolist(),
                      "direction": image.direction.tolist()}
    return entry


SESSION_BODY = {"requestBody": {"required": False, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "string", "format": "binary", "description": "NIfTI, NRRD or MetaImage (MONAI Label's field)"},
        "file": {"type": "string", "format": "binary", "description": "the same, under this name"},
        "params": {"type": "string", "description": "JSON object (accepted, not used)"},
    }}},
    VOLUME_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


@router.put("/", response_model=SessionCreated, summary="Upload an image once and open a session",
            openapi_extra=SESSION_BODY)
async def create_session(request: Request, expiry: int = Query(0, ge=0, le=7 * 86400,
                                                                description="idle seconds before expiry (0: server default)"),
                         image: Optional[str] = Query(None, description="open a datastore image instead of uploading"),
                         ctx: ServerContext = Depends(get_ctx)) -> SessionCreated:
    """Body: raw voxels + geometry (``application/x-claraseg-volume``), or a NIfTI/NRRD file as multipart
    field ``files`` (MONAI Label) or ``file``, or ``application/octet-stream`` with ``?filename=``; gzip accepted."""
    if image is not None:
        check_id(image, "image id")
        if ctx.datastore is None:
            raise DatastoreNotFoundError("this server has no datastore")
        img = await ctx.pool.run(ctx.datastore.read_image, image)
        source = f"datastore:{image}"
    else:
        img, _ = await image_from_request(request, ctx.settings.max_upload_bytes, ctx.pool.run)
        source = "upload"
    entry = await ctx.pool.run(open_backend_session, ctx, img, expiry or None, source)
    del img
    return SessionCreated(session_id=entry.id, session_info=entry.to_json())


@router.get("/{session_id}", summary="Describe a session (404 unknown, 440 expired)")
async def get_session(session_id: str, update_ts: bool = False, ctx: ServerContext = Depends(get_ctx)) -> dict:
    return ctx.sessions.get(session_id, touch=update_ts).to_json()


@router.delete("/{session_id}", summary="Close a session and free its memory")
async def remove_session(session_id: str, ctx: ServerContext = Depends(get_ctx)) -> dict:
    entry = ctx.sessions.get(session_id, touch=False)
    await ctx.pool.run(ctx.sessions.remove, entry.id)
    return entry.to_json()


def _points(entry: SessionEntry, points, what: str) -> list[list[int]]:
    return check_points_inside(entry.image_size, points, what).tolist() if len(points) else []


async def _interact(ctx: ServerContext, entry: SessionEntry, fn, *args, **kwargs) -> Response:
    def work():
        with entry.lock:
            t0 = time.perf_counter()
            delta = fn(*args, **kwargs)
            compute = time.perf_counter() - t0
            entry.interactions += 1
            entry.last_used = time.time()
        return delta.encode(), compute

    body, compute = await ctx.pool.run(work)
    return Response(body, media_type=MEDIA_TYPE, headers={"X-Compute-Ms": f"{compute * 1000:.2f}"})


@router.post("/{session_id}/click", responses=DELTA_RESPONSE, response_class=Response,
             summary="Add foreground/background clicks to an object")
async def click(session_id: str, req: ClickRequest, ctx: ServerContext = Depends(get_ctx)) -> Response:
    entry = ctx.sessions.get(session_id)
    ctx.model(req.model)
    check_id(req.object_id, "object id")
    fg, bg = _points(entry, req.foreground, "foreground click"), _points(entry, req.background, "background click")
    if not fg and not bg:
        raise InvalidPointsError("a click needs at least one foreground or background point [i, j, k]")
    return await _interact(ctx, entry, entry.session.click, req.model, fg, bg, object_id=req.object_id,
                           slice_axis=req.slice_axis)


@router.post("/{session_id}/extreme_points", responses=DELTA_RESPONSE, response_class=Response,
             summary="Segment an object from its extreme points")
async def extreme_points(session_id: str, req: ExtremePointsRequest, ctx: ServerContext = Depends(get_ctx)) -> Response:
    entry = ctx.sessions.get(session_id)
    d = ctx.model(req.model)
    check_id(req.object_id, "object id")
    pts = _points(entry, req.points, "extreme point")
    if len(pts) < d.min_points:
        raise InvalidPointsError(f"model {d.name!r} needs at least {d.min_points} points, got {len(pts)}")
    return await _interact(ctx, entry, entry.session.extreme_points, req.model, pts, object_id=req.object_id)


@router.post("/{session_id}/auto_segment", responses=DELTA_RESPONSE, response_class=Response,
             summary="Run a segmentation model on the whole image")
async def auto_segment(session_id: str, req: AutoSegmentRequest, ctx: ServerContext = Depends(get_ctx)) -> Response:
    entry = ctx.sessions.get(session_id)
    ctx.model(req.model)
    return await _interact(ctx, entry, entry.session.auto_segment, req.model)


@router.post("/{session_id}/undo", responses=DELTA_RESPONSE, response_class=Response,
             summary="Revert an object's last interaction")
async def undo(session_id: str, req: ObjectRequest, ctx: ServerContext = Depends(get_ctx)) -> Response:
    entry = ctx.sessions.get(session_id)
    check_id(req.object_id, "object id")
    return await _interact(ctx, entry, entry.session.undo, req.object_id)


@router.post("/{session_id}/clear", responses=DELTA_RESPONSE, response_class=Response,
             summary="Forget an object's clicks and mask")
async def clear(session_id: str, req: ObjectRequest, ctx: ServerContext = Depends(get_ctx)) -> Response:
    entry = ctx.sessions.get(session_id)
    check_id(req.object_id, "object id")
    return await _interact(ctx, entry, entry.session.clear, req.object_id)


STATE_QUERY = ("JSON list of [i, j, k] voxel indices, e.g. [[10,20,5],[12,20,5]]; restores the object's {}")


def _json_points(value: Optional[str], name: str) -> list:
    """A query parameter holding a JSON list of points (``None`` when absent)."""
    if value is None or value == "":
        return []
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        why = f"{e.msg} at character {e.pos}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise InvalidPointsError(f"{name}= is not valid JSON ({why}); send a list of [i, j, k] voxel indices, "
                                 f"e.g. {name}=[[10,20,5]]") from None
    if not isinstance(data, list):
        raise InvalidPointsError(f"{name}= must be a JSON list of [i, j, k] voxel indices, e.g. {name}=[[10,20,5]]; "
                                 f"got a JSON {type(data).__name__}")
    if len(data) > MAX_POINTS:
        raise InvalidPointsError(f"{name}= holds {len(data)} points; at most {MAX_POINTS} are accepted")
    return data


@router.post("/{session_id}/set_mask", summary="Replace an object's mask (body: a MaskDelta) and its points/clicks",
             openapi_extra={"requestBody": {"content": {MEDIA_TYPE: {}}, "required": True}})
async def set_mask(session_id: str, request: Request, object_id: str = "1",
                   points: Optional[str] = Query(None, description=STATE_QUERY.format("extreme points (6 or more)")),
                   foreground: Optional[str] = Query(None, description=STATE_QUERY.format("foreground clicks")),
                   background: Optional[str] = Query(None, description=STATE_QUERY.format("background clicks")),
                   ctx: ServerContext = Depends(get_ctx)) -> dict:
    """Without ``points``/``foreground``/``background`` the mask is a painted one (the object forgets its
    points and clicks); with them the object gets them back, e.g. when a client re-opens an expired session."""
    entry = ctx.sessions.get(session_id)
    check_id(object_id, "object id")
    pts, fg, bg = check_object_state(entry.image_size, _json_points(points, "points"),
                                     _json_points(foreground, "foreground"), _json_points(background, "background"))
    if media_type(request) != MEDIA_TYPE:
        raise UnsupportedMediaTypeError(f"set_mask takes a MaskDelta body ({MEDIA_TYPE})")
    body = await read_body(request, ctx.settings.max_body_bytes, ctx.pool.run)
    delta = await ctx.pool.run(MaskDelta.decode, body, max_voxels=int(np.prod(entry.image_size, dtype=np.int64)))
    del body
    if delta.image_size != entry.image_size:
        raise MaskDeltaError(f"the mask was made for a volume of size {list(delta.image_size)}, "
                             f"the session image is {list(entry.image_size)}")
    if delta.mask.size and int(np.max(delta.mask)) > 1:
        raise MaskDeltaError("an object's mask must hold 0/1 values")
    # Only pass what was given: a hosted backend written before set_mask took points still works for
    # painted masks.
    state = {k: v for k, v in (("points", pts), ("foreground", fg), ("background", bg)) if v}

    def work():
        with entry.lock:
            entry.session.set_mask(object_id, delta, **state)
            entry.interactions += 1
            entry.last_used = time.time()

    await ctx.pool.run(work)
    return {"session_id": entry.id, "object_id": object_id, "points": len(pts), "foreground": len(fg),
            "background": len(bg)}
