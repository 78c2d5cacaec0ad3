"""Run ``claraseg serve`` as a real subprocess on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``claraseg serve`` in a child process; ``with ServerProcess(...) as srv: srv.url``.

    Args:
        args: extra ``claraseg serve`` arguments (``--backend``, ``--models``, ``--token``...).
        datastore: datastore folder.
        log_path: where the server's JSON log lines go.
        env: extra environment variables (e.g. PYTHONPATH for a test backend).
        wrapper: a command the server runs under, e.g. ``["prlimit", "--as=2000000000", "--"]``.
        port: the port (default: a free one), e.g. to restart a server where its clients expect it.
    """

    def __init__(self, args: list[str], datastore: str | Path, log_path: str | Path, *,
                 env: dict[str, str] | None = None, token: str | None = None, startup_timeout: float = 120.0,
                 scheme: str = "http", verify: bool | str = True, wrapper: list[str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.token = token
        self.log_path = Path(log_path)
        cmd = [*(wrapper or []), sys.executable, "-m", "claraseg", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--datastore", str(datastore), *args]
        if token:
            cmd += ["--token", token]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/info/", headers=headers, timeout=2, verify=self.verify).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
