"""Evaluation commands: ``claraseg eval`` (click protocol, baseline, held-out) and ``claraseg bench``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from claraseg.errors import ClarasegError

DEFAULT_HELDOUT_MODELS = ("deepgrow3d", "deepgrow2d", "dextr3d")


def register(sub) -> None:
    from claraseg.evaluate.classical import METHODS
    from claraseg.evaluate.runner import MIN_VOXELS, PROTOCOL_KINDS

    p = sub.add_parser(
        "eval", help="click-protocol evaluation (ANCHORS.md) of a model and/or a classical baseline",
        description="Runs the click protocol on every chosen structure of a label map: Dice after each "
                    "interaction, NoC@80/85/90, Dice AUC, latency. --model evaluates a model (local engine, or "
                    "--server); --method a classical baseline; both together report them side by side. "
                    "--heldout evaluates the default models on the structures held out of their training.")
    p.add_argument("--model", help="model name (deepgrow3d, deepgrow2d, dextr3d, name@vN...)")
    p.add_argument("--method", choices=METHODS, help="classical seeded baseline run on the same protocol")
    p.add_argument("--kind", choices=PROTOCOL_KINDS,
                   help="protocol to follow (default: the model's kind; deepgrow3d for --method alone)")
    p.add_argument("--image", help="image: NIfTI/NRRD file or DICOM series folder")
    p.add_argument("--label", help="label map on the image's grid (NIfTI/NRRD/.seg.nrrd or DICOM folder)")
    p.add_argument("--labels", help="comma-separated label values to evaluate (default: all)")
    p.add_argument("--min-voxels", type=int, default=None,
                   help=f"skip smaller structures (default {MIN_VOXELS}; with --split the split file's, per folder)")
    p.add_argument("--clicks", type=int, default=20, help="interactions per structure, N (default %(default)s)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write a PNG of Dice against interactions here")
    p.add_argument("--server", help="evaluate through a claraseg server (URL) instead of the local engine")
    p.add_argument("--token", default=os.environ.get("CLARASEG_TOKEN"), help="server bearer token")
    p.add_argument("--models-dir", help="local engine: models folder (default: packaged bundles + $CLARASEG_MODELS)")
    p.add_argument("--device", default="cpu", help="local engine: cpu, cuda, auto (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--refine-model", help="DEXTR3D: model of the refinement clicks (default: deepgrow3d)")
    p.add_argument("--slice-axis", type=int, choices=(0, 1, 2), default=None,
                   help="DeepGrow 2D: slice normal 0 = i, 1 = j, 2 = k (default 2; not with --heldout)")
    p.add_argument("--jitter-seeds", type=int, default=0,
                   help="DEXTR3D robustness: also run with +-3-voxel jittered extreme points, this many seeds")
    p.add_argument("--split", choices=("validation", "test"),
                   help="evaluate the default models (or --model) on every scan of this split of the scan-level "
                        "split (claraseg/evaluate/scan_split.json): validation chooses settings, test reports")
    p.add_argument("--sources", help="--split: only these folders, comma-separated (e.g. mr_abdomen_3mm,mr_hippocampus)")
    p.add_argument("--tag", default="", help="--split: suffix of the report names (split_<split>_<model>_<tag>.json)")
    p.add_argument("--heldout", action="store_true",
                   help="evaluate the default models (or --model) on their held-out structures and fresh phantoms")
    p.add_argument("--data", default=os.environ.get("CLARASEG_DATA", "../shared/data"),
                   help="--heldout: the sample-data folder (default $CLARASEG_DATA or %(default)s)")
    p.add_argument("--out", default="results", help="--heldout: folder for the JSON and PNG (default %(default)s)")
    p.add_argument("--hippocampus-cases", type=int, default=6,
                   help="--heldout: how many held-out hippocampus cases to evaluate (default %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="--heldout: skip the classical baseline")
    p.add_argument("--baseline-only", action="store_true",
                   help="--heldout: only compute (and save in --out) the baselines, which need no weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="per-interaction latency, session-open time and memory, against the targets")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="small volumes, few clicks (CI)")
    p.add_argument("--models-dir", help="models folder (default: packaged bundles + $CLARASEG_MODELS)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default %(default)s)")
    p.add_argument("--json", help="write the report here (--profile: default results/bench_profile_<date>.json)")
    p.add_argument("--profile", action="store_true",
                   help="time every stage of each click (ROI sampling, forwards, re-fit passes, boundary "
                        "refinement, paste-back, delta) instead of the targets' run")
    p.set_defaults(func=_bench)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _backend(args):
    """(backend, name for the report): the HTTP client with --server, else the local engine."""
    if args.server:
        from claraseg.client import RemoteBackend

        return RemoteBackend(args.server, token=args.token), f"remote {args.server}"
    from claraseg.engine import LocalBackend

    return LocalBackend(args.models_dir, device=args.device, idle_timeout=None), f"local ({args.device})"


def _labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ClarasegError(f"--labels must be comma-separated integers, e.g. 1,5,6; got {text!r}") from None


def _eval(args) -> int:
    from claraseg.evaluate.classical import ClassicalBackend
    from claraseg.evaluate.report import format_summary, plot, write_json
    from claraseg.evaluate.runner import build_report, default_refine_model, resolve_model, structures_of
    from claraseg.io import read_image

    if args.clicks < 1:
        raise ClarasegError("--clicks must be at least 1")
    if args.split and args.heldout:
        raise ClarasegError("--split and --heldout are two different evaluations: give one")
    if args.split:
        return _split(args)
    if args.heldout:
        return _heldout(args)
    if args.min_voxels is None:
        from claraseg.evaluate.runner import MIN_VOXELS

        args.min_voxels = MIN_VOXELS
    if not args.model and not args.method:
        raise ClarasegError("name a --model to evaluate, a classical --method, or both (or use --heldout)")
    if not args.image or not args.label:
        raise ClarasegError("--image and --label are required (or use --heldout)")
    _set_threads(args.threads)
    image = read_image(args.image)
    label = read_image(args.label, label=True)
    structures = structures_of(Path(args.image).name, image, label, _labels(args.labels), args.min_voxels)
    baseline = ClassicalBackend(args.method) if args.method else None
    if args.model:
        backend, backend_name = _backend(args)
    else:
        backend, backend_name, baseline = baseline, "classical", None
    try:
        model = resolve_model(backend, args.model or args.method, args.kind)
        refine = args.refine_model
        if model.kind == "dextr3d" and not refine:
            refine = args.method if not args.model else default_refine_model(backend)
        report = build_report(
            backend, model, structures, baseline=baseline, interactions=args.clicks, refine_model=refine,
            slice_axis=2 if args.slice_axis is None else args.slice_axis, jitter_seeds=args.jitter_seeds, progress=not args.quiet,
            backend_name=backend_name,
            inputs={"image": str(args.image), "label": str(args.label), "labels": _labels(args.labels),
                    "min_voxels": args.min_voxels, "size_ijk": list(image.size_ijk),
                    "spacing": [round(float(s), 5) for s in image.spacing]},
        )
    finally:
        backend.close()
    if args.json:
        write_json(report, args.json)
    if args.plot:
        plot(report, args.plot)
    print(format_summary(report))
    if not args.json:
        print(json.dumps({"summary": report["summary"]}, indent=1))
    return 0


def _models_to_evaluate(backend, model: str | None) -> list[str]:
    """``model`` if given, else the default interactive models the backend serves."""
    if model:
        return [model]
    names = {d.name for d in backend.models()}
    models = [m for m in DEFAULT_HELDOUT_MODELS if m in names]
    if not models:
        raise ClarasegError(f"none of the default models {DEFAULT_HELDOUT_MODELS} is on the backend")
    return models


def _split(args) -> int:
    from claraseg.evaluate.scans import evaluate_split

    if args.slice_axis is not None:
        raise ClarasegError("--slice-axis does not apply to --split: its 2D protocol uses slices normal to k")
    _set_threads(args.threads)
    backend, backend_name = _backend(args)
    try:
        models = _models_to_evaluate(backend, args.model)
        sources = [s for s in (args.sources or "").replace(" ", "").split(",") if s] or None
        summaries = evaluate_split(
            backend, models, args.split, args.data, args.out,
            method=None if args.no_baseline else (args.method or "random_walker"), interactions=args.clicks,
            min_voxels=args.min_voxels, sources=sources, jitter_seeds=args.jitter_seeds, progress=not args.quiet,
            backend_name=backend_name, tag=args.tag)
    finally:
        backend.close()
    for name, s in summaries.items():
        ours, base = s["summary"], s["baseline"]
        line = f"{name}: Dice {ours['mean_dice_at']} NoC@85 {ours['mean_noc85']} latency {ours['latency_ms']}"
        if base:
            line += f" | baseline Dice {base['mean_dice_at']} NoC@85 {base['mean_noc85']}"
        print(line)
        for src, row in s["summary_by_source"]["ours"].items():
            print(f"  {src}: {row['structures']} structures, Dice {row['mean_dice_at']} NoC@85 {row['mean_noc85']}")
        print(f"  first click on structures >= 10,000 voxels: {s['first_click_large']['ours']['mean_dice_at_1']}")
    print(f"wrote {args.out}/split_{args.split}_*.json and .png")
    return 0


def _heldout(args) -> int:
    from claraseg.evaluate.heldout import evaluate_heldout
    from claraseg.evaluate.runner import MIN_VOXELS

    if args.slice_axis is not None:
        raise ClarasegError("--slice-axis does not apply to --heldout: its 2D protocol is fixed to slices normal to "
                            "k through each structure's largest cross-section (run --image/--label for other axes)")
    _set_threads(args.threads)
    backend, backend_name = _backend(args)
    try:
        models = _models_to_evaluate(backend, args.model)
        summaries = evaluate_heldout(
            backend, models, args.data, args.out, method=None if args.no_baseline else (args.method or "random_walker"),
            interactions=args.clicks, min_voxels=args.min_voxels or MIN_VOXELS, hippocampus_cases=args.hippocampus_cases,
            jitter_seeds=args.jitter_seeds, progress=not args.quiet, backend_name=backend_name,
            baseline_only=args.baseline_only,
        )
    finally:
        backend.close()
    for name, s in summaries.items():
        ours, base = s.get("summary"), s["baseline"]
        if ours is None:
            print(f"{name}: baseline Dice {base['mean_dice_at']} NoC@85 {base['mean_noc85']}")
            continue
        line = f"{name}: Dice {ours['mean_dice_at']} NoC@85 {ours['mean_noc85']} latency {ours['latency_ms']}"
        if base:
            line += f" | baseline Dice {base['mean_dice_at']} NoC@85 {base['mean_noc85']}"
        print(line)
    print(f"wrote {args.out}/" + ("baseline_*.json" if args.baseline_only else "heldout_*.json and .png"))
    return 0


def _bench(args) -> int:
    from claraseg.engine import LocalBackend
    from claraseg.evaluate.bench import format_bench, run_bench
    from claraseg.evaluate.report import write_json

    backend = LocalBackend(args.models_dir, device=args.device, idle_timeout=None)
    if args.profile:
        from claraseg.evaluate.bench_profile import bench_profile, default_path, format_profile

        try:
            report = bench_profile(backend, size_ijk=(256, 256, 50) if args.quick else (512, 512, 100),
                                   clicks=3 if args.quick else 5, jitter_runs=1 if args.quick else 2,
                                   threads=args.threads)
        finally:
            backend.close()
        report["device"], report["quick"] = args.device, args.quick
        path = write_json(report, args.json or default_path())
        print(format_profile(report), file=sys.stdout)
        print(f"wrote {path}")
        return 0
    try:
        report = run_bench(backend, quick=args.quick, threads=args.threads)
    finally:
        backend.close()
    report["device"] = args.device
    if args.json:
        write_json(report, args.json)
    print(format_bench(report), file=sys.stdout)
    return 0
