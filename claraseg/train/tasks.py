"""What differs between model kinds during training: the training items, the loss of a batch, the validation Dice.

``segmentation`` bundles learn supervised from label maps; the interactive kinds (DeepGrow 2D/3D,
DEXTR3D) learn from simulated clicks on one structure at a time, using the engine's training building
blocks (:mod:`claraseg.models`), so clicks are encoded exactly as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from claraseg.errors import ConfigError


class SegmentationTask:
    """Supervised training of a segmentation bundle: ``loss(network(image), label)`` on the bundle's crops;
    validation by sliding-window inference over each held-out case, Dice per model label it holds."""

    kind = "segmentation"

    def __init__(self, components: dict[str, Any], claraseg_meta: dict[str, Any]) -> None:
        if components.get("loss") is None:
            raise ConfigError("a segmentation bundle's training config needs a 'loss' element (e.g. monai.losses.DiceCELoss)")
        self.loss = components["loss"]
        self.labels = {int(k): v for k, v in (claraseg_meta.get("labels") or {}).items()}
        self.roi_size = claraseg_meta.get("roi_size")

    def items(self, cases: Sequence) -> list[dict[str, Any]]:
        return [{"image": c.image, "label": c.label} for c in cases]

    def batch_loss(self, network: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device)
        label = batch["label"].to(device)
        return self.loss(network(image), label)

    @torch.no_grad()
    def validate(self, network: torch.nn.Module, items: list[dict[str, Any]], cases: Sequence,
                 device: torch.device, sw_batch_size: int = 1) -> tuple[float, dict[str, float]]:
        """Mean Dice over (case, label held by the case), and the mean per label name."""
        from monai.inferers import sliding_window_inference

        from claraseg.evaluate.protocol import dice

        per_label: dict[str, list[float]] = {}
        network.eval()
        for item, case in zip(items, cases):
            image = torch.as_tensor(item["image"])[None].to(device)
            roi = self.roi_size or [min(96, s) for s in image.shape[2:]]
            logits = sliding_window_inference(image, roi, sw_batch_size, network, overlap=0.25)
            if logits.shape[1] == 1:
                pred = (torch.sigmoid(logits[0, 0]) > 0.5).cpu().numpy().astype(np.uint8)
            else:
                pred = torch.argmax(logits[0], dim=0).cpu().numpy()
            truth = np.asarray(torch.as_tensor(item["label"])[0].cpu().numpy())
            for value, name in case.structures.items():
                per_label.setdefault(name, []).append(dice(pred == value, truth == value))
        network.train()
        scores = [s for v in per_label.values() for s in v]
        return float(np.mean(scores)), {k: float(np.mean(v)) for k, v in per_label.items()}


def make_task(kind: str, components: dict[str, Any], claraseg_meta: dict[str, Any]):
    """The task of a bundle kind (``claraseg.kind`` in its metadata)."""
    if kind == "segmentation":
        return SegmentationTask(components, claraseg_meta)
    if kind in ("deepgrow2d", "deepgrow3d", "dextr3d"):
        from claraseg.train.interactive import InteractiveTask

        return InteractiveTask(kind, components, claraseg_meta)
    raise ConfigError(f"bundle kind {kind!r} cannot be fine-tuned; expected segmentation, deepgrow2d, deepgrow3d or dextr3d")
