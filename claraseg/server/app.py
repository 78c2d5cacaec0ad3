"""The FastAPI application: ``create_app(backend, settings)`` hosts any :class:`~claraseg.backend.Backend`."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import claraseg
from claraseg.backend import API_VERSION, Backend
from claraseg.errors import ClarasegError

from .context import ServerContext
from .datastore import Datastore
from .middleware import AuthMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from .routes import activelearning, datastore, infer, info, jobs, session
from .sessions import SessionRegistry, WorkPool
from .settings import ServerSettings

log = logging.getLogger("claraseg.server")
DOCS_STATIC = "/static-docs"
#: Seconds the public status page reuses its datastore summary.
STATUS_TTL = 30.0


def docs_assets_dir() -> Path | None:
    """Swagger UI and ReDoc files from the ``fastapi-offline`` package, so the docs need no CDN."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = Path(fastapi_offline.__file__).parent / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def create_app(backend: Backend, settings: ServerSettings | None = None, *, jobs_runner=None) -> FastAPI:
    """Build the app around a backend. The caller owns the backend; the app closes its sessions on shutdown."""
    settings = settings or ServerSettings()
    settings.check()
    store = Datastore(settings.datastore) if settings.datastore else None
    if store is not None and store.is_new and settings.sample_data:
        store.preload_sample(settings.sample_data)
    if jobs_runner is None:
        registry = getattr(backend, "registry", None)
        jobs_runner = _train_jobs(settings.models_dir or getattr(registry, "publish_dir", None), store)
    ctx = ServerContext(
        backend=backend, settings=settings, datastore=store, jobs=jobs_runner,
        pool=WorkPool(settings.workers, settings.max_queue, settings.serialize_device),
        sessions=SessionRegistry(settings.idle_timeout, settings.max_sessions, max_bytes=settings.max_session_bytes),
    )
    ctx.refresh_models()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(_expire_loop(ctx))
        log.info("server ready", extra={"models": sorted(ctx.descriptors), "api_version": API_VERSION})
        try:
            yield
        finally:
            reaper.cancel()
            ctx.sessions.close_all()
            ctx.pool.shutdown()

    app = FastAPI(title="claraseg annotation server", version=claraseg.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description=f"API version {API_VERSION}. Interactive segmentation sessions, one-shot "
                              "inference, datastore, training jobs. Interaction answers are MaskDelta bodies.")
    app.state.ctx = ctx
    for r in (info.router, session.router, infer.router, datastore.router, jobs.train_router, jobs.automl_router,
              activelearning.router):
        app.include_router(r)
    _add_error_handlers(app)
    _add_pages(app, ctx)
    app.add_middleware(AuthMiddleware, token=settings.token)  # inside CORS: preflights carry no token
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "X-Compute-Ms"])
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes,
                       max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app


def _train_jobs(models_dir, store: Datastore | None):
    """The fine-tuning job runner, when there are bundles, a datastore and the training part."""
    if not models_dir or store is None or not Path(models_dir).is_dir():
        return None
    try:
        from .jobs import TrainJobs

        return TrainJobs(models_dir, store, store.root / "jobs")
    except ImportError as e:
        log.warning("fine-tuning jobs disabled: %s", e)
        return None


async def _expire_loop(ctx: ServerContext) -> None:
    period = max(0.5, min(30.0, ctx.sessions.idle_timeout / 4))
    while True:
        await asyncio.sleep(period)
        await asyncio.to_thread(ctx.sessions.expire_idle)


def _answer(request: Request, status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id")
    return JSONResponse({"detail": detail, "code": code, "request_id": rid}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClarasegError)
    async def claraseg_error(request: Request, exc: ClarasegError) -> JSONResponse:
        headers = {}
        if exc.http_status == 503:
            headers["Retry-After"] = "1"
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.http_status >= 500 and exc.http_status != 503 and exc.http_status != 501:
            log.error("server-side claraseg error: %s", exc)
        return _answer(request, exc.http_status, exc.code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            if e.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')})")
                continue
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        hint = ""
        if request.headers.get("content-type", "").split(";")[0].strip() not in ("application/json", ""):
            hint = " (JSON bodies need Content-Type: application/json)"
        return _answer(request, 422, "invalid_request", "invalid request: " + "; ".join(parts) + hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if isinstance(cause, ClarasegError):
            return await claraseg_error(request, cause)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 400 and "parsing the body" in detail:
            detail = "the request body is not valid JSON (or not the form this route expects)"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}; see /docs"
        return _answer(request, exc.status_code, "http_error", detail, getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return _answer(request, 400, "invalid_request", "the request nests its data too deeply")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _answer(request, 500, "internal_error", f"internal server error ({type(exc).__name__}); see the server log")


def _add_pages(app: FastAPI, ctx: ServerContext) -> None:
    assets = docs_assets_dir()
    if assets is not None:
        app.mount(DOCS_STATIC, StaticFiles(directory=str(assets)), name="static-docs")

        @app.get("/docs", include_in_schema=False)
        async def swagger() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                       swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                       swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                       swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")

        @app.get("/redoc", include_in_schema=False)
        async def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                  redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                                  redoc_favicon_url=f"{DOCS_STATIC}/favicon.png", with_google_fonts=False)

    cache: dict = {"at": -1e9, "status": None}
    lock = asyncio.Lock()

    @app.get("/", include_in_schema=False)
    async def status_page() -> HTMLResponse:
        # Public and cheap: the datastore summary is recomputed (off the loop) at most every STATUS_TTL s.
        if ctx.datastore is not None and time.monotonic() - cache["at"] > STATUS_TTL and not lock.locked():
            async with lock:
                cache["status"] = await asyncio.to_thread(ctx.datastore.status)
                cache["at"] = time.monotonic()
        return HTMLResponse(_status_html(ctx, cache["status"], docs=assets is not None))


def _status_html(ctx: ServerContext, store: dict | None, docs: bool) -> str:
    e = html.escape
    models = "".join(
        f"<tr><td>{e(d.name)}</td><td>{e(d.kind)}</td><td>{e(d.version)}</td><td>{e(d.description)}</td></tr>"
        for d in ctx.descriptors.values()) or "<tr><td colspan=4>none</td></tr>"
    now = time.time()
    sessions = "".join(
        f"<tr><td>{e(s.id[:8])}…</td><td>{'×'.join(map(str, s.image_size))}</td><td>{s.interactions}</td>"
        f"<td>{now - s.last_used:.0f} s</td></tr>" for s in ctx.sessions.entries()) or "<tr><td colspan=4>none</td></tr>"
    jobs_html = "none attached" if ctx.jobs is None else "attached (GET /train/ lists them)"
    web_url = ctx.settings.web_url
    web = f' — <a href="{e(web_url)}">Clara Annotate Web</a> (annotate in the browser)' if web_url else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>claraseg server</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>claraseg annotation server</h1>
<p>version {e(claraseg.__version__)}, API {e(API_VERSION)}, up {now - ctx.started:.0f} s,
queue {ctx.pool.pending} / {ctx.pool.workers + ctx.pool.max_queue}{' — <a href="/docs">API docs</a>' if docs else ''}{web}</p>
<h2>Models</h2><table><tr><th>name</th><th>kind</th><th>version</th><th>description</th></tr>{models}</table>
<h2>Sessions ({len(ctx.sessions)})</h2><table><tr><th>id</th><th>size (i×j×k)</th><th>interactions</th><th>idle</th></tr>{sessions}</table>
<h2>Jobs</h2><p>{jobs_html}</p>
<h2>Datastore</h2><p>{e(str(store)) if store else 'none'}</p></body></html>"""

