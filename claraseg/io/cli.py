"""I/O commands: `claraseg info`, `claraseg convert`, `claraseg phantom`."""

from __future__ import annotations

import json

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("info", help="print an image's geometry and value range (file or DICOM folder)")
    p.add_argument("path")
    p.add_argument("--series-uid")
    p.set_defaults(func=_info)

    p = sub.add_parser("convert", help="convert between NIfTI, NRRD, .seg.nrrd and DICOM-series folders")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--series-uid")
    p.add_argument("--label", action="store_true", help="treat as a label map (integer voxels, names kept)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("phantom", help="write a synthetic CT phantom and its label map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=3, default=(96, 96, 48), metavar=("I", "J", "K"))
    p.add_argument("--image", default="phantom.nii.gz")
    p.add_argument("--label", default="phantom_label.seg.nrrd")
    p.set_defaults(func=_phantom)


def _info(args) -> int:
    from claraseg.io import read_image

    im = read_image(args.path, series_uid=args.series_uid)
    a = im.array
    print(json.dumps({
        "size_ijk": list(im.size_ijk), "dtype": str(a.dtype), "spacing": im.spacing.round(5).tolist(),
        "origin_lps": im.origin.round(4).tolist(), "direction": im.direction.round(6).tolist(),
        "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
        "labels": {str(k): v.name for k, v in im.labels.items()},
        "metadata": {k: v for k, v in im.metadata.items() if k in ("modality", "series_uid", "source")},
    }, indent=1))
    return 0


def _convert(args) -> int:
    from claraseg.io import read_image, write_image

    im = read_image(args.source, series_uid=args.series_uid, label=args.label)
    write_image(im, args.target)
    print(f"wrote {args.target}: {im}")
    return 0


def _phantom(args) -> int:
    from claraseg.io import make_phantom, write_image

    image, label = make_phantom(args.seed, tuple(args.size))
    write_image(image, args.image)
    write_image(label, args.label)
    counts = {label.labels[int(v)].name: int(n) for v, n in zip(*np.unique(label.array, return_counts=True)) if v}
    print(f"wrote {args.image} and {args.label}: {counts}")
    return 0
