"""Small datalists for AutoML tests and demos: binary tasks cut from phantoms or the sample CT.

A datalist is MONAI's decathlon layout, ``{"training": [{"image", "label"}...], "validation": [...]}``,
with paths relative to the datalist file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from claraseg.errors import TrainingDataError
from claraseg.io import Image, make_phantom, read_image, resample_to_spacing, write_image, write_text_atomic


def write_phantom_datalist(out_dir: str | os.PathLike, n_train: int = 2, n_val: int = 1,
                           size_ijk: tuple[int, int, int] = (40, 40, 32), structure: str = "liver") -> Path:
    """Write phantom cases (seeded 1..n) with a binary label of ``structure``; returns the datalist path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for n in range(n_train + n_val):
        image, label = make_phantom(seed=n + 1, size_ijk=size_ijk)
        values = [v for v, info in label.labels.items() if info.name == structure]
        if not values:
            raise TrainingDataError(f"the phantom has no structure {structure!r}; "
                                    f"choose one of {[i.name for i in label.labels.values()]}")
        binary = _binary(label, values)
        name = f"phantom_{n + 1}"
        write_image(image, out / f"{name}_image.nii.gz")
        write_image(binary, out / f"{name}_label.nii.gz")
        split = "training" if n < n_train else "validation"
        entries[split].append({"image": f"{name}_image.nii.gz", "label": f"{name}_label.nii.gz"})
    path = out / "datalist.json"
    write_text_atomic(path, json.dumps(entries, indent=1))
    return path


def write_ct_kidney_datalist(data_dir: str | os.PathLike, out_dir: str | os.PathLike, spacing_mm: float = 6.0) -> Path:
    """The sample CT cut into two halves for a kidney task: train on the right kidney, validate on the left.

    The CT (``ct_abdomen_3mm``) is resampled to ``spacing_mm``, cropped to the kidneys' slab and split at
    the body's mid-line; each half keeps one kidney as foreground (label 1). A model must generalise to the
    mirrored side, which makes augmentation matter. Returns the datalist path.
    """
    src = Path(data_dir) / "ct_abdomen_3mm"
    if not (src / "image.nii.gz").is_file():
        raise TrainingDataError(f"{src}: the sample CT is missing (set CLARASEG_DATA to the shared data folder)")
    labels = json.loads((src / "labels.json").read_text())
    kidneys = [int(v) for v, info in labels.items() if str(info.get("name", info)).startswith("kidney")]
    image = read_image(src / "image.nii.gz")
    label = read_image(src / "label.nii.gz", label=True)
    image = resample_to_spacing(image, (spacing_mm,) * 3)
    label = resample_to_spacing(label, (spacing_mm,) * 3, is_label=True)
    fg = np.isin(label.array, kidneys)
    if not fg.any():
        raise TrainingDataError(f"{src}: no kidney voxels in the label")
    ks, js, _ = np.nonzero(fg)
    k0, k1 = max(ks.min() - 2, 0), min(ks.max() + 3, fg.shape[0])
    j0, j1 = max(js.min() - 4, 0), min(js.max() + 5, fg.shape[1])
    mid = fg.shape[2] // 2
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for split, (i0, i1) in (("training", (mid, fg.shape[2])), ("validation", (0, mid))):
        box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        origin = image.origin + image.direction @ (np.array([i0, j0, k0]) * image.spacing)
        img = Image(image.array[box].copy(), origin=origin, spacing=image.spacing, direction=image.direction)
        lab = Image(fg[box].astype(np.uint8), origin=origin, spacing=image.spacing, direction=image.direction)
        write_image(img, out / f"ct_{split}_image.nii.gz")
        write_image(lab, out / f"ct_{split}_label.nii.gz")
        entries[split].append({"image": f"ct_{split}_image.nii.gz", "label": f"ct_{split}_label.nii.gz"})
    path = out / "datalist.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def _binary(label: Image, values: list[int]) -> Image:
    return Image(np.isin(label.array, values).astype(np.uint8), origin=label.origin, spacing=label.spacing,
                 direction=label.direction)
