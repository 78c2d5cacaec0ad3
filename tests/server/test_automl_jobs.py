"""``/automl/``: a real AutoML search started, followed and listed through a real server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

import claraseg

pytest.importorskip("optuna", reason="optuna (the automl extra) is not installed")

TINY_SEARCH_BUNDLE = Path(claraseg.__file__).parent / "automl" / "bundles" / "tiny_seg"


def _h(served):
    return {"Authorization": f"Bearer {served.token}"}


@pytest.fixture(scope="module")
def automl_served(tmp_path_factory):
    """A server of its own, whose models folder also holds a bundle with a search space (kept apart from
    the other modules' shared models folder, whose segmentation model the contract tests pick)."""
    from claraseg.models.testing import make_tiny_bundle
    from claraseg.server.testing import ServerProcess

    tmp = tmp_path_factory.mktemp("automl-server")
    models = tmp / "models"
    make_tiny_bundle("deepgrow3d", models / "deepgrow3d")
    shutil.copytree(TINY_SEARCH_BUNDLE, models / "tiny_seg")
    srv = ServerProcess(["--models", str(models), "--workers", "1"], tmp / "datastore", tmp / "server.log",
                        token="automl-test-token")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def automl_remote(automl_served):
    from claraseg.client import RemoteBackend

    b = RemoteBackend(automl_served.url, automl_served.token)
    yield b
    b.close()


def test_automl_job_runs_a_search_through_the_server(automl_served, automl_remote):
    from claraseg.io import LabelInfo, make_phantom

    served, remote = automl_served, automl_remote
    for n, seed in enumerate((11, 12)):
        image, label = make_phantom(seed=seed, size_ijk=(32, 32, 24))
        remote.upload_image(image, f"automl-case{n}")
        remote.save_label(f"automl-case{n}", label.with_array((label.array == 1).astype(np.uint8),
                                                              labels={1: LabelInfo("foreground")}))
    h = _h(served)
    # Bad requests are refused before anything runs.
    r = requests.post(served.url + "/automl/tiny_seg", json={"automl": {"trails": 2}}, headers=h, timeout=60)
    assert r.status_code == 400 and "trails" in r.json()["detail"]
    r = requests.post(served.url + "/automl/no-such-model", json={}, headers=h, timeout=60)
    assert r.status_code == 404
    r = requests.post(served.url + "/automl/deepgrow3d", json={"images": ["automl-case0", "automl-case1"]},
                      headers=h, timeout=120)
    assert r.status_code == 400 and "search" in r.json()["detail"].lower()

    r = requests.post(served.url + "/automl/tiny_seg", headers=h, timeout=120,
                      json={"images": ["automl-case0", "automl-case1"],
                            "automl": {"trials": 2, "workers": 1, "seed": 0}})
    assert r.status_code == 200, r.text
    job = r.json()["job_id"]
    deadline = time.time() + 240
    status = {}
    while time.time() < deadline:
        status = requests.get(f"{served.url}/automl/{job}", headers=h, timeout=10).json()
        if status["state"] in ("finished", "stopped", "interrupted"):
            break
        time.sleep(1)
    assert status["state"] == "finished", status
    assert len(status["trials"]) == 2 and status["summary"]
    events = requests.get(f"{served.url}/automl/{job}/events?since=1", headers=h, timeout=10).json()["events"]
    assert len(events) == 1
    listed = requests.get(served.url + "/automl/", headers=h, timeout=10).json()["jobs"]
    assert any(j["job_id"] == job for j in listed)
    assert requests.get(f"{served.url}/automl/automl-..-x", headers=h, timeout=10).status_code in (400, 404)
