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

from claraseg.errors import DatastoreNotFoundError, NotAvailableError

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


#: MONAI Label's task status for each claraseg job state.
MONAI_STATUS = {"queued": "RUNNING", "starting": "RUNNING", "running": "RUNNING", "completed": "DONE",
                "cancelled": "STOPPED", "stopped": "STOPPED", "failed": "ERROR", "interrupted": "STOPPED"}


def monai_status(job: dict | None) -> str:
    if job is None:
        return "NONE"
    if job.get("running"):
        return "RUNNING"
    return MONAI_STATUS.get(str(job.get("state")), str(job.get("state", "")).upper() or "NONE")


def trainers(ctx: ServerContext) -> dict[str, dict]:
    """MONAI Label's ``trainers`` of /info: the base models a fine-tune job can start from."""
    if ctx.jobs is None:
        return {}
    names = sorted({n.split("@")[0] for n in ctx.descriptors})
    available = getattr(ctx.jobs, "trainable", None)
    if callable(available):
        names = [n for n in names if available(n)]
    return {n: {"description": f"fine-tune {n} on the datastore's labels (POST /train/{n})",
                "config": {"tag": "final", "device": "auto", "overrides": {"training#max_iterations": 100}}}
            for n in names}


def _router(kind: str, prefix: str, target: str) -> APIRouter:
    r = APIRouter(prefix=prefix, tags=[kind], dependencies=[Depends(require_token)], responses=JOB_RESPONSES)

    @r.get("/", summary=f"List {kind} jobs and their states (MONAI Label's status)")
    async def list_jobs(check_if_running: bool = Query(False, description="404 unless a job is running (MONAI Label)"),
                        ctx: ServerContext = Depends(get_ctx)) -> dict:
        """``status`` is MONAI Label's word for the latest job (RUNNING, DONE, STOPPED, ERROR; NONE without
        jobs); with ``check_if_running=true`` the answer is 404 when nothing runs, as MONAI Label's clients expect."""
        jobs = await asyncio.to_thread(_jobs(ctx, kind).list, kind)
        running = [j for j in jobs if j.get("running") or (kind == "automl" and j.get("state") in ("running", "starting"))]
        if check_if_running and not running:
            raise DatastoreNotFoundError(f"no {kind} job is running")
        latest = (running or jobs or [None])[-1]
        return {"status": monai_status(latest), "jobs": jobs, "running": [j.get("id") for j in running],
                **({"id": latest.get("id"), "state": latest.get("state")} if latest else {})}

    if kind == "train":
        @r.post("/", summary="Start a fine-tune job (MONAI Label's route: body.model, default the first trainer)")
        async def start_default(req: JobStart, ctx: ServerContext = Depends(get_ctx)) -> dict:
            body = req.model_dump()
            name = body.pop("model", None) or next(iter(trainers(ctx)), None)
            if not isinstance(name, str) or not name:
                raise DatastoreNotFoundError("no trainable model on this server")
            check_id(name.split("@")[0], target)
            return await asyncio.to_thread(_jobs(ctx, kind).start, kind, name, body)

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
