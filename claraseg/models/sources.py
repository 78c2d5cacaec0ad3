"""What pre-training samples: the scans of a split of the sample data (:mod:`claraseg.evaluate.split`)
and synthetic phantoms, and how a (volume, structure) pair is drawn from them.

Training reads the ``train`` split only; the quick ROI validation during training reads
``validation``; ``test`` is never read here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from claraseg.errors import TrainingDataError
from claraseg.io import make_phantom, read_image, read_labels_json
from claraseg.models.training import TrainingVolume, volume_from_images

#: Phantom seeds used for training, and fresh ones kept for evaluation.
TRAIN_PHANTOM_SEEDS = list(range(1000, 1016))
EVAL_PHANTOM_SEEDS = [5000, 5001, 5002]
#: How often a training sample comes from each source (a folder of the split, the hippocampus cases,
#: the phantoms); a folder not named here gets :data:`OTHER_SOURCE_WEIGHT`.
SOURCE_WEIGHTS = {"ct_abdomen_3mm": 0.32, "mr_brain_1mm": 0.25, "mr_hippocampus": 0.15, "mr_brain1_tumour": 0.06,
                  "phantoms": 0.12}
OTHER_SOURCE_WEIGHT = 0.08
#: Smallest structure trained on (voxels on its own grid).
MIN_VOXELS = 60
#: Share of draws whose structure is chosen in proportion to the square root of its volume (mm³) instead
#: of uniformly: large organs (few per scan, most of the voxels) come up more often.
P_BY_SIZE = 0.4


def load_split_sources(data_dir: Path, intensity: dict, split: str = "train", *,
                       hippocampus_limit: int | None = None, phantoms: bool = True) -> dict[str, list[TrainingVolume]]:
    """Training volumes per source for the scans of ``split`` (every structure of at least
    :data:`MIN_VOXELS`; the hippocampus as one union target besides its two parts) plus phantoms
    (training seeds for ``train``, the evaluation seeds otherwise)."""
    from claraseg.errors import ClarasegError
    from claraseg.evaluate.split import HIPPOCAMPUS, split_scans

    try:
        scans = split_scans(data_dir, split)
    except ClarasegError as e:
        raise TrainingDataError(str(e)) from None
    out: dict[str, list[TrainingVolume]] = {}
    hip = 0
    for scan in scans:
        if scan.source == HIPPOCAMPUS:
            if hippocampus_limit is not None and hip >= hippocampus_limit:
                continue
            hip += 1
            names = {1: "hippocampus_anterior", 2: "hippocampus_posterior"}
            unions = {"hippocampus": (1, 2)}
        else:
            names = {v: info.name for v, info in read_labels_json(scan.labels_json).items()}
            unions = None
        image = read_image(scan.image)
        label = read_image(scan.label, label=True)
        out.setdefault(scan.source, []).append(volume_from_images(
            scan.name, image, label, intensity, min_voxels=MIN_VOXELS, names=names, unions=unions,
            modality=scan.modality))
    if phantoms:
        seeds = TRAIN_PHANTOM_SEEDS if split == "train" else EVAL_PHANTOM_SEEDS
        out["phantoms"] = [volume_from_images(f"phantom_{s}", *make_phantom(seed=s, size_ijk=(96, 96, 48)), intensity,
                                              min_voxels=MIN_VOXELS, modality="CT") for s in seeds]
    return {k: [v for v in vols if v.structures] for k, vols in out.items() if any(v.structures for v in vols)}


def source_weights(sources) -> dict[str, float]:
    """The draw weight of each source present (normalised to 1)."""
    w = {k: SOURCE_WEIGHTS.get(k, OTHER_SOURCE_WEIGHT) for k in sources}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def draw_structure(sources: dict[str, list[TrainingVolume]], rng: np.random.Generator, *,
                   p_by_size: float = P_BY_SIZE, by_size_power: float = 0.5):
    """A (volume, structure) pair: source by :func:`source_weights`, volume uniformly, structure uniformly
    or (``p_by_size``) in proportion to its volume in mm³ to the power ``by_size_power`` (the square root
    by default)."""
    weights = source_weights(sources)
    names = list(weights)
    p = np.array([weights[k] for k in names])
    vols = sources[names[int(rng.choice(len(names), p=p))]]
    vol = vols[int(rng.integers(len(vols)))]
    if len(vol.structures) > 1 and rng.random() < p_by_size:
        mm3 = np.array([len(s.coords) for s in vol.structures], dtype=np.float64) * float(np.prod(vol.spacing))
        size = mm3 ** float(by_size_power)
        return vol, vol.structures[int(rng.choice(len(size), p=size / size.sum()))]
    return vol, vol.structures[int(rng.integers(len(vol.structures)))]
