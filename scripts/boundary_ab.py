"""Boundary refinement of two engine versions on the calls a bench run makes, interleaved call by call.

    python scripts/boundary_ab.py --before /path/to/old/tree --threads 2 --reps 3 --json results/boundary_ab_<date>.json

Runs ``claraseg bench``'s click protocol once (this tree's engine, ``--threads``) while recording every call
of :func:`claraseg.engine.boundary.refine_boundary` (image, mask, grids, clicks), then times each recorded call
with this tree's module and with ``--before``'s ``claraseg/engine/boundary.py`` (loaded from its file),
alternated ``--reps`` times; the best wall and process-CPU time per call are summed per version. Every result of
both versions must equal the recorded one (the script stops otherwise).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a checkout of the engine version to compare with")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch

    import claraseg.engine.boundary as after
    import claraseg.engine.stages as stages
    from claraseg.engine import LocalBackend
    from claraseg.evaluate.bench import bench_latency
    from claraseg.evaluate.runner import environment

    torch.set_num_threads(args.threads)
    before = _load(Path(args.before) / "claraseg" / "engine" / "boundary.py", "boundary_before")
    calls = []
    recorded = stages.refine_boundary

    def record(voxels, spacing, mask, roi_spacing, fg=(), bg=(), **kw):
        out = recorded(voxels, spacing, mask, roi_spacing, fg, bg, **kw)
        calls.append((voxels, np.asarray(spacing), mask.copy(), np.asarray(roi_spacing), np.asarray(fg),
                      np.asarray(bg), kw, out.copy()))
        return out

    stages.refine_boundary = record
    backend = LocalBackend(device="cpu", idle_timeout=None)
    try:
        bench_latency(backend)
    finally:
        stages.refine_boundary = recorded
        backend.close()
    totals = {"before": [0.0, 0.0], "after": [0.0, 0.0]}
    for voxels, spacing, mask, roi, fg, bg, kw, expected in calls:
        best = {k: [np.inf, np.inf] for k in totals}
        for _ in range(args.reps):
            for name, module in (("before", before), ("after", after)):
                t, c = time.perf_counter(), time.process_time()
                got = module.refine_boundary(voxels, spacing, mask, roi, fg, bg, **kw)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                if not (np.array_equal(got.start, expected.start) and np.array_equal(got.crop, expected.crop)):
                    print(f"{name}: a result differs from the recorded one", file=sys.stderr)
                    return 1
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
        for name in totals:
            totals[name] = [totals[name][0] + best[name][0], totals[name][1] + best[name][1]]
    report = {"threads": args.threads, "reps": args.reps, "calls": len(calls), "environment": environment(),
              **{f"{name}_ms": {"wall": round(1000 * v[0], 1), "cpu": round(1000 * v[1], 1)} for name, v in totals.items()},
              "wall_ratio": round(totals["after"][0] / totals["before"][0], 3),
              "cpu_ratio": round(totals["after"][1] / totals["before"][1], 3), "identical": True}
    print(f"{len(calls)} calls, {args.threads} thread(s): before {report['before_ms']}, after {report['after_ms']} ms "
          f"(best of {args.reps} per call, summed); after/before wall {report['wall_ratio']}, CPU {report['cpu_ratio']}; "
          "all results identical")
    if args.json:
        from claraseg.models.bundle import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
