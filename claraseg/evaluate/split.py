"""The scan-level split of the sample data (``scan_split.json`` beside this module).

Every folder of ``../shared/data`` belongs to exactly one split and the MSD hippocampus set is split by
case: ``train`` may be trained on, ``validation`` chooses training and inference settings, ``test``
chooses nothing and gives the reported figures (``claraseg eval --split test``). Scans of one patient
stay in one split. Pre-training reads its data from here (:mod:`claraseg.models.sources`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claraseg.errors import ClarasegError

SPLIT_FILE = Path(__file__).resolve().parent / "scan_split.json"
SPLITS = ("train", "validation", "test")
HIPPOCAMPUS = "mr_hippocampus"


@dataclass(frozen=True)
class Scan:
    """One image + label map of the sample data: ``source`` is its folder (hippocampus cases share one)."""

    source: str
    name: str
    image: Path
    label: Path
    labels_json: Path | None
    modality: str | None
    min_voxels: int


def load_split(path: str | Path = SPLIT_FILE) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    splits = data.get("splits", {})
    if set(splits) != set(SPLITS):
        raise ClarasegError(f"{path}: 'splits' must name exactly {', '.join(SPLITS)}")
    folders = [f for s in SPLITS for f in splits[s].get("folders", [])]
    if len(folders) != len(set(folders)):
        raise ClarasegError(f"{path}: a folder is listed in more than one split")
    patients: dict[str, set] = {}
    for s in SPLITS:
        for f in splits[s].get("folders", []):
            p = data.get("patients", {}).get(f)
            if p:
                patients.setdefault(p, set()).add(s)
    mixed = sorted(p for p, s in patients.items() if len(s) > 1)
    if mixed:
        raise ClarasegError(f"{path}: patient(s) {mixed} have scans in more than one split")
    return data


def hippocampus_split(data_dir: Path, split: str, spec: dict[str, Any] | None = None) -> list[str]:
    """The hippocampus case names (``hippocampus_NNN.nii.gz``) of ``split``: the listed ones, or for
    ``"rest"`` every case not listed by another split."""
    spec = spec or load_split()
    entry = spec["splits"][split].get(HIPPOCAMPUS)
    if not entry:
        return []
    if entry != "rest":
        return list(entry)
    taken = {c for s in SPLITS if s != split for c in (spec["splits"][s].get(HIPPOCAMPUS) or [])
             if spec["splits"][s].get(HIPPOCAMPUS) != "rest"}
    names = sorted(p.name for p in (Path(data_dir) / HIPPOCAMPUS / "images").glob("*.nii.gz"))
    return [n for n in names if n not in taken]


def split_scans(data_dir: str | Path, split: str, spec: dict[str, Any] | None = None) -> list[Scan]:
    """The scans of ``split`` under ``data_dir``; :class:`ClarasegError` for an unknown split or a
    missing file (point ``--data`` at the shared data folder)."""
    if split not in SPLITS:
        raise ClarasegError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    spec = spec or load_split()
    data = Path(data_dir)
    floor = int(spec.get("min_voxels", 1000))
    per_folder = spec.get("folder_min_voxels", {})
    modality = spec.get("modality", {})
    out = []
    for folder in spec["splits"][split].get("folders", []):
        d = data / folder
        if not (d / "image.nii.gz").is_file() or not (d / "label.nii.gz").is_file():
            raise ClarasegError(f"{d}: missing image.nii.gz or label.nii.gz (point --data at the shared data folder)")
        out.append(Scan(folder, folder, d / "image.nii.gz", d / "label.nii.gz", d / "labels.json",
                        modality.get(folder, "MR"), int(per_folder.get(folder, floor))))
    for case in hippocampus_split(data, split, spec):
        img, lab = data / HIPPOCAMPUS / "images" / case, data / HIPPOCAMPUS / "labels" / case
        if not img.is_file() or not lab.is_file():
            raise ClarasegError(f"{img}: missing hippocampus case (point --data at the shared data folder)")
        out.append(Scan(HIPPOCAMPUS, case, img, lab, None, "MR", int(per_folder.get(HIPPOCAMPUS, floor))))
    return out
