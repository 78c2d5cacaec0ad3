"""``claraseg predict``: run one model on an image file and write the label it produces."""

from __future__ import annotations

import argparse
from pathlib import Path


def _point(text: str) -> list[int]:
    try:
        values = [int(round(float(v))) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a voxel index i,j,k") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: a point is three voxel indices i,j,k")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a model on an image with given points and write the label",
                       description="DeepGrow: --fg/--bg clicks (2D models also --slice-axis); DEXTR3D: six or more "
                                   "--point extreme points; segmentation models: no points. Points are voxel "
                                   "indices i,j,k of the image.")
    p.add_argument("--model", help="model name (see --list), optionally name@vN")
    p.add_argument("--image", type=Path, help="NIfTI/NRRD file or DICOM series folder")
    p.add_argument("--out", type=Path, help="label file to write (.nii.gz, .nrrd, .seg.nrrd)")
    p.add_argument("--fg", type=_point, action="append", default=[], metavar="I,J,K", help="foreground click")
    p.add_argument("--bg", type=_point, action="append", default=[], metavar="I,J,K", help="background click")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="I,J,K", help="extreme point")
    p.add_argument("--slice-axis", type=int, choices=(0, 1, 2), help="2D models: axis normal to the slice")
    p.add_argument("--models", type=Path, action="append", help="models folder (default: the packaged bundles)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    import time

    from claraseg.engine import LocalBackend
    from claraseg.errors import InvalidPointsError
    from claraseg.io import LabelInfo, read_image, write_image

    backend = LocalBackend(args.models or None, device=args.device, idle_timeout=None)
    try:
        if args.list:
            for d in backend.models():
                print(json.dumps({"name": d.name, "kind": d.kind, "version": d.version, "labels": d.labels}))
            return 0
        if not args.model or not args.image or not args.out:
            raise InvalidPointsError("give --model, --image and --out (or --list)")
        kind = backend.registry.get(args.model).kind
        image = read_image(args.image)
        t0 = time.perf_counter()
        session = backend.open_session(image)
        t1 = time.perf_counter()
        if kind == "segmentation":
            delta = session.auto_segment(args.model)
            labels = {v: LabelInfo(n) for v, n in delta.labels.items()}
        elif kind == "dextr3d" and args.point:
            delta = session.extreme_points(args.model, args.point)
            labels = {1: LabelInfo("object")}
        else:
            delta = session.click(args.model, args.fg, args.bg, slice_axis=args.slice_axis)
            labels = {1: LabelInfo("object")}
        t2 = time.perf_counter()
        out = image.with_array(delta.to_full(), labels=labels)
        out.metadata["is_label"] = True
        write_image(out, args.out)
        print(f"wrote {args.out}: {int((out.array > 0).sum())} voxels; session open {1000 * (t1 - t0):.0f} ms, "
              f"inference {1000 * (t2 - t1):.0f} ms")
        session.close()
    finally:
        backend.close()
    return 0
