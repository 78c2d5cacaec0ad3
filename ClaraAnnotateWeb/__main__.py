"""``python -m ClaraAnnotateWeb``: serve Clara Annotate Web (one page, one scene per process).

Engine: in-process (``--local``, the default without ``--server``) or an annotation server
(``--server URL [--token T]``). Images and labels: the server's datastore with ``--server``, else the
``--datastore`` folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import missing_requirements


def parse_args(argv=None) -> argparse.Namespace:
    from claraseg.server.cli import DEFAULT_SAMPLE_DATA

    p = argparse.ArgumentParser(prog="python -m ClaraAnnotateWeb", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; the page has no login of its own, so other than loopback needs --public")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--public", action="store_true", help="allow binding a non-loopback interface")
    p.add_argument("--server", help="annotation server URL: its engine and datastore are used")
    p.add_argument("--token", default=os.environ.get("CLARASEG_TOKEN"), help="the server's bearer token (env CLARASEG_TOKEN)")
    p.add_argument("--datastore", type=Path, help="datastore folder (default with --local: claraseg-datastore)")
    p.add_argument("--sample-data", type=Path, default=DEFAULT_SAMPLE_DATA,
                   help="folder holding ct_abdomen_3mm/, preloaded into a new datastore folder")
    p.add_argument("--models", type=Path, help="local engine: a folder of model bundles added to the defaults")
    p.add_argument("--device", default="cpu", help="local engine: cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="local engine: CPU threads for PyTorch")
    p.add_argument("--wait", type=float, default=0.0,
                   help="with --server: seconds to wait for the server to answer (it may be starting)")
    return p.parse_args(argv)


def wait_for_server(url: str, seconds: float) -> None:
    """Until ``url``/info/ answers at all (any status: a 401 is the token's business, said later)."""
    import time

    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            requests.get(url.rstrip("/") + "/info/", timeout=2, verify=False)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                return  # connecting will say what is wrong
            time.sleep(0.5)


def build(args: argparse.Namespace):
    """The app for these arguments (the backend connected, the datastore opened)."""
    from ClaraAnnotateLib.settings import BackendSettings

    from .app import ClaraWebApp
    from .sources import FolderSource, ServerSource

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.server:
        settings = BackendSettings(mode="remote", url=args.server, token=args.token or "")
        if args.wait:
            wait_for_server(settings.url, args.wait)
    else:
        settings = BackendSettings(mode="local", device=args.device)
        if args.models:
            settings.models_dir = str(args.models)
    source = FolderSource(args.datastore, args.sample_data) if args.datastore or not args.server else None
    if source is None:
        # the server's datastore, through the same authenticated client as the engine
        from claraseg.client import RemoteBackend

        source = ServerSource(RemoteBackend(settings.url, settings.token or None))
    return ClaraWebApp(settings, source)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"Clara Annotate Web needs the web extra (missing: {', '.join(missing)}): "
              "pip install 'claraseg[web]'", file=sys.stderr)
        return 2
    from claraseg.client.remote import is_loopback_host

    if not is_loopback_host(args.host) and not args.public:
        print(f"--host {args.host}: the page has no login of its own; add --public to serve it beyond this "
              "machine (behind a proxy that authenticates)", file=sys.stderr)
        return 2
    if args.datastore is None and not args.server:
        args.datastore = Path("claraseg-datastore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ClaraAnnotateWeb").setLevel(logging.INFO)
    from claraseg.errors import ClarasegError

    try:
        app = build(args)
    except ClarasegError as e:
        print(f"Clara Annotate Web: {e}", file=sys.stderr)
        return 1
    print(f"Clara Annotate Web on http://{args.host}:{args.port}/", flush=True)
    app.start(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
