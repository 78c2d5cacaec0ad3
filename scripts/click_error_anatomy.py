"""Where do the errors of a click sequence lie, and what does each click do to them?

    python scripts/click_error_anatomy.py --split validation --sources mr_hippocampus --clicks 10 \
        --json results/click_error_anatomy_validation_hippocampus.json

Runs the click protocol (:func:`claraseg.evaluate.protocol.run_structure`, DeepGrow 3D) on the structures
of a split of the sample data and reports, per structure:

- the final mask's false positives and false negatives, and the share of each within one voxel of the
  truth's boundary (a thin shell of disagreement, which clicks hardly reach, or whole missing parts);
- for every click from ``--from-click`` on, the errors within ``--radius`` mm of the click before and
  after it, apart for those of the click's own kind (a background click's false positives) and of the
  other kind (its false negatives), and the errors farther away: whether a click fixes what it points at,
  over-corrects past it, or changes the mask elsewhere.

Use the validation split (the test split chooses nothing). ``--models-dir`` evaluates another models
folder. One thread by default, so runs are reproducible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


class _Recorder:
    """A session proxy that keeps the object's whole mask after every click."""

    def __init__(self, session, sink: list):
        self._s, self._sink = session, sink

    def __getattr__(self, name):
        return getattr(self._s, name)

    def click(self, model, foreground=(), background=(), object_id="1", slice_axis=None):
        delta = self._s.click(model, foreground, background, object_id=object_id, slice_axis=slice_axis)
        self._sink.append(self._s.mask(object_id).astype(bool))
        return delta


def _near(shape, point_ijk, spacing, radius_mm: float) -> np.ndarray:
    kk, jj, ii = np.ogrid[:shape[0], :shape[1], :shape[2]]
    i, j, k = point_ijk
    return (((ii - i) * spacing[0]) ** 2 + ((jj - j) * spacing[1]) ** 2 + ((kk - k) * spacing[2]) ** 2) <= radius_mm ** 2


def anatomy(truth: np.ndarray, masks: list[np.ndarray], steps, spacing, radius_mm: float, from_click: int) -> dict:
    """The report of one structure from its masks after each click and the protocol's steps."""
    from scipy import ndimage

    final = masks[-1]
    fp, fn = final & ~truth, truth & ~final
    # voxel units: 1 = a voxel face-adjacent to the other side
    outside = ndimage.distance_transform_edt(~truth)[fp]
    inside = ndimage.distance_transform_edt(truth)[fn]
    clicks = []
    for n in range(max(from_click, 2), len(masks) + 1):
        before, after = masks[n - 2], masks[n - 1]
        step = steps[n - 1]
        fg = step.kind == "foreground"
        near = _near(truth.shape, step.points[0], spacing, radius_mm)
        own0, own1 = ((truth & ~before), (truth & ~after)) if fg else ((before & ~truth), (after & ~truth))
        other0, other1 = ((before & ~truth), (after & ~truth)) if fg else ((truth & ~before), (truth & ~after))
        clicks.append({"click": n, "kind": step.kind,
                       "near_own": [int((own0 & near).sum()), int((own1 & near).sum())],
                       "near_other": [int((other0 & near).sum()), int((other1 & near).sum())],
                       "far": [int(((before ^ truth) & ~near).sum()), int(((after ^ truth) & ~near).sum())]})
    return {"false_positives": int(fp.sum()), "false_negatives": int(fn.sum()),
            "fp_within_1_voxel": round(float((outside <= 1).mean()), 3) if fp.any() else None,
            "fn_within_1_voxel": round(float((inside <= 1).mean()), 3) if fn.any() else None,
            "clicks": clicks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--sources", default=None, help="comma-separated folders of the split (default: all)")
    ap.add_argument("--data", default=None, help="sample data folder (default: $CLARASEG_DATA or ../shared/data)")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--model", default="deepgrow3d")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--radius", type=float, default=5.0, help="mm around a click counted as near it")
    ap.add_argument("--from-click", type=int, default=4, help="report the clicks from this one on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from claraseg.engine import LocalBackend
    from claraseg.evaluate.protocol import run_structure
    from claraseg.evaluate.scans import split_structures
    from claraseg.models.pretrain import default_data_dir

    torch.set_num_threads(args.threads)
    data = args.data or str(default_data_dir())
    sources = args.sources.split(",") if args.sources else None
    backend = LocalBackend(args.models_dir, device="cpu", idle_timeout=None)
    rows = []
    t0 = time.time()
    for s in split_structures(args.split, data, sources=sources):
        session = backend.open_session(s.image)
        masks: list[np.ndarray] = []
        try:
            r = run_structure(_Recorder(session, masks), args.model, "deepgrow3d", s.truth, label=s.label,
                              name=s.name, interactions=args.clicks)
        finally:
            session.close()
        row = {"case": s.case, "name": s.name, "voxels": int(s.truth.sum()), "dice": [round(d, 4) for d in r.dice],
               **anatomy(s.truth, masks, r.interactions, s.image.spacing, args.radius, args.from_click)}
        rows.append(row)
        c = row["clicks"]
        print(f"{s.case[-28:]:28s} {s.name[:16]:16s} Dice {row['dice'][-1]:.3f}  FP {row['false_positives']} "
              f"FN {row['false_negatives']}  near own {sum(x['near_own'][0] for x in c)}->{sum(x['near_own'][1] for x in c)} "
              f"other {sum(x['near_other'][0] for x in c)}->{sum(x['near_other'][1] for x in c)}", flush=True)
    total = {key: [sum(x[key][i] for row in rows for x in row["clicks"]) for i in (0, 1)]
             for key in ("near_own", "near_other", "far")}
    report = {"split": args.split, "sources": sources, "model": args.model, "models_dir": args.models_dir,
              "clicks": args.clicks, "radius_mm": args.radius, "from_click": args.from_click, "threads": args.threads,
              "wall_s": round(time.time() - t0, 1), "structures": len(rows),
              "mean_dice_curve": [round(float(np.mean([r["dice"][i] for r in rows])), 4) for i in range(args.clicks)],
              "errors_near_clicks_before_after": total,
              "fp_within_1_voxel_median": float(np.median([r["fp_within_1_voxel"] for r in rows if r["fp_within_1_voxel"] is not None])),
              "fn_within_1_voxel_median": float(np.median([r["fn_within_1_voxel"] for r in rows if r["fn_within_1_voxel"] is not None])),
              "per_structure": rows}
    print(json.dumps({k: v for k, v in report.items() if k != "per_structure"}, indent=1))
    if args.json:
        from claraseg.evaluate.report import write_json

        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
