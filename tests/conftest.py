"""Fixtures shared by every part's tests. Part-specific fixtures live in tests/<part>/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The sample data (../shared/data beside the checkout); CLARASEG_DATA overrides.
DATA_DIR = Path(os.environ.get("CLARASEG_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    # Two cores on the CI machine: keep every torch test single-threaded unless it says otherwise.
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("CLARASEG_TEST_THREADS", "1")))
    except ImportError:
        pass


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ct_abdomen_3mm" / "image.nii.gz").exists():
        pytest.skip(f"sample data not found at {DATA_DIR} (set CLARASEG_DATA to the shared/data folder)")
    return DATA_DIR


@pytest.fixture(scope="session")
def ct_pair(data_dir):
    """(image, label) of the sample abdominal CT, label names from labels.json."""
    from claraseg.io import read_image, read_labels_json

    image = read_image(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    label = read_image(data_dir / "ct_abdomen_3mm" / "label.nii.gz", label=True)
    label.labels = read_labels_json(data_dir / "ct_abdomen_3mm" / "labels.json")
    return image, label


@pytest.fixture(scope="session")
def phantom_pair():
    """A small seeded phantom (image, label), oblique and anisotropic."""
    from claraseg.io import make_phantom

    return make_phantom(seed=1, size_ijk=(64, 64, 32))
