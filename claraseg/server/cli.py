"""`claraseg serve` (the annotation server) and `claraseg bench-server` (its benchmarks)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from claraseg.errors import ConfigError

from .settings import MB, ServerSettings

#: Where the sample data lives beside a checkout (../shared/data); CLARASEG_DATA overrides.
DEFAULT_SAMPLE_DATA = Path(os.environ.get("CLARASEG_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the annotation server (models, sessions, datastore)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; other than loopback needs --token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", type=Path, help="folder of model bundles (default: the built-in default models)")
    p.add_argument("--backend", metavar="MODULE:CALLABLE",
                   help="host another Backend: CALLABLE(models_dir, device) returns it (default: claraseg's LocalBackend)")
    p.add_argument("--datastore", type=Path, default=Path("claraseg-datastore"), help="datastore folder")
    p.add_argument("--sample-data", type=Path, default=DEFAULT_SAMPLE_DATA,
                   help="folder holding ct_abdomen_3mm/, preloaded into a new datastore")
    p.add_argument("--token", default=os.environ.get("CLARASEG_TOKEN"),
                   help="bearer token clients must send (env CLARASEG_TOKEN)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="worker threads for inference and uploads")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a worker before answering 503")
    p.add_argument("--session-timeout", type=float, default=1800, help="seconds before an idle session expires")
    p.add_argument("--max-sessions", type=int, default=32)
    p.add_argument("--max-session-mb", type=int, default=8192,
                   help="memory all open sessions may hold together; beyond it idle sessions are evicted, else 503")
    p.add_argument("--max-upload-mb", type=int, default=2048, help="largest image/label upload")
    p.add_argument("--max-body-mb", type=int, default=16, help="largest body of other requests (JSON, MaskDelta)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--web-port", type=int, default=0,
                   help="also start Clara Annotate Web on this port (./clara serve: 8001); 0: do not")
    p.set_defaults(func=_serve)

    p = sub.add_parser("bench-server", help="measure bytes per click, transport overhead, session open, load")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="smaller volumes and load (a smoke run)")
    p.add_argument("--models", type=Path, help="model bundles (default: the built-in default models)")
    p.add_argument("--backend", metavar="MODULE:CALLABLE", help="benchmark another Backend (as for serve)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", type=int, help="load test: concurrent clients (default 8)")
    p.add_argument("--clicks", type=int, help="load test: clicks per client (default 50)")
    p.set_defaults(func=_bench)


def load_backend(spec: str | None, models: Path | None, device: str):
    """The backend to host: ``MODULE:CALLABLE`` or claraseg's :class:`LocalBackend`."""
    if spec:
        mod, _, fn = spec.partition(":")
        if not fn:
            raise ConfigError(f"--backend {spec!r}: use MODULE:CALLABLE")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"--backend {spec!r}: {e}") from None
        return factory(models, device)
    try:
        from claraseg.engine import LocalBackend
    except ImportError as e:
        raise ConfigError(f"the inference engine is not installed ({e}); pip install 'claraseg[server]'") from None
    # The server expires idle sessions itself (--session-timeout), so the engine keeps them until closed.
    return LocalBackend(models, device=device, idle_timeout=None)


def settings_from_args(args) -> ServerSettings:
    return ServerSettings(
        host=args.host, port=args.port, token=args.token or None, datastore=args.datastore, models_dir=args.models,
        sample_data=args.sample_data, workers=args.workers, max_queue=args.max_queue,
        serialize_device=str(args.device).startswith("cuda"), device=args.device,
        idle_timeout=args.session_timeout, max_sessions=args.max_sessions,
        max_session_bytes=args.max_session_mb * MB,
        max_upload_bytes=args.max_upload_mb * MB, max_body_bytes=args.max_body_mb * MB,
        cors_origins=list(args.cors_origin), ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
    )


def configure_logging(fmt: str) -> None:
    from .middleware import JsonLogFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _serve(args) -> int:
    import uvicorn

    from . import webapp
    from .app import create_app

    settings = settings_from_args(args)
    settings.check()
    configure_logging(args.log_format)
    backend = load_backend(args.backend, args.models, args.device)
    scheme = "https" if settings.ssl_certfile else "http"
    web_port = args.web_port
    api_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    web = webapp.start(f"{scheme}://{api_host}:{settings.port}", web_port, settings.token)
    settings.web_url = web.url if web else None
    try:
        app = create_app(backend, settings)
        logging.getLogger("claraseg.server").info(
            "listening", extra={"url": f"{scheme}://{settings.host}:{settings.port}", "docs": "/docs",
                                "auth": bool(settings.token), "datastore": str(settings.datastore)})
        uvicorn.run(app, host=settings.host, port=settings.port, ssl_certfile=settings.ssl_certfile,
                    ssl_keyfile=settings.ssl_keyfile, log_config=None, access_log=False,
                    timeout_graceful_shutdown=5)
    finally:
        if web is not None:
            web.stop()
        backend.close()
    return 0


def _bench(args) -> int:
    from .bench import main

    return main(out=args.out, quick=args.quick, models=args.models, backend=args.backend, device=args.device,
                clients=args.clients, clicks=args.clicks)
