"""The Slicer modules' pure-Python packages are imported from the module folders, as Slicer does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = [ROOT / "ClaraAnnotate", ROOT / "ClaraTrainModule"]
for d in MODULE_DIRS:
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))


SERVER_TESTS = ROOT / "tests" / "server"
TOKEN = "tok-123456789012"


@pytest.fixture(scope="session")
def standin_server(tmp_path_factory):
    """A real ``claraseg serve`` on 127.0.0.1 hosting the server tests' deterministic stand-in backend."""
    if not (SERVER_TESTS / "standin.py").exists():
        pytest.skip("tests/server/standin.py (the server tests' stand-in backend) is missing")
    from claraseg.server.testing import ServerProcess

    tmp = tmp_path_factory.mktemp("standin-server")
    srv = ServerProcess(["--backend", "standin:make"], tmp / "datastore", tmp / "server.log",
                        env={"PYTHONPATH": str(SERVER_TESTS)}, token=TOKEN)
    yield srv
    srv.stop()
