"""``/info/``: versions, models (MONAI Label fields plus claraseg descriptors), devices, datastore."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from fastapi import APIRouter, Depends

import claraseg
from claraseg.backend import API_VERSION, ModelDescriptor

from ..context import ServerContext, get_ctx, require_token
from ..schemas import ERROR_RESPONSES
from .activelearning import STRATEGIES
from .jobs import trainers

router = APIRouter(prefix="/info", tags=["info"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

#: MONAI Label's model "type" for each claraseg kind (its Slicer plugin picks tools by it).
#: DEXTR3D answers clicks placed on the object's extremes, so it is listed as MONAI Label's click-driven "deepedit".
MONAI_TYPES = {"deepgrow2d": "deepgrow", "deepgrow3d": "deepgrow", "dextr3d": "deepedit", "segmentation": "segmentation"}


def model_info(d: ModelDescriptor) -> dict[str, Any]:
    return {
        "type": MONAI_TYPES.get(d.kind, d.kind),
        "labels": {name: value for value, name in sorted(d.labels.items())},
        "dimension": 2 if d.kind == "deepgrow2d" else 3,
        "description": d.description,
        "config": {},
        "descriptor": d.to_dict(),
    }


def devices(ctx: ServerContext) -> list[dict[str, Any]]:
    out = [{"name": ctx.settings.device, "workers": ctx.pool.workers, "serialized": ctx.settings.serialize_device}]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out += [{"name": f"cuda:{i}", "gpu": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())]
    return out


def info_dict(ctx: ServerContext, datastore_status: dict[str, Any]) -> dict[str, Any]:
    models = {name: model_info(d) for name, d in ctx.descriptors.items()}
    labels: list[str] = []
    for m in models.values():
        labels += [n for n in m["labels"] if n not in labels]
    return {
        "name": ctx.settings.name,
        "description": "Clara for 3D Slicer annotation server",
        "version": claraseg.__version__,
        "api_version": API_VERSION,
        "labels": labels,
        "models": models,
        "trainers": trainers(ctx),
        "strategies": {name: {"description": d} for name, d in STRATEGIES.items()} if ctx.datastore else {},
        "scoring": {},
        "train_stats": {},
        "datastore": datastore_status,
        "devices": devices(ctx),
        "sessions": {"open": len(ctx.sessions), "max": ctx.sessions.max_sessions,
                     "idle_timeout": ctx.sessions.idle_timeout},
        "queue": {"workers": ctx.pool.workers, "max_queue": ctx.pool.max_queue, "pending": ctx.pool.pending},
        "jobs": {"train": ctx.jobs is not None, "automl": ctx.jobs is not None},
        "limits": {"max_upload_bytes": ctx.settings.max_upload_bytes, "max_body_bytes": ctx.settings.max_body_bytes},
    }


@router.get("/", summary="Server and API version, models, devices, datastore summary")
async def app_info(ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    # A thread of its own (not the inference pool), so /info answers while every worker is busy.
    def build() -> dict[str, Any]:
        return info_dict(ctx, ctx.datastore.status() if ctx.datastore else {})

    return await asyncio.to_thread(build)
