"""I/O commands: `claraseg info`, `claraseg convert`, `claraseg phantom`, `claraseg demo`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

#: The sample CT the demo reads: ``CLARASEG_DATA`` or ``../shared/data`` beside the checkout.
DEFAULT_DATA = Path(os.environ.get("CLARASEG_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
#: HU threshold of the demo's body mask (air is about -1000, fat about -100).
BODY_HU = -400.0
#: HU threshold of the demo's bone mask (cortex and most trabecular bone; marrow is filled in per slice).
BONE_HU = 100.0
#: Substrings of the sample labels' names that are bone (TotalSegmentator v2 names).
BONE_NAMES = ("vertebra", "rib", "sacrum", "hip", "femur", "sternum", "costal", "humerus", "scapula", "clavicula")


def register(sub) -> None:
    """Add the I/O sub-commands to the `claraseg` command's sub-parsers."""
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

    p = sub.add_parser("demo", help="segment body and bone of the sample CT by thresholds and write the result")
    p.add_argument("--image", type=Path, default=DEFAULT_DATA / "ct_abdomen_3mm" / "image.nii.gz",
                   help="a CT file or DICOM folder (default: the sample CT)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--spacing", type=float, default=None, help="also resample to this isotropic spacing (mm)")
    p.set_defaults(func=_demo)


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


def threshold_segment(image, body_hu: float = BODY_HU, bone_hu: float = BONE_HU):
    """Label map of a CT: 1 = body (largest connected component above ``body_hu``), 2 = bone (voxels of
    the body at or above ``bone_hu``), each with holes filled per axial slice. Returns a uint8 :class:`Image`."""
    from scipy import ndimage

    from claraseg.io import LabelInfo

    a = image.array
    comps, n = ndimage.label(a > body_hu)
    if n == 0:
        from claraseg.errors import InvalidImageError

        raise InvalidImageError(f"no voxel lies above {body_hu} HU: is this a CT in Hounsfield units?")
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    body = comps == int(np.argmax(sizes))
    bone = body & (a >= bone_hu)
    for k in range(body.shape[0]):  # lungs, bowel gas and marrow are enclosed: fill them per axial slice
        body[k] = ndimage.binary_fill_holes(body[k])
        bone[k] = ndimage.binary_fill_holes(bone[k])
    out = np.zeros(a.shape, dtype=np.uint8)
    out[body] = 1
    out[bone] = 2
    labels = {1: LabelInfo("body", (0.94, 0.82, 0.70)), 2: LabelInfo("bone", (0.95, 0.94, 0.85))}
    return image.with_array(out, labels=labels)


def _demo(args) -> int:
    from claraseg.errors import ImageReadError
    from claraseg.io import MaskDelta, read_image, read_labels_json, resample_to_spacing, write_image

    if not args.image.exists():
        raise ImageReadError(f"{args.image}: no such file or folder; pass --image or set CLARASEG_DATA "
                             "to the sample data folder")
    t0 = time.perf_counter()
    image = read_image(args.image)
    seg = threshold_segment(image)
    args.out.mkdir(parents=True, exist_ok=True)
    seg_path = write_image(seg, args.out / "body_bone.seg.nrrd")
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    report = {
        "image": str(args.image), "size_ijk": list(image.size_ijk), "spacing_mm": image.spacing.round(4).tolist(),
        "body_ml": round(float((seg.array >= 1).sum()) * voxel_ml, 1),
        "bone_ml": round(float((seg.array == 2).sum()) * voxel_ml, 1),
        "segmentation": str(seg_path),
    }
    bone = (seg.array == 2).astype(np.uint8)
    delta = MaskDelta.from_full(bone)
    report["bone_mask_delta_bytes"] = len(delta.encode())
    reference = args.image.parent / "label.nii.gz"
    names = args.image.parent / "labels.json"
    if reference.is_file() and names.is_file():
        ref = read_image(reference, label=True)
        ref.labels = read_labels_json(names)
        bone_values = [v for v, info in ref.labels.items() if any(b in info.name for b in BONE_NAMES)]
        ref_bone = np.isin(ref.array, bone_values)
        inter = float(np.logical_and(ref_bone, bone).sum())
        report["bone_dice_vs_reference"] = round(2 * inter / max(1.0, float(ref_bone.sum() + bone.sum())), 3)
    if args.spacing:
        small = resample_to_spacing(image, [args.spacing] * 3)
        report["resampled"] = str(write_image(small, args.out / f"image_{args.spacing:g}mm.nii.gz"))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(report, indent=1))
    return 0
