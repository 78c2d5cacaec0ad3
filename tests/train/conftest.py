"""Fixtures of the training tests: tiny bundles, phantom datalists, and a helper that runs a real job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from claraseg.io import make_phantom, write_image
from claraseg.io.image import LabelInfo

#: Structures of the tiny segmentation bundle (phantom organ names).
SEG_LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "stomach"}
#: Fast job settings: tiny crops, few iterations.
FAST = {"training#max_iterations": 8, "training#val_interval": 4, "training#checkpoint_interval": 4,
        "training#batch_size": 1, "crops_per_image": 1}


def phantom_case(seed: int, folder: Path, keep: dict[int, str] | None = None, size=(40, 40, 24)) -> dict:
    """Write a phantom image and its label map (only the ``keep`` structures, by name) and return the entry."""
    image, label = make_phantom(seed=seed, size_ijk=size)
    names = {v: info.name for v, info in label.labels.items()}
    keep_names = set((keep or names).values())
    array = np.where(np.isin(label.array, [v for v, n in names.items() if n in keep_names]), label.array, 0)
    kept = {v: LabelInfo(n) for v, n in names.items() if n in keep_names}
    label = label.with_array(array.astype(np.uint8), labels=kept)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(image, folder / f"image{seed}.nii.gz")
    write_image(label, folder / f"label{seed}.nii.gz")
    return {"image": str(folder / f"image{seed}.nii.gz"), "label": str(folder / f"label{seed}.nii.gz"),
            "labels": {str(v): i.name for v, i in kept.items()}}


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory) -> Path:
    """A datalist of three phantoms labelled with the segmentation bundle's structures."""
    folder = tmp_path_factory.mktemp("segdata")
    entries = [phantom_case(s, folder, SEG_LABELS) for s in (11, 12, 13)]
    (folder / "datalist.json").write_text(json.dumps(entries))
    return folder / "datalist.json"


@pytest.fixture(scope="session")
def interactive_data(tmp_path_factory) -> Path:
    """One phantom with all its structures (each becomes a training object)."""
    folder = tmp_path_factory.mktemp("dgdata")
    (folder / "datalist.json").write_text(json.dumps([phantom_case(21, folder)]))
    return folder / "datalist.json"


def tiny_bundle(models: Path, kind: str) -> Path:
    """A tiny bundle of ``kind`` (the engine's test helper; small ROI) in a models folder of its own."""
    from claraseg.models.testing import make_tiny_bundle

    if kind == "segmentation":
        settings = {"labels": SEG_LABELS, "roi_size": [32, 32, 32], "spacing": [8.0, 8.0, 8.0]}
    else:
        settings = {"roi_size": [32, 32, 1] if kind == "deepgrow2d" else [32, 32, 32]}
    return make_tiny_bundle(kind, models / kind, settings=settings)


@pytest.fixture
def seg_bundle(tmp_path) -> Path:
    return tiny_bundle(tmp_path / "models", "segmentation")


def run_job(bundle: Path, datalist, overrides: dict, workdir: Path, timeout: float = 120, **options):
    """Start a real job process, wait for it and return ``(job, status)``."""
    from claraseg.train.job import FineTuneJob

    job = FineTuneJob(bundle, datalist, overrides, workdir, threads=1, device="cpu", **options).start()
    status = job.wait(timeout)
    return job, status


def wait_for_event(job, predicate, timeout: float = 180.0) -> dict:
    """Poll a job's events until one satisfies ``predicate``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in job.events():
            if predicate(e):
                return e
        if not job.running():
            raise AssertionError(f"job ended before the expected event: {job.status()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for an event")
