"""``/activelearning/{strategy}``: MONAI Label's "next sample" - an image of the datastore still to label."""

from __future__ import annotations

import random
from typing import Any

from fastapi import APIRouter, Depends, Request

from claraseg.errors import DatastoreNotFoundError

from ..context import ServerContext, get_ctx, require_token
from ..datastore import DEFAULT_TAG
from ..schemas import ERROR_RESPONSES

router = APIRouter(prefix="/activelearning", tags=["activelearning"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)

#: Strategies and what they pick among the images without a ``final`` label.
STRATEGIES = {"random": "a random image without a final label", "first": "the first image (by id) without a final label"}


def next_sample(ctx: ServerContext, strategy: str) -> dict[str, Any]:
    if ctx.datastore is None:
        raise DatastoreNotFoundError("this server has no datastore")
    store = ctx.datastore
    todo = [i for i in store.list_images() if DEFAULT_TAG not in store.label_tags(i)]
    if not todo:
        return {}  # MONAI Label's answer when every image is labelled
    image_id = random.choice(todo) if strategy == "random" else todo[0]
    info = store.image_info(image_id)
    return {"id": image_id, "name": info.get("name", image_id), "path": f"/datastore/image?image={image_id}",
            "info": info, "strategy": strategy, "remaining": len(todo)}


@router.post("/{strategy}", summary="The next image to label (strategies: random, first)",
             openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}},
                                            "required": False}})
async def activelearning(strategy: str, request: Request, ctx: ServerContext = Depends(get_ctx)) -> dict:
    """The body (MONAI Label's params, e.g. ``client_id``) is accepted and not used. Answers ``{}`` when
    every image has a final label."""
    if strategy not in STRATEGIES:
        raise DatastoreNotFoundError(f"no strategy {strategy[:40]!r}; strategies: {sorted(STRATEGIES)}")
    return await ctx.pool.run(next_sample, ctx, strategy)
