"""Fixtures of the federated tests: two sites holding different structures of the sample CT (a crop),
a tiny DeepGrow 3D bundle, and real simulated federations (NVFlare's simulator), plain and with HE."""

from __future__ import annotations

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

#: Structures of the two sites (values of the sample CT's labels.json).
SITES = {"site-a": {1: "spleen", 5: "liver"}, "site-b": {2: "kidney_right", 3: "kidney_left"}}
#: Each site's training: one tiny crop per step, 2 simulated-click samples per held-out structure, no replay.
OVERRIDES = {"training#batch_size": 1, "crops_per_image": 1, "validation_samples": 2, "replay": 0,
             "training#deterministic": True}
ROUNDS = 2
LOCAL_ITERATIONS = 3


def require(*modules: str) -> None:
    """Skip when an optional package is missing, except under CI (which installs it): fail there."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (pip install -e '.[federated]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def site_datalists(data_dir, tmp_path_factory) -> dict[str, str]:
    """Each site's datalist: the sample CT cropped to the four structures, each site labelling its own two."""
    from claraseg.io import LabelInfo, crop, read_image, write_image

    folder = tmp_path_factory.mktemp("fed-data")
    image = read_image(data_dir / "ct_abdomen_3mm" / "image.nii.gz")
    label = read_image(data_dir / "ct_abdomen_3mm" / "label.nii.gz", label=True)
    values = [v for keep in SITES.values() for v in keep]
    box = np.argwhere(np.isin(label.array, values))  # (k, j, i)
    start, stop = box.min(0)[::-1], (box.max(0) + 1)[::-1]
    image, label = crop(image, start, stop), crop(label, start, stop)
    write_image(image, folder / "image.nii.gz")
    out = {}
    for site, keep in SITES.items():
        array = np.where(np.isin(label.array, list(keep)), label.array, 0).astype(np.uint8)
        write_image(label.with_array(array, labels={v: LabelInfo(n) for v, n in keep.items()}), folder / f"{site}.nii.gz")
        (folder / f"{site}.json").write_text(json.dumps([{"image": "image.nii.gz", "label": f"{site}.nii.gz",
                                                          "labels": {str(v): n for v, n in keep.items()}}]))
        out[site] = str(folder / f"{site}.json")
    return out


def tiny_bundle(models: Path) -> Path:
    from claraseg.models.testing import make_tiny_bundle

    return make_tiny_bundle("deepgrow3d", models / "deepgrow3d", settings={"roi_size": [32, 32, 32]})


def run_federation(root: Path, bundle: Path, datalists: dict[str, str], he: bool) -> dict:
    from claraseg.federated.job import create_job, simulate
    from claraseg.federated.spec import FederatedSpec

    spec = FederatedSpec(bundle=str(bundle), sites=datalists, rounds=ROUNDS, local_iterations=LOCAL_ITERATIONS,
                         overrides=OVERRIDES, he=he, device="cpu", threads=1)
    job = create_job(spec, root / "job")
    return {"root": root, "bundle": bundle, "job": job, "status": simulate(job, timeout=600)}


@pytest.fixture(scope="session")
def federations(site_datalists, tmp_path_factory) -> dict[str, dict]:
    """A plain and an HE federation of 2 sites x 2 rounds, run at the same time (each its own simulator)."""
    require("nvflare", "tenseal")
    root = tmp_path_factory.mktemp("federations")
    # The same starting weights in both runs (built here, one after the other: torch's seed is global).
    bundles = {v: tiny_bundle(root / v / "models") for v in ("plain", "he")}
    with ThreadPoolExecutor(2) as pool:
        futures = {v: pool.submit(run_federation, root / v, bundles[v], site_datalists, v == "he")
                   for v in ("plain", "he")}
        return {v: f.result() for v, f in futures.items()}
