"""Do two versions of the engine give the same masks, click by click? (the speed work's quality check)

    PYTHONPATH=/path/to/tree_a python scripts/click_equivalence.py record --out a.npz
    PYTHONPATH=/path/to/tree_b python scripts/click_equivalence.py record --out b.npz
    python scripts/click_equivalence.py compare a.npz b.npz --json results/x.json

``record`` runs the click protocol (``claraseg.evaluate.protocol.run_structure``) with DeepGrow 3D,
DEXTR3D (extreme points, then DeepGrow 3D clicks) and DeepGrow 2D on every structure of a split of the
sample data (default: validation) and stores the object's whole mask after every interaction (bit-packed)
and the protocol's Dice. ``compare`` gives the Dice between the two versions' masks for every interaction,
the smallest per model, and the protocol's mean Dice curves of both. Both runs use the same thread count
(``--threads``, default 1: reproducible).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


class _Recorder:
    """A session proxy that stores the object's mask after every interaction."""

    def __init__(self, session, sink: list):
        self._s, self._sink = session, sink

    def __getattr__(self, name):
        return getattr(self._s, name)

    def _keep(self, object_id):
        self._sink.append(np.packbits(self._s.mask(object_id)))

    def click(self, model, foreground=(), background=(), object_id="1", slice_axis=None):
        delta = self._s.click(model, foreground, background, object_id=object_id, slice_axis=slice_axis)
        self._keep(object_id)
        return delta

    def extreme_points(self, model, points, object_id="1"):
        delta = self._s.extreme_points(model, points, object_id=object_id)
        self._keep(object_id)
        return delta


def record(args) -> int:
    import torch

    from claraseg.engine import LocalBackend
    from claraseg.evaluate.protocol import run_structure
    from claraseg.evaluate.scans import split_structures

    torch.set_num_threads(args.threads)
    structures = split_structures(args.split, args.data)
    backend = LocalBackend(device="cpu", idle_timeout=None)
    out: dict[str, np.ndarray] = {}
    meta = {"split": args.split, "clicks": args.clicks, "threads": args.threads, "structures": []}
    t0 = time.time()
    try:
        for n, st in enumerate(structures):
            session = backend.open_session(st.image)
            try:
                for model in args.models:
                    masks: list = []
                    r = run_structure(_Recorder(session, masks), model, model, st.truth, interactions=args.clicks,
                                      refine_model="deepgrow3d" if model == "dextr3d" else None,
                                      object_id=f"{model}-{n}")
                    key = f"{n}:{model}"
                    for i, m in enumerate(masks):
                        out[f"{key}:{i}"] = m
                    meta["structures"].append({"key": key, "case": st.case, "name": st.name,
                                               "voxels": int(st.truth.sum()), "shape": list(st.truth.shape),
                                               "dice": [round(float(d), 6) for d in r.dice],
                                               "latency_ms": [round(float(v), 1) for v in r.latency_ms]})
            finally:
                session.close()
            print(f"{n + 1}/{len(structures)} {st.case}:{st.name} ({time.time() - t0:.0f} s)", file=sys.stderr)
    finally:
        backend.close()
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez_compressed(args.out, **out)
    return 0


def compare(args) -> int:
    from claraseg.evaluate.protocol import dice

    a, b = np.load(args.a), np.load(args.b)
    meta_a = json.loads(a["meta"].tobytes())
    meta_b = json.loads(b["meta"].tobytes())
    rows, per_model = [], {}
    for sa, sb in zip(meta_a["structures"], meta_b["structures"]):
        assert sa["key"] == sb["key"], (sa["key"], sb["key"])
        model = sa["key"].split(":")[1]
        size = int(np.prod(sa["shape"]))
        dices = []
        for i in range(max(len(sa["dice"]), len(sb["dice"]))):
            ka, kb = f"{sa['key']}:{i}", f"{sb['key']}:{i}"
            if ka not in a or kb not in b:
                break
            ma = np.unpackbits(a[ka])[:size].astype(bool)
            mb = np.unpackbits(b[kb])[:size].astype(bool)
            dices.append(round(dice(ma, mb), 6))
        rows.append({"key": sa["key"], "case": sa["case"], "name": sa["name"], "voxels": sa["voxels"],
                     "dice_between": dices, "identical": [d == 1.0 for d in dices],
                     "protocol_dice_a": sa["dice"], "protocol_dice_b": sb["dice"]})
        per_model.setdefault(model, []).append(rows[-1])
    summary = {}
    for model, rs in per_model.items():
        between = [d for r in rs for d in r["dice_between"]]
        curve_a = np.mean([r["protocol_dice_a"] for r in rs], axis=0)
        curve_b = np.mean([r["protocol_dice_b"] for r in rs], axis=0)
        summary[model] = {"structures": len(rs), "interactions": len(between),
                          "identical": int(sum(d == 1.0 for d in between)),
                          "min_dice_between": min(between), "mean_dice_between": round(float(np.mean(between)), 6),
                          "mean_protocol_dice_a": np.round(curve_a, 4).tolist(),
                          "mean_protocol_dice_b": np.round(curve_b, 4).tolist(),
                          "max_mean_curve_difference": round(float(np.abs(curve_a - curve_b).max()), 5)}
    report = {"a": args.a, "b": args.b, "split": meta_a["split"], "clicks": meta_a["clicks"],
              "threads": meta_a["threads"], "summary": summary, "structures": rows}
    for model, s in summary.items():
        print(f"{model}: {s['interactions']} interactions on {s['structures']} structures, {s['identical']} identical; "
              f"min Dice between {s['min_dice_between']}, mean {s['mean_dice_between']}; mean protocol Dice "
              f"{s['mean_protocol_dice_a']} vs {s['mean_protocol_dice_b']} (max diff {s['max_mean_curve_difference']})")
    if args.json:
        from claraseg.models.bundle import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--split", default="validation")
    r.add_argument("--data", default="../shared/data")
    r.add_argument("--clicks", type=int, default=5)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--models", nargs="+", default=["deepgrow3d", "dextr3d", "deepgrow2d"])
    r.set_defaults(func=record)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--json")
    c.set_defaults(func=compare)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
