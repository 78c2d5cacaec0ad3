"""Fixtures of the engine tests: tiny random-weight bundles of every kind, and a small phantom."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A models folder with a tiny bundle of each kind (random weights: mechanics, not quality)."""
    from claraseg.models.testing import make_tiny_bundle

    root = tmp_path_factory.mktemp("tiny_models")
    for kind in ("deepgrow3d", "deepgrow2d", "dextr3d", "segmentation"):
        make_tiny_bundle(kind, root / kind)
    return root


@pytest.fixture(scope="session")
def tiny_backend(tiny_models):
    from claraseg.engine import LocalBackend

    backend = LocalBackend(tiny_models, device="cpu", idle_timeout=None)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def small_phantom():
    from claraseg.io import make_phantom

    return make_phantom(seed=3, size_ijk=(48, 48, 24))
