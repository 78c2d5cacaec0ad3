"""Fixtures of the runtime tests: a private cache folder for the ONNX exports, tiny bundles with versions."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory):
    """Every export and runtime choice of these tests goes to one folder of this test session."""
    path = tmp_path_factory.mktemp("runtime_cache")
    old = os.environ.get("CLARASEG_CACHE")
    os.environ["CLARASEG_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CLARASEG_CACHE", None)
    else:
        os.environ["CLARASEG_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory):
    """A models folder with tiny DeepGrow 3D (v1 and a published v2 of other weights) and DeepGrow 2D bundles."""
    from claraseg.models.registry import ModelRegistry
    from claraseg.models.testing import make_tiny_bundle

    root = tmp_path_factory.mktemp("rt_models")
    make_tiny_bundle("deepgrow3d", root / "deepgrow3d", seed=0)
    make_tiny_bundle("deepgrow2d", root / "deepgrow2d", seed=0)
    make_tiny_bundle("segmentation", root / "segmentation", seed=0)
    job = make_tiny_bundle("deepgrow3d", tmp_path_factory.mktemp("job") / "bundle", seed=7, version="0.2.0")
    assert ModelRegistry(root).publish("deepgrow3d", job) == "deepgrow3d@v2"
    return root
