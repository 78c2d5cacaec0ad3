"""``claraseg export`` (a bundle's network as ONNX / TorchScript, and a Triton model repository) and
``claraseg bench-runtimes`` (the network forward under every runtime, one run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model's network (ONNX or TorchScript) into a bundle copy and a "
                                      "Triton model repository",
                       description="Writes OUT/<name>[@vN]/ (a copy of the bundle with models/model.onnx or "
                                   "models/model.ts, dynamic batch axis, the interactive ROI as its spatial shape) "
                                   "and, with --triton, DIR/<name>/config.pbtxt + DIR/<name>/1/model.onnx|model.pt.")
    p.add_argument("model", help="model name, or name@vN for a given (e.g. fine-tuned) version")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", type=Path, default=Path("exported"), help="folder of the exported bundle copies "
                                                                      "(default ./exported)")
    p.add_argument("--triton", type=Path, default=None, metavar="DIR", help="also write a Triton model repository here")
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default 8: all 3D flips)")
    p.add_argument("--models", default=None, help="models folder(s), os.pathsep-separated (default: packaged + "
                                                  "$CLARASEG_MODELS)")
    p.set_defaults(func=_export)

    b = sub.add_parser("bench-runtimes", help="time the interactive networks' forward under each runtime",
                       description="torch eager, channels-last, torch.compile, int8 dynamic quantization, ONNX "
                                   "Runtime and OpenVINO on the DeepGrow 3D and DEXTR3D inputs, in one run; "
                                   "medians, ratios to torch eager, agreement with torch, and the click check "
                                   "(Dice of the same clicks on torch and on each runtime).")
    b.add_argument("--threads", type=int, default=2, help="CPU threads (default %(default)s)")
    b.add_argument("--repeats", type=int, default=10, help="timed forwards per variant (default %(default)s)")
    b.add_argument("--models", default="deepgrow3d,dextr3d",
                   help="networks to time, comma-separated; '' for none (default %(default)s)")
    b.add_argument("--no-clicks", action="store_true", help="skip the click check")
    b.add_argument("--click-repeats", type=int, default=3, help="rounds of the click check (default %(default)s)")
    b.add_argument("--json", type=Path, default=None, help="write the report here")
    b.set_defaults(func=_bench)


def _registry(models: str | None):
    import os

    from claraseg.models.registry import ModelRegistry

    return ModelRegistry([p for p in models.split(os.pathsep) if p] if models else None)


def _export(args: argparse.Namespace) -> int:
    from claraseg.runtimes.export import check_model_name, export_bundle

    check_model_name(args.model)
    result = export_bundle(_registry(args.models), args.model, args.format, args.out, triton=args.triton,
                           max_batch_size=args.max_batch_size)
    print(json.dumps(result, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from claraseg.models.bundle import write_json_atomic
    from claraseg.runtimes.bench import format_report, run_bench_runtimes

    report = run_bench_runtimes([m.strip() for m in args.models.split(",") if m.strip()], threads=args.threads,
                                repeats=args.repeats, clicks=not args.no_clicks, click_repeats=args.click_repeats)
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"report: {args.json}")
    return 0
