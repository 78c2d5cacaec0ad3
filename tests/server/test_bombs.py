"""Decompression bombs, lying Content-Length headers and session memory against a real server whose address
space is limited with ``prlimit --as``: every one is refused with 4xx/503 and the server keeps serving.
The same server may write files of 3 MB at most (``--fsize``), so a larger save meets a "full disk"."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests

from claraseg.client.wire import VOLUME_MEDIA_TYPE, encode_volume_parts
from claraseg.io import Image

HERE = Path(__file__).resolve().parent
TOKEN = "bomb-test-token-0123"
#: Address space of the server: its idle size (Python, numpy, SimpleITK, torch ~1.1 GB) plus ~1 GB.
AS_LIMIT = 2300 * 2**20
UPLOAD_MB = 200
#: Largest file the server may write (RLIMIT_FSIZE): a stand-in for a full disk.
FSIZE_LIMIT = 3 * 2**20


def _h() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    from claraseg.server.testing import ServerProcess

    if shutil.which("prlimit") is None:
        pytest.fail("prlimit (util-linux) is needed to limit the server's memory")
    tmp = tmp_path_factory.mktemp("bombs")
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    srv = ServerProcess(["--backend", "standin:make", "--max-upload-mb", str(UPLOAD_MB), "--max-body-mb", "1",
                         "--max-session-mb", "300", "--workers", "2"],
                        tmp / "datastore", tmp / "server.log", env=env, token=TOKEN,
                        wrapper=["prlimit", f"--as={AS_LIMIT}", f"--fsize={FSIZE_LIMIT}", "--"])
    srv.datastore = tmp / "datastore"
    yield srv
    srv.stop()


def _zeros_gz(n: int, prefix: bytes = b"") -> bytes:
    """gzip of ``prefix`` + ``n`` zero bytes, built in chunks (a few hundred KB for hundreds of MB)."""
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [c.compress(prefix)]
    chunk = bytes(1 << 24)
    while n > 0:
        out.append(c.compress(chunk[:min(n, len(chunk))]))
        n -= len(chunk)
    out.append(c.flush())
    return b"".join(out)


def _nifti_header(dims, datatype=2, bitpix=8, pixdim=(1.0, 1.0, 1.0)) -> bytes:
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<2h", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<2f", h, 112, 1.0, 0.0)
    h[344:348] = b"n+1\x00"
    return bytes(h)


def _put_file(srv, name: str, data: bytes) -> requests.Response:
    return requests.put(srv.url + "/session/", files={"files": (name, data)}, headers=_h(), timeout=120)


def _alive(srv) -> None:
    assert srv.alive(), srv.log_tail()
    assert requests.get(srv.url + "/info/", headers=_h(), timeout=10).status_code == 200


def test_header_bombs_are_refused_before_allocation(limited):
    cases = {
        # 1024^3 float64 declared (8 GiB), a few bytes sent
        "f64-cube.nii.gz": gzip.compress(_nifti_header((1024, 1024, 1024), 64, 64) + bytes(64)),
        # 2048^3 in NRRD, gzip encoding
        "cube.nrrd": b"NRRD0004\ntype: double\ndimension: 3\nsizes: 2048 2048 2048\nencoding: gzip\n\n" + gzip.compress(b"\0" * 64),
        # 1000^3 doubles in MetaImage
        "cube.mha": b"ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n" + bytes(64),
        # 600 x 600 x 600 int16 (432 MB) declared: over the upload limit
        "big.nii": _nifti_header((600, 600, 600), 4, 16) + bytes(64),
    }
    for name, data in cases.items():
        r = _put_file(limited, name, data)
        assert r.status_code in (400, 413), (name, r.status_code, r.text)
    _alive(limited)


def test_decompression_bombs_are_bounded(limited):
    small_header = _nifti_header((64, 64, 64))  # 256 KB of voxels declared ...
    cases = {
        "lying.nii.gz": _zeros_gz(300 * 2**20, small_header),  # ... 300 MB inflated
        "bomb.nrrd.gz": _zeros_gz(300 * 2**20, b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\n\n"),
        "bomb.mha.gz": _zeros_gz(300 * 2**20, b"NDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"),
    }
    for name, data in cases.items():
        r = _put_file(limited, name, data)
        assert r.status_code in (400, 413), (name, r.status_code, r.text)
    r = requests.put(limited.url + "/session/", data=_zeros_gz(300 * 2**20), timeout=120,
                     headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE, "Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    _alive(limited)


def test_lying_content_length_allocates_nothing(limited):
    """Connections that announce almost the upload limit and send 100 bytes, held open together."""
    port = int(limited.url.rsplit(":", 1)[1])
    socks = []
    try:
        for _ in range(8):  # 1.6 GB announced: more than the address space left
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall((f"PUT /session/?filename=x.nii HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                       f"Content-Type: application/octet-stream\r\nContent-Length: {UPLOAD_MB * 2**20 - 1}\r\n\r\n").encode()
                      + b"\0" * 100)
            socks.append(s)
        time.sleep(1.0)
        _alive(limited)
        assert limited.rss_bytes() < 1500 * 2**20, limited.rss_bytes()
    finally:
        for s in socks:
            s.close()
    _alive(limited)


def test_set_mask_box_larger_than_the_session_is_refused(limited):
    img = Image(np.zeros((8, 16, 16), np.int16))
    head, vox = encode_volume_parts(img)
    r = requests.put(limited.url + "/session/", data=head + bytes(vox),
                     headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE}, timeout=30)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    # A box of 1000 x 1024 x 1024 voxels (its zlib payload would inflate up to 1 GiB) for a 16 x 16 x 8 session.
    payload = zlib.compress(bytes(1 << 20), 1)
    header = struct.pack("<4sBBBB3i3i3iII", b"CSMD", 1, 1, 1, 0, 0, 0, 0, 1024, 1024, 1000, 1024, 1024, 1000,
                         0, len(payload))
    r = requests.post(f"{limited.url}/session/{sid}/set_mask", data=header + payload, timeout=30,
                      headers={**_h(), "Content-Type": "application/x-claraseg-maskdelta"})
    assert r.status_code in (400, 413), r.text
    _alive(limited)


def test_sessions_are_bounded_by_bytes(limited):
    """300 MB of session memory: sessions of a 16 MB image (80 MB counted) fit three times, the next is 503."""
    img = Image(np.zeros((200, 200, 200), np.int16))
    head, vox = encode_volume_parts(img)
    body = head + bytes(vox)
    codes, opened = [], []
    for _ in range(5):
        r = requests.put(limited.url + "/session/", data=body, headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE},
                         timeout=60)
        codes.append(r.status_code)
        if r.status_code == 200:
            opened.append(r.json()["session_id"])
        else:
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
            assert "session memory" in r.json()["detail"]
    assert codes.count(200) >= 1 and codes[-1] == 503, codes
    for sid in opened:
        requests.delete(f"{limited.url}/session/{sid}", headers=_h(), timeout=30)
    r = requests.put(limited.url + "/session/", data=body, headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE}, timeout=60)
    assert r.status_code == 200, r.text  # closing sessions frees the budget
    requests.delete(f"{limited.url}/session/{r.json()['session_id']}", headers=_h(), timeout=30)
    _alive(limited)


def test_no_body_is_read_before_the_token(limited):
    """A request without the token is answered 401 at once, without waiting for (or parsing) its body."""
    port = int(limited.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /train/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 900000\r\n\r\n[[[[")
        answer = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "unauthorized"


def test_full_disk_answers_507_and_keeps_nothing(limited):
    rng = np.random.default_rng(0)
    img = Image(rng.integers(-1000, 1000, (80, 160, 160), dtype=np.int16))  # ~4 MB compressed
    head, vox = encode_volume_parts(img)
    r = requests.put(limited.url + "/datastore/image", params={"image": "too-big"}, data=head + bytes(vox),
                     headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE}, timeout=60)
    assert r.status_code == 507, r.text
    assert r.json()["code"] == "insufficient_storage"
    root = Path(limited.datastore)
    assert not (root / "images" / "too-big").exists()
    assert not list(root.rglob(".tmp-*"))
    small = Image(np.zeros((8, 16, 16), np.int16))
    head, vox = encode_volume_parts(small)
    r = requests.put(limited.url + "/datastore/image", params={"image": "small"}, data=head + bytes(vox),
                     headers={**_h(), "Content-Type": VOLUME_MEDIA_TYPE}, timeout=60)
    assert r.status_code == 200, r.text
    _alive(limited)


def test_client_survives_a_server_restart(limited, tmp_path):
    """The last test of the module: the server restarts on its port; the next click re-opens the session."""
    from claraseg.client import RemoteBackend
    from claraseg.server.testing import ServerProcess

    image = Image(np.arange(24 * 20 * 16, dtype=np.int16).reshape(16, 20, 24) % 200)
    with RemoteBackend(limited.url, TOKEN) as backend:
        session = backend.open_session(image)
        first = session.click("grow3d", foreground=[[10, 10, 8]])
        port = int(limited.url.rsplit(":", 1)[1])
        limited.stop()
        env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        with ServerProcess(["--backend", "standin:make"], tmp_path / "datastore", tmp_path / "server.log", env=env,
                           token=TOKEN, port=port):
            again = session.click("grow3d", foreground=[[10, 10, 8]], object_id="2")
            assert session.reopened == 1
            assert np.array_equal(again.to_full(), first.to_full())
