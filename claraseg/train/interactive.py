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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from claraseg.errors import TrainingDataError
from claraseg.train.data import GUARD_MIN_VOXELS

if TYPE_CHECKING:
    from claraseg.models.volumes import Structure, TrainingVolume

#: Draws per sample before giving up on a structure too small for the drawn ROI.
MAX_DRAWS = 20
#: Phantom seeds of the replay pool (the pre-training ones: never the evaluation seeds).
REPLAY_PHANTOM_SEEDS = tuple(range(1000, 1004))
#: Hippocampus cases loaded into a replay pool made from the pre-training data.
REPLAY_HIPPOCAMPUS_CASES = 24


#: Distillation samples: the radius (mm) of the region grown around a voxel outside the labels, the
#: intensity tolerance of the growth (normalised units, the image is roughly in [0, 1]), the lowest
#: normalised intensity of the seed voxel (not air) and the fewest voxels a region must have.
DISTILL_RADIUS_MM = (6.0, 60.0)
DISTILL_TOLERANCE = (0.03, 0.12)
DISTILL_MIN_INTENSITY = 0.05
DISTILL_MIN_VOXELS = 27
#: Half the seed voxels are drawn at a uniformly drawn intensity (within this width), half uniformly in space.
DISTILL_LEVEL_WIDTH = 0.02


def unlabelled_structure(volume: TrainingVolume, rng: np.random.Generator) -> tuple[TrainingVolume, Structure] | None:
    """A pseudo-structure where the volume has no label: the voxels connected to a random seed voxel (not
    air, not labelled; half the seeds drawn at a random intensity level, so that rare tissue such as
    contrast-filled vessels and bone is drawn as often as fat or muscle) within a random radius whose
    intensity is close to the seed's. Returns the volume with that region as a new label value and its
    :class:`Structure`, or None when the draw found no region (or the label map has no value left)."""
    from scipy import ndimage

    from claraseg.models.volumes import Structure, TrainingVolume

    img, lab = volume.image, volume.label
    for _draw in range(MAX_DRAWS):
        if rng.random() < 0.5:
            seed = tuple(int(rng.integers(n)) for n in img.shape)  # [k, j, i]
        else:
            # A voxel of a random intensity: rare tissue (contrast-filled vessels, bone) as often as common.
            level = rng.uniform(DISTILL_MIN_INTENSITY, max(DISTILL_MIN_INTENSITY, float(img.max())))
            near = np.flatnonzero(np.abs(img - level) <= DISTILL_LEVEL_WIDTH)
            if not len(near):
                continue
            seed = tuple(int(v) for v in np.unravel_index(near[rng.integers(len(near))], img.shape))
        if img[seed] > DISTILL_MIN_INTENSITY and not lab[seed]:
            break
    else:
        return None
    radius = rng.uniform(*DISTILL_RADIUS_MM) / np.asarray(volume.spacing, dtype=np.float64)[::-1]  # [k, j, i]
    lo = [max(0, c - int(np.ceil(r))) for c, r in zip(seed, radius)]
    hi = [min(n, c + int(np.ceil(r)) + 1) for c, r, n in zip(seed, radius, img.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.ogrid[box]
    ball = sum(((g - c) / max(r, 1e-6)) ** 2 for g, c, r in zip(grid, seed, radius)) <= 1.0
    close = np.abs(img[box] - img[seed]) <= rng.uniform(*DISTILL_TOLERANCE)
    parts, _ = ndimage.label(ball & close & (lab[box] == 0))
    local = tuple(c - a for c, a in zip(seed, lo))
    region = parts == parts[local]
    value = int(lab.max()) + 1
    if region.sum() < DISTILL_MIN_VOXELS or value > np.iinfo(lab.dtype).max:
        return None
    label = lab.copy()
    label[box][region] = value
    kji = np.argwhere(region) + np.asarray(lo)
    return (TrainingVolume(volume.name, img, label, volume.spacing),
            Structure("unlabelled", (value,), kji[:, ::-1].astype(np.int32)))


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
        # Set by the job (training#distill > 0): every sample then carries a "distill" flag (1: its target
        # is to be replaced by the starting model's output).
        self.distilling = False
        self.distill_fraction = 0.0
        self.distill_replay = False

    def use_distillation(self, fraction: float, replay: bool) -> None:
        """Draw ``fraction`` of the samples outside the labels (:func:`unlabelled_structure`) and flag them,
        and with ``replay`` the replayed samples too, for distillation toward the starting model."""
        self.distilling, self.distill_fraction, self.distill_replay = True, float(fraction), bool(replay)

    def _unlabelled_sample(self, volume, rng: np.random.Generator):
        from claraseg.models.training import make_sample

        for _draw in range(MAX_DRAWS):
            found = unlabelled_structure(volume, rng)
            if found is None:
                continue
            sample = make_sample(self.kind, found[0], found[1], self.settings, rng, self.predict, self.train)
            if sample is not None:
                return sample
        return None

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
            if self.distill_fraction and rng.random() < self.distill_fraction:
                sample = self._unlabelled_sample(volume, rng)
                if sample is not None:
                    out.append({"image": sample[0], "label": sample[1], "distill": torch.ones(1)})
                    continue
            source, structure, replayed = volume, None, False
            if self.replay and rng.random() < self.replay:
                source, structure = self._replay_draw(rng)
                replayed = True
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
            item = {"image": sample[0], "label": sample[1]}
            if self.distilling:
                item["distill"] = torch.full((1,), float(replayed and self.distill_replay))
            out.append(item)
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
        self.teacher: torch.nn.Module | None = None
        self.distill_weight = 0.0

    def items(self, cases: Sequence) -> list[dict[str, Any]]:
        return [{"image": c.image, "label": c.label} for c in cases]

    def attach(self, network: torch.nn.Module) -> None:
        """Let the sampler click on the network's own predictions (model in the loop)."""
        from claraseg.models.training import predictor

        if self.sampler is not None:
            self.sampler.predict = predictor(network, self.kind)

    def use_distillation(self, teacher: torch.nn.Module, weight: float, fraction: float, replay: bool) -> None:
        """Distil toward ``teacher`` (the frozen starting model): the flagged samples' loss is ``weight`` x
        the Bernoulli KL divergence of the network's output from the teacher's (:func:`distillation_loss`)."""
        self.teacher, self.distill_weight = teacher, float(weight)
        if self.sampler is not None:
            self.sampler.use_distillation(fraction, replay)

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
        y = y[:, :, 0] if self.kind == "deepgrow2d" else y
        logits = self._forward(network, x)
        flags = batch.get("distill") if self.teacher is not None else None
        if flags is None or not bool((flags > 0.5).any()):
            return self.loss(logits, y)
        d = (flags.reshape(-1) > 0.5).to(device)
        with torch.no_grad():
            teacher = self._forward(self.teacher, x[d])
        loss = self.distill_weight * distillation_loss(logits[d], teacher)
        if bool((~d).any()):
            loss = loss + self.loss(logits[~d], y[~d])
        return loss

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


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of the KL divergence of the Bernoulli output ``sigmoid(logits)`` from the teacher's
    ``sigmoid(teacher_logits)`` (0 when they agree); the gradient is that of the cross-entropy to the
    teacher's probabilities."""
    import torch.nn.functional as F

    p = torch.sigmoid(teacher_logits)
    return (F.binary_cross_entropy_with_logits(logits, p, reduction="mean")
            - F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="mean"))


def _find_sampler(transform: Any) -> InteractiveSampled | None:
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, InteractiveSampled):
            return t
    return None


__all__ = ["InteractiveSampled", "InteractiveTask", "LoadTrainingVolumed", "default_config", "distillation_loss",
           "unlabelled_structure"]
