"""Training volumes: a normalised image with its label map and the structures to train on, and the
field-of-view cut that makes a scan look like a thin slab or an organ cut by the scan's edge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from claraseg.errors import TrainingDataError
from claraseg.io import Image
from claraseg.models.preprocess import guess_modality, normalise_intensity


@dataclass
class Structure:
    """One class-agnostic target: the voxels whose label is in ``values``."""

    name: str
    values: tuple[int, ...]
    coords: np.ndarray  # (N, 3) int32 voxel indices [i, j, k]


@dataclass
class TrainingVolume:
    """A normalised image ``[k, j, i]`` float32 with its label map and the structures to train on."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: np.ndarray
    structures: list[Structure] = field(default_factory=list)


def volume_from_images(name: str, image: Image, label: Image, intensity: dict, *, min_voxels: int = 50,
                       exclude: Sequence[str] = (), names: dict[int, str] | None = None,
                       unions: dict[str, tuple[int, ...]] | None = None, modality: str | None = None) -> TrainingVolume:
    """Normalise ``image`` with the bundle's ``intensity`` spec and list the label's structures of at
    least ``min_voxels`` voxels, leaving out the names in ``exclude`` (held-out structures).

    ``unions`` adds targets made of several label values (e.g. a whole hippocampus from its two parts).
    """
    image.check_same_grid(label)
    lab = np.asarray(label.array)
    if lab.max() > 32767 or lab.min() < 0:
        raise TrainingDataError(f"{name}: label values must lie in 0..32767")
    lab = lab.astype(np.int16)
    names = names if names is not None else {v: info.name for v, info in label.labels.items()}
    norm = normalise_intensity(image.array, modality or guess_modality(image), intensity)
    objects = ndimage.find_objects(lab)
    structures = []
    targets = [(names.get(v, f"label_{v}"), (v,)) for v in range(1, len(objects) + 1) if objects[v - 1] is not None]
    targets += list((unions or {}).items())
    for sname, values in targets:
        if sname in exclude:
            continue
        kji = np.argwhere(np.isin(lab, values))
        if len(kji) >= min_voxels:
            structures.append(Structure(sname, tuple(int(v) for v in values), kji[:, ::-1].astype(np.int32)))
    return TrainingVolume(name, norm, lab, image.spacing.copy(), structures)


def cut_field_of_view(volume: TrainingVolume, structure: Structure, rng: np.random.Generator):
    """The volume as a scan with a smaller field of view that cuts the structure: a thin slab (15-80 mm)
    or one side of a plane through the structure, along k in 60 % of the draws, else i or j.
    Returns ``(volume, structure)`` views (the label outside the new field of view is gone, as in a
    real scan), or the inputs unchanged when the cut would leave fewer than 30 voxels of the structure."""
    axis = 2 if rng.random() < 0.6 else int(rng.integers(2))
    coords = structure.coords
    n = volume.image.shape[2 - axis]
    c = int(coords[rng.integers(len(coords)), axis])
    if rng.random() < 0.5:
        half = rng.uniform(15.0, 80.0) / float(volume.spacing[axis]) / 2.0
        shift = rng.uniform(-half, half)
        lo, hi = int(round(c + shift - half)), int(round(c + shift + half)) + 1
    elif rng.random() < 0.5:
        lo, hi = c, n
    else:
        lo, hi = 0, c + 1
    lo, hi = max(0, lo), min(n, hi)
    keep = (coords[:, axis] >= lo) & (coords[:, axis] < hi)
    if keep.sum() < 30 or (lo == 0 and hi == n):
        return volume, structure
    sl = [slice(None)] * 3
    sl[2 - axis] = slice(lo, hi)
    shift_ijk = np.zeros(3, dtype=np.int32)
    shift_ijk[axis] = lo
    cut = TrainingVolume(volume.name, volume.image[tuple(sl)], volume.label[tuple(sl)], volume.spacing)
    return cut, Structure(structure.name, structure.values, coords[keep] - shift_ijk)
