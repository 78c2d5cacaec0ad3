"""The contract suite runs against LocalBackend (in-process) and RemoteBackend (a real server on 127.0.0.1
hosting the same backend); ``backend`` is parametrised over both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from _setup import TOKEN, backend_setup  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return backend_setup(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def local_backend(setup):
    b = setup[2]()
    yield b
    b.close()


@pytest.fixture(scope="module")
def remote_backend(setup, tmp_path_factory):
    from claraseg.client import RemoteBackend
    from claraseg.server.testing import ServerProcess

    tmp = tmp_path_factory.mktemp("contract-server")
    args, env = setup[0], setup[1]
    with ServerProcess([*args, "--workers", "2"], tmp / "datastore", tmp / "server.log", env=env, token=TOKEN) as srv:
        b = RemoteBackend(srv.url, TOKEN)
        yield b
        b.close()


@pytest.fixture(params=["local", "remote"])
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(scope="module")
def case():
    """A small oblique phantom and its label."""
    from claraseg.io import make_phantom

    return make_phantom(seed=7, size_ijk=(48, 48, 32))
