"""The attacks of issue 18's critical items, against a real server on 127.0.0.1: code execution through
job overrides, directories deleted through a job's name, files read through detached-data headers."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from claraseg.io import LabelInfo


def _h(served) -> dict:
    return {"Authorization": f"Bearer {served.token}"}


@pytest.fixture(scope="module")
def trainable(served, remote, phantom):
    """A datastore image with a label, so a /train request would really start a job."""
    image, label = phantom
    remote.upload_image(image, "attack-case")
    remote.save_label("attack-case", label.with_array((label.array == 1).astype(np.uint8), labels={1: LabelInfo("fg")}))
    if not remote.info()["jobs"]["train"]:
        pytest.fail("the test server has no job runner (models folder + datastore)")
    return "attack-case"


def _jobs(served) -> set[str]:
    r = requests.get(served.url + "/train/", headers=_h(served), timeout=10)
    assert r.status_code == 200, r.text
    return {j["id"] for j in r.json()["jobs"]}


@pytest.mark.parametrize("overrides", [
    {"training#max_iterations": "$__import__('pathlib').Path('{marker}').write_text('owned')"},
    {"optimizer#lr": "$__import__('pathlib').Path('{marker}').write_text('owned')"},
    {"optimizer": {"_target_": "pathlib.Path.write_text", "self": "{marker}", "data": "owned"}},
    {"network_def#_target_": "os.system"},
    {"training#max_iterations": "@_meta_#version"},
    {"training#max_iterations": "%/etc/passwd#x"},
    {"bundle_root": "/"},
    {"training#dataset": "$import os"},
    {"training#max_iterations": [1, "$x"]},
    {"training#seed": True},
    {"optimizer#lr": float("inf")},
], ids=["expr-int-setting", "expr-lr", "target-dict", "target-key", "reference", "macro", "bundle-root",
        "dataset-expr", "list", "bool-for-int", "inf"])
def test_train_overrides_carry_no_code(served, trainable, tmp_path, overrides):
    marker = tmp_path / "owned.txt"
    body = json.loads(json.dumps(overrides, allow_nan=True).replace("{marker}", str(marker)), parse_constant=float)
    before = _jobs(served)
    r = requests.post(served.url + "/train/deepgrow3d", timeout=60,
                      data=json.dumps({"images": [trainable], "overrides": body, "device": "cpu"}),
                      headers={**_h(served), "Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["code"] in ("config_error", "invalid_request"), r.text
    assert _jobs(served) == before  # no job was created
    time.sleep(0.5)
    assert not marker.exists()


def test_allowed_overrides_are_plain_settings(served, trainable):
    from claraseg.server.validation import check_overrides

    ok = {"training#max_iterations": 1, "optimizer#lr": 1e-4, "training#dataset": "smart", "training#amp": False,
          "training#max_epochs": None, "train#preprocessing#transforms#3#prob": 0.2}
    assert check_overrides(ok) == ok


@pytest.mark.parametrize("body", [
    {"automl": {"trials": "x"}}, {"automl": []}, {"automl": {"trials": 2, "storage": "sqlite:////tmp/x.db"}},
    {"automl": {"runner": "../../x"}}, {"device": "cuda; rm -rf /"}, {"tag": "../x"}, {"images": ["../../etc"]},
])
def test_automl_and_job_settings_are_typed(served, trainable, body):
    for route in ("/automl/deepgrow3d", "/train/deepgrow3d"):
        if "automl" in body and route.startswith("/train"):
            continue
        r = requests.post(served.url + route, headers=_h(served), json={"images": [trainable], **body}, timeout=30)
        assert 400 <= r.status_code < 500, (route, body, r.text)


@pytest.mark.parametrize("name", ["{victim}", "../../victim", "..", "a/b", "x@v3", ".hidden", "/", " "])
def test_job_name_never_names_a_path(served, trainable, tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    before = _jobs(served)
    r = requests.post(served.url + "/train/deepgrow3d", headers=_h(served), timeout=60,
                      json={"images": [trainable], "name": name.replace("{victim}", str(victim)),
                            "overrides": {"training#max_iterations": 1}, "device": "cpu"})
    assert 400 <= r.status_code < 500, r.text
    assert _jobs(served) == before
    assert (victim / "precious.txt").read_text() == "keep me"


def test_publishing_refuses_a_path_as_name(tmp_path):
    from claraseg.errors import ConfigError
    from claraseg.train.spec import check_model_name

    for bad in (str(tmp_path), "../x", "a/b", "x@v2", ""):
        with pytest.raises(ConfigError):
            check_model_name(bad)
    assert check_model_name("liver-ft_2.1") == "liver-ft_2.1"


# ----- files named by an upload's header -----------------------------------------------------------------
def _mha(data_file: str) -> bytes:
    return (b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\n"
            b"ElementSpacing = 1 1 1\nElementDataFile = " + data_file.encode() + b"\n")


def _nrrd(extra: str, sizes: str = "4 4 2", enc: str = "raw", body: bytes = b"") -> bytes:
    return (f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: {sizes}\nencoding: {enc}\n{extra}\n").encode() + body


@pytest.fixture()
def secret(tmp_path):
    p = tmp_path / "secret.key"
    p.write_bytes(b"TOP-SECRET-" * 3 + b"xx")  # 35 bytes >= 4*4*2 voxels
    return p


def _uploads(served, model: str, name: str, data: bytes):
    """(route, response) of the same file sent to the four upload routes."""
    h = _h(served)
    yield "session", requests.put(served.url + "/session/", files={"files": (name, data)}, headers=h, timeout=30)
    yield "image", requests.put(served.url + "/datastore/image", params={"image": f"leak-{abs(hash(name)) % 10**6}"},
                                files={"file": (name, data)}, headers=h, timeout=30)
    yield "label", requests.put(served.url + "/datastore/label", params={"image": "attack-case", "tag": "leak"},
                                files={"label": (name, data)}, headers=h, timeout=30)
    yield "infer", requests.post(served.url + f"/infer/{model}", files={"file": (name, data)},
                                 data={"params": json.dumps({"foreground": [[1, 1, 1]]})}, headers=h, timeout=30)


@pytest.mark.parametrize("kind", ["mha-absolute", "mha-relative", "mha-list", "nrrd-data-file", "nrrd-datafile",
                                  "nrrd-list", "nrrd-as-nii", "mha-gz"])
def test_uploads_never_read_another_file(served, trainable, secret, kind):
    files = {
        "mha-absolute": ("x.mha", _mha(str(secret))),
        "mha-relative": ("x.mha", _mha("../../../../../../" + str(secret))),
        "mha-list": ("x.mha", _mha("LIST") + str(secret).encode() + b"\n"),
        "nrrd-data-file": ("x.nrrd", _nrrd(f"data file: {secret}")),
        "nrrd-datafile": ("x.nrrd", _nrrd(f"datafile: {secret}")),
        "nrrd-list": ("x.nrrd", _nrrd(f"data file: LIST\n{secret}")),
        "nrrd-as-nii": ("x.nii", _nrrd(f"data file: {secret}")),
        "mha-gz": ("x.mha.gz", gzip.compress(_mha(str(secret)))),
    }
    name, data = files[kind]
    for route, r in _uploads(served, "deepgrow3d", name, data):
        assert 400 <= r.status_code < 500, (route, r.status_code, r.text)
        assert b"TOP-SECRET" not in r.content
    listing = requests.get(served.url + "/datastore/", params={"output": "all"}, headers=_h(served), timeout=10).json()
    for image_id in listing["objects"]:
        got = requests.get(served.url + "/datastore/image", params={"image": image_id}, headers=_h(served), timeout=10)
        assert b"TOP-SECRET" not in gzip.decompress(got.content)
    assert not (Path(served.datastore) / "labels" / "attack-case" / "leak").exists() or \
        not list((Path(served.datastore) / "labels" / "attack-case" / "leak").glob("*.json"))
