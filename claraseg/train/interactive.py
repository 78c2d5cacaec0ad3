"""Fine-tuning the interactive models (DeepGrow 2D/3D, DEXTR3D) on new labels with simulated clicks.

Samples are made by the engine's own building blocks (:mod:`claraseg.models.training`): the ROI, the
click simulation (:mod:`claraseg.guidance`) and the channel encoding are those used at inference, and
every constant comes from the bundle's ``claraseg`` metadata. Here they are wrapped as MONAI dictionary
transforms, so the job's datasets (plain, cached, Smart Cache) cache the loaded, normalised volume and
draw fresh clicks every time (seeded per item, so a resumed job draws the same ones).

Replay: a fraction ``replay`` of the samples comes from a fixed pool of other structures (the datalist's
``replay`` scans when it has some; else synthetic phantoms, or the pre-training data when ``replay_data``
names that folder), so a model fine-tuned on a few structures keeps refining the rest. The checkpoint that is published is chosen on the held-out
structures under ``training#max_label_drop`` (default 0.02 here): none of them may lose more Dice than
that against the starting model (figures of ``claraseg train bench-adapt`` in docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from claraseg.errors import TrainingDataError
from claraseg.train.data import GUARD_MIN_VOXELS

#: Draws per sample before giving up on a structure too small for the drawn ROI.
MAX_DRAWS = 20
#: Phantom seeds of the replay pool (the pre-training ones: never the evaluation seeds).
REPLAY_PHANTOM_SEEDS = tuple(range(1000, 1004))
#: Hippocampus cases loaded into a replay pool made from the pre-training data.
REPLAY_HIPPOCAMPUS_CASES = 24


#: What a pre-training data folder must hold (see :func:`claraseg.models.pretrain.load_sources`).
REPLAY_DATA_LAYOUT = ("ct_abdomen_3mm/image.nii.gz", "mr_abdomen_3mm/image.nii.gz", "mr_brain_1mm/image.nii.gz",
                      "mr_hippocampus/images")


def check_replay_data(source: str) -> None:
    """``"phantoms"``, or a folder holding the pre-training data's layout; else a :class:`TrainingDataError`
    naming what is missing (raised when the job's config is built, before training)."""
    from pathlib import Path

    if source == "phantoms":
        return
    missing = [p for p in REPLAY_DATA_LAYOUT if not (Path(source) / p).exists()]
    if missing:
        raise TrainingDataError(f"replay_data {source!r}: not the pre-training data folder (missing "
                                f"{', '.join(missing)}); give 'phantoms' or the shared sample data folder")


def replay_pool(source: str, intensity: dict[str, Any]) -> dict[str, list]:
    """The replay volumes by source: ``"phantoms"`` (always available), or a folder laid out like the
    shared sample data (``claraseg pretrain --data``): its pre-training structures (never the held-out
    ones) and phantoms."""
    from claraseg.io import make_phantom
    from claraseg.models.training import volume_from_images

    check_replay_data(source)
    if source != "phantoms":
        from claraseg.models.pretrain import load_sources

        pool = load_sources(source, intensity, hippocampus_limit=REPLAY_HIPPOCAMPUS_CASES)
    else:
        phantoms = [volume_from_images(f"phantom_{s}", *make_phantom(seed=s, size_ijk=(96, 96, 48)), intensity,
                                       min_voxels=60, modality="CT") for s in REPLAY_PHANTOM_SEEDS]
        pool = {"phantoms": [v for v in phantoms if v.structures]}
    return {k: v for k, v in pool.items() if v}


class LoadTrainingVolumed(MapTransform):
    """``{"image": path, "label": path}`` -> ``{"volume": TrainingVolume}`` (normalised as the engine does)."""

    def __init__(self, intensity: dict[str, Any], modality: str | None = None, min_voxels: int = 1) -> None:
        super().__init__(keys=("image", "label"))
        self.intensity = intensity
        self.modality = modality
        self.min_voxels = min_voxels

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from claraseg.io import read_image
        from claraseg.models.training import volume_from_images

        image = read_image(data["image"])
        label = read_image(data["label"], label=True)
        volume = volume_from_images(
            str(data["label"]),
            image,
            label,
            self.intensity,
            min_voxels=self.min_voxels,
            modality=self.modality,
        )
        if not volume.structures:
            raise TrainingDataError(f"{data['label']}: no structure of at least {self.min_voxels} voxels")
        return {**data, "volume": volume}


class InteractiveSampled(Randomizable, MapTransform):
    """``{"volume": ...}`` -> ``num_samples`` dicts ``{"image": input [C, ...], "label": target [1, ...]}``.

    Each draw is a random ROI with simulated clicks (or extreme points) on one of the volume's
    structures (:func:`claraseg.models.training.make_sample`); :attr:`predict` (set by the job to the
    network being trained) enables clicks on the network's own errors, as in pre-training.
    """

    def __init__(
        self,
        kind: str,
        settings: dict[str, Any],
        train: dict[str, Any] | None = None,
        num_samples: int = 1,
        replay: float = 0.0,
        replay_data: str = "phantoms",
    ) -> None:
        super().__init__(keys=("volume",))
        self.kind = kind
        self.settings = dict(settings)
        self.train = dict(train or {})
        from claraseg.models.train_config import check_train_config

        check_train_config(self.train)  # a bad range fails when the job's config is built
        self.num_samples = int(num_samples)
        self.predict = None
        try:
            self.replay = float(replay)
        except (TypeError, ValueError):
            self.replay = -1.0
        if not 0.0 <= self.replay < 1.0:
            raise TrainingDataError(
                f"replay must lie in [0, 1): the fraction of samples drawn from other "
                f"structures, got {replay!r}"
            )
        self.replay_data = str(replay_data or "phantoms")
        if self.replay:
            check_replay_data(self.replay_data)
        self._pool: dict[str, list] | None = None

    def use_replay_volumes(self, volumes: list) -> None:
        """Replay these volumes' structures (the datalist's ``replay`` scans) instead of ``replay_data``."""
        self._pool = {"replay": list(volumes)}

    def _replay_draw(self, rng: np.random.Generator):
        from claraseg.models.pretrain import draw_structure

        if self._pool is None:
            self._pool = replay_pool(self.replay_data, self.settings["intensity"])
        return draw_structure(self._pool, rng)

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        from claraseg.models.training import make_sample

        self.randomize()
        rng = np.random.default_rng(self._seed)
        volume = data["volume"]
        out = []
        for _ in range(self.num_samples):
            source, structure = volume, None
            if self.replay and rng.random() < self.replay:
                source, structure = self._replay_draw(rng)
            for _draw in range(MAX_DRAWS):
                if structure is None:
                    structure = source.structures[int(rng.integers(len(source.structures)))]
                sample = make_sample(
                    self.kind, source, structure, self.settings, rng, self.predict, self.train
                )
                if sample is not None:
                    break
                structure = None  # this draw missed it: draw again, any structure of the source
            else:
                raise TrainingDataError(
                    f"{source.name}: no training ROI of this model holds the structure "
                    f"(tried {MAX_DRAWS} draws); is it tiny?"
                )
            out.append({"image": sample[0], "label": sample[1]})
        return out


def default_config(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The default training config of an interactive bundle (network from its inference.json)."""
    load = {
        "_target_": "claraseg.train.interactive.LoadTrainingVolumed",
        "intensity": "@_meta_#claraseg#intensity",
    }
    return {
        "loss": {"_target_": "claraseg.models.training.make_loss", "kind": kind},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network_def.parameters()", "lr": 1e-4},
        "crops_per_image": 2,
        "validation_samples": 8,
        # Validation by the click protocol through the engine (this many clicks per structure; 0: by
        # validation_samples simulated-click ROI samples, one forward pass each).
        "validation_clicks": 5,
        # Click sequences per structure (the protocol's own, then first clicks drawn inside the structure);
        # a structure's Dice is their mean.
        "validation_click_sequences": 1,
        # The published checkpoint is the best validation at which no held-out structure lost more than
        # 0.02 Dice against the starting model (nothing is published when none did).
        "training": {"max_label_drop": 0.02},
        # Fraction of samples replayed from other structures ("phantoms" or the pre-training data folder).
        "replay": 0.3,
        "replay_data": "phantoms",
        "recipe": {},
        "train": {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    load,
                    {
                        "_target_": "claraseg.train.interactive.InteractiveSampled",
                        "kind": kind,
                        "settings": "@_meta_#claraseg",
                        "train": "@recipe",
                        "num_samples": "@crops_per_image",
                        "replay": "@replay",
                        "replay_data": "@replay_data",
                    },
                ],
            }
        },
        "validate": {"preprocessing": {"_target_": "Compose", "transforms": [load]}},
    }


class InteractiveTask:
    """Training and validation of an interactive kind.

    Validation: for each held-out structure, ``validation_samples`` fixed-seed simulated-click samples
    (the same for the starting and the fine-tuned model); Dice of the thresholded output against the target.
    With :attr:`clicks` set (a :class:`~claraseg.train.clickval.ClickValidation`, ``validation_clicks`` > 0)
    the click protocol through the engine instead: the structure's Dice after the last click, and as the
    score the mean Dice over structures and clicks (cases whose image the engine cannot take, e.g. a slab
    thinner than the model's minimum, fall back to the ROI samples).
    """

    def __init__(
        self,
        kind: str,
        components: dict[str, Any],
        claraseg_meta: dict[str, Any],
        validation_samples: int = 4,
    ) -> None:
        from claraseg.models.training import make_loss

        self.kind = kind
        self.settings = dict(claraseg_meta)
        self.loss = components.get("loss") or make_loss(kind)
        self.validation_samples = validation_samples
        self.sampler = _find_sampler(components["train#preprocessing"])
        self.clicks = None

    def items(self, cases: Sequence) -> list[dict[str, Any]]:
        return [{"image": c.image, "label": c.label} for c in cases]

    def attach(self, network: torch.nn.Module) -> None:
        """Let the sampler click on the network's own predictions (model in the loop)."""
        from claraseg.models.training import predictor

        if self.sampler is not None:
            self.sampler.predict = predictor(network, self.kind)

    def use_replay_cases(self, cases: Sequence) -> str | None:
        """The replayed samples come from these cases' structures (the datalist's ``replay`` scans); a note
        for the ``data prepared`` event, or None when the job replays nothing."""
        if not cases or self.sampler is None or not self.sampler.replay:
            return "the datalist's replay scans are not used: replay is 0" if cases else None
        load = LoadTrainingVolumed(self.settings["intensity"], min_voxels=GUARD_MIN_VOXELS)
        volumes = [load({"image": c.image, "label": c.label})["volume"] for c in cases]
        self.sampler.use_replay_volumes(volumes)
        count = sum(len(v.structures) for v in volumes)
        return f"replay: {self.sampler.replay:g} of the samples from {count} structures of {len(volumes)} replay scans"

    def _forward(self, network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return network(x[:, :, 0] if self.kind == "deepgrow2d" else x)

    def batch_loss(
        self, network: torch.nn.Module, batch: dict[str, Any], device: torch.device
    ) -> torch.Tensor:
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        return self.loss(self._forward(network, x), y[:, :, 0] if self.kind == "deepgrow2d" else y)

    @torch.no_grad()
    def validate(
        self,
        network: torch.nn.Module,
        items: list[dict[str, Any]],
        cases: Sequence,
        device: torch.device,
        sw_batch_size: int = 1,
    ) -> tuple[float, dict[str, float]]:
        per: dict[str, list[float]] = {}
        by_clicks: list[float] = []
        rest = list(range(len(cases)))
        if self.clicks is not None:
            curves, rest = self.clicks.validate(network, cases)
            for name, values in curves.items():
                per.setdefault(name, []).extend(c[-1] for c in values)
                by_clicks += [float(np.mean(c)) for c in values]
        samples = self._validate_samples(network, [(n, items[n], cases[n]) for n in rest], device)
        for name, values in samples.items():
            per.setdefault(name, []).extend(values)
        if not per:
            raise TrainingDataError("no validation sample could be drawn from the held-out structures")
        scores = by_clicks + [v for values in samples.values() for v in values]
        return float(np.mean(scores)), {k: float(np.mean(v)) for k, v in per.items()}

    @torch.no_grad()
    def _validate_samples(self, network: torch.nn.Module, cases: list[tuple[int, dict[str, Any], Any]],
                          device: torch.device) -> dict[str, list[float]]:
        """Dice of ``validation_samples`` fixed-seed ROI samples per ``(index, item, case)``, by structure."""
        from claraseg.evaluate.protocol import dice
        from claraseg.models.training import make_sample

        per: dict[str, list[float]] = {}
        if not cases:
            return per
        network.eval()
        threshold = float(self.settings.get("threshold", 0.5))
        for n, item, case in cases:
            volume = item["volume"]
            for s in range(self.validation_samples):
                rng = np.random.default_rng([20260, n, s])
                sample = None
                for _draw in range(MAX_DRAWS):
                    sample = make_sample(self.kind, volume, volume.structures[0], self.settings, rng)
                    if sample is not None:
                        break
                if sample is None:
                    continue
                x, y = sample
                prob = torch.sigmoid(self._forward(network, x[None].to(device)))[0, 0].cpu().numpy()
                truth = y[0, 0].numpy() if self.kind == "deepgrow2d" else y[0].numpy()
                per.setdefault(case.structures[1], []).append(dice(prob > threshold, truth > 0.5))
        network.train()
        return per


def _find_sampler(transform: Any) -> InteractiveSampled | None:
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, InteractiveSampled):
            return t
    return None


__all__ = ["InteractiveSampled", "InteractiveTask", "LoadTrainingVolumed", "default_config"]
