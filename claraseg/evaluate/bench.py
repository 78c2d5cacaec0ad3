"""Latency and memory benchmarks of a backend (``claraseg bench``), with the issue's targets beside them.

Per-interaction latency is measured on a synthetic CT (a phantom resampled to 512 x 512 x 100 int16
voxels) for organ-sized objects, prompted by the click protocol; session-open time and memory on a
512 x 512 x 300 int16 CT. With a local backend the times are compute only (no transfer).
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from claraseg.backend import Backend
from claraseg.evaluate.protocol import run_structure
from claraseg.evaluate.runner import environment
from claraseg.io import Image, make_phantom, resample_to

#: Targets of the issue (2 CPU threads, no GPU).
TARGETS = {
    "deepgrow3d": {"p50_ms": 250.0, "p95_ms": 500.0},
    "deepgrow2d": {"p50_ms": 15.0},
    "dextr3d": {"p50_ms": 150.0},
    "session_open_s": 2.0,
    "session_memory_factor": 2.0,
}
#: Organs of the phantom used as objects (large abdominal organs, as in the targets).
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


def synthetic_ct(size_ijk: tuple[int, int, int], seed: int = 7) -> tuple[Image, Image]:
    """A phantom CT and its labels on a ``size_ijk`` grid with clinical spacing (about 0.7 mm in plane):
    made at a coarse size and resampled, so a 512 x 512 x 300 volume takes seconds and little memory."""
    ni, nj, nk = size_ijk
    coarse = (128, 128, max(8, min(64, nk // 2)))
    image, label = make_phantom(seed=seed, size_ijk=coarse, oblique=False)
    spacing = image.spacing * np.asarray(coarse) / np.asarray(size_ijk)
    origin = image.origin + image.direction @ ((spacing - image.spacing) / 2.0)
    ref = Image(np.zeros((nk, nj, ni), np.uint8), origin, spacing, image.direction)
    ct = resample_to(image, ref, is_label=False)
    ct = Image(np.rint(ct.array).astype(np.int16), ct.origin, ct.spacing, ct.direction, metadata={"modality": "CT"})
    lab = resample_to(label, ref, is_label=True)
    return ct, lab


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _stats(ms: list[float]) -> dict[str, Any]:
    a = np.asarray(ms, dtype=np.float64)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1) if a.size else None,
            "p95_ms": round(float(np.percentile(a, 95)), 1) if a.size else None,
            "max_ms": round(float(a.max()), 1) if a.size else None}


def _judge(measured: dict[str, Any], target: dict[str, float]) -> dict[str, Any]:
    checks = {}
    for key, limit in target.items():
        value = measured.get(key)
        checks[key] = {"target": f"<= {limit:g}", "measured": value,
                       "pass": value is not None and value <= limit}
    return checks


def bench_latency(backend: Backend, *, size_ijk: tuple[int, int, int] = (512, 512, 100), clicks: int = 5,
                  jitter_runs: int = 2, slice_axis: int = 2) -> dict[str, Any]:
    """Per-interaction latency of the default interactive models on organ-sized objects."""
    image, label = synthetic_ct(size_ijk)
    names = {info.name: v for v, info in label.labels.items()}
    kinds = {d.name: d.kind for d in backend.models()}
    refine = "deepgrow3d" if kinds.get("deepgrow3d") == "deepgrow3d" else None
    out: dict[str, Any] = {}
    session = backend.open_session(image)
    try:
        objects = {o: label.array == names[o] for o in ORGANS if o in names}
        # One warm-up interaction per model, so first-call costs (weights, allocator) are not counted.
        for model in ("deepgrow3d", "deepgrow2d", "dextr3d"):
            if kinds.get(model) != model:
                out[model] = {"skipped": f"no {model} model on the backend"}
                continue
            warm = next(iter(objects.values()))
            run_structure(session, model, model, warm, interactions=1, object_id="warm-up", slice_axis=slice_axis)
            times: list[float] = []
            per_object = {}
            for organ, truth in objects.items():
                if model == "dextr3d":
                    runs = [run_structure(session, model, model, truth, interactions=1, jitter_seed=s)
                            for s in ([None] + list(range(jitter_runs)))]
                    ms = [r.latency_ms[0] for r in runs]
                else:
                    r = run_structure(session, model, model, truth, interactions=clicks, slice_axis=slice_axis,
                                      refine_model=refine)
                    ms = r.latency_ms
                times += ms
                per_object[organ] = {"voxels": int(truth.sum()), "latency_ms": [round(t, 1) for t in ms]}
            stats = _stats(times)
            out[model] = {**stats, "objects": per_object, "targets": _judge(stats, TARGETS[model])}
    finally:
        session.close()
    return {"volume": {"size_ijk": list(image.size_ijk), "dtype": str(image.array.dtype),
                       "spacing": np.round(image.spacing, 4).tolist()}, "models": out}


def bench_session(backend: Backend, *, size_ijk: tuple[int, int, int] = (512, 512, 300), repeats: int = 2) -> dict[str, Any]:
    """Session-open time and the memory a session holds, against the image's own bytes.

    Held memory is what the session keeps allocated (numpy, traced by ``tracemalloc``) after opening and
    after three DeepGrow 3D clicks on the liver; the process's RSS growth is reported beside it (it also
    counts allocator caches that outlive each call, so it is not what the session holds).
    """
    image, label = synthetic_ct(size_ijk)
    nbytes = int(image.array.nbytes)
    kinds = {d.name: d.kind for d in backend.models()}
    liver = np.argwhere(label.array == next(v for v, i in label.labels.items() if i.name == "liver"))
    clicks = [liver[len(liver) // 2], liver[len(liver) // 4], liver[3 * len(liver) // 4]]
    opens, held_open, held_clicks, rss_open, rss_clicks, reported = [], [], [], [], [], []
    for _ in range(repeats):
        before_rss = _rss_bytes()
        tracemalloc.start()
        t0 = time.perf_counter()
        session = backend.open_session(image)
        opens.append(time.perf_counter() - t0)
        held_open.append(tracemalloc.get_traced_memory()[0])
        rss_open.append(_rss_bytes() - before_rss)
        try:
            if kinds.get("deepgrow3d") == "deepgrow3d":
                for k, j, i in clicks:
                    session.click("deepgrow3d", [[int(i), int(j), int(k)]], object_id="memory")
                held_clicks.append(tracemalloc.get_traced_memory()[0])
                rss_clicks.append(_rss_bytes() - before_rss)
            if hasattr(session, "memory_bytes"):  # the local engine's own account (not part of the interface)
                reported.append(int(session.memory_bytes))
        finally:
            tracemalloc.stop()
            session.close()
    held = max(held_open + held_clicks)
    measured = {
        "open_s": round(float(np.median(opens)), 3),
        "held_after_open_bytes": int(np.median(held_open)),
        "held_after_clicks_bytes": int(np.median(held_clicks)) if held_clicks else None,
        "session_reported_bytes": int(np.median(reported)) if reported else None,
        "rss_growth_after_open_bytes": int(np.median(rss_open)),
        "rss_growth_after_clicks_bytes": int(np.median(rss_clicks)) if rss_clicks else None,
    }
    factor = round(held / nbytes, 3)
    checks = _judge({"session_open_s": measured["open_s"], "session_memory_factor": factor},
                    {k: TARGETS[k] for k in ("session_open_s", "session_memory_factor")})
    return {"volume": {"size_ijk": list(image.size_ijk), "dtype": str(image.array.dtype), "bytes": nbytes},
            "repeats": repeats, **measured, "memory_factor": factor,
            "memory_note": "memory held by the session (tracemalloc, after open and after 3 DeepGrow 3D clicks) "
                           "divided by the image's bytes; RSS growth includes allocator caches",
            "targets": checks}


def run_bench(backend: Backend, *, quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    """The whole benchmark; ``quick`` uses smaller volumes and fewer clicks (CI), which the report says."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    latency_size = (256, 256, 50) if quick else (512, 512, 100)
    session_size = (256, 256, 100) if quick else (512, 512, 300)
    t0 = time.time()
    report = {
        "quick": quick,
        "note": "quick run: volumes smaller than the targets' (pass/fail not comparable)" if quick else
                "volumes as in the issue's targets",
        "threads": threads or (sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None),
        "environment": environment(),
        "latency": bench_latency(backend, size_ijk=latency_size, clicks=3 if quick else 5,
                                 jitter_runs=1 if quick else 2),
        "session": bench_session(backend, size_ijk=session_size, repeats=1 if quick else 2),
    }
    report["wall_s"] = round(time.time() - t0, 1)
    checks = [c["pass"] for m in report["latency"]["models"].values() for c in m.get("targets", {}).values()]
    checks += [c["pass"] for c in report["session"]["targets"].values()]
    report["all_targets_pass"] = bool(checks) and all(checks)
    return report


def format_bench(report: dict[str, Any]) -> str:
    """Measurements beside targets, one line each."""
    lines = [f"threads {report['threads']}; {report['note']}"]
    vol = report["latency"]["volume"]
    lines.append(f"latency volume {vol['size_ijk']} {vol['dtype']} spacing {vol['spacing']}")
    for model, m in report["latency"]["models"].items():
        if "skipped" in m:
            lines.append(f"  {model}: skipped ({m['skipped']})")
            continue
        checks = "; ".join(f"{k} {c['measured']} ({c['target']}: {'PASS' if c['pass'] else 'FAIL'})"
                           for k, c in m["targets"].items())
        lines.append(f"  {model}: n={m['n']} p50 {m['p50_ms']} ms, p95 {m['p95_ms']} ms | {checks}")
    s = report["session"]
    lines.append(f"session volume {s['volume']['size_ijk']} {s['volume']['dtype']} ({s['volume']['bytes'] / 2**20:.0f} MiB)")
    for k, c in s["targets"].items():
        lines.append(f"  {k}: {c['measured']} ({c['target']}: {'PASS' if c['pass'] else 'FAIL'})")
    lines.append(f"all targets pass: {report['all_targets_pass']}")
    return "\n".join(lines)
