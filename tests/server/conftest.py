"""Fixtures: one real ``claraseg serve`` subprocess per test module, on 127.0.0.1 with a token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import TOKEN, backend_setup  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    """A running server: ``.url``, ``.token``, ``.datastore`` and ``.proc``."""
    from claraseg.server.testing import ServerProcess

    tmp = tmp_path_factory.mktemp("server")
    args, env, _, _ = backend_setup(tmp_path_factory.getbasetemp())
    extra = getattr(request.module, "SERVER_ARGS", [])
    srv = ServerProcess([*args, "--max-upload-mb", "64", "--max-body-mb", "1", "--workers", "2", *extra],
                        tmp / "datastore", tmp / "server.log", env=env, token=TOKEN)
    srv.datastore = tmp / "datastore"
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def remote(served):
    from claraseg.client import RemoteBackend

    b = RemoteBackend(served.url, served.token)
    yield b
    b.close()


@pytest.fixture(scope="module")
def phantom():
    from claraseg.io import make_phantom

    return make_phantom(seed=3, size_ijk=(48, 48, 32))
