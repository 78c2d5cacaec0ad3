"""Validation of an interactive fine-tune by the click protocol (ANCHORS.md), through the engine.

A fine-tuned interactive model is used through the engine's whole click path (first-click growth,
re-fits, boundary refinement, corrections on its own mask), which a single forward pass on a simulated
ROI sample does not exercise. :class:`ClickValidation` writes the network's current weights into a copy
of the bundle in the job folder, opens one engine session per held-out image (kept for the job) and runs
:func:`claraseg.evaluate.protocol.run_structure` on each held-out or guard structure: the same protocol
``claraseg eval`` and ``claraseg train bench-adapt`` report, on the job's own held-out data.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def shape_refit_source(bundle: str | Path) -> Path | None:
    """The folder of the DEXTR3D bundle a DeepGrow 3D bundle's clicks are re-fit with (its
    ``shape_refit_model``), as a registry holding the packaged models and the bundle's own folder resolves
    that name (its newest version); None when the bundle names none or no such DEXTR3D bundle exists."""
    from claraseg.errors import ClarasegError
    from claraseg.models.bundle import read_bundle
    from claraseg.models.registry import PACKAGED_DIR, ModelRegistry

    bundle = Path(bundle)
    try:
        name = read_bundle(bundle).settings.get("shape_refit_model")
        if not name:
            return None
        refit = ModelRegistry([PACKAGED_DIR, bundle.parent]).get(name)
    except ClarasegError:
        return None
    return refit.path if refit.kind == "dextr3d" else None


def copy_shape_refit(bundle: str | Path, models: str | Path) -> Path | None:
    """Copy the bundle's shape re-fit model (:func:`shape_refit_source`) into the models folder ``models``
    under its plain name, as a user's registry serves it beside the bundle (kept when the folder already
    holds one of that name); the copy's folder, or None when the bundle has no re-fit model."""
    import shutil

    source = shape_refit_source(bundle)
    if source is None:
        return None
    from claraseg.models.bundle import read_bundle

    target = Path(models) / str(read_bundle(Path(bundle)).settings["shape_refit_model"])
    if target.exists():
        return target
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "eval", ".*"))
    return target


class ClickValidation:
    """``validate(network, cases)`` -> ``({structure: [Dice curve over the clicks, per case]}, indices of
    the cases not validated)`` for ``clicks`` interactions per structure. A case is not validated when its
    label is empty or the engine refuses its image (e.g. thinner than the model's minimum size).

    With ``sequences`` > 1 a case's curve is the mean over that many click sequences: the protocol's own
    and ones whose first click is drawn inside the structure (``first_click_seed`` 1, 2, ...; DEXTR3D:
    jittered extreme points, ``jitter_seed``). One
    sequence is a knife edge - a model that changed a little may flip where a correction click lands - so
    the mean judges a structure with less noise, at that many times the cost."""

    def __init__(self, bundle: str | Path, folder: str | Path, kind: str, clicks: int, device: str = "cpu",
                 sequences: int = 1) -> None:
        from claraseg.engine.backend import LocalBackend

        self.kind, self.clicks, self.sequences = kind, int(clicks), int(sequences)
        self.name = Path(bundle).name.split("@")[0]
        self.folder = Path(folder)
        target = self.folder / self.name
        if not target.exists():
            # Configs only: the weights are written by every validation.
            shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("*.pt", "*.ts", "*.onnx"))
        # The clicks a user makes with the published model are re-fit by its DEXTR3D model: so are these.
        self.refit = copy_shape_refit(bundle, self.folder)
        self.weights = target / "models" / "model.pt"
        self.backend = LocalBackend(self.folder, device=device, idle_timeout=None)
        self._sessions: dict[str, Any] = {}
        self._truths: dict[str, np.ndarray] = {}
        self.refused: dict[str, str] = {}  # image path -> why the engine cannot take it

    def _session(self, image_path: str):
        from claraseg.errors import InvalidImageError
        from claraseg.io import read_image

        if image_path not in self._sessions and image_path not in self.refused:
            try:
                self._sessions[image_path] = self.backend.open_session(read_image(image_path))
            except InvalidImageError as e:
                self.refused[image_path] = str(e)
        return self._sessions.get(image_path)

    def _truth(self, label_path: str) -> np.ndarray:
        from claraseg.io import read_image

        if label_path not in self._truths:
            self._truths[label_path] = read_image(label_path, label=True).array > 0
        return self._truths[label_path]

    def _variant(self, seed: int) -> dict[str, Any]:
        """The keywords of click sequence ``seed``: 0 the protocol's own; else a drawn first click, or for
        DEXTR3D extreme points jittered by the protocol's +-3 voxels."""
        if not seed:
            return {}
        return {"jitter_seed": seed} if self.kind == "dextr3d" else {"first_click_seed": seed}

    def validate(self, network: torch.nn.Module, cases: Sequence) -> tuple[dict[str, list[list[float]]], list[int]]:
        from claraseg.errors import InvalidImageError
        from claraseg.evaluate.protocol import run_structure
        from claraseg.models.bundle import save_weights

        save_weights(network, self.weights, half=False)
        self.backend.reload()
        curves: dict[str, list[list[float]]] = {}
        rest: list[int] = []
        for n, case in enumerate(cases):
            truth = self._truth(case.label)
            session = self._session(case.image)
            if session is None or not truth.any() or case.image in self.refused:
                rest.append(n)
                continue
            try:
                runs = [run_structure(session, self.name, self.kind, truth, name=case.structures[1],
                                      interactions=self.clicks, **self._variant(seed))
                        for seed in range(self.sequences)]
            except InvalidImageError as e:
                self.refused[case.image] = str(e)
                rest.append(n)
                continue
            curves.setdefault(case.structures[1], []).append(
                [float(d) for d in np.mean([r.dice for r in runs], axis=0)])
        return curves, rest

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions = {}
        self.backend.close()


__all__ = ["ClickValidation", "copy_shape_refit", "shape_refit_source"]
