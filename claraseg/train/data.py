"""Training data from Slicer: datalists, label-name mapping, geometry checks, the held-out split.

Every check runs before training starts, so bad input fails fast with a message that says what to do:
missing files, a label on another voxel grid (resampled when only the sampling differs, rejected
otherwise), label names the model does not know, empty labels, too few cases to hold some out.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from claraseg.errors import ClarasegError, GeometryMismatchError, TrainingDataError
from claraseg.io import Image, LabelInfo, read_image, read_labels_json, resample_to, write_image

#: Voxels a structure needs to serve as a guard case (smaller ones give too noisy a Dice).
GUARD_MIN_VOXELS = 60


@dataclass
class Case:
    """One prepared training item: an image file and a label file on its grid with model label values."""

    image: str
    label: str
    source_label: str
    structures: dict[int, str] = field(default_factory=dict)  # value in `label` -> structure name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedData:
    """The training, held-out and guard cases of a job, written to ``<workdir>/data/prepared.json``.

    Guard cases are structures never trained on (the datalist's ``guard`` scans, and with a structure
    selection the label maps' other structures): validated like the held-out ones, they only decide
    whether a checkpoint may be published (``training#max_label_drop``). Replay cases (interactive kinds)
    are the datalist's ``replay`` scans: their structures are the pool the job's replayed samples come from
    (rehearsal of what the model already knows); they are never validated."""

    train: list[Case]
    val: list[Case]
    notes: list[str] = field(default_factory=list)
    guard: list[Case] = field(default_factory=list)
    replay: list[Case] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"train": [c.to_dict() for c in self.train],
                                          "val": [c.to_dict() for c in self.val], "notes": self.notes,
                                          "guard": [c.to_dict() for c in self.guard],
                                          "replay": [c.to_dict() for c in self.replay]}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreparedData:
        d = json.loads(Path(path).read_text())
        fix = lambda c: Case(**{**c, "structures": {int(k): v for k, v in c["structures"].items()}})  # noqa: E731
        return cls([fix(c) for c in d["train"]], [fix(c) for c in d["val"]], d.get("notes", []),
                   [fix(c) for c in d.get("guard", [])], [fix(c) for c in d.get("replay", [])])


def normalize_name(name: str) -> str:
    """Names compare case-insensitively, ignoring spaces, dashes and underscores ("Kidney Left" == "kidney_left")."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _load_datalist(datalist: str | os.PathLike | list | dict) -> tuple[Any, Path]:
    """The datalist's content and the folder its relative paths are taken from."""
    if isinstance(datalist, (str, os.PathLike)):
        p = Path(datalist)
        if not p.is_file():
            raise TrainingDataError(f"{p}: the datalist file does not exist")
        try:
            return json.loads(p.read_text()), p.parent
        except ValueError as e:
            raise TrainingDataError(f"{p}: the datalist is not valid JSON ({e})") from None
    return datalist, Path(".")


def _entries(part: Any, base: Path, what: str) -> list[dict]:
    if not isinstance(part, list):
        raise TrainingDataError(f"a datalist's {what} must be a list of {{image, label}} entries")
    entries = []
    for n, e in enumerate(part):
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            raise TrainingDataError(f"datalist {what} entry {n}: needs 'image' and 'label' paths, got {e!r}")
        entries.append({**e, "image": str((base / e["image"]).resolve()), "label": str((base / e["label"]).resolve())})
    return entries


def read_datalist(datalist: str | os.PathLike | list | dict) -> tuple[list[dict], list[dict] | None]:
    """Entries ``{"image", "label", "labels"?}`` of a datalist: a JSON file, a list, or a MONAI-style
    ``{"training": [...], "validation": [...]}``. Relative paths are taken from the file's folder.
    Returns ``(training, validation or None)``."""
    data, base = _load_datalist(datalist)
    if isinstance(data, dict):
        train, val = data.get("training"), data.get("validation")
        if train is None:
            raise TrainingDataError("the datalist object needs a 'training' list of {image, label} entries")
    else:
        train, val = data, None
    return _entries(train, base, "training"), None if val is None else _entries(val, base, "validation")


def read_guard(datalist: str | os.PathLike | list | dict, part: str = "guard") -> list[dict]:
    """The datalist's ``guard`` entries (a ``{"training", "validation", "guard"}`` object): labelled scans
    that are never trained on, only checked so that the fine-tuned model loses none of their structures.
    ``part="replay"``: its ``replay`` entries, labelled scans whose structures are replayed while training."""
    data, base = _load_datalist(datalist)
    if not isinstance(data, dict) or data.get(part) is None:
        return []
    return _entries(data[part], base, part)


def label_names(entry: dict, label: Image) -> dict[int, str]:
    """Names of a label map's values: the entry's ``labels``, the file's segment names (.seg.nrrd),
    or a ``labels.json`` sidecar (``<label>.labels.json`` or ``labels.json`` beside it)."""
    if entry.get("labels"):
        return {int(k): (v if isinstance(v, str) else v["name"]) for k, v in entry["labels"].items()}
    if label.labels:
        return {k: v.name for k, v in label.labels.items()}
    path = Path(entry["label"])
    stem = path.name.split(".")[0]
    for sidecar in (path.with_name(stem + ".labels.json"), path.with_name("labels.json")):
        if sidecar.is_file():
            return {k: v.name for k, v in read_labels_json(sidecar).items()}
    return {}


def load_pair(entry: dict, n: int) -> tuple[Image, Image, bool]:
    """Read an entry's image and label, with the label put on the image's grid (see :func:`fit_label_to_image`);
    the flag says whether the label was resampled."""
    for key in ("image", "label"):
        if not Path(entry[key]).exists():
            raise TrainingDataError(f"datalist entry {n}: the {key} file {entry[key]} does not exist")
    try:
        image = read_image(entry["image"])
        label = read_image(entry["label"], label=True)
    except ClarasegError as e:
        raise TrainingDataError(f"datalist entry {n}: {e}") from None
    fitted = fit_label_to_image(label, image, f"datalist entry {n} ({Path(entry['label']).name})")
    return image, fitted, fitted is not label


def physical_corners(image: Image) -> np.ndarray:
    """LPS positions (mm) of the outer corners of the image's voxel grid (voxel edges, not centres)."""
    size = np.asarray(image.size_ijk, dtype=float)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float) * size - 0.5
    return corners * image.spacing @ image.direction.T + image.origin


def fit_label_to_image(label: Image, image: Image, what: str = "label") -> Image:
    """The label on the image's voxel grid.

    Same grid: unchanged. Same physical extent and orientation but other sampling (e.g. a segmentation
    exported at another resolution): resampled with nearest neighbour. Anything else raises
    :class:`GeometryMismatchError` saying how the grids differ.
    """
    diffs = image.grid_differences(label)
    if not diffs:
        return label
    tol = 0.5 * float(max(image.spacing.max(), label.spacing.max()))
    same_direction = np.allclose(image.direction, label.direction, atol=1e-3)
    shift = float(np.abs(physical_corners(image) - physical_corners(label)).max())
    if same_direction and shift <= tol:
        return resample_to(label, image, is_label=True)
    how = "; ".join(diffs)
    extent = (f"its extent differs from the image's by up to {shift:.1f} mm" if same_direction
              else "its axes are oriented differently from the image's")
    raise GeometryMismatchError(
        f"{what}: the label does not cover the same region as its image ({how}); {extent}. "
        "Export the segmentation with the image as its reference geometry (Slicer: Export to label map, "
        "reference volume = the image), or resample it onto the image (claraseg.io.resample_to)."
    )


def map_labels(label: Image, names: dict[int, str], model_labels: dict[int, str], what: str) -> tuple[np.ndarray, dict[int, str]]:
    """Re-number a label map onto the model's label values by structure name.

    Returns the mapped uint8 array and ``{model value: name}`` of the structures it holds. Raises
    :class:`TrainingDataError` for unknown names, unnamed values the model does not have, and empty labels.
    """
    by_name = {normalize_name(v): k for k, v in model_labels.items()}
    values, counts = np.unique(label.array, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
    out = np.zeros(label.array.shape, dtype=np.uint8)
    held: dict[int, str] = {}
    for value in sorted(set(present) | set(names)):
        if value == 0:
            continue
        name = names.get(value)
        if name is None:
            if value not in model_labels:
                raise TrainingDataError(
                    f"{what}: label value {value} has no name and is not one of the model's values "
                    f"{sorted(model_labels)}; name the segment after a model label ({sorted(model_labels.values())})")
            target, name = value, model_labels[value]
        else:
            target = by_name.get(normalize_name(name))
            if target is None:
                raise TrainingDataError(
                    f"{what}: label {value} {name!r} is none of the model's labels "
                    f"{sorted(model_labels.values())}; rename the segment to one of them or leave it out")
        if present.get(value, 0) == 0:
            raise TrainingDataError(f"{what}: label {value} {name!r} is empty (no voxels); draw it or leave it out")
        out[label.array == value] = target
        held[target] = model_labels.get(target, name)
    if not held:
        raise TrainingDataError(f"{what}: the label map is empty (no labelled voxels); there is nothing to learn from")
    return out, held


def split_cases(cases: list[Any], val_fraction: float, min_val: int, seed: int, what: str = "cases") -> tuple[list, list]:
    """Seeded split into (train, held-out); at least ``min_val`` held out and one left for training."""
    n = len(cases)
    n_val = max(min_val, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise TrainingDataError(
            f"too few {what} to hold some out for validation: {n} given, {n_val} needed for validation and at "
            f"least 1 for training; label at least {n_val + 1} {what} (or lower training#min_val_cases)")
    order = np.random.default_rng(seed).permutation(n)
    val = [cases[i] for i in sorted(order[:n_val])]
    train = [cases[i] for i in sorted(order[n_val:])]
    return train, val


def prepare_data(datalist, model_labels: dict[int, str], kind: str, out_dir: str | os.PathLike,
                 settings: dict[str, Any], structures: list[str] | None = None) -> PreparedData:
    """Check every datalist entry and write the labels the job trains on to ``out_dir``.

    Segmentation bundles: each entry is one case; its label is re-numbered onto the model's labels by name.
    Interactive kinds (one object at a time): each named structure of each entry becomes one case with a
    binary label (``structures`` selects some by name; the others of at least :data:`GUARD_MIN_VOXELS`
    voxels become guard cases). Then the cases are split into training and held-out ones (unless the
    datalist has its own ``validation`` list). Every structure of the datalist's ``guard`` scans is a
    guard case; the ``replay`` scans (interactive kinds) are checked and kept whole (:class:`PreparedData`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_entries, val_entries = read_datalist(datalist)
    guard_entries = read_guard(datalist)
    if not train_entries:
        raise TrainingDataError("the datalist has no training entries")
    wanted = {normalize_name(s) for s in structures} if structures else None
    notes: list[str] = []
    guard: list[Case] = []
    # Guard structures of the interactive kinds: (voxels, order, file tag, entry, image, label, value, name),
    # written once the largest max_guard_cases are known.
    candidates: list[tuple] = []

    def prepare(entries: list[dict], tag: str, select: set[str] | None) -> list[Case]:
        cases: list[Case] = []
        for n, entry in enumerate(entries):
            image, label, resampled = load_pair(entry, n)
            what = f"{tag} entry {n} ({Path(entry['label']).name})"
            names = label_names(entry, label)
            if resampled:
                notes.append(f"{what}: label resampled onto the image grid")
            if kind == "segmentation":
                mapped, held = map_labels(label, names, model_labels, what)
                path = out_dir / f"{tag}{n:03d}_label.nii.gz"
                write_image(image.with_array(mapped, labels={k: LabelInfo(v) for k, v in held.items()}), path)
                cases.append(Case(entry["image"], str(path), entry["label"], held))
                continue
            identity = {v: names.get(v, f"label_{v}") for v in set(names) | set(np.unique(label.array).tolist()) if v}
            values, counts = np.unique(label.array, return_counts=True)
            voxels = dict(zip(values.tolist(), counts.tolist()))
            for value, name in sorted(identity.items()):
                chosen = tag != "guard" and (select is None or normalize_name(name) in select)
                if not chosen:
                    # A guard structure this small gives too noisy a Dice to judge a model by.
                    if voxels.get(value, 0) >= GUARD_MIN_VOXELS:
                        candidates.append((voxels[value], len(candidates), f"guard_{tag}{n:03d}", entry, image,
                                           label, value, name))
                    continue
                mask = (label.array == value).astype(np.uint8)
                if not mask.any():
                    raise TrainingDataError(f"{what}: label {value} {name!r} is empty (no voxels); draw it or leave it out")
                path = out_dir / f"{tag}{n:03d}_{normalize_name(name)}.nii.gz"
                write_image(image.with_array(mask, labels={1: LabelInfo(name)}), path)
                cases.append(Case(entry["image"], str(path), entry["label"], {1: name}))
        if select is not None and tag != "guard":
            found = {normalize_name(c.structures[1]) for c in cases}
            missing = sorted(select - found)
            if missing:
                raise TrainingDataError(f"{tag}: no label named {missing} in the datalist's label maps")
        if not cases and tag != "guard":
            raise TrainingDataError(f"{tag}: the label maps hold no labelled structure")
        return cases

    train = prepare(train_entries, "train", wanted)
    what = "cases" if kind == "segmentation" else "labelled structures"
    if val_entries:
        val = prepare(val_entries, "val", wanted)
    else:
        train, val = split_cases(train, settings["val_fraction"], settings["min_val_cases"], settings["seed"], what)
    limit = int(settings.get("max_guard_cases", 8))
    guard += prepare(guard_entries, "guard", None)[:limit]  # segmentation: whole guard scans
    # Every guard structure costs a click-protocol run per validation: the largest ones are kept.
    keep = sorted(candidates, key=lambda c: (-c[0], c[1]))[:max(0, limit - len(guard))]
    if len(candidates) > len(keep):
        notes.append(f"guard: the {len(keep)} largest of {len(candidates)} structures not trained on are checked "
                     f"(training#max_guard_cases)")
    for _voxels, _order, stem, entry, image, label, value, name in sorted(keep, key=lambda c: c[1]):
        path = out_dir / f"{stem}_{normalize_name(name)}.nii.gz"
        write_image(image.with_array((label.array == value).astype(np.uint8), labels={1: LabelInfo(name)}), path)
        guard.append(Case(entry["image"], str(path), entry["label"], {1: name}))
    replay: list[Case] = []
    for n, entry in enumerate(read_guard(datalist, "replay")):
        if kind == "segmentation":
            raise TrainingDataError("a datalist's 'replay' scans are for the interactive kinds (their structures are "
                                    "replayed with simulated clicks); a segmentation job trains on every label")
        image, label, resampled = load_pair(entry, n)
        path = entry["label"]
        if resampled:
            path = str(out_dir / f"replay{n:03d}_label.nii.gz")
            write_image(label, path)
        if not np.any(label.array):
            raise TrainingDataError(f"replay entry {n} ({Path(entry['label']).name}): the label map is empty")
        replay.append(Case(entry["image"], path, entry["label"], label_names(entry, label)))
    prepared = PreparedData(train, val, notes, guard, replay)
    prepared.save(out_dir / "prepared.json")
    return prepared
