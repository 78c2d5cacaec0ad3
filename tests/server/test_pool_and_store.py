"""Units under the server: the bounded work pool, session expiry bookkeeping, the datastore's guards."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from claraseg.errors import (
    ConfigError,
    GeometryMismatchError,
    ServerBusyError,
    SessionExpiredError,
    SessionNotFoundError,
)
from claraseg.io import Image
from claraseg.server.datastore import Datastore, InvalidIdError, check_id
from claraseg.server.sessions import SessionRegistry, WorkPool
from claraseg.server.settings import ServerSettings


def test_pool_refuses_when_full_and_never_blocks_the_loop():
    pool = WorkPool(workers=1, max_queue=1)
    gate = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(pool.run(gate.wait, 10))
        second = asyncio.ensure_future(pool.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        with pytest.raises(ServerBusyError):
            await pool.run(gate.wait, 10)
        ticks = 0
        for _ in range(5):  # the event loop keeps running while both slots are taken
            await asyncio.sleep(0.01)
            ticks += 1
        gate.set()
        await first
        await second
        assert ticks == 5 and pool.pending == 0
        assert await pool.run(lambda: 42) == 42  # slots are released

    asyncio.run(scenario())
    pool.shutdown()


def test_serialized_pool_runs_one_call_at_a_time():
    pool = WorkPool(workers=3, max_queue=3, serialize=True)
    active, peak = [0], [0]
    lock = threading.Lock()

    def work():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.02)
        with lock:
            active[0] -= 1

    async def scenario():
        await asyncio.gather(*(pool.run(work) for _ in range(5)))

    asyncio.run(scenario())
    pool.shutdown()
    assert peak[0] == 1


class _Closable:
    closed = False

    def close(self):
        self.closed = True


def test_registry_distinguishes_expired_from_unknown_and_evicts_lru():
    reg = SessionRegistry(idle_timeout=0.05, max_sessions=2)
    a = reg.add(_Closable(), image_size=(1, 1, 1), dtype="int16", nbytes=2)
    threading.Event().wait(0.1)
    with pytest.raises(SessionExpiredError):
        reg.get(a.id)
    assert a.session.closed
    with pytest.raises(SessionNotFoundError):
        reg.get("0" * 32)
    reg.idle_timeout = 60
    b, c, d = (reg.add(_Closable(), image_size=(1, 1, 1), dtype="int16", nbytes=2, expiry=60) for _ in range(3))
    assert b.session.closed and len(reg) == 2
    with pytest.raises(SessionExpiredError):
        reg.get(b.id)
    assert reg.get(d.id) is d


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "/etc", ".hidden", "a..b", "x" * 129, "a b",
                                 "a\x00b", "%2e%2e"])
def test_ids_that_could_leave_the_datastore_are_refused(bad):
    with pytest.raises(InvalidIdError):
        check_id(bad)


def test_datastore_guards(tmp_path, phantom_pair):
    store = Datastore(tmp_path / "ds")
    image, label = phantom_pair
    store.add_image("p1", image)
    with pytest.raises(GeometryMismatchError):
        store.save_label("p1", Image(label.array, label.origin + 5, label.spacing, label.direction))
    rec = store.save_label("p1", label, author="a")
    # A crash between voxels and record leaves an invisible version whose number is not reused.
    (tmp_path / "ds" / "labels" / "p1" / "final" / "v0002.nii.gz").write_bytes(b"partial")
    assert store.label_record("p1")["version"] == rec["version"] == 1
    assert store.save_label("p1", label)["version"] == 3
    assert np.array_equal(store.read_image("p1").array, image.array)


def test_label_versions_go_past_9999(tmp_path, phantom_pair):
    store = Datastore(tmp_path / "ds")
    image, label = phantom_pair
    store.add_image("p1", image)
    store.save_label("p1", label)
    tag_dir = tmp_path / "ds" / "labels" / "p1" / "final"
    rec = json.loads((tag_dir / "v0001.json").read_text())
    (tag_dir / "v0001.nii.gz").rename(tag_dir / "v9999.nii.gz")
    (tag_dir / "v9999.json").write_text(json.dumps({**rec, "version": 9999}))
    (tag_dir / "v0001.json").unlink()
    assert store.save_label("p1", label, author="b")["version"] == 10000
    assert store.label_record("p1")["version"] == 10000
    assert [r["version"] for r in store.label_versions("p1")] == [9999, 10000]
    assert store.label_path("p1", version=9999).name == "v9999.nii.gz"
    assert store.save_label("p1", label)["version"] == 10001


def test_settings_refuse_unsafe_binds():
    with pytest.raises(ConfigError, match="token"):
        ServerSettings(host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="short"):
        ServerSettings(host="0.0.0.0", token="abc").check()
    ServerSettings(host="0.0.0.0", token="long-enough-token").check()
    ServerSettings(host="::1").check()


def test_local_backend_leaves_the_process_allocator_alone(tmp_path):
    """``mallopt`` changes the allocator of the whole process: the server's pool calls it, the in-process
    engine (inside Slicer) must not."""
    import subprocess
    import sys

    pytest.importorskip("claraseg.engine", reason="the engine (claraseg[engine]) is not installed")
    code = (
        "import claraseg.backend as b\n"
        "calls = []\n"
        "b.share_malloc_arena = lambda: calls.append(1) or True\n"
        "from claraseg.models.testing import make_tiny_bundle\n"
        f"make_tiny_bundle('deepgrow3d', {str(tmp_path / 'deepgrow3d')!r})\n"
        "from claraseg.engine import LocalBackend\n"
        f"LocalBackend({str(tmp_path)!r}, device='cpu').close()\n"
        "assert not calls, 'LocalBackend called share_malloc_arena'\n"
        "from claraseg.server.sessions import WorkPool\n"
        "WorkPool(1, 0).shutdown()\n"
        "assert calls == [1], calls\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_tokens_of_whitespace_are_refused():
    for bad in ("        ", "tab\ttoken-123", "space token 123", "tökén-123456"):
        with pytest.raises(ConfigError):
            ServerSettings(host="127.0.0.1", token=bad).check()
    ServerSettings(host="127.0.0.1", token="Abc-123_xyz.~").check()
