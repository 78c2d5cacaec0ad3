"""Clara Annotate Web beside the API: `claraseg serve` starts it as a child process (a second port).

The web app (``ClaraAnnotateWeb/`` in a source checkout, needs the ``web`` extra) is a client of this
server: its engine and datastore are the server's, reached with the server's token. Without the extra
or the folder the server runs alone and says why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("claraseg.server")
#: The checkout holding ClaraAnnotateWeb/ (and ClaraAnnotate/ with the controller it is built on).
CHECKOUT = Path(__file__).resolve().parents[2]


def unavailable_reason() -> str | None:
    """Why the web app cannot start here (None when it can)."""
    if not (CHECKOUT / "ClaraAnnotateWeb" / "__main__.py").is_file():
        return f"ClaraAnnotateWeb/ is not beside claraseg ({CHECKOUT}); run from a source checkout"
    missing = [m for m in ("trame_slicer", "slicer", "trame") if importlib.util.find_spec(m) is None]
    if missing:
        return f"the web extra is not installed (missing {', '.join(missing)}): pip install 'claraseg[web]'"
    return None


class WebAppProcess:
    """The child process; ``url`` is what the status page links."""

    def __init__(self, api_url: str, port: int, token: str | None, wait_s: float = 120.0) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
        env.pop("CLARASEG_TOKEN", None)
        if token:
            env["CLARASEG_TOKEN"] = token  # not on the command line, where ps would show it
        cmd = [sys.executable, "-m", "ClaraAnnotateWeb", "--host", "127.0.0.1", "--port", str(port),
               "--server", api_url, "--wait", str(wait_s)]
        self.proc = subprocess.Popen(cmd, cwd=str(CHECKOUT), env=env)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate ``proc`` and reap it; kill it when it does not end within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def start(api_url: str, port: int, token: str | None) -> WebAppProcess | None:
    """Start the web app (port 0: do not), or log why it cannot run and return None."""
    if port == 0:
        return None
    reason = unavailable_reason()
    if reason:
        log.warning("Clara Annotate Web not started: %s", reason)
        return None
    web = WebAppProcess(api_url, port, token)
    log.info("Clara Annotate Web", extra={"url": web.url})
    return web
