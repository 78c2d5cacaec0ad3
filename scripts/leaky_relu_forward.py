"""ONNX Runtime forwards of the default interactive networks: the exported graph with PReLU against the same graph
with its single-slope PReLUs as LeakyReLUs (``claraseg.runtimes.export.scalar_prelu_as_leaky_relu``, what the
engine runs), interleaved round by round, at the engine's session options.

    python scripts/leaky_relu_forward.py --threads 2 --rounds 15 --json results/leaky_relu_forward_<date>.json

Per network and batch (the click path's: DeepGrow 3D 1, DEXTR3D 2 and 4, DeepGrow 2D 4): median wall and process
CPU ms per forward of each graph, their ratio, and whether the outputs are bit-identical on seeded inputs. With
``--ops``, also each graph's time per operator type from ONNX Runtime's profiler (its share of the forward).
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np

CASES = (("deepgrow3d", 1), ("dextr3d", 2), ("dextr3d", 4), ("deepgrow2d", 4))


def _session(source, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _op_shares(source, threads: int, x: np.ndarray, runs: int = 5) -> dict[str, float]:
    """Percent of the profiled kernel time per operator type over ``runs`` forwards of ``x``."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    s = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {s.get_inputs()[0].name: x})
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + float(e["dur"])
    whole = sum(totals.values()) or 1.0
    return {op: round(100.0 * t / whole, 1) for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json")
    p.add_argument("--ops", action="store_true", help="operator shares from ONNX Runtime's profiler")
    args = p.parse_args(argv)

    import onnx
    import torch

    from claraseg.evaluate.runner import environment
    from claraseg.models.registry import ModelRegistry
    from claraseg.runtimes.export import input_shape, onnx_bytes, scalar_prelu_as_leaky_relu

    torch.set_num_threads(args.threads)
    registry = ModelRegistry()
    rows = []
    for name, batch in CASES:
        bundle = registry.get(name)
        net = bundle.load_network("cpu")
        shape = input_shape(bundle)
        rewritten = onnx.load_from_string(onnx_bytes(net, shape))
        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(net, (torch.zeros((1, *shape)),), buf, dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["pred"], dynamic_axes={"image": {0: "batch"}})
        plain = onnx.load_from_string(buf.getvalue())
        assert scalar_prelu_as_leaky_relu(onnx.load_from_string(buf.getvalue())) > 0
        sessions = {"prelu": _session(plain.SerializeToString(), args.threads),
                    "leaky_relu": _session(rewritten.SerializeToString(), args.threads)}
        rng = np.random.default_rng(0)
        x = rng.random((batch, *shape), dtype=np.float32)
        x[:, 1:] = (x[:, 1:] > 0.97).astype(np.float32)
        outs = {k: s.run(None, {s.get_inputs()[0].name: x})[0] for k, s in sessions.items()}
        identical = bool(np.array_equal(outs["prelu"], outs["leaky_relu"]))
        wall: dict[str, list] = {k: [] for k in sessions}
        cpu: dict[str, list] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, s in sessions.items():
                t, c = time.perf_counter(), time.process_time()
                s.run(None, {s.get_inputs()[0].name: x})
                wall[k].append(1000 * (time.perf_counter() - t))
                cpu[k].append(1000 * (time.process_time() - c))
        row = {"network": name, "batch": batch, "input": [batch, *shape], "identical_outputs": identical}
        for k in sessions:
            row[f"{k}_wall_ms"] = round(float(np.median(wall[k])), 2)
            row[f"{k}_cpu_ms"] = round(float(np.median(cpu[k])), 2)
        row["wall_ratio"] = round(row["leaky_relu_wall_ms"] / row["prelu_wall_ms"], 3)
        row["cpu_ratio"] = round(row["leaky_relu_cpu_ms"] / row["prelu_cpu_ms"], 3)
        if args.ops:
            row["op_share_pct"] = {"prelu": _op_shares(plain.SerializeToString(), args.threads, x),
                                   "leaky_relu": _op_shares(rewritten.SerializeToString(), args.threads, x)}
            print(f"{name} batch {batch} operator shares (%): {row['op_share_pct']}")
        rows.append(row)
        print(f"{name} batch {batch}: PReLU {row['prelu_wall_ms']} ms (CPU {row['prelu_cpu_ms']}), LeakyReLU "
              f"{row['leaky_relu_wall_ms']} ms (CPU {row['leaky_relu_cpu_ms']}): wall {row['wall_ratio']}x, CPU "
              f"{row['cpu_ratio']}x; outputs identical: {identical}")
    if args.json:
        from claraseg.models.bundle import write_json_atomic

        write_json_atomic(args.json, {"threads": args.threads, "rounds": args.rounds, "environment": environment(),
                                      "cases": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
