"""``claraseg pretrain``: train the default bundles (see :mod:`claraseg.models.pretrain`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from claraseg.models.pretrain import DEFAULT_SEED, KINDS, PACKAGED_BUNDLES

    p = sub.add_parser("pretrain", help="train the default DeepGrow 2D/3D, DEXTR3D and segmentation bundles on CPU",
                       description="Seeded recipe that reproduces the default weights from the shared sample data "
                                   "and phantoms; records data, held-out structures, settings and metrics in each "
                                   "bundle's metadata.")
    p.add_argument("--models", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--minutes", default="30",
                   help="wall-time budget per model: one number, or per model as deepgrow3d=60,dextr3d=30 (default 30)")
    p.add_argument("--iterations", type=int, default=None,
                   help="train exactly this many iterations instead (reproduces a recorded run)")
    p.add_argument("--out", type=Path, default=PACKAGED_BUNDLES, help="bundles folder (default: the packaged one)")
    p.add_argument("--data", type=Path, default=None, help="sample data folder (default: $CLARASEG_DATA or ../shared/data)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--continue", dest="warm_start", action="store_true",
                   help="train the interactive bundles further from their current weights (a recorded extra stage)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply the bundle's learning rate (e.g. 0.3 with --continue)")
    p.add_argument("--channels", default=None,
                   help="input channels of the interactive bundles, comma-separated (DEXTR3D: "
                        "image,extreme_points or image,extreme_points,foreground,background,mask); with "
                        "--continue the trained weights are kept and widened")
    p.add_argument("--network", choices=("unet", "context"), default=None,
                   help="network of the 3D interactive bundles: MONAI's UNet, or the UNet with a context branch "
                        "that sees the whole ROI (claraseg.models.nets.ContextUNet); with --continue the trained "
                        "UNet weights are kept")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="set a click-sampling key of the interactive bundles' train.json for this run (JSON value; "
                        "repeatable), e.g. --train max_loop_clicks=8; the recipe records it")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the click protocol on the validation split after training (claraseg eval --split "
                        "validation runs it on trained bundles)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from claraseg.models.pretrain import default_data_dir, pretrain

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    records = pretrain(models, args.out, args.data or default_data_dir(), minutes=parse_minutes(args.minutes),
                       iterations=args.iterations, seed=args.seed, evaluate=not args.no_eval,
                       warm_start=args.warm_start, lr_scale=args.lr_scale,
                       channels=[c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None,
                       train_overrides=parse_train_options(args.train), network=args.network)
    print(json.dumps({k: {f: v.get(f) for f in ("iterations", "minutes", "final_loss", "validation_dice_roi",
                                                    "dice_on_training_ct", "validation_metrics")}
                      for k, v in records.items()}, indent=2))
    return 0


def parse_train_options(items: list[str]) -> dict:
    """``["max_loop_clicks=8", "box_scale_range=[0.6,1.2]"]`` -> a dict of JSON values."""
    from claraseg.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--train {item!r}: give KEY=VALUE, e.g. max_loop_clicks=8")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--train {item!r}: the value is not JSON ({exc.msg})") from None
    return out


def parse_minutes(text: str) -> float | dict[str, float]:
    """``"30"`` -> 30.0; ``"deepgrow3d=60,dextr3d=30"`` -> a per-model dict."""
    from claraseg.errors import ConfigError

    try:
        if "=" not in text:
            return float(text)
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise ConfigError(f"--minutes {text!r}: give a number or model=minutes pairs") from None
