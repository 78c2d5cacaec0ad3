"""``claraseg federate export``: NVFlare's provisioning makes the startup kits of a real deployment; with HE,
only the sites' contexts hold the secret key."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from claraseg.federated.spec import FederatedSpec

from .conftest import require, tiny_bundle


def test_export_provisions_kits_with_he_contexts(tmp_path):
    require("nvflare", "tenseal")
    import tenseal as ts

    from claraseg.federated.job import APP, export_job

    bundle = tiny_bundle(tmp_path / "models")
    spec = FederatedSpec(bundle=str(bundle), sites={"hospital-a": "/data/a/datalist.json",
                                                    "hospital-b": "/data/b/datalist.json"}, rounds=3, he=True)
    result = export_job(spec, tmp_path / "out", server="fl.example.org", site_bundle="bundles/deepgrow3d")
    project = yaml.safe_load((tmp_path / "out" / "project.yml").read_text())
    assert [p["name"] for p in project["participants"]][:3] == ["fl.example.org", "hospital-a", "hospital-b"]
    assert any(b["path"].endswith("HEBuilder") for b in project["builders"])
    kits = {k.split("/")[-1]: k for k in result["kits"]}
    assert set(kits) >= {"fl.example.org", "hospital-a", "hospital-b"}
    server = ts.context_from((Path(kits["fl.example.org"]) / "startup" / "server_context.tenseal").read_bytes())
    client = ts.context_from((Path(kits["hospital-a"]) / "startup" / "client_context.tenseal").read_bytes())
    assert not server.is_private() and client.is_private()
    assert not (Path(kits["fl.example.org"]) / "startup" / "client_context.tenseal").exists()
    resources = json.loads((Path(kits["hospital-a"]) / "local" / "resources.json").read_text())
    assert APP in resources["class_allow_list"]
    config = json.loads((Path(result["job"]) / "app_hospital-a" / "config" / "config_fed_client.json").read_text())
    args = config["executors"][0]["executor"]["args"]
    assert args["bundle"] == "bundles/deepgrow3d" and args["datalist"] == "/data/a/datalist.json"
    assert [f["path"].rsplit(".", 1)[1] for f in config["task_result_filters"][0]["filters"]] == ["HEModelEncryptor"]
    meta = json.loads((Path(result["job"]) / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app_hospital-a": ["hospital-a"],
                                  "app_hospital-b": ["hospital-b"]}
