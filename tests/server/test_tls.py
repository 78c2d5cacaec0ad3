"""TLS through uvicorn's certificate options, with a self-signed certificate made by openssl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import TOKEN  # noqa: E402


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is needed to make a certificate")
def test_https_with_token(tmp_path):
    import requests

    from claraseg.client import RemoteBackend
    from claraseg.server.testing import ServerProcess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    here = Path(__file__).resolve().parent
    args = ["--backend", "standin:make", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    srv = ServerProcess(args, tmp_path / "ds", tmp_path / "log", env={"PYTHONPATH": str(here)}, token=TOKEN,
                        scheme="https", verify=str(cert))
    try:
        assert srv.url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(srv.url + "/info/", timeout=10)  # an unknown certificate is refused by default
        b = RemoteBackend(srv.url, TOKEN, verify=str(cert))
        assert b.models()
        b.close()
    finally:
        srv.stop()
