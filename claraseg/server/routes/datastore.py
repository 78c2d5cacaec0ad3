"""``/datastore/``: list, upload and fetch images and versioned labels (MONAI Label's routes and fields)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from claraseg.errors import DatastoreNotFoundError, InvalidImageError

from ..context import ServerContext, get_ctx, require_token
from ..datastore import DEFAULT_TAG, Datastore, check_id
from ..schemas import ERROR_RESPONSES
from ..uploads import image_from_request, parse_params

router = APIRouter(prefix="/datastore", tags=["datastore"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)
NIFTI = "application/gzip"
#: Largest ``X-Label-Names`` header; longer name lists are only in the version's record (/label/info).
MAX_NAMES_HEADER = 4096
MAX_LABELS = 65536


def _store(ctx: ServerContext) -> Datastore:
    if ctx.datastore is None:
        raise DatastoreNotFoundError("this server runs without a datastore (start it with --datastore DIR)")
    return ctx.datastore


def _params(fields: dict[str, str]) -> dict[str, Any]:
    return parse_params(fields.get("params"), error=InvalidImageError)


@router.get("/", summary="All images and labels (output=all) or a summary")
async def datastore(output: Optional[str] = Query(None, pattern="^(all|status)$"),
                    ctx: ServerContext = Depends(get_ctx)) -> dict:
    store = _store(ctx)
    return await ctx.pool.run(store.listing if output == "all" else store.status)


UPLOAD_BODY = {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
    "file": {"type": "string", "format": "binary", "description": "NIfTI, NRRD or MetaImage (.mha)"},
    "params": {"type": "string", "description": "JSON object: author/client_id, name, info"},
}, "required": ["file"]}}}, "required": True}}
LABEL_BODY = {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
    "label": {"type": "string", "format": "binary", "description": "a label map on the image's grid"},
    "params": {"type": "string", "description": "JSON object: label_names {value: name}, author/client_id, info"},
}, "required": ["label"]}}}, "required": True}}


@router.put("/", summary="Upload a new image (MONAI Label's route; same as PUT /datastore/image)",
            openapi_extra=UPLOAD_BODY)
@router.put("/image", summary="Upload a new image (multipart 'file' + 'params' JSON)", openapi_extra=UPLOAD_BODY)
async def add_image(request: Request, image: Optional[str] = Query(None, description="image id (default: from the file name)"),
                    ctx: ServerContext = Depends(get_ctx)) -> dict:
    store = _store(ctx)
    if image is not None:
        check_id(image, "image id")
    img, fields = await image_from_request(request, ctx.settings.max_upload_bytes, ctx.pool.run, file_fields=("file", "files"))
    params = _params(fields)
    image_id = image or _id_from_name(img.metadata.get("source", ""))
    record = await ctx.pool.run(store.add_image, image_id, img, author=str(params.get("client_id", params.get("author", ""))),
                                name=str(params.get("name", "")), info=params.get("info") if isinstance(params.get("info"), dict) else None)
    return {"image": image_id, "info": record}


def _id_from_name(name: str) -> str:
    stem = name.split("/")[-1]
    for ext in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".gz"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in stem).lstrip(".")[:100]
    return safe if safe and ".." not in safe else f"image-{uuid.uuid4().hex[:8]}"


@router.get("/image", summary="Download an image (NIfTI)", response_class=FileResponse)
async def download_image(image: str, ctx: ServerContext = Depends(get_ctx)) -> FileResponse:
    path = _store(ctx).image_path(image)
    return FileResponse(path, media_type=NIFTI, filename=f"{image}.nii.gz")


@router.get("/image/info", summary="An image's record")
async def image_info(image: str, ctx: ServerContext = Depends(get_ctx)) -> dict:
    return _store(ctx).image_info(image)


@router.put("/label", summary="Save a label as a new version (multipart 'label' + 'params' JSON)",
            openapi_extra=LABEL_BODY)
async def save_label(request: Request, image: str, tag: str = DEFAULT_TAG,
                     ctx: ServerContext = Depends(get_ctx)) -> dict:
    """``params`` may hold ``label_names`` ({value: name}), ``author`` (or MONAI Label's ``client_id``)
    and ``info``. The label must lie on the image's voxel grid."""
    store = _store(ctx)
    check_id(image, "image id")
    check_id(tag, "label tag")
    store.image_info(image)
    label, fields = await image_from_request(request, ctx.settings.max_upload_bytes, ctx.pool.run, file_fields=("label", "file"),
                                             label=True)
    params = _params(fields)
    names = _label_names(params)
    record = await ctx.pool.run(store.save_label, image, label, tag=tag,
                                author=str(params.get("author", params.get("client_id", ""))), label_names=names,
                                info=params.get("info") if isinstance(params.get("info"), dict) else None)
    return {"image": image, "label": image, "tag": tag, "version": record["version"], "info": record}


def _label_names(params: dict[str, Any]) -> dict[int, str]:
    """Label names as {value: name} from ``label_names`` ({value: name}, or MONAI Label's {name: value}) or
    MONAI Label's ``label_info`` ([{"name", "idx"}])."""
    names = params.get("label_names")
    if names is None and isinstance(params.get("label_info"), list):
        names = {}
        for item in params["label_info"][:MAX_LABELS]:
            if isinstance(item, dict) and isinstance(item.get("idx"), int) and not isinstance(item.get("idx"), bool):
                names[item["idx"]] = str(item.get("name", item["idx"]))[:256]
    names = names or {}
    if not isinstance(names, dict) or len(names) > MAX_LABELS:
        raise InvalidImageError(f"params.label_names must be an object {{value: name}} of at most {MAX_LABELS} labels")
    out: dict[int, str] = {}
    for k, v in names.items():
        if isinstance(v, int) and not isinstance(v, bool) and not str(k).lstrip("-").isdigit():
            k, v = v, k  # MONAI Label's {name: value}
        try:
            value = int(k)
        except (ValueError, TypeError):
            raise InvalidImageError("params.label_names keys must be label values (integers)") from None
        if not 0 <= value <= 65535 or not isinstance(v, (str, int, float)):
            raise InvalidImageError("params.label_names maps label values 0..65535 to names (strings)")
        out[value] = str(v)[:256]
    return out


@router.get("/label", summary="Download a label version (latest by default)", response_class=FileResponse)
async def download_label(label: str, tag: str = DEFAULT_TAG, version: Optional[int] = Query(None, ge=1, le=10**9),
                         ctx: ServerContext = Depends(get_ctx)) -> FileResponse:
    store = _store(ctx)
    rec = store.label_record(label, tag, version)
    path = store.label_path(label, tag, rec["version"])
    headers = {"X-Label-Version": str(rec["version"])}
    names = json.dumps(rec.get("label_names", {}))
    if len(names) <= MAX_NAMES_HEADER:  # else the client reads them from /datastore/label/info
        headers["X-Label-Names"] = names
    return FileResponse(path, media_type=NIFTI, filename=f"{label}_{tag}_v{rec['version']:04d}.nii.gz",
                        headers=headers)


@router.get("/label/info", summary="A label version's record (author, time, names)")
async def label_info(label: str, tag: str = DEFAULT_TAG, version: Optional[int] = Query(None, ge=1, le=10**9),
                     ctx: ServerContext = Depends(get_ctx)) -> dict:
    return _store(ctx).label_record(label, tag, version)


@router.get("/label/versions", summary="Every version of a label")
async def label_versions(label: str, tag: str = DEFAULT_TAG, ctx: ServerContext = Depends(get_ctx)) -> list:
    return _store(ctx).label_versions(label, tag)
