"""`claraseg bench-server`: what the remote path costs, measured against a real server on 127.0.0.1.

Figures (printed as JSON, optionally written to ``--out``):

- ``bytes_per_click``: request + response bytes (bodies and headers) of one click on a 512x512x100 int16 CT,
  as a fraction of the image's bytes, and against a full uncompressed uint8 mask (what MONAI Label returns).
- ``transport_overhead_ms``: median remote click latency minus median local (in-process) click latency.
- ``session_open_s``: upload + open of a 512x512x300 int16 CT.
- ``load``: N clients x M clicks at once: errors, equality with the single-client results, p50/p95 latency,
  server RSS idle vs after every session closed.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.io import Image, MaskDelta

from .cli import load_backend
from .testing import ServerProcess


def synthetic_ct(size_ijk: tuple[int, int, int], seed: int = 0) -> Image:
    """A CT-like int16 volume: air, a body ellipse of soft tissue with noise, and a bright organ."""
    i, j, k = size_ijk
    rng = np.random.default_rng(seed)
    kk, jj, ii = np.ogrid[:k, :j, :i]
    body = ((ii - i / 2) / (0.42 * i)) ** 2 + ((jj - j / 2) / (0.35 * j)) ** 2 <= 1
    vol = np.where(np.broadcast_to(body, (k, j, i)), 40, -1000).astype(np.int16)
    organ = ((ii - 0.6 * i) / (0.12 * i)) ** 2 + ((jj - 0.45 * j) / (0.1 * j)) ** 2 + ((kk - k / 2) / (0.3 * k)) ** 2 <= 1
    vol[np.broadcast_to(organ, vol.shape)] = 160
    vol += rng.normal(0, 15, vol.shape).astype(np.int16)
    return Image(vol, origin=(-200.0, -180.0, -100.0), spacing=(0.8, 0.8, 2.5))


def organ_clicks(size_ijk, n: int, seed: int = 1) -> list[list[int]]:
    """Clicks inside the synthetic organ, reproducible."""
    i, j, k = size_ijk
    rng = np.random.default_rng(seed)
    c = np.array([0.6 * i, 0.45 * j, k / 2])
    r = np.array([0.06 * i, 0.05 * j, 0.12 * k])
    return [[int(v) for v in np.clip(np.rint(c + rng.uniform(-1, 1, 3) * r), 0, np.array(size_ijk) - 1)] for _ in range(n)]


def _pick_model(backend) -> str:
    models = backend.models()
    for kind in ("deepgrow3d", "deepgrow2d", "dextr3d"):
        for m in models:
            if m.kind == kind:
                return m.name
    raise RuntimeError("the backend has no interactive model to click with")


def _click(session, model: str, kind: str, point, object_id: str) -> MaskDelta:
    if kind == "deepgrow2d":
        return session.click(model, foreground=[point], object_id=object_id, slice_axis=2)
    return session.click(model, foreground=[point], object_id=object_id)


def _header_bytes(headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.items())


def bytes_per_click(remote, model: str, kind: str, image: Image, n: int) -> dict[str, Any]:
    """Wire bytes of clicks (new object each: the first click of an object has the largest delta)."""
    import requests

    s = remote.open_session(image)
    sizes = []
    try:
        for t, p in enumerate(organ_clicks(image.size_ijk, n)):
            body = json.dumps({"model": model, "foreground": [p], "background": [], "object_id": f"b{t}",
                               "slice_axis": 2 if kind == "deepgrow2d" else None}).encode()
            r = remote._http.post(f"{remote.url}/session/{s.id}/click", data=body,
                                  headers={"Content-Type": "application/json"}, timeout=remote.infer_timeout)
            r.raise_for_status()
            req = requests.Request("POST", r.request.url, headers=r.request.headers).prepare()
            sizes.append(len(body) + _header_bytes(req.headers) + len(r.content) + _header_bytes(r.headers) + 40)
    finally:
        s.close()
    image_bytes = int(image.array.nbytes)
    full_mask = int(np.prod(image.size_ijk))
    worst = max(sizes)
    return {"image_size": list(image.size_ijk), "image_bytes": image_bytes, "clicks": n,
            "median_bytes": int(statistics.median(sizes)), "max_bytes": worst,
            "fraction_of_image": worst / image_bytes, "vs_full_uncompressed_mask": worst / full_mask,
            "full_mask_bytes": full_mask}


def latency(local, remote, model: str, kind: str, image: Image, n: int) -> dict[str, Any]:
    """Click latency in-process and over HTTP on the same image and clicks, interleaved so that machine
    load affects both alike; also the server's own compute time (``X-Compute-Ms``)."""
    clicks = organ_clicks(image.size_ijk, n, seed=2)
    ls, rs = local.open_session(image), remote.open_session(image)
    times: dict[str, list[float]] = {"local": [], "remote": [], "server_compute": []}
    try:
        for s in (ls, rs):
            _click(s, model, kind, clicks[0], "warm")
        for t, p in enumerate(clicks):
            for name, s in (("local", ls), ("remote", rs)):
                t0 = time.perf_counter()
                _click(s, model, kind, p, f"l{t}")
                times[name].append((time.perf_counter() - t0) * 1000)
            times["server_compute"].append(rs.last_compute_ms)
    finally:
        ls.close()
        rs.close()
    out: dict[str, Any] = {f"{k}_median_ms": statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_p95_ms": float(np.percentile(v, 95)) for k, v in times.items()})
    out["transport_overhead_ms"] = out["remote_median_ms"] - out["local_median_ms"]
    out["remote_minus_server_compute_ms"] = statistics.median(
        r - c for r, c in zip(times["remote"], times["server_compute"]))
    s = remote.open_session(image)
    try:
        floor = []
        for _ in range(30):  # an undo on an empty object: the protocol's round trip without inference
            t0 = time.perf_counter()
            s.undo("empty")
            floor.append((time.perf_counter() - t0) * 1000)
    finally:
        s.close()
    out["empty_round_trip_median_ms"] = statistics.median(floor)
    return out


def session_open(local, remote, image: Image) -> dict[str, Any]:
    out = {"image_size": list(image.size_ijk), "dtype": str(image.array.dtype), "image_mb": image.array.nbytes / 2**20}
    for name, backend in (("local", local), ("remote", remote)):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            s = backend.open_session(image)
            times.append(time.perf_counter() - t0)
            s.close()
        out[f"{name}_s"] = min(times)
    return out


def load(remote_factory, model: str, kind: str, image: Image, clients: int, clicks: int, srv) -> dict[str, Any]:
    """``clients`` sessions clicking at once; every result must equal the single-client run."""
    seq = organ_clicks(image.size_ijk, clicks, seed=3)

    def run(backend, lat: list[float] | None) -> list[MaskDelta]:
        s = backend.open_session(image)
        out = []
        try:
            for t, p in enumerate(seq):
                t0 = time.perf_counter()
                out.append(_click(s, model, kind, p, f"o{t % 5}"))
                if lat is not None:
                    lat.append((time.perf_counter() - t0) * 1000)
        finally:
            s.close()
        return out

    warm = remote_factory()
    reference = run(warm, None)
    rss_idle = srv.rss_bytes()
    results: list[list[MaskDelta] | None] = [None] * clients
    errors: list[str] = []
    lats: list[list[float]] = [[] for _ in range(clients)]
    backends = [remote_factory() for _ in range(clients)]

    def worker(n: int) -> None:
        try:
            results[n] = run(backends[n], lats[n])
        except Exception as e:  # counted and reported, the benchmark goes on
            errors.append(f"client {n}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for b in [*backends, warm]:
        b.close()
    time.sleep(1.0)
    rss_after = srv.rss_bytes()
    equal = all(r is not None and len(r) == len(reference) and all(
        a.start == b.start and a.stop == b.stop and np.array_equal(a.mask, b.mask) for a, b in zip(r, reference))
        for r in results)
    flat = [x for lat in lats for x in lat]
    return {"clients": clients, "clicks_each": clicks, "image_size": list(image.size_ijk), "errors": len(errors),
            "error_samples": errors[:3], "all_equal_single_client": bool(equal),
            "p50_ms": float(np.percentile(flat, 50)) if flat else None,
            "p95_ms": float(np.percentile(flat, 95)) if flat else None, "wall_s": wall,
            "clicks_per_s": len(flat) / wall if wall else None,
            "rss_idle_mb": rss_idle / 2**20, "rss_after_close_mb": rss_after / 2**20,
            "rss_ratio": rss_after / rss_idle if rss_idle else None}


def main(out: Path | None = None, quick: bool = False, models: Path | None = None, backend: str | None = None,
         device: str = "cpu", clients: int | None = None, clicks: int | None = None) -> int:
    from claraseg.client import RemoteBackend

    sizes = {"click": (512, 512, 100), "open": (512, 512, 300), "load": (256, 256, 100), "clients": 8, "clicks": 50,
             "n": 20}
    if quick:
        sizes = {"click": (256, 256, 64), "open": (256, 256, 120), "load": (96, 96, 48), "clients": 3, "clicks": 8,
                 "n": 6}
    sizes["clients"] = clients or sizes["clients"]
    sizes["clicks"] = clicks or sizes["clicks"]
    args = ["--workers", "2", "--max-upload-mb", "4096", "--max-sessions", "64"]
    if backend:
        args += ["--backend", backend]
    if models:
        args += ["--models", str(models)]
    report: dict[str, Any] = {"backend": backend or "LocalBackend", "models": str(models) if models else "defaults",
                              "quick": quick}
    local = load_backend(backend, models, device)
    with tempfile.TemporaryDirectory(prefix="claraseg-bench-") as tmp, \
            ServerProcess(args, Path(tmp) / "ds", Path(tmp) / "server.log", startup_timeout=300) as srv:
        remote = RemoteBackend(srv.url)
        model = _pick_model(remote)
        kind = next(m.kind for m in remote.models() if m.name == model)
        report["model"] = {"name": model, "kind": kind}
        ct = synthetic_ct(sizes["click"])
        report["bytes_per_click"] = bytes_per_click(remote, model, kind, ct, sizes["n"])
        report["latency"] = latency(local, remote, model, kind, ct, sizes["n"])
        del ct
        big = synthetic_ct(sizes["open"], seed=4)
        report["session_open"] = session_open(local, remote, big)
        del big
        report["load"] = load(lambda: RemoteBackend(srv.url), model, kind, synthetic_ct(sizes["load"], seed=5),
                              sizes["clients"], sizes["clicks"], srv)
        remote.close()
    local.close()
    b, lat, so, ld = report["bytes_per_click"], report["latency"], report["session_open"], report["load"]
    report["targets"] = {
        "bytes_per_click_le_1pct": b["fraction_of_image"] <= 0.01,
        "transport_overhead_le_30ms": lat["transport_overhead_ms"] <= 30,
        "session_open_le_3s": so["remote_s"] <= 3.0,
        "load_zero_errors_and_equal": ld["errors"] == 0 and ld["all_equal_single_client"],
        "rss_within_10pct": ld["rss_ratio"] is not None and ld["rss_ratio"] <= 1.10,
    }
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if out:
        from claraseg.io import write_text_atomic

        write_text_atomic(Path(out), text)
    return 0 if all(report["targets"].values()) else 1
