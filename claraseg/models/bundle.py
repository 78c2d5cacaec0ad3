"""A model is a MONAI bundle directory (the format of Project-MONAI/model-zoo)::

    <name>/configs/metadata.json    model-zoo fields + a ``claraseg`` section (kind and every pre/post constant)
    <name>/configs/inference.json   ``network_def`` with ``_target_`` (+ the zoo pipeline for segmentation)
    <name>/configs/train.json       the recipe that made the weights
    <name>/models/model.pt          the weights (a state dict)

The ``claraseg`` section is the single source of truth for spacing, ROI size, intensity normalisation,
guidance encoding and sigma: training (:mod:`claraseg.models.training`) and inference
(:mod:`claraseg.engine`) both read it from here. A bundle downloaded from the model zoo has no such
section; it is then read as a ``segmentation`` model from its ``network_data_format``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claraseg.backend import MODEL_KINDS, ModelDescriptor
from claraseg.errors import ConfigError, ModelError
from claraseg.io import atomic_path, write_text_atomic
from claraseg.models.schema import DEXTR_CHANNELS, check_settings  # noqa: F401 (DEXTR_CHANNELS re-exported)

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
TRAIN = Path("configs") / "train.json"
WEIGHTS = Path("models") / "model.pt"
#: The training history (``claraseg pretrain``'s record of every stage), beside the metadata: clients
#: download metadata.json with every model list, the history only when they ask for it.
HISTORY = Path("configs") / "training_history.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; a bundle needs configs/metadata.json and configs/inference.json") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def labels_from_metadata(meta: dict[str, Any]) -> dict[int, str]:
    """Label value -> name from a zoo bundle's ``network_data_format.outputs.pred.channel_def``
    (background, channel 0, left out)."""
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def") or {}
    labels = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit() and int(k) != 0}
    return labels or {1: "object"}


@dataclass
class Bundle:
    """One model bundle on disk, read once. ``settings`` is the ``claraseg`` section of the metadata."""

    path: Path
    name: str
    metadata: dict[str, Any]
    inference: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.settings.get("kind", "segmentation"))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0.0.0"))

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    def descriptor(self, name: str | None = None) -> ModelDescriptor:
        """The :class:`~claraseg.backend.ModelDescriptor` clients see."""
        s = self.settings
        if self.kind == "segmentation":
            labels = {int(k): v for k, v in s["labels"].items()} if s.get("labels") else labels_from_metadata(self.metadata)
        else:
            labels = {1: "object"}
        extra = {k: self.metadata[k] for k in ("data_source", "intended_use", "eval_metrics") if k in self.metadata}
        extra.update({k: s[k] for k in ("heldout", "demo_grade") if k in s})
        legacy = s.get("training")  # a bundle written before the history moved to its own file
        if "heldout" not in extra and isinstance(legacy, dict) and legacy.get("heldout"):
            extra["heldout"] = legacy["heldout"]
        if isinstance(s.get("fine_tune"), dict):
            # Before/after validation Dice of the fine-tune that made this version, for every client (remote too).
            extra["fine_tune"] = {k: s["fine_tune"][k] for k in (
                "baseline_dice", "best_dice", "best_iteration", "job", "date", "parent_version") if k in s["fine_tune"]}
        spacing = s.get("spacing")
        return ModelDescriptor(
            name=name or self.name,
            kind=self.kind,
            labels=labels,
            spacing=[float(v) for v in spacing] if spacing else None,
            roi_size=[int(v) for v in s["roi_size"]] if s.get("roi_size") else None,
            version=self.version,
            description=str(self.metadata.get("description", ""))[:300],
            min_points=int(s.get("min_points", 6 if self.kind == "dextr3d" else 1)),
            extra=extra,
        )

    def build_network(self):
        """Instantiate ``network_def`` of inference.json (MONAI bundle syntax) without weights."""
        from monai.bundle import ConfigParser

        if "network_def" not in self.inference:
            raise ModelError(f"{self.path / INFERENCE}: no 'network_def' entry")
        parser = ConfigParser(copy.deepcopy(self.inference))
        try:
            return parser.get_parsed_content("network_def", instantiate=True)
        except Exception as e:  # MONAI raises many types for a bad _target_ or argument
            raise ConfigError(f"{self.path / INFERENCE}: cannot build network_def ({type(e).__name__}: {e})") from None

    def load_network(self, device: str = "cpu"):
        """The network with its weights, in eval mode, float32, on ``device``."""
        net = self.build_network()
        if not self.weights_path.is_file():
            raise ModelError(f"{self.weights_path}: no weights; train them (claraseg pretrain) or copy model.pt there")
        state = read_weights(self.weights_path)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ModelError(f"{self.weights_path}: the weights do not fit network_def ({str(e).splitlines()[0]})") from None
        return net.float().to(device).eval()


#: Earlier names of ``claraseg`` settings -> the names that say which stage they set (first click,
#: correction clicks, shape re-fit). A bundle written with an earlier name is read under the new one.
RENAMED_SETTINGS = {
    "grow_passes": "first_click_grow_passes",
    "refine_fill": "correction_fill",
    "refine_model": "correction_model",
    "refine_radius_rel": "correction_radius_rel",
    **{f"refit_{k}": f"shape_refit_{k}" for k in ("model", "min_agreement", "passes", "tta_flips", "threshold",
                                                  "contradiction")},
}


def rename_settings(settings: dict[str, Any], where: Path) -> dict[str, Any]:
    """``settings`` with every earlier name (:data:`RENAMED_SETTINGS`) replaced by its current one; a
    :class:`ConfigError` when a bundle gives both."""
    out = dict(settings)
    for old, new in RENAMED_SETTINGS.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: claraseg gives both {old} and its current name {new}; keep {new}")
            out[new] = out.pop(old)
    return out


def read_training_history(path: str | os.PathLike) -> dict[str, Any]:
    """The training record of a bundle folder (``configs/training_history.json``; a bundle written
    before the history moved there keeps it under ``claraseg.training`` of its metadata); {} if none."""
    path = Path(path)
    if (path / HISTORY).is_file():
        return _read_json(path / HISTORY).get("training") or {}
    meta = _read_json(path / METADATA)
    return (meta.get("claraseg") or {}).get("training") or {}


def write_training_history(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a bundle's training record to ``configs/training_history.json`` and keep in the metadata
    only what clients use: the held-out structures (``claraseg.heldout``, for evaluation)."""
    path = Path(path)
    write_json_atomic(path / HISTORY, {"training": record})
    meta = _read_json(path / METADATA)
    section = meta.setdefault("claraseg", {})
    section.pop("training", None)
    if record.get("heldout"):
        section["heldout"] = record["heldout"]
    write_json_atomic(path / METADATA, meta)


def read_bundle(path: str | os.PathLike, name: str | None = None) -> Bundle:
    """Read a bundle directory; ``name`` defaults to the folder name (``<name>@vN`` folders keep theirs)."""
    path = Path(path)
    meta = _read_json(path / METADATA)
    inference = _read_json(path / INFERENCE)
    settings = rename_settings(meta.get("claraseg") or {}, path / METADATA)
    if meta.get("claraseg"):
        meta["claraseg"] = settings
    kind = settings.get("kind", "segmentation")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{path / METADATA}: claraseg.kind {kind!r} is not one of {MODEL_KINDS}")
    check_settings(settings, kind, path / METADATA)
    net_def = inference.get("network_def") if isinstance(inference, dict) else None
    in_channels = net_def.get("in_channels") if isinstance(net_def, dict) else None
    if kind in ("deepgrow3d", "deepgrow2d", "dextr3d") and isinstance(settings.get("channels"), list) \
            and isinstance(in_channels, int) and in_channels != len(settings["channels"]):
        raise ConfigError(f"{path / INFERENCE}: network_def.in_channels is {in_channels} but claraseg.channels "
                          f"in {METADATA} lists {len(settings['channels'])}: {settings['channels']}")
    return Bundle(path=path, name=name or path.name, metadata=meta, inference=inference, settings=settings)


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A weights file as a state dict (unwrapping ``model`` / ``state_dict`` / ``network``), read without
    unpickling code (``weights_only``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign pickle
        raise ModelError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "network"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path}: not a state dict of weights")
    return state


def save_weights(net, path: str | os.PathLike, half: bool = True) -> Path:
    """Save a network's state dict atomically; ``half`` stores floats as float16 (half the size; they are
    read back as float32)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu()
             for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
