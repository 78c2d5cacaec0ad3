"""Where the time of a click goes (``claraseg bench --profile``).

The bench's protocol (:func:`~claraseg.evaluate.bench.bench_latency`: the phantom CT, its organs, the
clicks) is run on a local backend with the engine's stage timer on (:mod:`claraseg.engine.profile`).
Each interaction gives one record; they are grouped into DeepGrow 3D first clicks, DeepGrow 3D
correction clicks, DEXTR3D extreme points and DeepGrow 2D clicks, and every stage of a group is
reported as its median time per interaction and its share of the group's total time.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import numpy as np

from claraseg.engine.profile import Profiler
from claraseg.evaluate.bench import ORGANS, synthetic_ct
from claraseg.evaluate.protocol import run_structure
from claraseg.evaluate.runner import environment

#: Groups of the report: (name, model run, predicate on a record).
GROUPS = (
    ("deepgrow3d first click", "deepgrow3d", lambda r: r["kind"] == "click" and r["first"]),
    ("deepgrow3d correction clicks", "deepgrow3d", lambda r: r["kind"] == "click" and not r["first"]),
    ("dextr3d extreme points", "dextr3d", lambda r: r["kind"] == "extreme_points"),
    ("deepgrow2d clicks", "deepgrow2d", lambda r: r["kind"] == "click"),
)


def default_path(folder: str = "results") -> str:
    return f"{folder}/bench_profile_{datetime.date.today().isoformat()}.json"


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median total and, per stage, median ms per interaction (0 where it did not run), share of the
    summed time, and median calls; counters as medians per interaction."""
    totals = np.asarray([r["total_ms"] for r in records], np.float64)
    cpu = np.asarray([r["cpu_ms"] for r in records], np.float64)
    names = sorted({s for r in records for s in r["stages"]})
    stages = {}
    for name in names:
        wall, calls, cpu_ms = (np.asarray([r["stages"].get(name, (0.0, 0, 0.0))[i] for r in records], np.float64)
                               for i in range(3))
        stages[name] = {"median_ms": round(float(np.median(wall)), 2), "mean_ms": round(float(wall.mean()), 2),
                        "share_pct": round(100.0 * float(wall.sum()) / max(float(totals.sum()), 1e-9), 1),
                        "median_cpu_ms": round(float(np.median(cpu_ms)), 2),
                        "cpu_share_pct": round(100.0 * float(cpu_ms.sum()) / max(float(cpu.sum()), 1e-9), 1),
                        "median_calls": float(np.median(calls))}
    counters = sorted({c for r in records for c in r["counts"]})
    counts = {c: float(np.median([r["counts"].get(c, 0) for r in records])) for c in counters}
    return {"n": len(records), "p50_ms": round(float(np.percentile(totals, 50)), 1),
            "p95_ms": round(float(np.percentile(totals, 95)), 1), "mean_ms": round(float(totals.mean()), 1),
            "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 1),
            "stages": dict(sorted(stages.items(), key=lambda kv: -kv[1]["mean_ms"])), "counts": counts}


def bench_profile(backend, *, size_ijk: tuple[int, int, int] = (512, 512, 100), clicks: int = 5,
                  jitter_runs: int = 2, slice_axis: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Profile the bench's interactions by stage (a local backend: the stages are timed in-process)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.time()
    image, label = synthetic_ct(size_ijk)
    names = {info.name: v for v, info in label.labels.items()}
    kinds = {d.name: d.kind for d in backend.models()}
    objects = {o: label.array == names[o] for o in ORGANS if o in names}
    refine = "deepgrow3d" if kinds.get("deepgrow3d") == "deepgrow3d" else None
    records: dict[str, list] = {}
    session = backend.open_session(image)
    try:
        for model in ("deepgrow3d", "dextr3d", "deepgrow2d"):
            if kinds.get(model) != model:
                continue
            warm = next(iter(objects.values()))
            run_structure(session, model, model, warm, interactions=1, object_id="warm-up", slice_axis=slice_axis)
            with Profiler() as prof:
                for truth in objects.values():
                    if model == "dextr3d":
                        for s in [None] + list(range(jitter_runs)):
                            run_structure(session, model, model, truth, interactions=1, jitter_seed=s)
                    else:
                        run_structure(session, model, model, truth, interactions=clicks, slice_axis=slice_axis,
                                      refine_model=refine)
            records[model] = prof.records
    finally:
        session.close()
    groups = {}
    for name, model, pick in GROUPS:
        chosen = [r for r in records.get(model, []) if pick(r)]
        if chosen:
            groups[name] = summarise(chosen)
    return {"volume": {"size_ijk": list(image.size_ijk), "dtype": str(image.array.dtype),
                       "spacing": np.round(image.spacing, 4).tolist()},
            "clicks_per_object": clicks, "objects": list(objects),
            "threads": threads, "environment": environment(), "groups": groups,
            "note": "median ms per interaction of each stage's own time (nested stages excluded; a stage that "
                    "did not run counts 0) and its share of the group's summed time; 'refit/...' stages are "
                    "the DEXTR3D shape re-fit passes, counts are medians per interaction",
            "wall_s": round(time.time() - t0, 1)}


def format_profile(report: dict[str, Any]) -> str:
    """One table per group: stage, median ms, share of the click."""
    vol = report["volume"]
    lines = [f"profile: threads {report['threads']}, volume {vol['size_ijk']} {vol['dtype']}, "
             f"load {report['environment'].get('load_average_1_5_15min')}"]
    for name, g in report["groups"].items():
        lines.append(f"\n{name}: n={g['n']} p50 {g['p50_ms']} ms, p95 {g['p95_ms']} ms, mean {g['mean_ms']} ms "
                     f"(process CPU p50 {g['cpu_p50_ms']} ms)")
        lines.append(f"  {'stage':26s} {'median ms':>10s} {'mean ms':>9s} {'% time':>7s} {'CPU ms':>8s} "
                     f"{'% CPU':>6s} {'calls':>6s}")
        for stage, s in g["stages"].items():
            lines.append(f"  {stage:26s} {s['median_ms']:10.1f} {s['mean_ms']:9.1f} {s['share_pct']:7.1f} "
                         f"{s['median_cpu_ms']:8.1f} {s['cpu_share_pct']:6.1f} {s['median_calls']:6g}")
        if g["counts"]:
            lines.append("  counts per interaction (median): "
                         + ", ".join(f"{k} {v:g}" for k, v in g["counts"].items()))
    return "\n".join(lines)
