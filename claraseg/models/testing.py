"""Test helpers shared by every part's tests: tiny random-weight bundles of each kind."""

from __future__ import annotations

import copy
from pathlib import Path

from claraseg.models.bundle import save_weights
from claraseg.models.defaults import NETWORKS, create_bundle

#: A network small enough for tests on one CPU thread (a 3D click in a few tens of milliseconds).
TINY_CHANNELS = [4, 8]
TINY_STRIDES = [2]


def make_tiny_bundle(kind: str, path: str | Path, *, seed: int = 0, settings: dict | None = None,
                     version: str = "0.0.1") -> Path:
    """Write a complete bundle of ``kind`` (``deepgrow2d``, ``deepgrow3d``, ``dextr3d`` or ``segmentation``)
    with a tiny randomly initialised network into ``path`` (the folder name is the model's name).

    The configs are the default ones (same ROI sizes, encodings and normalisation), so everything but the
    quality of the result is exercised. ``settings`` overrides entries of the ``claraseg`` section; the
    network runs on torch unless ``settings`` names another ``runtime`` (random weights are exported anew
    by every other runtime; tests/runtimes covers those).
    """
    import torch

    from claraseg.models.bundle import read_bundle

    net = copy.deepcopy(NETWORKS[kind])
    net.update({"channels": list(TINY_CHANNELS), "strides": list(TINY_STRIDES), "num_res_units": 0})
    settings = {**({"runtime": "torch"} if kind != "segmentation" else {}), **(settings or {})}
    path = create_bundle(path, kind, network=net, settings=settings, version=version)
    torch.manual_seed(seed)
    save_weights(read_bundle(path).build_network(), Path(path) / "models" / "model.pt", half=False)
    return Path(path)
