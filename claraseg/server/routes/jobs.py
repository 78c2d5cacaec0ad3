"""``/train/`` and ``/automl/``: fine-tuning and AutoML jobs.

The routes are fixed now (MONAI Label's where they exist) so clients can be written against them:
``POST /train/{model}`` starts a job and answers its id; ``GET /train/`` lists jobs (MONAI Label's
status); ``GET /train/{job_id}`` one job's state; ``GET /train/{job_id}/events?since=N`` its event
lines; ``DELETE /train/{job_id}`` stops it, ``DELETE /train/`` stops all (MONAI Label). ``/automl/``
has the same shape: ``POST /automl/{model}`` with ``{"automl": {"trials": 8, "workers": 2, ...}}`` searches
over the bundle's declared search space; its events are the trial rows. Without
a job runner (``ServerContext.jobs``; ``claraseg serve`` attaches one when it has a models folder and a
datastore) every route answers 501 with a message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query

from claraseg.errors import NotAvailableError

from ..context import ServerContext, get_ctx, require_token
from ..datastore import check_id
from ..schemas import ERROR_RESPONSES, JobStart

JOB_RESPONSES = {**ERROR_RESPONSES, 501: ERROR_RESPONSES[400]}


def _jobs(ctx: ServerContext, kind: str) -> Any:
    if ctx.jobs is None:
        raise NotAvailableError(
            f"{kind} jobs are not available on this server yet: no job runner is attached "
            "(the claraseg train/automl parts provide it); the route and its fields are final"
        )
    return ctx.jobs


def _router(kind: str, prefix: str, target: str) -> APIRouter:
    r = APIRouter(prefix=prefix, tags=[kind], dependencies=[Depends(require_token)], responses=JOB_RESPONSES)

    @r.get("/", summary=f"List {kind} jobs and their states")
    async def list_jobs(ctx: ServerContext = Depends(get_ctx)) -> dict:
        return {"jobs": await asyncio.to_thread(_jobs(ctx, kind).list, kind)}

    @r.post("/{name}", summary=f"Start a {kind} job on a {target}")
    async def start(name: str, req: JobStart, ctx: ServerContext = Depends(get_ctx)) -> dict:
        check_id(name.split("@")[0], target)
        return await asyncio.to_thread(_jobs(ctx, kind).start, kind, name, req.model_dump())

    @r.get("/{job_id}", summary=f"A {kind} job's state")
    async def status(job_id: str, ctx: ServerContext = Depends(get_ctx)) -> dict:
        check_id(job_id, "job id")
        jobs = _jobs(ctx, kind)
        st = await asyncio.to_thread(jobs.status, job_id)
        if st.get("published") and st["published"] not in ctx.descriptors:
            await asyncio.to_thread(ctx.refresh_models, True)  # a fine-tuned version was published
        return st

    @r.get("/{job_id}/events", summary=f"A {kind} job's events (JSON lines) from index `since`")
    async def events(job_id: str, since: int = Query(0, ge=0), ctx: ServerContext = Depends(get_ctx)) -> dict:
        check_id(job_id, "job id")
        jobs = _jobs(ctx, kind)
        return {"events": await asyncio.to_thread(jobs.events, job_id, since)}

    @r.delete("/{job_id}", summary=f"Stop a {kind} job")
    async def stop(job_id: str, ctx: ServerContext = Depends(get_ctx)) -> dict:
        check_id(job_id, "job id")
        jobs = _jobs(ctx, kind)
        return await asyncio.to_thread(jobs.stop, job_id)

    @r.delete("/", summary=f"Stop every running {kind} job")
    async def stop_all(ctx: ServerContext = Depends(get_ctx)) -> dict:
        return {"stopped": await asyncio.to_thread(_jobs(ctx, kind).stop_all, kind)}
    return r


train_router = _router("train", "/train", "model")
automl_router = _router("automl", "/automl", "study")
